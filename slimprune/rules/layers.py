"""Rules for layers with weights: convolutions, Linear, norms, PReLU, Embedding."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .._channels import ChannelInfo
from ._registry import register_rule

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _positions(shape: torch.Size, channel_axis: int) -> int:
    """Output positions per sample: every dim except batch and channels."""
    dims = [d for i, d in enumerate(shape) if i not in (0, channel_axis)]
    return math.prod(dims)


def _grouped_in(ctx, x_labels: np.ndarray, groups: int) -> np.ndarray:
    """Input channels of a grouped layer: position ``p`` of every group lives or dies together."""
    per = x_labels.reshape(groups, -1)
    ctx.tie(per, per[0:1])
    return per[0]


# --------------------------------------------------------------------------- convolution
def _resize_conv(m: nn.Module, orig: nn.Module) -> None:
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    if orig.groups > 1 and orig.groups == orig.in_channels:  # depthwise: groups follow the channels
        mult = orig.out_channels // orig.in_channels
        m.groups = m.weight.shape[0] if transposed else m.weight.shape[0] // mult
    if transposed:
        m.in_channels = m.weight.shape[0]
        m.out_channels = m.weight.shape[1] * m.groups
    else:
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[1] * m.groups


def _fold_conv(m: nn.Module, consts: torch.Tensor) -> torch.Tensor:
    """Bias change for constant input channels: const × sum of the kernel (interior positions)."""
    w = m.weight.detach()
    g = m.groups
    wsum = w.sum(dim=tuple(range(2, w.dim())))  # [Cout, Cin/g]
    cout, ci = wsum.shape
    c = consts.to(w.dtype).reshape(g, ci)
    return torch.einsum("goi,gi->go", wsum.reshape(g, cout // g, ci), c).reshape(-1)


def claim_norm_param(ctx, value: Any, labels: np.ndarray, role: str) -> None:
    """A per-channel tensor argument of a functional norm (``weight``, ``running_mean``):
    tie its labels to the channels it scales and, when it is a parameter or buffer read from
    the model, give its slice the role it has in a norm module (γ: ``scale``)."""
    if value is None or not isinstance(ctx.shape(value), torch.Size):
        return
    shape = ctx.shape(value)
    if len(shape) != 1 or shape[0] != labels.size:
        ctx.keep(labels)  # a broadcast or oddly shaped statistic: keep the channels
        return
    info = ctx.info(value)
    if info is None or isinstance(info, tuple):
        if labels.size > 1:
            ctx.keep(labels)  # a constant the rewriter cannot slice
        return
    ctx.tie(info.labels, labels)
    if isinstance(value, fx.Node) and value.op == "get_attr":
        module, _, name = str(value.target).rpartition(".")
        entry = ctx.slices.get((module, name, 0))
        if entry is not None and entry[1] in ("source", "aux"):
            entry[1] = role


@register_rule(*_CONV, resize=_resize_conv, fold=_fold_conv)
def conv(ctx, node):
    m = ctx.module(node)
    x = ctx.input(node, 0, "input")
    if x is not None and x.axis != 1:
        ctx.keep(x.labels)
        x = None
    out_shape = ctx.shape(node)
    ctx.cost(node, _positions(out_shape, 1))
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    if g == 1:
        out = ctx.fresh(cout)
        if x is not None:
            ctx.param(node, "weight", 1, x.labels, "in")
            ctx.consumer(node, x.labels, 1)
    elif g == cin:  # depthwise (channel multiplier cout // cin): output j belongs to input j // mult
        if x is None:
            return None
        out = np.repeat(x.labels, cout // cin)
    else:  # grouped: equal-size groups, so position p is removed from every group at once
        if x is not None:
            ctx.param(node, "weight", 1, _grouped_in(ctx, x.labels, g), "in")
            ctx.consumer(node, x.labels, 1)
        out = np.tile(ctx.fresh(cout // g), g)
    ctx.param(node, "weight", 0, out, "out")
    if m.bias is not None:
        ctx.param(node, "bias", 0, out, "out")
    return ctx.info_of(1, out)


# No fold for transposed convs: each output position sees a different subset of kernel
# taps, so a constant input is not a per-channel bias. Constants stay (see _prune._folds).
@register_rule(*_CONVT, resize=_resize_conv)
def conv_transpose(ctx, node):
    m = ctx.module(node)
    x = ctx.input(node, 0, "input")
    if x is not None and x.axis != 1:
        ctx.keep(x.labels)
        x = None
    ctx.cost(node, _positions(ctx.shape(node.args[0]), 1))
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    if g == cin and g > 1:  # depthwise transposed
        if x is None:
            return None
        ctx.param(node, "weight", 0, x.labels, "in")
        out = np.repeat(x.labels, cout // cin)
    else:
        if x is not None:
            if g > 1:
                _grouped_in(ctx, x.labels, g)
            ctx.param(node, "weight", 0, x.labels, "in")
            ctx.consumer(node, x.labels, 1)
        per = ctx.fresh(cout // g)
        ctx.param(node, "weight", 1, per, "out")
        out = np.tile(per, g)
    if m.bias is not None:
        ctx.param(node, "bias", 0, out, "out")
    return ctx.info_of(1, out)


# ------------------------------------------------------------------------------- linear
def _resize_linear(m: nn.Module, orig: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fold_linear(m: nn.Module, consts: torch.Tensor) -> torch.Tensor:
    return m.weight.detach() @ consts.to(m.weight.dtype)


@register_rule(nn.Linear, resize=_resize_linear, fold=_fold_linear)
def linear(ctx, node):
    return linear_over_last_axis(ctx, node, "input", in_dim=1, out_dim=0)


def linear_over_last_axis(ctx, node, input_name: str, in_dim: int, out_dim: int):
    """A layer mapping the last axis through ``weight`` (input channels along ``in_dim``,
    outputs along ``out_dim``) plus an optional ``bias``: ``nn.Linear`` (in 1, out 0) and
    Hugging Face's ``Conv1D`` (in 0, out 1). Channels on another axis are kept."""
    m = ctx.module(node)
    x = ctx.input(node, 0, input_name)
    shape = ctx.shape(node)
    last = len(shape) - 1
    if x is not None and x.axis != last:
        ctx.keep(x.labels)
        x = None
    ctx.cost(node, math.prod(shape[1:-1]) if len(shape) > 1 else 1)
    if x is not None:
        ctx.param(node, "weight", in_dim, x.labels, "in")
        ctx.consumer(node, x.labels, last)
    out = ctx.fresh(int(m.weight.shape[out_dim]))
    ctx.param(node, "weight", out_dim, out, "out")
    if isinstance(getattr(m, "bias", None), torch.Tensor):
        ctx.param(node, "bias", 0, out, "out")
    return ctx.info_of(last, out)


