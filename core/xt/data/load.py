"""Where rows come from: generated rows, local files (json, jsonl, parquet, csv, saved ``datasets``
folders) or a hub dataset id. Every failure is an :class:`~xt.errors.XtError` naming the file.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from xt.errors import XtError, plugin_call
from xt.specs import DatasetSpec

FILE_KINDS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv",
              ".tsv": "csv", ".arrow": "arrow"}
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class RowSource:
    """Rows read from one place (a file, a generator or a hub split); ``name`` is shown in errors."""

    name: str
    rows: list[dict[str, Any]]


@dataclass
class SourcePlan:
    """What ``load_rows`` will read, resolved without reading it (used for the cache key)."""

    kind: str  # generated | files | hub
    files: list[str]
    hub_id: str | None = None

    def fingerprint(self, dataset: DatasetSpec, split: str, seed: int) -> dict[str, Any]:
        """Everything about the source that changes the rows."""
        if self.kind == "generated":
            return {"generated": callable_fingerprint(dataset.generate), "split": split, "seed": seed}
        if self.kind == "files":
            return {"files": [(os.path.basename(f), file_digest(f)) for f in self.files], "split": split}
        return {"hub": self.hub_id, "load_kwargs": repr(sorted(dataset.load_kwargs.items())), "split": split}


def callable_fingerprint(fn: Any) -> str:
    """A function's identity for cache keys: module + qualname + a hash of its module's source.

    The whole source file counts, not just the function, so edits to helpers or data tables the
    function uses (a generated dataset's facts, a map's lookup table) also rebuild the cache.
    """
    if fn is None:
        return "none"
    target = getattr(fn, "func", fn)  # functools.partial
    name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"
    try:
        source_file = inspect.getsourcefile(target)
        if source_file and os.path.isfile(source_file):
            with open(source_file, "rb") as fh:
                body = fh.read() + inspect.getsource(target).encode()
        else:
            body = inspect.getsource(target).encode()
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        body = code.co_code + repr(code.co_consts).encode() if code is not None else repr(target).encode()
    extra = repr((getattr(fn, "args", ()), sorted(getattr(fn, "keywords", {}).items()))) if fn is not target else ""
    return name + ":" + hashlib.sha256(body + extra.encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    """Content hash of a file, or of every file in a folder (saved ``datasets`` folders)."""
    h = hashlib.sha256()  # hardware-accelerated on most CPUs: about 1 GB/s
    paths = [path]
    if os.path.isdir(path):
        paths = sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files)
    for p in paths:
        h.update(os.path.relpath(p, path).encode() if p != path else b"")
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def resolve_files(patterns: Sequence[str] | str) -> list[str]:
    """Paths and globs -> existing files/folders in a stable order; a clear error for a missing one."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns:
        expanded = os.path.expanduser(str(pattern))
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded, recursive=True))
            if not matches:
                raise XtError(f"No files match '{pattern}'; check the path or glob given to --data-files.")
            files.extend(matches)
        elif os.path.exists(expanded):
            files.append(expanded)
        else:
            raise XtError(f"Data file '{pattern}' does not exist; check the path given to --data-files.")
    return list(dict.fromkeys(files))


def plan_sources(dataset: DatasetSpec, data_files: Sequence[str] | None) -> SourcePlan:
    """Generated rows win, then ``data_files`` (the option over the spec's default), then the hub id."""
    if dataset.generate is not None:
        return SourcePlan("generated", [])
    files = data_files or dataset.data_files
    if files:
        return SourcePlan("files", resolve_files(files))
    if dataset.source:
        return SourcePlan("hub", [], hub_id=dataset.source)
    raise XtError(f"Dataset '{dataset.name}' names no files and no hub id; pass local files with --data-files.")


def load_rows(dataset: DatasetSpec, plan: SourcePlan, split: str = "train", seed: int = 0) -> list[RowSource]:
    """Read the rows of every source in the plan."""
    if plan.kind == "generated":
        with plugin_call(dataset, f"generate('{split}')"):
            rows = dataset.generate(split, seed)
        return [RowSource(f"{dataset.name}:{split} (generated)", list(rows))]
    if plan.kind == "files":
        return [RowSource(path, read_file(path, split)) for path in plan.files]
    hint = dataset.offline_hint  # a plugin's own way out, e.g. a local or demo dataset
    return [RowSource(f"{plan.hub_id}:{split}", load_hub_rows(plan.hub_id or "", split, dataset.load_kwargs, hint))]


