"""Build LLaVA models as transformers ``LlavaForConditionalGeneration``: vision encoder + projector + LLM.

A model is either composed from a registered vision encoder (kind ``vision-encoder``) and any
registered causal LM whose architecture transformers knows natively, or loaded from a saved
Hugging Face llava folder. Composition checks first that the result can be saved in the HF llava
layout (and raises :class:`~xt.errors.XtError` naming the reason when not), then assembles the
pieces without copying weights: the encoder becomes ``model.vision_tower``, the LLM's decoder
``model.language_model`` and its head ``lm_head``; the projector (``linear_1`` -> GELU -> ``linear_2``)
is new, or read from a pretrain run with ``projector=RUN_DIR``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xt.api import XtError

#: Keyword arguments the core passes through to a model loader (transformers ``from_pretrained`` style).
HF_KWARGS = ("dtype", "torch_dtype", "attn_implementation", "quantization_config", "device_map", "trust_remote_code",
             "low_cpu_mem_usage")
#: ``model_args`` a llava model accepts.
MODEL_ARGS = ("llm", "llm_path", "vision_encoder", "vision_encoder_path", "projector", "projector_depth",
              "vision_feature_layer", "seed")
PROJECTOR_DEPTH = 2
#: The transformers class every llava model of this plugin is (named in the configs ``config()`` returns).
ARCHITECTURE = "LlavaForConditionalGeneration"
TINY_SEED = 4321
#: Why an LLM family cannot sit inside a Hugging Face llava checkpoint (model_type -> reason).
UNEXPRESSIBLE = {
    "baichuan": ("Baichuan2's NormHead lm_head normalises its weight rows at every forward and the 13B model adds "
                 "ALiBi attention biases; LlavaForConditionalGeneration has a plain nn.Linear lm_head and builds its "
                 "text model with transformers' AutoModel, which knows neither"),
}


@dataclass(frozen=True)
class Recipe:
    """What a llava preset is made of (model_args override both)."""

    llm: str | None = None               # registered causal LM name, hub id or folder; "tiny" = the tiny Llama
    vision_encoder: str | None = None    # registered vision-encoder name


# --------------------------------------------------------------------------- the tiny LLM of llava-tiny


def tiny_llm_config(vocab_size: int) -> Any:
    """A tiny Llama (2 layers, width 64) for tests and demos."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0)


def tiny_tokenizer() -> Any:
    from xt.api import tiny_tokenizer as core_tiny

    return core_tiny()


def load_tiny_llm(*, dtype: Any = None, attn_implementation: str | None = None, quantization_config: Any = None,
                  seed: int = TINY_SEED, **_: Any) -> Any:
    """The tiny random Llama, the same weights on every call; its vocabulary already holds ``<image>``."""
    from transformers import LlamaForCausalLM
    from xt.api import build_preset

    from xt_llava.processor import add_image_token

    tokenizer = tiny_tokenizer()
    add_image_token(tokenizer)
    config = tiny_llm_config(len(tokenizer))
    return build_preset(config, LlamaForCausalLM, seed=seed, dtype=dtype,
                        attn_implementation=attn_implementation or "sdpa", quantization_config=quantization_config)


# --------------------------------------------------------------------------- resolving the parts


@dataclass
class Part:
    """A resolved component: its spec (None for the tiny LLM), where it loads from and its config."""

    name: str
    spec: Any
    source: str | None
    config: Any


def _registry() -> Any:
    from xt.api import get_registry

    return get_registry()


def resolve_encoder(name: str, path: str | None = None) -> Part:
    """A registered vision encoder; a clear error for a name that is not one."""
    registry = _registry()
    spec = registry.get("models", name)
    if spec.kind != "vision-encoder":
        encoders = sorted(s.name for s in registry.all("models") if s.kind == "vision-encoder")
        raise XtError(f"'{name}' is a {spec.kind} model, not a vision encoder; set model_args.vision_encoder to one "
                      f"of: {', '.join(encoders) or 'none'}.")
    source = path or spec.source
    config = spec.config() if spec.config is not None else _auto_config(source, name)
    check_vision_config(config, name)
    return Part(name=name, spec=spec, source=source, config=config)


