"""The data pipeline: rows -> conversations -> samples -> packed rows (or single samples), cached.

``build_dataset`` is what training calls; ``load_conversations`` is what eval and ``xt data``
call to see the mapped conversations themselves.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from xt.data.cache import (
    cache_key,
    clear_error,
    default_cache_dir,
    is_complete,
    template_fingerprint,
    tokenizer_fingerprint,
    wait_for_entry,
    write_entry,
    write_error_marker,
)
from xt.data.dataset import ProcessedDataset
from xt.data.layout import CAUSAL_SHARE_DEFAULT, choose_layout
from xt.data.load import callable_fingerprint, load_rows, plan_sources
from xt.data.pack import fill_ratio, pack_best_fit
from xt.data.process import process_rows, reshapes_rows
from xt.errors import XtError
from xt.specs import DatasetSpec, ModelSpec, ObjectiveSpec, RunContext, TemplateSpec
from xt.template import IGNORE_INDEX

log = logging.getLogger("xt.data")


@dataclass
class DataOptions:
    """How to load and process a dataset (``xt train`` / ``xt data`` options)."""

    data_files: list[str] | None = None
    split: str = "train"
    max_length: int = 2048
    length_policy: str = "truncate"  # or "drop"
    pack: bool | str = True  # or "auto": packed rows or length-grouped batches, whichever is estimated cheaper
    micro_batch_size: int = 1  # rows per batch, for the "auto" estimate
    attention_weight: float = 0.0  # cost of an attention pair vs a token, for "auto" (xt.data.layout)
    causal_share: float = CAUSAL_SHARE_DEFAULT  # how much of the L x L square causal attention costs, for "auto"
    skip_bad_rows: bool = False
    num_proc: int = 1
    cache_dir: str | None = None
    use_cache: bool = True
    seed: int = 0
    context: RunContext = field(default_factory=RunContext)  # image folder, model args, rank ... for maps
    objective: ObjectiveSpec | None = None  # rows as the objective takes them (None: conversations, as sft)


def choose_template(model_spec: ModelSpec | None, dataset_spec: DatasetSpec | None,
                    explicit: str | None = None) -> TemplateSpec:
    """The template to use: the explicit name, else the model's default, else the dataset's, else ``auto``
    (the tokenizer's own chat template when it has one, else ``default``)."""
    from xt.plugins import get_registry

    name = explicit or (model_spec.default_template if model_spec else None) \
        or (dataset_spec.default_template if dataset_spec else None) or "auto"
    return get_registry().get("templates", name)


def _sources(dataset: DatasetSpec, options: DataOptions, plan: Any) -> list[tuple[str, list[Any]]]:
    if options.split not in dataset.splits and plan.kind == "generated":
        raise XtError(f"Dataset '{dataset.name}' has no split '{options.split}'; it has {', '.join(dataset.splits)}.")
    return [(s.name, s.rows) for s in load_rows(dataset, plan, options.split, options.seed)]


def rows_objective(dataset: DatasetSpec, options: DataOptions) -> ObjectiveSpec | None:
    """The objective rows are checked and expanded by: the options', else the one the dataset names."""
    if options.objective is not None or dataset.objective is None:
        return options.objective
    from xt.plugins import get_registry

    return get_registry().get("objectives", dataset.objective)


def load_conversations(dataset: DatasetSpec, options: DataOptions) -> list[dict[str, Any]]:
    """The dataset's rows mapped and validated (bad rows fail, or are skipped when asked).

    Rows are conversations, or the row shape of the dataset's objective (e.g. prompt, chosen, rejected).
    """
    plan = plan_sources(dataset, options.data_files)
    result = process_rows(_sources(dataset, options, plan), dataset, template=None, tokenizer=None,
                          max_length=max(1, options.max_length), policy=options.length_policy,
                          skip_bad_rows=options.skip_bad_rows, num_proc=options.num_proc, context=options.context,
                          objective=rows_objective(dataset, options))
    if result.bad:
        log.warning("skipped %d bad rows of dataset '%s'", len(result.bad), dataset.name)
    if not result.conversations:
        raise XtError(f"Dataset '{dataset.name}' has no usable rows; check its files or map.")
    return result.conversations


def build_dataset(dataset: DatasetSpec, template: TemplateSpec, tokenizer: Any, options: DataOptions, *,
                  rank: int = 0, world_size: int = 1) -> ProcessedDataset:
    """Load, map, template, apply the length policy and pack; reuse the on-disk cache when it matches."""
    template = template.for_tokenizer(tokenizer)
    plan = plan_sources(dataset, options.data_files)
    options = dataclasses.replace(options, objective=rows_objective(dataset, options))
    if not options.use_cache:
        return _build(dataset, template, tokenizer, options, plan)
    parts = {
        "source": plan.fingerprint(dataset, options.split, options.seed),
        "dataset": [dataset.name, callable_fingerprint(dataset.map_row)],
        "template": template_fingerprint(template),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": options.max_length,
        "length_policy": options.length_policy,
        "pack": options.pack,
        "skip_bad_rows": options.skip_bad_rows,
    }
    if options.pack == "auto":
        parts.update(micro_batch_size=options.micro_batch_size, attention_weight=options.attention_weight,
                     causal_share=options.causal_share)
    if dataset.pass_context:  # the map sees the context: a different image folder is different data
        parts["context"] = options.context.data_fingerprint()
    if reshapes_rows(options.objective):  # the objective checks rows and makes their sequences
        objective = options.objective
        parts["objective"] = [objective.name, callable_fingerprint(objective.sequences),
                              callable_fingerprint(objective.row_problems)]
    entry = os.path.join(options.cache_dir or default_cache_dir(), cache_key(parts))
    if not is_complete(entry):
        if rank != 0 and world_size > 1:
            wait_for_entry(entry, rank)
        else:
            clear_error(entry)
            try:
                built = _build(dataset, template, tokenizer, options, plan)
            except Exception as exc:
                if world_size > 1:
                    write_error_marker(entry, str(exc) if isinstance(exc, XtError) else f"{type(exc).__name__}: {exc}")
                raise
            try:
                write_entry(entry, built.save)
            except (OSError, TypeError, ValueError) as exc:  # unwritable dir or images json cannot hold
                if world_size > 1:
                    write_error_marker(entry, f"could not write the data cache at {entry}: {exc}")
                    raise XtError(f"Could not write the data cache at '{entry}' ({exc}); other ranks need it: "
                                  f"set --cache-dir (or XT_CACHE_DIR) to a writable shared folder.") from exc
                log.warning("could not write the data cache at %s: %s", entry, exc)
                built.stats.update(cached=False, cache_path=None)
                return built
            built.stats.update(cached=False, cache_path=entry)
            return built
    loaded = ProcessedDataset.load(entry)
    loaded.stats.update(cached=True, cache_path=entry)
    return loaded


def encode_parallelism(num_proc: int, rows: int) -> dict[str, int]:
    """Processes that mapped and tokenized, and the tokenizer's own threads in each (its Rust pool)."""
    processes = num_proc if num_proc > 1 and rows >= 2 * num_proc else 1
    if processes > 1 or os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off", "no"):
        threads = 1  # forked workers run the tokenizer single-threaded (see xt.data.process)
    else:
        threads = int(os.environ.get("RAYON_NUM_THREADS") or os.environ.get("RAYON_RS_NUM_CPUS") or os.cpu_count() or 1)
    return {"encode_processes": processes, "encode_threads": threads}


@contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, back on after it (if it was on).

    A build allocates a few dicts per row (mapped conversations, messages) that reference counting
    frees; with the collector on, that many allocations set off full passes over every object the
    process holds (transformers' included), a fifth of a build's time on the Alpaca rows.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build(dataset: DatasetSpec, template: TemplateSpec, tokenizer: Any, options: DataOptions,
           plan: Any) -> ProcessedDataset:
    with cycle_collection_paused():
        return _build_rows(dataset, template, tokenizer, options, plan)


def _build_rows(dataset: DatasetSpec, template: TemplateSpec, tokenizer: Any, options: DataOptions,
                plan: Any) -> ProcessedDataset:
    started = time.perf_counter()
    result = process_rows(_sources(dataset, options, plan), dataset, template=template, tokenizer=tokenizer,
                          max_length=options.max_length, policy=options.length_policy,
                          skip_bad_rows=options.skip_bad_rows, num_proc=options.num_proc, context=options.context,
                          objective=options.objective)
    counts = result.counts
    if result.bad:
        log.warning("skipped %d bad rows of dataset '%s'", len(result.bad), dataset.name)
    lengths = result.lengths
    if lengths is None or not len(lengths):
        raise XtError(f"No sample of dataset '{dataset.name}' is left after the length policy "
                      f"({counts['dropped']} longer than max_length {options.max_length} dropped, "
                      f"{counts['no_labels']} without reply tokens after truncation); raise max_length (xt train --set max_length=N, xt data --max-length N).")
    length_list = lengths.tolist()
    groups = result.group_sizes  # with an objective: consecutive sequences per sample, packed whole
    sample_lengths = length_list if groups is None else _group_lengths(length_list, groups)
    capacity = options.max_length * (max(groups, default=1) if groups else 1)
    choice = choose_layout(sample_lengths, capacity, options.micro_batch_size, options.attention_weight,
                           options.seed, causal=options.causal_share) if options.pack == "auto" else None
    pack = choice["layout"] == "packed" if choice else bool(options.pack)
    rows = pack_best_fit(sample_lengths, capacity) if pack else [[i] for i in range(len(sample_lengths))]
    if groups is not None:
        rows = _sequences_of_rows(rows, groups)
    stats: dict[str, Any] = {
        "dataset": dataset.name,
        "template": template.name,
        "rows": counts["rows"],
        "skipped": len(result.bad),
        "truncated": counts["truncated"],
        "dropped": counts["dropped"] + counts["no_labels"],
        "dropped_too_long": counts["dropped"],
        "dropped_no_labels": counts["no_labels"],
        "samples": len(sample_lengths),
        "sequences_per_sample": max(groups, default=1) if groups is not None else 1,
        "packed": pack,
        "layout": "packed" if pack else ("grouped" if choice else "single"),
        "layout_choice": choice,
        "packed_rows": len(rows),
        "tokens": int(lengths.sum()),
        "label_tokens": int((result.labels != IGNORE_INDEX).sum()),
        "max_length": options.max_length,
        "fill": round(fill_ratio(length_list, rows, capacity), 4) if pack else None,
        "build_seconds": round(time.perf_counter() - started, 3),
        **encode_parallelism(options.num_proc, counts["rows"]),
        "cached": False,
        "cache_path": None,
    }
    return ProcessedDataset.from_arrays(result.ids, result.labels, lengths, rows, result.images, stats, groups)


def _group_lengths(lengths: list[int], groups: list[int]) -> list[int]:
    """Tokens per sample: the sum over its consecutive sequences."""
    out, start = [], 0
    for size in groups:
        out.append(sum(lengths[start:start + size]))
        start += size
    return out


def _sequences_of_rows(rows: list[list[int]], groups: list[int]) -> list[list[int]]:
    """Rows of sample indices -> rows of the samples' sequence indices (in order)."""
    first = [0]
    for size in groups:
        first.append(first[-1] + size)
    return [[j for i in members for j in range(first[i], first[i + 1])] for members in rows]
