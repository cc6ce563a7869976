"""Reference values computed once: ``precompute_reference`` for objectives with ``precompute``.

Before the first step every sample of the training (and validation) rows goes through the
objective's ``precompute(reference, batch, context)`` under ``torch.no_grad()``; the per-sequence
values land in a table of ``samples x sequences per sample`` per name. Ranks split the rows and sum
their tables. The table is saved next to the processed data in the data cache (keyed by the
reference model and the objective's options) and read back by later runs on the same data. Each
micro-batch then carries ``reference_<name>`` (one value per sequence, in batch order) and the
reference model is not needed during training: under full training its frozen copy is freed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from xt.errors import XtError
from xt.train.loss import PRECOMPUTED_PREFIX


def table_key(model_identity: dict[str, Any], objective: Any, args: dict[str, Any]) -> str:
    """What the reference values depend on besides the data: the reference model and the objective's options."""
    blob = json.dumps({"model": model_identity, "objective": objective.name, "args": args}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_file(rows: Any, key: str) -> str | None:
    folder = getattr(rows, "stats", {}).get("cache_path")
    return os.path.join(folder, f"reference-{key}.npz") if folder else None


def reference_table(objective: Any, context: Any, rows: Any, collate: Any, batch_size: int, device: Any,
                    rank: int, world: int, key: str) -> dict[str, Any]:
    """``{name: array (samples, sequences per sample)}`` for ``rows``: read from the data cache, else computed."""
    import numpy as np

    path = _cache_file(rows, key)
    if path and os.path.isfile(path):
        with np.load(path) as saved:
            return {name: saved[name] for name in saved.files}
    table = _compute(objective, context, rows, collate, batch_size, device, rank, world)
    if path and rank == 0:
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        try:
            np.savez(tmp, **table)
            os.replace(tmp, path)
        except OSError:  # a read-only cache: computed again next time
            if os.path.exists(tmp):
                os.remove(tmp)
    return table


def _compute(objective: Any, context: Any, rows: Any, collate: Any, batch_size: int, device: Any, rank: int,
             world: int) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.distributed as dist

    from xt.errors import plugin_call

    base = getattr(rows, "base", rows)  # a val_ratio subset: sample ids are the full dataset's
    samples, per_sample = base.sample_count, int(base.stats.get("sequences_per_sample", 1))
    mine = list(range(rank, len(rows), world))
    steps = -(-len(rows) // (world * batch_size)) if len(rows) else 0
    values: dict[str, Any] = {}
    with context.reference() as reference:
        for s in range(steps):
            chunk = mine[s * batch_size:(s + 1) * batch_size]
            batch = collate([rows[i] for i in (chunk or [0])])  # a rank with no rows left still runs a forward
            batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}
            with plugin_call(objective, "precompute"), torch.no_grad():
                out = objective.precompute(reference, batch, context)
            sample = batch["sample_ids"][batch["sequence_groups"]].cpu().numpy()
            role = batch["sequence_roles"].cpu().numpy()
            for name, value in out.items():
                table = values.setdefault(name, np.zeros((samples, per_sample), dtype=np.float64))
                if chunk:
                    table[sample, role] = value.detach().double().cpu().numpy()
    if dist.is_initialized() and dist.get_world_size() > 1:  # each rank filled its own samples; the rest are 0
        for name in sorted(values):
            summed = torch.from_numpy(values[name]).to(device)
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            values[name] = summed.cpu().numpy()
    return values


def attach(batch: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with ``reference_<name>`` (S,) tensors looked up by sample id and role."""
    import torch

    if not table:
        return batch
    if "sample_ids" not in batch:
        raise XtError("precompute_reference needs rows of several sequences (sample ids); this data has none.")
    sample = batch["sample_ids"][batch["sequence_groups"]].numpy()
    role = batch["sequence_roles"].numpy()
    for name, values in table.items():
        batch[PRECOMPUTED_PREFIX + name] = torch.as_tensor(values[sample, role], dtype=torch.float32)
    return batch
