"""Bisection over a monotone yes/no question on integers."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["first_true"]


def first_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """The smallest ``i`` in ``[lo, hi)`` with ``pred(i)``, or ``hi`` when there is none.

    ``pred`` must be monotone (false, ..., false, true, ..., true); it is called about
    ``log2(hi - lo)`` times and never at ``hi``.
    """
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
