"""Rules that move channels between tensors by position: cat/stack, split/chunk, getitem."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx

from .._channels import ChannelInfo, SizeOf
from .._edits import encode
from ._registry import register_rule


def _norm(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


# ------------------------------------------------------------------------------ cat/stack
def _joined(ctx, node):
    """(input tensors, normalised dim, their infos, the set of their channel axes) of cat/stack."""
    tensors = ctx.arg(node, 0, "tensors")
    dim = _norm(ctx.arg(node, 1, "dim", 0), len(ctx.shape(node)))
    infos = [ctx.info(t) for t in tensors]
    return tensors, dim, infos, {i.axis for i in infos if isinstance(i, ChannelInfo)}


@register_rule(torch.cat, torch.concat, torch.concatenate)
def cat(ctx, node):
    """Concatenation along the channel axis maps input k to offsets [off_k, off_k + C_k)."""
    tensors, dim, infos, axes = _joined(ctx, node)
    if not axes:
        return None
    if axes == {dim}:
        parts = [
            i.labels if isinstance(i, ChannelInfo) else np.zeros(ctx.shape(t)[dim], np.int64)  # 0 = KEEP
            for i, t in zip(infos, tensors)
        ]
        return ctx.info_of(dim, np.concatenate(parts))
    return _same_channels(ctx, node, tensors, infos, axes, shift=0)


def _same_channels(ctx, node, tensors, infos, axes, shift):
    """Inputs joined along a non-channel axis share their channels position by position."""
    labelled = [i for i in infos if isinstance(i, ChannelInfo)]
    if len(axes) > 1 or any(not isinstance(i, ChannelInfo) for i in infos):
        for i in labelled:
            ctx.keep(i.labels)
        return None
    first = labelled[0]
    for i in labelled[1:]:
        ctx.tie(first.labels, i.labels)
    return ctx.info_of(first.axis + shift, first.labels)


@register_rule(torch.stack)
def stack(ctx, node):
    tensors, dim, infos, axes = _joined(ctx, node)
    if not axes:
        return None
    shift = 1 if dim <= min(axes) else 0
    return _same_channels(ctx, node, tensors, infos, axes, shift)


# --------------------------------------------------------------------------- split/chunk
def _split(ctx, node, dim_index: int, dim_name: str = "dim"):
    x = ctx.input(node, 0, "input") or ctx.input(node, 0, "tensor") or ctx.input(node, 0, "self")
    outs = ctx.shape(node)
    if x is None:
        return None if not isinstance(outs, tuple) else tuple(None for _ in outs)
    nd = len(ctx.shape(node.args[0]))
    dim = _norm(ctx.arg(node, dim_index, dim_name, 0), nd)
    if dim != x.axis:
        return tuple(ctx.info_of(x.axis, x.labels) for _ in outs)
    sizes = [s[dim] for s in outs]
    offs = np.cumsum([0] + sizes)
    pieces = [x.labels[offs[k] : offs[k + 1]] for k in range(len(sizes))]

    one = ctx.arg(node, 1, "split_size_or_sections", ctx.arg(node, 1, "split_size"))
    one = one if node.target in ("split", torch.split) and type(one) is int else None

    def edit(kept):
        new = [int(kept(p).sum()) for p in pieces]
        if new == sizes:
            return []
        e = {"kind": "split_sizes", "sizes": new, "dim": dim}
        if one is not None and len(set(new)) == 1 and sizes[-1] == one:  # split(n): read from self.n?
            e.update(old=one, new=new[0])
        return [e]

    ctx.edit(node, edit)
    ctx.sizes_rewritten(node)
    for p in pieces:  # no piece is ever left with 0 channels (pooling it would fail)
        ctx.piece(p)
    return tuple(ctx.info_of(dim, p) for p in pieces)


@register_rule(torch.split, "split", "split_with_sizes", torch.split_with_sizes)
def split(ctx, node):
    return _split(ctx, node, 2)


@register_rule(torch.chunk, "chunk")
def chunk(ctx, node):
    # chunk(n) of a pruned tensor would cut in equal parts; the edit turns it into a split.
    return _split(ctx, node, 2)


@register_rule(torch.unbind, "unbind")
def unbind(ctx, node):
    """``x.unbind(dim)``: one tensor per index of ``dim`` (timm's packed ``q, k, v =
    qkv.unbind(0)``). Along another axis every piece has the input's channels, on the same
    axis less one where ``dim`` came before it; along the channel axis each piece is one
    channel, which stays (its position in the tuple is fixed by the code)."""
    x = ctx.input(node, 0, "input") or ctx.input(node, 0, "self")
    outs = ctx.shape(node)
    if not isinstance(outs, tuple):
        return ctx.barrier(node, "unbind without traced output shapes")
    if x is None:
        return tuple(None for _ in outs)
    dim = _norm(ctx.arg(node, 1, "dim", 0), len(ctx.shape(node.args[0])))
    if dim == x.axis:
        ctx.keep(x.labels)
        return tuple(None for _ in outs)
    axis = x.axis - 1 if dim < x.axis else x.axis
    return tuple(ctx.info_of(axis, x.labels) for _ in outs)


# ---------------------------------------------------------------------------------- getitem
def _kept_before(kept, labels: np.ndarray, stop: int) -> int:
    return int(kept(labels[:stop]).sum())


@register_rule(operator.getitem)
def getitem(ctx, node):
    src, idx = node.args[0], node.args[1]
    info = ctx.info(src)
    if isinstance(info, SizeOf):  # x.shape[1]: a size that follows the channel count
        if info.derived:  # computed from widths: no longer one size per axis
            return SizeOf(tuple(info.labels()), derived=True)
        if isinstance(idx, int):
            return SizeOf((info.dims[idx],), single=True)
        return SizeOf(tuple(info.dims[idx])) if isinstance(idx, slice) else None
    if isinstance(info, tuple):  # picking one output of split/chunk/...
        if isinstance(idx, int):
            return info[idx]
        if isinstance(idx, slice):
            return tuple(info[idx])
        ctx.keep_all(src)
        return None
    if not isinstance(info, ChannelInfo):
        return None
    shape = ctx.shape(src)
    if not isinstance(shape, torch.Size):
        return ctx.barrier(node, "indexing a value without a shape")
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(it, fx.Node) for it in items):
        return _gather(ctx, node, src, info, shape, items)
    consuming = sum(1 for it in items if it is not None and it is not Ellipsis)
    in_ax = out_ax = 0
    axis: int | None = None
    labels = info.labels
    for pos, it in enumerate(items):
        if it is Ellipsis:
            skip = len(shape) - consuming
            if in_ax <= info.axis < in_ax + skip:
                axis = out_ax + info.axis - in_ax
            in_ax += skip
            out_ax += skip
        elif it is None:
            out_ax += 1
        elif isinstance(it, bool) or not isinstance(it, (int, slice)):
            return ctx.barrier(node, "advanced (tensor or list) indexing")
        elif isinstance(it, int):
            if in_ax == info.axis:  # one channel picked out: it stays, its position moves
                i = it % shape[in_ax]
                ctx.keep(labels[i : i + 1])
                _register_item_edit(ctx, node, idx, pos, labels, lambda kept, i=i: _kept_before(kept, labels, i))
                return None
            in_ax += 1
        else:
            if in_ax == info.axis and it == slice(None):  # ``x[:, :, None]``: whole, after pruning too
                axis = out_ax
            elif in_ax == info.axis:
                if any(isinstance(v, fx.Node) for v in (it.start, it.stop, it.step)):
                    return ctx.barrier(node, "a slice of the channel axis with computed bounds")
                start, stop, step = it.indices(shape[in_ax])
                if step != 1:
                    return ctx.barrier(node, "a strided slice of the channel axis")
                stop = max(stop, start)
                labels = labels[start:stop]
                ctx.piece(labels)
                axis = out_ax
                _register_item_edit(
                    ctx, node, idx, pos, info.labels,
                    lambda kept, a=start, b=stop: slice(
                        _kept_before(kept, info.labels, a), _kept_before(kept, info.labels, b), None
                    ),
                )
            in_ax += 1
            out_ax += 1
    if axis is None:
        if info.axis < in_ax:
            return None
        axis = out_ax + info.axis - in_ax
    return ctx.info_of(axis, labels)


def _gather(ctx, node, src, info: ChannelInfo, shape: torch.Size, items: list):
    """``x[idx]`` / ``x[:, idx]`` with one index tensor (a gather: relative-position tables
    looked up by a buffer of indices, ``table[index.view(-1)]``). Along an axis without the
    channels, the channels pass on: the index's axes replace the indexed one. On the channel
    axis of a parameter (timm's TinyViT ``attention_biases[:, idxs]``, labelled on its last
    axis when read) the indexed axis stays whole and another axis of the parameter (its heads)
    carries the labels instead; on any other tensor's channel axis, a barrier."""
    nodes = [k for k, it in enumerate(items) if isinstance(it, fx.Node)]
    index_shape = ctx.shape(items[nodes[0]]) if len(nodes) == 1 else None
    plain = all(it == slice(None) for k, it in enumerate(items) if k not in nodes)
    if not (len(nodes) == 1 and plain and isinstance(index_shape, torch.Size)):
        return ctx.barrier(node, "advanced (tensor or list) indexing")
    p, k = nodes[0], len(index_shape)
    if tuple(ctx.shape(node)) != tuple(shape[:p]) + tuple(index_shape) + tuple(shape[p + 1:]):
        return ctx.barrier(node, "indexing with a boolean mask or a tensor of another layout")
    axis, labels = info.axis, info.labels
    if axis == p:
        slot = (str(src.target).rpartition(".")[::2] if isinstance(src, fx.Node) and src.op == "get_attr" else None)
        others = [d for d in range(len(shape)) if d != p and shape[d] > 1]
        owner = ctx.submodule(slot[0]) if slot else None
        if slot is None or not others or slot[1] not in dict(owner.named_parameters(recurse=False)):
            return ctx.barrier(node, "a gather along the channel axis")
        ctx.keep(labels)  # the looked-up axis stays whole
        axis = others[-1]
        labels = ctx.fresh(int(shape[axis]))
        ctx.slice_of(slot[0], slot[1], axis, labels, "source")
    return ctx.info_of(axis if axis < p else axis + k - 1, labels)


def _register_item_edit(ctx, node, idx, pos, labels, new_item):
    """Rewrite the index at ``pos`` once we know which channels stay."""
    encode(idx)  # fail now (a barrier) rather than at apply time if it cannot be recorded

    def edit(kept):
        if kept(labels).all():
            return []
        item = new_item(kept)
        new_idx = tuple(item if k == pos else v for k, v in enumerate(idx)) if isinstance(idx, tuple) else item
        return [{"kind": "set_arg", "index": 1, "value": encode(new_idx)}]

    ctx.edit(node, edit)
