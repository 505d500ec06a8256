"""Rules for Hugging Face ``transformers`` classes, registered the first time a module class
of the ``transformers`` package is looked up (slimprune never imports transformers itself).

* ``transformers.pytorch_utils.Conv1D`` (GPT-2, GPT, ...): ``x @ W + b`` with ``W`` stored
  (in, out), so a Linear's rule with the weight's dims swapped; ``resize`` updates ``nf``
  (the width its ``forward`` reshapes the output to) and ``nx``.
* Llama/Mistral/Qwen2's ``RMSNorm`` and T5's ``T5LayerNorm`` (the same computation): inexact
  norms over the last axis.
* ConvNeXt's ``ConvNextLayerNorm`` (channels first or last): an inexact LayerNorm leaf.
* Swin's ``SwinRelativePositionBias``: a per-head table whose output is labelled by head (the
  scores or sdpa's ``attn_mask`` tie it to the query heads), its columns sliced with them.
* Attention classes: after whole heads are removed (see :mod:`slimprune.rules.heads`) the
  attributes their ``forward`` reads (``num_heads``, ``split_size``, ``num_key_value_groups``,
  ...) are updated by a *head resizer* per class (:func:`slimprune.rules.heads.register_head_resizer`).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ._registry import register_lazy_rules, register_rule
from .layers import linear_over_last_axis
from .norms import _channel_norm, _resize_shape

__all__ = ["register_transformers_rules"]


# --------------------------------------------------------------------------- Conv1D
def _resize_conv1d(m: nn.Module, orig: nn.Module) -> None:
    m.nx, m.nf = m.weight.shape


def _fold_conv1d(m: nn.Module, consts: torch.Tensor) -> torch.Tensor:
    """Constant inputs ``c`` add ``c @ W`` to every output: a bias change."""
    return m.weight.detach().t() @ consts.to(m.weight.dtype)


def conv1d(ctx, node: fx.Node) -> Any:
    """``transformers`` ``Conv1D``: a Linear whose weight is (in_features, out_features)."""
    return linear_over_last_axis(ctx, node, "x", in_dim=0, out_dim=1)


# --------------------------------------------------------------- rotary embeddings
def rotary_embedding(ctx, node: fx.Node) -> Any:
    """Llama-style ``RotaryEmbedding(x, position_ids) -> (cos, sin)``: tables over positions and
    head_dim computed from ``inv_freq``, read by every head alike; they carry no channels (and
    head_dim is never pruned), so ``x``'s channels pass by untouched."""
    shapes = ctx.shape(node)
    return tuple(None for _ in shapes) if isinstance(shapes, tuple) else None


_ROTARY: tuple[tuple[str, str], ...] = (
    ("transformers.models.llama.modeling_llama", "LlamaRotaryEmbedding"),
    ("transformers.models.mistral.modeling_mistral", "MistralRotaryEmbedding"),
    ("transformers.models.qwen2.modeling_qwen2", "Qwen2RotaryEmbedding"),
)


# ------------------------------------------------------------------------ RMSNorm
def rms_norm(ctx, node: fx.Node) -> Any:
    """Llama-style ``RMSNorm``: ``weight * x / rms(x)`` over the last axis. The rms runs over
    every channel, so removing one changes the others: inexact (pruned only under
    ``allow_inexact``), as with LayerNorm; its ``weight`` is sliced with the channels."""
    x = ctx.passthrough(node, 0, "hidden_states")
    if x is None:
        return None
    if x.axis != len(ctx.shape(node)) - 1:
        return ctx.barrier(node, f"RMSNorm normalises the last axis, the channels are on axis {x.axis}")
    ctx.inexact_units(x.labels)
    ctx.param(node, "weight", 0, x.labels, "scale")
    return x


_RMS: tuple[tuple[str, str], ...] = (
    ("transformers.models.llama.modeling_llama", "LlamaRMSNorm"),
    ("transformers.models.mistral.modeling_mistral", "MistralRMSNorm"),
    ("transformers.models.qwen2.modeling_qwen2", "Qwen2RMSNorm"),
    ("transformers.models.t5.modeling_t5", "T5LayerNorm"),  # (no mean, no bias: an RMSNorm)
    ("transformers.models.mt5.modeling_mt5", "MT5LayerNorm"),
)


