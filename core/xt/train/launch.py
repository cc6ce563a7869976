"""``xt train --nproc N`` / ``--hostfile F``: re-run the same command under torchrun or DeepSpeed's launcher."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from xt.errors import XtError

LAUNCHED_ENV = "XT_LAUNCHED"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def strip_launch_options(argv: Sequence[str]) -> list[str]:
    """The command-line arguments without ``--nproc`` / ``--hostfile`` (and their values)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--nproc", "--hostfile"):
            skip = True
            continue
        if arg.startswith(("--nproc=", "--hostfile=")):
            continue
        out.append(arg)
    return out


def launch_command(nproc: int, hostfile: str | None, argv: Sequence[str], script: str | None = None) -> list[str]:
    """The launcher command that runs ``script argv`` (minus launch options) in ``nproc`` processes per node."""
    from xt.train.dist import free_port

    script = script or sys.argv[0]
    args = strip_launch_options(argv)
    if hostfile:
        if not os.path.isfile(hostfile):
            raise XtError(f"Hostfile '{hostfile}' does not exist; it lists 'host slots=N' lines for DeepSpeed's launcher.")
        beside_python = os.path.join(os.path.dirname(sys.executable), "deepspeed")  # an unactivated venv
        launcher = beside_python if os.access(beside_python, os.X_OK) else shutil.which("deepspeed")
        if launcher is None:
            raise XtError("--hostfile needs DeepSpeed's 'deepspeed' launcher on PATH; reinstall deepspeed.")
        return [launcher, "--hostfile", hostfile, "--num_gpus", str(nproc), "--no_local_rank",
                "--master_port", str(free_port()), script, *args]
    return [sys.executable, "-m", "xt.train.torchrun", "--nproc-per-node", str(nproc), "--nnodes", "1",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), script, *args]


def relaunch(nproc: int, hostfile: str | None, argv: Sequence[str] | None = None) -> int:
    """Run the launcher and wait; returns its exit code."""
    if nproc < 1:
        raise XtError(f"--nproc must be at least 1, got {nproc}.")
    cmd = launch_command(nproc, hostfile, sys.argv[1:] if argv is None else argv)
    from xt.train.dist import SELF_LAUNCH_MARK

    # Drop a single-process group set up earlier in this environment (e.g. by an in-process run):
    # the launcher gives each child its own rank, world size and port.
    inherited = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", SELF_LAUNCH_MARK)
    env = {k: v for k, v in os.environ.items() if SELF_LAUNCH_MARK not in os.environ or k not in inherited}
    env[LAUNCHED_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print("xt train: launching " + " ".join(cmd), file=sys.stderr)
    launcher = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)
    with forwarded_signals(launcher):
        return launcher.wait()


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def forwarded_signals(child: subprocess.Popen) -> Iterator[None]:
    """Pass Ctrl-C, SIGTERM and SIGHUP on to the launcher, which ends its workers."""
    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def die_with_parent() -> None:
    """In the launcher's process (Linux): receive SIGTERM when xt dies, even by SIGKILL, so no worker is left."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the forwarded signals still cover an orderly stop
        pass


def already_launched() -> bool:
    """True inside a process started by torchrun / DeepSpeed's launcher (not a self-made single-process group)."""
    from xt.train.dist import SELF_LAUNCH_MARK

    if os.environ.get(LAUNCHED_ENV) == "1":
        return True
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and SELF_LAUNCH_MARK not in os.environ
