"""Proving, from the graph alone, that every removed channel reaches its consumers as zero.

The constant probe (:mod:`._folding`) runs the silenced model to measure what removed
channels still carry, so that non-zero constants can be folded into the next layer's bias.
When every removed channel is *provably* zero at every consumer, for every finite input,
in eval mode and with batch statistics, the probe could only report zeros: there is
nothing to fold, nothing inexact and no site conflict, so :func:`zero_at_consumers` lets
``folds`` skip it. (A freshly initialised network is the common case: every BatchNorm's
β is 0. A trained one has non-zero β, so the proof fails and the probe runs.)

The proof follows the units (removed channels) along the traced graph, node by node, and
knows only a few ops; any other op proves nothing, so the probe runs:

* a silenced producer: a Conv1d/2d/3d or Linear whose weight rows and bias (if any) of
  the unit are zeroed outputs ``0·x + 0 = 0``; a BatchNorm1d/2d/3d or LayerNorm (over one
  dim, ε > 0) whose scale γ of the unit is zeroed and whose shift β is zeroed or already
  exactly 0 outputs ``0·x̂ + 0 = 0`` in both modes (x̂ is finite since ε > 0), however the
  other channels move the statistics;
* ``F.layer_norm(x, (C,), weight, bias, eps)`` with ε > 0 over the channel axis whose
  weight and bias are the model's own parameters (ConvNeXt's ``LayerNorm2d``): as the
  LayerNorm module;
* ops that map zero to zero position by position: ReLU, ReLU6, LeakyReLU, Hardswish,
  SiLU, GELU, Tanh, Identity, Dropout, average and max pooling, flatten, view, reshape,
  permute, transpose (methods and ``torch.permute`` / ``torch.transpose`` /
  ``torch.reshape``), contiguous, and torchvision's ``stochastic_depth`` (the input in
  eval mode, ``input · noise`` with finite noise in train mode);
* ``a + b``: zero where both are; ``a * b``: zero where either is (the other finite). This
  covers squeeze-excitation: its gate ``sigmoid(fc(pool(x)))`` is 0.5, not 0, where its
  input is zero, but the gated product ``gate · x`` is zero wherever the channel of ``x``
  is (the expand conv's removed outputs are exactly the gated channels: they are tied).
  A gate that is added, or that multiplies a channel that is not itself zero, proves nothing.

Which position holds which unit comes from the channel graph's labels
(:attr:`ChannelGraph.node_units`); each node gets one flag per channel position (zero
for every input, or not known), and an op whose output positions are not its input's
carries a unit over only when every position of that unit was zero. A graph with
another mode's branch is not proved. Activations are assumed finite (``0·x = 0``).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ._graph import ChannelGraph, ParamSlice

__all__ = ["zero_at_consumers"]

_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU, nn.Tanh, nn.Identity, nn.Dropout,
                 nn.Flatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ZERO_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.leaky_relu, F.hardswish, F.silu, F.gelu, torch.tanh, F.dropout,
                   torch.flatten, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d}
_ZERO_METHODS = {"relu", "relu_", "flatten", "view", "reshape", "permute", "transpose", "contiguous"}
_MOVE_FUNCTIONS = {torch.permute, torch.transpose, torch.reshape}  # their other arguments are dims or sizes


def _torchvision_zero_functions() -> set:
    """torchvision's ``stochastic_depth``: the input in eval mode, ``input * noise`` (finite) in train."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # torchvision is optional
        return set()
    return {stochastic_depth}


_ZERO_FUNCTIONS |= _torchvision_zero_functions()
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)

