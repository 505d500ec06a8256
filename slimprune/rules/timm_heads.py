"""Head resizers for timm's attention classes, registered the first time a timm module class
is looked up (slimprune never imports timm itself).

timm's attention modules project to packed heads and split them with plain ops
(``self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)``, then
``qkv.unbind(0)``), which :mod:`slimprune.rules.heads` prunes by whole heads: a head's q, k and
v rows of the projection go with its output-projection columns. Their ``forward`` reads the
head count from ``self.num_heads`` (and the heads' total width from attributes such as
``self.attn_dim``), so each class whose forward has been read here gets a resizer that sets
those from the pruned projection. ``head_dim`` and ``scale`` never change.

What each forward reshapes the attention output to decides how its heads may go:

* ``reshape(B, N, self.attn_dim)`` (``timm.layers.Attention``) or ``reshape(B, N, -1)``: the
  width is the kept heads' (the resizer updates ``attn_dim``); heads go on their own.
* ``reshape(B, N, C)`` with ``C`` read from the input (PVT-v2, relpos ViT, BEiT, EVA, SwinV2,
  NextViT, EdgeNeXt): the width is the residual stream's, so the graph ties the heads to the
  input channels they line up with; a head goes only with ``head_dim`` residual channels (as
  in ``nn.MultiheadAttention``), and where the widths differ the heads are kept. Where the
  residual stream passes a LayerNorm, ``allow_inexact=False`` keeps it, and so these heads.

A timm attention class without a resizer here keeps its heads whole, with a warning naming
the module and the attribute (see :func:`slimprune.rules.heads._stale_count`).

Also here: rules for the two fx-wrapped helpers of timm's unfused attention path,
``maybe_add_mask(scores, mask)`` (``scores + mask``, or ``scores``) and
``resolve_self_attn_mask(N, scores, mask, is_causal)`` (the additive mask: ``mask`` itself, a
``-inf`` mask made from it, or a causal [N, N] one; ``scores`` is read for its dtype only).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from typing import Any

import torch.fx as fx
from torch import nn

from ._registry import register_lazy_rules, register_rule

__all__ = ["register_timm_head_resizers", "TIMM_HEAD_CLASSES"]


@dataclass(frozen=True)
class _Heads:
    """How a class's heads are read back from its pruned projection.

    ``proj``: the projection whose output rows are the heads (a Linear or a 1x1 conv),
    ``parts``: how many per-head blocks it packs (3 for q, k, v; 2 for k, v), ``widths``:
    attributes equal to heads × head_dim that the forward reads, set to the kept width."""

    proj: str
    parts: int = 3
    count: str = "num_heads"
    widths: tuple[str, ...] = ()
    unfused: str | None = None  # the query projection where ``proj`` is None (EVA's q_proj/k_proj/v_proj)
    per_head: tuple[tuple[str, str], ...] = ()  # (width, per-head width): TinyViT's out_dim = heads × val_dim


def _rows(m: nn.Module, name: str) -> int:
    return int(m.get_submodule(name).weight.shape[0])


def _resizer(spec: _Heads):
    def resize(m: nn.Module, orig: nn.Module) -> None:
        proj, parts = spec.proj, spec.parts
        if getattr(orig, proj, None) is None and spec.unfused is not None:
            proj, parts = spec.unfused, 1
        heads = int(getattr(orig, spec.count))
        width = _rows(orig, proj)
        if heads <= 0 or width % (parts * heads):
            raise ValueError(f"{type(orig).__qualname__}: {proj} has {width} rows, not {parts} blocks of {heads} heads")
        head_dim = width // (parts * heads)
        for child in m.modules():  # a Linear whose weight a functional call read (BEiT's F.linear)
            if type(child) is nn.Linear:
                child.out_features, child.in_features = child.weight.shape
        kept = _rows(m, proj)
        if kept % (parts * head_dim):
            # channels inside the one head of a one-head attention (its heads axis has no
            # labels): the head count stays, and the rewritten literals carry the widths
            return
        setattr(m, spec.count, kept // (parts * head_dim))
        for name in spec.widths:
            setattr(m, name, kept // parts)
        for name, each in spec.per_head:
            setattr(m, name, getattr(m, spec.count) * int(getattr(orig, each)))

    resize.__doc__ = f"timm attention: {spec.count} (and {', '.join(spec.widths) or 'no width'}) from {spec.proj}."
    return resize


# (module, class, spec): each forward read for the attributes it uses after the head split.
# Only classes whose head split has a literal (or -1) head_dim: there the graph removes whole
# heads or, in a one-head attention, channels inside it (told apart by the kept rows). A split
# by a size computed at run time (NesT's, CrossViT's, XCiT's ``C // self.num_heads``) never
# removes whole heads (the channels go inside every head alike), so it gets no resizer: its
# rows could count as whole heads by coincidence.
TIMM_HEAD_CLASSES: tuple[tuple[str, str, _Heads], ...] = (
    # qkv(x).reshape(B, N, 3, num_heads, head_dim) ... reshape(B, N, attn_dim)
    ("timm.layers.attention", "Attention", _Heads("qkv", widths=("attn_dim",))),
    # q(x).reshape(B, N, num_heads, -1), kv(x).reshape(B, -1, 2, num_heads, head_dim) ... reshape(B, N, C)
    ("timm.models.pvt_v2", "Attention", _Heads("q", parts=1)),
    # qkv(x).reshape(B, N, 3, num_heads, head_dim) ... reshape(B, N, C)
    ("timm.models.vision_transformer_relpos", "RelPosAttention", _Heads("qkv")),
    # qk(x).reshape(B, N, 2, num_heads, head_dim), v(x).reshape(B, N, num_heads, -1) ... reshape(B, N, -1)
    ("timm.models.tnt", "Attention", _Heads("qk", parts=2, widths=("hidden_dim",))),
    # qkv(x).reshape(B, 3, num_heads, head_dim, -1) ... reshape(B, -1, H, W)  (1x1 convs)
    ("timm.models.visformer", "Attention", _Heads("qkv")),
    # q/k/v(x).reshape(B, N, num_heads, head_dim) ... reshape(B, N, C)
    ("timm.models.nextvit", "EfficientAttention", _Heads("q", parts=1)),
    # qkv(x).reshape(B, [-1, windows,] 3, heads, head_dim) ... reshape(B, -1, dim_out)
    ("timm.models.hiera", "MaskUnitAttention", _Heads("qkv", count="heads", widths=("dim_out",))),
    # qkv(x).reshape(B, H * W, 3, num_heads, -1), torch.unbind(qkv, 2) ... reshape(B, H, W, -1)
    ("timm.models.hieradet_sam2", "MultiScaleAttention", _Heads("qkv")),
    # pwise(x).reshape(N, num_heads, 3 * head_dim, h * w), chunk(3, dim=3) ... reshape(N, o_proj_inpdim, h, w)
    ("timm.models.lowformer", "ConvAttention", _Heads("pwise", widths=("o_proj_inpdim",))),
    ("timm.models.cpubone", "ConvAttention", _Heads("pwise", widths=("o_proj_inpdim",))),
    # F.linear(x, qkv.weight, cat((q_bias, k_bias, v_bias))).reshape(B, N, 3, num_heads, -1) ... reshape(B, N, C)
    ("timm.models.beit", "Attention", _Heads("qkv")),
    ("timm.models.eva", "EvaAttention", _Heads("qkv", unfused="q_proj")),
    # the same, with view(-1, num_heads) of the position-bias MLP's output
    ("timm.models.swin_transformer_v2", "WindowAttention", _Heads("qkv")),
    # qkv(x).view(B, N, num_heads, -1).split([key_dim, key_dim, val_dim], dim=3) ... reshape(B, N, out_dim);
    # attention_biases[:, idxs] (a per-head table gathered by an index buffer)
    ("timm.models.tiny_vit", "Attention", _Heads("qkv", parts=1, per_head=(("out_dim", "val_dim"),))),
    # qkv(x).view(B, num_heads, dim_head * 3, -1).chunk(3, dim=2) (or reshape(B, 3, num_heads,
    # dim_head, -1).unbind(1)) ... reshape(B, -1, H, W); rel_pos: a RelPosBias (below)
    ("timm.models.maxxvit", "Attention2d", _Heads("qkv")),
    # channel attention (a head_dim x head_dim map per head): qkv(x).reshape(B, N, 3, num_heads, -1),
    # a per-head temperature ... reshape(B, N, C)
    ("timm.models.edgenext", "CrossCovarianceAttn", _Heads("qkv")),
)


# ------------------------------------------------------------ unfused attention helpers
def maybe_add_mask(ctx, node: fx.Node) -> Any:
    """``scores if mask is None else scores + mask``: elementwise, as ``a + b``."""
    from .pointwise import broadcast, tensor_operands

    return broadcast(ctx, node, tensor_operands(ctx, node))


def resolve_self_attn_mask(ctx, node: fx.Node) -> Any:
    """The additive mask for ``scores``: ``attn_mask`` itself or a ``-inf`` mask made from it
    value by value (its labels: a per-head mask's heads), or with ``is_causal`` a causal
    [N, N] one (no channels). The scores are read for their dtype and device only. Where
    ``is_causal`` is not the literal False (a forward argument, say), the mask's channels
    are kept and the result carries none: it is the mask, or no mask at all."""
    arg = ctx.arg(node, 2, "attn_mask")
    mask = ctx.input(node, 2, "attn_mask")
    if mask is None:
        ctx.keep_all(arg)  # (labels inside a structure, if any)
        return None
    if ctx.arg(node, 3, "is_causal", False) is False:
        return mask
    ctx.keep(mask.labels)
    return None


_HELPERS = (("maybe_add_mask", maybe_add_mask), ("resolve_self_attn_mask", resolve_self_attn_mask))


def _resize_rel_pos_bias(m: nn.Module, orig: nn.Module) -> None:
    """timm's ``RelPosBias``: ``get_bias`` views the gathered table as ``bias_shape``, whose
    last entry is the heads (the table's columns, sliced with the heads they meet)."""
    m.bias_shape = tuple(orig.bias_shape[:-1]) + (int(m.relative_position_bias_table.shape[1]),)


def register_timm_head_resizers() -> None:
    """Register the head resizers for the timm attention classes this version of timm has,
    and the rules for its attention helpers."""
    from .heads import register_head_resizer

    try:
        helpers = importlib.import_module("timm.layers.attention")
    except ImportError:
        return
    for name, rule in _HELPERS:
        # (while fx traces, the module holds its patched wrapper of an fx-wrapped function:
        # the graph records the function itself)
        fn = getattr(helpers, name, None)
        if callable(fn):
            register_rule(inspect.unwrap(fn))(rule)

    for path, name, spec in TIMM_HEAD_CLASSES:
        try:
            cls = getattr(importlib.import_module(path), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            register_head_resizer(cls, _resizer(spec))
    rel_pos = getattr(importlib.import_module("timm.layers.pos_embed_rel"), "RelPosBias", None)
    if isinstance(rel_pos, type):
        register_head_resizer(rel_pos, _resize_rel_pos_bias)


register_lazy_rules("timm", register_timm_head_resizers)
