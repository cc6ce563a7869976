"""Training throughput on CPU: packed vs length-grouped vs random padded batches, and xt vs a bare loop.

    python bench/train.py [--steps 16] [--rounds 5] [--shared ../shared]

A small Llama built from a config (no download), the tiny-bpe tokenizer and the shared Alpaca demo
rows (``alpaca`` dataset with ``--data-files``), ``max_length`` 512, full fine-tuning. Each layout
runs in a fresh process with one thread (``OMP_NUM_THREADS=1``), and is timed in CPU seconds of
that process (``time.process_time`` per step, the loop's ``cpu_s``), so other jobs on the machine
change the numbers little. The layouts are run in interleaved rounds; every ratio is computed
within a round and reported as median and range (min-max) over the rounds. Throughput counts real
(non-pad) tokens per CPU second over the steps after ``--warmup``.

Layouts: ``packed`` (2 rows x 512, attention per sample), ``packed-dense`` (the same rows through
transformers' stock sdpa: one block-diagonal mask over the whole row), ``grouped`` (4 samples per
batch, length-grouped, padded), ``random`` (4 samples per batch in random order, padded), ``auto``
(``pack: auto``: the pipeline's own choice) and ``bare`` (the packed batches through a plain
PyTorch AdamW loop without DeepSpeed or xt's loop, to show the loop's overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))

LAYOUTS = {
    "packed": {"pack": True, "micro_batch_size": 2},
    "packed-dense": {"pack": True, "micro_batch_size": 2},
    "grouped": {"pack": False, "micro_batch_size": 4, "group_by_length": True},
    "random": {"pack": False, "micro_batch_size": 4},
    "auto": {"pack": "auto", "micro_batch_size": 2},
}
RATIOS = [("packed", "grouped"), ("packed", "random"), ("packed", "packed-dense"), ("auto", "grouped"),
          ("auto", "random"), ("packed", "bare")]


def make_model(folder: Path, shared: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(shared / "tokenizers" / "tiny-bpe" / "tokenizer.json"),
                                  bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    if tok.bos_token_id is None or tok.eos_token_id is None:  # fall back to the first ids
        tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    tok.pad_token = tok.eos_token
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def train_values(work: Path, layout: str, steps: int) -> dict:
    return dict(model=str(work / "model"), dataset="alpaca", data_files=[str(work / "data.json")], method="full",
                max_steps=steps, lr=1e-4, max_length=512, save_total_limit=0, output=str(work / f"run-{layout}"),
                data_cache_dir=str(work / "cache"), template="default", seed=42, **LAYOUTS[layout])


def xt_layout(work: Path, layout: str, steps: int, warmup: int) -> dict:
    """Real tokens, token slots (padding included) and CPU seconds of the xt loop's steps after warm-up,
    and the data layout it trained on."""
    from xt.config import from_dict
    from xt.train.loop import train

    if layout == "packed-dense":
        import xt.model.setup

        xt.model.setup.use_packed_sdpa = lambda model: False  # keep transformers' stock sdpa
    cfg = from_dict(train_values(work, layout, steps))
    run_dir = train(cfg, overwrite=True)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cpu = sum(r["cpu_s"] for r in records if "cpu_s" in r and r["step"] > warmup)
    counts, slots, costs, stats = replayed_tokens(cfg, per_sample=layout != "packed-dense")
    return {"tokens": sum(counts[warmup:steps]), "slots": sum(slots[warmup:steps]),
            "cost": sum(costs[warmup:steps]), "cpu_s": cpu, "choice": stats.get("layout")}


def replayed_tokens(cfg, per_sample: bool = True) -> tuple[list[int], list[int], list[float], dict]:
    """Real tokens, token slots (rows x the longest row: what the padded batch holds) and the cost model's
    price (``xt.data.layout.batch_cost``, this CPU's causal share) of each step, counted from the samples
    the loop's sampler handed out, and the data stats; the data come from the loop's own (cached) build."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from xt.data import ResumableBatchSampler
    from xt.data.layout import attention_weight, causal_share
    from xt.data.pipeline import choose_template
    from xt.plugins import get_registry
    from xt.train.loop import build_data

    registry = get_registry()
    dataset = registry.get("datasets", cfg.dataset)
    template = choose_template(None, dataset, cfg.template)
    weight = attention_weight(AutoModelForCausalLM.from_pretrained(cfg.model))
    data, _ = build_data(cfg, dataset, template, AutoTokenizer.from_pretrained(cfg.model), 0, 1,
                         weight if cfg.pack == "auto" else 0.0, causal_share=causal_share("cpu"))
    sampler = ResumableBatchSampler(data.lengths, cfg.micro_batch_size, seed=cfg.seed, shuffle=True,
                                    group_by_length=cfg.group_by_length and not data.stats["packed"])
    counts: list[int] = []
    slots: list[int] = []
    costs: list[float] = []
    for indices in sampler:
        counts.append(sum(int(data.lengths[i]) for i in indices))
        slots.append(len(indices) * max(int(data.lengths[i]) for i in indices))
        costs.append(priced(data, indices, weight, per_sample and data.stats["packed"]))
        if len(counts) == cfg.max_steps:
            break
    return counts, slots, costs, data.stats


def priced(data, indices: list[int], weight: float, per_sample: bool) -> float:
    """``xt.data.layout.batch_cost`` of one micro-batch (its rows' segment lengths, this CPU's causal share)."""
    from xt.data.layout import batch_cost, causal_share

    return batch_cost([data.segment_lengths(i) for i in indices], weight, causal_share("cpu"), per_sample)


def bare_layout(work: Path, steps: int, warmup: int) -> dict:
    """The packed batches through a plain PyTorch loop: same model set-up, data, sampler and optimizer."""
    import torch
    from xt.config import from_dict
    from xt.data import DataOptions, ResumableBatchSampler, build_dataset
    from xt.data.collate import make_default_collator
    from xt.data.layout import attention_weight
    from xt.model.setup import build_model
    from xt.plugins import get_registry

    cfg = from_dict(train_values(work, "packed", steps))
    registry = get_registry()
    torch.manual_seed(42)
    loaded = build_model(cfg, registry.resolve_model(cfg.model))
    model, tok = loaded.model, loaded.tokenizer
    data = build_dataset(registry.get("datasets", "alpaca"), registry.get("templates", "default"), tok,
                         DataOptions(data_files=cfg.data_files, max_length=512, cache_dir=cfg.data_cache_dir, seed=42))
    collate = make_default_collator(pad_token_id=tok.pad_token_id)
    sampler = ResumableBatchSampler(data.lengths, cfg.micro_batch_size, seed=42)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    weight = attention_weight(model)
    tokens, slots, cost, cpu = 0, 0, 0.0, 0.0
    for step, idx in enumerate(sampler, start=1):
        if step > steps:
            break
        started = time.process_time()
        batch = collate([data[i] for i in idx])
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        logits = out.logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                 batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step > warmup:
            tokens += sum(int(data.lengths[i]) for i in idx)
            cpu += time.process_time() - started
            slots += batch["input_ids"].numel()
            cost += priced(data, idx, weight, per_sample=True)
    return {"tokens": tokens, "slots": slots, "cost": cost, "cpu_s": cpu, "choice": "packed"}


def causal_timing(length: int = 512, repeats: int = 20) -> str:
    """One line: CPU seconds of sdpa forward and backward on one sample, causal vs unmasked, one thread."""
    import torch
    from xt.data.layout import causal_share

    torch.set_num_threads(1)
    q, k, v = (torch.randn(1, heads, length, 32, requires_grad=True) for heads in (4, 2, 2))

    def seconds(causal: bool) -> float:
        times = []
        for _ in range(repeats):
            started = time.process_time()
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True).sum().backward()
            times.append(time.process_time() - started)
        return statistics.median(times[2:])

    causal, full = seconds(True), seconds(False)
    return (f"sdpa on this CPU, one sample of {length} tokens, forward and backward, one thread: causal "
            f"{causal * 1e3:.2f} ms, unmasked {full * 1e3:.2f} ms ({causal / full:.2f}x): the cost model counts "
            f"causal attention here as the whole square (causal share {causal_share('cpu')})")


