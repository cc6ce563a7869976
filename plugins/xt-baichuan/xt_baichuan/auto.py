"""Registration of the Baichuan2 classes with the transformers Auto classes (idempotent).

``import transformers`` triggers :func:`register_on_import`. The classes live in
:mod:`xt_baichuan.remote_code`, whose package imports transformers before any of its modules, so
registration never meets a half-imported module. Each class is also registered for its Auto class,
so ``save_pretrained`` ships its source file and writes the ``auto_map`` that lets plain transformers
load a saved folder with ``trust_remote_code=True``.
"""

from __future__ import annotations

_done = False
_busy = False


def register() -> None:
    """AutoConfig / AutoModel / AutoModelForCausalLM / AutoTokenizer for ``model_type: baichuan``."""
    global _done, _busy
    if _done or _busy:
        return
    _busy = True
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        from xt_baichuan.remote_code.configuration_baichuan import BaichuanConfig
        from xt_baichuan.remote_code.modeling_baichuan import BaichuanForCausalLM, BaichuanModel
        from xt_baichuan.remote_code.tokenization_baichuan import BaichuanTokenizer

        if "baichuan" not in CONFIG_MAPPING:
            AutoConfig.register("baichuan", BaichuanConfig)
        AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
        AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)
        AutoTokenizer.register(BaichuanConfig, slow_tokenizer_class=BaichuanTokenizer, exist_ok=True)
        BaichuanConfig.register_for_auto_class("AutoConfig")
        BaichuanForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        BaichuanTokenizer.register_for_auto_class("AutoTokenizer")
        _done = True
    finally:
        _busy = False


def register_on_import() -> None:
    """Called right after ``import transformers``."""
    register()
