"""``xt train --nproc N`` / ``--hostfile F``: re-run the same command under torchrun or DeepSpeed's launcher.

With ``--node-rank R`` (and ``--master-addr``, ``--master-port``) DeepSpeed's launcher runs without ssh:
the same command is started by hand (or by a scheduler) once on every host of the hostfile, each with
its own node rank, and the processes meet at the master address.
"""

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
LAUNCH_OPTIONS = ("--nproc", "--hostfile", "--node-rank", "--master-addr", "--master-port")


def use_per_env_extensions_dir() -> str | None:
    """Point DeepSpeed's JIT builds (the CPU comm op) at ``<venv>/.cache/torch_extensions`` unless set.

    torch's default, ``~/.cache/torch_extensions``, is shared by every environment of the user, so an op
    built against one torch would be picked up by another. Outside a virtual environment, or when the
    prefix is not writable, torch's default stays. Returns the folder in use (None: torch's default).
    """
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    if sys.prefix == sys.base_prefix or not os.access(sys.prefix, os.W_OK):
        return None
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, ".cache", "torch_extensions")
    return os.environ["TORCH_EXTENSIONS_DIR"]
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def strip_launch_options(argv: Sequence[str]) -> list[str]:
    """The command-line arguments without the launch options (``--nproc``, ``--hostfile`` ...) and their values."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCH_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{option}=" for option in LAUNCH_OPTIONS)):
            continue
        out.append(arg)
    return out


def launch_command(nproc: int, hostfile: str | None, argv: Sequence[str], script: str | None = None,
                   node_rank: int | None = None, master_addr: str | None = None,
                   master_port: int | None = None) -> list[str]:
    """The launcher command that runs ``script argv`` (minus launch options) in ``nproc`` processes per node.

    ``node_rank`` (with a hostfile) starts only this host's processes, without ssh; every host then
    needs the same ``master_addr`` and ``master_port``.
    """
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
        node = _node_options(hostfile, node_rank, master_addr, master_port)
        return [launcher, "--hostfile", hostfile, "--num_gpus", str(nproc), "--no_local_rank", *node,
                "--master_port", str(master_port or free_port()), script, *args]
    if node_rank is not None:
        raise XtError("--node-rank needs --hostfile (the hosts of the run, one 'host slots=N' line each).")
    return [sys.executable, "-m", "xt.train.torchrun", "--nproc-per-node", str(nproc), "--nnodes", "1",
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), script, *args]


def _node_options(hostfile: str, node_rank: int | None, master_addr: str | None,
                  master_port: int | None) -> list[str]:
    """DeepSpeed launcher options for one node of a run started on each host by hand (no ssh)."""
    if node_rank is None:
        return ["--master_addr", master_addr] if master_addr else []
    hosts = [line.split()[0] for line in open(hostfile, encoding="utf-8")
             if line.strip() and not line.lstrip().startswith("#")]
    if not 0 <= node_rank < len(hosts):
        raise XtError(f"--node-rank {node_rank} is outside the {len(hosts)} hosts of '{hostfile}'; "
                      f"use 0 to {len(hosts) - 1}.")
    if not master_addr or not master_port:
        raise XtError("--node-rank needs --master-addr and --master-port, the same on every node "
                      "(the address of the first host and a free port on it).")
    return ["--no_ssh", "--node_rank", str(node_rank), "--master_addr", master_addr]


def relaunch(nproc: int, hostfile: str | None, argv: Sequence[str] | None = None, *, node_rank: int | None = None,
             master_addr: str | None = None, master_port: int | None = None) -> int:
    """Run the launcher and wait; returns its exit code."""
    if nproc < 1:
        raise XtError(f"--nproc must be at least 1, got {nproc}.")
    cmd = launch_command(nproc, hostfile, sys.argv[1:] if argv is None else argv, node_rank=node_rank,
                         master_addr=master_addr, master_port=master_port)
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
