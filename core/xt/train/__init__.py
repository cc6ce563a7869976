"""The training engine: DeepSpeed config, the loop, checkpoints, eval, metrics, launch, dry-run plan."""

from __future__ import annotations

__all__ = ["train", "plan"]


def train(*args, **kwargs):  # noqa: ANN002, ANN003 - thin lazy re-export
    from xt.train.loop import train as _train

    return _train(*args, **kwargs)


def plan(*args, **kwargs):  # noqa: ANN002, ANN003
    from xt.train.plan import plan as _plan

    return _plan(*args, **kwargs)
