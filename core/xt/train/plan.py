"""``xt train --dry-run``: what a run would do, without loading weights or training.

Parameters are counted on the meta device from ``ModelSpec.config()`` (nothing is downloaded);
memory per device is estimated for the method and ZeRO stage; the dataset is measured when it is
available offline.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

from xt.config import TrainConfig
from xt.errors import XtError

GIB = 1024**3
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass
class ModelCount:
    total: int
    linear_in_out: list[tuple[str, int, int]] = field(default_factory=list)  # (name, in, out) of nn.Linear layers
    hidden_size: int = 0
    num_layers: int = 0
    vocab_size: int = 0


def count_from_config(config: Any) -> ModelCount:
    """Build the architecture on the meta device and count its parameters (no memory, no download)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    with torch.device("meta"):
        model_cls = getattr(config, "xt_model_class", None)
        if model_cls is not None:
            model = model_cls(config)
        else:
            try:
                model = AutoModelForCausalLM.from_config(config)
            except ValueError:  # vision-language configs (LlavaConfig, ...) are not causal-LM configs
                model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    linears = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    return ModelCount(total=total, linear_in_out=linears, hidden_size=int(getattr(config, "hidden_size", 0) or 0),
                      num_layers=int(getattr(config, "num_hidden_layers", 0) or 0),
                      vocab_size=int(getattr(config, "vocab_size", 0) or 0))


def lora_trainable(count: ModelCount, targets: Any, r: int) -> int:
    """LoRA parameters: r * (in + out) for each targeted linear layer (all-linear skips the output head)."""
    total = 0
    linears = count.linear_in_out
    for name, fan_in, fan_out in linears:
        leaf = name.rsplit(".", 1)[-1]
        if targets == "all-linear" or targets is None:
            if fan_out == count.vocab_size and count.vocab_size:
                continue  # the LM head
            hit = True
        else:
            hit = any(leaf == t or name.endswith("." + t) or fnmatch.fnmatchcase(name, t) for t in targets)
        if hit:
            total += r * (fan_in + fan_out)
    return total


def estimate_memory(cfg: TrainConfig, count: ModelCount, trainable: int, dtype: str, world: int) -> dict[str, float]:
    """Rough GiB per device: weights, gradients, optimizer states (fp32 master + 2 Adam moments), activations."""
    wbytes = 0.5 + 0.03 if cfg.method == "qlora" else (1.0 if cfg.load_in_8bit else BYTES[dtype])
    weights = count.total * wbytes
    grad_bytes = BYTES[dtype]
    grads = trainable * grad_bytes
    optim = trainable * (12 if dtype != "fp32" else 8)  # fp32 master copy (mixed precision) + exp_avg + exp_avg_sq
    stage = cfg.zero_stage
    if stage >= 1:
        optim /= world
    if stage >= 2:
        grads /= world
    if stage >= 3:
        weights /= world
    if cfg.offload == "cpu":
        optim = 0.0
    tokens = cfg.micro_batch_size * cfg.max_length
    per_layer = tokens * count.hidden_size * BYTES[dtype] * (2 if cfg.gradient_checkpointing else 18)
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
        from xt.data import DataOptions, build_dataset
        from xt.data.pipeline import choose_template
        from xt.model.setup import load_tokenizer
        from xt.plugins import get_registry
        from xt.specs import RunContext

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
        context = RunContext(image_folder=cfg.image_folder, model_args=dict(cfg.model_args), world_size=world)
        options = DataOptions(data_files=cfg.data_files or None, max_length=cfg.max_length,
                              length_policy=cfg.length_policy, pack=cfg.pack, skip_bad_rows=cfg.skip_bad_rows,
                              num_proc=cfg.num_proc, cache_dir=cfg.data_cache_dir, use_cache=cfg.use_data_cache,
                              seed=cfg.seed, context=context)
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
    return (f"{rows:,} training rows ({'packed' if cfg.pack else 'unpacked'}, template '{template.name}'), "
            f"{tokens:,} tokens; {steps:,} optimizer steps per epoch at {per_step} rows per step; {total:,} steps planned")


def plan(cfg: TrainConfig, world: int = 1) -> str:
    """The dry-run report as text."""
    from xt.data.pipeline import choose_template
    from xt.model.loading import choose_attention
    from xt.model.setup import resolve_dtype
    from xt.plugins import get_registry

    registry = get_registry()
    spec = registry.resolve_model(cfg.model)
    choose_template(spec, registry.get("datasets", cfg.dataset), cfg.template)  # unknown or ambiguous names fail
    dtype = resolve_dtype(cfg.dtype)
    lines = [f"model: {cfg.model} (source: {cfg.model_path or spec.source or 'built from a config'})",
             f"method: {cfg.method}{' (8-bit base)' if cfg.load_in_8bit else ''}, dtype {dtype}, "
             f"attention {choose_attention(cfg.attn)}, ZeRO-{cfg.zero_stage}, offload {cfg.offload}, "
             f"{world} process(es)"]
    config = None
    if spec.config is not None:
        config = spec.config()
    elif cfg.model_path or spec.source:
        try:
            from transformers import AutoConfig

            with hub_offline():
                config = AutoConfig.from_pretrained(cfg.model_path or spec.source,
                                                    trust_remote_code=cfg.trust_remote_code)
        except Exception:
            config = None
    if config is None:
        lines.append("parameters: unknown offline (the model spec has no config() and its files are not here)")
    else:
        count = count_from_config(config)
        if cfg.method == "full":
            trainable = count.total
        else:
            targets = cfg.lora_targets if cfg.lora_targets is not None else spec.lora_targets
            trainable = lora_trainable(count, targets if isinstance(targets, str) else list(targets), cfg.lora_r)
        mem = estimate_memory(cfg, count, trainable, dtype, world)
        lines.append(f"parameters: {count.total:,} total ({count.total / 1e9:.2f}B), {trainable:,} trainable "
                     f"({100 * trainable / max(count.total, 1):.3f}%)")
        lines.append(f"memory per device (estimate, GiB): weights {mem['weights']:.2f}, gradients {mem['gradients']:.2f}, "
                     f"optimizer {mem['optimizer']:.2f}, activations {mem['activations']:.2f} "
                     f"(micro-batch {cfg.micro_batch_size} x {cfg.max_length} tokens"
                     f"{', checkpointed' if cfg.gradient_checkpointing else ''}) -> total ~{mem['total']:.1f}")
    lines.append("data: " + dataset_summary(cfg, world))
    lines.append(f"optimizer: AdamW lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, warm-up "
                 f"{cfg.warmup_steps if cfg.warmup_steps is not None else f'{cfg.warmup_ratio:g} of steps'}, "
                 f"cosine to {cfg.min_lr_ratio:g} x lr; micro-batch {cfg.micro_batch_size} x grad_accum {cfg.grad_accum}")
    lines.append(f"output: {cfg.output or 'runs/' + cfg.run_name}")
    return "\n".join(lines)
