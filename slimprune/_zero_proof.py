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
  dim) whose scale γ of the unit is zeroed and whose shift β is zeroed or already exactly
  0 outputs ``0·x̂ + 0 = 0`` in both modes (x̂ is finite since ε > 0);
* ops that map zero to zero position by position: ReLU, ReLU6, LeakyReLU, Hardswish,
  SiLU, GELU, Tanh, Identity, Dropout, average and max pooling, flatten, view, reshape,
  permute, transpose, contiguous;
* ``a + b``: zero where both are; ``a * b``: zero where either is (the other finite).

Which position holds which unit comes from the channel graph's labels
(:attr:`ChannelGraph.node_units`). A graph with another mode's branch is not proved.
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
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}
_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)

_NONE = np.zeros(0, np.int64)


def zero_at_consumers(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, keep_shift: bool,
                      roles: tuple[str, ...]) -> bool:
    """True only if, with ``removed`` silenced as ``zero_list(…, keep_shift, roles)`` silences
    them, every consumer sees exact zeros in every removed input channel."""
    if graph.traced.other_mode is not None or not graph.node_units:
        return False
    zeroed = tuple(roles) + (() if keep_shift else ("shift",))
    slices = {(s.module, s.param, s.dim): s for s in graph.slices}
    modules = dict(model.named_modules())
    zero: dict[str, np.ndarray] = {}  # node -> units provably zero at every position they hold
    for node in graph.gm.graph.nodes:
        units = graph.node_units.get(node.name)
        if units is None:
            continue
        z = _node_zeros(node, units, zero, removed, zeroed, slices, modules)
        if z.size:
            zero[node.name] = np.intersect1d(z, units)
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    for c in graph.consumers:
        need = c.units[removed[c.units]]
        if not need.size:
            continue
        node = nodes.get(c.node)
        if c.graph != 0 or node is None or not node.args or not isinstance(node.args[0], fx.Node):
            return False
        if not np.isin(need, zero.get(node.args[0].name, _NONE)).all():
            return False
    return True


def _arg_zeros(arg: Any, zero: dict[str, np.ndarray]) -> np.ndarray | None:
    """Zero units of a node argument; None for a non-tensor argument."""
    if isinstance(arg, fx.Node):
        return zero.get(arg.name, _NONE)
    return None


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _node_zeros(node: fx.Node, units: np.ndarray, zero: dict[str, np.ndarray], removed: np.ndarray,
                zeroed: tuple[str, ...], slices: dict[tuple[str, str, int], ParamSlice],
                modules: dict[str, nn.Module]) -> np.ndarray:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if m is None:
            return _NONE
        if type(m) in _ZERO_MODULES:
            return _first(node, zero)
        if type(m) in _PRODUCERS:
            return _silenced_producer(str(node.target), m, units, removed, zeroed, slices)
        if type(m) in _NORMS:
            return _silenced_norm(str(node.target), m, units, removed, zeroed, slices)
        return _NONE
    if node.op == "call_function" and node.target in _ZERO_FUNCTIONS:
        return _first(node, zero)
    if node.op == "call_method" and node.target in _ZERO_METHODS:
        # Extra arguments are sizes or dims (x.view(x.size(0), -1)): they move values only.
        z = _arg_zeros(node.args[0], zero) if node.args else None
        return _NONE if z is None else z
    if (node.op == "call_function" and node.target in _ADD) or (node.op == "call_method" and node.target in ("add", "add_")):
        return _combine(node, zero, add=True)
    if (node.op == "call_function" and node.target in _MUL) or (node.op == "call_method" and node.target in ("mul", "mul_")):
        return _combine(node, zero, add=False)
    return _NONE


def _first(node: fx.Node, zero: dict[str, np.ndarray]) -> np.ndarray:
    """Zeros of the first argument, when no other argument is a tensor."""
    if not node.args or any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
        return _NONE
    z = _arg_zeros(node.args[0], zero)
    return _NONE if z is None else z


def _combine(node: fx.Node, zero: dict[str, np.ndarray], add: bool) -> np.ndarray:
    args = list(node.args[:2])
    if len(args) != 2 or any(isinstance(v, fx.Node) for k, v in node.kwargs.items()):
        return _NONE
    if add and any(k != "alpha" or not _finite_number(v) for k, v in node.kwargs.items()):
        return _NONE
    if not add and node.kwargs:
        return _NONE
    zs = [_arg_zeros(a, zero) for a in args]
    for a, z in zip(args, zs):
        if z is None and not _finite_number(a):
            return _NONE  # a tensor constant or anything else: unknown
    tensors = [z for z in zs if z is not None]
    if add:  # zero where every tensor is zero and any number added is 0
        if any(z is None and a != 0 for a, z in zip(args, zs)) or not tensors:
            return _NONE
        out = tensors[0]
        for z in tensors[1:]:
            out = np.intersect1d(out, z)
        return out
    return np.unique(np.concatenate(tensors)) if tensors else _NONE


def _zeroed_units(key: tuple[str, str, int], role: str, units: np.ndarray, removed: np.ndarray,
                  zeroed: tuple[str, ...], slices: dict[tuple[str, str, int], ParamSlice]) -> np.ndarray | None:
    """Units whose entries of this slice silencing zeroes (None: no such slice of this role)."""
    s = slices.get(key)
    if s is None or s.role != role or s.units.shape != units.shape or not np.array_equal(s.units, units):
        return None
    return np.unique(units[removed[units]]) if role in zeroed else _NONE


def _silenced_producer(name: str, m: nn.Module, units: np.ndarray, removed: np.ndarray, zeroed: tuple[str, ...],
                       slices: dict[tuple[str, str, int], ParamSlice]) -> np.ndarray:
    rows = _zeroed_units((name, "weight", 0), "out", units, removed, zeroed, slices)
    if rows is None:
        return _NONE
    if getattr(m, "bias", None) is not None:
        bias = _zeroed_units((name, "bias", 0), "out", units, removed, zeroed, slices)
        if bias is None:
            return _NONE
        rows = np.intersect1d(rows, bias)
    return rows


def _silenced_norm(name: str, m: nn.Module, units: np.ndarray, removed: np.ndarray, zeroed: tuple[str, ...],
                   slices: dict[tuple[str, str, int], ParamSlice]) -> np.ndarray:
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
        return _NONE
    if getattr(m, "weight", None) is None:
        return _NONE  # no affine scale: the output is x̂, not a constant
    scaled = _zeroed_units((name, "weight", 0), "scale", units, removed, zeroed, slices)
    if scaled is None or not scaled.size:
        return _NONE
    if getattr(m, "bias", None) is None:
        return scaled
    s = slices.get((name, "bias", 0))
    if s is None or s.role != "shift" or not np.array_equal(s.units, units):
        return _NONE
    if "shift" in zeroed:
        return scaled
    # β kept: the unit is zero only where β is exactly 0 at each of its positions.
    beta = m.bias.detach()
    pos = np.flatnonzero(np.isin(units, scaled))
    nonzero = beta[torch.as_tensor(pos, dtype=torch.long, device=beta.device)].cpu().numpy() != 0
    return np.setdiff1d(scaled, units[pos[nonzero]])
