"""Registration of the Baichuan2 classes with the transformers Auto classes (idempotent)."""

from __future__ import annotations

_done = False


def register() -> None:
    """AutoConfig / AutoModel / AutoModelForCausalLM / AutoTokenizer for ``model_type: baichuan``."""
    global _done
    if _done:
        return
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
