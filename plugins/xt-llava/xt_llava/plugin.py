"""The xt hooks of xt-llava (entry point ``llava``). Imports no torch: heavy code loads inside the loaders."""

from __future__ import annotations

from functools import partial
from typing import Any

from xt.api import BOS, EOS, CollatorSpec, DatasetSpec, ModelSpec, TemplateSpec, hookimpl

from xt_llava.model import Recipe  # light: the module imports torch / transformers only inside functions

#: LoRA goes into the LLM only (a regex over module names): the vision tower and projector get none.
LORA_TARGETS = (r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|"
                r"gate_up_proj|query_key_value|dense|dense_h_to_4h|dense_4h_to_h|fc1|fc2|c_attn|c_proj|c_fc|"
                r"w1|w2|w3|wqkv|wo)")

#: ``xt train --stage NAME`` defaults (the user's own settings win).
PRETRAIN = {
    "method": "full",
    "train_patterns": ["*multi_modal_projector*"],
    "freeze_patterns": ["*vision_tower*", "*language_model*", "*lm_head*"],
    "collator": "llava",
    "pack": False,
    "lr": 1e-3,
}
FINETUNE = {
    "method": "lora",
    "modules_to_save": ["multi_modal_projector"],
    "freeze_patterns": ["*vision_tower*"],
    "collator": "llava",
    "pack": False,
    "lr": 2e-4,
}
#: LLaVA-1.5 at 336 px: 576 image tokens, so text gets 2048 - 576 tokens (as XTuner's configs do).
REAL_MAX_LENGTH = 2048 - 576


def _stages(max_length: int | None = None) -> dict[str, dict[str, Any]]:
    extra = {"max_length": max_length} if max_length else {}
    return {"pretrain": {**PRETRAIN, **extra}, "finetune": {**FINETUNE, **extra}}


# --------------------------------------------------------------------------- lazy wrappers (no torch at import)