def _param_slot(ctx, value: Any) -> tuple[str, str] | None:
    """``(module, name)`` of a parameter read from the model (a ``get_attr`` node), or None."""
    if not (isinstance(value, fx.Node) and value.op == "get_attr"):
        return None
    module, _, name = str(value.target).rpartition(".")
    owner = ctx.submodule(module)
    return (module, name) if name in dict(owner.named_parameters(recurse=False)) else None


def _claim(ctx, module: str, name: str, dim: int, labels: np.ndarray, role: str) -> None:
    """Slice ``module.name`` along ``dim`` with ``labels`` in ``role`` (a parameter read by a
    functional op: its get_attr labels, role ``source``, take the op's role)."""
    ctx.slice_of(module, name, dim, labels, role)
    entry = ctx.slices.get((module, name, dim))
    if entry is not None and entry[1] in ("source", "aux"):
        entry[1] = role


@register_rule(torch.nn.functional.linear)
def functional_linear(ctx, node):
    """``F.linear(x, self.qkv.weight, bias)`` on a parameter of the model (timm's BEiT, EVA and
    SwinV2 attention add a bias made with ``torch.cat((q_bias, k_bias, v_bias))``): a Linear.
    The weight's columns go with ``x``'s last-axis channels, its rows with new output
    channels, and a bias whose labels are known (a parameter, or a concatenation of them) with
    the rows; any other bias keeps the outputs. A weight that is not a parameter of the model
    (computed at run time) cannot be sliced: a barrier."""
    weight, bias = ctx.arg(node, 1, "weight"), ctx.arg(node, 2, "bias")
    slot = _param_slot(ctx, weight)
    shape, wshape = ctx.shape(node), ctx.shape(weight)
    if slot is None or not isinstance(wshape, torch.Size) or len(wshape) != 2 or not isinstance(shape, torch.Size):
        return ctx.barrier(node, "F.linear with a weight that is not a parameter of the model")
    module, name = slot
    last = len(shape) - 1
    x = ctx.input(node, 0, "input")
    w = ctx.info(weight)
    if x is not None and x.axis == last:
        _claim(ctx, module, name, 1, x.labels, "in")
    else:
        if x is not None:
            ctx.keep(x.labels)
        if isinstance(w, ChannelInfo) and w.axis == 1:
            ctx.keep(w.labels)  # the input's width stays: so do the weight's columns
    out = ctx.fresh(int(wshape[0]))
    _claim(ctx, module, name, 0, out, "out")
    if bias is not None:
        b = ctx.info(bias)
        if isinstance(b, ChannelInfo) and b.axis == 0 and b.labels.size == out.size:
            ctx.tie(b.labels, out)
        else:
            ctx.keep(out)
            ctx.keep_all(bias)
    ctx.cost_of(module, name, math.prod(shape[1:-1]) if len(shape) > 1 else 1)
    return ctx.info_of(last, out)


