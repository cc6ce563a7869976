"""Preference objectives' training throughput vs SFT on the same token sequences (CPU).

    python bench/preference.py [--steps 16] [--rounds 5] [--shared ../shared]

The rows are xt-preference's ``preference-demo`` pairs. ``dpo`` and ``orpo`` train on them as pairs
(prompt + chosen, prompt + rejected, packed whole); ``sft`` trains on the same two conversations of
every pair as separate samples (a dataset registered here), so all three see the same tokens. DPO
adds a forward pass of its reference model (full training: a frozen copy) without gradients; ORPO
has no reference. The model is bench/train.py's small Llama (from a config, the tiny-bpe tokenizer),
full fine-tuning, packed rows of 512 tokens (DPO/ORPO: ``max_length`` 256 per sequence, a pair row
holding up to 512; SFT: ``max_length`` 512), 2 rows per step.

Timing is bench/train.py's: each run in a fresh single-threaded process, CPU seconds of the steps
after ``--warmup`` (the loop's ``cpu_s``), tokens as the loop's ``tokens`` counts them (the tokens of
the rows each micro-batch was collated from, padding excluded); the objectives are
run in interleaved rounds and every ratio is taken within a round, reported as median (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import ROOT, make_model, measure, spread  # noqa: E402
from xt.api import DatasetSpec, hookimpl  # noqa: E402

OBJECTIVES = ("sft", "dpo", "orpo")
RATIOS = (("dpo", "sft"), ("orpo", "sft"), ("dpo", "orpo"))
SFT_DATASET = "preference-demo-as-sft"


def sft_rows(split: str = "train", seed: int = 42) -> list[dict]:
    """Every pair of preference-demo as its two conversations (prompt + chosen, prompt + rejected)."""
    from xt_preference import demo

    return [{"prompt": row["prompt"], "reply": row[key]} for row in demo.generate_rows(split, seed)
            for key in ("chosen", "rejected")]


def sft_conversation(row: dict) -> dict:
    return {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["reply"]}]}


class SftPlugin:
    """Registers the SFT view of preference-demo."""

    @hookimpl
    def dataset_map(register):
        register(DatasetSpec(name=SFT_DATASET, map_row=sft_conversation, generate=sft_rows, splits=("train",)))


def run_one(work: Path, objective: str, steps: int, warmup: int) -> None:
    """Child process: train ``objective`` and print its tokens and CPU seconds after warm-up."""
    from xt.config import from_dict
    from xt.plugins import get_plugin_manager
    from xt.train.loop import train

    get_plugin_manager().register(SftPlugin, name="bench-preference")
    pairs = objective != "sft"
    values = dict(model=str(work / "model"), dataset="preference-demo" if pairs else SFT_DATASET,
                  objective=objective, method="full", max_steps=steps, lr=1e-4, pack=True,
                  max_length=256 if pairs else 512, micro_batch_size=2, save_total_limit=0, template="default",
                  output=str(work / f"run-{objective}"), data_cache_dir=str(work / "cache"), seed=42, report_to=[])
    run_dir = train(from_dict(values), overwrite=True)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    late = [r for r in records if "cpu_s" in r and r["step"] > warmup]
    print("XT-BENCH " + json.dumps({"objective": objective, "tokens": sum(r["tokens"] for r in late),
                                    "cpu_s": sum(r["cpu_s"] for r in late)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shared", default=os.environ.get("XT_SHARED", str(ROOT.parent / "shared")))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(Path(args.work), args.child, args.steps, args.warmup)
        return
    speeds: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in RATIOS}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPU cores, load average {load}; {args.rounds} rounds x {len(OBJECTIVES)} objectives, "
          f"{args.steps} steps each ({args.warmup} warm-up), one thread per process, CPU-time throughput")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_model(work / "model", Path(args.shared))
        for _ in range(args.rounds):
            round_speed = {}
            for objective in OBJECTIVES:
                result = measure(work, objective, args.steps, args.warmup, script=__file__)
                round_speed[objective] = result["tokens"] / result["cpu_s"]
                speeds[objective].append(round_speed[objective])
            for a, b in RATIOS:
                ratios[(a, b)].append(round_speed[a] / round_speed[b])
            print(f"round {len(speeds['sft'])}: " + ", ".join(f"{a}/{b} {values[-1]:.2f}x"
                                                             for (a, b), values in ratios.items()), flush=True)
    for objective in OBJECTIVES:
        print(f"{objective:5s} {spread(speeds[objective], '{:.0f}'):>24s} tokens per CPU-second")
    for (a, b), values in ratios.items():
        print(f"{a} / {b}: {spread(values)}x")


if __name__ == "__main__":
    main()
