"""Rows -> conversations (the dataset's map, validated) -> samples (template + length policy).

Bad rows are collected with their file and index; the caller either fails with the first few
or skips them and reports how many. ``num_proc > 1`` splits the rows over forked processes.

With an objective whose rows become several sequences (a preference pair: prompt + chosen,
prompt + rejected), each mapped row is expanded into its conversations, all encoded alike, and the
row's sequences stay one *sample*: the length policy drops them together (``group_sizes`` says how
many consecutive sequences each sample has).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from xt.arrays import gather_index
from xt.errors import PluginError, XtError, describe_spec
from xt.specs import DatasetSpec, ObjectiveSpec, RowError, RunContext, TemplateSpec, conversation_problems
from xt.template import IGNORE_INDEX

LENGTH_POLICIES = ("truncate", "drop")
SHOWN_BAD_ROWS = 5
#: How many conversations went through the tokenizer in this process (tests check a cache hit with it).
counters = {"encoded": 0}

_ROW_ERRORS = (RowError, KeyError, TypeError, ValueError, AttributeError, IndexError)


@dataclass
class BadRow:
    source: str
    index: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source} row {self.index}: {self.reason}"


@dataclass
class Mapped:
    """Conversations of valid rows (or, with an objective, their sequences) and the rows that failed."""

    conversations: list[dict[str, Any]] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    rows: int = 0
    group_sizes: list[int] = field(default_factory=list)  # with an objective: sequences per row


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    if isinstance(exc, RowError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def map_rows(dataset: DatasetSpec, rows: Sequence[Any], source: str, start: int = 0,
             context: RunContext | None = None, objective: ObjectiveSpec | None = None,
             expand: bool = True) -> Mapped:
    """Apply ``dataset.map_row`` (with ``context`` when the dataset asks for it) and validate each conversation.

    With ``objective`` the mapped row is checked by the objective and (``expand``) replaced by its sequences.
    """
    out = Mapped(rows=len(rows))
    for offset, row in enumerate(rows):
        index = start + offset
        if not isinstance(row, dict):
            out.bad.append(BadRow(source, index, f"a row must be an object, got {type(row).__name__}"))
            continue
        try:
            conv = dataset.map(row, context)
        except _ROW_ERRORS as exc:
            out.bad.append(BadRow(source, index, _reason(exc)))
            continue
        except Exception as exc:
            raise PluginError(f"map_row of {describe_spec(dataset)} crashed on {source} row {index} with "
                              f"{type(exc).__name__}: {exc}; this is a bug in the map (it should raise RowError).") from exc
        problems = objective.check_row(conv) if objective is not None else conversation_problems(conv)
        if problems:
            out.bad.append(BadRow(source, index, "; ".join(problems)))
            continue
        if objective is None or not expand:
            out.conversations.append(conv)
            continue
        sequences, problem = _sequences_of(objective, conv)
        if problem:
            out.bad.append(BadRow(source, index, problem))
            continue
        out.conversations.extend(sequences)
        out.group_sizes.append(len(sequences))
    return out


def _sequences_of(objective: ObjectiveSpec, row: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(the row's conversations, None) or ([], why they cannot be used)."""
    try:
        sequences = objective.row_sequences(row)
    except _ROW_ERRORS as exc:
        return [], _reason(exc)
    except Exception as exc:
        raise PluginError(f"sequences of {describe_spec(objective)} crashed with {type(exc).__name__}: {exc}; "
                          f"this is a bug in the objective (it should raise RowError).") from exc
    if not sequences:
        return [], f"objective '{objective.name}' made no sequence of this row"
    for k, conv in enumerate(sequences):
        problems = conversation_problems(conv)
        if problems:
            return [], f"sequence {k} made by objective '{objective.name}': " + "; ".join(problems)
    return sequences, None