def read_file(path: str, split: str = "train") -> list[dict[str, Any]]:
    """All rows of one local file (or saved ``datasets`` folder)."""
    if os.path.isdir(path):
        return _read_saved_dataset(path, split)
    ext = os.path.splitext(path)[1].lower()
    kind = FILE_KINDS.get(ext)
    if kind is None:
        raise XtError(f"Cannot read '{path}': unknown file type '{ext}'; use .json, .jsonl, .parquet, .csv "
                      f"or a folder written by datasets' save_to_disk.")
    if os.path.getsize(path) == 0:
        raise XtError(f"Data file '{path}' is empty; point --data-files at a file with rows.")
    try:
        rows = {"json": _read_json, "jsonl": _read_jsonl, "parquet": _read_parquet, "csv": _read_csv,
                "arrow": _read_arrow}[kind](path)
    except XtError:
        raise
    except Exception as exc:
        raise XtError(f"Cannot read {kind} file '{path}': {type(exc).__name__}: {exc}.") from exc
    if not rows:
        raise XtError(f"Data file '{path}' holds no rows; point --data-files at a file with rows.")
    return rows


def _read_json(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if not text.strip():
        raise XtError(f"Data file '{path}' is empty; point --data-files at a file with rows.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{") and "\n{" in text.strip():
            return _read_jsonl(path)  # a .json file that is really JSON Lines
        raise XtError(f"Malformed JSON in '{path}' at line {exc.lineno}, column {exc.colno}: {exc.msg}; "
                      f"fix the file (or save it as .jsonl with one object per line).") from exc
    if isinstance(data, dict):
        for key in ("data", "rows", "train"):
            if isinstance(data.get(key), list):
                return data[key]
        return [data]
    if not isinstance(data, list):
        raise XtError(f"'{path}' must hold a list of row objects, got a JSON {type(data).__name__}.")
    return data


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise XtError(f"Malformed JSON in '{path}' on line {lineno}: {exc.msg}; "
                              f"each line of a .jsonl file must be one JSON object.") from exc
    return rows


def _read_parquet(path: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _read_csv(path: str) -> list[dict[str, Any]]:
    import csv

    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        rows = []
        for lineno, row in enumerate(reader, 2):
            if None in row:
                raise XtError(f"Malformed csv in '{path}' on line {lineno}: more fields than the header has columns.")
            rows.append(row)
    return rows


def _read_arrow(path: str) -> list[dict[str, Any]]:
    import pyarrow as pa

    with pa.memory_map(path) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(source).read_all()
    return table.to_pylist()


def _read_saved_dataset(path: str, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except FileNotFoundError as exc:
        raise XtError(f"'{path}' is a folder but not one written by datasets' save_to_disk; "
                      f"pass the data files inside it instead.") from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise XtError(f"Saved dataset '{path}' has no split '{split}'; it has {', '.join(ds)}.")
        ds = ds[split]
    rows = ds.to_list()
    if not rows:
        raise XtError(f"Saved dataset '{path}' holds no rows.")
    return rows


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub_rows(hub_id: str, split: str, load_kwargs: dict[str, Any], hint: str | None = None) -> list[dict[str, Any]]:
    """Rows of a hub dataset via ``datasets.load_dataset``; fails in seconds when the hub is out of reach.

    ``hint`` (a dataset's ``offline_hint``) replaces the generic advice in the error.
    """
    hint = hint or "pass local files with --data-files (json, jsonl, parquet, csv or a save_to_disk folder) instead."
    offline = _offline()
    if offline:
        from huggingface_hub import constants

        # huggingface_hub reads HF_HUB_OFFLINE once at import; if it was set later, it would still retry
        # the network, so only hand over to it when it honours offline mode.
        library_offline = bool(getattr(constants, "HF_HUB_OFFLINE", False))
    if (not offline or not library_offline) and not hub_reachable():
        raise XtError(f"The Hugging Face hub is unreachable, so dataset '{hub_id}' cannot be downloaded; {hint}")
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, split=split, **load_kwargs)
    except Exception as exc:
        why = "the hub is offline (HF_HUB_OFFLINE) and it is not cached" if offline else f"{type(exc).__name__}: {exc}"
        raise XtError(f"Could not load hub dataset '{hub_id}' ({why}); {hint}") from exc
    return ds.to_list()
