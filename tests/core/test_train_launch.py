"""`xt train --nproc / --hostfile`: the launcher command lines (the 2-process run itself is in test_train_resume)."""

from __future__ import annotations

import sys

import pytest
from xt.errors import XtError
from xt.train.launch import launch_command, strip_launch_options


def test_launch_options_are_stripped_before_relaunch():
    argv = ["train", "--model", "m", "--nproc", "2", "--hostfile=hosts", "--set", "lr=1e-3"]
    assert strip_launch_options(argv) == ["train", "--model", "m", "--set", "lr=1e-3"]


def test_nproc_goes_through_torchrun():
    cmd = launch_command(2, None, ["train", "--nproc", "2", "--model", "m"], script="xt")
    assert cmd[:3] == [sys.executable, "-m", "xt.train.torchrun"]  # torchrun with a one-line failure
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("xt") + 1:] == ["train", "--model", "m"]


def test_hostfile_goes_through_deepspeeds_launcher(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    cmd = launch_command(8, str(hosts), ["train", "--hostfile", str(hosts), "--model", "m"], script="xt")
    assert cmd[0].endswith("deepspeed") and cmd[cmd.index("--hostfile") + 1] == str(hosts)
    assert "--no_local_rank" in cmd
    assert cmd[cmd.index("xt") + 1:] == ["train", "--model", "m"]


def test_missing_hostfile_is_one_clear_sentence(tmp_path):
    with pytest.raises(XtError, match="Hostfile .* does not exist"):
        launch_command(2, str(tmp_path / "nope"), ["train"], script="xt")
