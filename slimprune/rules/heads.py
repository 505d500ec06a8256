"""Attention heads written with plain ops (Hugging Face, timm, user code): whole heads go.

Multi-head attention as most code writes it::

    q = self.q(x).view(B, N, -1, head_dim).transpose(1, 2)       # [B, heads, N, head_dim]
    w = softmax(q @ k.transpose(-2, -1) * scale + mask)             # or F.scaled_dot_product_attention
    y = (w @ v).transpose(1, 2).reshape(B, N, -1)                   # [B, N, heads * head_dim]

* **Head split.** A view that splits the channel axis into (heads, head_dim) and whose
  result reaches a matrix product or ``scaled_dot_product_attention`` makes one unit per
  head: the head_dim channels of a head are tied, and the labels sit on the heads axis
  (:func:`head_axis`, called by the view rule). head_dim, and so the softmax scale
  ``1/sqrt(head_dim)``, never changes; a pruned head is gone with its q/k/v rows and its
  output-projection columns.
* **Products** (:func:`matmul`): a labelled batch axis (heads) of both operands is tied,
  so q's heads meet the same k heads and the weights meet the same v heads; a contracted
  axis labelled on both sides is tied (a silenced pair adds 0 to every sum, exactly as
  removing it does); the rows of ``a`` and the columns of ``b`` become the product's.
* **sdpa** (:func:`scaled_dot_product_attention`): q, k and v heads tied (with
  ``enable_gqa=True``, query head ``i`` with key/value head ``i // groups``: a group and its
  key/value head go together); q/k channels inside a head are only pruned when ``scale`` is
  a constant, as the default scale reads q's width (else they stay, and v's channels may
  still go: a one-head attention, whose heads axis carries no labels). A per-head ``attn_mask`` (T5's relative
  position bias, ``Embedding(buckets, heads)`` permuted to [1, heads, q, k]) labelled on its
  heads axis is tied to the query heads, so the table's head columns go with their heads (and,
  as the first layer's bias is reused by the later ones, those layers keep the same heads).
* **Constant per-head tensors** (:func:`constant_heads`): ``torch.zeros((1, self.n_heads, q, k))``
  (T5's cross-attention bias; ``ones``/``full`` and ``x.new_zeros/new_ones/new_full`` alike)
  made by an attention module with a head resizer gets one label per head on axis 1; the
  literal is rewritten to the kept count. ``torch.empty``/``x.new_empty`` of that shape hold
  undefined values: a barrier, its heads kept (:func:`uninitialised_heads`).
* **Grouped-query attention** written as ``repeat_kv`` (``k[:, :, None].expand(...).reshape``)
  needs no rule of its own: the reshape repeats each key/value head's label over its query
  group, and the product ties them.
* **Attributes.** A module whose forward counts heads in an attribute (``num_heads``,
  ``all_head_size``) is updated by its class's *head resizer* (:func:`register_head_resizer`;
  Hugging Face's are in :mod:`slimprune.rules.hf`). A module with such an attribute and no
  resizer keeps its heads whole (a barrier whose warning names the module and attribute):
  a pruned model never runs with a stale head count.
"""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._channels import ChannelInfo
from .._edits import encode
from ._registry import _rule_owner, register_rule

__all__ = ["register_head_resizer", "head_resizer", "head_axis", "resize_heads", "snapshot_heads"]

HeadResizer = Callable[[nn.Module, nn.Module], None]
_RESIZERS: dict[type, HeadResizer] = {}

_PRODUCTS = {torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__",
             F.scaled_dot_product_attention}
# Ops a head-split tensor passes through on its way to the product (rotary embeddings,
# repeat_kv, casts); a module call or the output ends the search.
_SEARCH_DEPTH = 16


# --------------------------------------------------------------------- head resizers
def register_head_resizer(cls: type, fn: HeadResizer) -> None:
    """After pruning, call ``fn(pruned_module, original_module)`` on every module of class
    ``cls`` (its projections already sliced) to update the head counts its forward reads."""
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_head_resizer needs an nn.Module class, got {cls!r}")
    _RESIZERS[cls] = fn