def _load_llava(recipe: Any, source: Any = None, model_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    from xt_llava.model import load_llava

    return load_llava(recipe, source, model_args, **kwargs)


def _load_processor(recipe: Any, source: Any = None, **model_args: Any) -> Any:
    from xt_llava.model import load_llava_processor

    return load_llava_processor(recipe, source, **model_args)


def _recipe_config(recipe: Any) -> Any:
    from xt_llava.model import llava_config

    return llava_config(recipe)


def _vicuna_config() -> Any:
    from xt_llava.model import vicuna_7b_llava_config

    return vicuna_7b_llava_config()


def _answer_image(*args: Any, **kwargs: Any) -> Any:
    from xt_llava.chat import answer_image

    return answer_image(*args, **kwargs)


def _batch_sampler(*args: Any, **kwargs: Any) -> Any:
    from xt_llava.sampler import make_batch_sampler

    return make_batch_sampler(*args, **kwargs)


def _clip_model(tiny: bool, source: Any = None, model_args: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    from xt_llava import encoders

    return (encoders.load_clip_tiny if tiny else encoders.load_clip_vision)(source, **kwargs)


def _clip_processor(image_size: int, source: Any = None, **_: Any) -> Any:
    from xt_llava.encoders import load_clip_image_processor

    return load_clip_image_processor(source, image_size=image_size)


def _clip_config(tiny: bool) -> Any:
    from xt_llava import encoders

    return encoders.clip_tiny_config() if tiny else encoders.clip_large_336_config()


def _llava_fields(max_length: int | None = None) -> dict[str, Any]:
    """The ModelSpec fields every llava model shares: stages, collator, sampler, image chat."""
    return {"stages": _stages(max_length), "collator": "llava", "batch_sampler": _batch_sampler,
            "answer_image": _answer_image, "tokenizer_model_args": True}


# --------------------------------------------------------------------------- hooks


@hookimpl
def model_loader(register: Any) -> None:
    register(ModelSpec(
        name="clip-vit-large-336", aliases=("clip-vit-large-patch14-336",), kind="vision-encoder",
        source="openai/clip-vit-large-patch14-336",
        description="CLIP ViT-L/14 at 336 px (576 patches): the LLaVA-1.5 vision encoder",
        load_model=partial(_clip_model, False), load_tokenizer=partial(_clip_processor, 336),
        config=partial(_clip_config, False)))
    register(ModelSpec(
        name="clip-tiny", kind="vision-encoder", source=None,
        description="tiny random CLIP vision tower (28 px, patch 14, 4 patches) for tests and demos; no download",
        load_model=partial(_clip_model, True), load_tokenizer=partial(_clip_processor, 28),
        config=partial(_clip_config, True)))

    generic = None  # the generic spec: everything comes from model_args or --model-path
    register(ModelSpec(
        name="llava", kind="multimodal", source=None,
        description="LLaVA from parts: model_args llm=<causal LM> vision_encoder=<encoder>; or --model-path to a "
                    "saved Hugging Face llava folder",
        load_model=partial(_load_llava, generic), load_tokenizer=partial(_load_processor, generic),
        lora_targets=LORA_TARGETS, **_llava_fields()))
    tiny = Recipe(llm="tiny", vision_encoder="clip-tiny")
    register(ModelSpec(
        name="llava-tiny", kind="multimodal", source=None,
        description="tiny random LLaVA (tiny Llama + clip-tiny + projector, fixed seeds) for tests and demos; "
                    "no download",
        load_model=partial(_load_llava, tiny), load_tokenizer=partial(_load_processor, tiny),
        config=partial(_recipe_config, tiny), lora_targets=LORA_TARGETS, **_llava_fields()))
    vicuna = Recipe(llm="lmsys/vicuna-7b-v1.5", vision_encoder="clip-vit-large-336")
    register(ModelSpec(
        name="llava-vicuna-7b", kind="multimodal", source=None,
        description="LLaVA-1.5 recipe: lmsys/vicuna-7b-v1.5 + openai/clip-vit-large-patch14-336 + new projector "
                    "(train with stage pretrain, then stage finetune)",
        load_model=partial(_load_llava, vicuna), load_tokenizer=partial(_load_processor, vicuna),
        config=_vicuna_config, lora_targets=LORA_TARGETS, default_template="llava-vicuna",
        **_llava_fields(REAL_MAX_LENGTH)))
    register(ModelSpec(
        name="llava-1.5-7b", aliases=("llava-1.5-7b-hf",), kind="multimodal", source="llava-hf/llava-1.5-7b-hf",
        description="llava-hf/llava-1.5-7b-hf, a trained LLaVA-1.5 in the Hugging Face layout (fine-tune it further)",
        load_model=partial(_load_llava, generic), load_tokenizer=partial(_load_processor, generic),
        config=_vicuna_config, lora_targets=LORA_TARGETS, default_template="llava-vicuna",
        **_llava_fields(REAL_MAX_LENGTH)))


def _map_row(row: dict[str, Any], context: Any) -> dict[str, Any]:
    """The ``llava`` dataset's map: relative image paths are looked up under the run's image folder."""
    from xt_llava.data import map_llava_row

    return map_llava_row(row, image_folder=context.image_folder)


def _sample_rows() -> list[dict[str, Any]]:
    from xt_llava.data import SAMPLE_ROWS

    return SAMPLE_ROWS


@hookimpl
def dataset_map(register: Any) -> None:
    register(DatasetSpec(
        name="llava", aliases=("llava-json",),
        description="LLaVA json (id, image, conversations human/gpt) or OpenAI-style messages with image parts; "
                    "use with --data-files, images under --image-folder",
        map_row=_map_row, pass_context=True, sample_rows=_sample_rows()))


@hookimpl
def prompt_template(register: Any) -> None:
    register(TemplateSpec(
        name="llava-vicuna",
        description="LLaVA-1.5 / Vicuna v1: 'SYSTEM USER: ... ASSISTANT: reply</s>'",
        prefix=(BOS,),
        system="{system} ",
        user="USER: {content} ASSISTANT:",
        assistant=" {content}",
        assistant_end=(EOS,),
        turn_sep="",
        default_system=("A chat between a curious human and an artificial intelligence assistant. The assistant "
                        "gives helpful, detailed, and polite answers to the human's questions."),
    ))


def _collator(**options: Any) -> Any:
    from xt_llava.collate import make_llava_collator

    return make_llava_collator(**options)


@hookimpl
def collate(register: Any) -> None:
    register(CollatorSpec(
        name="llava",
        description="Padded text with each <image> expanded to the encoder's image tokens, plus CLIP pixel_values",
        factory=_collator))
