"""Shared pieces of the xt-preference tests: a tiny Llama, encoded pairs, dataset rows and batches, and the
independent per-sequence log-probs every reference implementation starts from."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from xt.api import ObjectiveContext, make_default_collator
from xt.plugins import get_registry
from xt.template import IGNORE_INDEX
from xt.tokenizers import tiny_tokenizer
from xt_preference.maps import pair_sequences

PAIRS = (
    ({"messages": [{"role": "user", "content": "What is the capital of France?"}]}, "Paris", "green"),
    ({"messages": [{"role": "system", "content": "Answer in one word."},
                   {"role": "user", "content": "What color is the sky?"}]}, "blue", "Monday and Tuesday"),
    ({"messages": [{"role": "user", "content": "Write 42 in words."}]}, "forty-two", "a cat"),
    ({"messages": [{"role": "user", "content": "Is 7 even or odd?"},
                   {"role": "assistant", "content": "odd"},
                   {"role": "user", "content": "And 8?"}]}, "even, it is even", "odd"),
)


def tiny_llama(seed: int = 0, vocab_size: int | None = None) -> Any:
    """A 2-layer Llama from a config (fp32, sdpa), deterministic for ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size or len(tiny_tokenizer()), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def perturbed(model: Any, seed: int = 1, scale: float = 0.05) -> Any:
    """A trainable copy of ``model`` moved away from it (so policy and reference differ)."""
    other = copy.deepcopy(model).requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return other


def frozen_reference(reference: Any) -> Any:
    """A ``context.reference`` factory that yields ``reference`` as it is."""
    @contextlib.contextmanager
    def enter() -> Any:
        yield reference
    return enter


def encoded_pairs(pairs: tuple = PAIRS, template: str = "default") -> list[list[dict[str, list[int]]]]:
    """Each pair -> [chosen sequence, rejected sequence] as the plugin makes them (``pair_sequences``), encoded
    with ``template`` (first label masked)."""
    tokenizer, spec = tiny_tokenizer(), get_registry().get("templates", template)
    out = []
    for prompt, chosen, rejected in pairs:
        sample = []
        for conversation in pair_sequences({"messages": prompt["messages"], "chosen": chosen, "rejected": rejected}):
            encoded = spec.encode(conversation, tokenizer)
            sample.append({"input_ids": list(encoded["input_ids"]),
                           "labels": [IGNORE_INDEX] + list(encoded["labels"][1:])})
        out.append(sample)
    return out


def dataset_row(samples: list[list[dict[str, list[int]]]]) -> dict[str, Any]:
    """Samples packed into one dataset row, as the contract lays them out."""
    sequences = [s for sample in samples for s in sample]
    return {"input_ids": [t for s in sequences for t in s["input_ids"]],
            "labels": [t for s in sequences for t in s["labels"]],
            "position_ids": [p for s in sequences for p in range(len(s["input_ids"]))],
            "sequence_lengths": [len(s["input_ids"]) for s in sequences],
            "group_sizes": [len(sample) for sample in samples]}


def packed_batch(rows: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    """Dataset rows -> the core default collator's packed batch (no attention mask, the sequence tensors)."""
    return make_default_collator(pad_token_id=pad_token_id)(rows)


def independent_logps(model: Any, sequence: dict[str, list[int]]) -> tuple[torch.Tensor, int]:
    """(sum of log p(label) over the sequence's label tokens, their count): one forward pass of the sequence
    alone, no padding, log_softmax and gather written out here."""
    ids = torch.tensor([sequence["input_ids"]])
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    labels = torch.tensor(sequence["labels"][1:])
    keep = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1)[keep].gather(1, labels[keep].unsqueeze(1)).squeeze(1)
    return logp.sum(), int(keep.sum())


def context(args: dict[str, Any] | None = None, reference: Any = None) -> Any:
    """The core's ObjectiveContext with ``args`` and a ``reference`` factory."""
    return ObjectiveContext(args=dict(args or {}), reference=reference, pad_token_id=0)
