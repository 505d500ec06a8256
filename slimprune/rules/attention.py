"""Rules for attention: whole heads go, with the residual-stream channels they occupy.

``nn.MultiheadAttention``, torchvision's Swin ``ShiftedWindowAttention`` (v1, v2 and the video 3d one) and
MaxViT's ``RelativePositionalMultiHeadAttention`` all need input width == heads × head_dim
(their forward reshapes the projected input by the input's own width), so one unit is one
head: its head_dim input channels, its q/k/v rows, its output-projection rows and columns
and its per-head tables. head_dim (and so the softmax scale) never changes, which keeps
removal exact.

Also here: Swin's patch merging (``_patch_merging_pad``, an fx-wrapped function that
concatenates the four 2×2 neighbours along the channel axis), which joins Swin's stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ._registry import register_rule

try:  # torchvision is optional: its attention blocks get rules only when it is there
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import (ShiftedWindowAttention, ShiftedWindowAttentionV2,
                                                     _patch_merging_pad)
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d
except ImportError:  # pragma: no cover
    RelativePositionalMultiHeadAttention = ShiftedWindowAttention = ShiftedWindowAttentionV2 = None


def _heads(ctx, labels: np.ndarray, num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Tie each head's channels into one unit: (one label per head, one per channel)."""
    heads = labels.reshape(num_heads, -1)
    ctx.tie(heads, heads[:, :1])
    return heads[:, 0], np.repeat(heads[:, 0], heads.shape[1])


def _fold_mha(m: nn.Module, consts: torch.Tensor) -> torch.Tensor:
    """Constant input channels shift q, k and v: their change goes to ``in_proj_bias``."""
    return m.in_proj_weight.detach() @ consts.to(m.in_proj_weight.dtype)


def _resize_mha(m: nn.Module, orig: nn.Module) -> None:
    m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
    m.num_heads = m.embed_dim // orig.head_dim
    m.head_dim = orig.head_dim


@register_rule(nn.MultiheadAttention, resize=_resize_mha, fold=_fold_mha)
def multihead_attention(ctx, node):
    """Whole heads go, with the embedding channels they occupy.

    ``nn.MultiheadAttention`` needs input width == heads × head_dim == output width, so one
    unit is one head: its head_dim input columns, its q/k/v rows, its out_proj rows and
    columns. head_dim (and so the softmax scale) never changes, which keeps removal exact.
    """
    m = ctx.module(node)
    names = ("query", "key", "value")
    infos = [ctx.input(node, i, n) for i, n in enumerate(names)]
    if any(i is None for i in infos):
        return ctx.keep_all((node.args, node.kwargs))
    last = len(ctx.shape(node.args[0])) - 1
    if not m._qkv_same_embed_dim or m.bias_k is not None or any(i.axis != last for i in infos):
        return ctx.barrier(node, "MultiheadAttention with separate k/v widths, bias_k, or channels off the last axis")
    labels = infos[0].labels
    for i in infos[1:]:
        ctx.tie(labels, i.labels)
    _, per_head = _heads(ctx, labels, m.num_heads)
    qkv = np.concatenate([per_head] * 3)
    ctx.param(node, "in_proj_weight", 0, qkv, "out")
    ctx.param(node, "in_proj_weight", 1, per_head, "in")
    ctx.consumer(node, per_head, last)
    if m.in_proj_bias is not None:
        ctx.param(node, "in_proj_bias", 0, qkv, "out")
    out = f"{node.target}.out_proj"
    ctx.slice_of(out, "weight", 0, per_head, "out")
    ctx.slice_of(out, "weight", 1, per_head, "in")
    if m.out_proj.bias is not None:
        ctx.slice_of(out, "bias", 0, per_head, "out")
    q_len, k_len = (_positions(ctx, ctx.arg(node, i, name), m.batch_first) for i, name in ((0, "query"), (1, "key")))
    # Per sample: q projected at q_len positions, k and v at k_len; q·kᵀ and weights·v, each
    # q_len·k_len·(kept width); the output projection at q_len positions.
    ctx.cost_of(str(node.target), "in_proj_weight", (q_len + 2 * k_len) / 3)
    ctx.cost_of(out, "weight", 2 * q_len * k_len, dim=1)
    ctx.cost_of(out, "weight", q_len)
    shapes = ctx.shape(node)
    return (ctx.info_of(last, per_head),) + tuple(None for _ in shapes[1:])


def _positions(ctx, arg, batch_first: bool) -> int:
    """Sequence positions per sample of an ``nn.MultiheadAttention`` input (batched or not)."""
    shape = ctx.shape(arg)
    if len(shape) == 2:
        return shape[0]
    return shape[1] if batch_first else shape[0]


