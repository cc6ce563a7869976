"""Vectorized numpy helpers shared by the template engine and the data pipeline (imports only numpy)."""

from __future__ import annotations

from typing import Any


def gather_index(starts: Any, lengths: Any) -> Any:
    """Indices that concatenate the segments ``[starts[i], starts[i] + lengths[i])`` (numpy, vectorized)."""
    import numpy as np

    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - first, lengths) + np.arange(total, dtype=np.int64)
