"""Data pipeline benchmark: shared alpaca rows x20, Llama-2 tokenizer.

Prints samples/s of xt's pipeline (1 and 2 processes), tokens, packing fill and the cached-run
speed-up, beside a naive baseline measured in the same run (map, validate and
``TemplateSpec.encode`` one row at a time, then the same length policy).

    python bench/data.py [--shared ../shared] [--repeat 20] [--max-length 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def alpaca_map(row: dict) -> dict:
    prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]}


def naive(rows: list[dict], template, tokenizer, max_length: int) -> tuple[int, int]:
    """One row at a time through the contract's own functions."""
    from xt.data.process import apply_length_policy
    from xt.specs import conversation_problems

    samples = tokens = 0
    for row in rows:
        conv = alpaca_map(row)
        assert not conversation_problems(conv)
        kept, _ = apply_length_policy(template.encode(conv, tokenizer), max_length, "truncate")
        if kept is not None:
            samples += 1
            tokens += len(kept["input_ids"])
    return samples, tokens


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("XT_SHARED", str(here.parent / "shared")))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    from transformers import LlamaTokenizer
    from xt.data import DataOptions, build_dataset
    from xt.plugins import get_registry
    from xt.specs import DatasetSpec

    shared = Path(args.shared)
    base_rows = json.loads((shared / "data" / "alpaca" / "alpaca_en_demo.json").read_text())
    rows = base_rows * args.repeat
    tokenizer = LlamaTokenizer.from_pretrained(str(shared / "tokenizers" / "llama2"))
    template = get_registry().get("templates", "default")
    work = tempfile.mkdtemp(prefix="xt-bench-data-")
    path = os.path.join(work, "alpaca_x.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(rows, fh)
    spec = DatasetSpec(name="bench-alpaca", map_row=alpaca_map, data_files=[path])

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, "
          f"load average at start {load} (other jobs share the cores)")
    print(f"rows: {len(rows)} (alpaca_en_demo x{args.repeat}), tokenizer Llama-2, template default, "
          f"max_length {args.max_length}")
    (n_naive, tok_naive), t_naive = timed(lambda: naive(rows, template, tokenizer, args.max_length))
    print(f"naive one-row-at-a-time     {t_naive:7.2f} s  {n_naive / t_naive:9.0f} samples/s  {tok_naive} tokens")
    results = {}
    for num_proc in (1, 2):
        opts = DataOptions(max_length=args.max_length, num_proc=num_proc, use_cache=False)
        ds, t = timed(lambda o=opts: build_dataset(spec, template, tokenizer, o))
        results[num_proc] = (ds, t)
        print(f"xt build, {num_proc} process{'es' if num_proc > 1 else '  '}     {t:7.2f} s  "
              f"{ds.stats['samples'] / t:9.0f} samples/s  {ds.stats['tokens']} tokens  "
              f"fill {100 * ds.stats['fill']:.1f}%  speed-up x{t_naive / t:.1f} over naive")
    cache_dir = os.path.join(work, "cache")
    opts = DataOptions(max_length=args.max_length, cache_dir=cache_dir)
    first, t_first = timed(lambda: build_dataset(spec, template, tokenizer, opts))
    cached, t_cached = timed(lambda: build_dataset(spec, template, tokenizer, opts))
    assert cached.stats["cached"] and not first.stats["cached"]
    _, t_read = timed(lambda: [cached[i] for i in range(len(cached))])
    print(f"xt cached run               {t_cached:7.3f} s  {cached.stats['samples'] / t_cached:9.0f} samples/s  "
          f"x{t_first / t_cached:.0f} vs its uncached build, x{t_naive / t_cached:.0f} vs naive "
          f"(reading all {len(cached)} packed rows back: {t_read:.2f} s)")
    # Without repeated rows (no duplicate texts to reuse), for an honest floor of the batch encoder.
    uniq = DatasetSpec(name="bench-alpaca-unique", map_row=alpaca_map,
                       data_files=[str(shared / "data" / "alpaca" / "alpaca_en_demo.json")])
    (n1, _), t1n = timed(lambda: naive(base_rows, template, tokenizer, args.max_length))
    ds1, t1 = timed(lambda: build_dataset(uniq, template, tokenizer, DataOptions(max_length=args.max_length,
                                                                                     use_cache=False)))
    print(f"unique rows only ({len(base_rows)}): naive {n1 / t1n:.0f} samples/s, xt {ds1.stats['samples'] / t1:.0f} "
          f"samples/s (x{t1n / t1:.1f})")


if __name__ == "__main__":
    main()
