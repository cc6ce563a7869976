"""Training throughput on CPU: the xt loop vs a bare PyTorch loop, and packed vs padded batches.

    python bench/train.py [--steps 12] [--shared ../shared]

Uses a small Llama built from a config (no download), the tiny-bpe tokenizer and the shared
Alpaca demo rows (``alpaca`` dataset with ``--data-files``). Prints tokens/s (real, non-pad tokens)
for: (1) ``xt.train.loop.train`` and a bare ``torch.optim.AdamW`` loop over the same batches;
(2) the xt loop with packing on and off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "torch_extensions"))

ROOT = Path(__file__).resolve().parents[1]


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


def xt_run(out: Path, model_dir: Path, data_file: Path, steps: int, **overrides) -> float:
    """Median tokens/s of the xt loop (first two steps skipped as warm-up)."""
    from xt.config import from_dict
    from xt.train.loop import train

    values = dict(model=str(model_dir), dataset="alpaca", data_files=[str(data_file)], method="full",
                  max_steps=steps, lr=1e-4, max_length=512, micro_batch_size=2, save_total_limit=0,
                  output=str(out), data_cache_dir=str(out.parent / "cache"), template="default")
    values.update(overrides)
    run_dir = train(from_dict(values), overwrite=True)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > 2)


def bare_run(model_dir: Path, data_file: Path, steps: int, cache: Path) -> float:
    """The same model, data, batches and optimizer without DeepSpeed or any xt loop code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from xt.data import DataOptions, ResumableBatchSampler, build_dataset
    from xt.data.collate import make_default_collator
    from xt.plugins import get_registry

    registry = get_registry()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    data = build_dataset(registry.get("datasets", "alpaca"), registry.get("templates", "default"), tok,
                         DataOptions(data_files=[str(data_file)], max_length=512, cache_dir=str(cache), seed=42))
    collate = make_default_collator(pad_token_id=tok.pad_token_id)
    sampler = ResumableBatchSampler(data.lengths, 2, seed=42)
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="sdpa")
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    speeds = []
    for step, idx in enumerate(sampler, start=1):
        if step > steps:
            break
        t0 = time.perf_counter()
        batch = collate([data[i] for i in idx])
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                    attention_mask=batch.get("attention_mask"), use_cache=False)
        logits = out.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step > 2:
            speeds.append(batch["input_ids"].numel() / (time.perf_counter() - t0))
    return statistics.median(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--shared", default=os.environ.get("XT_SHARED", str(ROOT.parent / "shared")))
    args = parser.parse_args()
    shared = Path(args.shared)
    data_file = shared / "data" / "alpaca" / "alpaca_en_demo.json"
    if not data_file.is_file():
        sys.exit(f"{data_file} not found; pass --shared PATH")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_model(tmp / "model", shared)
        xt_packed = xt_run(tmp / "packed", model_dir, data_file, args.steps)
        bare = bare_run(model_dir, data_file, args.steps, tmp / "cache")
        xt_padded = xt_run(tmp / "padded", model_dir, data_file, args.steps, pack=False, micro_batch_size=4)
    print(f"xt loop (packed, 2 x 512):      {xt_packed:9.0f} tokens/s")
    print(f"bare PyTorch loop (same):       {bare:9.0f} tokens/s   xt overhead {100 * (1 - xt_packed / bare):+.1f}%")
    print(f"xt loop (padded, 4 rows/batch): {xt_padded:9.0f} tokens/s   packed/padded {xt_packed / xt_padded:.2f}x")


if __name__ == "__main__":
    main()
