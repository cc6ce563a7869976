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

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import bench_parser, interleaved, make_model, spread  # noqa: E402
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
    args = bench_parser(__doc__, rounds=5).parse_args()
    if args.child:
        run_one(Path(args.work), args.child, args.steps, args.warmup)
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPU cores, load average {load}; {args.rounds} rounds x {len(OBJECTIVES)} objectives, "
          f"{args.steps} steps each ({args.warmup} warm-up), one thread per process, CPU-time throughput")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_model(work / "model", Path(args.shared))
        speeds, ratios = interleaved(work, list(OBJECTIVES), list(RATIOS), args, __file__)
    for objective in OBJECTIVES:
        print(f"{objective:5s} {spread(speeds[objective], '{:.0f}'):>24s} tokens per CPU-second")
    for (a, b), values in ratios.items():
        print(f"{a} / {b}: {spread(values)}x")


if __name__ == "__main__":
    main()