class _Proof:
    """Per node of the traced graph: which of its channel positions are provably zero."""

    def __init__(self, graph: ChannelGraph, model: nn.Module, removed: np.ndarray, zeroed: tuple[str, ...]) -> None:
        self.graph, self.removed, self.zeroed = graph, removed, zeroed
        self.slices = {(s.module, s.param, s.dim): s for s in graph.slices}
        self.modules = dict(model.named_modules())
        self.zero: dict[str, np.ndarray] = {}  # node -> bool per channel position
        self._scratch = np.zeros(graph.num_units, dtype=bool)

    def at(self, arg: Any, units: np.ndarray) -> np.ndarray | None:
        """``arg``'s zero flags moved onto positions holding ``units``; None if ``arg`` is no node."""
        if not isinstance(arg, fx.Node):
            return None
        src_units = self.graph.node_units.get(arg.name)
        flags = self.zero.get(arg.name)
        if src_units is None or flags is None:
            return np.zeros(units.shape, dtype=bool)
        if src_units is units or (src_units.shape == units.shape and np.array_equal(src_units, units)):
            return flags
        # Positions moved (view, permute, flatten): a unit is zero only where all its positions were.
        sc = self._scratch
        sc[src_units[flags]] = True
        sc[src_units[~flags]] = False
        out = sc[units].copy()
        sc[src_units] = False
        return out

    def visit(self, node: fx.Node) -> None:
        """Find ``node``'s zero flags (every node it reads visited before it)."""
        units = self.graph.node_units.get(node.name)
        if units is not None:
            z = self.node(node, units)
            if z is not None and z.any():
                self.zero[node.name] = z

    def node(self, node: fx.Node, units: np.ndarray) -> np.ndarray | None:
        if node.op == "call_module":
            m = self.modules.get(str(node.target))
            if m is None:
                return None
            if type(m) in _ZERO_MODULES:
                return self.first(node, units, strict=True)
            if type(m) in _PRODUCERS:
                return self.producer(str(node.target), m, units)
            if type(m) in _NORMS:
                return self.norm(str(node.target), m, units)
            return None
        if node.op == "call_function" and node.target in _ZERO_FUNCTIONS:
            return self.first(node, units, strict=True)
        if (node.op == "call_method" and node.target in _ZERO_METHODS) or (
                node.op == "call_function" and node.target in _MOVE_FUNCTIONS):
            # Extra arguments are sizes or dims (x.view(x.size(0), -1)): they move values only.
            return self.first(node, units, strict=False)
        if node.op == "call_function" and node.target is F.layer_norm:
            return self.functional_layer_norm(node, units)
        if (node.op == "call_function" and node.target in _ADD) or (node.op == "call_method" and node.target in ("add", "add_")):
            return self.combine(node, units, add=True)
        if (node.op == "call_function" and node.target in _MUL) or (node.op == "call_method" and node.target in ("mul", "mul_")):
            return self.combine(node, units, add=False)
        return None

    def first(self, node: fx.Node, units: np.ndarray, strict: bool) -> np.ndarray | None:
        """Zeros of the first argument (with ``strict``, only when no other argument is a tensor)."""
        if not node.args:
            return None
        if strict and any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
            return None
        return self.at(node.args[0], units)

    def combine(self, node: fx.Node, units: np.ndarray, add: bool) -> np.ndarray | None:
        args = list(node.args[:2])
        if len(args) != 2:
            return None
        if add and any(k != "alpha" or not _finite_number(v) for k, v in node.kwargs.items()):
            return None
        if not add and node.kwargs:
            return None
        flags = []
        for a in args:
            if isinstance(a, fx.Node):
                flags.append(self.at(a, units))
            elif not _finite_number(a) or (add and a != 0):
                return None  # a tensor constant, a non-zero addend or a non-finite factor: unknown
        if not flags:
            return None
        out = flags[0].copy()
        for f in flags[1:]:
            out = out & f if add else out | f
        return out

    def _zeroed(self, key: tuple[str, str, int], role: str, units: np.ndarray) -> np.ndarray | None:
        """Per position: does silencing zero this slice's entry? None: no such slice for these positions."""
        s = self.slices.get(key)
        # (unit ids are integers: the same array is equal to itself; others compared by value)
        if s is None or s.role != role or s.units.shape != units.shape or (
                s.units is not units and not bool((s.units == units).all())):
            return None
        return self.removed[units] if role in self.zeroed else np.zeros(units.shape, dtype=bool)

    def producer(self, name: str, m: nn.Module, units: np.ndarray) -> np.ndarray | None:
        rows = self._zeroed((name, "weight", 0), "out", units)
        if rows is None or getattr(m, "bias", None) is None:
            return rows
        bias = self._zeroed((name, "bias", 0), "out", units)
        return None if bias is None else rows & bias

    def norm(self, name: str, m: nn.Module, units: np.ndarray) -> np.ndarray | None:
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            return None
        if not _positive(getattr(m, "eps", None)):
            return None  # x̂ may be infinite
        return self.affine(name, getattr(m, "weight", None), name, getattr(m, "bias", None), units)

    def affine(self, w_owner: str, weight: Any, b_owner: str, bias: Any, units: np.ndarray,
               w_name: str = "weight", b_name: str = "bias") -> np.ndarray | None:
        """Zeros of ``γ·x̂ + β`` (x̂ finite): where γ is zeroed and β zeroed or exactly 0."""
        if not isinstance(weight, torch.Tensor):
            return None  # no affine scale: the output is x̂, not a constant
        scaled = self._zeroed((w_owner, w_name, 0), "scale", units)
        if scaled is None or bias is None:
            return scaled
        if not isinstance(bias, torch.Tensor):
            return None
        shift = self._zeroed((b_owner, b_name, 0), "shift", units)
        if shift is None:
            return None
        # β kept: zero only where it is exactly 0.
        kept_zero = (bias.detach() == 0).cpu().numpy()
        return scaled & (shift | kept_zero)

    def functional_layer_norm(self, node: fx.Node, units: np.ndarray) -> np.ndarray | None:
        """``F.layer_norm(x, (C,), weight, bias, eps)`` over the channel axis with the model's own
        γ and β (ConvNeXt's LayerNorm2d): as a LayerNorm module."""
        args = dict(zip(("input", "normalized_shape", "weight", "bias", "eps"), node.args)) | dict(node.kwargs)
        shape = args.get("normalized_shape")
        if not isinstance(shape, (tuple, list)) or len(shape) != 1 or shape[0] != units.size:
            return None
        if not _positive(args.get("eps", 1e-5)):
            return None
        owners = []
        for key in ("weight", "bias"):
            value = args.get(key)
            if value is None:
                owners.append(("", "", None))
            elif isinstance(value, fx.Node) and value.op == "get_attr":
                module, _, name = str(value.target).rpartition(".")
                owner = self.modules.get(module)
                owners.append((module, name, getattr(owner, name, None) if owner is not None else None))
            else:
                return None  # a computed γ or β: not a slice silencing zeroes
        (wm, wn, w), (bm, bn, b) = owners
        if w is None or (args.get("bias") is not None and b is None):
            return None
        return self.affine(wm, w, bm, b, units, wn, bn)