def run_one(work: Path, layout: str, steps: int, warmup: int) -> None:
    """Child process: measure one layout and print its JSON line."""
    measured = bare_layout(work, steps, warmup) if layout == "bare" else xt_layout(work, layout, steps, warmup)
    print("XT-BENCH " + json.dumps({"layout": layout, **measured}))


def measure(work: Path, layout: str, steps: int, warmup: int, script: str = __file__) -> dict:
    """Run ``script --child LAYOUT`` in a fresh single-threaded process and return its JSON line."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, script, "--child", layout, "--work", str(work), "--steps", str(steps),
                           "--warmup", str(warmup)], env=env, capture_output=True, text=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("XT-BENCH ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{layout} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("XT-BENCH "):])


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def bench_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    """The options every timing script takes (and the hidden ones of its child processes)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--shared", default=os.environ.get("XT_SHARED", str(ROOT.parent / "shared")))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser


def interleaved(work: Path, names: list[str], ratios: list[tuple[str, str]], args: argparse.Namespace, script: str,
                on_result: Callable[[str, dict], None] | None = None, show_rounds: bool = True) -> tuple[dict, dict]:
    """``args.rounds`` rounds of one fresh process per name; (tokens per CPU-second per name, the ``ratios``
    taken within each round). ``on_result(name, result)`` sees every child's JSON line."""
    speeds: dict[str, list[float]] = {name: [] for name in names}
    values: dict[tuple[str, str], list[float]] = {pair: [] for pair in ratios}
    for round_number in range(1, args.rounds + 1):
        round_speed = {}
        for name in names:
            result = measure(work, name, args.steps, args.warmup, script=script)
            round_speed[name] = result["tokens"] / result["cpu_s"]
            speeds[name].append(round_speed[name])
            if on_result is not None:
                on_result(name, result)
        for a, b in values:
            values[(a, b)].append(round_speed[a] / round_speed[b])
        if show_rounds:
            print(f"round {round_number}: " + ", ".join(f"{a}/{b} {v[-1]:.2f}x" for (a, b), v in values.items()),
                  flush=True)
    return speeds, values


