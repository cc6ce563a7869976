"""xt-baichuan: native Baichuan2 (7B RoPE, 13B ALiBi) models, tokenizer, presets and templates for xt.

Importing this package registers ``model_type: baichuan`` with the transformers Auto classes as
soon as transformers is imported (right away if it already is), without importing torch or
transformers here. Official checkpoints then load with ``AutoModelForCausalLM.from_pretrained(dir)``
and no ``trust_remote_code``.
"""

from __future__ import annotations

from xt.api import when_imported

__all__ = ["register_with_transformers"]


def register_with_transformers() -> None:
    """Register BaichuanConfig / BaichuanModel / BaichuanForCausalLM / BaichuanTokenizer with the Auto classes."""
    from xt_baichuan.auto import register

    register()


def _register_on_import() -> None:
    from xt_baichuan.auto import register_on_import

    register_on_import()


def _on_transformers_import() -> None:
    try:
        _register_on_import()
    except Exception as exc:  # never break `import transformers` for everyone else
        import warnings

        warnings.warn(f"xt-baichuan could not register Baichuan2 with transformers: {type(exc).__name__}: {exc}",
                      stacklevel=2)


when_imported("transformers", _on_transformers_import)
