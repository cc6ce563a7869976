"""xt vs TRL's SFTTrainer on CPU: the same tiny model, samples, max length, batch and steps.

    python bench/peers.py [--steps 16] [--rounds 3] [--shared ../shared]

Needs TRL (``pip install -e '.[bench]'``, pinned in constraints.txt). The model, data and timing
are bench/train.py's: a small Llama from a config, the shared Alpaca demo rows templated by xt
(TRL gets the very same ``input_ids`` and ``labels``, pre-tokenized), ``max_length`` 512, full
fine-tuning in fp32, AdamW at lr 1e-4, one thread per process, throughput in real tokens per CPU
second over the steps after warm-up, interleaved rounds, median and range (min-max).

Pairs: xt packed (2 rows of 512, per-sample attention) vs TRL ``packing=True`` (best-fit
decreasing, padding-free: a batch of 2 packed rows flattened into one, stock sdpa); xt padded
(4 samples per batch, random order) vs TRL without packing (4 samples per batch, padded).
Also printed: each run's final training loss (the loss of its last step).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import bench_parser, interleaved, make_model, spread, train_values, xt_layout  # noqa: E402

RUNS = ("xt-packed", "trl-packed", "xt-padded", "trl-padded")
PAIRS = [("xt-packed", "trl-packed"), ("xt-padded", "trl-padded")]


def trl_samples(work: Path) -> list[dict]:
    """xt's own templated samples (unpacked, the cache xt trains from), as TRL's pre-tokenized rows."""
    from transformers import AutoTokenizer
    from xt.config import from_dict
    from xt.plugins import get_registry
    from xt.train.loop import build_data

    cfg = from_dict(train_values(work, "random", 1))
    registry = get_registry()
    data, _ = build_data(cfg, registry.get("datasets", cfg.dataset), registry.get("templates", cfg.template),
                         AutoTokenizer.from_pretrained(cfg.model), 0, 1)
    return [{"input_ids": data[i]["input_ids"], "labels": data[i]["labels"]} for i in range(len(data))]


def trl_run(work: Path, packed: bool, steps: int, warmup: int) -> tuple[int, float, float]:
    """(real tokens, CPU seconds after warm-up, final loss) of TRL's SFTTrainer."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    clock: list[float] = []
    tokens: list[int] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class CountingTrainer(SFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            tokens.append(int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *args, **kwargs)

    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(str(work / "model"))
    config = SFTConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=2 if packed else 4,
                       max_length=512, packing=packed, learning_rate=1e-4, lr_scheduler_type="constant",
                       max_steps=steps, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                       seed=42, dataloader_num_workers=0, disable_tqdm=True)
    trainer = CountingTrainer(model=model, args=config, train_dataset=Dataset.from_list(trl_samples(work)),
                              processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return sum(tokens[warmup:steps]), clock[steps - 1] - clock[warmup - 1], losses[-1]


def run_one(work: Path, name: str, steps: int, warmup: int) -> None:
    if name.startswith("trl"):
        tokens, cpu, loss = trl_run(work, name == "trl-packed", steps, warmup)
    else:
        layout = "packed" if name == "xt-packed" else "random"
        measured = xt_layout(work, layout, steps, warmup)
        tokens, cpu = measured["tokens"], measured["cpu_s"]
        records = [json.loads(x) for x in (work / f"run-{layout}" / "metrics.jsonl").read_text().splitlines()]
        loss = [r["loss"] for r in records if "loss" in r][-1]
    print("XT-BENCH " + json.dumps({"run": name, "tokens": tokens, "cpu_s": cpu, "loss": loss}))


def main() -> None:
    args = bench_parser(__doc__, rounds=3).parse_args()
    if args.child:
        run_one(Path(args.work), args.child, args.steps, args.warmup)
        return
    try:
        import trl
    except ImportError:
        sys.exit("bench/peers.py needs TRL: pip install -c constraints.txt -e '.[bench]'")
    data_file = Path(args.shared) / "data" / "alpaca" / "alpaca_en_demo.json"
    if not data_file.is_file():
        sys.exit(f"{data_file} not found; pass --shared PATH")
    print(f"TRL {trl.__version__}; {args.rounds} rounds, {args.steps} steps each ({args.warmup} warm-up), "
          f"one thread per process, real tokens per CPU-second")
    losses: dict[str, list[float]] = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_model(work / "model", Path(args.shared))
        (work / "data.json").write_text(data_file.read_text())
        speeds, ratios = interleaved(work, list(RUNS), list(PAIRS), args, __file__,
                                     lambda name, result: losses[name].append(result["loss"]), show_rounds=False)
    for name in RUNS:
        print(f"{name:11s} {spread(speeds[name], '{:.0f}'):>24s} tokens per CPU-second, "
              f"final loss {statistics.median(losses[name]):.3f}")
    for (a, b), values in ratios.items():
        print(f"{a} / {b}: {spread(values)}x")


if __name__ == "__main__":
    main()