def bad_rows_error(dataset: DatasetSpec, bad: list[BadRow], total: int) -> XtError:
    """One message naming the first few bad rows, the count and how to go on."""
    shown = "; ".join(str(b) for b in bad[:SHOWN_BAD_ROWS])
    more = f" (first {SHOWN_BAD_ROWS} shown)" if len(bad) > SHOWN_BAD_ROWS else ""
    return XtError(f"{len(bad)} of {total} rows of dataset '{dataset.name}' cannot be used{more}: {shown}; "
                   f"fix these rows or pass --skip-bad-rows (skip_bad_rows=True) to skip them.")


def apply_length_policy(sample: dict[str, Any], max_length: int, policy: str) -> tuple[dict[str, Any] | None, str]:
    """Truncate or drop a too-long sample; returns (sample or None, 'kept'|'truncated'|'dropped'|'no_labels').

    The first label of every sample is set to -100: in a packed row the token before it belongs to
    another sample, and the causal-LM loss at position t predicts ``labels[t + 1]``.
    """
    ids, labels = sample["input_ids"], sample["labels"]
    status = "kept"
    if len(ids) > max_length:
        if policy == "drop":
            return None, "dropped"
        ids, labels = ids[:max_length], labels[:max_length]
        status = "truncated"
    if labels and labels[0] != IGNORE_INDEX:
        labels = [IGNORE_INDEX] + labels[1:]
    if labels.count(IGNORE_INDEX) == len(labels):
        return None, "no_labels"
    out = dict(sample, input_ids=ids, labels=labels)
    return out, status


@dataclass
class ChunkResult:
    """Mapped conversations (map only) or encoded samples as flat arrays (``ids``, ``labels``, ``lengths``)."""

    conversations: list[dict[str, Any]] = field(default_factory=list)
    ids: Any = None
    labels: Any = None
    lengths: Any = None
    images: list[Any] | None = None
    group_sizes: list[int] | None = None  # with an objective: sequences per kept sample
    bad: list[BadRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"rows": 0, "truncated": 0, "dropped": 0, "no_labels": 0})


def encode_conversations(conversations: Iterable[dict[str, Any]], template: TemplateSpec, tokenizer: Any,
                         max_length: int, policy: str, result: ChunkResult,
                         group_sizes: Sequence[int] | None = None) -> None:
    """Template + tokenize (batched) + length policy, vectorized; fills ``result``'s arrays.

    Same rules as :func:`apply_length_policy`: too long -> truncated (or dropped), first label of
    every sample -100, a sample without any label token left is dropped. With ``group_sizes``
    (consecutive sequences forming one sample; complete once ``conversations`` is exhausted) a
    sample is dropped when any of its sequences is, and the counts count samples.
    """
    import numpy as np

    read: list[dict[str, Any]] = []
    ids, labels, lengths = template.compile(tokenizer).encode_arrays(_recorded(conversations, read))
    conversations = read
    counters["encoded"] += len(conversations)
    starts = np.cumsum(lengths) - lengths
    too_long = lengths > max_length
    keep = np.ones(len(lengths), dtype=bool)
    if policy == "drop":
        keep &= ~too_long
        if group_sizes is None:
            result.counts["dropped"] += int(too_long.sum())
    new_lengths = np.minimum(lengths, max_length)
    if len(labels):
        labels[starts[lengths > 0]] = IGNORE_INDEX
    # Label tokens inside each (truncated) sample: per-sample sums, recounted only for cut samples.
    label_mask = (labels != IGNORE_INDEX).view(np.int8)
    nonempty = lengths > 0
    counts = np.zeros(len(lengths), dtype=np.int64)
    if nonempty.any():
        counts[nonempty] = np.add.reduceat(label_mask, starts[nonempty], dtype=np.int64)
    for i in np.flatnonzero(too_long).tolist():
        counts[i] = int(label_mask[starts[i]:starts[i] + max_length].sum(dtype=np.int64))
    has_labels = counts > 0
    if group_sizes is not None:
        result.group_sizes = _keep_groups(group_sizes, keep, has_labels, too_long, result.counts)
    else:
        result.counts["no_labels"] += int((keep & ~has_labels).sum())
        keep &= has_labels
        result.counts["truncated"] += int((keep & too_long).sum())
    if keep.all() and not too_long.any():
        result.ids, result.labels, result.lengths = ids, labels, lengths
    else:
        index = gather_index(starts[keep], new_lengths[keep])
        result.ids, result.labels, result.lengths = ids[index], labels[index], new_lengths[keep]
    if any(conv.get("images") for conv in conversations):
        result.images = [list(conv.get("images") or []) for conv, k in zip(conversations, keep.tolist()) if k]


