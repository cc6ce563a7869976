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


def test_node_rank_runs_deepspeeds_launcher_without_ssh(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("# two hosts\nnode-a slots=1\nnode-b slots=1\n")
    argv = ["train", "--hostfile", str(hosts), "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port=29555",
            "--model", "m"]
    cmd = launch_command(1, str(hosts), argv, script="xt", node_rank=1, master_addr="10.0.0.1", master_port=29555)
    assert "--no_ssh" in cmd and cmd[cmd.index("--node_rank") + 1] == "1"
    assert cmd[cmd.index("--master_addr") + 1] == "10.0.0.1" and cmd[cmd.index("--master_port") + 1] == "29555"
    assert cmd[cmd.index("xt") + 1:] == ["train", "--model", "m"]  # every launch option stripped


def test_node_rank_problems_are_one_clear_sentence(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("node-a slots=1\nnode-b slots=1\n")
    with pytest.raises(XtError, match="--node-rank 2 is outside the 2 hosts"):
        launch_command(1, str(hosts), ["train"], script="xt", node_rank=2, master_addr="h", master_port=1)
    with pytest.raises(XtError, match="needs --master-addr and --master-port"):
        launch_command(1, str(hosts), ["train"], script="xt", node_rank=0)
    with pytest.raises(XtError, match="--node-rank needs --hostfile"):
        launch_command(1, None, ["train"], script="xt", node_rank=0)


def test_deepspeed_builds_go_under_this_environment(monkeypatch):
    """The comm op JIT build is kept per virtual environment, not in the user's shared torch cache."""
    import os
    import sys

    from xt.train.launch import use_per_env_extensions_dir

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folder = use_per_env_extensions_dir()
    if sys.prefix == sys.base_prefix:
        assert folder is None and "TORCH_EXTENSIONS_DIR" not in os.environ
    else:
        assert folder == os.environ["TORCH_EXTENSIONS_DIR"] == os.path.join(sys.prefix, ".cache", "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/elsewhere")
    assert use_per_env_extensions_dir() == "/elsewhere"  # the user's own setting wins


def test_the_launcher_gets_our_signals_and_dies_with_us(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from xt.train.launch import forwarded_signals

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    child = subprocess.Popen(sleeper)
    with forwarded_signals(child):
        os.kill(os.getpid(), signal.SIGTERM)  # would end pytest if it were not forwarded
        assert child.wait(timeout=30) == -signal.SIGTERM

    pid_file = tmp_path / "grandchild.pid"
    middle = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; from xt.train.launch import die_with_parent; "
        f"p = subprocess.Popen({sleeper!r}, preexec_fn=die_with_parent); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")])
    deadline = time.time() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    middle.kill()  # SIGKILL: no handler runs, only the kernel's parent-death signal
    middle.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        if open(f"/proc/{grandchild}/stat").read().split()[2] == "Z":  # ended, not yet reaped
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, signal.SIGKILL)
        pytest.fail("the launcher outlived xt")
