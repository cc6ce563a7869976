"""Shared test fixtures: where ../shared lives, and a clean plugin manager per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XT_SHARED", ROOT.parent / "shared")).resolve()


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (set XT_SHARED to the shared/ folder)")
    return path


@pytest.fixture
def shared() -> Path:
    return SHARED


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Every test starts and ends with a freshly loaded plugin manager."""
    from xt import plugins

    plugins.reset()
    yield
    plugins.reset()