# ------------------------------------------------- LayerNorm with a data_format
def data_format_layer_norm(ctx, node: fx.Node) -> Any:
    """ConvNeXt's ``ConvNextLayerNorm``: an ``nn.LayerNorm`` over the channels, which sit on axis
    1 (``data_format="channels_first"``, permuted around the norm) or last; inexact, as
    LayerNorm. A leaf, so ``normalized_shape`` is resized with its weight (no literal to rewrite
    in a forward ``super().forward`` reads it from)."""
    return _channel_norm(ctx.module(node).data_format == "channels_first")(ctx, node)


_DATA_FORMAT_NORMS: tuple[tuple[str, str], ...] = (
    ("transformers.models.convnext.modeling_convnext", "ConvNextLayerNorm"),
    ("transformers.models.convnextv2.modeling_convnextv2", "ConvNextV2LayerNorm"),
)


# ------------------------------------------------------- per-head position tables
def relative_position_bias(ctx, node: fx.Node) -> Any:
    """Swin-style ``RelativePositionBias()`` -> [1, heads, N, N]: a table of (positions, heads)
    indexed by a fixed buffer. Its output is a new channel per head on axis 1, which the
    attention's scores (or sdpa's ``attn_mask``) tie to the query heads; the table's head
    columns are sliced with them."""
    shape = ctx.shape(node)
    table = ctx.module(node).relative_position_bias_table
    if not isinstance(shape, torch.Size) or len(shape) != 4 or shape[1] != table.shape[1]:
        return ctx.barrier(node, "a relative-position bias whose output is not [1, heads, N, N]")
    heads = ctx.fresh(int(table.shape[1]))
    ctx.param(node, "relative_position_bias_table", 1, heads, "aux")
    return ctx.info_of(1, heads)


_POSITION_TABLES: tuple[tuple[str, str], ...] = (
    ("transformers.models.swin.modeling_swin", "SwinRelativePositionBias"),
)


# ------------------------------------------------------------------ head resizers
def _width(m: nn.Module, out: bool = True) -> int:
    """Output (or input) width of a projection: a Linear, or a Conv1D (weight (in, out))."""
    w = m.weight
    if type(m).__name__ == "Conv1D":
        return int(w.shape[1] if out else w.shape[0])
    return int(w.shape[0] if out else w.shape[1])


def _heads_of(width: int, head_dim: int, m: nn.Module, what: str) -> int:
    if head_dim <= 0 or width % head_dim:
        raise ValueError(f"{type(m).__qualname__}: {what} width {width} is not a whole number of heads of {head_dim}")
    return width // head_dim


def _resize_bert(m: nn.Module, orig: nn.Module) -> None:
    """BERT/RoBERTa/ELECTRA/MobileViT-style self-attention: num_attention_heads, all_head_size."""
    m.num_attention_heads = _heads_of(_width(m.query), m.attention_head_size, m, "query")
    m.all_head_size = m.num_attention_heads * m.attention_head_size


def _resize_distilbert(m: nn.Module, orig: nn.Module) -> None:
    m.n_heads = _heads_of(_width(m.q_lin), m.attention_head_size, m, "q_lin")


def _resize_vit(m: nn.Module, orig: nn.Module) -> None:
    m.num_attention_heads = _heads_of(_width(m.q_proj), m.head_dim, m, "q_proj")


def _resize_clip(m: nn.Module, orig: nn.Module) -> None:
    m.num_heads = _heads_of(_width(m.q_proj), m.head_dim, m, "q_proj")


def _resize_gpt2(m: nn.Module, orig: nn.Module) -> None:
    """GPT-2: ``split_size`` (the q/k/v widths its forward splits ``c_attn`` by) and num_heads."""
    width = _width(m.c_proj, out=False)
    m.num_heads = _heads_of(width, m.head_dim, m, "c_proj input")
    m.split_size = width


def _resize_gqa(m: nn.Module, orig: nn.Module) -> None:
    """Llama/Mistral/Qwen2-style grouped-query attention: num_key_value_groups (query heads per
    key/value head) from the kept q and k widths; head_dim and the scale never change."""
    heads = _heads_of(_width(m.q_proj), m.head_dim, m, "q_proj")
    kv = _heads_of(_width(m.k_proj), m.head_dim, m, "k_proj")
    if kv == 0 or heads % kv:
        raise ValueError(f"{type(m).__qualname__}: {heads} query heads do not divide into {kv} key/value groups")
    m.num_key_value_groups = heads // kv
    for name, value in (("num_heads", heads), ("num_key_value_heads", kv)):
        if hasattr(orig, name):
            setattr(m, name, value)


