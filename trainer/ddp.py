"""Distributed data parallel: the one place that reads torchrun's environment.

Under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set) the process group is
initialised with NCCL on CUDA and gloo otherwise; a plain run is a world of one.  Rank 0 alone
logs, validates and writes files; the others wait at barriers.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.initialised:
            dist.barrier()

    def broadcast_flag(self, value: bool) -> bool:
        """Rank 0's boolean, on every rank."""
        if not self.initialised:
            return value
        t = torch.tensor([1 if value else 0], dtype=torch.int64)
        dist.broadcast(t, 0)
        return bool(t.item())

    def all_gather_object(self, obj):
        if not self.initialised:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.initialised or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def shutdown(self) -> None:
        if self.initialised:
            dist.destroy_process_group()
            self.initialised = False


def init_distributed(device: torch.device) -> DistEnv:
    """Join the process group when started by torchrun (env://); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, init_method="env://")
    log.info("DDP rank %d/%d (local %d) on %s", rank, world, local, backend)
    return DistEnv(rank, world, local, True)


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    if spec == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(spec)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process (for printing before/after the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank_hint() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
