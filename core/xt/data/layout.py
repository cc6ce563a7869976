"""``pack: auto``: pack the samples, or length-group them into padded batches, whichever costs less.

The estimate walks one epoch of each layout with the sampler training would use and adds up
``token slots + attention_weight * attention pairs``:

- packed rows (best-fit into ``max_length``), ``micro_batch_size`` rows per batch padded to the widest:
  every slot is computed; attention is per sample (``xt.model.packed``), ``L * L / 2`` pairs each;
- length-grouped samples, ``micro_batch_size`` per batch padded to the longest: every slot is
  computed; a padded batch runs masked attention over the full ``W * W`` square of each row
  (``W * W / 2`` when no row needs padding).

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
                step_cost: float = STEP_COST) -> float:
    """Estimated cost per real token of packed rows with per-sample attention."""
    bins = pack_best_fit(lengths, max_length)
    row_lengths = [sum(lengths[i] for i in members) for members in bins]
    pairs_of_row = [sum(lengths[i] ** 2 for i in members) / 2 for members in bins]
    slots = pairs = real = 0.0
    for batch in ResumableBatchSampler(row_lengths, batch_size, seed=seed, shuffle=True, drop_last=False):
        width = max(row_lengths[r] for r in batch)
        slots += width * len(batch) + step_cost
        pairs += sum(pairs_of_row[r] + (width - row_lengths[r]) ** 2 / 2 for r in batch)
        real += sum(row_lengths[r] for r in batch)
    return (slots + weight * pairs) / max(real, 1.0)


def grouped_cost(lengths: Sequence[int], batch_size: int, weight: float, seed: int,
                 step_cost: float = STEP_COST) -> float:
    """Estimated cost per real token of length-grouped padded batches (masked attention when padded)."""
    slots = pairs = real = 0.0
    sampler = ResumableBatchSampler(lengths, batch_size, seed=seed, shuffle=True, group_by_length=True, drop_last=False)
    for batch in sampler:
        sizes = [lengths[i] for i in batch]
        width = max(sizes)
        slots += width * len(batch) + step_cost
        pairs += width * width * len(batch) / (2 if min(sizes) == width else 1)
        real += sum(sizes)
    return (slots + weight * pairs) / max(real, 1.0)


def choose_layout(lengths: Sequence[int], max_length: int, batch_size: int, weight: float, seed: int = 0,
                  step_cost: float = STEP_COST) -> dict[str, Any]:
    """``{"layout": "packed" | "grouped", "cost_packed", "cost_grouped"}`` (cost per real token, lower wins)."""
    packed = packed_cost(lengths, max_length, batch_size, weight, seed, step_cost)
    grouped = grouped_cost(lengths, batch_size, weight, seed, step_cost)
    return {"layout": "packed" if packed <= grouped else "grouped",
            "cost_packed": round(packed, 4), "cost_grouped": round(grouped, 4)}
