"""The processed dataset: flat token arrays plus offsets, read back lazily (memory-mapped from the cache).

Row ``i`` (a packed row, or one sample when packing is off) is made of samples
``row_segments[i] .. row_segments[i+1]``; sample ``j`` spans tokens ``sample_offsets[j] ..
sample_offsets[j+1]``. ``position_ids`` restart at 0 for every sample.

For an objective whose samples hold several sequences (a preference pair), the stored segments are
sequences and ``group_starts`` (1 where a sequence starts a new sample) groups them; rows then also
carry ``sequence_lengths``, ``group_sizes`` (sequences per sample) and ``sample_ids`` (each sample's
index among the dataset's samples, in stored order), and a row always holds whole samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

ARRAYS = ("input_ids", "labels", "sample_offsets", "row_segments")
GROUPS = "group_starts"


class ProcessedDataset(Sequence):
    """A sequence of samples ``{"input_ids", "labels", "position_ids", ("images")}`` (lists of ints)."""

    def __init__(self, arrays: dict[str, np.ndarray], images: list[list[Any] | None] | None, stats: dict[str, Any]):
        self.input_ids = arrays["input_ids"]
        self.labels_array = arrays["labels"]
        self.sample_offsets = arrays["sample_offsets"]
        self.row_segments = arrays["row_segments"]
        self.group_starts = arrays.get(GROUPS)  # None: every segment is a sample of its own
        # the sample each stored sequence belongs to (grouped data only)
        self.sample_of_sequence = None if self.group_starts is None else np.cumsum(self.group_starts) - 1
        self.images = images  # per sample, None when no sample has images
        self.stats = stats
        starts = self.sample_offsets[self.row_segments]
        self.lengths: list[int] = np.diff(starts).tolist()

    @classmethod
    def from_arrays(cls, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray, rows: list[list[int]],
                    images: list[list[Any]] | None, stats: dict[str, Any],
                    group_sizes: list[int] | None = None) -> ProcessedDataset:
        """Samples stored back to back (``lengths`` each) regrouped into rows of sample indices.

        With ``group_sizes`` the stored segments are sequences, ``group_sizes`` consecutive ones per
        sample, and ``rows`` lists sequence indices (whole samples).
        """
        from xt.arrays import gather_index

        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        order = np.fromiter((i for members in rows for i in members), dtype=np.int64)
        index = gather_index(starts[order], lengths[order])
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(lengths[order], out=offsets[1:])
        row_segments = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(members) for members in rows], out=row_segments[1:])
        arrays = {"input_ids": np.asarray(ids, dtype=np.int32)[index], "labels": np.asarray(labels, dtype=np.int32)[index],
                  "sample_offsets": offsets, "row_segments": row_segments}
        if group_sizes is not None:
            starts_flag = np.zeros(len(lengths), dtype=np.int8)
            starts_flag[np.cumsum(group_sizes) - np.asarray(group_sizes, dtype=np.int64)] = 1
            arrays[GROUPS] = starts_flag[order]
        ordered_images = [images[i] for i in order.tolist()] if images is not None else None
        return cls(arrays, ordered_images, stats)

    @classmethod
    def from_samples(cls, samples: list[dict[str, Any]], rows: list[list[int]], stats: dict[str, Any]) -> ProcessedDataset:
        """Samples (dicts of lists) grouped into rows (lists of sample indices, one per row)."""
        lengths = np.array([len(s["input_ids"]) for s in samples], dtype=np.int64)
        ids = np.array([t for s in samples for t in s["input_ids"]], dtype=np.int32)
        labels = np.array([t for s in samples for t in s["labels"]], dtype=np.int32)
        images = [s.get("images") for s in samples] if any("images" in s for s in samples) else None
        return cls.from_arrays(ids, labels, lengths, rows, images, stats)

    def __len__(self) -> int:
        return len(self.row_segments) - 1

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        first, last = int(self.row_segments[index]), int(self.row_segments[index + 1])
        bounds = self.sample_offsets[first:last + 1]
        start, end = int(bounds[0]), int(bounds[-1])
        if last - first == 1:
            position_ids = list(range(end - start))
        else:
            lens = np.diff(bounds)
            position_ids = (np.arange(end - start) - np.repeat(bounds[:-1] - start, lens)).tolist()
        sample: dict[str, Any] = {
            "input_ids": self.input_ids[start:end].tolist(),
            "labels": self.labels_array[start:end].tolist(),
            "position_ids": position_ids,
        }
        if self.group_starts is not None:
            flags = np.flatnonzero(np.asarray(self.group_starts[first:last]))
            sample["sequence_lengths"] = np.diff(bounds).tolist()
            sample["group_sizes"] = np.diff(np.append(flags, last - first)).tolist()
            sample["sample_ids"] = self.sample_of_sequence[first + flags].tolist()
        if self.images is not None:
            imgs = [img for j in range(first, last) for img in (self.images[j] or [])]
            if imgs or any(self.images[j] is not None for j in range(first, last)):
                sample["images"] = imgs
        return sample

    @property
    def sample_count(self) -> int:
        """How many samples the dataset holds (packed rows may hold several)."""
        if self.sample_of_sequence is not None:
            return int(self.sample_of_sequence[-1]) + 1 if len(self.sample_of_sequence) else 0
        return len(self.sample_offsets) - 1

    def segment_lengths(self, index: int) -> list[int]:
        """Token lengths of the segments row ``index`` holds (each restarts ``position_ids``), in order."""
        first, last = int(self.row_segments[index]), int(self.row_segments[index + 1])
        return np.diff(self.sample_offsets[first:last + 1]).tolist()

    def num_samples(self, index: int) -> int:
        """How many samples row ``index`` packs."""
        first, last = int(self.row_segments[index]), int(self.row_segments[index + 1])
        if self.group_starts is not None:
            return int(np.asarray(self.group_starts[first:last]).sum())
        return last - first

    # --- storage -------------------------------------------------------------------------------
    def save(self, folder: str) -> None:
        """Write arrays (.npy), images and stats (json) into an existing folder."""
        arrays = {"input_ids": self.input_ids, "labels": self.labels_array, "sample_offsets": self.sample_offsets,
                  "row_segments": self.row_segments}
        if self.group_starts is not None:
            arrays[GROUPS] = self.group_starts
        for name, array in arrays.items():
            np.save(os.path.join(folder, name + ".npy"), np.ascontiguousarray(array))
        if self.images is not None:
            with open(os.path.join(folder, "images.json"), "w", encoding="utf-8") as fh:
                json.dump(self.images, fh)
        stats = {k: v for k, v in self.stats.items() if k not in ("cached", "cache_path")}
        with open(os.path.join(folder, "stats.json"), "w", encoding="utf-8") as fh:
            json.dump(stats, fh, indent=1)

    @classmethod
    def load(cls, folder: str) -> ProcessedDataset:
        """Read a folder written by :meth:`save` (token arrays memory-mapped)."""
        arrays = {name: np.load(os.path.join(folder, name + ".npy"), mmap_mode="r") for name in ARRAYS}
        if os.path.exists(os.path.join(folder, GROUPS + ".npy")):
            arrays[GROUPS] = np.load(os.path.join(folder, GROUPS + ".npy"))
        images = None
        if os.path.exists(os.path.join(folder, "images.json")):
            with open(os.path.join(folder, "images.json"), encoding="utf-8") as fh:
                images = json.load(fh)
        with open(os.path.join(folder, "stats.json"), encoding="utf-8") as fh:
            stats = json.load(fh)
        return cls(arrays, images, stats)
