"""The default collator: samples -> padded torch tensors.

Ordinary rows get ``attention_mask`` (1 on tokens, 0 on padding). Packed rows (``position_ids``
that restart inside a row) get NO attention mask: transformers then derives the sample boundaries
from the restarting ``position_ids`` (sdpa/eager build a block-diagonal causal mask when
``attention_mask`` is None and the model runs with ``use_cache=False``; flash-attn uses its varlen
kernel). Padding of a packed batch counts from 0 again, so it forms a segment of its own.

Flash-attn detects packing only in a batch of one row, so ``flatten=True`` (or
``attn_implementation="flash_attention_2"``/``"flash_attention_3"``) concatenates the rows of a
packed batch into a single row, as transformers' ``DataCollatorWithFlattening`` does.

Rows of an objective whose samples hold several sequences (``sequence_lengths``, ``group_sizes``;
see :mod:`xt.data.dataset`) become the tensors its loss reads: ``sequence_ids`` (B, T; the batch's
sequence each token is in, -1 on padding), ``sequence_groups`` (S; the sample of each sequence),
``sequence_roles`` (S; its place in its sample, e.g. 0 chosen, 1 rejected) and ``sample_ids`` (G;
each sample's index in the dataset).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xt.template import IGNORE_INDEX

PADDED_KEYS = ("input_ids", "labels", "position_ids", "attention_mask")
SEQUENCE_KEYS = ("sequence_lengths", "group_sizes", "sample_ids")


def make_collate(spec: Any, *, tokenizer: Any, pad_token_id: int | None,
                 attn_implementation: str | None) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """Call a collator spec's factory with exactly the keyword options the core passes.

    ``tokenizer`` is the model's tokenizer (or processor), ``pad_token_id`` the id batches are padded
    with and ``attn_implementation`` the attention backend the model was loaded with.
    """
    return spec.factory(tokenizer=tokenizer, pad_token_id=pad_token_id, attn_implementation=attn_implementation)


def is_packed(sample: dict[str, Any]) -> bool:
    """Whether a row holds more than one sample (its position ids restart)."""
    positions = sample.get("position_ids")
    if not positions:
        return False
    return any(b != a + 1 for a, b in zip(positions, positions[1:]))


def make_default_collator(pad_token_id: int = 0, pad_to_multiple_of: int | None = None, *, flatten: bool | None = None,
                          attn_implementation: str | None = None, **_: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A collate function for the data loader (extra options such as ``tokenizer`` are ignored)."""
    if flatten is None:
        flatten = bool(attn_implementation and attn_implementation.startswith("flash"))
    pad_id = int(pad_token_id if pad_token_id is not None else 0)

    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not samples:
            raise ValueError("cannot collate an empty batch")
        rows = [_with_positions(s) for s in samples]
        packed = any(is_packed(r) for r in rows)
        if packed and flatten:
            rows = [{
                "input_ids": [t for r in rows for t in r["input_ids"]],
                "labels": [t for r in rows for t in _first_masked(r["labels"])],
                "position_ids": [p for r in rows for p in r["position_ids"]],
            }]
        width = max(len(r["input_ids"]) for r in rows)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]),
            "labels": torch.tensor([_first_masked(r["labels"]) + [IGNORE_INDEX] * (width - len(r["labels"]))
                                    for r in rows]),
            # Padding continues 0, 1, 2 ... : a separate segment in a packed batch, harmless under a mask otherwise.
            "position_ids": torch.tensor([r["position_ids"] + list(range(width - len(r["position_ids"])))
                                          for r in rows]),
        }
        if not packed:
            batch["attention_mask"] = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"]))
                                                    for r in rows])
        if "sequence_lengths" in samples[0]:
            batch.update(sequence_tensors([s["sequence_lengths"] for s in samples], [s["group_sizes"] for s in samples],
                                          width, flattened=packed and flatten))
            batch["sample_ids"] = torch.tensor([i for s in samples for i in s.get("sample_ids", [])], dtype=torch.long)
        for key in samples[0]:
            if key not in PADDED_KEYS and key not in SEQUENCE_KEYS:
                batch[key] = [s.get(key) for s in samples]
        return batch

    return collate


def _with_positions(sample: dict[str, Any]) -> dict[str, Any]:
    if sample.get("position_ids") is not None:
        return sample
    return dict(sample, position_ids=list(range(len(sample["input_ids"]))))


def _first_masked(labels: list[int]) -> list[int]:
    """Labels whose first entry is -100 (the token before a row start is another row's)."""
    if labels and labels[0] != IGNORE_INDEX:
        return [IGNORE_INDEX] + list(labels[1:])
    return list(labels)


def sequence_tensors(sequence_lengths: list[list[int]], group_sizes: list[list[int]], width: int,
                     flattened: bool = False) -> dict[str, Any]:
    """``sequence_ids`` (rows x ``width``, -1 on padding), ``sequence_groups`` and ``sequence_roles``.

    ``sequence_lengths[r]`` are row ``r``'s sequences back to back from its first column (all rows
    as one when ``flattened``); ``group_sizes[r]`` how many consecutive sequences form each sample.
    """
    import torch

    rows = [[n for lengths in sequence_lengths for n in lengths]] if flattened else sequence_lengths
    ids = torch.full((len(rows), width), -1, dtype=torch.long)
    sequence = 0
    for r, lengths in enumerate(rows):
        column = 0
        for n in lengths:
            ids[r, column:column + n] = sequence
            column += n
            sequence += 1
    sizes = [size for sizes_of_row in group_sizes for size in sizes_of_row]
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
    roles = torch.tensor([role for size in sizes for role in range(size)], dtype=torch.long)
    return {"sequence_ids": ids, "sequence_groups": groups, "sequence_roles": roles}
