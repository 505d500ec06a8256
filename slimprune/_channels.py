"""The values channel rules compute with: a tensor's channel axis and labels, sizes read from it.

These sit below both the graph builder (:mod:`._graph`) and the rules (:mod:`.rules`), so
rules can build them without importing the builder that calls the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ChannelInfo", "SizeOf"]


@dataclass(frozen=True)
class ChannelInfo:
    """The channel axis of a tensor and one label per channel along it."""

    axis: int
    labels: np.ndarray


@dataclass(frozen=True)
class SizeOf:
    """Sizes read from a tensor (``x.shape``, ``x.size(1)``): the labels behind each one.

    A size read from a channel axis follows the pruned width at run time, so wherever it
    is used as a reshape size, that axis must keep the same channels (or stay whole).
    """

    dims: tuple[np.ndarray | None, ...]
    single: bool = False
    # Computed from such sizes (``c // 2``, ``c ** -0.5``): no longer one axis's width.
    derived: bool = False

    def labels(self) -> list[np.ndarray]:
        return [d for d in self.dims if d is not None]
