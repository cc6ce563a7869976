"""DPO (sigmoid, conservative, IPO), ORPO and reward losses, metrics and gradients on a tiny real Llama, against
independent implementations written here from the papers' formulas (tolerance 1e-5), and TRL's ORPO functions.

TRL's ORPO ``odds_ratio_loss`` and ``get_batch_logps`` are plain functions of tensors and are compared here; TRL
1.16 computes its DPO and reward losses inside its trainers, so test_preference_trl.py compares those through real
``DPOTrainer`` / ``RewardTrainer`` instances.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from xt_preference import objectives
from xt_preference.reward import add_score_head

from tests.plugins.preference.pairs import (
    context,
    dataset_row,
    encoded_pairs,
    frozen_reference,
    independent_logps,
    packed_batch,
    perturbed,
    tiny_llama,
)

TOL = 1e-5



def _batch(samples):
    """Two packed rows of different length (so there is padding): pairs 0-2 in one, pair 3 in the other."""
    return packed_batch([dataset_row(samples[:3]), dataset_row(samples[3:])])


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, tol=TOL):
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a, b)


def _assert_same_grads(model, loss_ours, loss_theirs):
    model.zero_grad()
    loss_ours.backward()
    ours = _grads(model)
    model.zero_grad()
    loss_theirs.backward()
    theirs = _grads(model)
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=TOL, rtol=TOL), name
    assert any(g.abs().max() > 1e-4 for g in ours.values())  # the comparison is not between zeros


def _pair_logps(model, samples):
    """[(chosen logp, chosen tokens, rejected logp, rejected tokens)] pair by pair, independently."""
    out = []
    for chosen, rejected in samples:
        out.append((*independent_logps(model, chosen), *independent_logps(model, rejected)))
    return out


def test_batched_sequence_logps_equal_separate_forward_passes():
    model = tiny_llama()
    samples = encoded_pairs()
    batch = _batch(samples)
    with torch.no_grad():
        logps, tokens = objectives.sequence_logps_of(objectives.forward(model, batch), batch)
        expected = [v for pair in _pair_logps(model, samples) for v in (pair[0], pair[2])]
        counts = [v for pair in _pair_logps(model, samples) for v in (pair[1], pair[3])]
    _assert_same(logps, torch.stack(expected))
    assert tokens.tolist() == counts and objectives.count_pairs(batch) == 4


def _paper_dpo(pair, ref_pair, beta, smoothing, loss_type):
    """Rafailov et al. eq. 7 (+ Mitchell's conservative smoothing) or Azar et al.'s IPO, for one pair."""
    (pc, nc, pr, nr), (rc, _, rr, _) = pair, ref_pair
    if loss_type == "ipo":
        h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
        return (h - 1 / (2 * beta)) ** 2, beta * (pc - rc) / nc, beta * (pr - rr) / nr
    h = beta * ((pc - rc) - (pr - rr))
    loss = -(1 - smoothing) * torch.log(torch.sigmoid(h)) - smoothing * torch.log(1 - torch.sigmoid(h))
    return loss, beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize("beta,smoothing,loss_type", [(0.1, 0.0, "sigmoid"), (0.5, 0.2, "sigmoid"), (0.3, 0.0, "ipo")])
def test_dpo_loss_metrics_and_gradients_equal_the_paper_formula(beta, smoothing, loss_type):
    reference = tiny_llama()
    reference.requires_grad_(False)
    policy = perturbed(reference)
    samples = encoded_pairs()
    ctx = context({"beta": beta, "label_smoothing": smoothing, "loss_type": loss_type},
                      reference=frozen_reference(reference))
    loss, metrics = objectives.dpo_loss(policy, _batch(samples), ctx)

    with torch.no_grad():
        ref_pairs = _pair_logps(reference, samples)
    policy_pairs = _pair_logps(policy, samples)
    terms = [_paper_dpo(p, r, beta, smoothing, loss_type) for p, r in zip(policy_pairs, ref_pairs)]
    expected = sum(t[0] for t in terms)
    _assert_same(loss, expected)
    chosen_rewards = torch.stack([t[1] for t in terms]).detach()
    rejected_rewards = torch.stack([t[2] for t in terms]).detach()
    _assert_same(metrics["chosen_reward"], chosen_rewards.sum())
    _assert_same(metrics["rejected_reward"], rejected_rewards.sum())
    _assert_same(metrics["reward_margin"], (chosen_rewards - rejected_rewards).sum())
    assert metrics["reward_accuracy"].item() == float((chosen_rewards > rejected_rewards).sum())
    _assert_same(metrics["logps_chosen"], sum(p[0] for p in policy_pairs).detach())
    _assert_same(metrics["logps_rejected"], sum(p[2] for p in policy_pairs).detach())
    _assert_same_grads(policy, loss, expected)


def _paper_orpo(pair, beta):
    """Hong et al. eq. 6-7 for one pair: mean NLL of the chosen reply + beta * L_OR, written with odds."""
    pc, nc, pr, nr = pair
    p_chosen, p_rejected = torch.exp(pc / nc), torch.exp(pr / nr)
    log_odds_ratio = torch.log(p_chosen / (1 - p_chosen)) - torch.log(p_rejected / (1 - p_rejected))
    return -pc / nc - beta * torch.log(torch.sigmoid(log_odds_ratio))


def test_orpo_loss_and_gradients_equal_the_paper_formula_and_trl():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    beta = 0.25
    model = perturbed(tiny_llama())
    samples = encoded_pairs()
    loss, metrics = objectives.orpo_loss(model, _batch(samples), context({"beta": beta}))
    pairs = _pair_logps(model, samples)
    expected = sum(_paper_orpo(p, beta) for p in pairs)
    _assert_same(loss, expected)
    _assert_same_grads(model, loss, expected)

    # TRL: its batch log-probs (per-token averages) and its odds-ratio term, called as plain functions
    with torch.no_grad():
        averages = []
        for sample in samples:
            for sequence in sample:
                logits = model(input_ids=torch.tensor([sequence["input_ids"]]), use_cache=False).logits
                averages.append(ORPOTrainer.get_batch_logps(logits, torch.tensor([sequence["labels"]]),
                                                            average_log_prob=True)[0])
        chosen_avg, rejected_avg = torch.stack(averages[0::2]), torch.stack(averages[1::2])
        trl_self = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device="cpu"))
        trl_or, trl_chosen_reward, trl_rejected_reward, _, _ = ORPOTrainer.odds_ratio_loss(
            trl_self, chosen_avg, rejected_avg)
        ours, chosen_reward, rejected_reward = objectives.orpo_pair_losses(chosen_avg, rejected_avg, beta=beta)
    # TRL's loss is NLL - odds_ratio_loss (it returns beta * log sigmoid)
    _assert_same(ours, -chosen_avg - trl_or)
    _assert_same(chosen_reward, trl_chosen_reward)
    _assert_same(rejected_reward, trl_rejected_reward)
    _assert_same(metrics["chosen_reward"], trl_chosen_reward.sum())
    assert metrics["reward_accuracy"].item() == float((trl_chosen_reward > trl_rejected_reward).sum())


def _independent_reward(model, sequence):
    """The head on the final hidden state (after the last norm) at the sequence's last token, the sequence alone."""
    hidden = model.model(input_ids=torch.tensor([sequence["input_ids"]])).last_hidden_state[0, -1]
    return (hidden * model.score.weight[0]).sum()


def test_reward_loss_and_gradients_equal_bradley_terry():
    model = tiny_llama()
    add_score_head(model, context({}))
    samples = encoded_pairs()
    loss, metrics = objectives.reward_loss(model, _batch(samples), context({}))
    rewards = [(_independent_reward(model, c), _independent_reward(model, r)) for c, r in samples]
    expected = sum(torch.log1p(torch.exp(-(c - r))) for c, r in rewards)
    _assert_same(loss, expected)
    _assert_same(metrics["chosen_reward"], sum(c for c, _ in rewards).detach())
    _assert_same(metrics["reward_margin"], sum(c - r for c, r in rewards).detach())
    _assert_same_grads(model, loss, expected)
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().max() > 0


@pytest.mark.parametrize("objective", ["dpo", "orpo", "reward"])
def test_loss_sums_are_additive_over_pairs(objective):
    reference = tiny_llama()
    policy = perturbed(reference)
    if objective == "reward":
        add_score_head(policy, context({}))
    args = {"dpo": {"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid"}, "orpo": {"beta": 0.1},
            "reward": {}}[objective]
    ctx = context(args, reference=frozen_reference(reference))
    loss_fn = getattr(objectives, f"{objective}_loss")
    samples = encoded_pairs()
    with torch.no_grad():
        whole, whole_metrics = loss_fn(policy, _batch(samples), ctx)
        first, first_metrics = loss_fn(policy, packed_batch([dataset_row(samples[:1])]), ctx)
        rest, rest_metrics = loss_fn(policy, packed_batch([dataset_row(samples[1:])]), ctx)
    _assert_same(whole, first + rest)
    for name in whole_metrics:
        _assert_same(whole_metrics[name], first_metrics[name] + rest_metrics[name])


def test_options_are_checked_in_one_sentence():
    from xt.api import XtError

    good = {"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid"}
    assert objectives.dpo_options(good) == (0.1, 0.0, "sigmoid")
    for bad, words in [({"beta": 0}, "beta"), ({"beta": "x"}, "beta"), ({"label_smoothing": 0.5}, "label_smoothing"),
                       ({"loss_type": "hinge"}, "sigmoid, ipo"), ({"loss_type": "ipo", "label_smoothing": 0.1},
                                                                     "sigmoid loss only")]:
        with pytest.raises(XtError, match=words):
            objectives.dpo_options({**good, **bad})
    assert math.isclose(objectives.dpo_options({**good, "loss_type": "ipo"})[0], 0.1)
