"""Rules for Hugging Face ``transformers`` classes, registered the first time a module class
of the ``transformers`` package is looked up (slimprune never imports transformers itself).

* ``transformers.pytorch_utils.Conv1D`` (GPT-2, GPT, ...): ``x @ W + b`` with ``W`` stored
  (in, out), so a Linear's rule with the weight's dims swapped; ``resize`` updates ``nf``
  (the width its ``forward`` reshapes the output to) and ``nx``.
* Attention classes: after whole heads are removed (see :mod:`slimprune.rules.heads`) the
  attributes their ``forward`` reads (``num_heads``, ``split_size``, ``num_key_value_groups``,
  ...) are updated by a *head resizer* per class (:func:`slimprune.rules.heads.register_head_resizer`).
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ._registry import register_lazy_rules, register_rule

__all__ = ["register_transformers_rules"]


# --------------------------------------------------------------------------- Conv1D
def _resize_conv1d(m: nn.Module, orig: nn.Module) -> None:
    m.nx, m.nf = m.weight.shape


def _fold_conv1d(m: nn.Module, consts: torch.Tensor) -> torch.Tensor:
    """Constant inputs ``c`` add ``c @ W`` to every output: a bias change."""
    return m.weight.detach().t() @ consts.to(m.weight.dtype)


def conv1d(ctx, node: fx.Node) -> Any:
    """``transformers`` ``Conv1D``: a Linear whose weight is (in_features, out_features)."""
    m = ctx.module(node)
    x = ctx.input(node, 0, "x")
    shape = ctx.shape(node)
    last = len(shape) - 1
    if x is not None and x.axis != last:
        ctx.keep(x.labels)
        x = None
    ctx.cost(node, math.prod(shape[1:-1]) if len(shape) > 1 else 1)
    if x is not None:
        ctx.param(node, "weight", 0, x.labels, "in")
        ctx.consumer(node, x.labels, last)
    out = ctx.fresh(int(m.weight.shape[1]))
    ctx.param(node, "weight", 1, out, "out")
    if isinstance(getattr(m, "bias", None), torch.Tensor):
        ctx.param(node, "bias", 0, out, "out")
    return ctx.info_of(last, out)


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


register_lazy_rules("transformers", register_transformers_rules)
