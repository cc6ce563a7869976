"""DeepSpeed config from a TrainConfig; AdamW parameter groups; warm-up + cosine schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xt.config import deep_merge
from xt.errors import XtError


def build_ds_config(cfg: Any, dtype: str, world_size: int = 1) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg``; keys from ``cfg.deepspeed_config`` (a JSON file) win."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=5e7,
                    allgather_bucket_size=5e7)
    if cfg.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=1e4)
    if cfg.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "checkpoint": {"tag_validation": "Ignore"},
    }
    if cfg.offload == "cpu":
        # a torch optimizer on offloaded (CPU) fp32 partitions is fine and avoids DS' JIT CPU-Adam build
        config["zero_force_ds_cpu_optimizer"] = False
    if cfg.deepspeed_config:
        path = Path(cfg.deepspeed_config)
        if not path.is_file():
            raise XtError(f"deepspeed_config '{path}' does not exist; pass a DeepSpeed JSON file.")
        try:
            user = json.loads(path.read_text())
        except ValueError as exc:
            raise XtError(f"deepspeed_config '{path}' is not valid JSON: {exc}.") from exc
        config = deep_merge(config, user)
    return config


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters: decay on matrices, none on biases / norms / 1-d tensors."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: Any, cfg: Any) -> Any:
    """torch.optim.AdamW as the client optimizer (not DeepSpeed's FusedAdam)."""
    import torch

    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-8)


def warmup_steps(cfg: Any, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: Any, cfg: Any, total_steps: int) -> Any:
    import functools

    import torch

    factor = functools.partial(lr_factor, warmup=warmup_steps(cfg, total_steps), total=total_steps,
                               min_ratio=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
