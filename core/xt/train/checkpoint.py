"""Checkpoints that survive a crash mid-save and resume a run exactly.

``RUN/checkpoints/step-N/`` holds DeepSpeed's model / optimizer / scheduler states
(``engine.save_checkpoint``), ``xt_state.json`` (step, epoch, sampler position, metrics so far) and
``xt_rng_rank{R}.pt`` (python, numpy and torch RNG states of each rank). A checkpoint is written to
``.tmp-step-N``, fsync'd and renamed when complete (re-saving an existing step moves the old one
aside first and deletes it only after the rename); ``RUN/checkpoints/latest`` names the newest
complete one and is replaced atomically, so a crash during a save leaves the previous checkpoint
usable. On resume a checkpoint whose files are truncated or corrupt is skipped, saying so, for the
previous complete one.

Nothing is unpickled freely: every ``.pt`` file is read with ``torch.load(weights_only=True)`` (also
DeepSpeed's own loads, forced through ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), which admits tensors, plain
containers and the few DeepSpeed types in :data:`SAFE_GLOBALS`; a file holding anything else is
refused without running it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xt.errors import XtError, first_line
from xt.files import atomic_write_text, fsync_tree
from xt.train.dist import barrier

LATEST = "latest"
STATE_FILE = "xt_state.json"
RNG_FILE = "xt_rng_rank{rank}.pt"
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def rng_state() -> dict[str, Any]:
    """RNG states as plain types (loadable with ``torch.load(weights_only=True)``)."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dirs(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_problem(ckpt_dir: Path) -> str | None:
    """Why ``ckpt_dir`` cannot be resumed from (missing, truncated or corrupt files), or None."""
    try:
        state = json.loads((ckpt_dir / STATE_FILE).read_text())
        if not isinstance(state, dict) or "step" not in state or "sampler" not in state:
            return f"{STATE_FILE} lacks the step or sampler position"
    except (OSError, ValueError) as exc:
        return f"{STATE_FILE} is unreadable ({first_line(exc)})"
    if not (ckpt_dir / RNG_FILE.format(rank=0)).is_file():
        return f"{RNG_FILE.format(rank=0)} (the random-number states) is missing"
    tensors = sorted(ckpt_dir.glob("*.pt"))
    if len(tensors) < 2:
        return "the model state files are missing"
    for path in tensors:
        if not zipfile.is_zipfile(path):
            return f"{path.name} is truncated or not a torch file"
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None:
                return f"{path.name} is corrupt (checksum mismatch)"
    return None


def restore_interrupted_resaves(ckpt_root: Path) -> None:
    """Put back ``.old-step-N`` when a re-save of ``step-N`` was killed between its two renames."""
    if not ckpt_root.is_dir():
        return
    for old in ckpt_root.glob(".old-step-*"):
        final = ckpt_root / old.name.removeprefix(".old-")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest usable checkpoint: the one ``latest`` names, else the newest complete one.

    Unusable ones are skipped with a line on stderr saying why; None when there is no checkpoint.
    """
    restore_interrupted_resaves(ckpt_root)
    pointer = ckpt_root / LATEST
    named = ckpt_root / pointer.read_text().strip() if pointer.is_file() else None
    dirs = step_dirs(ckpt_root)
    candidates = list(dict.fromkeys(([named] if named is not None and named in dirs else []) + dirs[::-1]))
    skipped = []
    for ckpt in candidates:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            if skipped:
                print(f"xt train: {'; '.join(skipped)}; resuming from {ckpt.name} instead.", file=sys.stderr)
            return ckpt
        skipped.append(f"checkpoint {ckpt.name} is unusable: {problem}")
    if skipped:
        raise XtError(f"No usable checkpoint in '{ckpt_root}' ({'; '.join(skipped)}); start a new run with "
                      f"--overwrite instead of --resume.")
    return None


def save_checkpoint(engine: Any, ckpt_root: Path, step: int, state: dict[str, Any], *, rank: int,
                    keep: int, exclude_frozen: bool) -> Path:
    """Write checkpoint ``step-N`` collectively (every rank calls this)."""
    import torch

    name = f"step-{step}"
    tmp_tag = f".tmp-{name}"
    tmp_dir = ckpt_root / tmp_tag
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    barrier()
    engine.save_checkpoint(str(ckpt_root), tag=tmp_tag, save_latest=False, exclude_frozen_parameters=exclude_frozen)
    torch.save(rng_state(), tmp_dir / RNG_FILE.format(rank=rank))
    barrier()
    final = ckpt_root / name
    if rank == 0:
        (tmp_dir / STATE_FILE).write_text(json.dumps(state))
        fsync_tree(tmp_dir)
        replaced = ckpt_root / f".old-{name}"
        if final.exists():  # re-saving a step: the old copy stays whole until the new one is in place
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(final, replaced)
        os.replace(tmp_dir, final)
        atomic_write_text(ckpt_root / LATEST, name)
        shutil.rmtree(replaced, ignore_errors=True)
        if keep > 0:
            for old in step_dirs(ckpt_root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(engine: Any, ckpt_dir: Path, *, rank: int, exclude_frozen: bool) -> dict[str, Any]:
    """Restore engine, RNG states; return the xt state (step, sampler, metrics)."""
    import torch

    problem = checkpoint_problem(ckpt_dir)
    if problem is not None:
        raise XtError(f"Cannot resume from '{ckpt_dir}': {problem}; pass the run folder to --resume to use its "
                      f"newest usable checkpoint.")
    rng_file = ckpt_dir / RNG_FILE.format(rank=rank)
    if not rng_file.is_file():
        raise XtError(f"Cannot resume from '{ckpt_dir}': {rng_file.name} is missing (was it saved by fewer "
                      f"processes?); resume with the --nproc the run was saved with.")
    with weights_only_loads(ckpt_dir):
        load_path, _ = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name,
                                              load_module_strict=not exclude_frozen,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        rng = torch.load(rng_file, weights_only=True)
    if load_path is None:
        raise XtError(f"DeepSpeed could not load the checkpoint in '{ckpt_dir}'.")
    set_rng_state(rng)
    return json.loads((ckpt_dir / STATE_FILE).read_text())


def safe_globals() -> list[Any]:
    """The non-tensor types DeepSpeed's checkpoints hold, admitted by the weights-only unpickler."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


@contextmanager
def weights_only_loads(ckpt_dir: Path) -> Iterator[None]:
    """Every ``torch.load`` inside reads tensors and plain data only; anything else is refused."""
    import pickle

    import torch

    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(safe_globals()):
            yield
    except pickle.UnpicklingError as exc:
        raise XtError(f"Checkpoint '{ckpt_dir}' holds objects that could run code when loaded "
                      f"({first_line(exc)[:200]}); refusing to resume from it. Resume only from checkpoints "
                      f"'xt train' wrote.") from exc
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous
