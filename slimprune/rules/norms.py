"""Rules for normalisation layers that are not ``torch.nn``'s own: subclasses that rewrite
``forward`` (timm's ``BatchNormAct2d`` calls ``F.batch_norm`` and then an activation),
fused norm + activation modules, channels-first LayerNorm and RMSNorm, and functional
``F.batch_norm`` / ``F.group_norm`` / ``F.layer_norm`` calls on a module's own parameters.

Two mechanisms:

* **Known classes** (timm's, registered when the first timm module is looked up, so
  slimprune never imports timm itself) are traced as leaves. Each rule slices the norm's
  parameters with their roles (γ ``scale``, β ``shift``, running statistics), so network
  slimming and :class:`~slimprune.SparsityRegularizer` see their γ, and ``resize`` updates
  ``num_features`` / ``num_channels`` / ``normalized_shape`` so the user's own ``forward``
  still runs after pruning. A fused activation or dropout (``self.act``, ``self.drop``)
  must act per channel (a module with a pointwise rule, or ``Identity``); anything else
  makes the layer a barrier.
* **Functional calls** inside a module fx traces through: ``F.batch_norm(x, mean, var,
  weight, bias, ...)`` and ``F.group_norm(x, groups, weight, bias)`` whose tensors are
  parameters or buffers read from the model get the roles a ``BatchNorm2d``'s have.

Norms that normalise across channels (LayerNorm, GroupNorm, RMSNorm) are inexact: their
groups are prunable but never exact, as with ``nn.LayerNorm`` (see docs/concepts.md).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ._registry import lookup_rule, register_lazy_rules, register_rule
from .layers import _grouped_in, _resize_gn, claim_norm_param, group_norm, prelu

__all__ = ["register_timm_rules", "claim_norm_param"]

_BN_PARAMS = (("weight", "scale"), ("bias", "shift"), ("running_mean", "mean"), ("running_var", "aux"))
_LN_PARAMS = (("weight", "scale"), ("bias", "shift"))


# ------------------------------------------------------------------------ helpers
def _fused_children_ok(m: nn.Module) -> str | None:
    """None if every child of a fused norm (its act, its drop) acts per channel; else why not."""
    from .pointwise import pointwise

    for name, child in m.named_children():
        rule = lookup_rule("call_module", None, child)
        if rule is None or rule.propagate is not pointwise:
            return f"its {name!r} ({type(child).__name__}) is not known to act per channel"
    return None


def _slice_norm(ctx, node: fx.Node, m: nn.Module, labels: np.ndarray, params: tuple[tuple[str, str], ...]) -> None:
    for name, role in params:
        if isinstance(getattr(m, name, None), torch.Tensor):
            ctx.param(node, name, 0, labels, role)


def _resize_features(m: nn.Module, orig: nn.Module) -> None:
    for name in ("weight", "running_mean", "bias"):
        t = getattr(m, name, None)
        if isinstance(t, torch.Tensor):
            if hasattr(m, "num_features"):
                m.num_features = t.shape[0]
            return


def _resize_shape(m: nn.Module, orig: nn.Module) -> None:
    t = getattr(m, "weight", None)
    if isinstance(t, torch.Tensor):
        m.normalized_shape = (t.shape[0],)


# ------------------------------------------------------------------ module rules
def batch_norm_like(ctx, node: fx.Node) -> Any:
    """A BatchNorm that is not ``nn.BatchNorm2d``'s forward (timm's ``BatchNormAct2d``,
    ``FrozenBatchNormAct2d``): per-channel statistics and affine, then a per-channel act."""
    m = ctx.module(node)
    x = ctx.passthrough(node)
    if x is None:
        return None
    if x.axis != 1:
        return ctx.barrier(node, f"channels are on axis {x.axis}, {type(m).__name__} normalises axis 1")
    why = _fused_children_ok(m)
    if why is not None:
        return ctx.barrier(node, why)
    _slice_norm(ctx, node, m, x.labels, _BN_PARAMS)
    return x


def group_norm_like(ctx, node: fx.Node) -> Any:
    """timm's ``GroupNormAct`` / ``GroupNorm`` / ``GroupNorm1``: a GroupNorm, then a per-channel act."""
    why = _fused_children_ok(ctx.module(node))
    if why is not None:
        return ctx.barrier(node, why)
    return group_norm(ctx, node)


def _channel_norm(channels_first: bool):
    def rule(ctx, node: fx.Node) -> Any:
        """A LayerNorm / RMSNorm over the channel axis alone (axis 1 for the "2d" classes, the
        last axis otherwise): inexact, as the statistics run over all channels."""
        m = ctx.module(node)
        x = ctx.passthrough(node)
        if x is None:
            return None
        shape = ctx.shape(node)
        axis = 1 if channels_first else len(shape) - 1
        norm_shape = tuple(getattr(m, "normalized_shape", ()))
        if x.axis != axis or len(norm_shape) != 1:
            return ctx.barrier(node, f"{type(m).__name__} normalises axis {axis}, the channels are on axis {x.axis}")
        if not isinstance(getattr(m, "weight", None), torch.Tensor):
            return ctx.barrier(node, f"{type(m).__name__} without affine weights cannot be resized")
        why = _fused_children_ok(m)
        if why is not None:
            return ctx.barrier(node, why)
        ctx.inexact_units(x.labels)
        _slice_norm(ctx, node, m, x.labels, _LN_PARAMS)
        return x

    return rule


