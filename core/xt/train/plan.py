"""``xt train --dry-run``: what a run would do, without loading weights or training.

Parameters are counted on the meta device from ``ModelSpec.config()`` (nothing is downloaded);
memory per device is estimated for the method and ZeRO stage; the dataset is measured when it is
available offline.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from xt.config import TrainConfig
from xt.errors import XtError

GIB = 1024**3
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
#: bytes per quantized weight (4-bit NF4 plus double-quantized absmax blocks, 8-bit plus scales)
QUANT_BYTES = {"qlora": 0.5 + 0.03, "8bit": 1.0 + 0.02}


@dataclass
class ModelCount:
    total: int
    trainable: int = 0
    quantizable: int = 0   # weights of the nn.Linear layers bitsandbytes quantizes (all but the output head)
    hidden_size: int = 0   # of the language model (the text config of a multimodal model)
    num_layers: int = 0
    vocab_size: int = 0
    extra_tokens: int = 0  # tokens a sample carries beyond max_length (image tokens of a multimodal model)


def meta_model(config: Any) -> Any:
    """The architecture of ``config`` built without memory or download (call under ``torch.device("meta")``)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    model_cls = getattr(config, "xt_model_class", None)
    if model_cls is not None:
        return model_cls(config)
    try:
        return AutoModelForCausalLM.from_config(config)
    except ValueError:  # vision-language configs (LlavaConfig, ...) are not causal-LM configs
        return AutoModelForImageTextToText.from_config(config)


def parameter_count(config: Any) -> int:
    """Parameters of the architecture of ``config``, counted on the meta device."""
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in meta_model(config).parameters())


def count_for_run(config: Any, cfg: TrainConfig, spec: Any) -> ModelCount:
    """Build the architecture on the meta device, set it up for ``cfg`` exactly as a run does, and count.

    The trainable count is the number of parameters with ``requires_grad`` after the run's own set-up
    (:func:`xt.model.setup.make_trainable`: LoRA targets, ``modules_to_save``, stage patterns).
    """
    import torch

    from xt.model.setup import count_parameters, make_trainable

    with torch.device("meta"):
        model = meta_model(config)
        total = sum(p.numel() for p in model.parameters())
        head = model.get_output_embeddings()
        quantizable = sum(m.weight.numel() for m in model.modules()
                          if isinstance(m, torch.nn.Linear) and m is not head)
        model = make_trainable(model, cfg, spec, cfg.model_path or spec.source, planning=True)
        trainable = count_parameters(model)[1]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelCount(total=total, trainable=trainable, quantizable=quantizable,
                      hidden_size=int(getattr(text, "hidden_size", 0) or 0),
                      num_layers=int(getattr(text, "num_hidden_layers", 0) or 0),
                      vocab_size=int(getattr(text, "vocab_size", 0) or 0),
                      extra_tokens=int(getattr(config, "image_seq_length", 0) or 0))


def weight_bytes(cfg: TrainConfig, count: ModelCount, dtype: str) -> float:
    """Bytes of the model's weights as loaded for training."""
    if cfg.method == "qlora" or cfg.load_in_8bit:
        # quantized linear layers; prepare_model_for_kbit_training casts every other weight to fp32
        per_weight = QUANT_BYTES["qlora" if cfg.method == "qlora" else "8bit"]
        return count.quantizable * per_weight + (count.total - count.quantizable) * 4
    return count.total * BYTES[dtype]


def estimate_memory(cfg: TrainConfig, count: ModelCount, dtype: str, world: int,
                    checkpointing: bool) -> dict[str, float]:
    """Rough GiB per GPU: weights, gradients, optimizer states (fp32 master + 2 Adam moments), activations."""
    weights = weight_bytes(cfg, count, dtype)
    grads = count.trainable * BYTES[dtype]
    optim = count.trainable * (12 if dtype != "fp32" else 8)  # fp32 master copy (mixed precision) + exp_avg + exp_avg_sq
    stage = cfg.zero_stage
    if stage >= 1:
        optim /= world
    if stage >= 2:
        grads /= world
    if stage >= 3:
        weights /= world
    if cfg.offload == "cpu":
        optim = 0.0
    tokens = cfg.micro_batch_size * (cfg.max_length + count.extra_tokens)
    per_layer = tokens * count.hidden_size * BYTES[dtype] * (2 if checkpointing else 18)
    activations = per_layer * max(count.num_layers, 1) + tokens * count.vocab_size * 4 * 2  # + fp32 logits & grad
    return {"weights": weights / GIB, "gradients": grads / GIB, "optimizer": optim / GIB,
            "activations": activations / GIB, "total": (weights + grads + optim + activations) / GIB}


@contextlib.contextmanager
def hub_offline() -> Any:
    """Hugging Face Hub requests fail at once inside (a dry run never downloads)."""
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def dataset_summary(cfg: TrainConfig, world: int) -> str:
    """Rows, tokens and steps per epoch, or why the data could not be measured offline."""
    with hub_offline():
        return _dataset_summary(cfg, world)


