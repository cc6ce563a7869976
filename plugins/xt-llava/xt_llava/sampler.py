"""A modality-grouped batch sampler: every global batch holds only image rows or only text rows.

As XTuner's ``LengthGroupedSampler`` with modality lengths does: mixing text-only and image rows
in one batch wastes compute on padding (image rows are hundreds of tokens longer) and, in the
pretrain stage, a text-only batch gives the projector no gradient. It is the core's
:class:`xt.data.ResumableBatchSampler` with ``groups`` (one group per modality), so resume state and
rank slicing are the same as for text-only runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xt.api import ResumableBatchSampler


def row_modalities(dataset: Any) -> list[bool]:
    """For each row of a processed dataset (or a subset of one): does it hold an image?"""
    base, indices = dataset, None
    if hasattr(dataset, "base") and hasattr(dataset, "indices"):  # xt.train.evaluation.RowSubset
        base, indices = dataset.base, list(dataset.indices)
    images = getattr(base, "images", None)
    segments = getattr(base, "row_segments", None)
    if images is not None and segments is not None:
        per_row = [any(images[j] for j in range(int(segments[r]), int(segments[r + 1]))) for r in range(len(base))]
        return [per_row[i] for i in indices] if indices is not None else per_row
    if images is None and segments is not None:
        return [False] * (len(indices) if indices is not None else len(base))
    return [bool(dataset[i].get("images")) for i in range(len(dataset))]


def ModalityGroupedBatchSampler(lengths: Sequence[int], batch_size: int, *, has_image: Sequence[bool],  # noqa: N802
                                **options: Any) -> ResumableBatchSampler:
    """The core's resumable batch sampler with one group per modality: no batch mixes image and text rows."""
    return ResumableBatchSampler(lengths, batch_size, groups=[bool(x) for x in has_image], **options)


def make_batch_sampler(dataset: Any, batch_size: int, **options: Any) -> ResumableBatchSampler:
    """What a llava ModelSpec offers as ``batch_sampler``: ``(dataset, batch_size, rank=, world_size=,
    seed=, shuffle=, group_by_length=, drop_last=)`` -> sampler."""
    return ModalityGroupedBatchSampler(dataset.lengths, batch_size, has_image=row_modalities(dataset), **options)
