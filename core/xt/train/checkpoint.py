"""Checkpoints that survive a crash mid-save and resume a run exactly.

``RUN/checkpoints/step-N/`` holds DeepSpeed's model / optimizer / scheduler states
(``engine.save_checkpoint``), ``xt_state.json`` (step, epoch, sampler position, metrics so far) and
``xt_rng_rank{R}.pt`` (python, numpy and torch RNG states of each rank). A checkpoint is written to
``.tmp-step-N`` and renamed when complete; ``RUN/checkpoints/latest`` names the newest complete one
and is replaced atomically, so a crash during a save leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from xt.errors import XtError
from xt.train.dist import barrier

LATEST = "latest"
STATE_FILE = "xt_state.json"


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


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The checkpoint named by ``latest`` (falling back to the newest complete one)."""
    pointer = ckpt_root / LATEST
    if pointer.is_file():
        candidate = ckpt_root / pointer.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    dirs = step_dirs(ckpt_root)
    return dirs[-1] if dirs else None


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
    torch.save(rng_state(), tmp_dir / f"xt_rng_rank{rank}.pt")
    barrier()
    final = ckpt_root / name
    if rank == 0:
        (tmp_dir / STATE_FILE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp_dir, final)
        pointer_tmp = ckpt_root / (LATEST + ".tmp")
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, ckpt_root / LATEST)
        if keep > 0:
            for old in step_dirs(ckpt_root)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(engine: Any, ckpt_dir: Path, *, rank: int, exclude_frozen: bool) -> dict[str, Any]:
    """Restore engine, RNG states; return the xt state (step, sampler, metrics)."""
    import torch

    state_file = ckpt_dir / STATE_FILE
    if not state_file.is_file():
        raise XtError(f"'{ckpt_dir}' is not a complete xt checkpoint (no {STATE_FILE}).")
    load_path, _ = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name,
                                          load_module_strict=not exclude_frozen,
                                          load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise XtError(f"DeepSpeed could not load the checkpoint in '{ckpt_dir}'.")
    rng_file = ckpt_dir / f"xt_rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads(state_file.read_text())