def resolve_llm(name: str, path: str | None = None) -> Part:
    """``tiny``, or any registered causal LM / hub id / folder; checked to fit the HF llava layout."""
    if name == "tiny":
        from xt_llava.processor import add_image_token

        tokenizer = tiny_tokenizer()
        add_image_token(tokenizer)
        return Part(name="tiny", spec=None, source=None, config=tiny_llm_config(len(tokenizer)))
    spec = _registry().resolve_model(name)
    if spec.kind != "causal-lm":
        raise XtError(f"model_args.llm '{name}' is a {spec.kind} model; the LLM of a llava model must be a causal LM "
                      f"(see 'xt list models').")
    source = path or spec.source
    config = spec.config() if spec.config is not None else _auto_config(source, name)
    check_llm_config(config, name)
    return Part(name=name, spec=spec, source=source, config=config)


def _auto_config(source: str | None, name: str) -> Any:
    from transformers import AutoConfig

    if source is None:
        raise XtError(f"Model '{name}' has neither a config nor a source to read one from.")
    try:
        return AutoConfig.from_pretrained(os.path.expanduser(str(source)))
    except (OSError, ValueError) as exc:
        raise XtError(f"Could not read the config of '{name}' from '{source}': {str(exc).splitlines()[0]}. Pass a "
                      f"local folder (model_args.llm_path / vision_encoder_path) or check the hub id.") from exc


def check_llm_config(config: Any, name: str) -> None:
    """Refuse, before any training, an LLM that a Hugging Face llava folder cannot hold."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in UNEXPRESSIBLE:
        raise XtError(f"LLM '{name}' cannot be used in a llava model: {UNEXPRESSIBLE[model_type]}, so the saved model "
                      f"would not load (or would compute different logits) without xt. Use a transformers-native "
                      f"LLM (llama, mistral, qwen2, ...) as model_args.llm.")
    if model_type not in MODEL_MAPPING_NAMES or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise XtError(f"LLM '{name}' has model_type '{model_type}', which transformers does not implement natively; "
                      f"LlavaForConditionalGeneration builds its text model with AutoModel, so a saved llava model "
                      f"would not load without xt. Use a transformers-native LLM (llama, mistral, qwen2, ...).")


def check_vision_config(config: Any, name: str) -> None:
    """The encoder must be a transformers-native vision tower with a patch grid (CLIP, SigLIP ...)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_MAPPING_NAMES or not hasattr(config, "patch_size") or not hasattr(config, "image_size"):
        raise XtError(f"Vision encoder '{name}' (model_type '{model_type}') is not a transformers-native vision tower "
                      f"with image_size / patch_size, so it cannot be the vision_tower of a llava model.")


def check_options(projector_depth: int, vision_feature_layer: int, vision_config: Any) -> None:
    if projector_depth != PROJECTOR_DEPTH:
        raise XtError(f"projector_depth {projector_depth} cannot be expressed: the Hugging Face llava layout "
                      f"(LlavaMultiModalProjector) is exactly Linear -> GELU -> Linear, so only depth 2 is supported.")
    layers = int(vision_config.num_hidden_layers)
    if not -layers - 1 <= int(vision_feature_layer) <= layers:
        raise XtError(f"vision_feature_layer {vision_feature_layer} is outside the encoder's hidden states "
                      f"(-{layers + 1} .. {layers}); LLaVA uses -2, the second-to-last layer.")


# --------------------------------------------------------------------------- building


