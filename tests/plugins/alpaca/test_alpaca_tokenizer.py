"""xt.tokenizers.tiny_tokenizer: id layout, whole-word tokens, fallbacks and exact round trips."""

from __future__ import annotations

import random

import pytest
from xt.tokenizers import N_RESERVED, tiny_tokenizer, word_list


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_id_layout(tok) -> None:
    assert (tok.unk_token_id, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 0, 1, 2)
    assert tok.convert_ids_to_tokens([3, 195, 196, 199]) == ["<reserved_3>", "<reserved_195>", "<reserved_196>",
                                                               "<reserved_199>"]
    assert tok.convert_ids_to_tokens(N_RESERVED) == "<0x00>"
    assert len(tok) == len(tok.get_vocab()) and 2000 < len(tok) < 4000  # small enough for a tiny model


def test_words_and_digits_are_single_tokens(tok) -> None:
    pieces = tok.convert_ids_to_tokens(tok.encode("What is the capital of France? It is Paris, 42 km.",
                                                  add_special_tokens=False))
    assert pieces == ["What", " is", " the", " capital", " of", " France", "?", " It", " is", " Paris", ",",
                      " 4", "2", " ", "k", "m", "."]
    for word in ("the", "water", "Monday", "yellow", "forty"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1
    assert "the" in word_list() and "The" in word_list()


def test_unknown_words_fall_back_to_known_pieces_and_bytes(tok) -> None:
    assert tok.convert_ids_to_tokens(tok.encode("cattle", add_special_tokens=False))[0] == "cat"
    ids = tok.encode("你好", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["<0xE4>", "<0xBD>", "<0xA0>", "<0xE5>", "<0xA5>", "<0xBD>"]
    assert tok.unk_token_id not in ids


def test_any_text_round_trips_exactly(tok) -> None:
    rng = random.Random(0)
    alphabet = "abcXYZ 019\n\t.,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|éßñ中文😀Ω"
    texts = ["Below is an instruction.\n\n### Response:\n", "  leading and  double  spaces ", "tab\there",
             "def f(x):\n    return x ** 2  # square", "Grüße aus München — 3.14159", "emoji 😀 ok"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text


def test_save_and_reload_give_the_same_tokenizer(tok, tmp_path) -> None:
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "The plural of mouse is mice; 7 is odd. 你好"
    assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)
    assert tiny_tokenizer().get_vocab() == tok.get_vocab()  # deterministic
