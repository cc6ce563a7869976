"""Family templates and ``auto`` against each family's own Jinja chat template.

Each family's chat template is written here from the family's documented prompt format and attached
to a small tokenizer built by conftest (a GPT-2-style byte-level BPE with the Llama-3 split pattern for
Llama-3 / Qwen2 / InternLM2, a Llama-2-style SentencePiece model for Mistral / Gemma) with the
family's special tokens added. The
replies and their end token sit in ``{% generation %}`` blocks, so transformers'
``return_assistant_tokens_mask`` gives an independent loss mask. For the hand-written template of
each family and for ``auto`` reading that Jinja template: on a conversation with a system prompt and
three turns (and one without a system prompt), xt's ids equal ``apply_chat_template``'s, the loss
covers exactly the masked tokens (the replies and their end), and each chat prompt equals the
``add_generation_prompt`` rendering.
"""

from __future__ import annotations

from typing import Any

import pytest
from xt.errors import XtError
from xt.plugins import get_registry
from xt.template import IGNORE_INDEX

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def chatml(default_system: str | None, bos: bool) -> str:
    """ChatML as Qwen2 (with a default system prompt) and InternLM2 (BOS first) write it."""
    default = ("{% if loop.first and message['role'] != 'system' %}{{ '<|im_start|>system\n" + default_system
               + "<|im_end|>\n' }}{% endif %}") if default_system else ""
    return (
        ("{{ bos_token }}" if bos else "") + "{% for message in messages %}" + default
        + "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


#: Mistral has no system role: the system text opens the first [INST] with a blank line after it.
MISTRAL = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set lead = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set lead = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + (lead if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}{% endif %}{% endfor %}"
)

#: Gemma has no system role either: the system text opens the first user turn with a blank line after it.
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set lead = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set lead = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% if message['role'] == 'assistant' %}{{ '<start_of_turn>model\n' }}"
    "{% generation %}{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<start_of_turn>user\n' + (lead if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

QWEN2_DEFAULT = "You are a helpful assistant."
QWEN25_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

#: The split pattern of the Llama-3 and Qwen2 tokenizers (unlike GPT-2's, newlines group into one piece
#: whatever follows them), put on the GPT-2 vocabulary for those families.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: family -> (base vocabulary, BOS, EOS, other special tokens, Jinja chat template)
FAMILIES: dict[str, tuple[str, str, str, tuple[str, ...], str]] = {
    "llama3": ("gpt2", "<|begin_of_text|>", "<|end_of_text|>", ("<|start_header_id|>", "<|end_header_id|>",
                                                                 "<|eot_id|>"), LLAMA3),
    "qwen2": ("gpt2", None, "<|endoftext|>", ("<|im_start|>", "<|im_end|>"), chatml(QWEN2_DEFAULT, False)),
    "qwen2.5": ("gpt2", None, "<|endoftext|>", ("<|im_start|>", "<|im_end|>"), chatml(QWEN25_DEFAULT, False)),
    "internlm2": ("gpt2", "<s>", "</s>", ("<|im_start|>", "<|im_end|>"), chatml(None, True)),
    "mistral": ("llama2", "<s>", "</s>", ("[INST]", "[/INST]"), MISTRAL),
    "gemma": ("llama2", "<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>"), GEMMA),
}