def split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(transformers loading kwargs, llava model_args); unknown keys raise a clear error."""
    hf, args = {}, {}
    for key, value in kwargs.items():
        if key in HF_KWARGS:
            hf["dtype" if key == "torch_dtype" else key] = value
        elif key in MODEL_ARGS:
            args[key] = value
        else:
            import difflib

            near = difflib.get_close_matches(key, MODEL_ARGS, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise XtError(f"Unknown model_args key '{key}' for a llava model.{hint} Known: {', '.join(MODEL_ARGS)}.")
    return hf, args


def is_llava_folder(source: Any) -> bool:
    """A local folder holding a saved HF llava model (config.json with model_type llava)."""
    if source is None:
        return False
    path = Path(os.path.expanduser(str(source))) / "config.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("model_type") == "llava"
    except ValueError:
        return False


def load_llava(recipe: Recipe | None, source: Any = None, model_args: dict[str, Any] | None = None,
               **kwargs: Any) -> Any:
    """The model loader of every llava spec: a saved HF llava folder, or a composition of the recipe's parts.

    ``model_args`` are the llava options (``llm``, ``vision_encoder``, ...); ``kwargs`` the loading keywords.
    """
    hf, args = split_kwargs({**kwargs, **(model_args or {})})
    llm_name = args.get("llm") or (recipe.llm if recipe else None)
    encoder_name = args.get("vision_encoder") or (recipe.vision_encoder if recipe else None)
    depth = int(args.get("projector_depth", PROJECTOR_DEPTH))
    if source is not None and (is_llava_folder(source) or not llm_name):
        model = _load_saved(source, hf)
        check_options(depth, model.config.vision_feature_layer, model.config.vision_config)
    else:
        if not llm_name or not encoder_name:
            raise XtError("A llava model is composed from model_args.llm (a registered causal LM, hub id or folder) and "
                          "model_args.vision_encoder (e.g. clip-vit-large-336); or pass --model-path to a saved "
                          "Hugging Face llava folder.")
        model = compose(llm_name, encoder_name, llm_path=args.get("llm_path"),
                        encoder_path=args.get("vision_encoder_path"), projector_depth=depth,
                        vision_feature_layer=int(args.get("vision_feature_layer", -2)),
                        seed=int(args.get("seed", TINY_SEED)), **hf)
    if args.get("projector"):
        load_projector(model, args["projector"])
    return model


def _load_saved(source: Any, hf: dict[str, Any]) -> Any:
    from transformers import LlavaForConditionalGeneration

    path = os.path.expanduser(str(source))
    kwargs = {k: v for k, v in hf.items() if k != "trust_remote_code"}
    try:
        return LlavaForConditionalGeneration.from_pretrained(path if os.path.isdir(path) else str(source), **kwargs)
    except (OSError, ValueError) as exc:
        raise XtError(f"Could not load a llava model from '{source}': {str(exc).splitlines()[0]}. Pass a folder "
                      f"saved by xt or transformers, or a hub id such as llava-hf/llava-1.5-7b-hf.") from exc


def compose(llm_name: str, encoder_name: str, *, llm_path: str | None = None, encoder_path: str | None = None,
            projector_depth: int = PROJECTOR_DEPTH, vision_feature_layer: int = -2, seed: int = TINY_SEED,
            dtype: Any = None, attn_implementation: str | None = None, quantization_config: Any = None,
            device_map: Any = None, **_: Any) -> Any:
    """Encoder + new projector + LLM as one ``LlavaForConditionalGeneration`` (checks first, then loads)."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from xt_llava.encoders import tokens_per_image

    encoder = resolve_encoder(encoder_name, encoder_path)
    llm = resolve_llm(llm_name, llm_path)
    check_options(projector_depth, vision_feature_layer, encoder.config)
    processor = build_processor(llm, encoder)
    image_token_id = int(processor.tokenizer.convert_tokens_to_ids(processor.image_token))

    extra = {"device_map": device_map} if device_map is not None else {}
    vision = encoder.spec.load_model(encoder.source, dtype=dtype, attn_implementation=attn_implementation, **extra)
    if llm.spec is None:
        causal = load_tiny_llm(dtype=dtype, attn_implementation=attn_implementation,
                               quantization_config=quantization_config)
    else:
        llm_kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation}
        if quantization_config is not None:
            llm_kwargs["quantization_config"] = quantization_config
        llm_kwargs.update(extra)
        causal = (llm.spec.load_model or _hf_causal_lm)(llm.source, **llm_kwargs)
    check_llm_config(causal.config, llm_name)
    resize_for_tokenizer(causal, len(processor.tokenizer))

    config = LlavaConfig(vision_config=copy.deepcopy(vision.config), text_config=causal.config,
                         image_token_id=image_token_id, image_seq_length=tokens_per_image(vision.config),
                         projector_hidden_act="gelu", vision_feature_layer=vision_feature_layer,
                         vision_feature_select_strategy="default", multimodal_projector_bias=True,
                         tie_word_embeddings=bool(getattr(causal.config, "tie_word_embeddings", False)))
    with torch.device("meta"):
        shell = LlavaForConditionalGeneration(config)
    shell.model.vision_tower = vision
    shell.model.language_model = causal.get_decoder() if hasattr(causal, "get_decoder") else causal.model
    shell.lm_head = causal.get_output_embeddings()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        projector = LlavaMultiModalProjector(config)
    param_dtype = dtype if isinstance(dtype, torch.dtype) else next(shell.lm_head.parameters()).dtype
    if param_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        param_dtype = torch.float32
    shell.model.multi_modal_projector = projector.to(device=shell.lm_head.weight.device, dtype=param_dtype)
    leftover = [n for n, t in [*shell.named_parameters(), *shell.named_buffers()] if t.device.type == "meta"]
    if leftover:
        raise XtError(f"Composing the llava model left parameters unset ({', '.join(leftover[:3])}); the LLM "
                      f"'{llm_name}' is not laid out as a transformers CausalLM (decoder + lm_head).")
    shell.config._attn_implementation = attn_implementation or "sdpa"
    shell.config.text_config = causal.config
    shell.generation_config = copy.deepcopy(causal.generation_config)
    if getattr(causal, "is_quantized", False):
        shell.is_quantized = True
        shell.quantization_method = getattr(causal, "quantization_method", None)
        shell.hf_quantizer = getattr(causal, "hf_quantizer", None)
        shell.config.quantization_config = getattr(causal.config, "quantization_config", None)
    return shell


