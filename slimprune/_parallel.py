"""Data-parallel wrappers: the model a DataParallel or DistributedDataParallel holds."""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap_parallel"]


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel or DataParallel wrapper, else ``model``."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model
