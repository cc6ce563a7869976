"""The loss module against independent computations: transformers' own loss, and the window mean."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import llama_config  # noqa: E402
from xt.template import IGNORE_INDEX  # noqa: E402
from xt.train.loss import batch_loss_sum, label_tokens, micro_batch_objective, window_loss  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(vocab_size=64)).eval()


def batch(seed: int, rows: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 64, (rows, length), generator=generator)
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX  # the prompt half carries no loss
    labels[0, -2:] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_token_loss_sum_equals_transformers_mean_times_tokens(model):
    data = batch(1)
    with torch.no_grad():
        total, tokens = batch_loss_sum(model, data, "cpu")
        reference = model(**data).loss  # transformers shifts and averages over label tokens itself
    assert tokens == label_tokens(data) == 6 + 4  # the reply halves, two positions of row 0 masked
    assert float(total) / tokens == pytest.approx(float(reference), rel=1e-5)


def test_z_loss_adds_the_squared_logsumexp_of_each_label_position(model):
    data = batch(2)
    with torch.no_grad():
        plain, _ = batch_loss_sum(model, data, "cpu")
        with_z, _ = batch_loss_sum(model, data, "cpu", z_loss=0.1)
        logits = model(input_ids=data["input_ids"]).logits[:, :-1].float()
    mask = data["labels"][:, 1:] != IGNORE_INDEX
    expected = 0.1 * (torch.logsumexp(logits[mask], dim=-1) ** 2).sum()
    assert float(with_z - plain) == pytest.approx(float(expected), rel=1e-4)


def test_micro_batch_shares_add_up_to_the_window_token_mean(model):
    """Over 2 ranks x 2 micro-batches, the objectives averaged over ranks (as DeepSpeed does with the
    gradients) sum to the token mean of the concatenated window; the reported loss is that mean."""
    windows = [[batch(3), batch(4, rows=1)], [batch(5, rows=3), batch(6)]]  # rank -> its micro-batches
    world = len(windows)
    with torch.no_grad():
        sums = [[batch_loss_sum(model, b, "cpu") for b in rank] for rank in windows]
    window_tokens = float(sum(n for rank in sums for _, n in rank))
    per_rank = [sum(float(micro_batch_objective(s, world, window_tokens)) for s, _ in rank) for rank in sums]
    all_rows = [b for rank in windows for b in rank]
    with torch.no_grad():
        concatenated = sum(float(batch_loss_sum(model, b, "cpu")[0]) for b in all_rows) / window_tokens
    assert sum(per_rank) / world == pytest.approx(concatenated, rel=1e-6)
    total = sum(float(s) for rank in sums for s, _ in rank)
    assert window_loss(total, window_tokens) == pytest.approx(concatenated, rel=1e-6)
