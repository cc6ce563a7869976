"""Process-group set-up that works with or without a launcher, on CPU (gloo) and GPU (nccl)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: Any  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SELF_LAUNCH_MARK = "XT_SINGLE_PROCESS_GROUP"
TIMEOUT_ENV = "XT_COLLECTIVE_TIMEOUT"


def collective_timeout() -> timedelta:
    """How long a process waits for the others in a collective before failing (``XT_COLLECTIVE_TIMEOUT`` s)."""
    from xt.errors import XtError

    raw = os.environ.get(TIMEOUT_ENV, "1800")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise XtError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds.")
    return timedelta(seconds=seconds)


def use_timeout_in_new_groups(timeout: timedelta) -> None:
    """Make the process groups created later (DeepSpeed's ZeRO groups) wait ``timeout`` too.

    ``torch.distributed.new_group`` without a timeout takes torch's module default (30 minutes), not
    the default group's, so a stopped rank would hang ZeRO's gradient reduction past the timeout.
    """
    from torch.distributed import distributed_c10d

    distributed_c10d.default_pg_timeout = timeout
    distributed_c10d.default_pg_nccl_timeout = timeout


def timeout_message(exc: BaseException) -> str | None:
    """The sentence for a collective that waited past the timeout (None for any other error)."""
    text = str(exc)
    if "Timed out" not in text and "timed out" not in text and "Timeout" not in type(exc).__name__:
        return None
    waited = os.environ.get(TIMEOUT_ENV, "1800")
    return (f"no answer from the other processes within {TIMEOUT_ENV}={waited} s: a process stopped or hung (its "
            f"own message, if any, is above), so this one stopped too. Resume from the last checkpoint with "
            f"--resume; raise {TIMEOUT_ENV} if a step can legitimately wait longer.")


def device_type() -> str:
    """The device type training runs on here: "cuda" when torch sees a GPU, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def init_distributed() -> DistInfo:
    """Join (or, for a single process without a launcher, create) the default process group."""
    import deepspeed
    import torch
    import torch.distributed as dist

    # A process that set up its own single-process group marks it with its pid: a child process
    # inheriting that environment is not launched by torchrun and must pick its own port.
    inherited = os.environ.get(SELF_LAUNCH_MARK, str(os.getpid())) != str(os.getpid())
    if inherited or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        os.environ[SELF_LAUNCH_MARK] = str(os.getpid())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type() == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        timeout = collective_timeout()
        use_timeout_in_new_groups(timeout)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: list[float], device: Any) -> list[float]:
    """Element-wise sum of a list of numbers over all ranks."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
