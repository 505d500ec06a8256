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

Two kinds of value are copied without ``copy.deepcopy``'s generic machinery, each to what it
would make: a tuple of atomic values is kept as it is (deepcopy returns such a tuple itself),
and a plain buffer that owns its storage alone (contiguous, the whole storage, no other tensor
copied so far on it, no gradient, no attributes) is cloned, with its storage entered in the
memo as ``UntypedStorage.__deepcopy__`` enters it, so a later tensor on the same storage still
shares the copy's (~3 us a buffer instead of ~35: a BatchNorm's ``num_batches_tracked``, which
no plan slices, is in every pruned copy).

Values held in ``__slots__`` (which ``nn.Module.__getstate__`` leaves out, so ``copy.deepcopy``
drops them) are copied too: the pruned model has every attribute the model had. A value that
cannot be deep-copied (a lock, an open file, a generator) is a :class:`ModelCopyError` naming
the module and the attribute; the model is left as it was.
"""

from __future__ import annotations

import copy
import copyreg
import functools
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ._submodules import MODULE_TREE
from .errors import ModelCopyError

__all__ = ["copy_model"]

_ATOMIC = frozenset({type(None), int, float, bool, str, complex, bytes})
_EMPTY = frozenset({dict, OrderedDict, set, list})
# What the copy becomes, by the public function that makes it (for error messages).
_MADE_BY = {"apply": "pruned", "silence": "silenced"}


def _plain(cls: type) -> bool:
    """Does deepcopy copy instances of ``cls`` the way nn.Module's default does?"""
    return (getattr(cls, "__deepcopy__", None) is None and cls not in copyreg.dispatch_table
            and getattr(cls, "__reduce_ex__", None) is object.__reduce_ex__
            and getattr(cls, "__reduce__", None) is object.__reduce__)


@functools.lru_cache(maxsize=None)
def _slots(cls: type) -> tuple[str, ...]:
    """The ``__slots__`` names (other than ``__dict__``/``__weakref__``) of ``cls`` and its bases."""
    names: list[str] = []
    for klass in cls.__mro__:
        declared = klass.__dict__.get("__slots__", ())
        for name in (declared,) if isinstance(declared, str) else declared:
            if name not in ("__dict__", "__weakref__") and name not in names:
                names.append(name)
    return tuple(names)


def _atomic_tuple(value: Any) -> bool:
    """A tuple of atomic values (a conv's ``kernel_size``): ``copy.deepcopy`` returns it itself."""
    return type(value) is tuple and all(type(v) in _ATOMIC for v in value)


def _cloned_buffer(t: torch.Tensor, memo: dict[int, Any]) -> torch.Tensor | None:
    """``copy.deepcopy(t, memo)`` made by ``t.clone()``, with the memo entries deepcopy would
    make, where the two make the same tensor; None where they might not (deepcopy then)."""
    if type(t) is not torch.Tensor or id(t) in memo or not t.is_leaf or t.requires_grad \
            or t.layout is not torch.strided or t.device.type not in ("cpu", "cuda") or t.is_quantized \
            or t.is_conj() or t.is_neg() or t.storage_offset() != 0 or not t.is_contiguous() \
            or t.grad is not None or t.__dict__:
        return None
    storage = t.untyped_storage()
    storages = memo.get("torch")
    if (storages is not None and storage._cdata in storages) or storage.nbytes() != t.numel() * t.element_size():
        return None  # another tensor on this storage was copied (aliasing), or t holds part of it
    new = t.clone()
    memo.setdefault("torch", {})[storage._cdata] = new.untyped_storage()
    memo[id(t)] = new
    memo.setdefault(id(memo), []).extend((t, storage))  # as deepcopy does: keep the originals alive
    return new


def _copied_tensor(t: Any, memo: dict[int, Any], buffer: bool) -> Any:
    if t is None:
        return None
    hit = memo.get(id(t))
    if hit is not None:
        return hit
    new = _cloned_buffer(t, memo) if buffer else None
    return copy.deepcopy(t, memo) if new is None else new


