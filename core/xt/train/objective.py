"""The run's objective: which one, its options, its reference model and the context its loss gets.

``resolve_objective`` finds the spec ``cfg.objective`` names and checks ``cfg.objective_args``
against its ``defaults`` before anything is loaded. ``reference_model`` gives objectives that ask
for one (``ObjectiveSpec.reference``) the model they compare against without a second copy where
possible: under LoRA/QLoRA the trained model itself with its adapter disabled; under full training
a frozen copy taken before training starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from xt.errors import XtError
from xt.specs import ObjectiveContext, ObjectiveSpec


def objective_name(explicit: str | None, dataset: Any) -> str:
    """The objective to use: the explicit name, else the one the dataset's rows are for, else ``sft``."""
    return explicit or getattr(dataset, "objective", None) or "sft"


def resolve_objective(name: str, objective_args: dict[str, Any]) -> tuple[ObjectiveSpec, dict[str, Any]]:
    """(the registered objective, its options); one sentence for an unknown name or option."""
    from xt.errors import plugin_call
    from xt.plugins import get_registry

    spec = get_registry().get("objectives", name)
    try:
        args = spec.options(objective_args)
    except ValueError as exc:
        raise XtError(f"{exc}; fix --set objective_args.KEY=VALUE (or objective_args in the config).") from None
    if spec.check_options is not None:
        with plugin_call(spec, "check_options"):
            spec.check_options(args)
    return spec, args


def frozen_copy(model: Any) -> Any:
    """A copy of ``model`` that never trains: eval mode, no gradients."""
    import copy

    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def reference_model(adapter: bool, trained: Callable[[], Any] | None, frozen: Any = None) -> Callable[[], Any]:
    """A context-manager factory yielding the reference model to call under ``torch.no_grad()``.

    ``adapter``: the model being trained (``trained()``, a PEFT model) with its adapter disabled, in
    eval mode; else ``frozen`` (see :func:`frozen_copy`).
    """
    @contextlib.contextmanager
    def reference() -> Iterator[Any]:
        import torch

        if adapter:  # in eval mode, so dropout never makes the reference random
            model = trained()
            was_training = model.training
            model.eval()
            try:
                with model.disable_adapter(), torch.no_grad():
                    yield model
            finally:
                model.train(was_training)
        else:
            with torch.no_grad():
                yield frozen

    return reference


def objective_context(spec: ObjectiveSpec, args: dict[str, Any], *, tokenizer: Any, pad_token_id: int,
                      z_loss: float, reference: Callable[[], Any] | None, training: bool = True) -> ObjectiveContext:
    return ObjectiveContext(args=dict(args), reference=reference if spec.reference else None, tokenizer=tokenizer,
                            pad_token_id=pad_token_id, z_loss=z_loss, training=training)


def _guarded(spec: ObjectiveSpec, what: str) -> Any:
    """Errors in a plugin's objective name it; the core's own (sft) pass through unchanged."""
    from xt.errors import plugin_call

    return contextlib.nullcontext() if spec.plugin == "xt-core" else plugin_call(spec, what)


def call_loss(spec: ObjectiveSpec, model: Any, batch: dict[str, Any], context: ObjectiveContext) -> tuple[Any, dict[str, float]]:
    """(loss sum with graph, metric sums as floats) from the objective, checked to be a 0-d tensor."""
    import torch

    with _guarded(spec, "loss"):
        loss_sum, metrics = spec.loss(model, batch, context)
        metrics = {key: float(value) for key, value in (metrics or {}).items()}
    if not torch.is_tensor(loss_sum) or loss_sum.dim() != 0:
        raise XtError(f"The loss of objective '{spec.name}' ({spec.plugin}) returned {type(loss_sum).__name__}, "
                      f"not a 0-d tensor; this is a bug in the objective.")
    return loss_sum, metrics


def count_units(spec: ObjectiveSpec, batch: dict[str, Any]) -> int:
    """How many units the objective's loss sums over in ``batch``."""
    with _guarded(spec, "units"):
        return int(spec.units(batch))
