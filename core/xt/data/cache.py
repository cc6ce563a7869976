"""The on-disk cache of processed datasets.

A cache entry is a folder ``<cache dir>/<key>`` written under a temporary name and renamed into
place, so a reader never sees a half-written entry. The key hashes everything that changes the
result (see :func:`cache_key`). In a distributed run rank 0 builds while the other ranks poll for
the folder; if rank 0 fails it writes ``<key>.error`` and the others stop with its message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from xt.errors import XtError

FORMAT_VERSION = 1
POLL_SECONDS = 0.5
_STARTED_AT = time.time()
_CODE_FILES = ("process.py", "pack.py", "dataset.py", "layout.py")


def default_cache_dir() -> str:
    """``$XT_CACHE_DIR/data`` when set, else ``~/.cache/xt/data``."""
    root = os.environ.get("XT_CACHE_DIR")
    if root:
        return os.path.join(os.path.expanduser(root), "data")
    return os.path.join(os.path.expanduser("~"), ".cache", "xt", "data")


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what makes a tokenizer tokenize: its class, vocab/merges/normalizer and special tokens.

    Remembered on the tokenizer object while its size and special tokens stay the same.
    """
    try:
        state = (len(tokenizer), repr(getattr(tokenizer, "special_tokens_map", None)),
                 getattr(tokenizer, "split_special_tokens", None))
    except TypeError:
        state = None
    memo = getattr(tokenizer, "_xt_fingerprint", None)
    if state is not None and memo is not None and memo[0] == state:
        return memo[1]
    fingerprint = _tokenizer_fingerprint(tokenizer)
    if state is not None:
        try:
            tokenizer._xt_fingerprint = (state, fingerprint)
        except AttributeError:
            pass
    return fingerprint


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    parts = [type(tokenizer).__module__ + "." + type(tokenizer).__qualname__]
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        parts.append(_sha(backend.to_str()))
    else:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        parts.append(_sha(json.dumps(sorted(vocab.items()), ensure_ascii=False)))
        model_file = getattr(tokenizer, "vocab_file", None)
        if isinstance(model_file, str) and os.path.isfile(model_file):
            with open(model_file, "rb") as fh:
                parts.append(_sha(fh.read()))
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "split_special_tokens"):
        parts.append(f"{attr}={getattr(tokenizer, attr, None)!r}")
    special = getattr(tokenizer, "all_special_tokens", None)
    parts.append(repr(sorted(special)) if special else "")
    return _sha("\n".join(parts))[:32]


def template_fingerprint(template: Any) -> str:
    """The fields of a template that change token ids and labels."""
    fields = ("prefix", "system", "user", "assistant", "assistant_end", "turn_sep", "final_sep", "default_system")
    return _sha(repr([(f, _plain(getattr(template, f))) for f in fields]))[:32]


def _plain(part: Any) -> Any:
    if isinstance(part, str):
        return (type(part).__name__, str(part))
    if isinstance(part, (list, tuple)):
        return [_plain(p) for p in part]
    return repr(part)


def code_fingerprint() -> str:
    """A hash of the processing code, so an upgrade of xt rebuilds old entries."""
    here = os.path.dirname(__file__)
    h = hashlib.sha256(str(FORMAT_VERSION).encode())
    for name in _CODE_FILES:
        with open(os.path.join(here, name), "rb") as fh:
            h.update(fh.read())
    import xt.template

    with open(xt.template.__file__, "rb") as fh:
        h.update(fh.read())
    return h.hexdigest()[:16]


def cache_key(parts: dict[str, Any]) -> str:
    """The folder name of a cache entry: a hash of the key parts (plus the code version)."""
    return _sha(json.dumps({**parts, "code": code_fingerprint()}, sort_keys=True, default=str))[:40]


def _run_id() -> str | None:
    rid = os.environ.get("TORCHELASTIC_RUN_ID")
    if rid and rid != "none":
        return rid
    if os.environ.get("MASTER_PORT"):
        return f"{os.environ.get('MASTER_ADDR', '')}:{os.environ['MASTER_PORT']}"
    return None


def error_marker(entry: str) -> str:
    return entry.rstrip("/\\") + ".error"


def write_error_marker(entry: str, message: str) -> None:
    """Tell waiting ranks that the build failed (atomically, like the entry itself)."""
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), prefix=".error-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"message": message, "run_id": _run_id(), "time": time.time()}, fh)
    os.replace(tmp, error_marker(entry))


def _fresh_error(entry: str) -> str | None:
    """The message of an error marker written for this run (stale markers from old runs are ignored)."""
    marker = error_marker(entry)
    try:
        with open(marker, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return None
    run_id = _run_id()
    fresh = info.get("run_id") == run_id if run_id is not None else info.get("time", 0) >= _STARTED_AT - 60
    return str(info.get("message")) if fresh else None


def is_complete(entry: str) -> bool:
    return os.path.isfile(os.path.join(entry, "stats.json"))


def wait_for_entry(entry: str, rank: int, poll: float = POLL_SECONDS) -> None:
    """Block until rank 0 has written ``entry`` or reported failure (no fixed timeout)."""
    started = last_note = time.monotonic()
    while not is_complete(entry):
        message = _fresh_error(entry)
        if message is not None:
            raise XtError(f"Rank 0 failed to build the dataset this rank {rank} waits for: {message}")
        if time.monotonic() - last_note > 120:
            last_note = time.monotonic()
            logging.getLogger("xt.data").warning(
                "rank %d has waited %.0f s for rank 0 to write the data cache %s; the cache dir must be a folder "
                "all ranks see (set --cache-dir / XT_CACHE_DIR)", rank, last_note - started, entry)
        time.sleep(poll)


def write_entry(entry: str, save: Callable[[str], None]) -> bool:
    """Write an entry through ``save(folder)`` into a temporary folder, then rename it into place.

    Returns False when another process finished the same entry first (its copy is kept).
    """
    parent = os.path.dirname(entry)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(entry) + "-")
    try:
        save(tmp)
        try:
            os.rename(tmp, entry)
        except OSError:
            if is_complete(entry):
                return False
            shutil.rmtree(entry, ignore_errors=True)  # an incomplete leftover: replace it
            os.rename(tmp, entry)
        return True
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def clear_error(entry: str) -> None:
    try:
        os.remove(error_marker(entry))
    except FileNotFoundError:
        pass
