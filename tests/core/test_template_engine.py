"""The template engine on every registered template and three real tokenizers.

For each template (core and the four plugins) and the Llama-2 (SentencePiece), GPT-2 (byte-level
BPE) and tiny (2000-token BPE) tokenizers: batch and single encoding agree, the chat prompt is the
prefix of the training sample, and plain ``apply_chat_template`` on a folder saved the way results
are saved gives exactly the training ids, with transformers' own assistant mask (from the
``{% generation %}`` block, computed from token offsets) equal to xt's loss mask.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from xt.errors import XtError
from xt.plugins import get_registry
from xt.template import IGNORE_INDEX

from tests.conftest import shared_path
from tests.core.test_data_template import CONVERSATIONS

MULTI_TURN = CONVERSATIONS  # multi-turn, with and without a system prompt
#: Templates whose prompt runs straight into the reply with no framing between them: the tokenizer
#: may merge the prompt's last characters with the reply's first (``words.`` + ``"Chilling`` ->
#: ``."``), which no chat template can reproduce; their saved template is exact when the prompt
#: ends at a token boundary (checked here with prompts ending in a newline).
NO_BOUNDARY = {"plain"}
#: Templates whose reply end runs straight into the next turn's framing, both written as the family's
#: special tokens: where those are plain text the tokenizer merges across the end (``<|eot_id|><|start``
#: -> ``|><|``). Their saved template is checked on tokenizers with those tokens in test_family_templates.
NEEDS_SPECIAL_TOKENS = {"llama3": "<|eot_id|>"}


#: Built by conftest at test time (Llama-2-style SentencePiece, GPT-2-style byte-level BPE): every
#: template is checked on these on any clone.
BUILT = ["sp_tokenizer", "bpe_tokenizer"]
#: The real tokenizer files of shared/ (Llama-2, GPT-2, the 2000-token BPE): one test each runs every
#: template on it, and skips naming the file when shared/ is absent.
REAL = ["llama2", "gpt2", "tiny-bpe"]
TEMPLATES = get_registry().names("templates")


@cache
def real_tokenizer(name: str) -> Any:
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    if name == "llama2":
        return LlamaTokenizer.from_pretrained(str(shared_path("tokenizers", "llama2")))
    if name == "gpt2":
        return PreTrainedTokenizerFast(tokenizer_file=str(shared_path("tokenizers", "gpt2", "tokenizer.json")),
                                       eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(shared_path("tokenizers", "tiny-bpe", "tokenizer.json")))
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})  # the file has no special tokens
    return tok


_ALPACA: list[dict[str, Any]] = []


@pytest.fixture(autouse=True)
def _alpaca_rows(alpaca_file):
    if not _ALPACA:
        _ALPACA.extend(json.loads(alpaca_file.read_text())[:120])


def conversations() -> list[dict[str, Any]]:
    alpaca = [{"messages": [{"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
                            {"role": "assistant", "content": r["output"]}]} for r in _ALPACA]
    return MULTI_TURN + alpaca


def test_every_plugin_template_is_covered():
    assert {"auto", "llama3", "qwen2", "qwen2.5", "internlm2", "mistral", "gemma"} <= set(TEMPLATES)
    assert {"default", "chatml", "plain", "alpaca", "alpaca-demo", "baichuan2-chat", "llava-vicuna"} <= set(TEMPLATES)


@pytest.mark.parametrize("tok_name", BUILT)
@pytest.mark.parametrize("template_name", TEMPLATES)
def test_batch_single_and_prompt_prefix(template_name, tok_name, request):
    check_batch_single_and_prompt_prefix(template_name, request.getfixturevalue(tok_name))


def check_batch_single_and_prompt_prefix(template_name: str, tokenizer: Any) -> None:
    template = get_registry().get("templates", template_name)
    compiled = template.compile(tokenizer)
    convs = conversations()
    batch = compiled.encode_batch(convs)
    ids, labels, lengths = compiled.encode_arrays(convs)
    assert ids.tolist() == [i for s in batch for i in s["input_ids"]]
    assert labels.tolist() == [i for s in batch for i in s["labels"]]
    assert lengths.tolist() == [len(s["input_ids"]) for s in batch]
    for conv, sample in zip(convs, batch):
        assert compiled.encode(conv) == sample
        messages = conv["messages"]
        replies = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        for k in replies:
            prompt = compiled.encode_prompt(messages[:k])
            assert sample["input_ids"][:len(prompt)] == prompt
            assert sample["labels"][len(prompt) - 1] == IGNORE_INDEX  # the prompt carries no loss
            assert sample["labels"][len(prompt)] != IGNORE_INDEX  # the reply starts right after it


def _saved_tokenizer(tmp_path, tokenizer, template) -> Any:
    from transformers import AutoTokenizer
    from xt.model.saving import write_tokenizer_files

    write_tokenizer_files(tmp_path, tokenizer, template)
    return AutoTokenizer.from_pretrained(str(tmp_path))


def _exactly_renderable(template_name: str, conv: dict[str, Any]) -> bool:
    if template_name not in NO_BOUNDARY:
        return True
    return all(m["content"].endswith("\n") for m in conv["messages"] if m["role"] == "user")


RENDERABLE = sorted(set(TEMPLATES) - {"baichuan2-chat"} - set(NEEDS_SPECIAL_TOKENS))


@pytest.mark.parametrize("tok_name", BUILT)
@pytest.mark.parametrize("template_name", RENDERABLE)
def test_saved_chat_template_gives_training_ids_and_loss_mask(tmp_path, template_name, tok_name, request):
    check_saved_chat_template(tmp_path, template_name, request.getfixturevalue(tok_name))


@pytest.mark.parametrize("tok_name", REAL)
def test_every_template_on_the_real_tokenizer(tmp_path, tok_name):
    """The acceptance on the real Llama-2, GPT-2 and tiny-bpe files: every template, both checks."""
    tokenizer = real_tokenizer(tok_name)
    for template_name in TEMPLATES:
        check_batch_single_and_prompt_prefix(template_name, tokenizer)
    for template_name in RENDERABLE:
        check_saved_chat_template(tmp_path / template_name, template_name, tokenizer)
    check_literal_ids_refused(tokenizer)


def check_saved_chat_template(tmp_path, template_name: str, tokenizer: Any) -> None:
    template = get_registry().get("templates", template_name)
    saved = _saved_tokenizer(tmp_path, tokenizer, template)
    convs = conversations()
    if template_name in NO_BOUNDARY:
        convs = [{"messages": [dict(m, content=m["content"] + "\n") if m["role"] == "user" else m
                               for m in c["messages"]]} for c in convs]
    checked = 0
    for conv in convs:
        assert _exactly_renderable(template_name, conv)
        sample = template.encode(conv, tokenizer)
        out = saved.apply_chat_template(conv["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
        assert out["input_ids"] == sample["input_ids"], conv
        assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in sample["labels"]], conv
        messages = conv["messages"]
        for k in (k for k, m in enumerate(messages) if m["role"] == "assistant"):
            prompt = saved.apply_chat_template(messages[:k], tokenize=True, add_generation_prompt=True,
                                               return_dict=False)
            assert prompt == template.encode_prompt(messages[:k], tokenizer)
        checked += 1
    assert checked == len(convs) > 100


def test_no_boundary_template_merges_across_the_prompt_end(request):
    """Why ``plain`` is checked on newline-ended prompts: without framing the tokenizer joins the two sides."""
    tokenizer = request.getfixturevalue("bpe_tokenizer")
    template = get_registry().get("templates", "plain")
    conv = {"messages": [{"role": "user", "content": "Finish the word: th"}, {"role": "assistant", "content": "e end"}]}
    whole = tokenizer.encode(tokenizer.bos_token + "Finish the word: the end" + tokenizer.eos_token)
    assert template.encode(conv, tokenizer)["input_ids"] != whole  # 'th' + 'e' trained, 'the' in the whole string
    prompt = template.encode_prompt(conv["messages"][:1], tokenizer)
    assert template.encode(conv, tokenizer)["input_ids"][:len(prompt)] == prompt


@pytest.mark.parametrize("tok_name", BUILT)
def test_literal_ids_need_tokens_the_tokenizer_splits_on(tok_name, request):
    check_literal_ids_refused(request.getfixturevalue(tok_name))


def check_literal_ids_refused(tokenizer: Any) -> None:
    """Baichuan2's 195/196 are byte or merge tokens in these vocabularies: rendering them must refuse clearly."""
    template = get_registry().get("templates", "baichuan2-chat")
    with pytest.raises(XtError, match="uses token id 195, which this tokenizer does not produce"):
        template.compile(tokenizer).jinja()
    sample = template.encode(MULTI_TURN[2], tokenizer)  # training itself still frames with the ids
    assert sample["input_ids"].count(195) == 2 and sample["input_ids"].count(196) == 2


