"""xt's ``dpo`` (sigmoid, conservative, IPO) and ``reward`` losses, metrics and gradients against TRL 1.16's own
trainers, on a tiny random Llama, within 1e-5.

TRL computes these losses inside a trainer (``DPOTrainer._compute_loss`` behind ``compute_loss``, with its
fused LM head patched onto the model; ``RewardTrainer.compute_loss`` on a sequence-classification model), so the
test builds real, minimal trainers (offline, CPU, fp32, no truncation) and calls ``trainer.compute_loss`` on a
batch made by the trainer's own data collator. Both sides see the same token ids: xt encodes the pairs with its
template, and TRL gets them as ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` (the prompt ends where the
reply's labels start). The trainers' ``train_dataset`` (required by their constructors) is not what is compared.

Settings that differ between the two:

- TRL's ``sigmoid`` loss ignores ``label_smoothing``; TRL writes the conservative-DPO expression
  ``-(1 - eps) log σ(β h) - eps log σ(-β h)`` in its ``aot`` loss, which sorts the batch's margins first and so
  is that expression exactly on a batch of one pair: xt's label smoothing is compared pair by pair through it.
- A multi-turn prompt's earlier assistant replies carry no loss in xt's pair sequences (``weight`` 0), so, as in
  TRL, only the final reply counts in the log-probs: IPO is compared on a multi-turn prompt too.
"""

from __future__ import annotations

import pytest
import torch
from xt.template import IGNORE_INDEX
from xt.tokenizers import tiny_tokenizer
from xt_preference import objectives
from xt_preference.reward import add_score_head, sequence_classifier

from tests.plugins.preference.pairs import (
    PAIRS,
    context,
    dataset_row,
    encoded_pairs,
    frozen_reference,
    packed_batch,
    perturbed,
    tiny_llama,
)

pytest.importorskip("trl", reason="trl is not installed (the 'bench' extra installs it)")

TOL = 1e-5
SINGLE_TURN = 3  # PAIRS[:3] have single-turn prompts, PAIRS[3] has an earlier assistant turn
#: xt metric -> TRL's logged DPO metric. TRL logs the sigmoid rewards beta (lp - ref) for every loss type (xt's
#: IPO rewards use per-token averages); xt's per-reply values also hold a prompt's earlier assistant turns, which
#: cancel in margins and accuracies only.
PAIR_METRICS = {"reward_margin": "rewards/margins", "reward_accuracy": "rewards/accuracies"}
REWARD_METRICS = {"chosen_reward": "rewards/chosen", "rejected_reward": "rewards/rejected"}
LOGP_METRICS = {"logps_chosen": "logps/chosen", "logps_rejected": "logps/rejected"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _reply_start(labels):
    """Where a sequence's final reply starts: the first label of its last labelled run, which must reach its end."""
    labelled = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
    assert labelled and labelled[-1] == len(labels) - 1, "the reply's labels must run to the sequence's end"
    return next(i for i in reversed(labelled) if labels[i - 1] == IGNORE_INDEX)


def _trl_example(sample):
    """One xt pair [chosen, rejected] -> TRL's tokenized preference example, with the same token ids."""
    chosen, rejected = sample
    start = _reply_start(chosen["labels"])
    assert start == _reply_start(rejected["labels"]) and chosen["input_ids"][:start] == rejected["input_ids"][:start]
    return {"prompt_ids": chosen["input_ids"][:start], "chosen_ids": chosen["input_ids"][start:],
            "rejected_ids": rejected["input_ids"][start:]}


def _text_dataset(pairs):
    """The constructor's required train_dataset (plain text rows; the compared batches do not come from it)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p["messages"][-1]["content"], "chosen": c, "rejected": r}
                              for p, c, r in pairs])


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(ours, theirs, what):
    assert torch.allclose(torch.as_tensor(ours, dtype=torch.float32), torch.as_tensor(theirs, dtype=torch.float32),
                          atol=TOL, rtol=TOL), (what, ours, theirs)


def _assert_same_grads(ours, theirs):
    """Same parameter names (the reward model's backbone is ``model`` and its head ``score`` on both sides)."""
    assert len(ours) > 10 and ours.keys() == theirs.keys()
    for name, grad in ours.items():
        _assert_close(grad, theirs[name], name)
    assert any(g.abs().max() > 1e-4 for g in ours.values())  # the comparison is not between zeros


def _assert_same_metrics(metrics, trainer, pairs, names):
    """xt's metric sums / pairs against the means TRL logged on its last ``compute_loss``."""
    for name, key in names.items():
        _assert_close(metrics[name] / pairs, trainer._metrics["train"][key][-1], key)


def _dpo_trainer(tmp_path, policy, reference, **settings):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl-dpo"), report_to="none", use_cpu=True, bf16=False,
                     max_length=None, disable_dropout=True, **settings)
    return DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=_text_dataset(PAIRS),
                      processing_class=tiny_tokenizer())


def _models():
    reference = tiny_llama().requires_grad_(False)
    return perturbed(reference), reference