def _dataset_summary(cfg: TrainConfig, world: int) -> str:
    try:
        from xt.data import build_dataset
        from xt.data.pipeline import choose_template
        from xt.model.setup import load_tokenizer
        from xt.plugins import get_registry

        registry = get_registry()
        model_spec = registry.resolve_model(cfg.model)
        dataset_spec = registry.get("datasets", cfg.dataset)
        source = cfg.model_path or model_spec.source
        try:
            tokenizer = load_tokenizer(model_spec, source, cfg.trust_remote_code, cfg.model_args)
        except Exception as exc:  # the weights' folder is not here, or the tokenizer needs a download
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return (f"not counted: the tokenizer of '{cfg.model}' is not available offline ({first}); pass "
                    f"--model-path with a local copy to plan the data too")
        template = choose_template(model_spec, dataset_spec, cfg.template)
        options = cfg.data_options(world_size=world)
        if cfg.objective:  # else the dataset's objective, or sft
            options.objective = registry.get("objectives", cfg.objective)
        data = build_dataset(dataset_spec, template, tokenizer, options)
    except XtError as exc:
        return f"dataset not available offline ({exc})"
    except Exception as exc:  # a tokenizer that needs a download, a plugin without files here ...
        return f"dataset not available offline ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    rows = len(data)
    tokens = int(sum(data.lengths))
    per_step = cfg.micro_batch_size * cfg.grad_accum * world
    steps = rows // per_step
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps)) if steps else 0
    return (f"{rows:,} training rows ({'packed' if data.stats['packed'] else 'unpacked'}, template '{template.name}'), "
            f"{tokens:,} tokens; {steps:,} optimizer steps per epoch at {per_step} rows per step; {total:,} steps planned")


def target_dtype(cfg: TrainConfig) -> tuple[str, str]:
    """(dtype a run on a GPU uses, how it was chosen): ``auto`` is bf16 there, whatever this machine has."""
    if cfg.dtype == "auto":
        return "bf16", "dtype auto -> bf16 on a GPU"
    return cfg.dtype, f"dtype {cfg.dtype}"


def model_config(cfg: TrainConfig, spec: Any) -> tuple[Any, str]:
    """(the architecture's config or None, where it came from): ``--model-path`` first, offline."""
    def from_folder(path: str) -> Any:
        from transformers import AutoConfig

        with hub_offline():
            return AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)

    if cfg.model_path:
        try:
            return from_folder(cfg.model_path), f"{cfg.model_path} (--model-path)"
        except Exception as exc:
            if spec.config is None:
                raise XtError(f"--model-path '{cfg.model_path}' has no readable config.json ({exc}); pass the "
                              f"folder of a saved model.") from exc
    if spec.config is not None:
        return spec.config(), f"the '{spec.name}' spec's config()"
    if spec.source:
        with contextlib.suppress(Exception):
            return from_folder(spec.source), str(spec.source)
    return None, ""


def memory_line(cfg: TrainConfig, count: ModelCount, dtype: str, world: int) -> str:
    mem = estimate_memory(cfg, count, dtype, world, cfg.gradient_checkpointing)
    tokens = f"{cfg.max_length}{f' + {count.extra_tokens} image' if count.extra_tokens else ''} tokens"
    line = (f"memory per GPU (estimate, GiB, ZeRO-{cfg.zero_stage} over {world} GPU(s)): weights "
            f"{mem['weights']:.2f}, gradients {mem['gradients']:.2f}, optimizer {mem['optimizer']:.2f}, "
            f"activations {mem['activations']:.2f} (micro-batch {cfg.micro_batch_size} x {tokens}, "
            f"{'checkpointed' if cfg.gradient_checkpointing else 'not checkpointed'}) -> total ~{mem['total']:.1f}")
    if not cfg.gradient_checkpointing:
        saved = estimate_memory(cfg, count, dtype, world, checkpointing=True)
        line += f"; with --set gradient_checkpointing=true ~{saved['total']:.1f}"
    return line


def plan(cfg: TrainConfig, world: int = 1) -> str:
    """The dry-run report as text: the run as it would go on GPUs (one per process)."""
    import torch

    from xt.data.pipeline import choose_template
    from xt.model.loading import choose_attention
    from xt.plugins import get_registry

    registry = get_registry()
    spec = registry.resolve_model(cfg.model)
    choose_template(spec, registry.get("datasets", cfg.dataset), cfg.template)  # unknown or ambiguous names fail
    dtype, chosen = target_dtype(cfg)
    here = "" if torch.cuda.is_available() or cfg.dtype != "auto" else \
        " (this machine has no GPU: a run here would use fp32)"
    lines = [f"model: {cfg.model} (source: {cfg.model_path or spec.source or 'built from a config'})",
             f"target: one GPU per process, {world} process(es); {chosen}{here}; gradient checkpointing "
             f"{'on' if cfg.gradient_checkpointing else 'off'}; attention {choose_attention(cfg.attn)}; "
             f"ZeRO-{cfg.zero_stage}, offload {cfg.offload}",
             f"method: {cfg.method}{' (8-bit base)' if cfg.load_in_8bit else ''}"
             f"{f', stage {cfg.stage}' if cfg.stage else ''}"]
    config, where = model_config(cfg, spec)
    if config is None:
        lines.append("parameters: unknown offline (the model spec has no config() and its files are not here)")
    else:
        count = count_for_run(config, cfg, spec)
        lines.append(f"parameters: {count.total:,} total ({count.total / 1e9:.2f}B), {count.trainable:,} trainable "
                     f"({100 * count.trainable / max(count.total, 1):.3f}%); architecture from {where}")
        lines.append(memory_line(cfg, count, dtype, world))
    lines.append("data: " + dataset_summary(cfg, world))
    lines.append(f"optimizer: AdamW lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, warm-up "
                 f"{cfg.warmup_steps if cfg.warmup_steps is not None else f'{cfg.warmup_ratio:g} of steps'}, "
                 f"cosine to {cfg.min_lr_ratio:g} x lr; micro-batch {cfg.micro_batch_size} x grad_accum {cfg.grad_accum}")
    lines.append(f"output: {cfg.output or 'runs/' + cfg.run_name}")
    return "\n".join(lines)
