"""Load Hugging Face causal LMs and tokenizers; choose the attention backend; the bnb CPU guard."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from xt.errors import XtError

ATTN_CHOICES = ("auto", "sdpa", "eager", "flash_attention_2")
#: bitsandbytes' logger that warns, on AVX512-BF16 CPUs, that its hub kernel for that path is missing.
BNB_CPU_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


def quiet_bnb_cpu_kernel_warning() -> None:
    """Hide that warning: peft imports bitsandbytes in every run, quantized or not, and xt switches the
    AVX512-BF16 path off on every ``Linear4bit`` anyway (:func:`disable_bnb_avx512bf16`), so the
    missing kernel is never used. Errors from that logger still show."""
    import logging

    logging.getLogger(BNB_CPU_KERNEL_LOGGER).setLevel(logging.ERROR)


quiet_bnb_cpu_kernel_warning()


def flash_attn_available() -> bool:
    """flash-attn is importable and a CUDA device is present."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    import torch

    return torch.cuda.is_available()


def choose_attention(requested: str = "auto") -> str:
    """``auto`` -> flash_attention_2 when flash-attn and CUDA are there, else sdpa."""
    if requested not in ATTN_CHOICES:
        raise XtError(f"Unknown attention backend '{requested}'; choose one of {', '.join(ATTN_CHOICES)}.")
    if requested == "auto":
        return "flash_attention_2" if flash_attn_available() else "sdpa"
    if requested == "flash_attention_2" and not flash_attn_available():
        raise XtError("attn 'flash_attention_2' needs the flash-attn package and a CUDA GPU, which this machine "
                      "lacks; use --set attn=sdpa (or auto).")
    return requested


def _no_hub_hint(source: str, exc: Exception) -> XtError:
    return XtError(f"Could not load '{source}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                   f"Pass an existing local folder with --model-path, or check the hub id and your network.")


def call_model_loader(spec: Any, source: str | None, model_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """``spec.load_model(source, model_args=..., **from_pretrained keywords)``, the one way the core loads
    a model; without a loader, the generic one (which takes ``model_args`` as config overrides). A plugin
    loader's exception reaches the user as one line naming the spec and its plugin."""
    from xt.errors import plugin_call

    with plugin_call(spec, "load_model"):
        return (spec.load_model or load_hf_causal_lm)(source, model_args=dict(model_args or {}), **kwargs)


def load_hf_causal_lm(source: str, model_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` with safetensors preferred and remote code off by default.

    ``model_args`` are passed on as config overrides (e.g. ``rope_theta``), after the loading keywords.
    """
    from transformers import AutoModelForCausalLM

    kwargs.update(model_args or {})
    if source is None:
        raise XtError("The generic 'hf' model needs a hub id or folder; pass --model ORG/NAME or --model-path DIR.")
    kwargs.setdefault("trust_remote_code", False)
    if os.path.isdir(os.path.expanduser(str(source))):
        source = os.path.expanduser(str(source))
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise _no_hub_hint(str(source), exc) from exc


def load_hf_tokenizer(source: str, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained``; a pad token is chosen when the tokenizer has none."""
    from transformers import AutoTokenizer

    if source is None:
        raise XtError("The generic 'hf' model needs a hub id or folder for its tokenizer; pass --model-path DIR.")
    kwargs.setdefault("trust_remote_code", False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(str(source)), **kwargs)
    except (OSError, ValueError) as exc:
        raise _no_hub_hint(str(source), exc) from exc
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: Any) -> None:
    """Use unk, then eos as the pad token when the tokenizer defines none."""
    if getattr(tokenizer, "pad_token_id", None) is None:
        if getattr(tokenizer, "unk_token", None) is not None:
            tokenizer.pad_token = tokenizer.unk_token
        elif getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token


def safe_pad_id(tokenizer: Any, model: Any) -> int:
    """The tokenizer's pad id when the model can embed it, else EOS / 0 (training and generation both pad with it).

    Some tokenizers name a pad token outside the model's vocabulary (Llama-2's ``<pad>`` is id 32000
    of a 32000-row embedding); packed rows carry no attention mask and
    left-padded generation embeds its pads too, so pads do reach the embedding.
    """
    rows = model.get_input_embeddings().num_embeddings if hasattr(model, "get_input_embeddings") else None
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None and (rows is None or 0 <= candidate < rows):
            return int(candidate)
    return 0


def bitsandbytes_config(bits: int, compute_dtype: Any, asked_by: str) -> Any:
    """``BitsAndBytesConfig`` for 4-bit NF4 weights (double quantization, computing in ``compute_dtype``)
    or 8-bit weights; ``asked_by`` names what asked for it when bitsandbytes is missing."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as exc:
        raise XtError(f"{asked_by} needs bitsandbytes, which failed to import ({exc}); "
                      f"pip install 'xt-core[qlora]'.") from exc
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def disable_bnb_avx512bf16(model: Any) -> int:
    """Turn off bitsandbytes' AVX512-BF16 CPU path on every ``Linear4bit``; returns how many were patched.

    bitsandbytes 0.50 on CPUs with AVX512-BF16 caches a bf16 copy of the weights in its no-grad
    forward path and later 4-bit backward passes use it wrongly, silently corrupting LoRA gradients
    after any eval / generation forward. The flag forces the plain dequantize path everywhere.
    """
    import sys

    if "bitsandbytes" not in sys.modules:  # nothing can be quantized; avoid bitsandbytes' import noise
        return 0
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:
        return 0
    patched = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
            patched += 1
    return patched


def build_preset(config: Any, model_class: Any = None, *, seed: int = 0, dtype: Any = None,
                 attn_implementation: str | None = None, quantization_config: Any = None,
                 reload: Any = None, **from_pretrained_kwargs: Any) -> Any:
    """A model with freshly initialised weights from ``config``: the same weights for the same seed.

    The weights are drawn under ``seed`` inside a forked RNG (the caller's random state is left as it
    was), with ``attn_implementation`` when given, then cast to ``dtype`` (a torch dtype or its name).
    With ``quantization_config`` the model is saved to a temporary folder and loaded back through
    ``reload(folder, **kwargs)`` (default: the class's ``from_pretrained``) so transformers quantizes
    it; ``from_pretrained_kwargs`` go to that call. ``model_class`` defaults to the causal-LM class
    transformers maps the config to. This is what a plugin's preset loader calls, so that two runs or
    two exports of the same preset start from identical weights.
    """
    import tempfile

    import torch

    if model_class is None:
        from transformers import AutoModelForCausalLM

        model_class = AutoModelForCausalLM
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    build = getattr(model_class, "from_config", None) or model_class._from_config  # Auto class or model class
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(config, **attn)
    if quantization_config is None:
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model
    kwargs: dict[str, Any] = {"quantization_config": quantization_config, **from_pretrained_kwargs}
    if isinstance(dtype, torch.dtype):
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with tempfile.TemporaryDirectory(prefix="xt-preset-") as folder:
        model.save_pretrained(folder, safe_serialization=True)
        return (reload or type(model).from_pretrained)(folder, **kwargs)
