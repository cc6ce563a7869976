"""Data build benchmark: xt vs the tokenizer-only bound and a naive batched ``datasets.map``.

    python bench/data.py [--shared ../shared] [--copies 20] [--repeats 5] [--max-length 2048]
        [--xtuner-python .venv-xtuner/bin/python]

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
- ``cached``: ``build_dataset`` reading its own cache entry;
- ``xtuner``, only with ``--xtuner-python``: XTuner 0.2.0's ``process_hf_dataset`` on the same rows
  file, tokenizer and max length, in a fresh process of that interpreter per repeat
  (bench/xtuner_build.py: its build time, unpacked and, as ``xtuner-packed``, packed, and
  ``xtuner-bound``, the same bound with XTuner's tokenizers version). XTuner pins transformers 4.48,
  so it runs in its own bench-only environment: ``make bench-xtuner``, then
  ``--xtuner-python .venv-xtuner/bin/python``. Without the option XTuner is not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path

XTUNER_BUILD = Path(__file__).with_name("xtuner_build.py")
XTUNER_HOW = "`make bench-xtuner`, then --xtuner-python .venv-xtuner/bin/python"


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
    """``fn()``, its wall seconds, and its CPU seconds: the whole process's and this thread's."""
    start, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    out = fn()
    return out, time.perf_counter() - start, (time.process_time() - cpu, time.thread_time() - main_cpu)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def xtuner_call(python: str, options: list[str]) -> dict:
    """bench/xtuner_build.py run by ``python``: its last JSON line, or exit with the sentence it failed with."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        sys.exit(f"data.py: --xtuner-python {python} is not an executable interpreter; create it with {XTUNER_HOW}.")
    done = subprocess.run([python, str(XTUNER_BUILD), *options], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        sys.exit(f"data.py: the XTuner build under {python} failed: {why}")
    return json.loads(lines[-1])


def xtuner_repeat(python: str, tokenizer_dir: str, max_length: int, rows_path: str) -> dict:
    """One unpacked and one packed XTuner build of ``rows_path`` in a fresh process: its JSON record."""
    return xtuner_call(python, ["--rows", rows_path, "--tokenizer", tokenizer_dir, "--max-length", str(max_length),
                                "--repeats", "1", "--pack"])


def same_order(a: float, b: float) -> bool:
    return 0.5 <= a / b <= 2


def print_xtuner(records: list[dict], ratio: Callable[[str, str], str], xt_stats: dict, xt_bound_tokens: int) -> None:
    last = records[-1]
    packed = last["packed"]
    print(f"  xt vs XTuner process_hf_dataset: {ratio('xt', 'xtuner')}x faster   "
          f"(XTuner packed, pack_to_max_length=True: {ratio('xt', 'xtuner-packed')}x)")
    print(f"  XTuner speed / its tokenizer-only bound: {ratio('xtuner', 'xtuner-bound')}x; its bound "
          f"(tokenizers {last['versions']['tokenizers']}) vs ours ({version('tokenizers')}): "
          f"{ratio('bound', 'xtuner-bound')}x the time ({last['bound_tokens']} vs {xt_bound_tokens} tokens)")
    alike = same_order(last["samples"], xt_stats["samples"]) and same_order(last["tokens"], xt_stats["tokens"])
    print(f"  XTuner ({last['template']}): {last['samples']} samples, {last['tokens']} tokens; packed: "
          f"{packed['samples']} rows, {packed['tokens']} tokens; xt (default): {xt_stats['samples']} samples, "
          f"{xt_stats['tokens']} tokens; the templates' framing differs, so the counts differ "
          f"({'same' if alike else 'NOT the same'} order)")


def run_set(label: str, rows: list[dict], args, tokenizer, template, work: str,
            xtuner: Callable[[str], dict] | None = None) -> None:
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
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    last = {}
    records = []
    for _ in range(args.repeats):
        for name, fn in runs.items():
            last[name], seconds, cpu_seconds = timed(fn)
            times[name].append(seconds)
            cpu[name].append(cpu_seconds)
        if xtuner is not None:
            records.append(xtuner(path))
    if records:
        times.update({"xtuner": [r["build_s"] for r in records], "xtuner-packed": [r["packed"]["build_s"] for r in records],
                      "xtuner-bound": [r["bound_s"] for r in records]})
    assert last["cached"].stats["cached"] and last["naive"] == last["xt"].stats["samples"]
    stats = last["xt"].stats
    print(f"\n{label} rows: {len(rows)}, {stats['samples']} samples, {stats['tokens']} tokens "
          f"(tokenizer: {stats.get('encode_threads', '?')} thread(s) per process)")
    for name in times:
        print(f"  {name:13s} {spread(times[name], '{:.3f}'):>24s} s   "
              f"{spread([len(rows) / t for t in times[name]], '{:.0f}'):>24s} rows/s")

    def ratio(a: str, b: str) -> str:
        return spread([y / x for x, y in zip(times[a], times[b])])

    print(f"  xt speed / tokenizer-only bound: {ratio('xt', 'bound')}x   (2 processes: {ratio('xt-2proc', 'bound')}x)")
    print(f"  xt vs naive batched datasets.map: {ratio('xt', 'naive')}x faster")
    print(f"  cached vs uncached xt build: {ratio('cached', 'xt')}x faster")
    for name in ("bound", "xt"):
        print(f"  {name} CPU seconds: {spread([c[0] for c in cpu[name]])} in all threads, "
              f"{spread([c[1] for c in cpu[name]])} in the calling thread")
    if records:
        print_xtuner(records, ratio, stats, last["bound"])


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get("XT_SHARED", str(here.parent / "shared")))
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--xtuner-python", help=f"also time XTuner 0.2.0's build with this interpreter ({XTUNER_HOW})")
    args = parser.parse_args()
    shared = Path(args.shared)
    tokenizer_dir = str(shared / "tokenizers" / "llama2")
    xtuner, xtuner_note = None, f"XTuner not measured (for its figure: {XTUNER_HOW})"
    if args.xtuner_python:
        found = xtuner_call(args.xtuner_python, ["--versions"])
        xtuner = partial(xtuner_repeat, args.xtuner_python, tokenizer_dir, args.max_length)
        xtuner_note = f"XTuner {found['xtuner']} (" + ", ".join(
            f"{name} {found[name]}" for name in ("transformers", "tokenizers", "datasets", "torch")) + ")"

    from transformers import LlamaTokenizer
    from xt.plugins import get_registry

    base = json.loads((shared / "data" / "alpaca" / "alpaca_en_demo.json").read_text())
    tokenizer = LlamaTokenizer.from_pretrained(tokenizer_dir)
    template = get_registry().get("templates", "default")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, python {platform.python_version()}, load average {load}; "
          f"alpaca_en_demo ({len(base)} rows) x{args.copies}, Llama-2 tokenizer, template default, "
          f"max_length {args.max_length}, {args.repeats} interleaved repeats: median (min-max); "
          f"tokenizers {version('tokenizers')}; {xtuner_note}")
    with tempfile.TemporaryDirectory() as work:
        run_set("distinct", make_rows(base, args.copies, distinct=True), args, tokenizer, template, work, xtuner)
        run_set("repeated", make_rows(base, args.copies, distinct=False), args, tokenizer, template, work, xtuner)


if __name__ == "__main__":
    main()
