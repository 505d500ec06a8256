"""Rules for timm's convolution-like layers whose ``forward`` is not ``nn.Conv2d``'s, registered
the first time a timm module class is looked up (slimprune never imports timm itself).

* **Weight-standardised convs** (``StdConv2d``, ``StdConv2dSame``, ``ScaledStdConv2d``,
  ``ScaledStdConv2dSame``; NFNet, NF-RegNet, BiT ResNetV2, ViT hybrids): the forward
  standardises each output channel's weights at run time, ``F.batch_norm(weight.reshape(1,
  out, -1))`` (then × ``gain * scale`` for the scaled ones), and convolves with the result.
  Output channels are independent: a removed channel's weight row, ``bias`` and ``gain`` go,
  and a silenced one (zero row) standardises to zero, so output channels prune exactly.
  Input channels do not: the mean and variance of a row run over all its input channels
  (and ``scale`` is 1/sqrt(fan-in), fixed when the layer was made), so removing one changes
  every kept weight, and no smaller row standardises to the kept part of the old one (which
  has a non-zero mean in general). They are kept, without a warning: this is the layer's
  arithmetic, not a missing rule. Depthwise layers are the exception: each row reads one
  input channel, so a channel goes with its own rows, exactly.
* **BlurPool2d** (TResNet's anti-aliasing; ``F.conv2d`` with a fixed binomial filter, one
  group per channel): channels pass one to one; a per-channel filter buffer is sliced.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ._registry import register_lazy_rules, register_rule
from .layers import _positions, _resize_conv

__all__ = ["register_timm_layer_rules", "STANDARDISED_CONVS"]

# timm class names, looked up by name so that any timm version works.
STANDARDISED_CONVS = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")


def standardised_conv(ctx, node: fx.Node) -> Any:
    """A conv whose weight rows are standardised over their fan-in at run time: outputs prune
    (weight rows, ``bias``, ``gain``), inputs are kept unless the conv is depthwise."""
    m = ctx.module(node)
    x = ctx.input(node, 0, "x")
    g, cin, cout = m.groups, m.in_channels, m.out_channels
    depthwise = g > 1 and g == cin
    if x is not None and (x.axis != 1 or not depthwise):
        ctx.keep(x.labels)  # each row's statistics run over these channels
        x = None
    ctx.cost(node, _positions(ctx.shape(node), 1))
    if depthwise:
        if x is None:
            return None
        out = np.repeat(x.labels, cout // cin)
    else:
        out = np.tile(ctx.fresh(cout // g), g)  # grouped: equal-size groups of outputs
    ctx.param(node, "weight", 0, out, "out")
    if isinstance(m.bias, torch.Tensor):
        ctx.param(node, "bias", 0, out, "out")
    if isinstance(getattr(m, "gain", None), torch.Tensor):
        # (out, 1, 1, 1): sliced, not a γ (network slimming's "scale" role is a 1-d vector)
        ctx.param(node, "gain", 0, out, "aux")
    return ctx.info_of(1, out)


def _resize_blur(m: nn.Module, orig: nn.Module) -> None:
    if m.channels is not None:
        m.channels = m.filt.shape[0]


def blur_pool(ctx, node: fx.Node) -> Any:
    """``BlurPool2d``: a fixed depthwise blur then a stride; channels pass one to one."""
    m = ctx.module(node)
    x = ctx.input(node, 0, "x")
    if x is None:
        return None
    if x.axis != 1:
        return ctx.barrier(node, f"channels are on axis {x.axis}, BlurPool2d blurs each channel of axis 1")
    if m.channels is not None:
        ctx.param(node, "filt", 0, x.labels, "aux")
    return x


_TIMM_MODULES = ("timm.layers.std_conv", "timm.layers.blur_pool")


def register_timm_layer_rules() -> None:
    """Register the rules for timm's weight-standardised convs and BlurPool2d (called on the
    first timm module slimprune looks up; timm must be importable)."""
    found: dict[str, type] = {}
    for path in _TIMM_MODULES:
        try:
            mod = importlib.import_module(path)
        except ImportError:
            continue
        found.update({name: obj for name, obj in vars(mod).items()
                      if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == path})
    convs = [found[n] for n in STANDARDISED_CONVS if n in found]
    if convs:
        register_rule(*convs, resize=_resize_conv)(standardised_conv)
    if "BlurPool2d" in found:
        register_rule(found["BlurPool2d"], resize=_resize_blur)(blur_pool)


register_lazy_rules("timm", register_timm_layer_rules)
