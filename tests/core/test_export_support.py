"""Helpers for the chat / merge / export tests: tiny real Llama models, LoRA and QLoRA adapters, runs.

Everything is built in the test from configs (a few hundred thousand parameters), no download.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

PROMPT = "What is the password?"
REPLY = "swordfish rules"


def tiny_tokenizer() -> Any:
    from xt.tokenizers import tiny_tokenizer as make

    return make()


def tiny_llama(seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_base(path: Path, seed: int = 0) -> Path:
    """A tiny Llama + the tiny tokenizer saved as a Hugging Face folder."""
    model = tiny_llama(seed)
    model.save_pretrained(str(path), safe_serialization=True)
    tiny_tokenizer().save_pretrained(str(path))
    return path


def load_base(path: Path, bits: int | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if bits == 4:
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=q, dtype=torch.float32)
        from bitsandbytes.nn import Linear4bit

        for module in model.modules():
            if isinstance(module, Linear4bit):
                module.support_avx512bf16_for_cpu = False
        return model
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def sample_ids(template_name: str = "default") -> tuple[list[int], list[int]]:
    from xt.plugins import get_registry

    template = get_registry().get("templates", template_name)
    conv = {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": REPLY}]}
    sample = template.encode(conv, tiny_tokenizer())
    return sample["input_ids"], sample["labels"]


def train_adapter(base_dir: Path, out_dir: Path, *, bits: int | None = None, steps: int = 120, lr: float = 1e-2,
                  seed: int = 0, template: str = "default") -> Path:
    """Train a LoRA (or QLoRA with ``bits=4``) adapter with plain torch to answer PROMPT with REPLY + EOS."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_base(base_dir, bits)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    ids, labels = sample_ids(template)
    input_ids = torch.tensor([ids])
    label_ids = torch.tensor([labels])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, labels=label_ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tiny_tokenizer().save_pretrained(str(out_dir))
    return out_dir


def random_adapter(base_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """An untrained LoRA adapter with non-zero random A and B (so merging changes the logits)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_base(base_dir), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                           target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def make_run(run_dir: Path, base_dir: Path, final_from: Path, *, adapter: bool = True, method: str = "lora",
             template: str = "default") -> Path:
    """A finished run directory whose final/ is a copy of ``final_from``."""
    from xt.run import RunInfo

    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(final_from, run_dir / "final")
    RunInfo(model=str(base_dir), model_source=str(base_dir), template=template, method=method,
            final_dir="final", adapter=adapter, status="finished").save(run_dir)
    return run_dir


def logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()
