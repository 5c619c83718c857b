"""torchrun support: one process per device, gradients averaged by DistributedDataParallel.

``init_from_env`` starts the process group when the environment says the process was launched by
``torchrun`` (RANK / WORLD_SIZE / MASTER_ADDR set), with gloo on the CPU and nccl on CUDA GPUs.
``tuning.tune`` picks up an initialised group by itself; nothing here is needed for a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when torchrun (or torch.distributed.run) started this process with more than one worker."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def current() -> DistInfo:
    """The process group this process belongs to, or a one-process DistInfo when there is none."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group if launched under torchrun; else a one-process DistInfo.

    On CUDA each process takes the GPU of its LOCAL_RANK (so ``torch.device('cuda')`` means that GPU).
    """
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run a single process instead of torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(device) != "cpu" and torch.cuda.is_available() and dist.is_nccl_available()
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"process {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible); "
                "use --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return current()


def shutdown() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity in a one-process run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on any one (a cancel seen by one stops all)."""
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0
