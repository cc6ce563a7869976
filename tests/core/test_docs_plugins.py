"""docs/plugins.md is the hook reference: every hook, every spec field, and examples that pass the kit."""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
EXAMPLE = re.compile(r"```python\n(# plugin: [^\n]*\n.*?)```", re.S)


def _text() -> str:
    return DOC.read_text()


def test_every_hook_has_a_section():
    from xt.plugins import hook_names

    headings = set(re.findall(r"^## (\w+)\(", _text(), re.M))
    assert set(hook_names()) <= headings, set(hook_names()) - headings


def test_every_spec_field_and_context_field_is_documented():
    from xt.specs import SPEC_KINDS, ObjectiveContext, RunContext

    text = _text()
    missing = [f"{cls.__name__}.{f.name}" for cls in (*SPEC_KINDS.values(), RunContext, ObjectiveContext)
               for f in dataclasses.fields(cls) if f"`{f.name}`" not in text]
    assert missing == []


def _examples() -> list[tuple[str, str]]:
    return [(code.splitlines()[0].removeprefix("# plugin: "), code) for code in EXAMPLE.findall(_text())]


def test_there_is_an_example_per_hook():
    from xt.plugins import hook_names

    code = "\n".join(c for _, c in _examples())
    assert all(f"def {hook}(" in code for hook in hook_names())


@pytest.mark.parametrize(("title", "code"), _examples(), ids=[t for t, _ in _examples()])
def test_each_example_is_a_plugin_that_passes_the_kit(title, code):
    from xt.testing import check_plugin_object

    module = types.ModuleType("doc_example")
    exec(compile(code, f"{DOC.name}: {title}", "exec"), module.__dict__)
    report = check_plugin_object(module, "doc-example", distribution="xt-doc-example")
    assert report.problems == [] and report.warnings == []
    assert sum(len(specs) for specs in report.specs.values()) > 0 or "register_commands" in code
