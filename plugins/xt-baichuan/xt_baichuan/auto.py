"""Registration of the Baichuan2 classes with the transformers Auto classes (idempotent).

``import transformers`` triggers :func:`register_on_import`. When that import happens from inside
one of this package's own modules (e.g. ``from xt_baichuan.modeling_baichuan import ...`` in a fresh
process), the classes are not defined yet, so registration waits until that module has finished
(each module calls :func:`register_if_pending` at its end).
"""

from __future__ import annotations

import sys

_OWN_MODULES = ("xt_baichuan.configuration_baichuan", "xt_baichuan.modeling_baichuan",
                "xt_baichuan.tokenization_baichuan")
_done = False
_busy = False
_pending = False


def _own_module_initializing() -> bool:
    for name in _OWN_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


def register() -> None:
    """AutoConfig / AutoModel / AutoModelForCausalLM / AutoTokenizer for ``model_type: baichuan``."""
    global _done, _busy, _pending
    if _done or _busy:
        return
    _busy, _pending = True, False
    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        from xt_baichuan.configuration_baichuan import BaichuanConfig
        from xt_baichuan.modeling_baichuan import BaichuanForCausalLM, BaichuanModel
        from xt_baichuan.tokenization_baichuan import BaichuanTokenizer

        if "baichuan" not in CONFIG_MAPPING:
            AutoConfig.register("baichuan", BaichuanConfig)
        AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
        AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)
        AutoTokenizer.register(BaichuanConfig, slow_tokenizer_class=BaichuanTokenizer, exist_ok=True)
        _done = True
    finally:
        _busy = False


def register_on_import() -> None:
    """Called right after ``import transformers``."""
    global _pending
    if _own_module_initializing():
        _pending = True
        return
    register()


def register_if_pending() -> None:
    """Called at the end of this package's modules: finish a registration that had to wait."""
    if _pending and not _own_module_initializing_except_caller():
        register()


def _own_module_initializing_except_caller() -> bool:
    """True while another of our modules (not the one calling, which is complete) is mid-import."""
    caller = sys._getframe(2).f_globals.get("__name__")
    for name in _OWN_MODULES:
        module = sys.modules.get(name)
        if name != caller and module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False
