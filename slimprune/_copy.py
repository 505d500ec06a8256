"""Copying a model for the rewriter: ``copy.deepcopy``'s result, without its generic walk.

``copy.deepcopy`` of a module reconstructs every object through ``__reduce_ex__`` and deep
copies each of the dozen (mostly empty) hook dictionaries every module carries; on a model
of a few hundred modules that is most of the copy. :func:`copy_model` does what deepcopy
does for a module (``cls.__new__``, ``__getstate__``, deep-copied state, ``__setstate__``),
with the module tree linked up directly and empty containers made fresh, and hands every
other value to ``copy.deepcopy`` with the same memo (so shared modules, shared tensors and
references between them are preserved exactly as deepcopy preserves them). A module class
that customises copying (its own ``__deepcopy__``, ``__reduce_ex__``, ``__reduce__`` or a
copyreg entry) or returns a non-dict state makes the whole copy fall back to deepcopy.
"""

from __future__ import annotations

import copy
import copyreg
from collections import OrderedDict
from typing import Any

from torch import nn

__all__ = ["copy_model"]

_ATOMIC = (type(None), int, float, bool, str, complex, bytes)
_EMPTY = (dict, OrderedDict, set, list)
_TREE = ("_parameters", "_buffers", "_modules")


def _plain(cls: type) -> bool:
    """Does deepcopy copy instances of ``cls`` the way nn.Module's default does?"""
    return (getattr(cls, "__deepcopy__", None) is None and cls not in copyreg.dispatch_table
            and getattr(cls, "__reduce_ex__", None) is object.__reduce_ex__
            and getattr(cls, "__reduce__", None) is object.__reduce__)


def copy_model(model: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy(model, memo)``, faster; ``memo`` may map tensors to their replacements."""
    memo = {} if memo is None else memo
    modules = list(model.modules())
    states = [m.__getstate__() for m in modules] if all(_plain(type(m)) for m in modules) else None
    if states is None or not all(type(s) is dict for s in states) or any(id(m) in memo for m in modules):
        return copy.deepcopy(model, memo)
    new = [type(m).__new__(type(m)) for m in modules]
    for m, n in zip(modules, new):
        memo[id(m)] = n
    for m, n, state in zip(modules, new, states):
        out: dict[str, Any] = {}
        for k, v in state.items():
            if k == "_modules" and type(v) is dict:
                out[k] = {name: None if c is None else memo[id(c)] for name, c in v.items()}
            elif k in _TREE and type(v) is dict:
                out[k] = {name: None if t is None else copy.deepcopy(t, memo) for name, t in v.items()}
            elif type(v) in _ATOMIC:
                out[k] = v
            elif type(v) in _EMPTY and not v:
                out[k] = type(v)()
            else:
                out[k] = copy.deepcopy(v, memo)
        n.__setstate__(out)
    memo.setdefault(id(memo), []).append(model)  # as deepcopy does: keep the original alive
    return memo[id(model)]

