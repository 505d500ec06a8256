"""Every registered channel rule is exercised: a corpus of tiny snippets, one per target.

Each snippet is a small model ``conv -> op -> conv`` (or ``linear -> op -> linear`` for ops
on the last axis) that uses one registered target, traced, planned, pruned and checked
against the silenced original (:func:`tests.helpers.assert_pruned_equals_silenced`).
Rules that normalise across channels are inexact: their snippet checks that the plan says
so and that a plan that refuses inexact removal stays exact. While a snippet runs, the
registry notes which rules it handed out (:func:`~slimprune.rules._registry.lookups_recorded`);
``test_every_registered_rule_is_exercised[...]`` then asserts, per registered target, that
some snippet of this module looked its rule up. A new rule without a snippet fails there,
by name, whatever else the suite runs or in what order.

The aliases of one op (``torch.add``, ``operator.add``, ``Tensor.add``, ``add_``) come from
tables; every generated case runs its op on the example input.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import operator
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimprune
from slimprune.rules import pointwise as pointwise_rules
from slimprune.rules import registered_targets
from slimprune.rules._registry import load_lazy_rules, lookups_recorded, rule_of, rule_targets, target_name
from tests.helpers import assert_pruned_equals_silenced
from tests.models import randomize_bn

torch.set_num_threads(1)

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_SIDE = {1: 8, 2: 6, 3: 4}  # spatial size of the example input per dimension count


class Snippet(nn.Module):
    """``a(x) -> op -> head``; with ``second``, ``op(a(x), b(x))`` (two labelled operands).

    ``op`` is a module (traced as one call) or a plain function fx traces through, so the
    torch function or tensor method it calls is what the graph records.
    """

    def __init__(self, op: nn.Module | Callable[..., Any], dims: int = 2, width: int = 8,
                 second: bool = False, head: nn.Module | None = None, last_axis: bool = False) -> None:
        super().__init__()
        if last_axis:
            self.a: nn.Module = nn.Linear(5, width)
            self.b = nn.Linear(5, width) if second else None
            self.head: nn.Module = head or nn.Linear(width, 3)
        else:
            conv = _CONV[dims]
            self.a = conv(3, width, 3, padding=1)
            self.b = conv(3, width, 3, padding=1) if second else None
            self.head = head or conv(width, 4, 1)
        if isinstance(op, nn.Module):
            self.op = op
        else:
            self.fn = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = self.op if "op" in self._modules else self.fn
        y = self.a(x)
        out = op(y, self.b(x)) if self.b is not None else op(y)
        return self.head(out)


@dataclass(frozen=True)
class Case:
    """One snippet: how to build it, its input, and what its check asserts."""

    name: str
    build: Callable[[], nn.Module]
    dims: int = 2
    last_axis: bool = False
    inexact: bool = False  # the rule normalises across channels: removal is never exact
    inputs: Callable[[torch.Generator], torch.Tensor] | None = None  # default: a float image batch

    def example(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(0)
        if self.inputs is not None:
            return self.inputs(gen)
        if self.last_axis:
            return torch.randn(2, 4, 5, generator=gen)
        return torch.randn(2, 3, *([_SIDE[self.dims]] * self.dims), generator=gen)


CASES: list[Case] = []


def case(name: str, op: nn.Module | Callable[[], nn.Module] | Callable[..., Any], dims: int = 2, *,
         second: bool = False, module: bool = False, head: Callable[[], nn.Module] | None = None,
         last_axis: bool = False, inexact: bool = False) -> None:
    """Add a snippet around ``op``; ``module=True``: ``op`` is a zero-argument factory of the
    module under test (a fresh one per build)."""

    def build() -> nn.Module:
        inner = op() if module else op
        return Snippet(inner, dims, second=second, head=head() if head else None, last_axis=last_axis)

    CASES.append(Case(name, build, dims, last_axis, inexact))


def _dims_of(name: str) -> int:
    return 1 if "1d" in name else 3 if "3d" in name else 2


def _positive(t: torch.Tensor) -> torch.Tensor:
    return t.abs() + 1.0


# ------------------------------------------------------------ per-channel (pointwise) ops
# Constructor arguments by class name (dimension suffix dropped); the others take none.
_MODULE_ARGS: dict[str, tuple[Any, ...]] = {
    "Threshold": (0.1, 0.0), "MaxPool": (2,), "AvgPool": (2,), "AdaptiveAvgPool": (2,), "AdaptiveMaxPool": (2,),
    "LPPool": (2.0, 2), "ZeroPad": (1,), "ConstantPad": (1, 0.0), "ReflectionPad": (1,), "ReplicationPad": (1,),
    "CircularPad": (1,),
}
_MODULE_KWARGS: dict[str, dict[str, Any]] = {
    "Upsample": {"scale_factor": 2}, "UpsamplingNearest": {"scale_factor": 2}, "UpsamplingBilinear": {"scale_factor": 2},
}
# Every torch.nn class the registry maps to the pointwise rule gets a snippet.
_POINTWISE_MODULES = tuple(t for kind, t in rule_targets() if kind == "module" and t.__module__.startswith("torch.nn")
                           and (r := rule_of(kind, t)) is not None and r.propagate is pointwise_rules.pointwise)


def _construct(cls: type[nn.Module]) -> Callable[[], nn.Module]:
    key = cls.__name__.removesuffix("1d").removesuffix("2d").removesuffix("3d")
    return lambda: cls(*_MODULE_ARGS.get(key, ()), **_MODULE_KWARGS.get(key, {}))


for _cls in _POINTWISE_MODULES:
    case(f"nn.{_cls.__name__}", _construct(_cls), _dims_of(_cls.__name__), module=True)
case("nn.Softmax over space", lambda: nn.Softmax(dim=2), module=True)
case("nn.LogSoftmax over space", lambda: nn.LogSoftmax(dim=2), module=True)

# (name, dims, the call on the conv output y)
_POINTWISE_CALLS: list[tuple[str, int, Callable[[torch.Tensor], torch.Tensor]]] = [
    ("F.relu", 2, F.relu), ("F.relu_", 2, F.relu_), ("F.relu6", 2, F.relu6), ("F.elu", 2, F.elu),
    ("F.elu_", 2, F.elu_), ("F.selu", 2, F.selu), ("F.celu", 2, F.celu), ("F.leaky_relu", 2, F.leaky_relu),
    ("F.leaky_relu_", 2, F.leaky_relu_), ("F.gelu", 2, F.gelu), ("F.silu", 2, F.silu), ("F.mish", 2, F.mish),
    ("F.hardswish", 2, F.hardswish), ("F.hardsigmoid", 2, F.hardsigmoid), ("F.hardtanh", 2, F.hardtanh),
    ("F.hardtanh_", 2, F.hardtanh_), ("F.sigmoid", 2, F.sigmoid), ("F.tanh", 2, F.tanh),
    ("F.softplus", 2, F.softplus), ("F.softsign", 2, F.softsign), ("F.logsigmoid", 2, F.logsigmoid),
    ("F.hardshrink", 2, F.hardshrink), ("F.softshrink", 2, F.softshrink), ("F.tanhshrink", 2, F.tanhshrink),
    ("F.rrelu", 2, F.rrelu), ("F.threshold", 2, lambda y: F.threshold(y, 0.1, 0.0)),
    ("F.dropout", 2, lambda y: F.dropout(y, 0.5, training=False)),
    ("F.dropout1d", 1, lambda y: F.dropout1d(y, 0.5, training=False)),
    ("F.dropout2d", 2, lambda y: F.dropout2d(y, 0.5, training=False)),
    ("F.dropout3d", 3, lambda y: F.dropout3d(y, 0.5, training=False)),
    ("F.alpha_dropout", 2, lambda y: F.alpha_dropout(y, 0.5, training=False)),
    ("F.feature_alpha_dropout", 2, lambda y: F.feature_alpha_dropout(y, 0.5, training=False)),
    ("F.max_pool1d", 1, lambda y: F.max_pool1d(y, 2)), ("F.max_pool2d", 2, lambda y: F.max_pool2d(y, 2)),
    ("F.max_pool3d", 3, lambda y: F.max_pool3d(y, 2)), ("F.avg_pool1d", 1, lambda y: F.avg_pool1d(y, 2)),
    ("F.avg_pool2d", 2, lambda y: F.avg_pool2d(y, 2)), ("F.avg_pool3d", 3, lambda y: F.avg_pool3d(y, 2)),
    ("F.adaptive_avg_pool1d", 1, lambda y: F.adaptive_avg_pool1d(y, 2)),
    ("F.adaptive_avg_pool2d", 2, lambda y: F.adaptive_avg_pool2d(y, 2)),
    ("F.adaptive_avg_pool3d", 3, lambda y: F.adaptive_avg_pool3d(y, 2)),
    ("F.adaptive_max_pool1d", 1, lambda y: F.adaptive_max_pool1d(y, 2)),
    ("F.adaptive_max_pool2d", 2, lambda y: F.adaptive_max_pool2d(y, 2)),
    ("F.adaptive_max_pool3d", 3, lambda y: F.adaptive_max_pool3d(y, 2)),
    ("F.lp_pool1d", 1, lambda y: F.lp_pool1d(y, 2.0, 2)), ("F.lp_pool2d", 2, lambda y: F.lp_pool2d(y, 2.0, 2)),
    ("F.interpolate", 2, lambda y: F.interpolate(y, scale_factor=2)),
    ("F.upsample", 2, lambda y: F.upsample(y, scale_factor=2)),
    ("F.upsample_nearest", 2, lambda y: F.upsample_nearest(y, scale_factor=2)),
    ("F.upsample_bilinear", 2, lambda y: F.upsample_bilinear(y, scale_factor=2)),
    ("F.pad", 2, lambda y: F.pad(y, (1, 1, 1, 1))),
    ("torch.relu", 2, torch.relu), ("torch.relu_", 2, torch.relu_), ("torch.sigmoid", 2, torch.sigmoid),
    ("torch.tanh", 2, torch.tanh), ("torch.exp", 2, lambda y: torch.exp(y.tanh())), ("torch.abs", 2, torch.abs),
    ("torch.neg", 2, torch.neg), ("torch.sqrt", 2, lambda y: torch.sqrt(_positive(y))),
    ("torch.rsqrt", 2, lambda y: torch.rsqrt(_positive(y))), ("torch.square", 2, torch.square),
    ("torch.clamp", 2, lambda y: torch.clamp(y, -0.5, 0.5)), ("torch.clip", 2, lambda y: torch.clip(y, -0.5, 0.5)),
    ("torch.erf", 2, torch.erf), ("torch.sin", 2, torch.sin), ("torch.cos", 2, torch.cos),
    ("torch.max_pool1d", 1, lambda y: torch.max_pool1d(y, 2)), ("torch.max_pool2d", 2, lambda y: torch.max_pool2d(y, 2)),
    ("torch.avg_pool1d", 1, lambda y: torch.avg_pool1d(y, 2)),
    ("torch.adaptive_avg_pool1d", 1, lambda y: torch.adaptive_avg_pool1d(y, 2)),
    ("torch.nan_to_num", 2, torch.nan_to_num), ("torch.sign", 2, torch.sign),
    ("torch.log", 2, lambda y: torch.log(_positive(y))), ("torch.reciprocal", 2, lambda y: torch.reciprocal(_positive(y))),
    ("operator.neg", 2, operator.neg), ("operator.pos", 2, operator.pos), ("operator.abs", 2, operator.abs),
]
for _name, _dims, _call in _POINTWISE_CALLS:
    case(_name, _call, _dims)


def _stochastic_depth() -> nn.Module:
    from torchvision.ops import StochasticDepth  # its forward calls the fx-wrapped function

    return StochasticDepth(0.5, "row")


case("torchvision.ops.stochastic_depth", _stochastic_depth, module=True)

# Tensor methods by name: the arguments each is called with (none where absent).
_METHOD_ARGS: dict[str, tuple[Any, ...]] = {
    "clamp": (-0.5, 0.5), "clamp_": (-0.5, 0.5), "clamp_min": (0.0,), "clamp_max": (0.0,), "clip": (-0.5, 0.5),
    "pow": (2,), "to": (torch.float32,),
}
_ON_POSITIVE = {"sqrt", "rsqrt", "log", "reciprocal"}
_BACK_TO_FLOAT = {"half", "double", "bfloat16"}  # the head convolution runs in float32
for _m in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "sqrt", "rsqrt",
           "square", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "sign", "log", "reciprocal",
           "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "cpu",
           "pow", "erf", "sin", "cos", "nan_to_num"):

    def _method(y: torch.Tensor, m: str = _m) -> torch.Tensor:
        out = getattr(_positive(y) if m in _ON_POSITIVE else y, m)(*_METHOD_ARGS.get(m, ()))
        return out.float() if m in _BACK_TO_FLOAT else out

    case(f"Tensor.{_m}", _method)
case("Tensor.type_as", lambda y: y.type_as(y))
case("Tensor.requires_grad_", lambda y: y.requires_grad_(False))


def _cuda(y: torch.Tensor) -> torch.Tensor:
    return y.cuda().to(y.device)  # (moved back, so the head convolution runs where it was)


case("Tensor.cuda", _cuda)
# Without a GPU, Tensor.cuda is replaced by a stand-in that returns its tensor while this
# snippet runs (see check): the rule under test only says that the values keep their channels.
_NEEDS_CUDA_STAND_IN = {"Tensor.cuda"}


# ----------------------------------------------------- elementwise ops of two operands
# (name, the call on two conv outputs y and z); a divisor or a base is made positive.
def _div(f: Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda y, z: f(y, _positive(z))


def _pow(f: Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda y, z: f(_positive(y), z.tanh())


def _cmp(f: Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda y, z: f(y, z).float() * y


# (Python's in-place operators and the deprecated F.sigmoid, F.tanh and F.upsample* have no
# rule: slimprune's tracers record ``y += z`` on a tensor as ``y.add_(z)`` (see _augmented.py)
# and on a Python value as operator.add, and fx records the deprecated functions as what they
# call. Their snippets stay, to show that models using them still prune exactly.)
_BINARY_CALLS: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = [
    ("operator.add", operator.add), ("operator.sub", operator.sub), ("operator.mul", operator.mul),
    ("operator.truediv", _div(operator.truediv)), ("operator.floordiv", _div(operator.floordiv)),
    ("operator.mod", _div(operator.mod)), ("operator.pow", _pow(operator.pow)),
    ("operator.iadd", operator.iadd), ("operator.isub", operator.isub), ("operator.imul", operator.imul),
    ("operator.itruediv", _div(operator.itruediv)), ("operator.ifloordiv", _div(operator.ifloordiv)),
    ("operator.imod", _div(operator.imod)), ("operator.ipow", _pow(operator.ipow)),
    ("torch.add", torch.add), ("torch.sub", torch.sub), ("torch.mul", torch.mul), ("torch.div", _div(torch.div)),
    ("torch.true_divide", _div(torch.true_divide)), ("torch.multiply", torch.multiply),
    ("torch.subtract", torch.subtract), ("torch.floor_divide", _div(torch.floor_divide)),
    ("torch.remainder", _div(torch.remainder)), ("torch.fmod", _div(torch.fmod)), ("torch.pow", _pow(torch.pow)),
    ("torch.maximum", torch.maximum), ("torch.minimum", torch.minimum), ("torch.fmax", torch.fmax),
    ("torch.fmin", torch.fmin), ("torch.clamp_min", torch.clamp_min), ("torch.clamp_max", torch.clamp_max),
    ("torch.lerp", lambda y, z: torch.lerp(y, z, 0.25)), ("torch.addcmul", lambda y, z: torch.addcmul(y, z, z)),
    ("torch.addcdiv", lambda y, z: torch.addcdiv(y, z, _positive(z))),
    ("operator.gt", _cmp(operator.gt)), ("operator.ge", _cmp(operator.ge)), ("operator.lt", _cmp(operator.lt)),
    ("operator.le", _cmp(operator.le)), ("operator.eq", _cmp(operator.eq)), ("operator.ne", _cmp(operator.ne)),
    ("torch.gt", _cmp(torch.gt)), ("torch.ge", _cmp(torch.ge)), ("torch.lt", _cmp(torch.lt)),
    ("torch.le", _cmp(torch.le)), ("torch.eq", _cmp(torch.eq)), ("torch.ne", _cmp(torch.ne)),
    ("torch.where", lambda y, z: torch.where(y > z, y, z)),
]
for _name, _call in _BINARY_CALLS:
    case(_name, _call, second=True)

_DIVIDING = {"div", "div_", "true_divide", "floor_divide", "floor_divide_", "remainder", "remainder_", "fmod", "fmod_"}
for _m in ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "floor_divide",
           "floor_divide_", "remainder", "remainder_", "fmod", "fmod_", "pow_", "maximum", "minimum",
           "fmax", "fmin", "lerp", "lerp_", "addcmul", "addcmul_", "addcdiv", "addcdiv_",
           "gt", "ge", "lt", "le", "eq", "ne"):

    def _binary_method(y: torch.Tensor, z: torch.Tensor, m: str = _m) -> torch.Tensor:
        if m in _DIVIDING:
            return getattr(y, m)(_positive(z))
        if m == "pow_":
            return _positive(y).pow_(z.tanh())
        if m.startswith("lerp"):
            return getattr(y, m)(z, 0.25)
        if m.startswith("addc"):
            return getattr(y, m)(z, _positive(z))
        if m in ("gt", "ge", "lt", "le", "eq", "ne"):
            return getattr(y, m)(z).float() * y
        return getattr(y, m)(z)

    case(f"Tensor.{_m}", _binary_method, second=True)
case("Tensor.clip_ with tensor bounds", lambda y, z: y.clip_(z - 1.0, z + 1.0), second=True)
case("Tensor.clamp_min with a tensor", lambda y, z: y.clamp_min(z), second=True)
case("torch.clamp with tensor bounds", lambda y, z: torch.clamp(y, min=z), second=True)


# --------------------------------------------------------------- reductions, softmax, norms
def _spatial(f: Callable[..., Any], **kw: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda y: f(y, dim=(2, 3), keepdim=True, **kw)


for _name, _f in (("torch.mean", torch.mean), ("torch.sum", torch.sum), ("torch.amax", torch.amax),
                  ("torch.amin", torch.amin), ("torch.std", torch.std), ("torch.var", torch.var),
                  ("torch.logsumexp", torch.logsumexp), ("torch.norm", torch.norm),
                  ("torch.linalg.vector_norm", torch.linalg.vector_norm)):
    case(_name, _spatial(_f))
for _m in ("mean", "sum", "amax", "amin", "std", "var", "logsumexp", "norm"):
    case(f"Tensor.{_m}", lambda y, m=_m: getattr(y, m)(dim=(2, 3), keepdim=True))
case("torch.mean over channels", lambda y: y - torch.mean(y, dim=1, keepdim=True))
for _name, _f in (("F.softmax", F.softmax), ("F.log_softmax", F.log_softmax), ("torch.softmax", torch.softmax),
                  ("torch.log_softmax", torch.log_softmax)):
    case(_name, lambda y, f=_f: f(y, dim=3))
case("Tensor.softmax", lambda y: y.softmax(dim=3))
case("Tensor.log_softmax", lambda y: y.log_softmax(dim=3))
case("F.normalize over space", lambda y: F.normalize(y, dim=2))
case("F.normalize over channels", lambda y: F.normalize(y, dim=1), inexact=True)


# ------------------------------------------------------- shape queries and new tensors
case("Tensor.size", lambda y: y.view(y.size(0), y.size(1), -1).mean(-1, keepdim=True).unsqueeze(-1))
case("Tensor.size of the channel axis", lambda y: y.reshape(y.size(0), y.size(1), y.size(2) * y.size(3)).unsqueeze(-1))
case("getattr shape", lambda y: y.reshape(y.shape[0], y.shape[1], -1).unsqueeze(-1))
case("getattr dtype", lambda y: y.to(y.dtype))
case("Tensor.dim", lambda y: y * (y.dim() - 3))
case("Tensor.numel", lambda y: y / y.numel())
case("Tensor.nelement", lambda y: y / y.nelement())
case("Tensor.type, the name", lambda y: y * (y.type() == "torch.FloatTensor"))
case("Tensor.type, a cast", lambda y: y.type(torch.float32))
case("Tensor.get_device", lambda y: y * (y.get_device() + 2))
case("Tensor.new_empty", lambda y: y * (y.new_empty(y.shape).dim() - 3))
case("Tensor.new_zeros", lambda y: y + y.new_zeros(y.shape))
case("Tensor.new_ones", lambda y: y * y.new_ones(y.size(0), y.size(1), y.size(2), y.size(3)))
case("Tensor.new_full", lambda y: y * y.new_full(y.shape, 2.0))
case("torch.empty_like", lambda y: y * (torch.empty_like(y).dim() - 3))
case("torch.zeros_like", lambda y: y + torch.zeros_like(y))
# a constant tensor of literal size (not a head count: no channels; see rules/heads.py constant_heads)
case("torch.zeros", lambda y: y + torch.zeros((y.shape[0], 1, 1, 1)))
case("torch.ones", lambda y: y * torch.ones((y.shape[0], 1, 1, 1)))
case("torch.empty", lambda y: y + torch.empty((y.shape[0], 1, 1, 1)).fill_(0.5))
case("torch.full", lambda y: y + torch.full((y.shape[0], 1, 1, 1), 0.5))
case("torch.ones_like", lambda y: y * torch.ones_like(y))
case("torch.full_like", lambda y: y * torch.full_like(y, 2.0))


# ------------------------------------------------------------------ cat, split, getitem
def _cat_head() -> nn.Module:
    return nn.Conv2d(16, 4, 1)


for _name, _f in (("torch.cat", torch.cat), ("torch.concat", torch.concat), ("torch.concatenate", torch.concatenate)):
    case(_name, lambda y, z, f=_f: f([y, z], 1), second=True, head=_cat_head)
case("torch.cat along space", lambda y, z: torch.cat([y, z], 2), second=True)
case("torch.stack", lambda y, z: torch.stack([y, z], 2).mean(2), second=True)


def _swap_halves(parts: Any) -> torch.Tensor:
    return torch.cat([parts[1], parts[0]], 1)


case("torch.split", lambda y: _swap_halves(torch.split(y, 4, 1)))
case("Tensor.split", lambda y: _swap_halves(y.split([3, 5], 1)))
case("Tensor.split_with_sizes", lambda y: _swap_halves(y.split_with_sizes([3, 5], 1)))
case("torch.split_with_sizes", lambda y: _swap_halves(torch.split_with_sizes(y, [3, 5], 1)))
case("torch.chunk", lambda y: _swap_halves(torch.chunk(y, 2, 1)))
case("Tensor.chunk", lambda y: _swap_halves(y.chunk(2, 1)))


def _restack(parts: Any, n: int, dim: int) -> torch.Tensor:
    """The ``n`` pieces of an unbind, stacked again in reverse (fx cannot iterate a node)."""
    return torch.stack([parts[n - 1 - i] for i in range(n)], dim)


case("torch.unbind", lambda y: _restack(torch.unbind(y, 2), 6, 2))  # along space: every piece has the channels
case("Tensor.unbind", lambda y: _restack(y.unbind(3), 6, 3))
case("Tensor.unbind along the channels", lambda y: _restack(y.unbind(1), 8, 1))  # each piece one channel: kept
case("getitem slice of channels", lambda y: torch.cat([y[:, 4:], y[:, :4]], 1))
case("getitem one channel as a gate", lambda y: y * y[:, 0, None].sigmoid())
case("getitem a one-channel slice as a gate", lambda y: y * y[:, 2:3].sigmoid())


# ---------------------------------------------------------------------- reshapes, axes
_LINEAR_HEAD = {"head": lambda: nn.Linear(8 * 36, 3)}


def _back(t: torch.Tensor) -> torch.Tensor:
    """[N, C, L] -> [N, C, L, 1], for the 2-d head."""
    return t.unsqueeze(-1)


case("torch.flatten", lambda y: _back(torch.flatten(y, 2)))
case("Tensor.flatten", lambda y: _back(y.flatten(2)))
case("torch.flatten into a linear", lambda y: torch.flatten(y, 1), **_LINEAR_HEAD)
case("nn.Flatten", nn.Flatten, module=True, **_LINEAR_HEAD)
case("torch.squeeze", lambda y: torch.squeeze(y.mean(3, keepdim=True), 3).unsqueeze(3))
case("Tensor.squeeze", lambda y: y.mean(3, keepdim=True).squeeze(3).unsqueeze(3))
case("Tensor.squeeze of every unit axis", lambda y: y.amax((2, 3), keepdim=True).squeeze()[:, :, None, None])
case("torch.unsqueeze", lambda y: torch.unsqueeze(y, 2).mean(2))
case("Tensor.unsqueeze", lambda y: y.unsqueeze(2).sum(2))
case("torch.unflatten", lambda y: torch.unflatten(y.flatten(2), 2, (6, 6)))
case("Tensor.unflatten", lambda y: y.flatten(2).unflatten(2, (6, 6)))
case("nn.Unflatten", lambda: nn.Sequential(nn.Flatten(2), nn.Unflatten(2, (6, 6))), module=True)
case("torch.reshape", lambda y: torch.reshape(y, (2, 8, 36, 1)))
case("Tensor.reshape", lambda y: y.reshape(2, 8, 36, 1))
case("Tensor.view", lambda y: y.view(2, 8, 36).unsqueeze(-1))
case("Tensor.view, channel shuffle", lambda y: y.view(2, 2, 4, 6, 6).transpose(1, 2).reshape(2, 8, 6, 6))
case("Tensor.reshape_as", lambda y: y.flatten(2).reshape_as(y))
case("Tensor.view_as", lambda y: y.flatten(2).view_as(y))
case("Tensor.expand", lambda y: y * y.mean((2, 3), keepdim=True).expand(2, 8, 6, 6))
case("Tensor.expand_as", lambda y: y * y.mean((2, 3), keepdim=True).expand_as(y))
case("Tensor.repeat", lambda y: y.repeat(1, 1, 2, 1))
case("torch.permute", lambda y: torch.permute(torch.permute(y, (0, 2, 3, 1)), (0, 3, 1, 2)))
case("Tensor.permute", lambda y: y.permute(0, 2, 3, 1).permute(0, 3, 1, 2))
case("torch.transpose", lambda y: torch.transpose(y, 1, 3).transpose(1, 3))
case("torch.swapaxes", lambda y: torch.swapaxes(torch.swapaxes(y, 1, 2), 1, 2))
case("torch.swapdims", lambda y: torch.swapdims(torch.swapdims(y, 1, 3), 3, 1))
case("Tensor.swapaxes", lambda y: y.swapaxes(1, 2).swapaxes(2, 1))
case("Tensor.swapdims", lambda y: y.swapdims(1, 2).swapdims(2, 1))
case("torch.movedim", lambda y: torch.movedim(torch.movedim(y, 1, -1), -1, 1))
case("Tensor.movedim", lambda y: y.movedim(1, 3).movedim(3, 1))
case("nn.ChannelShuffle", lambda: nn.ChannelShuffle(2), module=True)
case("torch.channel_shuffle", lambda y: torch.channel_shuffle(y, 2))
case("F.channel_shuffle", lambda y: F.channel_shuffle(y, 2))
case("nn.PixelShuffle", lambda: nn.PixelShuffle(2), module=True, head=lambda: nn.Conv2d(2, 4, 1))
case("F.pixel_shuffle", lambda y: F.pixel_shuffle(y, 2), head=lambda: nn.Conv2d(2, 4, 1))
case("torch.pixel_shuffle", lambda y: torch.pixel_shuffle(y, 2), head=lambda: nn.Conv2d(2, 4, 1))
case("nn.PixelUnshuffle", lambda: nn.PixelUnshuffle(2), module=True, head=lambda: nn.Conv2d(32, 4, 1))
case("F.pixel_unshuffle", lambda y: F.pixel_unshuffle(y, 2), head=lambda: nn.Conv2d(32, 4, 1))
case("torch.pixel_unshuffle", lambda y: torch.pixel_unshuffle(y, 2), head=lambda: nn.Conv2d(32, 4, 1))
case("torch.roll", lambda y: torch.roll(y, 1, 2))
case("Tensor.roll", lambda y: y.roll((1, 2), (2, 3)))


# ------------------------------------------------------------------ layers with weights
for _dims in (1, 2, 3):
    _n = {1: "1d", 2: "2d", 3: "3d"}[_dims]
    case(f"nn.Conv{_n}", lambda d=_dims: _CONV[d](8, 8, 3, padding=1), _dims, module=True)
    case(f"nn.ConvTranspose{_n}", lambda n=_n: getattr(nn, f"ConvTranspose{n}")(8, 6, 2, stride=2), _dims,
         module=True, head=lambda d=_dims: _CONV[d](6, 4, 1))
    case(f"nn.BatchNorm{_n}", lambda n=_n: getattr(nn, f"BatchNorm{n}")(8), _dims, module=True)
    case(f"nn.InstanceNorm{_n}", lambda n=_n: getattr(nn, f"InstanceNorm{n}")(8, affine=True), _dims, module=True)
case("nn.SyncBatchNorm", lambda: nn.SyncBatchNorm(8), module=True)
case("nn.GroupNorm", lambda: nn.GroupNorm(2, 8), module=True, inexact=True)
case("nn.LayerNorm", lambda: nn.LayerNorm(8), module=True, last_axis=True, inexact=True)
case("nn.PReLU", lambda: nn.PReLU(8), module=True)
case("nn.Linear", lambda: nn.Linear(8, 8), module=True, last_axis=True)
case("F.layer_norm", lambda: _FunctionalNorm("layer"), module=True, last_axis=True, inexact=True)
case("F.batch_norm", lambda: _FunctionalNorm("batch"), module=True)
case("torch.batch_norm", lambda: _FunctionalNorm("torch_batch"), module=True)
case("F.group_norm", lambda: _FunctionalNorm("group"), module=True, inexact=True)
case("torch.group_norm", lambda: _FunctionalNorm("torch_group"), module=True, inexact=True)


class _FunctionalNorm(nn.Module):
    """A norm written with the functional call on its own parameters and buffers."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.weight = nn.Parameter(torch.rand(8) + 0.5)
        self.bias = nn.Parameter(torch.rand(8) - 0.5)
        self.register_buffer("mean", torch.rand(8) * 0.2 - 0.1)
        self.register_buffer("var", torch.rand(8) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "layer":
            return F.layer_norm(x, (8,), self.weight, self.bias)
        if self.how == "batch":
            return F.batch_norm(x, self.mean, self.var, self.weight, self.bias, False)
        if self.how == "torch_batch":
            return torch.batch_norm(x, self.weight, self.bias, self.mean, self.var, False, 0.1, 1e-5, False)
        if self.how == "group":
            return F.group_norm(x, 2, self.weight, self.bias)
        return torch.group_norm(x, 2, self.weight, self.bias, 1e-5, False)


class _Embedded(nn.Module):
    """Token ids -> Embedding -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 8), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.emb(ids)))


CASES.append(Case("nn.Embedding", _Embedded, inputs=lambda gen: torch.randint(0, 10, (2, 5), generator=gen)))


# ---------------------------------------------------------------------------- attention
class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.mha(y, y, y, need_weights=False)[0]


class _ChannelsLast(nn.Module):
    """Runs ``inner`` on ``[N, *spatial, C]`` between two channels-first convolutions."""

    def __init__(self, inner: nn.Module | Callable[[torch.Tensor], torch.Tensor], dims: int = 2) -> None:
        super().__init__()
        if isinstance(inner, nn.Module):
            self.inner = inner
        else:
            self.fn = inner
        self.dims = dims

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        inner = self.inner if "inner" in self._modules else self.fn
        last = (0, *range(2, 2 + self.dims), 1)
        first = (0, 1 + self.dims, *range(1, 1 + self.dims))
        return inner(y.permute(*last)).permute(*first)


case("nn.MultiheadAttention", _SelfAttention, module=True, last_axis=True)


def _torchvision_attention() -> None:
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models import swin_transformer
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

    case("ShiftedWindowAttention", lambda: _ChannelsLast(ShiftedWindowAttention(8, [4, 4], [2, 2], 2)), module=True)
    case("ShiftedWindowAttentionV2", lambda: _ChannelsLast(ShiftedWindowAttentionV2(8, [4, 4], [2, 2], 2)),
         module=True)
    case("ShiftedWindowAttention3d", lambda: _ChannelsLast(ShiftedWindowAttention3d(8, [2, 2, 2], [1, 1, 1], 2), 3),
         3, module=True)
    # MaxViT attends within groups of P tokens, [N, G, P, C]: here 3 groups (rows) of a 2x2 window
    CASES.append(Case("RelativePositionalMultiHeadAttention",
                      lambda: Snippet(_ChannelsLast(RelativePositionalMultiHeadAttention(8, 4, 4))),
                      inputs=lambda gen: torch.randn(2, 3, 3, 4, generator=gen)))
    # called through its module, whose global fx wraps while tracing
    case("swin _patch_merging_pad", lambda: _ChannelsLast(lambda t: swin_transformer._patch_merging_pad(t)),
         module=True, head=lambda: nn.Conv2d(32, 4, 1))


_torchvision_attention()


# ------------------------------------------------------------ timm's norms and activations
def _timm_cases() -> None:
    found: dict[str, type] = {}
    for path in ("timm.layers.norm_act", "timm.layers.norm", "timm.layers.activations", "timm.layers.activations_me",
                 "timm.layers.linear"):
        mod = importlib.import_module(path)
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == path:
                found.setdefault(name, obj)

    def add(name: str, make: Callable[[type], nn.Module], **kw: Any) -> None:
        if name in found:
            case(f"timm {name}", lambda: make(found[name]), module=True, **kw)

    for name in ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d", "FrozenBatchNorm2d", "PReLU"):
        add(name, lambda c: c(8))
    for name in ("GroupNormAct", "GroupNorm"):
        add(name, lambda c: c(8, 2), inexact=True)
    for name in ("GroupNorm1Act", "GroupNorm1", "LayerNorm2d", "LayerNorm2dFp32", "LayerNormAct2d",
                 "LayerNormAct2dFp32", "LayerNormExp2d", "RmsNorm2d", "RmsNorm2dFp32", "RmsNormAct2d",
                 "RmsNormAct2dFp32", "SimpleNorm2d", "SimpleNorm2dFp32"):
        add(name, lambda c: c(8), inexact=True)
    for name in ("LayerNorm", "LayerNormFp32", "LayerNormAct", "LayerNormActFp32", "RmsNorm", "RmsNormFp32",
                 "RmsNormAct", "RmsNormActFp32", "SimpleNorm", "SimpleNormFp32"):
        add(name, lambda c: c(8), inexact=True, last_axis=True)
    for name in ("Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU", "GELUTanh",
                 "QuickGELU", "SwishMe", "MishMe", "HardSigmoidMe", "HardSwishMe", "HardMishMe"):
        add(name, lambda c: c())
    add("Linear", lambda c: c(8, 8), last_axis=True)
    # the unfused attention path's fx-wrapped helpers (rules/timm_heads.py): scores + the mask
    # resolved from a second labelled tensor, so the two are tied
    attention = importlib.import_module("timm.layers.attention")
    case("timm maybe_add_mask(scores, resolve_self_attn_mask(...))",
         lambda a, b: attention.maybe_add_mask(a, attention.resolve_self_attn_mask(a.shape[-1], a, b)), second=True)
    case("timm maybe_add_mask without a mask", lambda a: attention.maybe_add_mask(a, None))


def _timm_layer_cases() -> None:
    """timm's weight-standardised convs and BlurPool2d (rules/timm_layers.py): the outputs of
    each conv prune (its inputs, read by the standardisation, are kept); a depthwise one and
    the blur pass their channels through."""
    std = importlib.import_module("timm.layers.std_conv")
    blur = importlib.import_module("timm.layers.blur_pool")
    for name in ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"):
        cls = getattr(std, name)
        case(f"timm {name}", lambda c=cls: c(8, 8, 3), module=True)
        case(f"timm {name} depthwise", lambda c=cls: c(8, 8, 3, groups=8), module=True)
    case("timm BlurPool2d", lambda: blur.BlurPool2d(8, stride=1), module=True)


if importlib.util.find_spec("timm") is not None:  # (without timm its rules are never registered)
    _timm_cases()
    _timm_layer_cases()


# ------------------------------------------------------- recurrent layers (rules/recurrent.py)
class _PerStep(nn.Module):
    """A recurrent layer's per-step outputs (its hidden units) on the last axis."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.rnn(y)[0]


case("nn.LSTM", lambda: _PerStep(nn.LSTM(8, 4, bidirectional=True, batch_first=True)), module=True, last_axis=True)
case("nn.GRU", lambda: _PerStep(nn.GRU(8, 8, num_layers=2)), module=True, last_axis=True)
case("nn.RNN", lambda: _PerStep(nn.RNN(8, 4, bidirectional=True, batch_first=True)), module=True, last_axis=True)


# ------------------------------------------------------- F.linear on a module's parameters
class _FunctionalLinear(nn.Module):
    """BEiT's ``F.linear(x, self.qkv.weight, torch.cat((q_bias, k_bias)))``: a Linear whose bias
    is a concatenation of parameters (each sliced with its rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8, bias=False)
        self.q_bias, self.k_bias = nn.Parameter(torch.randn(4)), nn.Parameter(torch.randn(4))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.linear(y, self.proj.weight, torch.cat((self.q_bias, self.k_bias)))


case("F.linear on a module's parameters", _FunctionalLinear, module=True, last_axis=True)


# ------------------------------------------------- attention products (rules/heads.py)
# Channels on a batch axis (heads) of both operands: a @ bᵀ ties them and keeps them there.
case("operator.matmul", lambda a, b: a @ b.transpose(-2, -1), second=True)
case("torch.matmul", lambda a, b: torch.matmul(a, b.transpose(-2, -1)), second=True)
case("Tensor.matmul", lambda a, b: a.matmul(b.transpose(-2, -1)), second=True)
# (B, C, L) @ (B, L, C): a's channels stay on axis 1, b's (contracted away) are kept
case("torch.bmm", lambda a, b: torch.bmm(a, b.transpose(1, 2)), 1, second=True)
case("Tensor.bmm", lambda a, b: a.bmm(b.transpose(1, 2)), 1, second=True)
# (B, heads, N, D) with the channels as heads: q, k, v heads tied, the output keeps them
case("F.scaled_dot_product_attention", lambda a, b: F.scaled_dot_product_attention(a, b, b), second=True)


# ------------------------------------------------- Hugging Face transformers (rules/hf.py)
class _Rotary(nn.Module):
    """A rotary embedding module (a leaf: its cos/sin carry no channels) beside the channels."""

    def __init__(self, cls: type[nn.Module], config: Any) -> None:
        super().__init__()
        self.rot = cls(config=config)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(y.shape[1]).unsqueeze(0)
        cos, sin = self.rot(y, pos)
        return y * (cos.mean() + sin.mean())


class _PositionBiased(nn.Module):
    """Attention over a 2x2 window of 4 heads of 2 channels, with Swin's per-head bias table."""

    def __init__(self, cls: type[nn.Module]) -> None:
        super().__init__()
        self.bias = cls(4, (2, 2))
        nn.init.normal_(self.bias.relative_position_bias_table)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        b, n, _ = y.shape
        q = y.view(b, n, -1, 2).transpose(1, 2)
        w = torch.softmax(q @ q.transpose(-2, -1) + self.bias(), -1)
        return (w @ q).transpose(1, 2).reshape(b, n, -1)


def _transformers_cases() -> None:
    from transformers.models.swin.modeling_swin import SwinRelativePositionBias
    from transformers.pytorch_utils import Conv1D

    case("transformers SwinRelativePositionBias", lambda: _PositionBiased(SwinRelativePositionBias), module=True,
         last_axis=True)

    case("transformers Conv1D", lambda: Conv1D(8, 8), module=True, last_axis=True)
    for family in ("llama", "mistral", "qwen2"):
        mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        prefix = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[family]
        config_cls = getattr(importlib.import_module(f"transformers.models.{family}"), f"{prefix}Config")
        config = config_cls(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
        norm, rotary = getattr(mod, f"{prefix}RMSNorm"), getattr(mod, f"{prefix}RotaryEmbedding")
        case(f"transformers {prefix}RMSNorm", lambda norm=norm: norm(8), module=True, last_axis=True, inexact=True)
        case(f"transformers {prefix}RotaryEmbedding", lambda r=rotary, c=config: _Rotary(r, c), module=True,
             last_axis=True)
    from transformers.models.mt5.modeling_mt5 import MT5LayerNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    for t5_norm in (T5LayerNorm, MT5LayerNorm):  # an RMSNorm under another name
        case(f"transformers {t5_norm.__name__}", lambda n=t5_norm: n(8), module=True, last_axis=True, inexact=True)
    from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm
    from transformers.models.convnextv2.modeling_convnextv2 import ConvNextV2LayerNorm

    for ln in (ConvNextLayerNorm, ConvNextV2LayerNorm):  # an nn.LayerNorm over channels first or last
        case(f"transformers {ln.__name__} channels_first", lambda n=ln: n(8, data_format="channels_first"),
             module=True, inexact=True)
        case(f"transformers {ln.__name__}", lambda n=ln: n(8), module=True, last_axis=True, inexact=True)


if importlib.util.find_spec("transformers") is not None:  # (a test dependency, as timm)
    _transformers_cases()


# ------------------------------------------------------------------------------ running
def _plan(model: nn.Module, x: Any, **kw: Any) -> slimprune.PruningPlan:
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        return slimprune.plan(model, 0.5, example_inputs=x, **kw)


def check(c: Case) -> None:
    """Trace, plan, prune and compare ``c``'s snippet with the silenced original."""
    torch.manual_seed(0)
    model = randomize_bn(c.build()).eval()
    x = c.example()
    if c.inexact:
        plan = _plan(model, x)
        assert any(not g.exact for g in plan.groups if g.removed), f"{c.name}: no group marked inexact"
        small = slimprune.apply(model, plan)
        with torch.no_grad():
            assert small(x).shape == model(x).shape
        plan = _plan(model, x, allow_inexact=False)
    else:
        plan = _plan(model, x)
    assert_pruned_equals_silenced(model, plan, x)


@contextlib.contextmanager
def _cuda_stand_in(active: bool) -> Iterator[None]:
    original = torch.Tensor.cuda
    if active:
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


@functools.cache
def exercised(name: str) -> frozenset[tuple[str, Any]]:
    """Run one snippet's check; the (kind, target) of every rule it looked up."""
    c = _BY_NAME[name]
    with lookups_recorded() as seen, _cuda_stand_in(name in _NEEDS_CUDA_STAND_IN and not torch.cuda.is_available()):
        check(c)
    return frozenset(seen)


_BY_NAME = {c.name: c for c in CASES}
assert len(_BY_NAME) == len(CASES), "two snippets share a name"


@pytest.mark.parametrize("name", list(_BY_NAME))
def test_snippet_prunes_exactly(name: str) -> None:
    exercised(name)


load_lazy_rules()  # timm's rules count once timm (a test dependency) is there
TARGETS = rule_targets()


@pytest.fixture(scope="module")
def corpus_lookups() -> set[tuple[str, Any]]:
    seen: set[tuple[str, Any]] = set()
    for name in _BY_NAME:
        try:
            seen |= exercised(name)
        except Exception:  # noqa: BLE001 - that snippet's own test reports the failure
            pass
    return seen


def test_rule_targets_are_what_registered_targets_lists() -> None:
    listed = registered_targets()
    for kind, key in (("module", "modules"), ("function", "functions"), ("method", "methods")):
        assert len(listed[key]) == sum(1 for k, _ in TARGETS if k == kind)


@pytest.mark.parametrize("kind, target", TARGETS, ids=[target_name(k, t) for k, t in TARGETS])
def test_every_registered_rule_is_exercised(kind: str, target: Any, corpus_lookups: set[tuple[str, Any]]) -> None:
    assert (kind, target) in corpus_lookups, (
        f"no snippet of tests/test_rule_coverage.py uses the rule for {target_name(kind, target)}: add one "
        f"(a tiny model calling it, pruned and checked against the silenced original), or delete the rule "
        f"if no model can reach it")
