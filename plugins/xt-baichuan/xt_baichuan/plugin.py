"""The xt hooks of xt-baichuan (entry point ``baichuan``). Imports no torch."""

from __future__ import annotations

from functools import partial
from typing import Any

from xt.api import EOS, ExporterSpec, ModelSpec, TemplateSpec, hookimpl

#: Modules LoRA adapts in Baichuan2 (fused qkv, attention output, SwiGLU MLP).
LORA_TARGETS = ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Special token ids the official chat fine-tuning uses (``<reserved_106>`` / ``<reserved_107>``).
USER_TOKEN_ID = 195
ASSISTANT_TOKEN_ID = 196

HUB_IDS = {
    "baichuan2-7b": ("baichuan-inc/Baichuan2-7B-Base", "7b", ("baichuan2-7b-base",), None),
    "baichuan2-7b-chat": ("baichuan-inc/Baichuan2-7B-Chat", "7b", (), "baichuan2-chat"),
    "baichuan2-13b": ("baichuan-inc/Baichuan2-13B-Base", "13b", ("baichuan2-13b-base",), None),
    "baichuan2-13b-chat": ("baichuan-inc/Baichuan2-13B-Chat", "13b", (), "baichuan2-chat"),
}


def _load_model(source: Any, model_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    from xt_baichuan.loaders import load_pretrained

    return load_pretrained(source, **kwargs, **(model_args or {}))  # model_args: config overrides


def _load_tokenizer(source: Any, **kwargs: Any) -> Any:
    from xt_baichuan.loaders import load_tokenizer

    return load_tokenizer(source, **kwargs)


def _real_config(variant: str) -> Any:
    from xt_baichuan.loaders import real_config

    return real_config(variant)


def _load_tiny(variant: str, source: Any = None, model_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    from xt_baichuan.loaders import load_tiny

    return load_tiny(variant, source, **kwargs, **(model_args or {}))  # model_args: config_overrides=...


def _tiny_tokenizer(source: Any = None, **kwargs: Any) -> Any:
    from xt_baichuan.loaders import tiny_tokenizer

    return tiny_tokenizer(source)


def _tiny_config(variant: str) -> Any:
    from xt_baichuan.loaders import tiny_config

    return tiny_config(variant)


@hookimpl
def model_loader(register: Any) -> None:
    for name, (hub_id, variant, aliases, template) in HUB_IDS.items():
        style = "RoPE" if variant == "7b" else "ALiBi"
        register(ModelSpec(
            name=name, aliases=aliases, source=hub_id,
            description=f"{hub_id} (native Baichuan2, {style}; no remote code)",
            load_model=_load_model, load_tokenizer=_load_tokenizer, config=partial(_real_config, variant),
            lora_targets=LORA_TARGETS, default_template=template, extra={"variant": variant}))
    for name, variant, aliases in (("baichuan2-tiny", "7b", ("baichuan2-tiny-7b",)),
                                   ("baichuan2-tiny-13b", "13b", ())):
        style = "RoPE" if variant == "7b" else "ALiBi"
        register(ModelSpec(
            name=name, aliases=aliases, source=None,
            description=f"tiny random Baichuan2 ({style}, fixed seed) for demos and tests; no download",
            load_model=partial(_load_tiny, variant), load_tokenizer=_tiny_tokenizer,
            config=partial(_tiny_config, variant), lora_targets=LORA_TARGETS, extra={"variant": variant}))


@hookimpl
def prompt_template(register: Any) -> None:
    register(TemplateSpec(
        name="baichuan2-chat",
        description="Baichuan2 chat: [195] user [196] reply </s>; loss on reply + </s>",
        prefix="", system="{system}", user=(USER_TOKEN_ID, "{content}", ASSISTANT_TOKEN_ID),
        assistant="{content}", assistant_end=(EOS,), turn_sep=""))


def _export(run_dir_or_model_dir: Any, out_dir: Any, **options: Any) -> Any:
    from xt_baichuan.export import export_for_xt

    return export_for_xt(run_dir_or_model_dir, out_dir, **options)


@hookimpl
def exporter(register: Any) -> None:
    register(ExporterSpec(name="baichuan-llama", export=_export,
                          description="RoPE Baichuan2 -> LlamaForCausalLM folder (W_pack split, lm_head normalised)"))


@hookimpl
def register_commands(cli: Any) -> None:
    from xt_baichuan.cli import baichuan_group

    cli.add_command(baichuan_group)
