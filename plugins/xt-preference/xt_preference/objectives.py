"""The preference objectives ``dpo`` (with IPO), ``orpo`` and ``reward``.

Every objective trains on pair rows (:mod:`xt_preference.maps`). A row becomes two sequences, prompt +
chosen reply then prompt + rejected reply, which the core encodes with the run's template (labels on
the reply only, as SFT) and keeps together as one sample. A batch carries ``sequence_ids`` (which
sequence each token belongs to), ``sequence_groups`` (the pair of each sequence) and
``sequence_roles`` (0 chosen, 1 rejected); sequences are numbered in row order and each pair's two
sequences are consecutive, chosen first.

Per the objective contract, ``loss`` returns the SUM of the per-pair losses and every metric is a sum
over the pairs (the core divides by the pairs of the optimizer step's window), so the loss of a window
equals the loss of the concatenated batch.

Formulas (per pair; ``lp`` is the summed log-probability of a reply's label tokens, ``avg`` the same
divided by its label tokens, ``ref`` the reference model's):

- DPO, sigmoid (Rafailov et al. 2023; with label smoothing eps, the conservative DPO of Mitchell
  2023): ``h = (lp_c - lp_r) - (ref_c - ref_r)``,
  ``loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``; implicit rewards
  ``beta (lp - ref)``.
- IPO (Azar et al. 2023), ``loss_type: ipo``: the same ``h`` from per-token averaged log-probs,
  ``loss = (h - 1 / (2 beta))^2``; rewards ``beta (avg - ref_avg)``.
- ORPO (Hong et al. 2024): ``loss = -avg_c + beta * -log sigmoid(log odds_c - log odds_r)`` with
  ``log odds = avg - log(1 - exp(avg))``; rewards ``beta avg`` (no reference model).
- reward (Bradley-Terry): a scalar head ``score`` on the last hidden state at the last token of each
  sequence, ``loss = -log sigmoid(r_c - r_r)``.
"""

from __future__ import annotations

from typing import Any

from xt.api import XtError

DPO_LOSS_TYPES = ("sigmoid", "ipo")
DPO_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid"}
ORPO_DEFAULTS = {"beta": 0.1}
#: the reward head's name: the attribute of the causal LM and the module plain transformers loads as the classifier
SCORE = "score"


# ------------------------------------------------------------------------------------------- pairs and options


def count_pairs(batch: dict[str, Any]) -> int:
    """The units of every preference objective: the pairs (chosen sequences) of the batch."""
    return int((batch["sequence_roles"] == 0).sum())


