"""Rules that rearrange axes: flatten/view/reshape/(un)squeeze, permute/transpose,
channel shuffle, pixel (un)shuffle, expand/repeat."""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._channels import SizeOf
from .._edits import encode
from ._registry import register_rule
from .heads import head_axis


def _map_reshape(ctx, node, x, in_shape, out_shape, size_args=None):
    """Map channel labels through a reshape using the traced shapes.

    The channel axis lies in a block of input axes whose product equals the product of a
    block of output axes; labels are laid out over the block and reshaped. When the block
    splits into several axes that all carry labels (channel shuffle's ``view(n, g, c/g, ...)``)
    every axis but the widest is tied, so kept channels always form a grid that the
    pruned model can reshape the same way. A block that takes in the batch axis (MobileViT's
    ``reshape(batch * channels * patches_high, ...)``) is mapped as the traced batch of one
    would be, its first output axis holding each sample in turn (see
    :func:`_factor_out_batch`). Returns ``(info, out_axis)`` or ``(None, None)``.
    """
    a = x.axis
    if in_shape[a] == 1:
        ctx.keep(x.labels)
        return None, None
    if a > 0 and in_shape[0] > 1 and _first_block_axis(in_shape, out_shape, a) == 0 and ctx.is_batched(node.args[0]):
        batch = _factor_out_batch(in_shape, out_shape)
        if batch is None:
            ctx.barrier(node, "the reshape merges the batch axis with the channels, and its first output "
                              "axis does not hold whole samples")
            return None, None
        n, in_shape, out_shape = batch
        info, axis = _map_block(ctx, node, x, in_shape, out_shape, size_args)
        if info is not None and axis == 0:
            info = ctx.info_of(0, np.tile(info.labels, n))
        return info, axis
    return _map_block(ctx, node, x, in_shape, out_shape, size_args)


def _prefix_products(shape) -> list[int]:
    return [math.prod(shape[:i]) for i in range(len(shape) + 1)]


def _first_block_axis(in_shape, out_shape, a: int) -> int:
    """The first input axis of the smallest block around axis ``a`` that a block of output
    axes has the same size as (the axes a reshape merges with the channels, from the left)."""
    bounds = set(_prefix_products(out_shape))
    pin = _prefix_products(in_shape)
    return max(i for i in range(a + 1) if pin[i] in bounds)


