"""A small general-purpose tokenizer that needs no download, for tiny presets, tests and the offline demo.

Layout contract (kept by every version of this module): id 0 ``<unk>`` (also the pad token),
1 ``<s>`` (BOS), 2 ``</s>`` (EOS), 3..199 ``<reserved_N>`` special tokens (so templates that use
fixed ids such as 195/196 work), then the vocabulary proper.

The vocabulary proper: 256 byte tokens ``<0x00>``..``<0xFF>``, the printable ASCII characters,
newline and tab, the ten digits (alone and after a space), then every word of
``assets/tiny_words.txt`` twice: as is (``dog``) and after a space (``" dog"``). A Unigram model
scores whole words far above single characters, so a known word is one token, an unknown word
splits into known words and characters (``cats`` -> ``cat`` + ``s``), and a character outside the
vocabulary falls back to its UTF-8 bytes. Numbers are single digits. Decoding joins the tokens, so
any text (any language, any whitespace) round-trips exactly.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

N_RESERVED = 200
WORD_LIST = "tiny_words.txt"

#: Pre-tokenization: a run of letters (with one leading space), a single digit, an underscore or a
#: punctuation mark (each with an optional leading space), or one whitespace character.
SPLIT_PATTERN = r" ?[^\W\d_]+| ?\d| ?_| ?[^\w\s]|\s"

_WORD_SCORE = -1.0  # whole words and digits: the fewest pieces win
_CHAR_SCORE = -10.0  # single characters: the fallback inside unknown words
_SPACE_SCORE = -12.0  # a bare space loses to a word that carries its space
_BYTE_SCORE = -30.0  # only reached through byte fallback


def special_tokens() -> list[str]:
    """The 200 reserved tokens at ids 0..199, in order."""
    return ["<unk>", "<s>", "</s>"] + [f"<reserved_{i}>" for i in range(3, N_RESERVED)]


def word_list() -> list[str]:
    """The words of the shipped list, in file order, each once; '+cap' sections add capitalised forms."""
    text = resources.files("xt").joinpath("assets", WORD_LIST).read_text(encoding="utf-8")
    words: list[str] = []
    capitalise = False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("##"):
            capitalise = "+cap" in line
            continue
        if not line or line.startswith("#"):
            continue
        words.append(line)
        if capitalise and line.islower():
            words.append(line.capitalize())
    return list(dict.fromkeys(words))


def vocabulary() -> list[tuple[str, float]]:
    """(piece, score) for every id, in id order."""
    pieces: dict[str, float] = {tok: 0.0 for tok in special_tokens()}
    for b in range(256):
        pieces[f"<0x{b:02X}>"] = _BYTE_SCORE
    for code in range(32, 127):
        pieces.setdefault(chr(code), _SPACE_SCORE if code == 32 else _CHAR_SCORE)
    for ch in ("\n", "\t"):
        pieces.setdefault(ch, _CHAR_SCORE)
    for d in "0123456789":
        pieces[d] = _WORD_SCORE
        pieces[" " + d] = _WORD_SCORE
    for word in word_list():
        for piece in (word, " " + word):
            if len(piece) > 1:
                pieces.setdefault(piece, _WORD_SCORE)
    return list(pieces.items())


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.Unigram(vocabulary(), unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok.to_str()


def tiny_tokenizer() -> Any:
    """A fresh ``PreTrainedTokenizerFast`` (pad = unk = id 0, BOS 1, EOS 2), built offline."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    specials = [f"<reserved_{i}>" for i in range(3, N_RESERVED)]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        unk_token="<unk>", pad_token="<unk>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=specials,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
