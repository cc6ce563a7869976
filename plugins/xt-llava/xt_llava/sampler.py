"""A modality-grouped batch sampler: every global batch holds only image rows or only text rows.

As XTuner's ``LengthGroupedSampler`` with modality lengths does: mixing text-only and image rows
in one batch wastes compute on padding (image rows are hundreds of tokens longer) and, in the
pretrain stage, a text-only batch gives the projector no gradient. The interface is the core's
:class:`xt.data.ResumableBatchSampler` (``set_epoch``, ``state_dict`` / ``load_state_dict``, the
same rank slicing), so the training loop can use either.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

MEGA_BATCHES = 50


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


class ModalityGroupedBatchSampler:
    """Yields lists of dataset indices for one rank; each global batch is all-image or all-text."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, has_image: Sequence[bool], rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True, group_by_length: bool = False,
                 drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if len(has_image) != len(lengths):
            raise ValueError("has_image and lengths differ in length")
        self.lengths = list(lengths)
        self.has_image = [bool(x) for x in has_image]
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def _group_batches(self, members: list[int], rng: random.Random) -> list[list[int]]:
        span = self.batch_size * self.world_size
        order = list(members)
        if self.shuffle:
            rng.shuffle(order)
        n = len(order)
        if self.drop_last:
            order = order[: n - n % span]
        elif n % span:
            order = order + [order[i % n] for i in range(span - n % span)]
        if self.group_by_length:
            mega = span * MEGA_BATCHES
            order = [i for s in range(0, len(order), mega)
                     for i in sorted(order[s:s + mega], key=lambda j: -self.lengths[j])]
        return [order[s:s + span] for s in range(0, len(order), span)]

    def _global_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        images = [i for i, flag in enumerate(self.has_image) if flag]
        texts = [i for i, flag in enumerate(self.has_image) if not flag]
        batches = self._group_batches(images, rng) + self._group_batches(texts, rng)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        size = self.batch_size
        batches = [g[self.rank * size:(self.rank + 1) * size] for g in self._global_batches()]
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.position = 0
        self.epoch += 1

    def __len__(self) -> int:
        span = self.batch_size * self.world_size
        n_img = sum(self.has_image)
        n_txt = len(self.has_image) - n_img
        if self.drop_last:
            return n_img // span + n_txt // span
        return -(-n_img // span) + -(-n_txt // span)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_samples": len(self.lengths)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = {"world_size": self.world_size, "batch_size": self.batch_size, "num_samples": len(self.lengths)}
        for key, value in mine.items():
            if key in state and state[key] != value:
                raise ValueError(f"cannot resume: the saved sampler had {key}={state[key]}, this one has {value}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))


def make_batch_sampler(dataset: Any, batch_size: int, **options: Any) -> ModalityGroupedBatchSampler:
    """What a llava ModelSpec offers as ``extra['batch_sampler']``: ``(dataset, batch_size, rank=, world_size=,
    seed=, shuffle=, group_by_length=, drop_last=)`` -> sampler."""
    return ModalityGroupedBatchSampler(dataset.lengths, batch_size, has_image=row_modalities(dataset), **options)
