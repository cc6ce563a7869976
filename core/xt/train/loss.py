"""The training loss: token-level cross-entropy, summed, then averaged over an optimizer step's window.

An optimizer step consumes a *window* of ``grad_accum`` micro-batches on each of ``world_size``
ranks. Its loss is the mean over every label token of that window on all ranks::

    loss = sum of token losses over the window on all ranks / label tokens of the window on all ranks

The label tokens of the window (``window_tokens``) are counted before any forward pass. Each
micro-batch then back-propagates ``its token-loss sum * world_size / window_tokens``
(:func:`micro_batch_objective`): DeepSpeed averages gradients over ranks (hence ``* world_size``)
and ``scale_wrt_gas=False`` stops it dividing by the accumulation steps again. The update therefore
equals the one on the concatenated window, however many samples the packed rows hold or how the
tokens fall across micro-batches and ranks.

Labels are shifted here (token ``t`` predicts label ``t + 1``); positions labelled ``IGNORE_INDEX``
carry no loss. With ``z_loss > 0`` each label position adds ``z_loss * logsumexp(logits) ** 2``.
"""

from __future__ import annotations

from typing import Any

from xt.template import IGNORE_INDEX

#: non-tensor batch entries a model still takes (e.g. lists of images for multimodal models)
MODEL_INPUT_KEYS = frozenset({"images", "pixel_values", "image_sizes"})


def label_tokens(batch: dict[str, Any]) -> int:
    """Label tokens of a collated batch after the shift (the positions that carry loss)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def batch_loss_sum(model: Any, batch: dict[str, Any], device: Any, z_loss: float = 0.0) -> tuple[Any, int]:
    """(sum of the token losses of ``batch``, its number of label tokens); the sum keeps its graph."""
    import torch
    import torch.nn.functional as F

    inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()
              if k != "labels" and (torch.is_tensor(v) or k in MODEL_INPUT_KEYS)}
    output = model(**inputs, use_cache=False)
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


def micro_batch_objective(token_loss_sum: Any, world_size: int, window_tokens: float) -> Any:
    """What one micro-batch back-propagates so the window's update is its token-mean loss (see above)."""
    return token_loss_sum * world_size / max(window_tokens, 1.0)


def window_loss(global_loss_sum: float, window_tokens: float) -> float:
    """The reported loss of an optimizer step: the token mean over its window on all ranks."""
    return global_loss_sum / max(window_tokens, 1.0)
