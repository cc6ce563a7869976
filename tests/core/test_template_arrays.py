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