def main() -> None:
    parser = bench_parser(__doc__, rounds=5)
    parser.add_argument("--layouts", default="packed,packed-dense,grouped,random,auto,bare")
    args = parser.parse_args()
    if args.child:
        run_one(Path(args.work), args.child, args.steps, args.warmup)
        return
    data_file = Path(args.shared) / "data" / "alpaca" / "alpaca_en_demo.json"
    if not data_file.is_file():
        sys.exit(f"{data_file} not found; pass --shared PATH")
    layouts = args.layouts.split(",")
    choices = set()
    padding: dict[str, list[float]] = {layout: [] for layout in layouts}
    price: dict[str, list[float]] = {layout: [] for layout in layouts}  # the cost model's, per real token

    def note_choice(layout: str, result: dict) -> None:
        if layout == "auto" and result.get("choice"):
            choices.add(result["choice"])
        padding[layout].append(1 - result["tokens"] / result["slots"])
        price[layout].append(result["cost"] / result["tokens"])

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPU cores, load average {load}; {args.rounds} rounds x {len(layouts)} layouts, "
          f"{args.steps} steps each ({args.warmup} warm-up), one thread per process, CPU-time throughput")
    print(causal_timing())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_model(work / "model", Path(args.shared))
        (work / "data.json").write_text(data_file.read_text())
        speeds, ratios = interleaved(work, layouts, [pair for pair in RATIOS if set(pair) <= set(layouts)], args,
                                     __file__, note_choice)
    for layout in layouts:
        note = f"  (chose: {', '.join(sorted(choices))})" if layout == "auto" and choices else ""
        print(f"{layout:13s} {spread(speeds[layout], '{:.0f}'):>24s} tokens per CPU-second, "
              f"{statistics.median(padding[layout]):5.1%} of token slots padding{note}")
    for (a, b), values in ratios.items():
        ceiling = (1 - statistics.median(padding[a])) / (1 - statistics.median(padding[b]))
        modelled = statistics.median(price[b]) / statistics.median(price[a])
        print(f"{a} / {b}: {spread(values)}x   (removing the padding alone: {ceiling:.2f}x; "
              f"the cost model: {modelled:.2f}x)")


if __name__ == "__main__":
    main()
