"""Which LMDeploy engine serves a model: TurboMind, the PyTorch engine, or none (refused).

When lmdeploy is importable its own support tables decide (``lmdeploy.turbomind.supported_models.
SUPPORTED_ARCHS`` and ``lmdeploy.pytorch.models.module_map.MODULE_MAP`` / ``REMOVED_MODEL_MAP``);
otherwise the built-in table below, copied from LMDeploy 0.18, does. ``XT_LMDEPLOY_TABLE=builtin``
(or ``table="builtin"``) forces the built-in table. Pure Python: no torch at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from xt.api import XtError

TABLE_ENV = "XT_LMDEPLOY_TABLE"
TABLE_CHOICES = ("auto", "builtin", "lmdeploy")
BUILTIN_VERSION = "0.18.0"

#: ``lmdeploy.turbomind.supported_models.SUPPORTED_ARCHS`` of LMDeploy 0.18 (architecture names).
BUILTIN_TURBOMIND = frozenset({
    "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
    "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration",
    "InternS2PreviewForConditionalGeneration", "InternS2MobiusForConditionalGeneration", "InternVLChatModel",
    "InternVLForConditionalGeneration", "InternS1ForConditionalGeneration", "LlamaForCausalLM",
    "InternLM2ForCausalLM", "InternLM3ForCausalLM", "Glm4MoeLiteForCausalLM", "GptOssForCausalLM",
    "MixtralForCausalLM",
})

#: The PyTorch engine's ``MODULE_MAP`` keys of LMDeploy 0.18 (architecture names).
BUILTIN_PYTORCH = frozenset({
    "ChatGLMForConditionalGeneration", "CogVLMForCausalLM", "DFlashDraftModel", "DeepseekForCausalLM",
    "DeepseekMTPModel", "DeepseekV2ForCausalLM", "DeepseekV32ForCausalLM", "DeepseekV32MTPModel",
    "DeepseekV3ForCausalLM", "DeepseekV4ForCausalLM", "DeepseekVLV2ForCausalLM", "Eagle3DeepseekV2ForCausalLM",
    "Eagle3LlamaForCausalLM", "EagleLlamaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration", "GemmaForCausalLM", "Glm4ForCausalLM", "Glm4MoeForCausalLM",
    "Glm4MoeLiteForCausalLM", "Glm4MoeMTPModel", "Glm4vForConditionalGeneration", "GlmMoeDsaForCausalLM",
    "GlmMoeDsaMTPModel", "GptOssForCausalLM", "HYV3ForCausalLM", "HYV3MTP", "InternLM2ForCausalLM",
    "InternLM2ForRewardModel", "InternLM3ForCausalLM", "InternS1ForConditionalGeneration",
    "InternS1ProForConditionalGeneration", "InternS1_1_ForConditionalGeneration", "InternS2MobiusForCausalLM",
    "InternS2MobiusForConditionalGeneration", "InternS2PreviewForCausalLM",
    "InternS2PreviewForConditionalGeneration", "InternVLChatModel", "InternVLForConditionalGeneration",
    "KimiK25ForConditionalGeneration", "Kimi_K25ForConditionalGeneration", "Llama4ForConditionalGeneration",
    "LlamaForCausalLM", "LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
    "MetaMoeForConditionalGeneration", "MiniCPM3ForCausalLM", "MiniCPMV", "MistralForCausalLM",
    "MixtralForCausalLM", "Phi3ForCausalLM", "Phi3VForCausalLM", "PhiMoEForCausalLM", "Qwen2ForCausalLM",
    "Qwen2ForRewardModel", "Qwen2MoeForCausalLM", "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Qwen3NextForCausalLM",
    "Qwen3OmniMoeForConditionalGeneration", "Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration", "Qwen3_5MTPModel", "Qwen3_5MoeForConditionalGeneration", "SDARForCausalLM",
    "SDARMoeForCausalLM",
})

#: The PyTorch engine's ``REMOVED_MODEL_MAP`` of LMDeploy 0.18: architecture -> family it dropped.
BUILTIN_REMOVED = {
    "InternLMForCausalLM": "InternLM", "QWenLMHeadModel": "Qwen and Qwen-VL", "BaiChuanForCausalLM": "Baichuan",
    "BaichuanForCausalLM": "Baichuan and Baichuan2", "Starcoder2ForCausalLM": "StarCoder2",
    "InternLM2VEForCausalLM": "Mono-InternVL", "MllamaForConditionalGeneration": "mllama",
}

BAICHUAN_ARCHS = ("BaichuanForCausalLM", "BaiChuanForCausalLM")
HF_ALTERNATIVE = "export with 'xt export RUN --to hf' and serve the folder with transformers or vLLM instead"
#: A Baichuan2 folder ships its own modeling code (xt-baichuan), which transformers runs when trusted.
BAICHUAN_HF_ALTERNATIVE = ("export with 'xt export RUN --to hf' and serve the folder with transformers "
                           "(trust_remote_code=True loads the modeling code shipped in it) instead")


@dataclass(frozen=True)
class SupportTables:
    """The architectures each engine serves, and where the answer came from."""

    turbomind: frozenset[str]
    pytorch: frozenset[str]
    removed: dict[str, str] = field(default_factory=dict)
    source: str = "builtin"  # "builtin" | "lmdeploy"
    version: str = BUILTIN_VERSION


@dataclass(frozen=True)
class Route:
    """The decision: ``backend`` is ``turbomind`` or ``pytorch``; ``convert`` names a layout change."""

    backend: str
    architecture: str
    served_architecture: str
    convert: str | None = None  # "baichuan-llama": Baichuan2-7B rewritten in the Llama layout
    tables: str = "builtin"


def builtin_tables() -> SupportTables:
    return SupportTables(BUILTIN_TURBOMIND, BUILTIN_PYTORCH, dict(BUILTIN_REMOVED), "builtin", BUILTIN_VERSION)


def lmdeploy_tables() -> SupportTables:
    """The installed lmdeploy's own tables; raises ImportError when lmdeploy cannot be imported."""
    import lmdeploy
    from lmdeploy.pytorch.models.module_map import MODULE_MAP, REMOVED_MODEL_MAP
    from lmdeploy.turbomind.supported_models import SUPPORTED_ARCHS

    return SupportTables(frozenset(SUPPORTED_ARCHS), frozenset(MODULE_MAP), dict(REMOVED_MODEL_MAP), "lmdeploy",
                         str(getattr(lmdeploy, "__version__", "?")))


