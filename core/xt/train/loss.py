"""The training loss: an objective's per-unit losses, summed, then averaged over an optimizer step's window.

An objective (:class:`xt.specs.ObjectiveSpec`) returns the *sum* of its losses over a micro-batch
and says how many *units* that sums over: label tokens for SFT (the built-in ``sft``), pairs for
preference objectives. An optimizer step consumes a *window* of ``grad_accum`` micro-batches on each
of ``world_size`` ranks. Its loss is the mean over every unit of that window on all ranks::

    loss = sum of unit losses over the window on all ranks / units of the window on all ranks

The units of the window (``window_units``) are counted before any forward pass. Each micro-batch
then back-propagates ``its loss sum * world_size / window_units`` (:func:`micro_batch_objective`):
DeepSpeed averages gradients over ranks (hence ``* world_size``) and ``scale_wrt_gas=False`` stops
it dividing by the accumulation steps again. The update therefore equals the one on the
concatenated window, however many samples the packed rows hold or how the units fall across
micro-batches and ranks. Metrics the objective returns (also sums over units) are reported the same way.

For SFT, labels are shifted here (token ``t`` predicts label ``t + 1``); positions labelled
``IGNORE_INDEX`` carry no loss. With ``z_loss > 0`` each label position adds
``z_loss * logsumexp(logits) ** 2``.
"""

from __future__ import annotations

from typing import Any

from xt.template import IGNORE_INDEX

#: non-tensor batch entries a model still takes (e.g. lists of images for multimodal models)
MODEL_INPUT_KEYS = frozenset({"images", "pixel_values", "image_sizes"})
#: tensor batch entries that are for the loss, not the model (and every ``reference_*`` entry)
LOSS_ONLY_KEYS = frozenset({"labels", "sequence_ids", "sequence_groups", "sequence_roles", "sample_ids"})
PRECOMPUTED_PREFIX = "reference_"


def model_inputs(batch: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """The entries of ``batch`` the model takes (tensors and known model inputs), moved to ``device``."""
    import torch

    return {k: (v.to(device) if device is not None and hasattr(v, "to") else v) for k, v in batch.items()
            if k not in LOSS_ONLY_KEYS and not k.startswith(PRECOMPUTED_PREFIX)
            and (torch.is_tensor(v) or k in MODEL_INPUT_KEYS)}


def label_tokens(batch: dict[str, Any]) -> int:
    """Label tokens of a collated batch after the shift (the positions that carry loss)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def batch_loss_sum(model: Any, batch: dict[str, Any], device: Any, z_loss: float = 0.0) -> tuple[Any, int]:
    """(sum of the token losses of ``batch``, its number of label tokens); the sum keeps its graph.

    ``device`` None leaves the batch where it is.
    """
    import torch
    import torch.nn.functional as F

    output = model(**model_inputs(batch, device), use_cache=False)
    logits = output.logits
    labels = getattr(output, "labels", None)  # a multimodal model may expand labels over its image tokens
    if labels is None:
        labels = batch["labels"]
    labels = labels.to(logits.device)[:, 1:]
    logits = logits[:, :-1].float()
    mask = labels != IGNORE_INDEX
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    if z_loss:
        lse = torch.logsumexp(logits[mask], dim=-1)
        loss = loss + z_loss * (lse ** 2).sum()
    return loss, int(mask.sum())


def micro_batch_objective(loss_sum: Any, world_size: int, window_units: float) -> Any:
    """What one micro-batch back-propagates so the window's update is its per-unit mean loss (see above)."""
    return loss_sum * world_size / max(window_units, 1.0)


def window_loss(global_loss_sum: float, window_units: float) -> float:
    """The reported loss (or metric) of an optimizer step: the per-unit mean over its window on all ranks."""
    return global_loss_sum / max(window_units, 1.0)


# ------------------------------------------------------------------ the built-in objective: sft


def token_loss_sum(model: Any, batch: dict[str, Any], z_loss: float = 0.0) -> Any:
    """The SFT loss of ``batch`` (already on the model's device): its token cross-entropies (plus z-loss), summed."""
    return batch_loss_sum(model, batch, None, z_loss)[0]


def sft_loss(model: Any, batch: dict[str, Any], context: Any) -> tuple[Any, dict[str, Any]]:
    """The built-in ``sft`` objective: :func:`token_loss_sum`, no extra metrics."""
    return token_loss_sum(model, batch, context.z_loss), {}


# ------------------------------------------------------------------ helpers for objectives over sequences


def sequence_logps(logits: Any, labels: Any, sequence_ids: Any, n_sequences: int) -> tuple[Any, Any]:
    """(sum of log p(label) per sequence, label tokens per sequence), both shape ``(n_sequences,)``.

    ``logits`` (B, T, V) and ``labels`` (B, T) as a causal LM sees them (shifted here: position
    ``t`` predicts ``labels[t + 1]``); ``sequence_ids`` (B, T) says which sequence each token is in
    (-1 on padding). Log-probabilities are computed in fp32.
    """
    import torch

    labels = labels[:, 1:]
    owner = sequence_ids[:, 1:]
    mask = (labels != IGNORE_INDEX) & (owner >= 0)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = torch.gather(logp, -1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    owner = torch.where(mask, owner, torch.zeros_like(owner))
    sums = torch.zeros(n_sequences, dtype=token_logp.dtype, device=token_logp.device)
    sums = sums.index_add(0, owner[mask], token_logp[mask])
    counts = torch.zeros(n_sequences, dtype=torch.long, device=token_logp.device)
    counts = counts.index_add(0, owner[mask], torch.ones_like(owner[mask]))
    return sums, counts


def sequence_last_index(sequence_ids: Any, n_sequences: int, keep: Any = None) -> tuple[Any, Any]:
    """(row, column) of the last token of each sequence, each shape ``(n_sequences,)``.

    ``keep`` (B, T, bool) limits the tokens considered (e.g. not the pad id, as transformers'
    sequence-classification models read their score). Raises ValueError when a sequence has none.
    """
    import torch

    considered = sequence_ids >= 0 if keep is None else (sequence_ids >= 0) & keep.to(sequence_ids.device)
    rows, cols = torch.nonzero(considered, as_tuple=True)
    owner = sequence_ids[rows, cols]
    flat = rows * sequence_ids.size(1) + cols
    last = torch.full((n_sequences,), -1, dtype=flat.dtype, device=flat.device).scatter_reduce(
        0, owner, flat, reduce="amax")
    if bool((last < 0).any()):
        raise ValueError("a sequence has no token left to read")
    return last // sequence_ids.size(1), last % sequence_ids.size(1)
