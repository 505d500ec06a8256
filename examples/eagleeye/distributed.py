"""Joining (and leaving) a torchrun process group; keeping BatchNorm statistics equal on all ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import TrainConfig

__all__ = ["Dist", "setup_distributed", "average_buffers"]


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(config: TrainConfig) -> Dist:
    """Join the torchrun process group if ``WORLD_SIZE > 1``; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False; use device='cpu'.")
    if world_size <= 1:
        device = torch.device("cuda" if config.device == "cuda" else "cpu")
        return Dist(rank=0, world_size=1, device=device, created_group=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if config.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, created_group=created)


def average_buffers(model: nn.Module, world_size: int) -> None:
    """Average float buffers (BatchNorm running statistics) over ranks.

    DDP broadcasts rank 0's buffers at the start of every forward, but the last forward of
    an epoch leaves each rank with its own statistics; averaging makes them equal again.
    """
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world_size)
