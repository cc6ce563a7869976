"""``xt plugin new``: write a ready-to-publish plugin package whose own tests pass at once."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

import click

from xt.errors import XtError

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "xt-{name}"
version = "0.1.0"
description = "An xt plugin: {name}"
requires-python = ">=3.10"
dependencies = ["xt-core"]

[project.optional-dependencies]
test = ["pytest"]

[project.entry-points.xt]
{name} = "{pkg}.plugin"

[tool.setuptools.packages.find]
include = ["{pkg}*"]

# Files inside the package that are not Python (data, configs): listed here so a wheel has them.
[tool.setuptools.package-data]
{pkg} = ["data/*.jsonl"]
'''

PLUGIN = '''"""xt hooks of xt-{name}: one example registration per hook.

Keep this module free of torch imports (``xt --help`` must stay instant): import heavy libraries
inside the functions that need them.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from xt.api import (
    EOS,
    CollatorSpec,
    DatasetSpec,
    ExporterSpec,
    ModelSpec,
    ObjectiveSpec,
    RowError,
    TemplateSpec,
    hookimpl,
)

#: Package data (listed under [tool.setuptools.package-data] in pyproject.toml, so wheels carry it).
DATA_FILE = Path(__file__).parent / "data" / "qa.jsonl"


def map_row(row: dict) -> dict:
    """A row with 'question' and 'answer' -> a conversation."""
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
        raise RowError("a row needs a string 'question' and a non-empty string 'answer'")
    return {{"messages": [{{"role": "user", "content": question}}, {{"role": "assistant", "content": answer}}]}}


@hookimpl
def model_loader(register):
    register(ModelSpec(
        name="{name}-model",
        description="Example: a causal LM from the hub (replace the id), loaded with transformers.",
        source="{name}-org/{name}-model",
        lora_targets=("q_proj", "v_proj"),
        default_template="{name}-chat",
    ))


@hookimpl
def dataset_map(register):
    register(DatasetSpec(
        name="{name}-qa",
        description="Example: question/answer rows shipped with the plugin (or your own with --data-files).",
        map_row=map_row,
        data_files=[str(DATA_FILE)],
        sample_rows=[{{"question": "What is 2 + 2?", "answer": "4"}}],
    ))


@hookimpl
def prompt_template(register):
    register(TemplateSpec(
        name="{name}-chat",
        description="Example: Q/A framing; replies end with EOS.",
        user="Q: {{content}}\\nA: ",
        assistant="{{content}}",
        assistant_end=(EOS,),
        turn_sep="\\n",
    ))


def _collator_factory(**options):
    from xt.api import make_default_collator  # data code loads when a collator is built, not at import

    return make_default_collator(**options)


@hookimpl
def collate(register):
    register(CollatorSpec(name="{name}-collator", description="Example: the default collator.",
                          factory=_collator_factory))


def export_manifest(run_dir, out_dir, **options):
    """Example exporter: writes a manifest pointing at the run's result."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps({{"run": str(run_dir), **options}}))
    return out


@hookimpl
def exporter(register):
    register(ExporterSpec(name="{name}-manifest", description="Example: a JSON manifest.", export=export_manifest))


def weighted_loss(model, batch, context):
    """Example objective: SFT whose token losses are scaled by the option 'weight' (summed, as the core expects)."""
    from xt.api import token_loss_sum  # torch loads when a step runs, not at import

    return context.args["weight"] * token_loss_sum(model, batch, context.z_loss), {{}}


def label_tokens(batch):
    return int((batch["labels"][:, 1:] != -100).sum())


@hookimpl
def objective(register):
    register(ObjectiveSpec(
        name="{name}-weighted-sft",
        description="Example: SFT with a weight (--set objective_args.weight=0.5).",
        loss=weighted_loss,
        units=label_tokens,
        defaults={{"weight": 1.0}},
        sample_rows=[map_row({{"question": "What is 2 + 2?", "answer": "4"}})],
    ))


@hookimpl
def register_commands(cli):
    @cli.command(name="{name}-hello")
    def hello():
        """Example command added by xt-{name}."""
        click.echo("hello from xt-{name}")
'''

TEST = '''from xt.testing import check_plugin


def test_conformance():
    report = check_plugin("{pkg}")
    assert report.names("datasets") == ["{name}-qa"]


def test_map_row():
    from {pkg}.plugin import map_row

    conv = map_row({{"question": "q", "answer": "a"}})
    assert conv["messages"][-1] == {{"role": "assistant", "content": "a"}}
'''

DATA = '''{{"question": "What is 2 + 2?", "answer": "4"}}
{{"question": "What colour is the sky on a clear day?", "answer": "Blue."}}
'''

README = '''# xt-{name}

An [xt](https://pypi.org/project/xt-core/) plugin. Install it next to xt and its registrations appear:

    pip install -e .
    xt plugins          # shows "{name}"
    xt list datasets    # shows "{name}-qa"

It registers one example per hook (edit `{pkg}/plugin.py`):

| hook | registration |
|---|---|
| model_loader | model `{name}-model` |
| dataset_map | dataset `{name}-qa` |
| prompt_template | template `{name}-chat` |
| collate | collator `{name}-collator` |
| exporter | exporter `{name}-manifest` |
| objective | objective `{name}-weighted-sft` |
| register_commands | command `xt {name}-hello` |

Run the conformance kit and the tests with `pytest`. To try a change without reinstalling, put a
plugin module in a folder and run `xt --plugins-dir FOLDER ...` (or set `XT_PLUGINS_DIR`).
'''


def _validate_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*", name):
        raise XtError(f"Plugin name '{name}' is not valid; use lower-case letters, digits and '-', "
                      f"starting with a letter (for example 'my-models').")
    pkg = "xt_" + name.replace("-", "_")
    if keyword.iskeyword(pkg):
        raise XtError(f"Plugin name '{name}' makes an invalid package name.")
    return pkg


def write_plugin(name: str, directory: Path) -> Path:
    """Write the package ``xt-NAME`` under ``directory`` and return its folder."""
    pkg = _validate_name(name)
    root = directory / f"xt-{name}"
    if root.exists() and any(root.iterdir()):
        raise XtError(f"{root} already exists and is not empty; choose another --dir or name.")
    fields = {"name": name, "pkg": pkg}
    files = {
        "pyproject.toml": PYPROJECT,
        f"{pkg}/__init__.py": '"""xt-{name}: an xt plugin."""\n',
        f"{pkg}/plugin.py": PLUGIN,
        f"{pkg}/data/qa.jsonl": DATA,
        "tests/test_plugin.py": TEST,
        "README.md": README,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**fields))
    return root


@click.group("plugin")
def plugin_group() -> None:
    """Create xt plugins."""


@plugin_group.command("new")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create the xt-NAME folder.")
def new_command(name: str, directory: Path) -> None:
    """Write a ready-to-publish plugin package xt-NAME with one example per hook and a test."""
    root = write_plugin(name, directory)
    click.echo(f"Wrote {root}. Next: pip install -e {root} && pytest {root}")