def _hf_causal_lm(source: Any, **kwargs: Any) -> Any:
    from xt.api import load_hf_causal_lm

    return load_hf_causal_lm(source, **kwargs)


def resize_for_tokenizer(causal: Any, vocab: int) -> None:
    """Grow the LLM's embeddings to the tokenizer (``<image>`` added); the new rows are zero (never trained on)."""
    import torch

    old = causal.get_input_embeddings().weight.shape[0]
    if vocab <= old:
        return
    causal.resize_token_embeddings(vocab, pad_to_multiple_of=64, mean_resizing=False)
    with torch.no_grad():
        causal.get_input_embeddings().weight[old:].zero_()
        head = causal.get_output_embeddings()
        if head is not None and head.weight.shape[0] > old:
            head.weight[old:].zero_()


def build_processor(llm: Part, encoder: Part, chat_template: str | None = None) -> Any:
    """The LLM's tokenizer with ``<image>`` + the encoder's image processor, as one llava processor."""
    from xt_llava.processor import make_processor

    if llm.spec is None:
        tokenizer = tiny_tokenizer()
    elif llm.spec.load_tokenizer is not None:
        tokenizer = llm.spec.load_tokenizer(llm.source)
    else:
        from xt.api import load_hf_tokenizer

        tokenizer = load_hf_tokenizer(llm.source)
    if encoder.spec.load_tokenizer is not None:
        image_processor = encoder.spec.load_tokenizer(encoder.source)
    else:
        from xt_llava.encoders import load_clip_image_processor

        image_processor = load_clip_image_processor(encoder.source, image_size=int(encoder.config.image_size))
    return make_processor(tokenizer, image_processor, int(encoder.config.patch_size), chat_template=chat_template)


def load_llava_processor(recipe: Recipe | None, source: Any = None, **model_args: Any) -> Any:
    """The tokenizer loader of every llava spec: a saved processor, else the recipe's LLM tokenizer + encoder."""
    from xt_llava.processor import has_processor_files, load_processor

    _, args = split_kwargs({k: v for k, v in model_args.items() if k not in HF_KWARGS})
    llm_name = args.get("llm") or (recipe.llm if recipe else None)
    encoder_name = args.get("vision_encoder") or (recipe.vision_encoder if recipe else None)
    if source is not None and has_processor_files(source):
        return load_processor(source)
    if llm_name and encoder_name and not is_llava_folder(source):
        return build_processor(resolve_llm(llm_name, args.get("llm_path")),
                               resolve_encoder(encoder_name, args.get("vision_encoder_path")))
    if source is not None:
        return load_processor(source)
    raise XtError("The generic 'llava' model needs model_args.llm and model_args.vision_encoder, or --model-path to a "
                  "saved Hugging Face llava folder; or use a preset such as 'llava-tiny' or 'llava-vicuna-7b'.")