def _xt_dpo(policy, reference, samples, **args):
    ctx = context({**objectives.DPO_DEFAULTS, **args}, reference=frozen_reference(reference))
    return objectives.dpo_loss(policy, packed_batch([dataset_row(samples)]), ctx)


def _trl_loss(trainer, samples):
    batch = trainer.data_collator([_trl_example(s) for s in samples])
    return trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize("beta,loss_type,pairs", [(0.1, "sigmoid", len(PAIRS)), (0.3, "ipo", SINGLE_TURN)])
def test_dpo_loss_metrics_and_gradients_equal_trl(tmp_path, beta, loss_type, pairs):
    policy, reference = _models()
    samples = encoded_pairs()[:pairs]
    trainer = _dpo_trainer(tmp_path, policy, reference, beta=beta, loss_type=[loss_type])
    theirs = _trl_loss(trainer, samples)
    loss_sum, metrics = _xt_dpo(policy, reference, samples, beta=beta, loss_type=loss_type)
    ours = loss_sum / pairs  # xt returns the sum over pairs, TRL the mean
    _assert_close(ours, theirs, "loss")
    _assert_same_metrics(metrics, trainer, pairs, PAIR_METRICS if loss_type == "sigmoid" else LOGP_METRICS)
    _assert_same_grads(_grads(policy, ours), _grads(policy, theirs))
    if pairs > SINGLE_TURN:  # the prompt's earlier assistant turn counts in xt's log-probs: all metrics on the rest
        with torch.no_grad():
            _trl_loss(trainer, samples[:SINGLE_TURN])
            _, metrics = _xt_dpo(policy, reference, samples[:SINGLE_TURN], beta=beta, loss_type=loss_type)
        _assert_same_metrics(metrics, trainer, SINGLE_TURN, PAIR_METRICS | REWARD_METRICS | LOGP_METRICS)


def test_conservative_dpo_equals_trl_pair_by_pair(tmp_path):
    beta, smoothing = 0.5, 0.2
    policy, reference = _models()
    samples = encoded_pairs()
    trainer = _dpo_trainer(tmp_path, policy, reference, beta=beta, loss_type=["aot"], label_smoothing=smoothing)
    theirs = sum(_trl_loss(trainer, [sample]) for sample in samples)
    ours, _ = _xt_dpo(policy, reference, samples, beta=beta, label_smoothing=smoothing)
    _assert_close(ours, theirs, "loss")
    _assert_same_grads(_grads(policy, ours), _grads(policy, theirs))

    # TRL's sigmoid loss does not read label_smoothing: it equals xt's loss without smoothing
    plain = _dpo_trainer(tmp_path, policy, reference, beta=beta, loss_type=["sigmoid"], label_smoothing=smoothing)
    with torch.no_grad():
        _assert_close(_xt_dpo(policy, reference, samples, beta=beta)[0] / len(samples), _trl_loss(plain, samples),
                      "sigmoid without smoothing")


def test_ipo_on_a_multi_turn_prompt_equals_trl(tmp_path):
    """The prompt's earlier assistant turn is context only (weight 0), as in TRL: IPO's averages agree."""
    policy, reference = _models()
    samples = encoded_pairs()[SINGLE_TURN:]
    trainer = _dpo_trainer(tmp_path, policy, reference, beta=0.3, loss_type=["ipo"])
    with torch.no_grad():
        theirs = _trl_loss(trainer, samples)
        ours, _ = _xt_dpo(policy, reference, samples, beta=0.3, loss_type="ipo")
    _assert_close(ours / len(samples), theirs, "loss")


def test_reward_loss_metrics_and_gradients_equal_trl(tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model = tiny_llama()
    add_score_head(model, context({}))
    classifier = sequence_classifier(model, adapter=False, pad_token_id=0).train()  # xt's saved reward model
    samples = encoded_pairs()
    rows = [{"chosen_ids": c["input_ids"], "rejected_ids": r["input_ids"]} for c, r in samples]
    assert all(0 not in ids for row in rows for ids in row.values())  # so both score each sequence's last token
    args = RewardConfig(output_dir=str(tmp_path / "trl-reward"), report_to="none", use_cpu=True, bf16=False,
                        max_length=None, disable_dropout=True)
    trainer = RewardTrainer(model=classifier, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=tiny_tokenizer())
    theirs = trainer.compute_loss(classifier, trainer.data_collator(rows))
    loss_sum, metrics = objectives.reward_loss(model, packed_batch([dataset_row(samples)]), context({}))
    ours = loss_sum / len(samples)
    _assert_close(ours, theirs, "loss")
    _assert_close(metrics["reward_margin"] / len(samples), trainer._metrics["train"]["margin"][-1], "margin")
    _assert_close(metrics["reward_accuracy"] / len(samples), trainer._metrics["train"]["accuracy"][-1], "accuracy")
    # the causal LM's lm_head gets no gradient from the reward loss, so both sides hold the same parameters
    _assert_same_grads(_grads(model, ours), _grads(classifier, theirs))
