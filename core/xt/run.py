"""What a run directory knows about itself: ``RUN/run.json``.

Written by ``xt train`` when a run starts and updated when it finishes; read by ``xt chat``,
``xt merge`` and ``xt export`` so that ``xt chat RUN`` needs no other argument.

Layout of a run directory::

    RUN/config.yaml        the fully resolved TrainConfig (``xt train --config RUN/config.yaml`` repeats it)
    RUN/run.json           RunInfo below
    RUN/metrics.jsonl      one JSON object per logged step / eval
    RUN/tensorboard/       TensorBoard events
    RUN/loss.png           loss curve, written at the end
    RUN/eval/step-N.jsonl  generation samples (prompt, reference, prediction, correct)
    RUN/checkpoints/step-N DeepSpeed checkpoints (+ sampler / RNG state), the last K kept
    RUN/eval-results/      results of ``xt eval`` (results.json, results.md, samples), when a plugin provides it
    RUN/final/             the result: a PEFT adapter (adapter_config.json + adapter_model.safetensors)
                           or a full model (config.json + model.safetensors), always with the tokenizer,
                           generation_config.json and the chat template, loadable without xt
    RUN/.xt-lock           who uses the folder (pid, host, start time), held with flock while
                           'xt train', 'xt export' or 'xt merge' work on it

A new run is built in a hidden sibling folder and renamed into place only once it starts, so an
invalid ``--overwrite`` never touches the old run. The operating system drops a lock when its
process dies, so a lock file left by a killed process is stale and simply taken over.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from xt.errors import XtError

RUN_FILE = "run.json"
EVAL_RESULTS_DIR = "eval-results"  # results.json: {"results": {task: {metric: value}}, ...}
LOCK_FILE = ".xt-lock"


@dataclass
class RunInfo:
    model: str                      # registered model name (or hub id / folder for the generic loader)
    model_source: str | None        # the hub id or folder the weights came from (None: built from a config)
    template: str                   # registered template name used for training (chat reuses it)
    method: str = "lora"            # lora | qlora | full
    dataset: str | None = None
    kind: str = "causal-lm"         # causal-lm | multimodal
    final_dir: str | None = None    # relative to the run dir; None until training finished
    adapter: bool = True            # final_dir holds a PEFT adapter (else a full model)
    status: str = "running"         # running | finished | failed
    xt_version: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)  # extra load_model kwargs the run used
    objective: str = "sft"          # the training objective (xt list objectives)
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: str | os.PathLike) -> None:
        from xt.files import atomic_write_text

        atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(asdict(self), indent=2))


def load_run(run_dir: str | os.PathLike) -> RunInfo:
    """Read ``RUN/run.json``; a clear error when the folder is not a run directory."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise XtError(f"'{run_dir}' is not an xt run directory (no {RUN_FILE}); pass the --output folder of "
                      f"'xt train', or a model name / folder.")
    try:
        data = json.loads(path.read_text())
        known = set(RunInfo.__dataclass_fields__)
        return RunInfo(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError) as exc:
        raise XtError(f"{path} is unreadable ({exc}); it was not written by this version of xt.") from exc


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / RUN_FILE).is_file()


class RunLock:
    """An exclusive ``flock`` on ``FOLDER/.xt-lock``; released by :meth:`release` or when the process dies."""

    def __init__(self, folder: str | os.PathLike, purpose: str) -> None:
        path = Path(folder) / LOCK_FILE
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text().strip() or "another process"
            self.release()
            raise XtError(f"'{folder}' is in use by {holder}; wait for it to finish or stop it, or choose "
                          f"another folder.") from None
        os.ftruncate(self.fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.write(self.fd, f"'xt {purpose}' (pid {os.getpid()} on {socket.gethostname()}, since {stamp})".encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


@contextmanager
def locked(folder: str | os.PathLike, purpose: str) -> Iterator[None]:
    """Hold a folder's lock for the duration of a ``with`` block (no-op when the folder does not exist)."""
    if not Path(folder).is_dir():
        yield
        return
    lock = RunLock(folder, purpose)
    try:
        yield
    finally:
        lock.release()


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to mix runs unless --overwrite, and never delete a folder that is not an xt run or is in use."""
    if _check_contents(run_dir, overwrite):
        with locked(run_dir, "train"):
            pass


def _check_contents(run_dir: Path, overwrite: bool) -> bool:
    """True when ``run_dir`` holds a run that ``--overwrite`` may replace; raises when it may not."""
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise XtError(f"Output path '{run_dir}' is a file; choose a folder path for --output.")
    if not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return False
    if not overwrite:
        raise XtError(f"Output folder '{run_dir}' already holds a run; pass --overwrite to replace it, "
                      f"--resume to continue it, or --output NEW_DIR.")
    if not is_run_dir(run_dir):
        raise XtError(f"Output folder '{run_dir}' is not empty and not an xt run; refusing to delete it "
                      f"with --overwrite. Choose another --output.")
    return True


def start_run_dir(run_dir: Path, overwrite: bool, write: Callable[[Path], None]) -> RunLock:
    """Build the run folder in a hidden sibling with ``write(folder)``, then swap it in, locked.

    The old run (``--overwrite``) is locked, checked again and removed only after the swap.
    """
    from xt.files import make_sibling, swap_in

    check_new_run_dir(run_dir, overwrite)
    new = make_sibling(run_dir, "new")
    lock = RunLock(new, "train")
    try:
        write(new)
        with locked(run_dir, "train"):
            _check_contents(run_dir, overwrite)
            swap_in(new, run_dir)
    except BaseException:
        lock.release()
        shutil.rmtree(new, ignore_errors=True)
        raise
    return lock


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record in ``run.json`` that a run stopped before finishing, and why."""
    try:
        info = load_run(run_dir)
    except XtError:
        return
    if info.status == "running":
        info.status = "failed"
        info.extra["error"] = reason
        info.save(run_dir)
