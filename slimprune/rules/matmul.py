"""``a @ b`` / ``a.matmul(b)``: attention products between activations.

For ``a @ b`` with ``a`` of shape ``(..., n, k)`` and ``b`` of shape ``(..., k, m)``, each
operand's channel axis is one of three kinds:

* a *free* axis (``n`` of ``a``, ``m`` of ``b``): the product keeps those channels on the
  same output axis (``attn @ v`` keeps v's channels, ``v @ attn.transpose(-2, -1)`` too);
* a *batch* axis (a head axis made by a view): the operands' channels meet there, so they
  are tied, and the output keeps them on that axis (whole heads);
* the *contracted* axis ``k`` (``q.transpose(-2, -1) @ k``): these channels are kept.
  Removing a pair would be exact only where the silenced channel is zero; with the β of
  removed channels folded (``fold_bias=True``, the default) it is a constant that the
  product spreads over every entry, which no bias can absorb. So the contracted channels
  stay, and everything around the product (the value channels, the projections, the
  block's input and output) prunes. The softmax scale is a literal of the traced graph
  (Ultralytics, timm: ``self.scale``), so it stays what it was.

One output carries one channel axis: where both operands bring free channels, ``b``'s are
kept. Operands of one dimension, or broadcast patterns that do not line up, are barriers.
"""

from __future__ import annotations

import operator

import torch

from ._registry import register_rule


# ``torch.matmul``/``torch.bmm`` calls stay barriers for now: Hugging Face BERT's eager attention
# calls them, and letting its value channels through needs its shared head-size literal
# rewritten by re-tracing, which fails for a model planned on keyword inputs (``apply``
# re-traces on float positional inputs built from ``plan.input_shapes``).
@register_rule(operator.matmul, "matmul", "__matmul__")
def matmul(ctx, node):
    a_node, b_node = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other", node.kwargs.get("mat2"))
    a, b = ctx.info(a_node), ctx.info(b_node)
    sa, sb, so = ctx.shape(a_node), ctx.shape(b_node), ctx.shape(node)
    if a is None and b is None:
        return None
    if not all(isinstance(s, torch.Size) for s in (sa, sb, so)) or len(sa) < 2 or len(sb) < 2:
        return ctx.barrier(node, "matmul of a vector (or a non-tensor): its axes do not line up with channels")
    if (a is not None and not hasattr(a, "axis")) or (b is not None and not hasattr(b, "axis")):
        return ctx.barrier(node, "matmul of a tuple")
    nd = len(so)

    def out_axis(shape, axis):  # batch axes are aligned from the right (broadcasting)
        return axis + nd - len(shape)

    out = None
    # left operand: (..., n, k)
    if a is not None:
        if a.axis == len(sa) - 1:
            ctx.keep(a.labels)  # contracted
        elif a.axis == len(sa) - 2:
            out = ctx.info_of(nd - 2, a.labels)
        else:
            out = _batch(ctx, node, a, sa, b, sb, out_axis(sa, a.axis), nd)
            if out is False:
                return None
    if b is not None:
        if b.axis == len(sb) - 2:
            ctx.keep(b.labels)  # contracted
        elif b.axis == len(sb) - 1:
            if out is None:
                out = ctx.info_of(nd - 1, b.labels)
            else:
                ctx.keep(b.labels)
        elif a is None or a.axis >= len(sa) - 2:
            res = _batch(ctx, node, b, sb, a, sa, out_axis(sb, b.axis), nd)
            if res is False:
                return None
            if out is None:
                out = res
            else:
                ctx.keep(b.labels)
    return out


def _batch(ctx, node, x, sx, y, sy, axis: int, nd: int):
    """Channels of ``x`` on a batch axis: tied with ``y``'s channels there, or broadcast
    against a size-1 axis of ``y``. Returns the output's ChannelInfo, or False after a barrier."""
    y_axis = axis - (nd - len(sy))
    y_size = sy[y_axis] if 0 <= y_axis < len(sy) - 2 else 1
    if y is not None and y.axis == y_axis:
        if y.labels.size != x.labels.size:
            ctx.barrier(node, "matmul batch axes of different sizes carry channels")
            return False
        ctx.tie(x.labels, y.labels)
    elif y_size != 1:
        # y's batch axis has no channels (or y's channels sit elsewhere): it cannot shrink
        ctx.keep(x.labels)
        return None
    return ctx.info_of(axis, x.labels)
