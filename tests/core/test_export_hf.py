"""``xt export RUN --to hf``: the core exporter, option parsing and exporter-name errors."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner
from xt.cli import cli

try:
    from .test_export_support import load_base, logits, make_run, random_adapter, sample_ids, save_base
except ImportError:  # pragma: no cover
    from test_export_support import load_base, logits, make_run, random_adapter, sample_ids, save_base


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    base = save_base(root / "base", seed=7)
    adapter = random_adapter(base, root / "adapter", seed=8)
    full = root / "full-final"
    shutil.copytree(base, full)
    return {"root": root, "base": base, "adapter": adapter,
            "lora": make_run(root / "run-lora", base, adapter, template="chatml"),
            "full": make_run(root / "run-full", base, full, adapter=False, method="full")}


def test_export_hf_merges_the_run(runs):
    from peft import PeftModel

    out = runs["root"] / "hf"
    result = CliRunner().invoke(cli, ["export", str(runs["lora"]), "--to", "hf", "--out", str(out),
                                      "--set", "dtype=fp32"])
    assert result.exit_code == 0, result.output
    ids = sample_ids()[0]
    expected = logits(PeftModel.from_pretrained(load_base(runs["base"]), str(runs["adapter"])), ids)
    assert (logits(load_base(out), ids) - expected).abs().max() <= 1e-5
    from xt.export import template_for

    assert template_for(None, (out,)).name == "chatml"  # the run's template travels with the export


def test_export_hf_of_a_full_model_run(runs):
    out = runs["root"] / "hf-full"
    result = CliRunner().invoke(cli, ["export", str(runs["full"]), "--to", "huggingface", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids = sample_ids()[0]
    assert (logits(load_base(out), ids) - logits(load_base(runs["base"]), ids)).abs().max() == 0


@pytest.mark.parametrize("args, message", [
    (["--to", "hff"], "Unknown exporter 'hff'. Did you mean 'hf'?"),
    (["--to", "hf", "--set", "dtype"], "is not key=value"),
    (["--to", "hf", "--set", "colour=red"], "Unknown option(s) for exporter 'hf': colour"),
    (["--to", "hf", "--set", "dtype=fp64"], "Unknown dtype 'fp64'"),
])
def test_export_errors(runs, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["export", str(runs["lora"]), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "o").exists()


def test_export_of_an_unfinished_run_is_refused(runs, tmp_path):
    from xt.run import RunInfo

    RunInfo(model=str(runs["base"]), model_source=None, template="default").save(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--to", "hf", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no final result yet" in result.output