def _factor_out_batch(in_shape, out_shape) -> tuple[int, list[int], list[int]] | None:
    """``(batch, in_shape, out_shape)`` with the batch axis set to 1 and the first output
    axis divided by it, when that axis holds whole samples; else None.

    A reshape keeps row-major order and the batch is the input's outermost axis, so an
    output axis 0 of ``batch * k`` positions holds sample ``b`` at ``b*k .. (b+1)*k - 1``,
    each laid out as the batch of one is: the channels map as they would for one sample
    (the trace of a single-sample input sees exactly that), and on axis 0 the labels repeat
    once per sample. The pruned model computes the same with its kept channels, whatever
    the batch at run time, as long as the sizes follow the kept width (a literal is
    rewritten to the kept count, a size read from the channels follows them).
    """
    n = in_shape[0]
    if not out_shape or out_shape[0] % n:
        return None
    return n, [1, *in_shape[1:]], [out_shape[0] // n, *out_shape[1:]]


def _reads_a_width(ctx, size: fx.Node) -> bool:
    """True if a size argument was read from (or computed from) a channel count."""
    info = ctx.info(size)
    return isinstance(info, SizeOf) and bool(info.labels())


def _map_block(ctx, node, x, in_shape, out_shape, size_args):
    """:func:`_map_reshape` for a block that leaves the batch axis out (or has no batch)."""
    a = x.axis
    pin, pout = _prefix_products(in_shape), _prefix_products(out_shape)
    bounds = set(pout)
    i0 = max(i for i in range(a + 1) if pin[i] in bounds)
    j = min(k for k in range(a + 1, len(in_shape) + 1) if pin[k] in bounds)
    # Size-1 output axes next to the block join it: their sizes may be computed from the
    # channel count (``view(n, g, c // g, ...)`` with c // g == 1) and must then shrink.
    o0 = min(k for k in range(len(pout)) if pout[k] == pin[i0])
    o1 = max(k for k in range(len(pout)) if pout[k] == pin[j])
    block_in, block_out = list(in_shape[i0:j]), list(out_shape[o0:o1])
    view = [1] * len(block_in)
    view[a - i0] = -1
    arr = np.broadcast_to(x.labels.reshape(view), block_in).reshape(block_out)
    varying = [k for k in range(arr.ndim) if arr.shape[k] > 1 and not (arr == arr.take([0], axis=k)).all()]
    carrying = set(varying) or {k for k in range(arr.ndim) if arr.shape[k] > 1}
    if not varying:  # every channel carries the same label (one unit spread over the block)
        varying = [max(range(arr.ndim), key=lambda k: (arr.shape[k], k))]
    dynamic = []
    if size_args is not None and len(size_args) == len(out_shape):
        # (a size-1 axis carries no channels: MaxViT's ``H // P`` when H == P is not one;
        # nor does one along which no label changes, sized from no channel count: the batch
        # split back out of MobileViT's ``(batch * channels * patches, ...)``)
        dynamic = [k for k in range(arr.ndim) if arr.shape[k] > 1 and isinstance(size_args[o0 + k], fx.Node)
                   and (k in carrying or _reads_a_width(ctx, size_args[o0 + k]))]
    if len(dynamic) > 1:
        ctx.barrier(node, "the channels are split into several axes whose sizes are computed at run time")
        return None, None
    head = None if dynamic else head_axis(ctx, node, arr, varying)  # (heads, head_dim) for attention
    p = dynamic[0] if dynamic else head if head is not None else max(varying, key=lambda k: (arr.shape[k], k))
    for k in varying:
        if k != p:
            rep = np.broadcast_to(arr.take([0], axis=k), arr.shape)
            ctx.tie(arr, rep)
            arr = np.ascontiguousarray(rep)
    labels = np.moveaxis(arr, p, 0).reshape(arr.shape[p], -1)[:, 0].copy()
    return ctx.info_of(o0 + p, labels), o0 + p


def _shape_args(node):
    """(index of the first size argument, sizes as a list, packed?) for view/reshape/expand."""
    if node.op == "call_method":
        first = node.args[1] if len(node.args) > 1 else node.kwargs.get("shape", node.kwargs.get("size"))
        if isinstance(first, (tuple, list)) and len(node.args) == 2:
            return 1, list(first), True
        return 1, list(node.args[1:]), False
    shape = node.args[1] if len(node.args) > 1 else node.kwargs.get("shape")
    return 1, list(shape), True


def _literal_edit(ctx, node, out_axis, labels):
    """Rewrite a literal size at ``out_axis`` (``x.view(n, 64, -1)``) to the kept count."""
    start, sizes, packed = _shape_args(node)
    if len(sizes) != len(ctx.shape(node)):
        return
    old = sizes[out_axis]
    if isinstance(old, fx.Node):
        src = ctx.info(old)
        if isinstance(src, SizeOf) and (src.derived or any(d is not None for d in src.dims)):
            return  # read from (or computed from) a channel count: follows the pruned width
        carried = _carried_literal(ctx, old)
        if carried is not None and carried[2][carried[3]] == labels.size:
            # A literal carried in a tuple join (``x.size()[:-2] + (self.all_head_size,)``):
            # the join's literal is rewritten to the kept count, as a view's own literal is
            # (the plan names the attribute it came from: ``apply`` updates that too).
            joined, operand, literal, pos = carried
            _kept_count_edit(ctx, joined, operand, list(literal), pos, labels,
                             tuple if isinstance(literal, tuple) else list)
            return
        # A number the graph only carries on in a way not rewritten here (a size read from an
        # axis without channels, a joined tuple others read too): it stays what it was, so
        # must the channels.
        ctx.keep(labels)
        return
    if not isinstance(old, int) or isinstance(old, bool) or old == -1:
        return  # -1 follows the pruned tensor by itself
    if packed:
        container = tuple if len(node.args) > 1 and isinstance(node.args[1], tuple) else list
        _kept_count_edit(ctx, node, start, sizes, out_axis, labels, container)
    else:
        _kept_count_edit(ctx, node, start + out_axis, sizes, out_axis, labels, None)


def _kept_count_edit(ctx, node: fx.Node, index: int, sizes: list, pos: int, labels: np.ndarray,
                     container: type | None) -> None:
    """Record an edit of argument ``index`` of ``node``: ``sizes`` (the shape it is part of,
    or, with ``container=None``, the one size it is) with the literal at ``pos`` set to the
    kept count of ``labels``, rebuilt as a ``container`` (tuple or list)."""
    old = sizes[pos]
    encode(tuple(sizes))  # (a shape a plan cannot hold is refused now, not when it is applied)

    def edit(kept):
        n = int(kept(labels).sum())
        if n == old:
            return []
        if container is None:
            return [{"kind": "set_arg", "index": index, "value": n, "old": old, "new": n}]
        new = list(sizes)
        new[pos] = n
        return [{"kind": "set_arg", "index": index, "value": encode(container(new)), "old": old, "new": n}]

    ctx.edit(node, edit)


def _carried_literal(ctx, size: fx.Node) -> tuple[fx.Node, int, tuple | list, int] | None:
    """``(join, operand index, literal tuple, position in it)`` when ``size`` is ``t[k]`` of a
    tuple join ``t = sizes + (64,)`` (Hugging Face's ``x.size()[:-2] + (self.all_head_size,)``)
    whose element ``k`` is an int written in a literal operand, read by this size only (so
    rewriting the literal changes nothing else); else None."""
    if size.op != "call_function" or size.target is not operator.getitem or len(size.users) != 1:
        return None
    joined, k = size.args
    if (not isinstance(joined, fx.Node) or joined.op != "call_function" or joined.target is not operator.add
            or type(k) is not int or len(joined.args) != 2 or joined.kwargs):
        return None
    lengths = []
    for a in joined.args:
        info = ctx.info(a)
        if isinstance(a, (tuple, list)):
            lengths.append(len(a))
        elif isinstance(a, fx.Node) and isinstance(info, SizeOf) and not info.derived and not info.single:
            lengths.append(len(info.dims))
        else:
            return None
    total = sum(lengths)
    k = k % total if -total <= k < total else None
    if k is None:
        return None
    for u in joined.users:  # every other reader picks another element
        if u is size:
            continue
        if u.op != "call_function" or u.target is not operator.getitem or type(u.args[1]) is not int:
            return None
        if u.args[1] % total == k:
            return None
    operand, pos = (0, k) if k < lengths[0] else (1, k - lengths[0])
    literal = joined.args[operand]
    if not isinstance(literal, (tuple, list)) or type(literal[pos]) is not int:
        return None
    return joined, operand, literal, pos


@register_rule(torch.flatten, torch.squeeze, torch.unsqueeze, torch.unflatten,
               "flatten", "squeeze", "unsqueeze", "unflatten", nn.Flatten)
def flatten(ctx, node):
    """Reshapes without literal channel sizes: the traced shapes say where channels go."""
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    in_shape = ctx.shape(node.args[0])
    info, _ = _map_reshape(ctx, node, x, in_shape, ctx.shape(node))
    if info is not None and node.target in ("squeeze", torch.squeeze) and len(node.args) < 2 and "dim" not in node.kwargs:
        # squeeze() drops every size-1 axis: once pruning leaves one channel it would drop
        # the channel axis too, so name the axes it dropped when traced.
        dims = tuple(d for d, n in enumerate(in_shape) if n == 1)
        labels = x.labels

        def edit(kept):
            return [{"kind": "set_arg", "index": 1, "value": encode(dims)}] if int(kept(labels).sum()) == 1 else []

        ctx.edit(node, edit)
    return info


@register_rule(nn.Unflatten)
def unflatten_module(ctx, node):
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    out = ctx.shape(node)
    info, axis = _map_reshape(ctx, node, x, ctx.shape(node.args[0]), out)
    m = ctx.module(node)
    if info is not None and axis in range(m.dim, m.dim + len(m.unflattened_size)) and out[axis] > 1:
        return ctx.barrier(node, "nn.Unflatten with a channel size in its unflattened_size")
    return info


@register_rule(torch.reshape, "view", "reshape")
def view(ctx, node):
    """``view``/``reshape``; a literal size on the channel axis is rewritten after pruning,
    and a size read from another tensor's channels (``reshape(B, G, P, D)``) ties them."""
    x = ctx.input(node, 0, "input")
    _, sizes, _ = _shape_args(node)
    if x is None:
        ctx.sizes_from(sizes, None, None)
        _keep_foreign_derived_sizes(ctx, sizes, None, None)
        return None
    info, axis = _map_reshape(ctx, node, x, ctx.shape(node.args[0]), ctx.shape(node), sizes)
    ctx.sizes_from(sizes, info, axis)
    if info is not None:
        _literal_edit(ctx, node, axis, info.labels)
        _keep_foreign_derived_sizes(ctx, sizes, x, info, axis, len(ctx.shape(node)))
    return info


@register_rule("reshape_as", "view_as")
def reshape_as(ctx, node):
    """``x.reshape_as(other)`` / ``x.view_as(other)`` (timm's ``LinearNorm``:
    ``bn(x.flatten(0, 1)).reshape_as(x)``): a reshape to ``other``'s shape, which after
    pruning is ``other``'s pruned shape. The channels land where ``other`` carries its own,
    so the two are tied (then both shrink alike); anywhere else ``other``'s width would not
    follow ``x``'s, and both are kept."""
    x = ctx.input(node, 0, "input")
    other = ctx.input(node, 1, "other")
    if x is None:
        if other is not None:
            ctx.keep(other.labels)
        return None
    info, axis = _map_reshape(ctx, node, x, ctx.shape(node.args[0]), ctx.shape(node))
    if info is None:
        if other is not None:
            ctx.keep(other.labels)
        return None
    if other is None or other.axis != axis or other.labels.size != info.labels.size:
        ctx.keep(info.labels)
        if other is not None:
            ctx.keep(other.labels)
        return info
    ctx.tie(info.labels, other.labels)
    return info


def _keep_foreign_derived_sizes(ctx, sizes, x, info, axis=None, ndim=None) -> None:
    """A size computed from *another* tensor's channel count (``qkv.view(B, N, 3, heads,
    C // heads)`` with C the block input's width, SwinV2-CR, VOLO) would follow that
    tensor's pruned width, not this one's: both keep their channels. A size computed from
    the reshaped tensor's own width (a channel shuffle's ``c // g``) follows it and is fine,
    and so is one from a tensor as wide as the reshaped one given as the size of the output
    axis the channels land on (MobileViT's ``folding`` reads the width before its
    transformer, ``batch * channels * patches``, to reshape the transformer's residual
    stream): the two are tied position by position, so the size follows the kept width as
    the own width's would. Reshaping a tensor without channel labels (behind a barrier),
    such a size keeps its source's channels."""
    for k, v in enumerate(sizes):
        src = ctx.info(v) if isinstance(v, fx.Node) else None
        if not isinstance(src, SizeOf) or not src.derived:
            continue
        foreign = [lab for lab in src.labels() if x is None or not np.array_equal(lab, x.labels)]
        on_channels = info is not None and k == axis and len(sizes) == ndim
        kept = False
        for lab in foreign:
            if on_channels and lab.size == x.labels.size:
                ctx.tie(lab, x.labels)
            else:
                ctx.keep(lab)
                kept = True
        if kept and info is not None:
            ctx.keep(info.labels)


def _broadcast_out(ctx, node):
    """The input's channels after expand/expand_as (new leading axes shift them right)."""
    x = ctx.input(node, 0)
    if x is None:
        return None
    return ctx.info_of(x.axis + len(ctx.shape(node)) - len(ctx.shape(node.args[0])), x.labels)


@register_rule("expand")
def expand(ctx, node):
    """``x.expand(sizes)``; a size read from the channel axis (``repeat_kv``'s
    ``expand(b, kv_heads, n_rep, ...)``) follows the pruned width, as in a view."""
    info = _broadcast_out(ctx, node)
    _, sizes, _ = _shape_args(node)
    if len(ctx.size_infos(sizes)) == len(ctx.shape(node)):  # (one whole shape, b.shape, too)
        ctx.sizes_from(sizes, info, None if info is None else info.axis)
    if info is not None:
        _literal_edit(ctx, node, info.axis, info.labels)
    return info


@register_rule("expand_as")
def expand_as(ctx, node):
    return _broadcast_out(ctx, node)


@register_rule("repeat")
def repeat(ctx, node):
    x = ctx.input(node, 0)
    if x is None:
        return None
    reps = list(node.args[1]) if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else list(node.args[1:])
    if not all(isinstance(r, int) for r in reps):
        return ctx.barrier(node, "repeat counts are not constants")
    axis = x.axis + len(reps) - len(ctx.shape(node.args[0]))
    return ctx.info_of(axis, np.tile(x.labels, reps[axis]))


# ------------------------------------------------------------------------- axis moves
def _dims(node):
    rest = node.args[1:] if node.op == "call_method" else node.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return list(rest[0])
    if not rest:
        return list(node.kwargs.get("dims", ()))
    return list(rest)


@register_rule(torch.permute, "permute")
def permute(ctx, node):
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    nd = len(ctx.shape(node))
    dims = [d % nd for d in _dims(node)]
    return ctx.info_of(dims.index(x.axis), x.labels)


@register_rule(torch.transpose, torch.swapaxes, torch.swapdims, "transpose", "swapaxes", "swapdims")
def transpose(ctx, node):
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    nd = len(ctx.shape(node))
    d0, d1 = (ctx.arg(node, 1, "dim0") % nd, ctx.arg(node, 2, "dim1") % nd)
    axis = d1 if x.axis == d0 else d0 if x.axis == d1 else x.axis
    return ctx.info_of(axis, x.labels)


@register_rule(torch.movedim, "movedim")
def movedim(ctx, node):
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    nd = len(ctx.shape(node))
    src, dst = ctx.arg(node, 1, "source"), ctx.arg(node, 2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    order = [d for d in range(nd) if d not in [s % nd for s in src]]
    for s, d in sorted(zip([s % nd for s in src], [d % nd for d in dst]), key=lambda t: t[1]):
        order.insert(d, s)
    return ctx.info_of(order.index(x.axis), x.labels)


# ------------------------------------------------------------- shuffles (index permutations)
@register_rule(nn.ChannelShuffle, torch.channel_shuffle, F.channel_shuffle)
def channel_shuffle(ctx, node):
    """Shuffle of g groups: position j of every group is one unit (g channels)."""
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    g = ctx.module(node).groups if node.op == "call_module" else ctx.arg(node, 1, "groups")
    if x.axis != 1:
        return ctx.barrier(node, "channel shuffle of a non-channel axis")
    grid = x.labels.reshape(g, -1)
    ctx.tie(grid, grid[0:1])
    return ctx.info_of(1, np.repeat(grid[0], g))


def _factor(ctx, node):
    if node.op == "call_module":
        m = ctx.module(node)
        return getattr(m, "upscale_factor", None) or m.downscale_factor
    return ctx.arg(node, 1)


@register_rule(nn.PixelShuffle, F.pixel_shuffle, torch.pixel_shuffle)
def pixel_shuffle(ctx, node):
    """C·r² channels become C channels at r×r positions: each r² block is one unit."""
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    r = _factor(ctx, node)
    if x.axis != 1:
        return ctx.barrier(node, "pixel shuffle of a non-channel axis")
    grid = x.labels.reshape(-1, r * r)
    ctx.tie(grid, grid[:, 0:1])
    return ctx.info_of(1, grid[:, 0].copy())


@register_rule(nn.PixelUnshuffle, F.pixel_unshuffle, torch.pixel_unshuffle)
def pixel_unshuffle(ctx, node):
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    r = _factor(ctx, node)
    if x.axis != 1:
        return ctx.barrier(node, "pixel unshuffle of a non-channel axis")
    return ctx.info_of(1, np.repeat(x.labels, r * r))




# ------------------------------------------------------------------------------ roll
@register_rule(torch.roll, "roll")
def roll(ctx, node):
    """``torch.roll(x, shifts, dims)`` (Swin's shifted windows): a roll along other axes keeps
    every channel where it is; a roll along the channel axis (or of the flattened tensor)
    moves channels by a count that would change after pruning, so they are kept."""
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    dims = ctx.arg(node, 2, "dims")
    nd = len(ctx.shape(node.args[0]))
    if dims is None or dims == ():
        return ctx.barrier(node, "a roll of the flattened tensor moves channels into each other")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return ctx.barrier(node, "roll dims are not constants")
    if x.axis in [d % nd for d in dims]:
        return ctx.barrier(node, "a roll along the channel axis moves channels by a fixed count")
    return ctx.passthrough(node)
