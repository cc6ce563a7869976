"""Label masks with trained tokenizers (Llama-2 style SentencePiece, GPT-2 style byte-level BPE): the
loss-bearing tokens decode to exactly the replies + end token."""

from __future__ import annotations

import json

import pytest
from xt.plugins import get_registry
from xt.template import IGNORE_INDEX

TOKENIZERS = ["sp_tokenizer", "bpe_tokenizer"]  # conftest fixtures

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]},
    {"messages": [{"role": "system", "content": "You answer briefly."},
                  {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]},
    {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."},
                  {"role": "user", "content": "And another one?"}, {"role": "assistant", "content": "Green\nas grass."}]},
    {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello there!"}, {"role": "user", "content": "Bye"},
                  {"role": "assistant", "content": "Goodbye, friend."}]},
]


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@pytest.mark.parametrize("template_name", ["default", "chatml"])
def test_labels_decode_to_replies_and_end_token(tok_name, template_name, request):
    tokenizer = request.getfixturevalue(tok_name)
    template = get_registry().get("templates", template_name)
    end = tokenizer.eos_token if template_name == "default" else "<|im_end|>"
    for conv in CONVERSATIONS:
        sample = template.encode(conv, tokenizer)
        ids, labels = sample["input_ids"], sample["labels"]
        assert len(ids) == len(labels)
        assert all(label in (IGNORE_INDEX, tid) for label, tid in zip(labels, ids))
        replies = [m["content"] for m in conv["messages"] if m["role"] == "assistant"]
        spans = _spans(labels)
        assert len(spans) == len(replies), (tok_name, template_name, conv)
        for (a, b), reply in zip(spans, replies):
            # The span is the reply's own tokens followed by the end token(s), nothing more.
            assert tokenizer.decode(ids[a:b], skip_special_tokens=False) == reply + end
            if template_name == "default":
                assert ids[b - 1] == tokenizer.eos_token_id
        # Everything outside the spans (prompt, system, user turns) carries no loss.
        prompt_text = tokenizer.decode([t for t, label in zip(ids, labels) if label == IGNORE_INDEX])
        for m in conv["messages"]:
            if m["role"] != "assistant":
                assert m["content"] in prompt_text
        # The batch encoder gives exactly the same ids and labels.
        assert template.compile(tokenizer).encode_batch([conv]) == [sample]


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_batch_encoder_matches_one_at_a_time_on_alpaca(tok_name, alpaca_file, request):
    tokenizer = request.getfixturevalue(tok_name)
    rows = json.loads(alpaca_file.read_text())[:200]
    convs = [{"messages": [{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
                           {"role": "assistant", "content": r["output"]}]} for r in rows]
    convs += CONVERSATIONS
    for name in ("default", "chatml", "plain"):
        template = get_registry().get("templates", name)
        assert template.compile(tokenizer).encode_batch(convs) == [template.encode(c, tokenizer) for c in convs]


def test_choose_template_order():
    from xt.data import choose_template
    from xt.specs import DatasetSpec, ModelSpec

    model = ModelSpec(name="m", default_template="chatml")
    plain_model = ModelSpec(name="m2")
    dataset = DatasetSpec(name="d", map_row=dict, default_template="plain")
    assert choose_template(model, dataset, "default").name == "default"
    assert choose_template(model, dataset, None).name == "chatml"
    assert choose_template(plain_model, dataset, None).name == "plain"
    # Neither names one: the tokenizer's own chat template (``auto``), which is ``default`` without one.
    assert choose_template(plain_model, DatasetSpec(name="e", map_row=dict), None).name == "auto"
    assert choose_template(None, None, None).for_tokenizer(object()).name == "default"