def head_resizer(cls: type) -> HeadResizer | None:
    """The head resizer for modules of ``cls`` (a subclass with the same forward inherits it)."""
    _rule_owner(cls)  # loads a third-party package's rules (and resizers) on first sight
    if cls in _RESIZERS:
        return _RESIZERS[cls]
    for base in cls.__mro__[1:]:
        if base in _RESIZERS:
            return _RESIZERS[base] if getattr(cls, "forward", None) is getattr(base, "forward", None) else None
    return None


def snapshot_heads(model: nn.Module) -> dict[str, nn.Module]:
    """Shallow copies of the modules that have a head resizer (their attributes before pruning)."""
    import copy

    return {name: copy.copy(m) for name, m in model.named_modules() if head_resizer(type(m)) is not None}


def resize_heads(target: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Run the head resizers on the pruned ``target`` (``originals`` from :func:`snapshot_heads`)."""
    for name, orig in originals.items():
        m = target.get_submodule(name) if name else target
        fn = head_resizer(type(orig))
        if fn is not None:
            fn(m, orig)


# ------------------------------------------------------------------------ head split
def _feeds_attention(node: fx.Node, targets: Any = None) -> bool:
    """True if ``node``'s value reaches a matrix product or sdpa (or one of ``targets``)
    through plain ops."""
    targets = _PRODUCTS if targets is None else targets
    seen: set[fx.Node] = set()
    frontier = [node]
    for _ in range(_SEARCH_DEPTH):
        nxt = []
        for n in frontier:
            for u in n.users:
                if u in seen or u.op in ("call_module", "output"):
                    continue
                seen.add(u)
                try:
                    if u.target in targets:
                        return True
                except TypeError:  # unhashable target
                    pass
                nxt.append(u)
        if not nxt:
            return False
        frontier = nxt
    return False


def _owner_class(node: fx.Node) -> type | None:
    """The class of the module whose forward made ``node`` (from fx's module stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    value = list(stack.values())[-1]
    cls = value[1] if isinstance(value, tuple) and len(value) > 1 else None
    return cls if isinstance(cls, type) else None


_COUNT = re.compile(r"self\.(\w*head\w*)")


def _stale_count(ctx, node: fx.Node, heads: int, head_dim: int) -> str | None:
    """Why the heads of the module owning ``node`` cannot be pruned, or None.

    A module whose forward reads a head-count attribute (``self.num_heads``, equal to the
    traced head count or the heads' total width where the instance is at hand) and whose
    class has no head resizer would run with a stale count.
    """
    path = ctx.where(node)
    cls = _owner_class(node)
    try:
        owner = ctx.current.get_submodule(path) if path else ctx.current
    except AttributeError:
        owner = None
    if cls is None:
        cls = type(owner) if owner is not None else None
    if cls is None or head_resizer(cls) is not None:
        return None
    names = sorted({n for n in _COUNT.findall(_method_source(cls)) if n != "head_dim" and "size" not in n or n == "all_head_size"})
    if isinstance(owner, cls):  # the instance: only attributes that count these heads
        names = [n for n in names if type(vars(owner).get(n)) is int and vars(owner)[n] in (heads, heads * head_dim)]
    if not names:
        return None
    counted = ", ".join(f"self.{n}" for n in names)
    return (f"{path or 'the model'} ({cls.__qualname__}) reads {counted}, a head count slimprune cannot "
            f"update (no head resizer for {cls.__qualname__}); its heads are kept. Register one with "
            f"slimprune.rules.heads.register_head_resizer({cls.__qualname__}, fn)")


def _method_source(cls: type) -> str:
    """Source of a class's methods other than __init__ (where attributes are read, not set)."""
    parts = []
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.nn") or klass is object:
            break
        for meth, fn in vars(klass).items():
            if meth != "__init__" and inspect.isfunction(fn):
                try:
                    parts.append(inspect.getsource(fn))
                except (OSError, TypeError):
                    pass
    return "\n".join(parts)


def head_axis(ctx, node: fx.Node, arr: np.ndarray, varying: list[int]) -> int | None:
    """The axis of a reshape's channel block that holds the labels when the reshape splits
    channels into (heads, head_dim) for attention: the heads axis (``None``: not a head split).

    ``arr`` is the block's labels laid out in the output's axes, ``varying`` its axes whose
    labels differ. A head split is a block whose last axis (head_dim) and the one before it
    (heads) both vary, feeding a product. Its heads must not be counted by an attribute
    nobody updates (then the reshape is a barrier, see :func:`_stale_count`).
    """
    last = arr.ndim - 1
    if arr.ndim < 2 or last not in varying or last - 1 not in varying or not _feeds_attention(node):
        return None
    why = _stale_count(ctx, node, int(arr.shape[last - 1]), int(arr.shape[last]))
    if why is not None:
        if _feeds_attention(node, _SDPA):
            raise _StaleHeads(why)  # sdpa cannot take channels inside heads: the heads stay, named
        # a plain product (Ultralytics' q.transpose(-2, -1) @ k): not whole heads, but the
        # view's own rule, whose literal the rewritten forward carries, prunes around it
        return None
    return last - 1


_SDPA = frozenset({F.scaled_dot_product_attention})


class _StaleHeads(Exception):
    """Raised through the view rule: the graph builder turns a failed rule into a barrier."""


# ------------------------------------------------------- constant per-head tensors
def _counts_heads(node: fx.Node) -> bool:
    """Was ``node`` made by an attention module whose class has a head resizer and whose
    forward reads a head-count attribute (``self.n_heads``)? Then a literal equal to the
    count came from it: the plan names the attribute (see ``_freeze``), the resizer keeps it
    equal to the kept heads, and sdpa's or the scores' tie checks the count."""
    cls = _owner_class(node)
    if cls is None or head_resizer(cls) is None:
        return False
    return any(n != "head_dim" for n in _COUNT.findall(_method_source(cls)))


def _per_head_sizes(ctx, node: fx.Node, first: int, fill: bool) -> tuple[list[Any], bool, int] | None:
    """``(sizes, packed, heads)`` when ``node`` makes a [1, heads, q, k] tensor from sizes given
    from argument ``first`` on (a packed tuple, or one argument each; ``fill``: a fill value
    follows, so the sizes must be packed), whose axis 1 is a literal head count of the
    attention module that made it and which reaches the attention; else None."""
    shape = ctx.shape(node)
    args = node.args[first:]
    if not args:
        return None  # (sizes given as size=...: not rewritten, so left without channels)
    packed = isinstance(args[0], (tuple, list))
    sizes = list(args[0]) if packed else list(args)
    if not isinstance(shape, torch.Size) or len(shape) != 4 or len(sizes) != 4 or (fill and not packed):
        return None
    count = sizes[1]
    if type(count) is not int or count < 2 or not _feeds_attention(node) or not _counts_heads(node):
        return None
    return sizes, packed, count


def per_head_constant(ctx, node: fx.Node, first: int = 0, fill: bool = False):
    """The labels of a constant per-head tensor (see :func:`constant_heads`), or None when
    ``node`` is not one; ``first`` is the index of its size argument (1 for a tensor method,
    whose argument 0 is the tensor it takes dtype and device from)."""
    found = _per_head_sizes(ctx, node, first, fill)
    if found is None:
        return None
    sizes, packed, count = found
    labels = ctx.fresh(count)

    def edit(kept: Callable[[np.ndarray], np.ndarray]) -> list[dict[str, Any]]:
        n = int(kept(labels).sum())
        if n == count:
            return []
        if not packed:
            return [{"kind": "set_arg", "index": first + 1, "value": n, "old": count, "new": n}]
        new = list(sizes)
        new[1] = n
        value = tuple(new) if isinstance(node.args[first], tuple) else new
        return [{"kind": "set_arg", "index": first, "value": encode(value), "old": count, "new": n}]

    ctx.edit(node, edit)
    return ctx.info_of(1, labels)


@register_rule(torch.zeros, torch.ones, torch.full)
def constant_heads(ctx, node: fx.Node):
    """``torch.zeros((1, self.n_heads, q, k))``: a constant per-head tensor (T5's position
    bias of a layer without its own table, cross-attention's) sized by its attention module's
    head count. Its heads axis gets one new label per head, which the scores' add or sdpa's
    ``attn_mask`` ties to the query heads; a layer reusing the tensor gets the same heads.
    Slicing a constant-filled tensor leaves the same constant, so removal stays exact; the
    literal is rewritten to the kept count (the resizer updates the attribute it came from,
    so the model's own ``forward`` makes the smaller tensor by itself). Any other shape: a
    tensor without channels, as before. Only ops whose values are defined count: the
    ``Tensor.new_zeros/new_ones/new_full`` forms do too (``rules/pointwise.py``), ``torch.empty``
    does not (:func:`uninitialised_heads`)."""
    return per_head_constant(ctx, node, 0, fill=node.target is torch.full)


def uninitialised_heads(ctx, node: fx.Node, first: int = 0) -> bool:
    """``torch.empty((1, self.n_heads, q, k))`` (or ``x.new_empty``): a tensor of whatever the
    memory held. Its values are not defined, so nothing can say that a slice of it equals the
    tensor the pruned model would make: the heads it meets are kept, and a per-head one is
    reported by name (a barrier), as a stale or unreasoned head count would be. Any other
    shape: a tensor without channels (its width never follows a channel count). True when
    it was a per-head one (and so a barrier)."""
    if _per_head_sizes(ctx, node, first, fill=False) is None:
        return False
    what = "Tensor.new_empty" if first else "torch.empty"
    ctx.barrier(node, f"{what} makes a per-head tensor of uninitialised memory: its values are not "
                             f"defined, so it cannot be sliced with the heads it meets; those heads are "
                             f"kept (make it with torch.zeros/ones/full to prune them)", report=True)
    return True


@register_rule(torch.empty)
def empty(ctx, node: fx.Node) -> None:
    """``torch.empty(sizes)``: see :func:`uninitialised_heads`."""
    uninitialised_heads(ctx, node, 0)
    return None


# --------------------------------------------------------------------------- products
def _labelled(ctx, value: Any) -> ChannelInfo | None:
    info = ctx.info(value)
    return info if isinstance(info, ChannelInfo) else None


def _product(ctx, node: fx.Node, a_node: Any, b_node: Any):
    a, b = _labelled(ctx, a_node), _labelled(ctx, b_node)
    if a is None and b is None:
        return None
    sa, sb, so = ctx.shape(a_node), ctx.shape(b_node), ctx.shape(node)
    if not all(isinstance(s, torch.Size) for s in (sa, sb, so)) or len(sa) < 2 or len(sb) < 2:
        return ctx.barrier(node, "a matrix product with a 1-D operand or without traced shapes")
    ra = a.axis - len(sa) if a is not None else None  # counted from the right
    rb = b.axis - len(sb) if b is not None else None
    if ra == -1 and rb == -2:  # the contracted axis, labelled on both sides
        ctx.tie(a.labels, b.labels)
    elif ra == -1 or rb == -2:  # channels summed against an axis that is not sliced with them
        return ctx.barrier(node, "channels are contracted against an unlabelled axis")
    out: list[tuple[int, np.ndarray]] = []
    if ra == -2:
        out.append((-2, a.labels))
    if rb == -1:
        out.append((-1, b.labels))
    batch = [(x, r, other) for x, r, other in ((a, ra, sb), (b, rb, sa)) if x is not None and r is not None and r < -2]
    if len(batch) == 2:
        if ra != rb:
            return ctx.barrier(node, "the operands' channels are on different batch axes")
        ctx.tie(a.labels, b.labels)
        out.append((ra, a.labels))
    elif batch:
        x, r, other = batch[0]
        if -r <= len(other) and other[r] != 1:  # the other operand's axis would not shrink
            return ctx.barrier(node, "one operand's batch axis carries channels, the other's does not")
        out.append((r, x.labels))
    for _, labels in out[1:]:  # a tensor carries one channel axis
        ctx.keep(labels)
    if not out:
        return None
    r, labels = out[0]
    return ctx.info_of(len(so) + r, labels)


@register_rule(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm")  # (fx records `a @ b` as operator.matmul)
def matmul(ctx, node: fx.Node):
    """``a @ b``, ``torch.matmul``, ``torch.bmm``: heads tied across the operands."""
    a_node = ctx.arg(node, 0, "input")
    b_node = ctx.arg(node, 1, "other", ctx.arg(node, 1, "mat2"))
    return _product(ctx, node, a_node, b_node)


@register_rule(F.scaled_dot_product_attention)
def scaled_dot_product_attention(ctx, node: fx.Node):
    """``softmax(q @ kᵀ * scale + mask) @ v``: q, k, v heads tied; the output has q's heads."""
    nodes = [ctx.arg(node, i, n) for i, n in enumerate(("query", "key", "value"))]
    q, k, v = (_labelled(ctx, x) for x in nodes)
    mask = ctx.arg(node, 3, "attn_mask")
    m = _labelled(ctx, mask)
    mask_shape = ctx.shape(mask)
    # a per-head mask (T5's position bias, added to the scores) is labelled on its heads axis
    # by the table it came from: its heads are the query heads, tied to them below
    per_head_mask = (m is not None and isinstance(mask_shape, torch.Size) and len(mask_shape) >= 3
                     and m.axis - len(mask_shape) == -3)
    if m is not None and not per_head_mask:
        ctx.keep(m.labels)
    if q is None and k is None and v is None:
        if per_head_mask:
            ctx.keep(m.labels)
        return None
    shapes = [ctx.shape(x) for x in nodes]
    if not all(isinstance(s, torch.Size) and len(s) >= 3 for s in shapes):
        return ctx.barrier(node, "attention operands without traced shapes")
    rel = [x.axis - len(s) if x is not None else None for x, s in zip((q, k, v), shapes)]
    if -2 in rel:
        return ctx.barrier(node, "channels on the sequence axis of q, k or v")
    if any(r is not None and r < -3 for r in rel):
        return ctx.barrier(node, "channels on a batch axis of q, k or v")
    scale = ctx.arg(node, 6, "scale")
    out: list[tuple[int, np.ndarray]] = []
    # q and k channels inside a head meet in q·kᵀ; the default scale reads q's width, so
    # with it they stay (a one-head attention, whose heads axis has no labels): v's may go
    if rel[0] == -1 or rel[1] == -1:
        if rel[0] != -1 or rel[1] != -1:
            return ctx.barrier(node, "channels inside the heads of q but not k, or of k but not q")
        if scale is None or isinstance(scale, fx.Node):
            ctx.keep(q.labels)
            ctx.keep(k.labels)
        else:
            ctx.tie(q.labels, k.labels)
    heads = [r == -3 for r in rel]
    if any(heads):
        if not all(heads):
            return ctx.barrier(node, "the heads of q, k and v are not all labelled")
        hq, hk = q.labels.size, k.labels.size
        ctx.tie(k.labels, v.labels)
        if hq == hk:
            ctx.tie(q.labels, k.labels)
        elif bool(ctx.arg(node, 7, "enable_gqa", False)) and hq % hk == 0:
            group = q.labels.reshape(hk, hq // hk)
            ctx.tie(group, np.broadcast_to(k.labels[:, None], group.shape))
        else:
            return ctx.barrier(node, f"{hq} query heads against {hk} key/value heads without enable_gqa")
        if isinstance(mask_shape, torch.Size) and len(mask_shape) >= 3 and mask_shape[-3] > 1 and m is None:
            return ctx.barrier(node, "a per-head attn_mask (a position bias) whose heads are not labelled")
        if per_head_mask:
            if m.labels.size != hq:
                return ctx.barrier(node, f"a per-head attn_mask of {m.labels.size} heads against {hq} query heads")
            ctx.tie(m.labels, q.labels)
        out.append((-3, q.labels))
    if rel[2] == -1:
        out.append((-1, v.labels))
    for _, labels in out[1:]:
        ctx.keep(labels)
    if not out:
        return None
    r, labels = out[0]
    return ctx.info_of(len(ctx.shape(node)) + r, labels)