def support_tables(table: str | None = None) -> SupportTables:
    """``auto``: lmdeploy's tables when it imports, else the built-in ones; ``builtin`` / ``lmdeploy`` force."""
    choice = (table or os.environ.get(TABLE_ENV) or "auto").strip().lower()
    if choice not in TABLE_CHOICES:
        raise XtError(f"Unknown LMDeploy table '{choice}'; choose one of {', '.join(TABLE_CHOICES)}.")
    if choice == "builtin":
        return builtin_tables()
    try:
        return lmdeploy_tables()
    except Exception as exc:
        if choice == "lmdeploy":
            raise XtError(f"lmdeploy's support tables could not be imported ({type(exc).__name__}: {exc}); "
                          f"install lmdeploy or use table=builtin.") from exc
        return builtin_tables()


def architecture_of(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise XtError(f"The model config (model_type {config.get('model_type')!r}) names no architecture, so no "
                      f"LMDeploy engine can be chosen; add 'architectures' to its config.json.")
    return str(archs[0])


def baichuan_uses_alibi(config: dict[str, Any]) -> bool:
    """Baichuan2-13B style (ALiBi) vs 7B style (RoPE), by the official rule."""
    position = config.get("position_embedding")
    if position in ("rope", "alibi"):
        return position == "alibi"
    return config.get("max_position_embeddings") is None


def route(config: dict[str, Any], tables: SupportTables | None = None) -> Route:
    """Pick the engine for a model config (the ``config.json`` dict); XtError when none serves it."""
    tables = tables or support_tables()
    arch = architecture_of(config)
    served, convert = arch, None
    if arch in BAICHUAN_ARCHS:
        if baichuan_uses_alibi(config):
            raise XtError(
                f"LMDeploy {tables.version} cannot serve Baichuan2-13B (ALiBi attention is not supported by TurboMind "
                f"and Baichuan was dropped from the PyTorch engine); {BAICHUAN_HF_ALTERNATIVE}.")
        served, convert = "LlamaForCausalLM", "baichuan-llama"  # 7B: same weights in the Llama layout
    if served in tables.turbomind:
        return Route("turbomind", arch, served, convert, tables.source)
    if served in tables.pytorch:
        return Route("pytorch", arch, served, convert, tables.source)
    if served in tables.removed:
        raise XtError(f"LMDeploy {tables.version} dropped {tables.removed[served]} ({served}) from its PyTorch engine "
                      f"and TurboMind does not serve it; {HF_ALTERNATIVE}.")
    raise XtError(f"No LMDeploy {tables.version} engine serves the architecture {served}; {HF_ALTERNATIVE}.")
