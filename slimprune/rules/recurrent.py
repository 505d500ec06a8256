"""Rules for torch's recurrent layers: ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` (timm's Sequencer
runs bidirectional LSTMs along the rows and the columns of an image).

**Hidden units prune exactly.** Silencing hidden unit ``j`` zeroes its rows, in every gate, of
``weight_ih``, ``weight_hh``, ``bias_ih`` and ``bias_hh`` (role ``out``), so each of its gate
pre-activations is 0 at every step. LSTM: i = f = o = sigmoid(0) = 1/2, g = tanh(0) = 0, so
c_t = c_{t-1} / 2 = 0 from c_0 = 0 and h_t = o · tanh(0) = 0. GRU: r = z = 1/2,
n = tanh(0 + r · 0) = 0, h_t = (1 - z) n + z h_{t-1} = h_{t-1} / 2 = 0. RNN: tanh(0) = relu(0)
= 0. The unit is zero at every step, so its column of ``weight_hh`` (and of the next layer's
``weight_ih``) multiplies 0: the layer without it computes the same thing. This needs the
zero initial state torch uses when no ``hx`` is passed; a call with ``hx`` keeps the units.

**One hidden size.** torch's layers have one ``hidden_size`` for every layer and direction,
so unit ``j`` of every layer and both directions is one unit (removed together): the
output's features ``j`` and ``hidden + j`` of a bidirectional layer carry the same label.

**Input features** prune from upstream: they are the columns of ``weight_ih_l0`` (and
``weight_ih_l0_reverse``); removed ones holding a constant (a BN's β kept with
``fold_bias``) fold into ``bias_ih_l0`` (a layer without biases cannot fold them: the plan
warns). ``proj_size`` (LSTM projections) and packed sequences are kept
whole. The resize sets ``input_size`` and ``hidden_size`` from the sliced weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ._registry import register_rule

__all__ = ["recurrent"]

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _gates(m: nn.Module) -> int:
    return next(n for cls, n in _GATES.items() if isinstance(m, cls))


def _resize_recurrent(m: nn.Module, orig: nn.Module) -> None:
    m.input_size = int(m.weight_ih_l0.shape[1])
    m.hidden_size = int(m.weight_hh_l0.shape[1])


def _fold_recurrent(m: nn.Module, consts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Constant removed input features add ``weight_ih_l0 @ consts`` to the first layer's gate
    pre-activations at every step: a change of ``bias_ih_l0`` (and of the reverse direction's)."""
    out = {}
    for suffix in ("", "_reverse")[: 2 if m.bidirectional else 1]:
        w = getattr(m, "weight_ih_l0" + suffix).detach()
        out["bias_ih_l0" + suffix] = w @ consts.to(w.dtype)
    return out


@register_rule(nn.LSTM, nn.GRU, nn.RNN, resize=_resize_recurrent, fold=_fold_recurrent)
def recurrent(ctx, node: fx.Node) -> Any:
    """Hidden units (tied across layers and directions) prune with their gate rows; input
    features are the first layer's ``weight_ih`` columns."""
    m = ctx.module(node)
    x = ctx.input(node, 0, "input")
    x_shape, out_shape = ctx.shape(ctx.arg(node, 0, "input")), ctx.shape(node)
    if not isinstance(x_shape, torch.Size) or not isinstance(out_shape, tuple):
        return ctx.barrier(node, f"{type(m).__name__} on a packed sequence")
    hx = ctx.arg(node, 1, "hx")
    last = len(x_shape) - 1
    if x is not None and x.axis != last:
        ctx.keep(x.labels)
        x = None
    if getattr(m, "proj_size", 0):
        return ctx.barrier(node, "LSTM with proj_size > 0 (projected hidden state)")
    gates, directions = _gates(m), 2 if m.bidirectional else 1
    steps = int(x_shape[0 if len(x_shape) == 2 or not m.batch_first else 1])
    hidden = ctx.fresh(m.hidden_size)
    rows = np.tile(hidden, gates)
    layer_out = np.tile(hidden, directions)
    for layer in range(m.num_layers):
        for suffix in ("", "_reverse")[:directions]:
            name = f"_l{layer}{suffix}"
            for param in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if isinstance(getattr(m, param + name, None), torch.Tensor):
                    ctx.param(node, param + name, 0, rows, "out")
            ctx.param(node, "weight_hh" + name, 1, hidden, "in")
            if layer > 0:
                ctx.param(node, "weight_ih" + name, 1, layer_out, "in")
            elif x is not None:
                ctx.param(node, "weight_ih" + name, 1, x.labels, "in")
            ctx.cost_of(str(node.target), "weight_ih" + name, steps)
            ctx.cost_of(str(node.target), "weight_hh" + name, steps)
    if x is not None:
        ctx.consumer(node, x.labels, last)
    if hx is not None:
        ctx.keep(hidden)  # a given initial state need not be zero at a removed unit
        ctx.keep_all(hx)
    state = ctx.info_of(len(out_shape[1][0] if isinstance(m, nn.LSTM) else out_shape[1]) - 1, hidden)
    return (ctx.info_of(len(out_shape[0]) - 1, layer_out), (state, state) if isinstance(m, nn.LSTM) else state)
