"""``preference-padded``: every sequence of a pair in its own right-padded row, with an attention mask.

For models that cannot take packed rows (their attention does not follow restarting position ids).
A dataset row holds one or more samples (``group_sizes``: sequences per sample) whose sequences lie
back to back (``sequence_lengths``). Each sequence becomes one batch row; the batch carries the same
sequence tensors as the core's packed collator: ``sequence_ids`` (B, T) (the row's sequence number on
its tokens, -1 on padding), ``sequence_groups`` (S,) (its sample) and ``sequence_roles`` (S,) (its
place in the sample: 0 chosen, 1 rejected).
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


def groups_and_roles(rows: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(sample number, place in its sample) of every sequence of the batch, in order."""
    groups: list[int] = []
    roles: list[int] = []
    for row in rows:
        for size in row.get("group_sizes") or [len(row.get("sequence_lengths") or [None])]:
            groups += [groups[-1] + 1 if groups else 0] * size
            roles += list(range(size))
    return groups, roles


def make_padded_collator(pad_token_id: int | None = 0, **_: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The collate function (``tokenizer`` and ``attn_implementation`` are not needed)."""
    pad_id = int(pad_token_id if pad_token_id is not None else 0)

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not rows:
            raise ValueError("cannot collate an empty batch")
        sequences = [s for row in rows for s in split_sequences(row)]
        groups, roles = groups_and_roles(rows)
        width = max(len(s["input_ids"]) for s in sequences)

        def padded(key: str, fill: int) -> Any:
            return torch.tensor([s[key] + [fill] * (width - len(s[key])) for s in sequences])

        lengths = [len(s["input_ids"]) for s in sequences]
        return {
            "input_ids": padded("input_ids", pad_id),
            "labels": padded("labels", IGNORE_INDEX),
            "position_ids": torch.tensor([list(range(width)) for _ in sequences]),
            "attention_mask": torch.tensor([[1] * n + [0] * (width - n) for n in lengths]),
            "sequence_ids": torch.tensor([[i] * n + [-1] * (width - n) for i, n in enumerate(lengths)]),
            "sequence_groups": torch.tensor(groups),
            "sequence_roles": torch.tensor(roles),
        }

    return collate