def zero_at_consumers(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, keep_shift: bool,
                      roles: tuple[str, ...]) -> bool:
    """True only if, with ``removed`` silenced as ``zero_list(…, keep_shift, roles)`` silences
    them, every consumer sees exact zeros in every removed input channel."""
    if graph.traced.other_mode is not None or not graph.node_units:
        return False
    # The consumers that read removed channels, by their node (the proof follows the first
    # graph only: a consumer in another is not proven).
    waiting: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for c in graph.consumers:
        need = removed[c.units]
        if not need.any():
            continue
        if c.graph != 0:
            return False
        waiting.setdefault(c.node, []).append((c.units, need))
    if not waiting:
        return True
    proof = _Proof(graph, model, removed, tuple(roles) + (() if keep_shift else ("shift",)))
    # One pass in graph order, stopping at the first consumer whose removed inputs are not
    # provably zero (the usual answer, for a plan that removes live channels): a consumer's
    # input is visited before it, so its flags are final when the consumer is reached.
    for node in graph.gm.graph.nodes:
        reads = waiting.pop(node.name, None)
        if reads is not None:
            if not node.args or not isinstance(node.args[0], fx.Node):
                return False
            for units, need in reads:
                flags = proof.at(node.args[0], units)
                if flags is None or not flags[need].all():
                    return False
            if not waiting:
                return True
        proof.visit(node)
    return False  # a consumer whose node the graph lacks


def _positive(eps: Any) -> bool:
    return _finite_number(eps) and eps > 0


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
