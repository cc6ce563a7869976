"""GPU throughput of xt's model set-up: bf16 LoRA and QLoRA steps on a ~1B Llama-shape model.

    python bench/gpu.py [--steps 10] [--seq 2048] [--batch 4] [--attn sdpa,flash_attention_2]

Builds the model from a config (random weights, nothing downloaded), sets it up exactly as
``xt train`` does (``xt.model.setup.build_model``: LoRA on all linear layers, QLoRA nf4 + double
quant + bf16 compute), runs forward/backward/AdamW steps and prints tokens/s and model-FLOPs
utilisation: MFU = 6 * N * tokens/s / peak, N = parameters of the base model. Peak bf16 dense
FLOP/s come from the table below by GPU name, or from ``XT_PEAK_TFLOPS``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}


def peak_tflops(name: str) -> float | None:
    if os.environ.get("XT_PEAK_TFLOPS"):
        return float(os.environ["XT_PEAK_TFLOPS"])
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def save_model(folder: Path) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from xt.tokenizers import tiny_tokenizer

    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)  # TinyLlama-1.1B shape
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(folder))
    tiny_tokenizer().save_pretrained(str(folder))
    del model
    torch.cuda.empty_cache()
    return n_params


def bench(model_dir: Path, method: str, attn: str, steps: int, batch: int, seq: int, n_params: int) -> str:
    import torch
    from xt.config import from_dict
    from xt.model.setup import build_model
    from xt.plugins import get_registry

    cfg = from_dict({"model": str(model_dir), "dataset": "none", "method": method, "dtype": "bf16", "attn": attn,
                     "gradient_checkpointing": True, "lora_r": 16, "lora_alpha": 32})
    loaded = build_model(cfg, get_registry().resolve_model(str(model_dir)))
    model = loaded.model.cuda() if method == "lora" else loaded.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 32000, (batch, seq), device="cuda")
    torch.cuda.synchronize()
    times = []
    for step in range(steps + 2):
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    tok_s = batch * seq / (sum(times) / len(times))
    peak = peak_tflops(torch.cuda.get_device_name())
    mfu = f"{100 * 6 * n_params * tok_s / (peak * 1e12):.1f}%" if peak else "n/a (set XT_PEAK_TFLOPS)"
    mem = torch.cuda.max_memory_allocated() / 2**30
    del model, opt, loaded
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return f"{method:6s} {attn:18s} {tok_s:10.0f} tokens/s  MFU {mfu:>8s}  peak mem {mem:5.1f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--attn", default="sdpa,flash_attention_2")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU; none is visible here (torch.cuda.is_available() is False).")
    from xt.model.loading import flash_attn_available

    attns = [a for a in args.attn.split(",") if a != "flash_attention_2" or flash_attn_available()]
    print(f"device: {torch.cuda.get_device_name()}, peak bf16 {peak_tflops(torch.cuda.get_device_name())} TFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        n_params = save_model(Path(tmp))
        print(f"model: Llama {n_params / 1e9:.2f}B params, batch {args.batch} x {args.seq} tokens, "
              f"gradient checkpointing on")
        for method in ("lora", "qlora"):
            for attn in attns:
                print(bench(Path(tmp), method, attn, args.steps, args.batch, args.seq, n_params), flush=True)
    if "flash_attention_2" in args.attn and "flash_attention_2" not in attns:
        print("flash-attn is not installed: flash_attention_2 rows skipped")


if __name__ == "__main__":
    main()
