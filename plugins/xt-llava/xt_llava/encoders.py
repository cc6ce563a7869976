"""Vision encoders (registered with kind ``vision-encoder``): CLIP vision towers and their image processors.

An encoder spec's ``load_model(source, **kwargs)`` returns a transformers vision model whose
``hidden_states`` the LLaVA projector reads, ``load_tokenizer(source)`` returns its image processor
and ``config()`` its vision config. Other plugins add encoders by registering specs of the same kind.
"""

from __future__ import annotations

import os
from typing import Any

from xt.api import XtError

#: The image-processor settings OpenAI published with CLIP ViT-L/14-336 (bicubic resize of the
#: shortest side, centre crop, CLIP mean / std). Smaller towers use the same settings at their own size.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3

CLIP_LARGE_336 = "openai/clip-vit-large-patch14-336"
TINY_SEED = 1234


def clip_large_336_config() -> Any:
    """The vision config of CLIP ViT-L/14 at 336 px (known offline, for dry runs)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            patch_size=14, image_size=336, projection_dim=768, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5)


def clip_tiny_config(image_size: int = 28) -> Any:
    """A tiny random CLIP vision tower: ``image_size`` px in patches of 14, two layers of width 32."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            patch_size=14, image_size=image_size, projection_dim=32, hidden_act="quick_gelu")


def clip_image_processor(image_size: int) -> Any:
    """CLIP preprocessing (resize shortest side, centre crop, CLIP mean / std) at ``image_size`` px."""
    cls = image_processor_class()
    return cls(do_resize=True, size={"shortest_edge": image_size}, resample=BICUBIC, do_center_crop=True,
               crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255,
               do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


def image_processor_class() -> Any:
    """transformers' CLIP image processor: the torchvision one when torchvision is installed, else the PIL one."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil


def _local(source: Any) -> str | None:
    if source is None:
        return None
    path = os.path.expanduser(str(source))
    return path if os.path.isdir(path) else None


def load_clip_image_processor(source: Any = None, *, image_size: int = 336, **_: Any) -> Any:
    """The saved image processor of a local CLIP folder, else CLIP's published settings at ``image_size``."""
    folder = _local(source)
    if folder and os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(folder)
    return clip_image_processor(image_size)


def load_clip_vision(source: Any, *, dtype: Any = None, attn_implementation: str | None = None, **kwargs: Any) -> Any:
    """A pretrained ``CLIPVisionModel`` from a hub id or folder (a full CLIP checkpoint works too)."""
    from transformers import CLIPVisionModel

    if source is None:
        raise XtError("The CLIP vision encoder needs a hub id or folder; pass one as its source.")
    extra = {k: v for k, v in kwargs.items() if k in ("device_map", "low_cpu_mem_usage")}
    try:
        return CLIPVisionModel.from_pretrained(os.path.expanduser(str(source)), dtype=dtype,
                                               attn_implementation=_vision_attn(attn_implementation), **extra)
    except (OSError, ValueError) as exc:
        raise XtError(f"Could not load the CLIP vision encoder '{source}': {str(exc).splitlines()[0]}. Pass a local "
                      f"folder (model_args.vision_encoder_path) or check the hub id and your network.") from exc


def load_clip_tiny(source: Any = None, *, dtype: Any = None, attn_implementation: str | None = None,
                   image_size: int = 28, seed: int = TINY_SEED, **_: Any) -> Any:
    """The tiny random CLIP vision tower, the same weights on every call (fixed seed)."""
    from transformers import CLIPVisionModel
    from xt.api import build_preset

    if _local(source):
        return load_clip_vision(source, dtype=dtype, attn_implementation=attn_implementation)
    return build_preset(clip_tiny_config(image_size), CLIPVisionModel, seed=seed, dtype=dtype,
                        attn_implementation=_vision_attn(attn_implementation))


def _vision_attn(requested: str | None) -> str:
    """CLIP supports sdpa and eager (flash-attn 2 too); anything else falls back to sdpa."""
    return requested if requested in ("eager", "sdpa", "flash_attention_2") else "sdpa"


def tokens_per_image(vision_config: Any, select_strategy: str = "default") -> int:
    """Image tokens one image becomes: (image_size / patch_size)^2, plus CLS for the ``full`` strategy."""
    patches = (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2
    return patches + (1 if select_strategy == "full" else 0)
