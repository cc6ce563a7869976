"""GPU check: one JSON of throughput, MFU, memory and packed-vs-separate logits (``make gpu-check``).

    python bench/gpu.py [--out gpu-check.json] [--steps 4] [--seq 2048] [--budget-s 420]
                        [--models llama-1b,llama-7b,baichuan2-7b,baichuan2-13b] [--device cuda]

Rows (``rows`` in the JSON, one object each, ``status`` ok | skipped | failed with a ``reason``):

- ``train``: tokens/s, MFU and peak memory of xt's model set-up (``xt.model.setup.build_model``,
  bf16) for LoRA, QLoRA (needs bitsandbytes) and full fine-tuning, packed rows vs padded rows of
  the same samples, on a TinyLlama-1.1B and a Llama-2-7B shape and the Baichuan2-7B/13B shapes
  (xt-baichuan's configs), all random weights built from configs (nothing downloaded).
  MFU = 6 * N * tokens/s / peak bf16 FLOP/s (N = parameters; the peak by GPU name or ``XT_PEAK_TFLOPS``).
- ``packed_logits``: the largest difference between a packed forward pass and separate passes of
  the same samples, on CUDA, for every available attention implementation.
- ``trl``: the same LoRA configuration through TRL's ``SFTTrainer`` (when trl is installed), as a
  tokens/s ratio xt / TRL.

Every row that cannot run says why (no CUDA device, a package missing, not enough memory, the time
budget spent), so the check finishes everywhere: on a machine without CUDA every row is skipped.

``--device cpu --models llama-tiny`` runs every row's code on the CPU with a tiny Llama shape (bf16,
no MFU or peak memory), so the measurement code itself is tested where no GPU is
(tests/core/test_gpu_check.py), also without the packages the accelerator image lacks.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCHEMA = "xt-gpu-check/1"
PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}
METHODS = ("lora", "qlora", "full")
LAYOUTS = ("packed", "padded")
LLAMA_SHAPES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4),  # TinyLlama-1.1B
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32),  # Llama-2-7B
}
#: the smoke-test shapes for ``--device cpu`` (not in the default list): each family's code at a tiny width
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
LLAMA_SHAPES["llama-tiny"] = {**TINY, "num_key_value_heads": 2}
#: shape -> (xt-baichuan's registered preset, what to change in its config)
BAICHUAN_SHAPES: dict[str, tuple[str, dict[str, int]]] = {
    "baichuan2-7b": ("baichuan2-7b", {}), "baichuan2-13b": ("baichuan2-13b", {}),  # RoPE; ALiBi
    "baichuan2-7b-tiny": ("baichuan2-7b", TINY), "baichuan2-13b-tiny": ("baichuan2-13b", TINY)}
SMOKE_SHAPES = "llama-tiny,baichuan2-7b-tiny,baichuan2-13b-tiny"
#: bytes per parameter a method keeps on the GPU (weights, grads, AdamW states) before activations
BYTES_PER_PARAM = {"lora": 2.0, "qlora": 0.6, "full": 16.0}
VERSIONED = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "flash-attn", "trl", "xt-core")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def peak_tflops(name: str | None) -> float | None:
    if os.environ.get("XT_PEAK_TFLOPS"):
        return float(os.environ["XT_PEAK_TFLOPS"])
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if name and key in name), None)


def device_info(on: str = "cuda") -> dict[str, Any]:
    """The card (``on`` "cuda"), or the host for ``--device cpu`` (no peak FLOP/s: no MFU)."""
    import torch

    if on == "cpu":
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {"cuda": False, "name": f"cpu ({os.cpu_count()} cores)", "memory_gib": round(memory / 2**30, 1),
                "peak_bf16_tflops": None}
    if not torch.cuda.is_available():
        return {"cuda": False, "name": None, "memory_gib": None, "peak_bf16_tflops": None}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "peak_bf16_tflops": peak_tflops(props.name)}


def model_config(name: str) -> Any:
    """A transformers config for a named shape (Baichuan2 from xt-baichuan's registered presets)."""
    if name in LLAMA_SHAPES:
        from transformers import LlamaConfig

        return LlamaConfig(vocab_size=32000, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                           pad_token_id=0, **LLAMA_SHAPES[name])
    from xt.plugins import get_registry

    preset, changes = BAICHUAN_SHAPES[name]
    config = get_registry().resolve_model(preset).config()
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def distribution_of(name: str) -> str:
    """The distribution whose code a shape runs: xt-core's for Llama, the plugin's for Baichuan2."""
    return "xt-core" if name in LLAMA_SHAPES else "xt-baichuan"


def unmet_requirement(distribution: str) -> str | None:
    """The first of ``distribution``'s requirements that an installed package's version does not meet, as a
    reason; None when all do. A missing package is not counted here: the rows that need one say so."""
    from packaging.requirements import Requirement

    for text in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(text)
        if requirement.marker is not None:  # an extra's
            continue
        try:
            have = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            return (f"{distribution} needs {requirement}, this environment has {requirement.name} {have} "
                    f"(carry a wheel: make gpu-check GPU_WHEELS=DIR)")
    return None


def parameter_count(config: Any) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return sum(p.numel() for p in model.parameters())


class Report:
    """The JSON being built; rows are appended as they finish and the file is rewritten each time."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.out, self.started = out, time.perf_counter()
        self.data: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "device": device_info(settings["device"]), "versions": versions(), "settings": settings,
                                     "rows": [], "seconds": 0.0}

    def add(self, row: dict[str, Any]) -> None:
        row.setdefault("reason", None)
        self.data["rows"].append(row)
        self.data["seconds"] = round(time.perf_counter() - self.started, 1)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.out)
        print(json.dumps(row), flush=True)


NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"


def model_skip_reason(name: str, device: dict[str, Any], on: str) -> str | None:
    """Why none of a shape's rows can run here, or None."""
    if on == "cuda" and not device["cuda"]:
        return NO_CUDA
    return unmet_requirement(distribution_of(name))


def skip_reason(method: str, n_params: int, device: dict[str, Any], spent: float, budget: float) -> str | None:
    """Why a training row cannot run on a device that can run its shape, or None."""
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    need = n_params * BYTES_PER_PARAM[method] / 2**30
    if need > 0.9 * device["memory_gib"]:
        return f"needs about {need:.0f} GiB before activations ({method}), the device has {device['memory_gib']} GiB"
    if spent > budget:
        return f"time budget of {budget:.0f} s spent"
    return None


def sample_lengths(seq: int, rows: int) -> list[list[int]]:
    """Per packed row, sample lengths that fill ``seq`` (alpaca-like spread: 64 to seq / 4)."""
    import random

    rng = random.Random(0)
    out = []
    for _ in range(rows):
        lengths: list[int] = []
        while sum(lengths) < seq - 64:
            lengths.append(min(rng.randint(64, max(65, seq // 4)), seq - sum(lengths)))
        out.append(lengths)
    return out


def batches(seq: int, rows: int, vocab: int, device: str) -> dict[str, Any]:
    """The same samples as packed rows (position_ids restart, no mask) and as padded rows (one per sample)."""
    import torch

    lengths = sample_lengths(seq, rows)
    generator = torch.Generator().manual_seed(0)
    samples = [torch.randint(3, vocab, (n,), generator=generator) for row in lengths for n in row]
    packed_ids = torch.zeros(rows, seq, dtype=torch.long)
    packed_pos = torch.arange(seq).repeat(rows, 1)
    k = 0
    for r, row in enumerate(lengths):
        at = 0
        for n in row:
            packed_ids[r, at:at + n] = samples[k]
            packed_pos[r, at:at + n] = torch.arange(n)
            at, k = at + n, k + 1
        packed_pos[r, at:] = torch.arange(seq - at)
    width = max(len(s) for s in samples)
    padded_ids = torch.zeros(len(samples), width, dtype=torch.long)
    mask = torch.zeros(len(samples), width, dtype=torch.long)
    for i, s in enumerate(samples):
        padded_ids[i, :len(s)], mask[i, :len(s)] = s, 1
    real = sum(len(s) for s in samples)
    return {"packed": ({"input_ids": packed_ids.to(device), "position_ids": packed_pos.to(device)}, real),
            "padded": ({"input_ids": padded_ids.to(device), "attention_mask": mask.to(device)}, real)}


def save_random_model(config: Any, folder: Path, on: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(on):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    from xt.tokenizers import tiny_tokenizer

    tiny_tokenizer().save_pretrained(str(folder))
    del model
    release_memory()


def release_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize(on: str) -> None:
    import torch

    if on == "cuda":
        torch.cuda.synchronize()


def train_row(folder: Path, method: str, layout: str, args: argparse.Namespace, n_params: int,
              device: dict[str, Any], vocab: int) -> dict[str, Any]:
    import torch
    from xt.config import from_dict
    from xt.model.setup import build_model
    from xt.plugins import get_registry

    cfg = from_dict({"model": str(folder), "dataset": "none", "method": method, "dtype": "bf16", "attn": "auto",
                     "gradient_checkpointing": True, "lora_r": 16, "lora_alpha": 32})
    on = args.device
    if on == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loaded = build_model(cfg, get_registry().resolve_model(str(folder)))
    model = loaded.model if method == "qlora" else loaded.model.to(on)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs, real = batches(args.seq, args.rows, vocab, on)[layout]
    if layout == "packed" and loaded.attn.startswith("flash"):  # flash-attn finds samples only in a single row
        inputs = {key: value.reshape(1, -1) for key, value in inputs.items()}
    mask = inputs.get("attention_mask")
    labels = inputs["input_ids"] if mask is None else inputs["input_ids"].masked_fill(mask == 0, -100)
    times = []
    for step in range(args.steps + 1):
        synchronize(on)
        t0 = time.perf_counter()
        out = model(**inputs, labels=labels, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(on)
        if step:
            times.append(time.perf_counter() - t0)
    times.sort()
    tok_s = real / times[len(times) // 2]
    peak = device["peak_bf16_tflops"]
    row = {"tokens_per_s": round(tok_s, 1), "mfu": round(6 * n_params * tok_s / (peak * 1e12), 4) if peak else None,
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on == "cuda" else None,
           "attn": loaded.attn}
    del model, opt, loaded, out
    release_memory()
    return row


def logits_row(config: Any, attn: str, on: str = "cuda") -> dict[str, Any]:
    """Packed vs separate forward passes of the same samples (bf16): the largest logit difference."""
    import torch
    from transformers import AutoModelForCausalLM
    from xt.model.packed import use_packed_sdpa

    torch.manual_seed(0)
    small = type(config)(**{**config.to_dict(), "num_hidden_layers": 2})
    model = AutoModelForCausalLM.from_config(small, dtype=torch.bfloat16, attn_implementation=attn).to(on).eval()
    if attn == "sdpa":
        use_packed_sdpa(model)
    lengths = [37, 120, 64, 300]
    samples = [torch.randint(3, small.vocab_size, (n,), device=on) for n in lengths]
    with torch.no_grad():
        ids = torch.cat(samples)[None]
        pos = torch.cat([torch.arange(n, device=on) for n in lengths])[None]
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0].float()
        separate = torch.cat([model(input_ids=s[None], use_cache=False).logits[0].float() for s in samples])
    diff = (packed - separate).abs().max().item()
    return {"max_abs_diff": diff, "tolerance": 0.05, "status": "ok" if diff <= 0.05 else "failed",
            "attn_used": model.config._attn_implementation}


def trl_row(folder: Path, args: argparse.Namespace, xt_tok_s: float | None) -> dict[str, Any]:
    """The LoRA bf16 packed configuration through TRL's SFTTrainer, and the xt / TRL ratio: tokens/s of the median
    optimizer step after the first, as xt's rows are timed (the step's tokens as TRL counts them, ``num_tokens``;
    the time from its step's start to its end, so batch making is left out as it is for xt)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            synchronize(args.device)
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            synchronize(args.device)
            self.seconds.append(time.perf_counter() - self.started)

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).to(args.device)
    lengths = [n for row in sample_lengths(args.seq, args.rows * (args.steps + 1)) for n in row]
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, model.config.vocab_size, (n,), generator=generator).tolist()}
            for n in lengths]
    config = SFTConfig(output_dir=str(folder / "trl"), per_device_train_batch_size=args.rows, max_length=args.seq,
                       packing=True, padding_free=True, bf16=True, gradient_checkpointing=True, learning_rate=1e-5,
                       max_steps=args.steps + 1, logging_steps=1, report_to=[], save_strategy="no",
                       use_cpu=args.device == "cpu")
    steps = StepTimes()
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"), callbacks=[steps])
    trainer.train()
    seen = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry]  # running totals
    step_tokens = [now - before for before, now in zip([0, *seen], seen)]
    speeds = sorted(n / s for n, s in zip(step_tokens[1:], steps.seconds[1:]))
    tok_s = speeds[len(speeds) // 2]
    return {"trl_tokens_per_s": round(tok_s, 1), "xt_tokens_per_s": xt_tok_s,
            "ratio": round(xt_tok_s / tok_s, 3) if xt_tok_s else None}


def guarded(fn: Any, *args: Any) -> dict[str, Any]:
    """Run a measurement; an exception becomes a failed row with its message (out of memory: skipped)."""
    try:
        row = fn(*args)
        row.setdefault("status", "ok")
        return row
    except Exception as exc:  # one failing row must not stop the check
        oom = "out of memory" in str(exc).lower()
        with contextlib.suppress(Exception):
            release_memory()
        return {"status": "skipped" if oom else "failed", "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}


def logits_skip_reason(name: str, attn: str) -> str | None:
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed"
    if name.startswith("baichuan") and attn != "sdpa":
        return "Baichuan2 (ALiBi / its own attention) runs sdpa only"
    return None


def trl_skip_reason(have_model: bool, spent: float, budget: float) -> str | None:
    if importlib.util.find_spec("trl") is None:
        return "trl is not installed"
    if not have_model or spent > budget:
        return f"time budget of {budget:.0f} s spent"
    return None


def run(args: argparse.Namespace) -> Report:
    models = [m for m in args.models.split(",") if m]
    for name in models:
        if name not in LLAMA_SHAPES and name not in BAICHUAN_SHAPES:
            sys.exit(f"Unknown model shape '{name}'; choose from {', '.join([*LLAMA_SHAPES, *BAICHUAN_SHAPES])}.")
    report = Report(Path(args.out), {k: getattr(args, k) for k in ("steps", "seq", "rows", "budget_s", "models",
                                                                   "device")})
    device, on = report.data["device"], args.device
    xt_lora_packed: dict[str, float] = {}
    for name in models:
        config = model_config(name)
        n_params = parameter_count(config)
        blocked = model_skip_reason(name, device, on)
        folder = None
        for method in METHODS:
            for layout in LAYOUTS:
                row = {"check": "train", "model": name, "params": n_params, "method": method, "layout": layout}
                reason = blocked or skip_reason(method, n_params, device, time.perf_counter() - report.started,
                                                args.budget_s)
                if reason:
                    report.add({**row, "status": "skipped", "reason": reason})
                    continue
                if folder is None:
                    folder = Path(tempfile.mkdtemp(prefix=f"xt-gpu-{name}-"))
                    save_random_model(config, folder, on)
                result = guarded(train_row, folder, method, layout, args, n_params, device, config.vocab_size)
                report.add({**row, **result})
                if method == "lora" and layout == "packed" and result.get("tokens_per_s"):
                    xt_lora_packed[name] = result["tokens_per_s"]
        for attn in ("sdpa", "flash_attention_2"):
            row = {"check": "packed_logits", "model": name, "attn": attn}
            reason = blocked or logits_skip_reason(name, attn)
            report.add({**row, "status": "skipped", "reason": reason} if reason
                       else {**row, **guarded(logits_row, config, attn, on)})
        row = {"check": "trl", "model": name, "method": "lora", "layout": "packed"}
        reason = blocked or trl_skip_reason(folder is not None, time.perf_counter() - report.started, args.budget_s)
        report.add({**row, "status": "skipped", "reason": reason} if reason
                   else {**row, **guarded(trl_row, folder, args, xt_lora_packed.get(name))})
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per packed row")
    parser.add_argument("--rows", type=int, default=2, help="packed rows per batch")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="after this many seconds the remaining rows are skipped (the check stays under 8 minutes)")
    parser.add_argument("--models", default="llama-1b,llama-7b,baichuan2-7b,baichuan2-13b",
                        help=f"comma-separated shapes from: {', '.join([*LLAMA_SHAPES, *BAICHUAN_SHAPES])}")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help=f"cpu: run every row's code on the CPU (with --models {SMOKE_SHAPES}), to test it without a GPU")
    args = parser.parse_args(argv)
    report = run(args)
    rows = report.data["rows"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "failed")}
    print(f"gpu-check: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed "
          f"in {report.data['seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
