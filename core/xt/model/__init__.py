"""Model set-up: loading (attention backend, quantization), LoRA / QLoRA / full, saving results."""

from __future__ import annotations

__all__ = ["load_hf_causal_lm", "load_hf_tokenizer", "choose_attention", "build_model", "save_final",
           "count_parameters"]


def __getattr__(name: str):  # keep ``import xt.model`` free of torch
    if name in ("load_hf_causal_lm", "load_hf_tokenizer", "choose_attention"):
        from xt.model import loading

        return getattr(loading, name)
    if name in ("build_model", "count_parameters"):
        from xt.model import setup

        return getattr(setup, name)
    if name == "save_final":
        from xt.model.saving import save_final

        return save_final
    raise AttributeError(name)
