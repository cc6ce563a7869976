"""Data build benchmark: xt vs the tokenizer-only bound and a naive batched ``datasets.map``.

    python bench/data.py [--shared ../shared] [--copies 20] [--repeats 5] [--max-length 2048]

Rows: the shared Alpaca demo rows x ``--copies``. **Distinct** (the headline): every copy's
instruction and output get a copy number, so no text repeats and nothing can be reused.
**Repeated** (labelled as such): plain copies, where xt tokenizes each distinct text once.
Tokenizer: Llama-2 (shared/tokenizers/llama2), template ``default``.

Measured in interleaved repeats (one of each per repeat, fresh objects, the same process), wall
time, median and range (min-max); every ratio is taken within a repeat:

- ``bound``: the bare batched tokenizer call on the texts the template must tokenize (every
  prompt and reply, no framing, no map, no arrays): the fastest any pipeline using this tokenizer
  could be;
- ``xt``: ``build_dataset`` uncached (load the JSON, map, validate, template, length policy,
  pack), one process; ``xt-2proc``: the same with ``num_proc=2``;
- ``naive``: ``datasets.Dataset.map(batched=True)`` calling ``TemplateSpec.encode`` per row, then
  the same length policy;
- ``cached``: ``build_dataset`` reading its own cache entry.

XTuner for reference (not re-measured here): XTuner 0.2.0's ``process_hf_dataset`` was 2.6x
(1.6-4.8x over 9 repeats) slower than xt on the same distinct rows, 19x on copies, as measured on
2026-12-01 for issue #16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def alpaca_map(row: dict) -> dict:
    prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]}


def make_rows(base: list[dict], copies: int, distinct: bool) -> list[dict]:
    if not distinct:
        return base * copies
    return [dict(row, instruction=f"({k}) {row['instruction']}", output=f"{row['output']} ({k})")
            for k in range(copies) for row in base]


def bound(rows: list[dict], tokenizer) -> int:
    """Tokens of every prompt and reply through the tokenizer's batched call alone."""
    texts = [m["content"] for row in rows for m in alpaca_map(row)["messages"]]
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return sum(len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])


def naive(rows: list[dict], template, tokenizer, max_length: int) -> int:
    """``datasets.map`` (batched) over the contract's per-row functions; returns the samples kept."""
    from datasets import Dataset, disable_progress_bars
    from xt.data.process import apply_length_policy

    disable_progress_bars()
    def encode(batch: dict) -> dict:
        out: dict[str, list] = {"input_ids": [], "labels": []}
        for i in range(len(batch["instruction"])):
            row = {key: batch[key][i] for key in batch}
            kept, _ = apply_length_policy(template.encode(alpaca_map(row), tokenizer), max_length, "truncate")
            out["input_ids"].append(kept["input_ids"] if kept else [])
            out["labels"].append(kept["labels"] if kept else [])
        return out

    ds = Dataset.from_list(rows).map(encode, batched=True, batch_size=1000, remove_columns=list(rows[0]))
    return sum(1 for ids in ds["input_ids"] if ids)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def run_set(label: str, rows: list[dict], args, tokenizer, template, work: str) -> None:
    from xt.data import DataOptions, build_dataset
    from xt.specs import DatasetSpec

    path = os.path.join(work, f"{label}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(rows, fh)
    spec = DatasetSpec(name=f"bench-{label}", map_row=alpaca_map, data_files=[path])
    cache = os.path.join(work, f"cache-{label}")
    build_dataset(spec, template, tokenizer, DataOptions(max_length=args.max_length, cache_dir=cache))  # fill cache
    runs = {
        "bound": lambda: bound(rows, tokenizer),
        "xt": lambda: build_dataset(spec, template, tokenizer, DataOptions(max_length=args.max_length, use_cache=False)),
        "xt-2proc": lambda: build_dataset(spec, template, tokenizer,
                                          DataOptions(max_length=args.max_length, use_cache=False, num_proc=2)),
        "naive": lambda: naive(rows, template, tokenizer, args.max_length),
        "cached": lambda: build_dataset(spec, template, tokenizer, DataOptions(max_length=args.max_length,
                                                                                cache_dir=cache)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    last = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            last[name], seconds = timed(fn)
            times[name].append(seconds)
    assert last["cached"].stats["cached"] and last["naive"] == last["xt"].stats["samples"]
    stats = last["xt"].stats
    print(f"\n{label} rows: {len(rows)}, {stats['samples']} samples, {stats['tokens']} tokens "
          f"(tokenizer: {stats.get('encode_threads', '?')} thread(s) per process)")
    for name in runs:
        print(f"  {name:9s} {spread(times[name], '{:.3f}'):>24s} s   "
              f"{spread([len(rows) / t for t in times[name]], '{:.0f}'):>24s} rows/s")

    def ratio(a: str, b: str) -> str:
        return spread([y / x for x, y in zip(times[a], times[b])])

    print(f"  xt speed / tokenizer-only bound: {ratio('xt', 'bound')}x   (2 processes: {ratio('xt-2proc', 'bound')}x)")
    print(f"  xt vs naive batched datasets.map: {ratio('xt', 'naive')}x faster")
    print(f"  cached vs uncached xt build: {ratio('cached', 'xt')}x faster")


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("XT_SHARED", str(here.parent / "shared")))
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    from transformers import LlamaTokenizer
    from xt.plugins import get_registry

    shared = Path(args.shared)
    base = json.loads((shared / "data" / "alpaca" / "alpaca_en_demo.json").read_text())
    tokenizer = LlamaTokenizer.from_pretrained(str(shared / "tokenizers" / "llama2"))
    template = get_registry().get("templates", "default")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, load average {load}; "
          f"alpaca_en_demo ({len(base)} rows) x{args.copies}, Llama-2 tokenizer, template default, "
          f"max_length {args.max_length}, {args.repeats} interleaved repeats: median (min-max)")
    with tempfile.TemporaryDirectory() as work:
        run_set("distinct", make_rows(base, args.copies, distinct=True), args, tokenizer, template, work)
        run_set("repeated", make_rows(base, args.copies, distinct=False), args, tokenizer, template, work)


if __name__ == "__main__":
    main()
