"""Packing: whole samples into rows of at most ``capacity`` tokens (best-fit decreasing).

A sample is never cut. Inside a row samples keep their original order, so the images of packed
multimodal samples stay in order too.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


def pack_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of samples grouped into bins whose total length is at most ``capacity``.

    Longest first, each sample goes into the open bin with the least room that still fits it
    (a sorted list of remaining capacities makes each step a binary search). Bins are returned in
    order of their first sample.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)  # stable: ties by index
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin id), sorted
    for index in order:
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"sample {index} has {length} tokens, more than the bin capacity {capacity}")
        pos = bisect.bisect_left(free, (length, -1))
        if pos < len(free):
            room, bin_id = free.pop(pos)
            bins[bin_id].append(index)
            room -= length
        else:
            bin_id = len(bins)
            bins.append([index])
            room = capacity - length
        if room > 0:
            bisect.insort(free, (room, bin_id))
    for members in bins:
        members.sort()
    bins.sort(key=lambda members: members[0])
    return bins


def fill_ratio(lengths: Sequence[int], bins: Sequence[Sequence[int]], capacity: int) -> float:
    """Share of the bins' token slots that hold real tokens."""
    if not bins:
        return 0.0
    return sum(lengths[i] for members in bins for i in members) / (len(bins) * capacity)
