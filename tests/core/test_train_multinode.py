"""Two DeepSpeed nodes of one process each on this machine (loopback, no ssh) equal one node of two processes.

The two-node run goes through ``xt train --hostfile H --node-rank R --master-addr --master-port``, i.e.
DeepSpeed's launcher in its no-ssh mode, started once per "host" as a real multi-node run would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from xt.train.dist import free_port

sys.path.insert(0, str(Path(__file__).parent))
from test_train_support import DATASET, MODEL, driver_env, make_model_dir, write_driver  # noqa: E402

pytestmark = pytest.mark.slow

ARGS = ["train", "--model", MODEL, "--dataset", DATASET, "--method", "full", "--set", "max_steps=4",
        "--set", "zero_stage=2", "--set", "micro_batch_size=2", "--set", "max_length=48", "--set", "lr=3e-3",
        "--set", "warmup_steps=1", "--set", "save_total_limit=0"]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_nodes_equal_one_node_with_two_processes(tmp_path):
    model_dir = make_model_dir(tmp_path / "tiny-llama")
    driver, env = write_driver(tmp_path, model_dir), driver_env(tmp_path / "cache")

    one = tmp_path / "one-node"
    done = subprocess.run([sys.executable, str(driver), *ARGS, "--nproc", "2", "--output", str(one)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    two = tmp_path / "two-nodes"
    port = str(free_port())
    nodes = [subprocess.Popen([sys.executable, str(driver), *ARGS, "--output", str(two), "--hostfile", str(hostfile),
                               "--nproc", "1", "--node-rank", str(rank), "--master-addr", "127.0.0.1",
                               "--master-port", port],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]

    info = json.loads((two / "run.json").read_text())
    assert info["status"] == "finished" and info["extra"]["world_size"] == 2
    assert "--no_ssh" in outputs[1][1] and "--node_rank 1" in outputs[1][1]  # really the launcher's multi-node mode
    assert len(losses(two)) == 4
    assert losses(two) == pytest.approx(losses(one), abs=1e-6)
    weights_one = load_file(str(one / "final" / "model.safetensors"))
    weights_two = load_file(str(two / "final" / "model.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        assert torch.allclose(tensor, weights_two[name], atol=1e-6, rtol=0), name
    start = load_file(str(model_dir / "model.safetensors"))
    assert any(not torch.equal(start[n], weights_two[n]) for n in start)  # training changed the weights
