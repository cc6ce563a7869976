"""Baichuan2's SentencePiece tokenizer on current transformers.

The official tokenizer encodes text with the SentencePiece model as is (its own normalizer rules),
adds no BOS and no EOS by default (``add_bos_token=False``, ``add_eos_token=False``), and uses
``<unk>`` (0) as pad, ``<s>`` (1) as BOS and ``</s>`` (2) as EOS.
"""

from __future__ import annotations

import os
from typing import Any

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend


class BaichuanTokenizer(SentencePieceBackend):
    """Slow (sentencepiece) tokenizer for a Baichuan2 ``tokenizer.model``."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(self, vocab_file: str, unk_token: str = "<unk>", bos_token: str = "<s>", eos_token: str = "</s>",
                 pad_token: str | None = "<unk>", add_bos_token: bool = False, add_eos_token: bool = False,
                 clean_up_tokenization_spaces: bool = False, **kwargs: Any) -> None:
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        kwargs.setdefault("legacy", True)
        super().__init__(vocab_file=vocab_file, unk_token=unk_token, bos_token=bos_token, eos_token=eos_token,
                         pad_token=pad_token, add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    def _special(self) -> tuple[list[int], list[int]]:
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        eos = [self.eos_token_id] if self.add_eos_token and self.eos_token_id is not None else []
        return bos, eos

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        bos, eos = self._special()
        out = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + list(token_ids_1) + eos
        return out

    def get_special_tokens_mask(self, token_ids_0: list[int], token_ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        bos, eos = self._special()
        mask = [1] * len(bos) + [0] * len(token_ids_0) + [1] * len(eos)
        if token_ids_1 is not None:
            mask += [1] * len(bos) + [0] * len(token_ids_1) + [1] * len(eos)
        return mask

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        bos, eos = self._special()
        return (len(bos) + len(eos)) * (2 if pair else 1)


def load_baichuan_tokenizer(source: str | os.PathLike, **kwargs: Any) -> BaichuanTokenizer:
    """A tokenizer from a folder holding ``tokenizer.model`` (and maybe tokenizer_config.json), or the file itself."""
    from xt.api import XtError

    path = os.fspath(source)
    if os.path.isfile(path):
        return BaichuanTokenizer(vocab_file=path, **kwargs)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "tokenizer.model")):
            raise XtError(f"No tokenizer.model in '{path}'; Baichuan2 needs its SentencePiece file there "
                          f"(copy it from the official checkpoint).")
        return BaichuanTokenizer.from_pretrained(path, **kwargs)
    return BaichuanTokenizer.from_pretrained(path, **kwargs)  # a hub id


def _finish_registration() -> None:
    from xt_baichuan.auto import register_if_pending

    register_if_pending()


_finish_registration()
