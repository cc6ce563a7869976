"""A small tokenizer that needs no download, for tiny presets, tests and the offline demo.

Layout contract (kept by every version of this module): id 0 ``<unk>`` (also the pad token),
1 ``<s>`` (BOS), 2 ``</s>`` (EOS), 3..199 ``<reserved_N>`` special tokens (so templates that use
fixed ids such as 195/196 work), then the vocabulary proper.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

N_RESERVED = 200


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>"] + [f"<reserved_{i}>" for i in range(3, N_RESERVED)]
    chars = [chr(c) for c in range(33, 127)]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for piece in chars + ["##" + c for c in chars]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok.to_str()


def tiny_tokenizer() -> Any:
    """A fresh ``PreTrainedTokenizerFast`` (pad = unk = id 0, BOS 1, EOS 2)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    specials = [f"<reserved_{i}>" for i in range(3, N_RESERVED)]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        unk_token="<unk>", pad_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=specials,
    )
