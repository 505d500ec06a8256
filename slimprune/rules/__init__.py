"""Channel rules: one per op, kept in a registry.

A rule says how the channel labels of an op's inputs map to its outputs, which of the
op's parameters are sliced along which dimension, and which literal sizes in the graph
must be rewritten after pruning. Rules live by family:

* ``layers.py``     Conv/ConvTranspose, Linear, torch.nn's norms, PReLU, Embedding
* ``norms.py``      norm subclasses and fused norm+act (timm's), functional batch/group norm
* ``attention.py``  MultiheadAttention, Swin and MaxViT attention (whole heads)
* ``heads.py``      attention heads in plain ops: head-splitting views, matmul, sdpa; head resizers
* ``hf.py``         Hugging Face transformers classes (Conv1D, attention resizers), loaded lazily
* ``timm_heads.py`` head resizers for timm's attention classes, loaded lazily
* ``timm_layers.py`` timm's weight-standardised convs (NFNet) and BlurPool2d, loaded lazily
* ``recurrent.py``  LSTM, GRU, RNN (hidden units with their gate rows)
* ``pointwise.py``  activations, dropout, pooling, interpolate, add/sub/mul/div, reductions
* ``indexing.py``   cat, split/chunk, unbind, getitem
* ``reshape.py``    flatten/view/reshape, permute/transpose, pixel (un)shuffle, expand

Register your own with :func:`register_rule`::

    @slimprune.register_rule(MyScale)
    def my_scale(ctx, node):
        x = ctx.input(node, 0)                       # ChannelInfo of the first input, or None
        if x is not None:
            ctx.param(node, "weight", 0, x.labels, role="scale")
        return x                                     # the output keeps the input's channels
"""

from __future__ import annotations

from ._registry import (
    Rule,
    has_module_rule,
    lookup_rule,
    register_lazy_rules,
    register_rule,
    registered_targets,
)

__all__ = ["Rule", "register_rule", "register_lazy_rules", "lookup_rule", "has_module_rule", "registered_targets"]

# Import the built-in rule families so they register themselves.
from . import attention, heads, hf, indexing, layers, norms, pointwise, recurrent, reshape, timm_heads, timm_layers  # noqa: E402,F401