def _swin_windows(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """(positions after padding, tokens per window) of torchvision's (video) Swin attention.

    The input [B, *spatial, C] is padded to whole windows; the 3-D variant first shrinks a
    window axis to the input's size where the input is smaller (as its forward does).
    """
    spatial = shape[1:-1]
    window = list(m.window_size)
    if len(spatial) == 3:
        window = [min(w, size) for w, size in zip(window, spatial)]
    padded = [-(-size // w) * w for size, w in zip(spatial, window)]
    return math.prod(padded), math.prod(window)


def _maxvit_windows(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    """MaxViT attends within each of G groups of P tokens: input [B, G, P, D]."""
    return math.prod(shape[1:-1]), shape[-2]


def _windowed(ctx, node, qkv: str, proj: str, num_heads: int, per_head: list[tuple[str, int]],
              windows: Callable[[nn.Module, tuple[int, ...]], tuple[int, int]]):
    """Swin/MaxViT: a leaf module with a fused qkv Linear and an output Linear, on [..., C].

    ``windows(module, input shape)`` gives the positions the Linears run at per sample and the
    tokens each position attends to (its window), for the predicted FLOPs.
    """
    x = ctx.input(node, 0, "x")
    if x is None:
        return ctx.keep_all((node.args, node.kwargs))
    shape = ctx.shape(node.args[0])
    last = len(shape) - 1
    if x.axis != last or shape[-1] % num_heads:
        return ctx.barrier(node, "attention with channels off the last axis")
    one, per_channel = _heads(ctx, x.labels, num_heads)
    t = str(node.target)
    m = ctx.module(node)
    q = m.get_submodule(qkv)
    ctx.slice_of(f"{t}.{qkv}", "weight", 0, np.concatenate([per_channel] * 3), "out")
    ctx.slice_of(f"{t}.{qkv}", "weight", 1, per_channel, "in")
    if q.bias is not None:
        ctx.slice_of(f"{t}.{qkv}", "bias", 0, np.concatenate([per_channel] * 3), "out")
    o = m.get_submodule(proj)
    ctx.slice_of(f"{t}.{proj}", "weight", 0, per_channel, "out")
    ctx.slice_of(f"{t}.{proj}", "weight", 1, per_channel, "in")
    if o.bias is not None:
        ctx.slice_of(f"{t}.{proj}", "bias", 0, per_channel, "out")
    for name, dim in per_head:  # relative-position tables, logit scales: sliced, never silenced
        owner, _, param = name.rpartition(".")
        ctx.slice_of(f"{t}.{owner}" if owner else t, param, dim, one, "aux")
    ctx.consumer(node, per_channel, last)  # (no fold: constants into it are kept, with a note)
    positions, window = windows(m, tuple(shape))
    ctx.cost_of(f"{t}.{qkv}", "weight", positions)
    ctx.cost_of(f"{t}.{proj}", "weight", 2 * positions * window, dim=1)  # q·kᵀ and weights·v
    ctx.cost_of(f"{t}.{proj}", "weight", positions)
    return ctx.info_of(last, per_channel)


def _resize_swin(m: nn.Module, orig: nn.Module) -> None:
    m.num_heads = m.qkv.weight.shape[1] // (orig.qkv.weight.shape[1] // orig.num_heads)


def _resize_maxvit(m: nn.Module, orig: nn.Module) -> None:
    m.n_heads = m.to_qkv.weight.shape[1] // orig.head_dim  # scale_factor stays: it is a constant


if ShiftedWindowAttention is not None:

    @register_rule(ShiftedWindowAttention, ShiftedWindowAttention3d, resize=_resize_swin)
    def swin_attention(ctx, node):
        """Swin v1 (images and video): heads with their slice of the relative-position bias table."""
        m = ctx.module(node)
        return _windowed(ctx, node, "qkv", "proj", m.num_heads, [("relative_position_bias_table", 1)], _swin_windows)

    @register_rule(ShiftedWindowAttentionV2, resize=_resize_swin)
    def swin_v2_attention(ctx, node):
        """Swin v2: heads with their logit scale and their output of the position-bias MLP."""
        m = ctx.module(node)
        linears = [n for n, c in m.cpb_mlp.named_children() if isinstance(c, nn.Linear)]
        last = linears[-1]
        # The position-bias MLP runs once per call on the relative-coordinates table, whatever
        # the batch: counted per sample as at batch 1.
        table = math.prod(m.relative_coords_table.shape[:-1])
        for name in linears:
            ctx.cost_of(f"{node.target}.cpb_mlp.{name}", "weight", table)
        return _windowed(ctx, node, "qkv", "proj", m.num_heads,
                         [("logit_scale", 0), (f"cpb_mlp.{last}.weight", 0)]
                         + ([(f"cpb_mlp.{last}.bias", 0)] if m.cpb_mlp.get_submodule(last).bias is not None else []),
                         _swin_windows)

    @register_rule(RelativePositionalMultiHeadAttention, resize=_resize_maxvit)
    def maxvit_attention(ctx, node):
        """MaxViT: heads with their slice of the relative-position bias table."""
        m = ctx.module(node)
        return _windowed(ctx, node, "to_qkv", "merge", m.n_heads, [("relative_position_bias_table", 1)],
                         _maxvit_windows)

    @register_rule(_patch_merging_pad)
    def swin_patch_merging(ctx, node):
        """[..., H, W, C] -> [..., H/2, W/2, 4C]: the four neighbours' channels, side by side."""
        x = ctx.input(node, 0, "x")
        if x is None:
            return None
        if x.axis != len(ctx.shape(node.args[0])) - 1:
            return ctx.barrier(node, "patch merging with channels off the last axis")
        return ctx.info_of(x.axis, np.tile(x.labels, 4))
