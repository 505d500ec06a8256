"""Per-tensor weight statistics of one model, kept while the tensor is unchanged.

The L1/L2 scores of :mod:`._importance` reduce every weight a channel owns; on a model
planned many times from one :class:`~slimprune._analysis.Analysis` (sparsity searches, a
ratio sweep) those reductions are most of each plan. A :class:`ScoreCache` keeps each
reduction with a stamp of the tensor it was read from — the tensor object, its storage
address and its in-place version counter — and computes it again when any of the three
differ: an optimiser step or ``w.mul_()`` bumps the version, ``load_state_dict`` copies in
place (version), ``.to()`` or ``p.data = ...`` gives new storage. Each entry holds the
tensor it was read from, so neither its identity nor its storage address can be reused by
another tensor while the entry lives.

The constant probe zeroes weights and restores them bit for bit, which bumps their
versions without changing a value; :meth:`ScoreCache.restored` carries the entries of
such tensors over to their new versions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

__all__ = ["ScoreCache", "Stamp"]

Stamp = tuple[int, int, int]  # id, data_ptr, _version of one tensor


def stamp(t: torch.Tensor) -> Stamp:
    """What identifies ``t``'s current values: the object, its storage and its in-place version."""
    return id(t), t.data_ptr(), t._version


class ScoreCache:
    """Reductions of weight tensors (``key -> array``), each valid while its tensor is unchanged."""

    def __init__(self) -> None:
        # key -> (the tensor read, its stamp then, the result)
        self._entries: dict[tuple, tuple[torch.Tensor, Stamp, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, t: torch.Tensor, compute: Callable[[torch.Tensor], np.ndarray]) -> np.ndarray:
        """``compute(t)``, or the value it had when ``t`` last had these values (read-only array)."""
        hit = self._entries.get(key)
        now = stamp(t)
        if hit is not None and hit[0] is t and hit[1] == now:
            self.hits += 1
            return hit[2]
        self.misses += 1
        value = compute(t)
        value.setflags(write=False)
        self._entries[key] = (t, now, value)
        return value

    def restored(self, before: Iterable[Stamp], after: Iterable[Stamp]) -> None:
        """Tensors stamped ``before`` were changed in place and restored bit for bit, and are
        stamped ``after`` now (same order): their entries stay valid under the new stamps."""
        moved = {b: a for b, a in zip(before, after) if b != a and b[:2] == a[:2]}
        if not moved:
            return
        for key, (t, old, value) in list(self._entries.items()):
            new = moved.get(old)
            if new is not None:
                self._entries[key] = (t, new, value)
