"""The public plugin API: every plugin in plugins/ imports only ``xt.api``, and every name it lists resolves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_FILES = sorted(p for p in (ROOT / "plugins").rglob("*.py") if "tests" not in p.parts)


def _core_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every import of the core in a file (name '' for ``import xt.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, "") for a in node.names if a.name == "xt" or a.name.startswith("xt.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                (node.module == "xt" or node.module.startswith("xt.")):
            found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def test_the_scan_sees_every_plugin_and_their_core_imports():
    dists = {p.relative_to(ROOT / "plugins").parts[0] for p in PLUGIN_FILES}
    assert dists == {"xt-alpaca", "xt-baichuan", "xt-llava", "xt-lmdeploy", "xt-lmeval", "xt-preference"}
    assert sum(len(_core_imports(p)) for p in PLUGIN_FILES) > 30


def test_plugins_import_only_public_names_of_xt_api():
    from xt import api

    offenders = [f"{p.relative_to(ROOT)}:{line}: {module}{' ' + name if name else ''}"
                 for p in PLUGIN_FILES for line, module, name in _core_imports(p)
                 if module != "xt.api" or name.startswith("_") or name not in api.__all__]
    assert offenders == [], "plugins must import the core only through xt.api:\n" + "\n".join(offenders)


def test_every_api_name_resolves_and_unknown_names_fail_clearly():
    from xt import api

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError, match="public names are"):
        api.no_such_name  # noqa: B018


def test_importing_the_api_imports_no_torch():
    code = "import sys, xt.api; from xt.api import ModelSpec, hookimpl, XtError; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
