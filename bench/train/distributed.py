"""torch.distributed from submitit's job environment (tasks_per_node > 1): one process per task."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


@contextlib.contextmanager
def maybe_init_distributed() -> Iterator[None]:
    """Inside a submitit job with several tasks: export MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK via
    `submitit.helpers.TorchDistributedEnvironment` and start a process group (NCCL on GPUs, else gloo)."""
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:
        yield
        return
    if env.num_tasks <= 1:
        yield
        return
    dist_env = submitit.helpers.TorchDistributedEnvironment().export()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(dist_env.local_rank)
    dist.init_process_group(backend=backend, rank=dist_env.rank, world_size=dist_env.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()
