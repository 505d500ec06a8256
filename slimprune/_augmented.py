"""Augmented assignment (``v += w``) on a tensor recorded as what it is: a write into ``v``.

On a tensor, ``v += w`` calls ``Tensor.__iadd__``: it writes into ``v``'s storage, so when
``v`` is a view (``v = y[:, 0:4]``) the write shows in ``y``. ``torch.fx.Proxy`` defines no
``__iadd__``, so Python falls back to ``__add__``: fx records an out-of-place ``add``, rebinds
``v`` to it, and a graph replaying that trace loses the write into ``y``. A pruned model
returned as a rewritten ``GraphModule`` would silently compute something else than the
original (and the probe that looks for constant channels would run the wrong function).

slimprune's tracers hand out :class:`InplaceProxy`: on a tensor, ``v += w`` is recorded as
the in-place method the tensor itself calls (``v.add_(w)``), which a GraphModule replays,
TorchScript scripts and the channel rules already know. On anything else (an int read from
a shape, a tuple) the proxy declines, so Python does what it does for those values: a new
value bound to the name, nothing else changed.

Whether a value is a tensor: the concrete tracer knows (it holds the value); the symbolic
tracer decides from where the value comes from (:func:`symbolic_is_tensor`).
"""

from __future__ import annotations

import builtins
import operator
from typing import Any

import torch.fx as fx

__all__ = ["InplaceProxy", "INPLACE_METHODS", "symbolic_is_tensor"]

# augmented operator -> the tensor method ``Tensor.__i<op>__`` performs
INPLACE_METHODS: dict[str, str] = {
    "iadd": "add_",
    "isub": "sub_",
    "imul": "mul_",
    "itruediv": "div_",
    "ifloordiv": "floor_divide_",
    "imod": "remainder_",
    "ipow": "pow_",
    "iand": "bitwise_and_",
    "ior": "bitwise_or_",
    "ixor": "bitwise_xor_",
    "ilshift": "__ilshift__",
    "irshift": "__irshift__",
}  # (a tensor has no in-place ``@=``: Python falls back to ``v = v @ w``, as fx records it)

# Reading these gives a Python value (a size, a count, a dtype), not a tensor.
_VALUE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "requires_grad", "layout"})
_VALUE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "get_device", "item", "tolist",
                            "stride", "element_size", "data_ptr", "is_contiguous", "is_floating_point"})


def symbolic_is_tensor(node: fx.Node) -> bool:
    """Is ``node``'s value a tensor, judged from where it comes from (no value at hand)?

    Shape queries and Python arithmetic or indexing on their results are values; anything
    else is taken for a tensor (a forward argument, a module's output, a tensor op).
    """
    seen: dict[fx.Node, bool] = {}

    def value(n: fx.Node) -> bool:
        if n in seen:
            return seen[n]
        seen[n] = False
        if n.op == "call_function" and n.target is builtins.getattr:
            out = len(n.args) > 1 and n.args[1] in _VALUE_ATTRIBUTES
        elif n.op == "call_method":
            out = n.target in _VALUE_METHODS
        elif n.op == "call_function" and getattr(n.target, "__module__", None) in ("_operator", "operator", "builtins"):
            # x.shape[1], c // 2, h * w: Python on values stays a value; on a tensor it is a tensor
            args = [a for a in n.args if isinstance(a, fx.Node)]
            out = bool(args) and all(value(a) for a in args)
        else:
            out = False
        seen[n] = out
        return out

    return not value(node)


def _holds_tensor(proxy: fx.Proxy) -> bool:
    decide = getattr(proxy.tracer, "holds_tensor", None)
    return decide(proxy) if decide is not None else symbolic_is_tensor(proxy.node)


class InplaceProxy(fx.Proxy):
    """An fx proxy on which ``tensor op= other`` is recorded as a write (see the module doc)."""


def _define(name: str, method: str) -> None:
    def impl(self: fx.Proxy, other: Any) -> Any:
        if not _holds_tensor(self):
            return NotImplemented  # Python then computes ``self op other`` and rebinds the name
        return self.tracer.create_proxy("call_method", method, (self, other), {})

    impl.__name__ = impl.__qualname__ = f"__{name}__"
    setattr(InplaceProxy, f"__{name}__", impl)


for _name, _method in INPLACE_METHODS.items():
    assert hasattr(operator, _name)
    _define(_name, _method)
