"""Crash-safe file operations shared by run folders, checkpoints and exports.

Everything xt writes that a later command reads is written to a temporary name, fsync'd and renamed
into place, so a kill at any instant leaves either the old or the new content, never a mix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames and creations inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under ``folder`` (before it is renamed into place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a fsync'd temporary file and one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def make_sibling(path: str | os.PathLike, tag: str) -> Path:
    """A new empty folder next to ``path`` (``.NAME.TAG-xxxx``) with the usual permissions."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700
    return tmp


def swap_in(new: Path, dest: str | os.PathLike) -> None:
    """Replace ``dest`` by the folder ``new``; the old ``dest`` is deleted only after the rename."""
    dest = Path(dest).absolute()
    fsync_tree(new)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
