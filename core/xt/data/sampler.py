"""A distributed, resumable batch sampler with optional length grouping.

Every epoch the indices are shuffled with ``seed + epoch`` (the same on every rank), cut into
global batches of ``batch_size * world_size`` and each rank takes its contiguous slice of every
global batch, so ranks partition the data and step in lock-step. With ``group_by_length`` the
shuffled indices are cut into mega-chunks of ``MEGA_BATCHES`` global batches, each sorted by
length (longest first) before cutting, and the order of the global batches is shuffled again:
batches hold samples of similar length and still come in random order. With ``groups`` (one key
per sample, e.g. "has an image") no global batch mixes two groups, as XTuner's modality-grouped
sampling does for LLaVA.

The position (epoch, batches handed out) is saved by :meth:`state_dict` and restored by
:meth:`load_state_dict`; the next iteration continues exactly where the saved one stopped.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

MEGA_BATCHES = 50


class ResumableBatchSampler:
    """Yields lists of dataset indices for one rank."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, group_by_length: bool = False, drop_last: bool = True,
                 groups: Sequence[Any] | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.lengths = list(lengths)
        if groups is not None and len(groups) != len(self.lengths):
            raise ValueError("groups and lengths differ in length")
        self.groups = list(groups) if groups is not None else None
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed out

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def _cut(self, members: list[int], rng: random.Random) -> list[list[int]]:
        """Shuffle ``members``, even them out to whole global batches, length-group, and cut."""
        order = list(members)
        if self.shuffle:
            rng.shuffle(order)
        n = len(order)
        span = self.batch_size * self.world_size
        if self.drop_last:
            order = order[: n - n % span]
        elif n % span:
            # Pad with the first indices so every rank gets the same number of batches.
            need = -n % span if n >= span else span - n
            order = order + [order[i % n] for i in range(need)] if n else order
        if self.group_by_length:
            mega = span * MEGA_BATCHES
            order = [i for s in range(0, len(order), mega)
                     for i in sorted(order[s:s + mega], key=lambda j: -self.lengths[j])]
        return [order[s:s + span] for s in range(0, len(order), span)]

    def _members_by_group(self) -> list[list[int]]:
        if self.groups is None:
            return [list(range(len(self.lengths)))]
        by_group: dict[Any, list[int]] = {}
        for i, g in enumerate(self.groups):
            by_group.setdefault(g, []).append(i)
        return [by_group[g] for g in sorted(by_group, key=repr)]

    def _global_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        batches = [b for members in self._members_by_group() for b in self._cut(members, rng)]
        if self.shuffle and (self.group_by_length or self.groups is not None):
            rng.shuffle(batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        per_rank = self.batch_size
        return [g[self.rank * per_rank:(self.rank + 1) * per_rank] for g in self._global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.position = 0
        self.epoch += 1

    def __len__(self) -> int:
        span = self.batch_size * self.world_size
        sizes = [len(m) for m in self._members_by_group()]
        return sum(n // span if self.drop_last else -(-n // span) for n in sizes)

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler stands; pass ``position`` = batches actually consumed when a loader prefetches."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_samples": len(self.lengths)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (same data, batch size and world size)."""
        for key in ("world_size", "batch_size", "num_samples"):
            mine = self.world_size if key == "world_size" else self.batch_size if key == "batch_size" else len(self.lengths)
            if key in state and state[key] != mine:
                raise ValueError(f"cannot resume: the saved sampler had {key}={state[key]}, this one has {mine}")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))
