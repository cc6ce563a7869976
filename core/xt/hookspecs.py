"""The plugin contract: the hooks an xt plugin may implement.

Every registration hook receives a ``register`` callback and calls it zero or more times with a
spec object from :mod:`xt.specs`. The core owns naming, aliases, duplicate detection and error
messages, so a plugin only describes what it brings. Implement a hook with :data:`xt.hookimpl`::

    from xt import hookimpl
    from xt.specs import DatasetSpec

    @hookimpl
    def dataset_map(register):
        register(DatasetSpec(name="my-set", map_row=my_row_to_conversation, data_files=["rows.jsonl"]))

A function marked with ``@hookimpl`` whose name is not one of the hooks below makes the plugin fail
to load (``PluginManager.check_pending``), so a misspelled hook is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("xt")


@hookspec
def model_loader(register: Callable[[Any], None]) -> None:
    """Register model families, presets and encoders: ``register(ModelSpec(...))``.

    Required: ``name``. Usually also ``source`` (hub id or local folder, overridable with
    ``--model-path``), ``load_model`` / ``load_tokenizer`` (defaults: transformers Auto classes),
    ``config`` (architecture known offline, used by ``--dry-run``), ``lora_targets`` and
    ``default_template``. ``kind`` says what it is: ``causal-lm``, ``vision-encoder`` or
    ``multimodal``. Called by ``xt train --model``, ``xt chat``, ``xt merge`` and ``xt list models``.
    """


@hookspec
def dataset_map(register: Callable[[Any], None]) -> None:
    """Register datasets: ``register(DatasetSpec(...))``.

    Required: ``name`` and ``map_row`` (one raw row -> a conversation ``{"messages": [...],
    "images"?: [...]}``; raise :class:`xt.specs.RowError` for a row that does not fit). Rows come
    from ``source`` (a hub id), ``data_files`` or ``generate`` (rows made in code). ``sample_rows``
    lets the conformance kit run the map offline. Called by ``xt train --dataset`` and ``xt data``.
    """


@hookspec
def prompt_template(register: Callable[[Any], None]) -> None:
    """Register chat templates: ``register(TemplateSpec(...))``.

    Required: ``name``, ``user`` and ``assistant`` parts. The same template frames training samples
    (labels on assistant replies and their end token only), chat prompts and eval prompts, and
    gives the stop words. Called by tokenization, ``xt chat`` and eval during training.
    """


@hookspec
def collate(register: Callable[[Any], None]) -> None:
    """Register collators: ``register(CollatorSpec(...))``.

    Required: ``name`` and ``factory`` (``factory(tokenizer=..., **options)`` returns a function
    from a list of processed samples to a dict of batch tensors). Called by the data loader.
    """


@hookspec
def exporter(register: Callable[[Any], None]) -> None:
    """Register export targets: ``register(ExporterSpec(...))``.

    Required: ``name`` and ``export`` (``export(run_dir, out_dir, **options)`` writes a deployable
    folder from a finished run). Called by ``xt export RUN --to NAME``.
    """


@hookspec
def objective(register: Callable[[Any], None]) -> None:
    """Register training objectives: ``register(ObjectiveSpec(...))``.

    Required: ``name``, ``loss(model, batch, context) -> (loss_sum, metrics)`` and ``units(batch)``
    (what ``loss_sum`` sums over). ``sequences(row)`` turns one mapped row into the conversations
    encoded for it (a preference pair: prompt + chosen, prompt + rejected). The built-in ``sft`` is
    registered the same way. Called by ``xt train --objective`` and validation during training.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``xt`` group: ``cli.add_command(...)`` or ``@cli.command()``."""
