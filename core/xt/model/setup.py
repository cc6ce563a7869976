"""Turn a registered model into a trainable one: dtype, attention, quantization, LoRA / QLoRA / full."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from xt.errors import XtError, plugin_call
from xt.model.loading import (
    bitsandbytes_config,
    call_model_loader,
    choose_attention,
    disable_bnb_avx512bf16,
    load_hf_tokenizer,
)
from xt.model.packed import use_packed_sdpa

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_dtype(name: str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` on CPU; fp16 is refused on CPU."""
    import torch

    if name == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    if name == "fp16" and not torch.cuda.is_available():
        raise XtError("dtype 'fp16' needs a GPU (DeepSpeed's fp16 loss scaling is CUDA-only); use bf16 or fp32 on CPU.")
    return name


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, DTYPES[name])


@dataclass
class LoadedModel:
    model: Any          # the trainable module (a PeftModel for LoRA / QLoRA)
    tokenizer: Any
    source: str | None
    dtype: str          # bf16 | fp16 | fp32
    attn: str
    adapter: bool       # the result is a PEFT adapter


def load_tokenizer(spec: Any, source: str | None, trust_remote_code: bool = False,
                   model_args: dict[str, Any] | None = None) -> Any:
    """The model spec's tokenizer, with a pad token guaranteed.

    Specs with ``tokenizer_model_args`` (e.g. multimodal models assembled from parts) get the run's
    ``model_args`` too.
    """
    from xt.model.loading import ensure_pad_token

    if spec.load_tokenizer is not None:
        extra_args = dict(model_args or {}) if spec.tokenizer_model_args else {}
        with plugin_call(spec, "load_tokenizer"):
            tokenizer = spec.load_tokenizer(source, **extra_args)
    else:
        tokenizer = load_hf_tokenizer(source, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def quantization_config(cfg: Any, compute_dtype: str) -> Any:
    """``BitsAndBytesConfig`` for QLoRA (nf4, double quant) or 8-bit LoRA, else None."""
    if cfg.method != "qlora" and not cfg.load_in_8bit:
        return None
    asked_by = f"method '{cfg.method}' with quantized weights"
    if cfg.method == "qlora":
        return bitsandbytes_config(4, torch_dtype(compute_dtype), asked_by)
    import torch

    if not torch.cuda.is_available():
        raise XtError("8-bit LoRA (load_in_8bit) needs a GPU: bitsandbytes 0.50 has no CPU backward for 8-bit "
                      "matmuls; use method 'qlora' (4-bit) or plain 'lora' on CPU.")
    return bitsandbytes_config(8, None, asked_by)


def load_base_model(cfg: Any, spec: Any, source: str | None, dtype: str, attn: str) -> Any:
    """Call the spec's loader (or the generic one) with dtype, attention and quantization."""
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "attn_implementation": attn}
    qconfig = quantization_config(cfg, dtype)
    if qconfig is not None:
        import torch

        kwargs["quantization_config"] = qconfig
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": torch.cuda.current_device()}
    if cfg.trust_remote_code:
        kwargs["trust_remote_code"] = True
    model = call_model_loader(spec, source, cfg.model_args, **kwargs)
    disable_bnb_avx512bf16(model)  # always: the bug only bites after a no-grad forward
    if attn == "sdpa":
        use_packed_sdpa(model)  # packed rows: attention per sample, not over the whole row
    return model


def _lora_targets(cfg: Any, spec: Any) -> Any:
    targets = cfg.lora_targets if cfg.lora_targets is not None else spec.lora_targets
    if isinstance(targets, str):
        return targets  # "all-linear"
    return list(targets)


def apply_patterns(model: Any, train_patterns: list[str], freeze_patterns: list[str]) -> None:
    """Parameters matching ``train_patterns`` are trained, then those matching ``freeze_patterns`` frozen."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in [*train_patterns, *freeze_patterns]:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise XtError(f"Parameter pattern '{pattern}' matches no parameter of the model; "
                          f"names look like '{names[0] if names else '?'}'.")
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in train_patterns) and param.is_floating_point():
            param.requires_grad_(True)
        if any(fnmatch.fnmatchcase(name, p) for p in freeze_patterns):
            param.requires_grad_(False)


def enable_gradient_checkpointing(model: Any, peft: bool) -> None:
    """Non-reentrant checkpointing; PEFT models also need grads on the input embeddings."""
    if not getattr(model, "supports_gradient_checkpointing", True) and not peft:
        raise XtError("This model does not support gradient checkpointing; drop gradient_checkpointing.")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if peft and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def build_model(cfg: Any, spec: Any, tokenizer: Any = None) -> LoadedModel:
    """Load the model for ``cfg`` and make the right parameters trainable."""
    source = cfg.model_path or spec.source
    dtype = resolve_dtype(cfg.dtype)
    attn = choose_attention(cfg.attn)
    if tokenizer is None:
        tokenizer = load_tokenizer(spec, source, cfg.trust_remote_code, cfg.model_args)
    model = load_base_model(cfg, spec, source, dtype, attn)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    model = make_trainable(model, cfg, spec, source)
    disable_bnb_avx512bf16(model)
    total, trainable = count_parameters(model)
    if trainable == 0:
        raise XtError("No parameter is trainable; check method, train_patterns and freeze_patterns.")
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, dtype=dtype, attn=attn,
                       adapter=cfg.method in ("lora", "qlora"))


def make_trainable(model: Any, cfg: Any, spec: Any, source: str | None, *, planning: bool = False) -> Any:
    """LoRA / QLoRA adapters or full training, then ``train_patterns`` / ``freeze_patterns``.

    ``planning``: ``model`` is a meta-device copy for ``--dry-run`` (unquantized, so no k-bit
    preparation and no checkpointing); the trainable parameters come out exactly as in a run.
    """
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        quantized = cfg.method == "qlora" or cfg.load_in_8bit
        if quantized and not planning:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        elif cfg.gradient_checkpointing and not planning:
            enable_gradient_checkpointing(model, peft=True)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=_lora_targets(cfg, spec), modules_to_save=cfg.modules_to_save or None,
                          task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as exc:
            raise XtError(f"LoRA could not be applied to '{cfg.model}': {exc} Set lora_targets to module names "
                          f"of this model.") from exc
        # a preset built in memory has no folder: record its name (never a temporary folder or null)
        model.peft_config["default"].base_model_name_or_path = str(source) if source is not None else cfg.model
    else:
        if cfg.gradient_checkpointing and not planning:
            enable_gradient_checkpointing(model, peft=False)
        for param in model.parameters():
            if param.is_floating_point():
                param.requires_grad_(True)
    if cfg.train_patterns or cfg.freeze_patterns:
        apply_patterns(model, cfg.train_patterns, cfg.freeze_patterns)
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(total, trainable) parameters; 4-bit packed weights count as their unpacked size."""
    total = trainable = 0
    for param in model.parameters():
        n = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return total, trainable
