"""``preference-padded``: every sequence of a pair in its own right-padded row, with an attention mask.

For models that cannot take packed rows (their attention does not follow restarting position ids).
A dataset row holds one or more samples (``group_sizes``: sequences per sample) whose sequences lie
back to back (``sequence_lengths``). Each sequence becomes one batch row, padded by the core's default
collator (which gives it ``attention_mask``); the batch carries the same sequence tensors as a packed
one: ``sequence_ids`` (B, T) (the row's sequence number on its tokens, -1 on padding),
``sequence_groups`` (S,) (its sample), ``sequence_roles`` (S,) (0 chosen, 1 rejected) and ``sample_ids``
(G,) (each sample's index in the dataset).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xt.api import IGNORE_INDEX


def split_sequences(row: dict[str, Any]) -> list[dict[str, list[int]]]:
    """One dataset row -> its sequences (input_ids, and labels with the first one masked)."""
    lengths = row.get("sequence_lengths") or [len(row["input_ids"])]
    sequences, start = [], 0
    for length in lengths:
        end = start + length
        labels = [IGNORE_INDEX] + list(row["labels"][start + 1:end])
        sequences.append({"input_ids": list(row["input_ids"][start:end]), "labels": labels})
        start = end
    return sequences


def make_padded_collator(pad_token_id: int | None = 0, **_: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The collate function (``tokenizer`` and ``attn_implementation`` are not needed: rows are never packed)."""
    from xt.api import make_default_collator, sequence_tensors  # the data package: imported when a run collates

    pad = make_default_collator(pad_token_id=pad_token_id, flatten=False)

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch")
        sequences = [s for row in rows for s in split_sequences(row)]
        batch = pad(sequences)
        group_sizes = [row.get("group_sizes") or [len(row.get("sequence_lengths") or [None])] for row in rows]
        batch.update(sequence_tensors([[len(s["input_ids"])] for s in sequences], group_sizes,
                                      batch["input_ids"].size(1)))
        batch["sample_ids"] = torch.tensor([i for row in rows for i in row.get("sample_ids", [])], dtype=torch.long)
        return batch

    return collate
