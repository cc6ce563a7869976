"""The core's own registrations, loaded as an ordinary plugin named ``xt.builtins``.

A generic Hugging Face model loader (any hub id or local folder), a generic conversation dataset
format (OpenAI-style ``messages`` and ShareGPT ``conversations``), neutral templates, the default
collator, the ``hf`` exporter and the ``sft`` objective. Heavy imports happen inside the functions, never at import time.
"""

from __future__ import annotations

from typing import Any

from xt import hookimpl, specs
from xt.auto_template import AutoTemplateSpec
from xt.specs import (
    BOS,
    EOS,
    CollatorSpec,
    DatasetSpec,
    ExporterSpec,
    ModelSpec,
    ObjectiveSpec,
    RowError,
    TemplateSpec,
)

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


def _load_hf_model(source: str, model_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    from xt.model.loading import load_hf_causal_lm

    return load_hf_causal_lm(source, model_args, **kwargs)


def _load_hf_tokenizer(source: str, **kwargs: Any) -> Any:
    from xt.model.loading import load_hf_tokenizer

    return load_hf_tokenizer(source, **kwargs)


def _text_of_content(content: Any, where: str) -> tuple[str, int]:
    """OpenAI content (a string or a list of parts) -> text and the number of image parts."""
    if isinstance(content, str):
        return content, 0
    if isinstance(content, list):
        pieces = specs.content_parts(content, where)
        images = sum(1 for p in pieces if isinstance(p, dict))
        return "".join("<image>" if isinstance(p, dict) else p for p in pieces), images
    raise RowError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")


def map_conversation_row(row: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style ``messages`` or ShareGPT ``conversations`` -> the canonical conversation."""
    if "messages" in row:
        raw, role_key, text_key = row["messages"], "role", "content"
    elif "conversations" in row:
        raw, role_key, text_key = row["conversations"], "from", "value"
    else:
        raise RowError("row has neither 'messages' nor 'conversations'")
    if not isinstance(raw, list) or not raw:
        raise RowError("the message list is empty or not a list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or role_key not in m or text_key not in m:
            raise RowError(f"message {i} needs '{role_key}' and '{text_key}'")
        role = _SHAREGPT_ROLES.get(str(m[role_key]).lower())
        if role is None:
            raise RowError(f"message {i} has unknown role {m[role_key]!r}")
        text, _ = _text_of_content(m[text_key], f"message {i}")
        messages.append({"role": role, "content": text})
        if "weight" in m:  # OpenAI fine-tuning format: weight 0 keeps a reply as context, without loss
            messages[-1]["weight"] = m["weight"]
    if messages[-1]["role"] != "assistant" and not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant reply")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise RowError(f"message {i} is an empty assistant reply")
    conv: dict[str, Any] = {"messages": messages}
    images = row.get("images", row.get("image"))
    if images:
        conv["images"] = images if isinstance(images, list) else [images]
    return conv


_SAMPLE_ROWS = [
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"},
                       {"from": "human", "value": "and 3+3?"}, {"from": "gpt", "value": "6"}]},
]


@hookimpl
def model_loader(register: Any) -> None:
    register(ModelSpec(
        name="hf",
        aliases=("huggingface",),
        description="Any transformers causal LM: pass a hub id (org/name) or a local folder as --model.",
        load_model=_load_hf_model,
        load_tokenizer=_load_hf_tokenizer,
    ))


@hookimpl
def dataset_map(register: Any) -> None:
    register(DatasetSpec(
        name="conversation",
        aliases=("messages", "sharegpt", "openai"),
        description="Chat rows as OpenAI-style 'messages' or ShareGPT 'conversations'; use with --data-files.",
        map_row=map_conversation_row,
        sample_rows=_SAMPLE_ROWS,
    ))


@hookimpl
def prompt_template(register: Any) -> None:
    register(TemplateSpec(
        name="default",
        description="Neutral role-tagged template: <|user|> ... <|assistant|> ... EOS.",
        prefix=(BOS,),
        system="<|system|>\n{system}\n",
        user="<|user|>\n{content}\n<|assistant|>\n",
        assistant="{content}",
        assistant_end=(EOS,),
        turn_sep="\n",
    ))
    register(TemplateSpec(
        name="chatml",
        description="ChatML framing (<|im_start|>role ... <|im_end|>); replies end with '<|im_end|>'.",
        prefix=(),
        system="<|im_start|>system\n{system}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
        assistant="{content}",
        assistant_end="<|im_end|>",
        turn_sep="\n",
        stop_words=("<|im_end|>",),
    ))
    register(AutoTemplateSpec(
        name="auto",
        description="The model's own chat template (tokenizer.chat_template), read and verified by rendering; "
                    "'default' for a tokenizer without one.",
    ))
    _family_templates(register)
    register(TemplateSpec(
        name="plain",
        description="No framing: prompt and reply concatenated, reply ends with EOS (completion-style data).",
        prefix=(BOS,),
        system="{system}\n",
        user="{content}",
        assistant="{content}",
        assistant_end=(EOS,),
    ))


#: Qwen2's and Qwen2.5's default system prompts (their chat templates add them when there is none).
QWEN2_SYSTEM = "You are a helpful assistant."
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def _chatml(name: str, description: str, default_system: str | None, prefix: Any = ()) -> TemplateSpec:
    """ChatML as Qwen2 and InternLM2 write it: every message ends with ``<|im_end|>\\n``."""
    return TemplateSpec(
        name=name, description=description, prefix=prefix,
        system="<|im_start|>system\n{system}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
        assistant="{content}", assistant_end="<|im_end|>", turn_sep="\n", final_sep="\n",
        default_system=default_system, stop_words=("<|im_end|>",))


def _family_templates(register: Any) -> None:
    """Hand-written templates of the most used chat families, equal to their tokenizers' own templates."""
    register(TemplateSpec(
        name="llama3",
        description="Llama-3 instruct: <|start_header_id|>role<|end_header_id|> headers, replies end with <|eot_id|>.",
        prefix=(BOS,),
        system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant="{content}", assistant_end="<|eot_id|>", stop_words=("<|eot_id|>",)))
    register(_chatml("qwen2", f"Qwen2 instruct: ChatML with the default system prompt {QWEN2_SYSTEM!r}.",
                     QWEN2_SYSTEM))
    register(_chatml("qwen2.5", f"Qwen2.5 instruct: ChatML with the default system prompt {QWEN25_SYSTEM!r}.",
                     QWEN25_SYSTEM))
    register(_chatml("internlm2", "InternLM2 chat: BOS, then ChatML; no default system prompt.", None, (BOS,)))
    register(TemplateSpec(
        name="mistral",
        description="Mistral instruct: [INST] ... [/INST] reply EOS; a system prompt opens the first [INST] "
                    "followed by a blank line.",
        prefix=(BOS, "[INST] "), system="{system}\n\n", user="{content} [/INST]", assistant=" {content}",
        assistant_end=(EOS,), turn_sep="[INST] "))
    register(TemplateSpec(
        name="gemma",
        description="Gemma instruct: <start_of_turn>user/model turns ending with <end_of_turn>; a system prompt "
                    "opens the first user turn followed by a blank line.",
        prefix=(BOS, "<start_of_turn>user\n"), system="{system}\n\n",
        user="{content}<end_of_turn>\n<start_of_turn>model\n", assistant="{content}",
        assistant_end="<end_of_turn>", turn_sep="\n<start_of_turn>user\n", final_sep="\n",
        stop_words=("<end_of_turn>",)))


def _default_collator(**options: Any) -> Any:
    from xt.data.collate import make_default_collator

    return make_default_collator(**options)


@hookimpl
def collate(register: Any) -> None:
    register(CollatorSpec(
        name="default",
        description="Pads text samples (or concatenates packed rows) into input_ids, labels, attention_mask, position_ids.",
        factory=_default_collator,
    ))


def _export_hf(run_dir: Any, out_dir: Any, **options: Any) -> Any:
    from xt.export import export_hf

    return export_hf(run_dir, out_dir, **options)


@hookimpl
def exporter(register: Any) -> None:
    register(ExporterSpec(
        name="hf",
        aliases=("huggingface",),
        description="A merged Hugging Face folder (safetensors, tokenizer, generation config, chat template).",
        export=_export_hf,
    ))


def _sft_loss(model: Any, batch: dict[str, Any], context: Any) -> Any:
    from xt.train.loss import sft_loss

    return sft_loss(model, batch, context)


def _label_tokens(batch: dict[str, Any]) -> int:
    from xt.train.loss import label_tokens

    return label_tokens(batch)


@hookimpl
def objective(register: Any) -> None:
    register(ObjectiveSpec(
        name="sft",
        description="Supervised fine-tuning: token cross-entropy on the assistant replies (plus z_loss), "
                    "averaged over the label tokens of each optimizer step.",
        loss=_sft_loss,
        units=_label_tokens,
        sample_rows=({"messages": [{"role": "user", "content": "Name a colour."},
                                   {"role": "assistant", "content": "Blue."}]},),
    ))
