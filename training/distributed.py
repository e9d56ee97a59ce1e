"""Where a training process runs: one process, or one of several under ``torchrun`` (DDP).

``init_runtime`` joins the process group when ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on CPU);
``all_mean`` averages logged scalars over processes; ``unwrap`` gives the module inside a
DistributedDataParallel wrapper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class Runtime:
    """Where this process runs: device, rank and world size (1 without torchrun)."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_runtime(device: str) -> Runtime:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return Runtime(device=dev, rank=rank, local_rank=local_rank, world_size=world_size)


def wrap(module: nn.Module, rt: Runtime) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes train, else itself."""
    if not rt.distributed:
        return module
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def all_mean(values: dict[str, float], rt: Runtime) -> dict[str, float]:
    """Average scalar metrics over all processes."""
    if not rt.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return {k: float(v) / rt.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def all_gather_objects(mine: object, rt: Runtime) -> list[object]:
    """Every process's ``mine``, in rank order (a collective: all ranks must call it)."""
    if not rt.distributed:
        return [mine]
    everyone: list[object] = [None] * rt.world_size
    dist.all_gather_object(everyone, mine)
    return everyone


def shutdown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
