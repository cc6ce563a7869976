"""The flat-array encoder (``ChatTemplate.encode_arrays``, the data pipeline's fast path) on the edges
of its one-source-per-distinct-run plan: no conversations, repeated rows, and the same text once at
the start of a string and once after a split point (two different tokenizations of one text)."""

from __future__ import annotations

import pytest
from xt.plugins import get_registry
from xt.template import IGNORE_INDEX, ChatTemplate, Piece

from tests.core.test_data_template import CONVERSATIONS

TOKENIZERS = ["sp_tokenizer", "bpe_tokenizer"]  # conftest fixtures


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_no_conversations_give_empty_arrays(tok_name, request):
    compiled = get_registry().get("templates", "default").compile(request.getfixturevalue(tok_name))
    ids, labels, lengths = compiled.encode_arrays([])
    assert (ids.dtype, labels.dtype, lengths.dtype) == ("int32", "int32", "int64")
    assert len(ids) == len(labels) == len(lengths) == 0


@pytest.mark.parametrize("tok_name", TOKENIZERS)
@pytest.mark.parametrize("template_name", ["default", "chatml"])
def test_repeated_rows_encode_like_single_rows(tok_name, template_name, request):
    compiled = get_registry().get("templates", template_name).compile(request.getfixturevalue(tok_name))
    convs = CONVERSATIONS + CONVERSATIONS[::-1] + CONVERSATIONS[1:2] * 3  # runs shared across and within rows
    ids, labels, lengths = compiled.encode_arrays(convs)
    singles = [compiled.encode(conv) for conv in convs]
    assert lengths.tolist() == [len(s["input_ids"]) for s in singles]
    assert ids.tolist() == [i for s in singles for i in s["input_ids"]]
    assert labels.tolist() == [i for s in singles for i in s["labels"]]
    ids[0] = labels[0] = 0  # the pipeline writes into both (first label of each sample)


@pytest.mark.parametrize("block", [1, 2, 5])
def test_blocks_planned_apart_encode_as_one(block, sp_tokenizer, monkeypatch):
    """Runs first seen in one block and repeated in later ones are tokenized once and read back right."""
    import xt.template

    compiled = get_registry().get("templates", "default").compile(sp_tokenizer)
    convs = CONVERSATIONS + CONVERSATIONS[::-1] + CONVERSATIONS[1:2] * 3
    whole = compiled.encode_arrays(convs)
    monkeypatch.setattr(xt.template, "ENCODE_BLOCK", block)
    split = compiled.encode_arrays(convs)
    assert len(convs) > 2 * block  # several blocks, some with no new run
    assert [a.tolist() for a in split] == [a.tolist() for a in whole]
    assert [a.dtype for a in split] == [a.dtype for a in whole]


def test_a_text_at_the_start_and_after_a_split_point_tokenizes_both_ways(sp_tokenizer):
    eos = sp_tokenizer.eos_token_id
    compiled = ChatTemplate(sp_tokenizer, user=[Piece(slot="content")], reply=[Piece(slot="content")],
                            end=[Piece(ids=(eos,))])
    first = sp_tokenizer.encode("Hello", add_special_tokens=False)  # with SentencePiece's dummy-prefix space
    after = sp_tokenizer.encode(sp_tokenizer.eos_token + "Hello", add_special_tokens=False)[1:]
    assert first != after  # else this test could not tell the two apart
    conv = {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello"}]}
    ids, labels, lengths = compiled.encode_arrays([conv, conv])
    sample = first + after + [eos]
    assert ids.tolist() == sample * 2
    assert labels.tolist() == ([IGNORE_INDEX] * len(first) + after + [eos]) * 2
    assert lengths.tolist() == [len(sample)] * 2


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_a_reply_of_weight_zero_is_context_without_loss(tok_name, request):
    """OpenAI-style ``weight: 0`` on an assistant message: its tokens stay, its labels go (every path alike)."""
    from xt.specs import conversation_problems

    compiled = get_registry().get("templates", "default").compile(request.getfixturevalue(tok_name))
    turns = [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "Uno."},
             {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "Dos."}]
    weighted = [*turns[:1], dict(turns[1], weight=0), *turns[2:]]
    full, context = compiled.encode({"messages": turns}), compiled.encode({"messages": weighted})
    ids, labels, _ = compiled.encode_arrays([{"messages": weighted}])
    assert ids.tolist() == context["input_ids"] and labels.tolist() == context["labels"]
    first_reply = compiled.encode({"messages": turns[:2]})
    labelled = [i for i, label in enumerate(first_reply["labels"]) if label != IGNORE_INDEX]
    assert labelled and all(context["labels"][i] == IGNORE_INDEX for i in labelled)  # the first reply: no loss
    last = [t for t, label in zip(full["input_ids"], full["labels"]) if label != IGNORE_INDEX][-3:]
    assert [t for t, label in zip(context["input_ids"], context["labels"]) if label != IGNORE_INDEX][-3:] == last
    assert conversation_problems({"messages": weighted}) == []
    assert conversation_problems({"messages": [turns[0], dict(turns[1], weight=0)]}) == ["no assistant reply to learn from"]
    assert conversation_problems({"messages": [dict(turns[0], weight=0), turns[1]]}) \
        == ["message 0: 'weight' must be 0 or 1 and only on an assistant reply"]


def test_the_conversation_format_keeps_openai_weights():
    from xt.builtins import map_conversation_row
    from xt.specs import conversation_problems

    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey", "weight": 0},
                        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao", "weight": 1}]}
    conv = map_conversation_row(row)
    assert [m.get("weight") for m in conv["messages"]] == [None, 0, None, 1] and conversation_problems(conv) == []


def test_gather_index_concatenates_segments_in_any_order():
    import numpy as np
    from xt.arrays import gather_index

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, 300)
    lengths[[0, 7, -1]] = 0  # empty segments first, inside and last
    starts = rng.integers(0, 1000, 300)  # forwards, backwards, overlapping
    index = gather_index(starts, lengths)
    expected = [s + k for s, n in zip(starts.tolist(), lengths.tolist()) for k in range(n)]
    assert index.tolist() == expected and index.dtype == np.int32
    assert gather_index([5], [0]).tolist() == [] and gather_index([], []).tolist() == []
    big = gather_index([2**31 - 1, 3], [2, 1])  # an index past int32: int64, values exact
    assert big.dtype == np.int64 and big.tolist() == [2**31 - 1, 2**31, 3]
