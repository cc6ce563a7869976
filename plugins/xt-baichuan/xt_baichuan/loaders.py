"""Model / tokenizer / config loaders behind the ``model_loader`` registrations.

Every function imports torch and transformers lazily, so the plugin module stays light.
"""

from __future__ import annotations

import os
from typing import Any

from xt.api import XtError

#: The official architectures (Baichuan2 config.json files on the hub).
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "7b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "intermediate_size": 11008,
           "vocab_size": 125696, "max_position_embeddings": 4096, "model_max_length": 4096, "rms_norm_eps": 1e-6},
    "13b": {"hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40, "intermediate_size": 13696,
            "vocab_size": 125696, "model_max_length": 4096, "rms_norm_eps": 1e-6},
}

#: Sizes of the tiny presets (vocabulary comes from the tiny tokenizer).
TINY_SIZES: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "model_max_length": 512}
TINY_SEED = 1234


def _register() -> None:
    from xt_baichuan.auto import register

    register()


def real_config(variant: str) -> Any:
    """The architecture of Baichuan2-7B (``"7b"``, RoPE) or -13B (``"13b"``, ALiBi), offline."""
    _register()
    from xt_baichuan.remote_code.configuration_baichuan import BaichuanConfig

    values = dict(REAL_CONFIGS[variant])
    values["architectures"] = ["BaichuanForCausalLM"]
    return BaichuanConfig(**values)


def _check_source(source: str | os.PathLike | None, what: str) -> str:
    if source is None:
        raise XtError(f"No {what} source given; pass a hub id or a local Baichuan2 folder (--model-path).")
    path = os.path.expanduser(os.fspath(source))
    if path.startswith((".", "/", "~")) or os.path.isabs(path):
        if not os.path.isdir(path):
            raise XtError(f"Baichuan2 folder '{source}' does not exist; pass an existing folder or a hub id.")
    return path


def _skip_head_in_quantization(kwargs: dict[str, Any]) -> None:
    """Keep the NormHead a full-precision Linear when a bitsandbytes config names its own skip list."""
    qconfig = kwargs.get("quantization_config")
    skip = getattr(qconfig, "llm_int8_skip_modules", None)
    if qconfig is not None and skip is not None and "lm_head" not in skip:
        qconfig.llm_int8_skip_modules = [*skip, "lm_head"]


def load_pretrained(source: str | os.PathLike | None, **kwargs: Any) -> Any:
    """A Baichuan2 checkpoint (hub id or folder, official layout; safetensors or sharded .bin)."""
    path = _check_source(source, "model")
    _register()
    from xt_baichuan.remote_code.modeling_baichuan import BaichuanForCausalLM

    if os.path.isdir(path):
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise XtError(f"'{source}' has no config.json; it is not a Baichuan2 checkpoint folder.")
    kwargs.pop("trust_remote_code", None)  # the native classes never need the remote code
    _skip_head_in_quantization(kwargs)
    return BaichuanForCausalLM.from_pretrained(path, **kwargs)


def load_tokenizer(source: str | os.PathLike | None, **kwargs: Any) -> Any:
    """Baichuan2's SentencePiece tokenizer from a folder with ``tokenizer.model`` (or a hub id)."""
    path = _check_source(source, "tokenizer")
    _register()
    from xt_baichuan.remote_code.tokenization_baichuan import BaichuanTokenizer

    if os.path.isfile(path):  # the tokenizer.model file itself
        return BaichuanTokenizer(vocab_file=path, **kwargs)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "tokenizer.model")):
        raise XtError(f"No tokenizer.model in '{path}'; Baichuan2 needs its SentencePiece file there "
                      f"(copy it from the official checkpoint).")
    return BaichuanTokenizer.from_pretrained(path, **kwargs)


# --------------------------------------------------------------------------- tiny presets


def tiny_tokenizer(source: Any = None) -> Any:
    """The core's download-free tokenizer (0 unk/pad, 1 BOS, 2 EOS, 3..199 reserved)."""
    from xt.api import tiny_tokenizer as core_tiny_tokenizer

    return core_tiny_tokenizer()


def tiny_config(variant: str = "7b", config_overrides: dict[str, Any] | None = None) -> Any:
    """A small random-init Baichuan2 config (``"7b"``: RoPE, ``"13b"``: ALiBi) sized to the tiny tokenizer."""
    _register()
    from xt_baichuan.remote_code.configuration_baichuan import BaichuanConfig

    values: dict[str, Any] = dict(TINY_SIZES)
    values["vocab_size"] = len(tiny_tokenizer())
    values["position_embedding"] = "rope" if variant == "7b" else "alibi"
    if variant == "7b":
        values["max_position_embeddings"] = values["model_max_length"]
    values["architectures"] = ["BaichuanForCausalLM"]
    for key, value in (config_overrides or {}).items():
        values[key] = value
    if variant == "7b" and "model_max_length" in (config_overrides or {}) and \
            "max_position_embeddings" not in (config_overrides or {}):
        values["max_position_embeddings"] = values["model_max_length"]
    try:
        return BaichuanConfig(**values)
    except (TypeError, ValueError) as exc:
        raise XtError(f"Bad config_overrides for the tiny Baichuan2 preset: {exc}") from exc


def load_tiny(variant: str, source: Any = None, config_overrides: dict[str, Any] | None = None,
              **kwargs: Any) -> Any:
    """A random-init tiny Baichuan2 with a fixed seed (the core's ``build_preset``); honours dtype,
    attn_implementation and quantization_config."""
    from xt.api import build_preset

    config = tiny_config(variant, config_overrides)
    if source is not None and os.path.isdir(os.fspath(source)):
        return load_pretrained(source, **kwargs)  # --model-path given: a saved tiny model
    from xt_baichuan.remote_code.modeling_baichuan import BaichuanForCausalLM

    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    return build_preset(config, BaichuanForCausalLM, seed=TINY_SEED, dtype=dtype, reload=load_pretrained, **kwargs)