def _name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _uncopyable(model: nn.Module, where: str, module: nn.Module, attr: str, value: Any,
                exc: Exception, caller: str = "apply") -> ModelCopyError:
    path = next((p for p, m in model.named_modules() if m is module), "?")
    path = ".".join(p for p in (where, path) if p) or "the model itself"
    made = _MADE_BY.get(caller, "copied")
    return ModelCopyError(
        f"cannot build the {made} model: attribute {attr!r} of {path} ({type(module).__qualname__}) holds a "
        f"{_name(type(value))}, which copy.deepcopy cannot copy ({type(exc).__name__}: {exc}). The {made} "
        f"model is a copy of the model, so every attribute must be deep-copyable (Ultralytics' ModelEMA and "
        f"copy.deepcopy need that too). Fix: delete {attr!r} before {caller} and set it again on the {made} "
        f"model, or give {_name(type(value))} a __deepcopy__; the model was not changed")


def _culprit(model: nn.Module, where: str, exc: Exception, caller: str) -> ModelCopyError | None:
    """The first module attribute whose deepcopy fails, as a ModelCopyError (None: none does)."""
    for m in model.modules():
        for k, v in m.__dict__.items():
            if k in MODULE_TREE or type(v) in _ATOMIC:
                continue
            try:
                copy.deepcopy(v)
            except Exception as err:  # noqa: BLE001 - reported with the module and attribute
                return _uncopyable(model, where, m, k, v, err, caller)
    return None


def copy_model(model: nn.Module, memo: dict[int, Any] | None = None, where: str = "",
               caller: str = "apply") -> nn.Module:
    """``copy.deepcopy(model, memo)``, faster, keeping ``__slots__`` values; ``memo`` may map
    tensors to their replacements. ``where``: the path of ``model`` in the user's model, and
    ``caller``: the public function copying it (``apply``, ``silence``), both for errors.
    Raises ModelCopyError when an attribute cannot be copied."""
    memo = {} if memo is None else memo
    modules = list(model.modules())
    states = [m.__getstate__() for m in modules] if all(_plain(type(m)) for m in modules) else None
    if states is None or not all(type(s) is dict for s in states) or any(id(m) in memo for m in modules):
        try:
            return copy.deepcopy(model, memo)
        except Exception as exc:
            found = _culprit(model, where, exc, caller)
            if found is None:
                raise
            raise found from exc
    new = [type(m).__new__(type(m)) for m in modules]
    for m, n in zip(modules, new):
        memo[id(m)] = n
    for m, n, state in zip(modules, new, states):
        out: dict[str, Any] = {}
        for k, v in state.items():
            kind = type(v)
            if kind in _ATOMIC or (kind is tuple and _atomic_tuple(v)):
                out[k] = v
            elif kind in _EMPTY and not v:  # (most are a module's empty hook dicts)
                out[k] = kind()
            elif k == "_modules" and kind is dict:
                out[k] = {name: None if c is None else memo[id(c)] for name, c in v.items()}
            elif k in MODULE_TREE and kind is dict:
                buffers = k == "_buffers"
                out[k] = {name: _copied_tensor(t, memo, buffers) for name, t in v.items()}
            else:
                out[k] = _copied(model, where, m, k, v, memo, caller)
        n.__setstate__(out)
        for k in _slots(type(m)):
            if hasattr(m, k):
                object.__setattr__(n, k, _copied(model, where, m, k, getattr(m, k), memo, caller))
    memo.setdefault(id(memo), []).append(model)  # as deepcopy does: keep the original alive
    return memo[id(model)]


def _copied(model: nn.Module, where: str, module: nn.Module, attr: str, value: Any, memo: dict[int, Any],
            caller: str) -> Any:
    try:
        return copy.deepcopy(value, memo)
    except Exception as exc:
        raise _uncopyable(model, where, module, attr, value, exc, caller) from exc