# timm class names by the rule they get; looked up by name so that any timm version works.
_TIMM_BN = ("BatchNormAct2d", "SyncBatchNormAct", "FrozenBatchNormAct2d", "FrozenBatchNorm2d")
_TIMM_GN = ("GroupNormAct", "GroupNorm1Act", "GroupNorm", "GroupNorm1")
_TIMM_CHANNELS_FIRST = ("LayerNorm2d", "LayerNorm2dFp32", "LayerNormAct2d", "LayerNormAct2dFp32", "LayerNormExp2d",
                        "RmsNorm2d", "RmsNorm2dFp32", "RmsNormAct2d", "RmsNormAct2dFp32",
                        "SimpleNorm2d", "SimpleNorm2dFp32")
_TIMM_CHANNELS_LAST = ("LayerNorm", "LayerNormFp32", "LayerNormAct", "LayerNormActFp32",
                       "RmsNorm", "RmsNormFp32", "RmsNormAct", "RmsNormActFp32", "SimpleNorm", "SimpleNormFp32")
_TIMM_ACTS = ("Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "GELU", "GELUTanh",
              "QuickGELU", "SwishMe", "MishMe", "HardSigmoidMe", "HardSwishMe", "HardMishMe")
_TIMM_MODULES = ("timm.layers.norm_act", "timm.layers.norm", "timm.layers.activations", "timm.layers.activations_me",
                 "timm.layers.linear")


def register_timm_rules() -> None:
    """Register the rules for timm's norm, activation and Linear layers (called on the first timm
    module slimprune looks up; timm must be importable)."""
    from .pointwise import pointwise

    found: dict[str, type] = {}
    for path in _TIMM_MODULES:
        try:
            mod = importlib.import_module(path)
        except ImportError:
            continue
        for name, obj in vars(mod).items():
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == path:
                found.setdefault(name, obj)

    def present(names: tuple[str, ...]) -> list[type]:
        return [found[n] for n in names if n in found]

    register_rule(*present(_TIMM_BN), resize=_resize_features)(batch_norm_like)
    register_rule(*present(_TIMM_GN), resize=_resize_gn)(group_norm_like)
    register_rule(*present(_TIMM_CHANNELS_FIRST), resize=_resize_shape)(_channel_norm(True))
    register_rule(*present(_TIMM_CHANNELS_LAST), resize=_resize_shape)(_channel_norm(False))
    register_rule(*present(_TIMM_ACTS))(pointwise)
    if "PReLU" in found:
        from .layers import _resize_prelu

        register_rule(found["PReLU"], resize=_resize_prelu)(prelu)
    if "Linear" in found:  # nn.Linear whose forward calls F.linear (a torchscript cast)
        from .layers import _fold_linear, _resize_linear, linear

        register_rule(found["Linear"], resize=_resize_linear, fold=_fold_linear)(linear)


register_lazy_rules("timm", register_timm_rules)


# -------------------------------------------------------------- functional norms
@register_rule(F.batch_norm, torch.batch_norm)
def functional_batch_norm(ctx, node: fx.Node) -> Any:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` over axis 1."""
    x = ctx.input(node, 0, "input")
    if x is None:
        return ctx.keep_all((node.args, node.kwargs))
    if x.axis != 1:
        return ctx.barrier(node, f"channels are on axis {x.axis}, batch_norm normalises axis 1")
    for index, (name, role) in zip((3, 4, 1, 2), _BN_PARAMS):
        claim_norm_param(ctx, ctx.arg(node, index, name), x.labels, role)
    return x


@register_rule(F.group_norm, torch.group_norm)
def functional_group_norm(ctx, node: fx.Node) -> Any:
    """``F.group_norm(x, num_groups, weight, bias)``: groups stay equal in size; inexact."""
    x = ctx.input(node, 0, "input")
    if x is None:
        return ctx.keep_all((node.args, node.kwargs))
    groups = ctx.arg(node, 1, "num_groups")
    if x.axis != 1 or not isinstance(groups, int) or groups < 1 or x.labels.size % groups:
        return ctx.barrier(node, "group_norm over axis 1 with a constant number of groups")
    _grouped_in(ctx, x.labels, groups)
    labels = np.tile(x.labels.reshape(groups, -1)[0], groups)
    ctx.inexact_units(labels)
    for index, (name, role) in zip((2, 3), _LN_PARAMS):
        claim_norm_param(ctx, ctx.arg(node, index, name), labels, role)
    return ctx.info_of(1, labels)


@register_rule(F.normalize)
def normalize(ctx, node: fx.Node) -> Any:
    """``F.normalize(x, p, dim)``: along another axis each channel is scaled by its own norm;
    along the channel axis every channel is divided by the norm over all of them, so
    removing one changes the others (inexact, as LayerNorm)."""
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    dim = ctx.arg(node, 2, "dim", 1)
    if not isinstance(dim, int):
        return ctx.barrier(node, "normalize over a dim that is not a constant")
    if dim % len(ctx.shape(node)) == x.axis:
        ctx.inexact_units(x.labels)
    return ctx.passthrough(node)
