"""Exact resume after SIGKILL, and a 2-process run through ``xt train --nproc 2`` (torchrun, gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import (  # noqa: E402
    DATASET,
    MODEL,
    driver_env,
    make_model_dir,
    straight_and_resumed,
    write_driver,
)

pytestmark = pytest.mark.slow

ARGS = ["train", "--model", MODEL, "--dataset", DATASET, "--method", "full", "--set", "max_steps=30",
        "--set", "save_steps=3", "--set", "save_total_limit=2", "--set", "lr=3e-3", "--set", "micro_batch_size=2",
        "--set", "max_length=48", "--set", "warmup_steps=2", "--set", "lora_dropout=0.0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    model_dir = make_model_dir(work / "tiny-llama")
    return work, write_driver(work, model_dir), driver_env(work / "cache")


def metrics(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_sigkill_then_resume_matches_an_uninterrupted_run(setup):
    import torch
    from safetensors.torch import load_file

    work, driver, env = setup
    straight, crashed, resumed_from = straight_and_resumed(driver, ARGS, work, env)
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(crashed / "final" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    ma, mb = metrics(straight), metrics(crashed)
    assert sorted(mb) == list(range(1, 31))
    for step in range(resumed_from + 1, 31):
        assert mb[step] == ma[step]  # the same float, not merely close
    assert json.loads((crashed / "run.json").read_text())["status"] == "finished"
    steps = sorted(p.name for p in (crashed / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps == ["step-27", "step-30"]  # save_total_limit 2


def test_two_processes_on_cpu_via_nproc(setup):
    work, driver, env = setup
    out_dir = work / "two"
    args = ["train", "--model", MODEL, "--dataset", DATASET, "--method", "lora", "--nproc", "2", "--output",
            str(out_dir), "--set", "max_steps=3", "--set", "zero_stage=2", "--set", "micro_batch_size=2",
            "--set", "max_length=48", "--set", "eval_steps=3", "--set", "eval_samples=2"]
    done = subprocess.run([sys.executable, str(driver), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["extra"]["world_size"] == 2
    assert (out_dir / "final" / "adapter_model.safetensors").is_file()
    assert len(metrics(out_dir)) == 3