def _recorded(items: Iterable[Any], into: list[Any]) -> Iterator[Any]:
    """``items``, each also appended to ``into`` as it is read."""
    for item in items:
        into.append(item)
        yield item


def _group_starts(group_sizes: Sequence[int]) -> Any:
    import numpy as np

    sizes = np.asarray(group_sizes, dtype=np.int64)
    return np.cumsum(sizes) - sizes


def _keep_groups(group_sizes: Sequence[int], keep: Any, has_labels: Any, too_long: Any,
                 counts: dict[str, int]) -> list[int]:
    """Count drops and truncations per sample, mark a sample's sequences kept only if all are; kept sizes."""
    import numpy as np

    sizes = np.asarray(group_sizes, dtype=np.int64)
    starts = _group_starts(sizes)

    def every(flags: Any) -> Any:
        return np.minimum.reduceat(flags.astype(np.int8), starts).astype(bool) if len(flags) else flags

    def some(flags: Any) -> Any:
        return np.maximum.reduceat(flags.astype(np.int8), starts).astype(bool) if len(flags) else flags

    kept_length = every(keep)  # keep is False only for sequences the "drop" policy dropped
    counts["dropped"] += int((~kept_length).sum())
    labelled = every(has_labels)
    counts["no_labels"] += int((kept_length & ~labelled).sum())
    kept = kept_length & labelled
    counts["truncated"] += int((kept & some(too_long)).sum())
    keep[:] = np.repeat(kept, sizes)
    return sizes[kept].tolist()


# Work handed to forked workers (functions in specs may be closures that do not pickle).
_job: dict[str, Any] = {}
#: Rows mapped at a time: their conversations go on to the tokenizer while the next rows are mapped.
MAP_BLOCK = 1024


class _UnusableRows(Exception):
    """Raised into the encoder when bad rows will fail the build: nothing more to encode."""


def _process_chunk(chunk: list[tuple[int, int, int]]) -> ChunkResult:
    """Map (and encode) rows ``start:stop`` of the sources named by index in ``_job`` (no row pickling)."""
    job = _job
    result = ChunkResult()
    group_sizes: list[int] | None = [] if job["objective"] is not None and job["encode"] else None
    mapped = _mapped_blocks(chunk, result, group_sizes, stop_on_bad=job["encode"] and not job["skip_bad_rows"])
    if not job["encode"]:
        result.conversations = [conv for block in mapped for conv in block]
        return result
    try:
        encode_conversations(chain.from_iterable(mapped), job["template"], job["tokenizer"], job["max_length"],
                             job["policy"], result, group_sizes)
    except _UnusableRows:
        pass  # process_rows fails with the bad rows collected
    return result


def _mapped_blocks(chunk: list[tuple[int, int, int]], result: ChunkResult, group_sizes: list[int] | None,
                   stop_on_bad: bool) -> Iterator[list[dict[str, Any]]]:
    """The conversations of the chunk's rows, ``MAP_BLOCK`` rows at a time; bad rows go to ``result``.

    With ``stop_on_bad`` every row is still mapped (to count the bad ones) but no block after the
    first bad row is given out, and :class:`_UnusableRows` is raised at the end.
    """
    job = _job
    for source_index, start, stop in chunk:
        name, rows = job["sources"][source_index]
        for at in range(start, stop, MAP_BLOCK):
            mapped = map_rows(job["dataset"], rows[at:min(stop, at + MAP_BLOCK)], name, at, job["context"],
                              job["objective"], expand=job["encode"])
            result.bad.extend(mapped.bad)
            result.counts["rows"] += mapped.rows
            if group_sizes is not None:
                group_sizes.extend(mapped.group_sizes)
            if not (stop_on_bad and result.bad):
                yield mapped.conversations
    if stop_on_bad and result.bad:
        raise _UnusableRows


