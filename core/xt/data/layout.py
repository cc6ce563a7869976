"""``pack: auto``: pack the samples, or length-group them into padded batches, whichever costs less.

The estimate walks one epoch of each layout with the sampler training would use and adds up
``token slots + attention_weight * attention pairs``:

- packed rows (best-fit into ``max_length``), ``micro_batch_size`` rows per batch padded to the widest:
  every slot is computed; attention is causal per sample (``xt.model.packed``), ``L * L * c`` pairs each;
- length-grouped samples, ``micro_batch_size`` per batch padded to the longest: every slot is
  computed; a padded batch runs masked attention over the full ``W * W`` square of each row
  (``W * W * c`` when no row needs padding).

``c`` (:func:`causal_share`) is the share of the ``L * L`` square a causal kernel computes: about
half on CUDA, whose flash and memory-efficient kernels skip the blocks above the diagonal, and all
of it on the CPU, whose sdpa kernel takes as long causal as unmasked (bench/train.py prints both
times). One function, :func:`batch_cost`, prices a micro-batch for every layout; bench/train.py
prices the batches it trained on with it.

``attention_weight`` is the cost of one query-key pair relative to one token through the rest of
the model, about ``2 * hidden_size * layers / parameters`` (:func:`attention_weight`). Every batch
also costs :data:`STEP_COST` token-equivalents (kernel launches, Python, collation, the optimizer's
share): an estimate, not measured per machine, that keeps a layout of many tiny batches from
looking free. Both costs are divided by the real tokens their batches hold, so drop-last remainders
do not tilt the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xt.data.pack import pack_best_fit
from xt.data.sampler import ResumableBatchSampler

#: Fixed cost of one micro-batch, in tokens' worth of compute (see the module docstring).
STEP_COST = 128.0
#: The share of a causal ``L x L`` attention square the sdpa kernels compute, by device type.
CAUSAL_SHARE = {"cpu": 1.0}
CAUSAL_SHARE_DEFAULT = 0.5


def causal_share(device_type: str) -> float:
    """How much of the ``L x L`` square causal attention costs on ``device_type`` ("cuda", "cpu", ...)."""
    return CAUSAL_SHARE.get(device_type, CAUSAL_SHARE_DEFAULT)


def batch_cost(rows: Sequence[Sequence[int]], weight: float, causal: float = CAUSAL_SHARE_DEFAULT,
               per_sample: bool = False, step_cost: float = STEP_COST) -> float:
    """Cost of one micro-batch, in tokens' worth: ``rows`` (each the lengths of the samples it holds) padded
    to the widest, ``step_cost`` plus every token slot plus ``weight`` per attention pair computed.

    ``per_sample``: packed attention, causal within each sample (and the padding tail as its own
    span); otherwise a padded batch or a row of several samples attends through a mask (the whole
    square), and unpadded single-sample rows causally.
    """
    sizes = [sum(row) for row in rows]
    width = max(sizes)
    masked = any(size < width for size in sizes) or any(len(row) > 1 for row in rows)
    if per_sample:
        pairs = causal * sum(sum(n * n for n in row) + (width - size) ** 2 for row, size in zip(rows, sizes))
    else:
        pairs = width * width * len(rows) * (1.0 if masked else causal)
    return step_cost + width * len(rows) + weight * pairs


def attention_weight(model: Any) -> float:
    """Cost of one attention pair relative to one token: ``4 * hidden * layers`` FLOPs vs ``2 * parameters``
    (the input embedding, a lookup, not counted); 0 when the model does not say its shape."""
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or 0
    layers = getattr(config, "num_hidden_layers", None) or 0
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    skipped = {id(p) for p in embedding.parameters()} if embedding is not None else set()
    parameters = sum(p.numel() for p in model.parameters() if id(p) not in skipped)
    return round(2.0 * hidden * layers / parameters, 8) if parameters else 0.0


def packed_cost(lengths: Sequence[int], max_length: int, batch_size: int, weight: float, seed: int,
                step_cost: float = STEP_COST, causal: float = CAUSAL_SHARE_DEFAULT) -> float:
    """Estimated cost per real token of packed rows with per-sample attention."""
    bins = [[lengths[i] for i in members] for members in pack_best_fit(lengths, max_length)]
    sizes = [sum(row) for row in bins]
    sampler = ResumableBatchSampler(sizes, batch_size, seed=seed, shuffle=True, drop_last=False)
    return _per_token([[bins[r] for r in batch] for batch in sampler], weight, causal, True, step_cost)


def grouped_cost(lengths: Sequence[int], batch_size: int, weight: float, seed: int,
                 step_cost: float = STEP_COST, causal: float = CAUSAL_SHARE_DEFAULT) -> float:
    """Estimated cost per real token of length-grouped padded batches (masked attention when padded)."""
    sampler = ResumableBatchSampler(lengths, batch_size, seed=seed, shuffle=True, group_by_length=True, drop_last=False)
    return _per_token([[[lengths[i]] for i in batch] for batch in sampler], weight, causal, False, step_cost)


def _per_token(batches: list[list[list[int]]], weight: float, causal: float, per_sample: bool,
               step_cost: float) -> float:
    cost = sum(batch_cost(rows, weight, causal, per_sample, step_cost) for rows in batches)
    return cost / max(sum(sum(map(sum, rows)) for rows in batches), 1)


def choose_layout(lengths: Sequence[int], max_length: int, batch_size: int, weight: float, seed: int = 0,
                  step_cost: float = STEP_COST, causal: float = CAUSAL_SHARE_DEFAULT) -> dict[str, Any]:
    """``{"layout": "packed" | "grouped", "cost_packed", "cost_grouped"}`` (cost per real token, lower wins)."""
    packed = packed_cost(lengths, max_length, batch_size, weight, seed, step_cost, causal)
    grouped = grouped_cost(lengths, batch_size, weight, seed, step_cost, causal)
    return {"layout": "packed" if packed <= grouped else "grouped",
            "cost_packed": round(packed, 4), "cost_grouped": round(grouped, 4)}
