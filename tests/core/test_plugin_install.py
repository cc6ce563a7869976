"""Plugins found through entry points: throwaway packages installed into this venv, `xt` run in a
subprocess, packages removed again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

XT = [sys.executable, "-m", "xt.cli"]
PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]

GOOD = '''
from xt import hookimpl
from xt.specs import DatasetSpec

def map_row(row):
    return {"messages": [{"role": "user", "content": row["q"]}, {"role": "assistant", "content": row["a"]}]}

@hookimpl
def dataset_map(register):
    register(DatasetSpec(name="tmp-good-set", map_row=map_row, sample_rows=[{"q": "a", "a": "b"}]))
    register(DatasetSpec(name="tmp-shared-name", map_row=map_row))

@hookimpl
def register_commands(cli):
    import click

    @cli.command(name="tmp-hello")
    def hello():
        click.echo("hello from tmp-good")
'''
TWIN = '''
from xt import hookimpl
from xt.specs import DatasetSpec

@hookimpl
def dataset_map(register):
    register(DatasetSpec(name="tmp-shared-name", map_row=lambda row: row))
'''
BROKEN_IMPORT = "import a_module_that_does_not_exist_xt\n"
TYPO = '''
from xt import hookimpl

@hookimpl
def prompt_templat(register):
    pass
'''


def _write_package(root: Path, name: str, code: str) -> Path:
    pkg = f"xt_{name.replace('-', '_')}"
    d = root / f"xt-{name}"
    (d / pkg).mkdir(parents=True)
    (d / pkg / "__init__.py").write_text(textwrap.dedent(code))
    (d / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "xt-{name}"
        version = "0.0.1"
        [project.entry-points.xt]
        {name} = "{pkg}"
        [tool.setuptools]
        packages = ["{pkg}"]
    '''))
    return d


def _xt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    for var in ("XT_LOAD_PLUGINS", "XT_DISABLE_PLUGINS"):
        if env is None or var not in env:
            full_env.pop(var, None)
    return subprocess.run(XT + list(args), capture_output=True, text=True, env=full_env, timeout=120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    packages = {"tmpgood": GOOD, "tmptwin": TWIN, "tmpbroken": BROKEN_IMPORT, "tmptypo": TYPO}
    dirs = [_write_package(root, name, code) for name, code in packages.items()]
    subprocess.run(PIP + ["install", "--no-deps", "--no-build-isolation", *map(str, dirs)], check=True)
    try:
        yield packages
    finally:
        subprocess.run(PIP + ["uninstall", "-y", *(f"xt-{n}" for n in packages)], check=False)


def test_installed_plugin_appears_and_uninstall_removes_it(installed, tmp_path):
    out = _xt("list", "datasets", "--json")
    assert out.returncode == 0, out.stderr
    assert "tmp-good-set" in {row["name"] for row in json.loads(out.stdout)}
    # a separate package installed and removed again within the test
    pkg = _write_package(tmp_path, "tmpgone", GOOD.replace("tmp-good-set", "tmp-gone-set").replace(
        "tmp-shared-name", "tmp-gone-2").replace("tmp-hello", "tmp-gone-hello"))
    subprocess.run(PIP + ["install", "--no-deps", "--no-build-isolation", str(pkg)], check=True)
    try:
        assert "tmp-gone-set" in _xt("list", "datasets").stdout
    finally:
        subprocess.run(PIP + ["uninstall", "-y", "xt-tmpgone"], check=True)
    assert "tmp-gone-set" not in _xt("list", "datasets").stdout


def test_xt_plugins_reports_broken_plugins_and_everything_else_works(installed):
    out = _xt("plugins")
    assert out.returncode == 0
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert infos["tmpgood"]["status"] == "ok" and infos["tmpgood"]["distribution"] == "xt-tmpgood"
    assert "dataset_map" in infos["tmpgood"]["hooks"]
    assert infos["tmpbroken"]["status"] == "broken" and "a_module_that_does_not_exist_xt" in infos["tmpbroken"]["error"]
    assert infos["tmptypo"]["status"] == "broken" and "prompt_template" in infos["tmptypo"]["error"]
    # reported once on stderr, naming the distribution
    assert out.stderr.count("xt-tmpbroken") == 1
    assert _xt("tmp-hello").stdout.strip() == "hello from tmp-good"  # register_commands is used


def test_duplicate_name_fails_only_when_used(installed):
    out = _xt("data", "preview", "--dataset", "tmp-shared-name", "--model", "hf")
    assert out.returncode != 0
    assert "xt-tmpgood" in out.stderr and "xt-tmptwin" in out.stderr
    assert _xt("list", "templates").returncode == 0


def test_allow_and_block_lists(installed):
    none = json.loads(_xt("plugins", env={"XT_LOAD_PLUGINS": ""}).stdout)
    assert {p["status"] for p in none if p["name"] != "xt.builtins"} == {"disabled"}
    only = _xt("list", "datasets", env={"XT_LOAD_PLUGINS": "tmpgood"}).stdout
    assert "tmp-good-set" in only and "alpaca" not in only.split()
    blocked = _xt("list", "datasets", env={"XT_DISABLE_PLUGINS": "xt-tmpgood,tmptwin"}).stdout
    assert "tmp-good-set" not in blocked
    assert "xt-tmpbroken" in _xt("plugins", env={"XT_DISABLE_PLUGINS": "tmpgood"}).stderr


def test_unknown_name_exit_code_and_suggestion(installed):
    out = _xt("data", "preview", "--dataset", "tmp-good-sett", "--model", "hf")
    assert out.returncode == 2
    assert "Did you mean 'tmp-good-set'?" in out.stderr


def test_help_and_list_import_no_torch_eval_harness_or_trackers(installed):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom xt.cli import cli\n"
            "for args in (['--help'], ['list', 'models'], ['plugins']):\n"
            "    r = CliRunner().invoke(cli, args)\n    assert r.exit_code == 0, r.output\n"
            "heavy = ('torch', 'transformers', 'lm_eval', 'opencompass', 'wandb', 'mlflow', 'huggingface_hub')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "print(sorted(c for c in ('eval', 'push') if f'\\n  {c} ' in CliRunner().invoke(cli, ['--help']).output))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "['eval', 'push']"]


def test_generated_plugin_installs_shows_up_and_its_tests_pass(tmp_path):
    new = _xt("plugin", "new", "scaffolded", "--dir", str(tmp_path))
    assert new.returncode == 0, new.stderr
    root = tmp_path / "xt-scaffolded"
    subprocess.run(PIP + ["install", "--no-deps", "--no-build-isolation", "-e", str(root)], check=True)
    try:
        infos = {p["name"]: p for p in json.loads(_xt("plugins").stdout)}
        assert infos["scaffolded"]["status"] == "ok"
        assert set(infos["scaffolded"]["hooks"]) == {"model_loader", "dataset_map", "prompt_template", "collate",
                                                      "exporter", "objective", "register_commands"}
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                               capture_output=True, text=True, cwd=root, timeout=300)
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert "2 passed" in tests.stdout
    finally:
        subprocess.run(PIP + ["uninstall", "-y", "xt-scaffolded"], check=True)
    again = _xt("plugin", "new", "scaffolded", "--dir", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_wheel_of_the_scaffold_carries_its_package_data(tmp_path):
    import zipfile

    assert _xt("plugin", "new", "wheeled", "--dir", str(tmp_path)).returncode == 0
    built = subprocess.run(PIP + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                                  str(tmp_path / "xt-wheeled")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("xt_wheeled-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "xt_wheeled/data/qa.jsonl" in names and "xt_wheeled/plugin.py" in names


DIR_PLUGIN = GOOD.replace("tmp-good-set", "dir-only-set").replace("tmp-shared-name", "dir-other-set") \
    .replace("tmp-hello", "dir-hello")


def test_plugins_dir_loads_modules_without_packaging(tmp_path):
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    (folder / "quick.py").write_text(textwrap.dedent(DIR_PLUGIN))
    (folder / "broken.py").write_text(BROKEN_IMPORT)
    by_flag = {p["name"]: p for p in json.loads(_xt("--plugins-dir", str(folder), "plugins").stdout)}
    assert by_flag["dir:quick"]["status"] == "ok"
    assert by_flag["dir:quick"]["distribution"] == "XT_PLUGINS_DIR/quick.py"
    assert by_flag["dir:broken"]["status"] == "broken" and "a_module_that_does_not_exist_xt" in by_flag["dir:broken"]["error"]
    listed = _xt("list", "datasets", env={"XT_PLUGINS_DIR": str(folder)}).stdout
    assert "dir-only-set" in listed
    assert _xt("dir-hello", env={"XT_PLUGINS_DIR": str(folder)}).stdout.strip() == "hello from tmp-good"
    assert "dir-only-set" not in _xt("list", "datasets").stdout


def test_help_of_a_core_only_install_names_no_plugin():
    text = _xt("--help", env={"XT_LOAD_PLUGINS": ""}).stdout.lower()
    assert "--plugins-dir" in text
    for plugin in ("baichuan", "alpaca", "llava", "lmdeploy"):
        assert plugin not in text, plugin