def _chunks(sources: Sequence[tuple[str, list[Any]]], n_chunks: int) -> list[list[tuple[int, int, int]]]:
    """Split the rows of all sources into ``n_chunks`` runs of about equal size."""
    total = sum(len(rows) for _, rows in sources)
    size = max(1, -(-total // max(1, n_chunks)))
    chunks: list[list[tuple[int, int, int]]] = [[]]
    room = size
    for source_index, (_, rows) in enumerate(sources):
        start = 0
        while start < len(rows):
            take = min(room, len(rows) - start)
            chunks[-1].append((source_index, start, start + take))
            start += take
            room -= take
            if room == 0:
                chunks.append([])
                room = size
    return [c for c in chunks if c]


def reshapes_rows(objective: ObjectiveSpec | None) -> bool:
    """Whether ``objective`` checks rows or makes their sequences itself (``sft`` does neither)."""
    return objective is not None and (objective.sequences is not None or objective.row_problems is not None)


def process_rows(sources: Sequence[tuple[str, list[Any]]], dataset: DatasetSpec, *, template: TemplateSpec | None,
                 tokenizer: Any, max_length: int, policy: str, skip_bad_rows: bool, num_proc: int = 1,
                 context: RunContext | None = None, objective: ObjectiveSpec | None = None) -> ChunkResult:
    """Map (and, with a template, encode) every row; raises for bad rows unless ``skip_bad_rows``.

    With ``objective`` (and a template) rows are checked by it and expanded into its sequences;
    objectives whose rows stay one conversation (``sequences`` None, like ``sft``) change nothing.
    """
    objective = objective if reshapes_rows(objective) else None
    if policy not in LENGTH_POLICIES:
        raise XtError(f"Unknown length policy '{policy}'; use one of {', '.join(LENGTH_POLICIES)}.")
    if max_length < 1:
        raise XtError(f"max_length must be a positive number of tokens, got {max_length}.")
    _job.clear()
    _job.update(sources=list(sources), dataset=dataset, template=template, tokenizer=tokenizer, max_length=max_length, policy=policy,
                skip_bad_rows=skip_bad_rows, encode=template is not None, context=context, objective=objective)
    total = sum(len(rows) for _, rows in sources)
    try:
        if num_proc > 1 and total >= 2 * num_proc:
            chunks = _chunks(sources, num_proc)
            previous = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # forked workers: no nested Rust thread pools
            try:
                with multiprocessing.get_context("fork").Pool(num_proc) as pool:
                    parts = pool.map(_process_chunk, chunks, chunksize=1)
            finally:
                if previous is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = previous
            if template is not None:
                counters["encoded"] += sum(p.counts["rows"] - len(p.bad) for p in parts)
        else:
            parts = [_process_chunk(c) for c in _chunks(sources, 1)]
    finally:
        _job.clear()
    result = ChunkResult()
    for part in parts:
        result.conversations.extend(part.conversations)
        result.bad.extend(part.bad)
        for key, value in part.counts.items():
            result.counts[key] += value
    encoded = [p for p in parts if p.ids is not None]
    if encoded:
        import numpy as np

        result.ids = np.concatenate([p.ids for p in encoded])
        result.labels = np.concatenate([p.labels for p in encoded])
        result.lengths = np.concatenate([p.lengths for p in encoded])
        if objective is not None:
            result.group_sizes = [size for p in encoded for size in (p.group_sizes or [])]
        if any(p.images is not None for p in encoded):
            result.images = [img for p in encoded for img in (p.images or [[]] * len(p.lengths))]
    if result.bad and not skip_bad_rows:
        raise bad_rows_error(dataset, result.bad, result.counts["rows"])
    return result
