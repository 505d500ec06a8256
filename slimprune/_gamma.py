"""|γ|: the magnitude of a norm layer's per-channel scale, the signal network slimming prunes by."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from ._graph import ChannelGraph

__all__ = ["abs_gamma", "unit_gamma_max"]


def abs_gamma(scale: torch.Tensor) -> torch.Tensor:
    """``|scale|`` as a detached float32 CPU tensor (for statistics, not for gradients)."""
    return scale.detach().abs().float().cpu()


def unit_gamma_max(graph: ChannelGraph, model: nn.Module) -> np.ndarray:
    """The largest |γ| of each channel unit over the scale parameters that slice it
    (float64, ``-inf`` for a unit no scale parameter touches)."""
    out = np.full(graph.num_units, -np.inf)
    for s in graph.slices:
        if s.role == "scale":
            owner = model.get_submodule(s.module) if s.module else model
            np.maximum.at(out, s.units, abs_gamma(getattr(owner, s.param)).numpy())
    return out
