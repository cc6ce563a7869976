"""The public plugin API: everything a plugin may import from the core, in one module.

    from xt.api import hookimpl, ModelSpec, RowError, load_run_model, export_hf

Importing this module imports no torch: the names below resolve on first use, each from the core
module that implements it, so a plugin can import them at module level and ``xt --help`` stays
instant. Anything not listed here is internal and may change without notice.

Registration: ``hookimpl``, the specs (``ModelSpec``, ``DatasetSpec``, ``TemplateSpec``,
``CollatorSpec``, ``ExporterSpec``, ``ObjectiveSpec`` with its ``ObjectiveContext``), ``BOS`` / ``EOS`` / ``SpecialToken``, ``RunContext``, ``RowError``, ``XtError``,
``content_parts`` (OpenAI-style content parts), ``conversation_problems`` (what is wrong with a conversation),
``get_registry`` and ``when_imported`` (register with transformers lazily).

Models and runs: ``build_preset`` (a model from a config, deterministically), ``load_hf_causal_lm``,
``load_hf_tokenizer``, ``ensure_pad_token``, ``safe_pad_id`` (the pad id training and generation use), ``tiny_tokenizer``, ``is_run_dir``, ``load_run``,
``RunInfo``, ``describe_run``, ``RunModel``, ``load_run_model`` (a run's model, adapter merged or
not, checked to carry the run's weights), ``load_base``, ``apply_adapter``, ``resolve_base``,
``load_tokenizer_for``, ``template_for``, ``ChatOptions`` / ``ChatModel`` / ``load_chat_model`` (what
``xt chat`` loads: a run, a registered model, a folder or a hub id, with its template),
``EVAL_RESULTS_DIR`` (where evaluators write inside a run).

Export: ``export_hf`` (the ``hf`` exporter as a function), ``merge_adapter``, ``check_output_dir``,
``staged_output`` (write a folder atomically), ``as_bool`` (exporter options).

Objectives: ``model_inputs`` (the batch entries a model takes), ``token_loss_sum`` (the SFT loss sum),
``sequence_logps`` (summed log-probabilities of each sequence's label tokens), ``sequence_last_index``
(each sequence's last token), ``sequence_tensors`` (what the default collator adds for samples of
several sequences).

Data and generation: ``IGNORE_INDEX``, ``make_default_collator``, ``ResumableBatchSampler``,
``generate``, ``generate_batch``, ``generate_from_ids``, ``decode_reply``, ``preserved_training_state``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "xt": ("hookimpl",),
    "xt.errors": ("XtError",),
    "xt.specs": ("ModelSpec", "DatasetSpec", "TemplateSpec", "CollatorSpec", "ExporterSpec", "ObjectiveSpec",
                 "ObjectiveContext", "RowError", "BOS", "EOS", "SpecialToken", "RunContext", "content_parts",
                 "conversation_problems"),
    "xt.train.loss": ("model_inputs", "token_loss_sum", "sequence_logps", "sequence_last_index"),
    "xt.plugins": ("get_registry",),
    "xt._imports": ("when_imported",),
    "xt.model.loading": ("build_preset", "load_hf_causal_lm", "load_hf_tokenizer", "ensure_pad_token", "safe_pad_id"),
    "xt.tokenizers": ("tiny_tokenizer",),
    "xt.run": ("is_run_dir", "load_run", "RunInfo", "EVAL_RESULTS_DIR"),
    "xt.chat": ("ChatOptions", "ChatModel", "load_chat_model"),
    "xt.export": ("describe_run", "RunModel", "load_run_model", "load_base", "apply_adapter", "resolve_base",
                  "load_tokenizer_for", "template_for", "export_hf", "merge_adapter", "check_output_dir",
                  "staged_output", "as_bool"),
    "xt.template": ("IGNORE_INDEX",),
    "xt.data.collate": ("make_default_collator", "sequence_tensors"),
    "xt.data.sampler": ("ResumableBatchSampler",),
    "xt.generation": ("generate", "generate_batch", "generate_from_ids", "decode_reply", "preserved_training_state"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'xt.api' has no attribute '{name}'; the public names are: {', '.join(__all__)}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)
