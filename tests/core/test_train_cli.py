"""``xt train`` on the command line: dry-run plans, config errors, repeating a run from config.yaml."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import DATASET, MODEL, make_model_dir, register_test_plugin  # noqa: E402
from xt.cli import cli  # noqa: E402


@pytest.fixture
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.getbasetemp() / "cli-tiny-llama")


def test_dry_run_counts_parameters_on_meta_and_measures_data(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XT_CACHE_DIR", str(tmp_path / "cache"))
    register_test_plugin(model_dir)
    result = CliRunner().invoke(cli, ["train", "--model", MODEL, "--dataset", DATASET, "--dry-run",
                                      "--set", "max_length=64", "--output", str(tmp_path / "never")])
    assert result.exit_code == 0, result.output
    assert "parameters: 203,488 total" in result.output
    assert "8,192 trainable" in result.output  # LoRA r=8 on all linear layers but the head
    assert "memory per GPU" in result.output and "training rows" in result.output
    assert not (tmp_path / "never").exists()


def test_dry_run_13b_offline():
    from xt.plugins import get_registry

    if "baichuan2-13b" not in get_registry().names("models"):
        pytest.skip("xt-baichuan is not installed")
    result = CliRunner().invoke(cli, ["train", "--model", "baichuan2-13b", "--dataset", "alpaca", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "(13.9" in result.output and "B)" in result.output


def _dry_run(*args: str) -> str:
    from xt.plugins import get_registry

    if "baichuan2-13b" not in get_registry().names("models"):
        pytest.skip("xt-baichuan is not installed")
    result = CliRunner().invoke(cli, ["train", "--dataset", "alpaca", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _gib(output: str, key: str) -> float:
    import re

    return float(re.search(key + r" ~?([0-9.]+)", output).group(1))


def test_dry_run_plans_for_a_gpu_and_qlora_13b_fits_24_gib():
    """The plan is for the target accelerator (bf16 for dtype auto), whatever this machine has."""
    plain = _dry_run("--model", "baichuan2-13b", "--method", "qlora")
    assert "dtype auto -> bf16 on a GPU" in plain and "gradient checkpointing off" in plain
    assert "not checkpointed" in plain and _gib(plain, "gradient_checkpointing=true") < 24
    checkpointed = _dry_run("--model", "baichuan2-13b", "--method", "qlora", "--set", "gradient_checkpointing=true")
    assert "gradient checkpointing on" in checkpointed and "checkpointed) -> total" in checkpointed
    assert _gib(checkpointed, "total") < 24 < _gib(plain, "total")  # checkpointing is what makes it fit
    assert _gib(checkpointed, "total") == _gib(plain, "gradient_checkpointing=true")


def test_dry_run_per_gpu_total_follows_nproc_and_zero_stage():
    one = _dry_run("--model", "baichuan2-13b", "--set", "zero_stage=3")
    four = _dry_run("--model", "baichuan2-13b", "--set", "zero_stage=3", "--nproc", "4")
    assert "ZeRO-3 over 1 GPU(s)" in one and "ZeRO-3 over 4 GPU(s)" in four
    assert _gib(four, "weights") == pytest.approx(_gib(one, "weights") / 4, abs=0.01)
    assert _gib(four, "total") < _gib(one, "total")


def test_dry_run_reflects_model_path(baichuan_checkpoint):
    from safetensors import safe_open

    folder = baichuan_checkpoint("tiny-13b-alibi")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        expected = sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())
    output = _dry_run("--model", "baichuan2-13b", "--model-path", str(folder))
    assert f"parameters: {expected:,} total" in output and f"architecture from {folder} (--model-path)" in output


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def test_unknown_key_exits_2_with_suggestion():
    result = CliRunner().invoke(cli, ["train", "--model", "m", "--dataset", "d", "--set", "lerning_rate=1"])
    assert result.exit_code == 2
    assert "unknown key 'lerning_rate'" in result.output


def test_config_yaml_repeats_the_run(model_dir, tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("XT_CACHE_DIR", str(tmp_path / "cache"))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # as a fresh process sees it
        if key in os.environ:
            monkeypatch.delenv(key)
    register_test_plugin(model_dir)
    first = tmp_path / "first"
    args = ["train", "--model", MODEL, "--dataset", DATASET, "--output", str(first), "--set", "max_steps=2",
            "--set", "max_length=48", "--set", "lr=0.01", "--set", "save_total_limit=0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["lr"] == 0.01 and saved["max_steps"] == 2
    again = CliRunner().invoke(cli, ["train", str(first / "config.yaml"), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert yaml.safe_load((first / "config.yaml").read_text()) == saved
    refused = CliRunner().invoke(cli, ["train", "--config", str(first / "config.yaml")])
    assert refused.exit_code == 2 and "--overwrite" in refused.output


def test_bad_data_fails_before_anything_is_written(tmp_path):
    from click.testing import CliRunner
    from xt.cli import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--model", "baichuan2-tiny", "--dataset", "conversation",
                                      "--data-files", str(tmp_path / "missing.jsonl"), "--output", str(out)])
    assert result.exit_code == 2, result.output
    assert "missing.jsonl" in result.output
    assert not out.exists()
