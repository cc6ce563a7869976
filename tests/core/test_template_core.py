"""Template rendering: labels, prompts and stop ids with the offline tiny tokenizer."""

from __future__ import annotations

import pytest
from xt.errors import XtError
from xt.plugins import get_registry
from xt.specs import EOS, TemplateSpec
from xt.template import IGNORE_INDEX
from xt.tokenizers import tiny_tokenizer

CONV = {"messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"},
                     {"role": "user", "content": "bye now"}, {"role": "assistant", "content": "see you"}]}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_labels_cover_exactly_replies_and_end_tokens(tok):
    t = get_registry().get("templates", "default")
    sample = t.encode(CONV, tok)
    trained = [i for i, lab in zip(sample["input_ids"], sample["labels"]) if lab != IGNORE_INDEX]
    expected = tok.encode("hi", add_special_tokens=False) + [tok.eos_token_id] + \
        tok.encode("see you", add_special_tokens=False) + [tok.eos_token_id]
    assert trained == expected
    assert sample["input_ids"][0] == tok.bos_token_id


def test_prompt_is_prefix_of_training_sample(tok):
    for name in ("default", "chatml", "plain"):
        t = get_registry().get("templates", name)
        ids = t.encode(CONV, tok)["input_ids"]
        for turn in (2, 4):
            prompt = t.encode_prompt(CONV["messages"][:turn], tok)
            assert ids[: len(prompt)] == prompt, name


def test_literal_token_ids_and_stop_ids(tok):
    t = TemplateSpec(name="ids", user=[195, "{content}"], assistant=[196, "{content}"], assistant_end=(EOS,))
    sample = t.encode({"messages": CONV["messages"][1:3]}, tok)
    assert 195 in sample["input_ids"] and 196 in sample["input_ids"]
    assert sample["labels"][sample["input_ids"].index(196)] == IGNORE_INDEX  # fixed framing before the reply: no loss
    assert t.stop_token_ids(tok) == [tok.eos_token_id]
    assert t.encode_prompt(CONV["messages"][1:2], tok)[-1] == 196


def test_invalid_conversation_is_a_clear_error(tok):
    t = get_registry().get("templates", "default")
    with pytest.raises(XtError, match="no assistant reply"):
        t.encode({"messages": [{"role": "user", "content": "x"}]}, tok)
    with pytest.raises(XtError, match="empty assistant reply"):
        t.encode({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}, tok)