# -------------------------------------------------------------------------------- norms
def _resize_bn(m: nn.Module, orig: nn.Module) -> None:
    for name in ("weight", "running_mean"):
        t = getattr(m, name, None)
        if t is not None:
            m.num_features = t.shape[0]
            return


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, resize=_resize_bn)
def batch_norm(ctx, node):
    m = ctx.module(node)
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    if x.axis != 1:
        return ctx.barrier(node, f"channels are on axis {x.axis}, BatchNorm normalises axis 1")
    if m.affine:
        ctx.param(node, "weight", 0, x.labels, "scale")
        ctx.param(node, "bias", 0, x.labels, "shift")
    if m.running_mean is not None:
        ctx.param(node, "running_mean", 0, x.labels, "mean")
        ctx.param(node, "running_var", 0, x.labels, "aux")
    return x


@register_rule(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, resize=_resize_bn)
def instance_norm(ctx, node):
    return batch_norm(ctx, node)


def _resize_gn(m: nn.Module, orig: nn.Module) -> None:
    m.num_channels = m.weight.shape[0] if m.affine else m.num_channels


@register_rule(nn.GroupNorm, resize=_resize_gn)
def group_norm(ctx, node):
    m = ctx.module(node)
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    if x.axis != 1:
        return ctx.barrier(node, f"channels are on axis {x.axis}, GroupNorm normalises axis 1")
    # Groups must stay the same size: position p goes from every group at once. The
    # statistics of a group change when channels leave it, so removal is never exact.
    _grouped_in(ctx, x.labels, m.num_groups)
    labels = np.tile(x.labels.reshape(m.num_groups, -1)[0], m.num_groups)
    ctx.inexact_units(labels)
    if m.affine:
        ctx.param(node, "weight", 0, labels, "scale")
        ctx.param(node, "bias", 0, labels, "shift")
    return ctx.info_of(1, labels)


def _resize_ln(m: nn.Module, orig: nn.Module) -> None:
    t = m.weight if m.weight is not None else None
    if t is not None:
        m.normalized_shape = (t.shape[0],)


@register_rule(nn.LayerNorm, resize=_resize_ln)
def layer_norm(ctx, node):
    m = ctx.module(node)
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    shape = ctx.shape(node)
    if len(m.normalized_shape) != 1 or x.axis != len(shape) - 1:
        return ctx.barrier(node, "LayerNorm over more than the channel axis")
    if m.weight is None:
        return ctx.barrier(node, "LayerNorm without affine weights cannot be resized")
    # LayerNorm's mean and variance run over all channels: removal changes the others.
    ctx.inexact_units(x.labels)
    ctx.param(node, "weight", 0, x.labels, "scale")
    if m.bias is not None:
        ctx.param(node, "bias", 0, x.labels, "shift")
    return x


# --------------------------------------------------------------------- PReLU, Embedding
def _resize_prelu(m: nn.Module, orig: nn.Module) -> None:
    m.num_parameters = m.weight.shape[0]


@register_rule(nn.PReLU, resize=_resize_prelu)
def prelu(ctx, node):
    m = ctx.module(node)
    x = ctx.passthrough(node)
    if x is not None and m.num_parameters > 1:
        if x.axis != 1:
            return ctx.barrier(node, "PReLU slopes are per channel on axis 1")
        ctx.param(node, "weight", 0, x.labels, "aux")
    return x


def _resize_embedding(m: nn.Module, orig: nn.Module) -> None:
    m.embedding_dim = m.weight.shape[1]


@register_rule(nn.Embedding, resize=_resize_embedding)
def embedding(ctx, node):
    m = ctx.module(node)
    out = ctx.fresh(m.embedding_dim)
    ctx.param(node, "weight", 1, out, "out")
    return ctx.info_of(len(ctx.shape(node)) - 1, out)


@register_rule(torch.nn.functional.layer_norm)
def functional_layer_norm(ctx, node):
    """``F.layer_norm(x, (C,), weight, bias)`` over the channel axis (ConvNeXt's LayerNorm2d)."""
    from .._edits import encode

    x = ctx.input(node, 0, "input")
    if x is None:
        return ctx.keep_all((node.args, node.kwargs))
    shape = ctx.shape(node)
    norm_shape = ctx.arg(node, 1, "normalized_shape")
    if x.axis != len(shape) - 1 or not isinstance(norm_shape, (tuple, list)) or len(norm_shape) != 1:
        return ctx.barrier(node, "layer_norm over more than the channel axis")
    for index, name, role in ((2, "weight", "scale"), (3, "bias", "shift")):
        claim_norm_param(ctx, ctx.arg(node, index, name), x.labels, role)
    ctx.inexact_units(x.labels)
    encode(tuple(norm_shape))

    def edit(kept):
        n = int(kept(x.labels).sum())
        if n == norm_shape[0]:
            return []
        return [{"kind": "set_arg", "index": 1, "value": encode(type(norm_shape)([n]) if isinstance(norm_shape, list) else (n,)),
                 "old": list(norm_shape), "new": [n]}]

    ctx.edit(node, edit)
    return x