def llava_config(recipe: Recipe) -> Any:
    """The composed model's ``LlavaConfig`` without loading weights (for ``xt train --dry-run``)."""
    from transformers import LlavaConfig

    from xt_llava.encoders import tokens_per_image

    encoder = resolve_encoder(recipe.vision_encoder)  # type: ignore[arg-type]
    llm = resolve_llm(recipe.llm)  # type: ignore[arg-type]
    text_config = copy.deepcopy(llm.config)
    if recipe.llm != "tiny":
        text_config.vocab_size = -(-(int(text_config.vocab_size) + 1) // 64) * 64  # <image> added, padded to 64
    return LlavaConfig(vision_config=copy.deepcopy(encoder.config), text_config=text_config,
                       image_token_id=int(text_config.vocab_size) - 1, image_seq_length=tokens_per_image(encoder.config),
                       projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                       architectures=[ARCHITECTURE])


# --------------------------------------------------------------------------- the pretrained projector


PROJECTOR_KEY = "multi_modal_projector."


def projector_file(path: Any) -> list[Path]:
    """Safetensors files that may hold projector weights: a run dir (its final/), a folder or a file."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file():
        return [p]
    if (p / "run.json").is_file():
        try:
            final = json.loads((p / "run.json").read_text()).get("final_dir") or "final"
        except ValueError:
            final = "final"
        p = p / final
    if not p.is_dir():
        raise XtError(f"Projector source '{path}' does not exist; pass the run directory of a finished "
                      f"'--stage pretrain' run, its final/ folder or a .safetensors file.")
    files = sorted(p.glob("*.safetensors"))
    if not files:
        raise XtError(f"'{p}' holds no .safetensors files; pass the run directory of a finished '--stage pretrain' run.")
    return files


def read_projector(path: Any) -> dict[str, Any]:
    """``linear_1.weight`` ... of the projector saved under ``path`` (full model or adapter layout)."""
    from safetensors import safe_open

    found: dict[str, Any] = {}
    for file in projector_file(path):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():
                if PROJECTOR_KEY not in key or "original_module." in key:
                    continue
                short = key.split(PROJECTOR_KEY, 1)[1].replace("modules_to_save.default.", "")
                found[short] = fh.get_tensor(key)
    if not found:
        raise XtError(f"No projector weights (keys with '{PROJECTOR_KEY}') under '{path}'; pass the result of a "
                      f"'--stage pretrain' run of a llava model.")
    return found


def load_projector(model: Any, path: Any) -> None:
    """Copy the projector trained by a pretrain run into ``model``; shapes must match."""
    import torch

    weights = read_projector(path)
    projector = model.model.multi_modal_projector
    own = projector.state_dict()
    if set(weights) != set(own):
        raise XtError(f"The projector under '{path}' has weights {sorted(weights)}, this model's has {sorted(own)}.")
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise XtError(f"The projector under '{path}' does not fit this model ({key}: {tuple(tensor.shape)} vs "
                          f"{tuple(own[key].shape)}); pretrain with the same LLM and vision encoder.")
    with torch.no_grad():
        for key, param in projector.state_dict().items():
            param.copy_(weights[key].to(param.dtype))


def vicuna_7b_llava_config() -> Any:
    """LLaVA-1.5-7B's architecture (Vicuna-7B v1.5 + CLIP ViT-L/14-336), known offline for dry runs."""
    from transformers import LlamaConfig, LlavaConfig

    from xt_llava.encoders import clip_large_336_config

    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
    return LlavaConfig(vision_config=clip_large_336_config(), text_config=text, image_token_id=32000,
                       image_seq_length=576, projector_hidden_act="gelu", vision_feature_layer=-2,
                       vision_feature_select_strategy="default", architectures=[ARCHITECTURE])
