"""Eval during training: validation loss (and the objective's metrics), and generations for prompts.

Held-out prompts come from the validation rows themselves: each sample in a (possibly packed)
row is cut where its ``position_ids`` restart; the tokens before its first label are the prompt and
the first labelled span is the reference reply. So the prompts are exactly the run's template
framing and never seen in training. With ``DatasetSpec.scorer`` the exact-match accuracy is
reported as ``accuracy: X%``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xt.template import IGNORE_INDEX
from xt.train.dist import all_reduce_sum


class RowSubset:
    """A view of some rows of a processed dataset (``lengths`` kept for the sampler)."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)
        self.lengths = [base.lengths[i] for i in self.indices]
        self.stats = getattr(base, "stats", {})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.base[self.indices[i]]


def split_samples(row: dict[str, Any]) -> list[tuple[list[int], list[int]]]:
    """A (packed) row -> its samples as (input_ids, labels), cut where position ids restart at 0."""
    ids, labels, positions = row["input_ids"], row["labels"], row.get("position_ids") or list(range(len(row["input_ids"])))
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
    return [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:]) if b > a]


def heldout_prompts(dataset: Any, count: int) -> list[tuple[list[int], list[int]]]:
    """Up to ``count`` (prompt ids, reference reply ids) pairs from the first rows of ``dataset``."""
    out: list[tuple[list[int], list[int]]] = []
    for r in range(len(dataset)):
        for ids, labels in split_samples(dataset[r]):
            first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
            if first is None or first == 0:
                continue
            end = first
            while end < len(labels) and labels[end] != IGNORE_INDEX:
                end += 1
            out.append((ids[:first], ids[first:end]))
            if len(out) >= count:
                return out
    return out


def validate(model: Any, dataset: Any, collate: Any, batch_size: int, device: Any, rank: int, world_size: int,
             objective: Any, context: Any) -> dict[str, float]:
    """``eval_loss`` and ``eval_<metric>`` over ``dataset``: the objective's per-unit means (without z-loss),
    rows split across ranks (every rank must call it)."""
    import dataclasses

    from xt.generation import preserved_training_state
    from xt.train.objective import call_loss, count_units

    context = dataclasses.replace(context, training=False, z_loss=0.0)
    total, units, sums = 0.0, 0, {}
    mine = list(range(rank, len(dataset), world_size))
    steps = -(-len(dataset) // (world_size * batch_size)) if len(dataset) else 0
    with preserved_training_state(model):
        for s in range(steps):
            idx = mine[s * batch_size:(s + 1) * batch_size] or [0]  # ranks with no rows left still run a forward
            batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in collate([dataset[i] for i in idx]).items()}
            loss, metrics = call_loss(objective, model, batch, context)
            if mine[s * batch_size:(s + 1) * batch_size]:
                total += float(loss)
                units += count_units(objective, batch)
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value
    names = sorted(sums)
    total, units, *metric_totals = all_reduce_sum([total, float(units), *(sums[k] for k in names)], device)
    record = {"eval_loss": total / max(units, 1.0)}
    record.update({f"eval_{key}": value / max(units, 1.0) for key, value in zip(names, metric_totals)})
    return record


def tail_words(text: str, width: int = 80) -> str:
    """The end of ``text`` in at most ``width`` characters, starting at a word ("..." marks the cut)."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    tail = text[len(text) - width + 4:]
    if not text[len(text) - width + 3].isspace() and " " in tail:
        tail = tail.split(" ", 1)[1]  # the cut fell inside a word: start at the next one
    return "... " + tail.lstrip()


def run_generation_eval(model: Any, tokenizer: Any, template: Any, *, prompts: Sequence[str],
                        heldout: Sequence[tuple[list[int], list[int]]], scorer: Any, max_new_tokens: int,
                        out_file: Path | None, synced_gpus: bool, step: int) -> dict[str, Any]:
    """Generate for configured prompts and held-out pairs; write JSONL (rank 0 passes ``out_file``)."""
    from xt.generation import decode_reply, generate_from_ids

    records: list[dict[str, Any]] = []
    template = template.for_tokenizer(tokenizer)
    encoded = [template.encode_prompt([{"role": "user", "content": p}], tokenizer) for p in prompts]
    all_prompts = encoded + [p for p, _ in heldout]
    if not all_prompts:
        return {}
    predictions: list[str] = []
    for start in range(0, len(all_prompts), 8):
        predictions += generate_from_ids(model, tokenizer, template, all_prompts[start:start + 8],
                                         max_new_tokens=max_new_tokens, synced_gpus=synced_gpus)
    stop_ids = template.stop_token_ids(tokenizer)
    for text, pred in zip(prompts, predictions[: len(prompts)]):
        records.append({"step": step, "kind": "prompt", "prompt": text, "prediction": pred})
    correct = 0
    for (prompt_ids, ref_ids), pred in zip(heldout, predictions[len(prompts):]):
        reference = decode_reply(tokenizer, ref_ids, stop_ids, template.stop_words)
        record = {"step": step, "kind": "heldout", "prompt": tokenizer.decode(prompt_ids, skip_special_tokens=True),
                  "reference": reference, "prediction": pred}
        if scorer is not None:
            ok = float(scorer(pred, reference)) >= 1.0
            record["correct"] = ok
            correct += ok
        records.append(record)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    result: dict[str, Any] = {"records": records}
    if scorer is not None and heldout:
        result["accuracy"] = correct / len(heldout)
    return result
