"""`xt --version`, `xt env`, `xt list`."""

from __future__ import annotations

import json

from click.testing import CliRunner
from xt import __version__
from xt.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_env_reports_libraries_and_accelerator():
    result = CliRunner().invoke(cli, ["env", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    for name in ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "flash-attn", "lmdeploy"):
        assert name in info["packages"]
    assert info["packages"]["torch"].startswith("2.")
    assert info["accelerator"]


def test_list_table_and_json():
    table = CliRunner().invoke(cli, ["list", "templates"])
    assert table.exit_code == 0 and table.output.splitlines()[0].split() == ["NAME", "PLUGIN", "DESCRIPTION"]
    rows = json.loads(CliRunner().invoke(cli, ["list", "models", "--json"]).output)
    hf = next(r for r in rows if r["name"] == "hf")
    assert hf["plugin"] == "xt-core" and hf["kind"] == "causal-lm"
    bad = CliRunner().invoke(cli, ["list", "modles"])
    assert bad.exit_code != 0