def split_pairs(values: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Per-sequence values (S,) -> (chosen (P,), rejected (P,)), pair by pair."""
    roles = batch["sequence_roles"].to(values.device)
    return values[roles == 0], values[roles == 1]


def _positive(args: dict[str, Any], key: str, objective: str) -> float:
    value = args[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise XtError(f"objective_args.{key} of '{objective}' must be a positive number, got {value!r}; "
                      f"set it with --set objective_args.{key}=0.1")
    return float(value)


def dpo_options(args: dict[str, Any]) -> tuple[float, float, str]:
    """(beta, label_smoothing, loss_type) of a ``dpo`` run, checked."""
    beta = _positive(args, "beta", "dpo")
    smoothing = args["label_smoothing"]
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 0.5:
        raise XtError(f"objective_args.label_smoothing of 'dpo' must be a number in [0, 0.5), got {smoothing!r}")
    loss_type = args["loss_type"]
    if loss_type not in DPO_LOSS_TYPES:
        raise XtError(f"objective_args.loss_type of 'dpo' must be one of {', '.join(DPO_LOSS_TYPES)}, got {loss_type!r}")
    if loss_type == "ipo" and smoothing:
        raise XtError("objective_args.label_smoothing applies to the sigmoid loss only; unset it for loss_type ipo")
    return beta, float(smoothing), loss_type


def check_dpo_options(args: dict[str, Any]) -> None:
    """``check_options`` of ``dpo``: refuse bad values before anything is loaded."""
    dpo_options(args)


def check_orpo_options(args: dict[str, Any]) -> None:
    """``check_options`` of ``orpo``: refuse a bad ``beta`` before anything is loaded."""
    _positive(args, "beta", "orpo")


# ------------------------------------------------------------------------------------------------ the maths


def dpo_pair_losses(chosen: Any, rejected: Any, ref_chosen: Any, ref_rejected: Any, *, beta: float,
                    label_smoothing: float = 0.0, loss_type: str = "sigmoid") -> tuple[Any, Any, Any]:
    """(losses, chosen rewards, rejected rewards), each (P,), from the policy's and the reference's
    log-probs (sums for sigmoid, per-token averages for IPO)."""
    import torch.nn.functional as F

    margin = (chosen - rejected) - (ref_chosen - ref_rejected)
    if loss_type == "ipo":
        losses = (margin - 1.0 / (2.0 * beta)) ** 2
    else:
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    return losses, beta * (chosen - ref_chosen).detach(), beta * (rejected - ref_rejected).detach()


def orpo_pair_losses(chosen_avg: Any, rejected_avg: Any, *, beta: float) -> tuple[Any, Any, Any]:
    """(losses, chosen rewards, rejected rewards), each (P,), from per-token averaged log-probs."""
    import torch
    import torch.nn.functional as F

    def log_odds(avg: Any) -> Any:
        return avg - torch.log1p(-torch.exp(avg))

    ratio = log_odds(chosen_avg) - log_odds(rejected_avg)
    losses = -chosen_avg - beta * F.logsigmoid(ratio)
    return losses, beta * chosen_avg.detach(), beta * rejected_avg.detach()


def bradley_terry_losses(chosen_reward: Any, rejected_reward: Any) -> Any:
    """-log sigmoid(r_chosen - r_rejected), per pair."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen_reward - rejected_reward)


def pair_metrics(chosen_reward: Any, rejected_reward: Any, logps: tuple[Any, Any]) -> dict[str, Any]:
    """The metrics every preference objective reports, each a sum over the pairs."""
    chosen_reward, rejected_reward = chosen_reward.detach().float(), rejected_reward.detach().float()
    return {
        "reward_accuracy": (chosen_reward > rejected_reward).float().sum(),
        "reward_margin": (chosen_reward - rejected_reward).sum(),
        "chosen_reward": chosen_reward.sum(),
        "rejected_reward": rejected_reward.sum(),
        "logps_chosen": logps[0].detach().sum(),
        "logps_rejected": logps[1].detach().sum(),
    }


# ----------------------------------------------------------------------------------------- model forward passes


def forward(model: Any, batch: dict[str, Any], **kwargs: Any) -> Any:
    """The model's output on the batch's model inputs."""
    from xt.api import model_inputs

    return model(**model_inputs(batch), use_cache=False, **kwargs)


def sequence_logps_of(output: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(summed label log-probs (S,), label tokens (S,)) of every sequence of the batch."""
    from xt.api import sequence_logps

    labels = batch["labels"].to(output.logits.device)
    n_sequences = int(batch["sequence_roles"].numel())
    return sequence_logps(output.logits, labels, batch["sequence_ids"].to(output.logits.device), n_sequences)


def reference_values(reference: Any, batch: dict[str, Any], context: Any) -> dict[str, Any]:
    """``precompute`` of ``dpo``: the reference model's summed log-probs per sequence (``logps``)."""
    return {"logps": sequence_logps_of(forward(reference, batch), batch)[0]}


def reference_logps(batch: dict[str, Any], context: Any) -> Any:
    """The reference model's summed log-probs per sequence (S,): precomputed ones when the batch carries
    them (``precompute_reference``), else a forward pass of ``context.reference`` without a graph."""
    import torch

    if "reference_logps" in batch:
        return batch["reference_logps"]
    if context.reference is None:
        raise XtError("the 'dpo' objective needs the core's reference model (ObjectiveSpec reference=True)")
    with torch.no_grad(), context.reference() as reference:
        return reference_values(reference, batch, context)["logps"]


# -------------------------------------------------------------------------------------------- the objectives


def dpo_loss(model: Any, batch: dict[str, Any], context: Any) -> tuple[Any, dict[str, Any]]:
    """DPO (sigmoid, conservative) or IPO: the summed pair losses and metrics."""
    beta, smoothing, loss_type = dpo_options(context.args)
    logps, tokens = sequence_logps_of(forward(model, batch), batch)
    policy, reference = logps, reference_logps(batch, context).to(logps.device, logps.dtype)
    if loss_type == "ipo":
        count = tokens.clamp(min=1).to(logps.dtype)
        policy, reference = logps / count, reference / count
    losses, chosen_reward, rejected_reward = dpo_pair_losses(
        *split_pairs(policy, batch), *split_pairs(reference, batch), beta=beta, label_smoothing=smoothing,
        loss_type=loss_type)
    return losses.sum(), pair_metrics(chosen_reward, rejected_reward, split_pairs(logps, batch))


def orpo_loss(model: Any, batch: dict[str, Any], context: Any) -> tuple[Any, dict[str, Any]]:
    """ORPO: chosen NLL (token mean per pair) + beta * odds-ratio loss, summed over pairs."""
    beta = _positive(context.args, "beta", "orpo")
    logps, tokens = sequence_logps_of(forward(model, batch), batch)
    average = logps / tokens.clamp(min=1).to(logps.dtype)
    losses, chosen_reward, rejected_reward = orpo_pair_losses(*split_pairs(average, batch), beta=beta)
    return losses.sum(), pair_metrics(chosen_reward, rejected_reward, split_pairs(logps, batch))


def last_token_positions(batch: dict[str, Any], pad_token_id: int) -> tuple[Any, Any]:
    """(row (S,), column (S,)) of each sequence's last token that is not the pad id: where plain
    transformers' sequence-classification models read their score on a right-padded row."""
    from xt.api import sequence_last_index

    ids = batch["sequence_ids"]
    try:
        return sequence_last_index(ids, int(batch["sequence_roles"].numel()), keep=batch["input_ids"] != pad_token_id)
    except ValueError:
        raise XtError("a preference sequence holds only padding tokens; check the data's pad id") from None


def unwrapped(model: Any) -> Any:
    """The causal LM inside a DeepSpeed engine and/or a PEFT model."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def rewards(model: Any, batch: dict[str, Any], pad_token_id: int) -> tuple[Any, Any]:
    """(reward per sequence (S,) in fp32, the output) of the reward model."""
    output = forward(model, batch, output_hidden_states=True)
    hidden = output.hidden_states[-1]
    row, col = last_token_positions(batch, pad_token_id)
    score = getattr(unwrapped(model), SCORE)
    return score(hidden[row.to(hidden.device), col.to(hidden.device)]).squeeze(-1).float(), output


def reward_loss(model: Any, batch: dict[str, Any], context: Any) -> tuple[Any, dict[str, Any]]:
    """Bradley-Terry on the scalar head: the summed pair losses and metrics."""
    values, output = rewards(model, batch, context.pad_token_id)
    chosen, rejected = split_pairs(values, batch)
    logps, _ = sequence_logps_of(output, batch)
    return bradley_terry_losses(chosen, rejected).sum(), pair_metrics(chosen, rejected, split_pairs(logps, batch))
