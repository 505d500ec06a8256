"""Python's cyclic garbage collector paused for the length of one public call.

Planning allocates tens of thousands of short-lived container objects (fx nodes and
proxies, per-slice tuples, dicts of the channel graph). Each 700 of them start a young
collection, and every tenth of those an older one; about once in ten ``prune`` calls that
becomes a full collection, which walks every object the process tracks (~370,000 once
torch and torchvision are imported: ~100-200 ms, more than a whole plan of a small model).
None of that work finds anything the call needs collected: its cycles (an fx graph and its
nodes) live until the call returns.

So ``plan``, ``apply``, ``prune`` and ``analyze`` run with the collector paused and give it
back as they found it. Nothing is skipped: reference counting frees everything acyclic at
once as usual, and the cycles made during the call are found by the first young collection
after it (a few milliseconds, at the caller's next allocation). A collector the caller had
disabled stays disabled; a nested call (``prune`` calls ``plan``) leaves it to the outer one.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["gc_paused"]

F = TypeVar("F", bound=Callable[..., Any])


def gc_paused(fn: F) -> F:
    """``fn`` with cyclic garbage collection paused while it runs (a decorator; the wrapper
    lives in this package, so warnings' user-frame lookup passes it as one of ours)."""

    @functools.wraps(fn)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():  # the caller's choice, or an outer gc_paused: leave it alone
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused  # type: ignore[return-value]