def _resize_swin(m: nn.Module, orig: nn.Module) -> None:
    """Swin's and Segformer's attention: ``num_attention_heads`` (head_dim and the scale stay)."""
    m.num_attention_heads = _heads_of(_width(m.q_proj), m.head_dim, m, "q_proj")


def _resize_t5(m: nn.Module, orig: nn.Module) -> None:
    """T5/mT5/LongT5-style attention: ``n_heads`` (which sizes the zero position bias of a layer
    without its own ``relative_attention_bias``) and ``inner_dim``; the bias table's head
    columns are sliced with the heads they belong to by the graph (an embedding's columns)."""
    m.n_heads = _heads_of(_width(m.q), m.key_value_proj_dim, m, "q")
    m.inner_dim = m.n_heads * m.key_value_proj_dim


# (module path, class names, resizer): the classes this version of transformers has get one
_HEAD_RESIZERS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    ("transformers.models.bert.modeling_bert", ("BertSelfAttention", "BertCrossAttention"), _resize_bert),
    ("transformers.models.roberta.modeling_roberta", ("RobertaSelfAttention", "RobertaCrossAttention"), _resize_bert),
    ("transformers.models.distilbert.modeling_distilbert", ("DistilBertSelfAttention",), _resize_distilbert),
    ("transformers.models.vit.modeling_vit", ("ViTAttention", "ViTSelfAttention"), _resize_vit),
    ("transformers.models.clip.modeling_clip", ("CLIPAttention",), _resize_clip),
    ("transformers.models.gpt2.modeling_gpt2", ("GPT2Attention",), _resize_gpt2),
    ("transformers.models.swin.modeling_swin", ("SwinAttention",), _resize_swin),
    ("transformers.models.segformer.modeling_segformer", ("SegformerAttention",), _resize_swin),
    # MobileViT's merges its heads back with ``size()[:-2] + (self.all_head_size,)``: the view
    # rule rewrites that carried literal (the plan names the attribute), the resizer sets both
    ("transformers.models.mobilevit.modeling_mobilevit", ("MobileViTSelfAttention",), _resize_bert),
    ("transformers.models.t5.modeling_t5", ("T5Attention",), _resize_t5),
    ("transformers.models.mt5.modeling_mt5", ("MT5Attention",), _resize_t5),
    ("transformers.models.llama.modeling_llama", ("LlamaAttention",), _resize_gqa),
    ("transformers.models.mistral.modeling_mistral", ("MistralAttention",), _resize_gqa),
    ("transformers.models.qwen2.modeling_qwen2", ("Qwen2Attention",), _resize_gqa),
)


# ---------------------------------------------------------------------- the loader
def _class(path: str, name: str) -> type | None:
    try:
        return getattr(importlib.import_module(path), name, None)
    except ImportError:
        return None


def register_transformers_rules() -> None:
    """Register the rules for the ``transformers`` classes this version of it has."""
    conv = _class("transformers.pytorch_utils", "Conv1D")
    if conv is not None:
        register_rule(conv, resize=_resize_conv1d, fold=_fold_conv1d)(conv1d)
    rotary = [c for c in (_class(path, name) for path, name in _ROTARY) if c is not None]
    if rotary:
        register_rule(*rotary)(rotary_embedding)
    rms = [c for c in (_class(path, name) for path, name in _RMS) if c is not None]
    if rms:
        register_rule(*rms)(rms_norm)
    norms = [c for c in (_class(path, name) for path, name in _DATA_FORMAT_NORMS) if c is not None]
    if norms:
        register_rule(*norms, resize=_resize_shape)(data_format_layer_norm)
    tables = [c for c in (_class(path, name) for path, name in _POSITION_TABLES) if c is not None]
    if tables:
        register_rule(*tables)(relative_position_bias)
    from .heads import register_head_resizer

    for path, names, resizer in _HEAD_RESIZERS:
        for name in names:
            cls = _class(path, name)
            if cls is not None:
                register_head_resizer(cls, resizer)


register_lazy_rules("transformers", register_transformers_rules)