def test_literal_ids_render_as_their_special_tokens(tmp_path):
    """With a tokenizer where 195/196 are special tokens (as in Baichuan2's), the saved template is exact."""
    from xt.tokenizers import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    template = get_registry().get("templates", "baichuan2-chat")
    assert "<reserved_195>" in template.compile(tokenizer).jinja()
    saved = _saved_tokenizer(tmp_path, tokenizer, template)
    for conv in MULTI_TURN:
        sample = template.encode(conv, tokenizer)
        out = saved.apply_chat_template(conv["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
        assert out["input_ids"] == sample["input_ids"]
        assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in sample["labels"]]


def test_compiled_from_pieces_without_a_spec(request):
    """The engine is built from pieces (what an ``auto`` template read from a tokenizer would give)."""
    from xt.template import ChatTemplate, Piece

    tokenizer = request.getfixturevalue("bpe_tokenizer")
    eos = tokenizer.eos_token_id
    compiled = ChatTemplate(tokenizer, user=[Piece(text="Q: "), Piece(slot="content"), Piece(text="\nA:")],
                            reply=[Piece(text=" "), Piece(slot="content")], end=[Piece(ids=(eos,))],
                            turn_sep=[Piece(text="\n")])
    sample = compiled.encode(MULTI_TURN[0])
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    assert sample["input_ids"] == enc("Q: What is 2+2?\nA:") + enc(" It is 4.") + [eos]
    assert [t for t, label in zip(sample["input_ids"], sample["labels"]) if label != IGNORE_INDEX] == \
        enc(" It is 4.") + [eos]
    assert compiled.stop_token_ids() == [eos]
    assert compiled.encode_prompt(MULTI_TURN[0]["messages"][:1]) == enc("Q: What is 2+2?\nA:")


def test_space_before_the_reply_starts_the_reply(sp_tokenizer):
    """llava-vicuna's ``assistant=" {content}"``: ``ASSISTANT:`` ends the prompt, ``▁Paris`` is trained."""
    tokenizer = sp_tokenizer
    template = get_registry().get("templates", "llava-vicuna")
    conv = MULTI_TURN[1]
    sample = template.encode(conv, tokenizer)
    prompt = template.encode_prompt(conv["messages"][:2], tokenizer)
    assert tokenizer.convert_ids_to_tokens(prompt[-1]) == ":"
    assert tokenizer.convert_ids_to_tokens(sample["input_ids"][len(prompt)]).startswith("▁")  # the space is the reply's
    assert tokenizer.decode(sample["input_ids"][len(prompt):]).startswith("Paris.")
    assert sample["labels"][len(prompt)] == sample["input_ids"][len(prompt)]


def test_result_without_renderable_template_is_saved_with_a_warning(tmp_path, capsys, request):
    from xt.model.saving import TEMPLATE_FILE, write_tokenizer_files

    tokenizer = request.getfixturevalue("bpe_tokenizer")
    write_tokenizer_files(tmp_path, tokenizer, get_registry().get("templates", "baichuan2-chat"))
    assert "no chat_template saved: Template 'baichuan2-chat' uses token id 195" in capsys.readouterr().err
    assert (tmp_path / TEMPLATE_FILE).is_file() and (tmp_path / "generation_config.json").is_file()


@pytest.mark.parametrize("tok_name", BUILT)
def test_prompt_framing_ending_in_a_space(tmp_path, tok_name, request):
    """The README's ``user="Q: {content}\\nA: "``: the space starts the reply, so the saved template is exact."""
    from xt.specs import EOS, TemplateSpec

    tokenizer = request.getfixturevalue(tok_name)
    template = TemplateSpec(name="qa", user="Q: {content}\nA: ", assistant="{content}", assistant_end=(EOS,))
    saved = _saved_tokenizer(tmp_path, tokenizer, template)
    for conv in conversations():
        sample = template.encode(conv, tokenizer)
        out = saved.apply_chat_template(conv["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
        assert out["input_ids"] == sample["input_ids"]
        assert out["assistant_masks"] == [int(label != IGNORE_INDEX) for label in sample["labels"]]
    prompt = template.encode_prompt(MULTI_TURN[0]["messages"][:1], tokenizer)
    assert tokenizer.decode(prompt, skip_special_tokens=True).endswith("A:")