CONVERSATION = [
    {"role": "system", "content": "You answer briefly, in plain words."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? Answer in a sentence."},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
    {"role": "user", "content": "List two colours,\none per line."},
    {"role": "assistant", "content": "Blue\nGreen"},
]


#: base vocabulary -> the tokenizer files conftest builds (GPT-2-style byte-level BPE, Llama-2-style SentencePiece)
_BASES: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _base_vocabularies(bpe_tokenizer_file, sp_tokenizer_dir):
    _BASES.update(gpt2=bpe_tokenizer_file, llama2=sp_tokenizer_dir)


def family_tokenizer(family: str, chat_template: str | None = None) -> Any:
    """A small tokenizer with the family's special tokens and its Jinja chat template."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import LlamaTokenizerFast, PreTrainedTokenizerFast

    base, bos, eos, specials, jinja = FAMILIES[family]
    if base == "gpt2":
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(_BASES["gpt2"]))
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tokenizer = LlamaTokenizerFast.from_pretrained(str(_BASES["llama2"]))
    tokens = {"eos_token": eos, "additional_special_tokens": list(specials)}
    if bos:
        tokens["bos_token"] = bos
    tokenizer.add_special_tokens(tokens)
    tokenizer.chat_template = jinja if chat_template is None else chat_template
    tokenizer.name_or_path = f"test/{family}-chat"
    return tokenizer


def assert_matches_jinja(template: Any, tokenizer: Any, messages: list[dict[str, str]]) -> None:
    """xt's ids, loss and prompts equal the tokenizer's own chat template's ids, assistant mask and prompts."""
    sample = template.encode({"messages": messages}, tokenizer)
    expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    assert sample["input_ids"] == expected["input_ids"]
    assert [int(label != IGNORE_INDEX) for label in sample["labels"]] == expected["assistant_masks"]
    assert sum(expected["assistant_masks"]) > 0
    for k in (k for k, m in enumerate(messages) if m["role"] == "assistant"):
        prompt = tokenizer.apply_chat_template(messages[:k], tokenize=True, add_generation_prompt=True,
                                               return_dict=False)
        assert template.encode_prompt(messages[:k], tokenizer) == list(prompt)


def _loss_text(template: Any, tokenizer: Any, messages: list[dict[str, str]]) -> str:
    sample = template.encode({"messages": messages}, tokenizer)
    return tokenizer.decode([t for t, label in zip(sample["input_ids"], sample["labels"]) if label != IGNORE_INDEX])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("which", ["family", "auto"])
def test_template_equals_the_family_chat_template(family, which):
    tokenizer = family_tokenizer(family)
    template = get_registry().get("templates", family if which == "family" else "auto")
    assert_matches_jinja(template, tokenizer, CONVERSATION)
    assert_matches_jinja(template, tokenizer, CONVERSATION[1:])  # no system prompt (Qwen: its default one)
    end = FAMILIES[family][2] if family == "mistral" else template.for_tokenizer(tokenizer).stop_words[0]
    assert _loss_text(template, tokenizer, CONVERSATION).count(end) == 3  # each reply's end token is trained


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_reads_the_family_framing(family):
    """``auto`` finds the same end, stop word and default system prompt as the hand-written template."""
    tokenizer = family_tokenizer(family)
    derived = get_registry().get("templates", "auto").for_tokenizer(tokenizer)
    written = get_registry().get("templates", family)
    assert derived.default_system == written.default_system
    assert derived.compile(tokenizer).stop_token_ids() == written.stop_token_ids(tokenizer)
    assert "test/" + family + "-chat" in derived.description


def test_qwen_default_system_prompt_is_rendered():
    tokenizer = family_tokenizer("qwen2.5")
    prompt = get_registry().get("templates", "qwen2.5").encode_prompt(CONVERSATION[1:2], tokenizer)
    assert tokenizer.decode(prompt).startswith(f"<|im_start|>system\n{QWEN25_DEFAULT}<|im_end|>\n<|im_start|>user\n")


@pytest.mark.parametrize("family", ["mistral", "gemma"])
def test_system_prompt_opens_the_first_user_turn(family):
    """Families without a system role: the system text starts the first user turn, followed by a blank line."""
    tokenizer = family_tokenizer(family)
    prompt = get_registry().get("templates", family).encode_prompt(CONVERSATION[:2], tokenizer)
    text = tokenizer.decode(prompt)
    assert f"{CONVERSATION[0]['content']}\n\n{CONVERSATION[1]['content']}" in text
    assert text.count(CONVERSATION[0]["content"]) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_auto_result_reloads_the_derived_template(tmp_path, family):
    """A result saved with ``auto`` keeps the derived template: xt_template.json and its Jinja give the same ids."""
    from transformers import AutoTokenizer
    from xt.export import template_for
    from xt.model.saving import write_tokenizer_files

    tokenizer = family_tokenizer(family)
    auto = get_registry().get("templates", "auto")
    write_tokenizer_files(tmp_path, tokenizer, auto)
    reloaded = template_for("auto", (tmp_path,))
    assert reloaded == auto.for_tokenizer(tokenizer)
    saved = AutoTokenizer.from_pretrained(str(tmp_path))
    assert_matches_jinja(reloaded, saved, CONVERSATION)


#: Templates that change earlier turns as the conversation grows, or drop them.
REWRITERS = {
    "upper-cases earlier turns": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{{ message['content'] if loop.last else message['content'] | upper }}{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}", "drops or repeats message text"),
    "numbers the turns": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' ~ loop.index ~ '\n' }}"
        "{{ message['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}", "frames the first and the second"),
    "keeps the last two messages": (
        "{% for message in messages[-2:] %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
        "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        "drops or repeats message text"),
    "marks only the last reply's end": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
        "{{ '<|im_end|>\n' if loop.last else '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        "ends the last reply differently from earlier ones"),
}


@pytest.mark.parametrize("case", REWRITERS)
def test_auto_refuses_templates_that_rewrite_earlier_turns(case):
    jinja, reason = REWRITERS[case]
    tokenizer = family_tokenizer("qwen2", jinja)
    with pytest.raises(XtError) as caught:
        get_registry().get("templates", "auto").encode({"messages": CONVERSATION}, tokenizer)
    message = str(caught.value)
    assert message.startswith("The chat template of 'test/qwen2-chat' cannot be used as template 'auto': it ")
    assert reason in message and "\n" not in message


@pytest.mark.parametrize("check, error, what", [
    ("message['role'] == 'system'", "System role not supported", "a system message"),
    ("loop.first and message['role'] != 'system'", "A system message comes first", "a plain conversation")])
def test_auto_refuses_a_template_that_fails_to_render(check, error, what):
    jinja = ("{% for message in messages %}{% if " + check + " %}{{ raise_exception('" + error + "') }}{% endif %}"
             "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}")
    tokenizer = family_tokenizer("qwen2", jinja)
    with pytest.raises(XtError, match=rf"^The chat template of 'test/qwen2-chat' .* fails to render {what} \({error}\);"):
        get_registry().get("templates", "auto").for_tokenizer(tokenizer)


def test_auto_without_a_chat_template_is_default():
    tokenizer = family_tokenizer("qwen2")
    tokenizer.chat_template = None
    registry = get_registry()
    assert registry.get("templates", "auto").for_tokenizer(tokenizer) is registry.get("templates", "default")


def test_hf_models_default_to_auto():
    from xt.data.pipeline import choose_template

    registry = get_registry()
    assert choose_template(registry.resolve_model("hf"), None).name == "auto"


def test_cli_frames_a_folder_model_with_its_own_chat_template(tmp_path):
    """``xt data preview --model FOLDER``: the folder's chat template frames the data; a rewriter is refused."""
    import json

    from click.testing import CliRunner
    from xt.cli import cli

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": CONVERSATION[1:3]}) + "\n")
    env = {"XT_CACHE_DIR": str(tmp_path / "cache")}
    family_tokenizer("qwen2").save_pretrained(str(tmp_path / "qwen"))
    res = CliRunner().invoke(cli, ["data", "preview", "--dataset", "conversation", "--model", str(tmp_path / "qwen"),
                                   "--data-files", str(rows), "-n", "1"], env=env)
    assert res.exit_code == 0, res.output
    assert f"<|im_start|>system\n{QWEN2_DEFAULT}<|im_end|>\n<|im_start|>user\n" in res.output
    assert "[[Paris.<|im_end|>]]" in res.output
    family_tokenizer("qwen2", REWRITERS["upper-cases earlier turns"][0]).save_pretrained(str(tmp_path / "rewriter"))
    res = CliRunner().invoke(cli, ["data", "preview", "--dataset", "conversation", "--model",
                                   str(tmp_path / "rewriter"), "--data-files", str(rows)], env=env)
    assert res.exit_code == 2
    assert f"The chat template of '{tmp_path / 'rewriter'}' cannot be used as template 'auto'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "rewriter" / "xt_template.json").exists()


def test_training_a_folder_model_keeps_the_template_read_from_its_tokenizer(tmp_path):
    """``xt train --model FOLDER`` (default ``auto``): the result keeps the derived template, and plain
    ``apply_chat_template`` on the saved tokenizer gives the ids xt trains with."""
    import json

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM
    from xt.config import from_dict
    from xt.export import template_for
    from xt.model.saving import TEMPLATE_FILE
    from xt.train.loop import train

    try:
        from .test_train_support import llama_config
    except ImportError:
        from test_train_support import llama_config

    tokenizer = family_tokenizer("qwen2")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(len(tokenizer), 16)).save_pretrained(str(tmp_path / "model"))
    tokenizer.save_pretrained(str(tmp_path / "model"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}+{a}"},
                                                     {"role": "assistant", "content": str(2 * a)}]}) + "\n"
                            for a in range(8)))
    run_dir = train(from_dict(dict(model=str(tmp_path / "model"), dataset="conversation", data_files=[str(rows)],
                                   method="full", zero_stage=0, max_steps=2, micro_batch_size=2, max_length=64,
                                   warmup_steps=0, save_steps=0, output=str(tmp_path / "run"),
                                   data_cache_dir=str(tmp_path / "cache"))), overwrite=True)
    final = run_dir / "final"
    saved = json.loads((final / TEMPLATE_FILE).read_text())
    assert saved["name"] == "auto" and saved["default_system"] == QWEN2_DEFAULT and saved["final_sep"] == "\n"
    template = template_for("auto", (final,))
    assert template.assistant_end == "<|im_end|>"
    assert_matches_jinja(template, AutoTokenizer.from_pretrained(str(final)), CONVERSATION)
