"""Freezing a removal decision into a :class:`~slimprune._plan.PruningPlan`.

:func:`make_plan` turns the solver's boolean mask of removed units, the folds and the
notes into the plan's frozen decisions: kept indices per parameter slice, removed
positions per group, literal rewrites of ``forward`` (with the module attribute each
literal came from) and the predicted parameters and FLOPs.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ._graph import ChannelGraph
from ._plan import Fold, GroupDecision, PruningPlan, SliceDecision, fingerprint
from ._solver import Predictor

__all__ = ["make_plan", "fold_bias_params"]


def make_plan(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, folds: list[Fold], notes: list[str],
              options: dict[str, Any], predictor: Predictor | None = None,
              protected: frozenset[int] = frozenset(), structure: str | None = None) -> PruningPlan:
    """Freeze a removal decision into a :class:`PruningPlan` (predictions included).

    ``structure``: ``fingerprint(model)`` when the caller knows it (an analysis checked current)."""
    predictor = predictor or Predictor(graph, model)
    kept = graph.kept_fn(removed)
    # The members of a group have equal unit arrays: each distinct one is worked out once.
    kept_of: dict[tuple[str, bytes], tuple[int, ...]] = {}

    def kept_positions(units: np.ndarray) -> tuple[int, ...]:
        key = (units.dtype.str, units.tobytes())
        hit = kept_of.get(key)
        if hit is None:
            hit = kept_of[key] = tuple(np.flatnonzero(~removed[units]).tolist())
        return hit

    slices = tuple(
        SliceDecision(s.module, s.param, s.dim, s.role, int(s.units.size), kept_positions(s.units))
        for s in graph.slices
    )
    groups = tuple(
        GroupDecision(g.id, tuple(graph.slices[m].name for m in g.members), len(g),
                      tuple(np.flatnonzero(removed[g.units]).tolist()), g.exact, int(g.units[0]) in protected)
        for g in graph.groups
    )
    edits = []
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    for node, fn in graph.edits:
        for e in fn(kept):
            edits.append(json.dumps({"node": node, **e, **_attribute_of(model, nodes[node], e)}, sort_keys=True))
    if any(fn(kept) for _, fn in graph.other_edits):
        mode = "eval" if model.training else "train"
        notes.append(f"the {mode}-mode forward hard-codes channel counts this plan changes; only the "
                     f"current mode's graph is rewritten, so make the plan in the mode you will run")
    extra = fold_bias_params(graph, model, removed, folds)
    none = np.zeros(graph.num_units, bool)
    inputs = graph.traced.example_inputs
    return PruningPlan(
        model=type(model).__name__,
        fingerprint=structure or fingerprint(model),
        input_shapes=tuple(tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor)),
        options=tuple(sorted(options.items())),
        groups=groups,
        slices=slices,
        folds=tuple(folds),
        edits=tuple(edits),
        opaque=graph.traced.opaque,
        params_before=predictor.params(none),
        params_after=predictor.params(removed, extra),
        flops_before=2 * predictor.macs(none),
        flops_after=2 * predictor.macs(removed),
        barriers=tuple(b.describe() for b in graph.barriers),
        notes=tuple(dict.fromkeys(notes)),
    )


def fold_bias_params(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, folds: Iterable[Fold]) -> int:
    """Parameters folding adds: a consumer without a bias gets one."""
    extra = 0
    for f in folds:
        m = model.get_submodule(f.module)
        if not isinstance(m, nn.MultiheadAttention) and getattr(m, "bias", None) is None:
            extra += int(np.count_nonzero(~removed[_out_units(graph, f.module)]))
    return extra


def _attribute_of(model: nn.Module, node: Any, edit: dict[str, Any]) -> dict[str, Any]:
    """The module attribute a rewritten literal came from (``self.hidden_dim``), if unambiguous.

    ``apply`` updates such attributes, so the model's own ``forward`` keeps working; when
    every rewritten literal has one, no GraphModule is needed at all.
    """
    old = edit.get("old")
    if isinstance(old, list):  # a shape tuple such as LayerNorm's normalized_shape
        old = tuple(old)
    elif not isinstance(old, int) or isinstance(old, bool):
        return {}
    stack = node.meta.get("nn_module_stack") or {}
    path = str(list(stack.values())[-1][0]) if stack else ""
    try:
        owner = model.get_submodule(path) if path else model
    except AttributeError:
        return {}
    source = _method_source(type(owner))
    # (several attributes may equal it, GPT-2's embed_dim and split_size: the one forward reads)
    names = [k for k, v in vars(owner).items()
             if not k.startswith("_") and type(v) is type(old) and v == old and f"self.{k}" in source]
    if len(names) != 1:
        return {}
    return {"attr": [path, names[0]]}


def _method_source(cls: type) -> str:
    """Source of a class's methods other than __init__ (where attributes are read, not set)."""
    parts = []
    for klass in cls.__mro__:
        if klass.__module__.startswith("torch.nn") or klass is object:
            break
        for name, fn in vars(klass).items():
            if name != "__init__" and inspect.isfunction(fn):
                try:
                    parts.append(inspect.getsource(fn))
                except (OSError, TypeError):
                    pass
    return "\n".join(parts)


def _out_units(graph: ChannelGraph, module: str) -> np.ndarray:
    for s in graph.slices:
        if s.module == module and s.role == "out" and s.param == "weight":
            m_units = s.units
            if s.dim == 1:  # transposed conv: tile the per-group positions
                m = graph.gm.get_submodule(module)
                return np.tile(m_units, m.groups)
            return m_units
    m = graph.gm.get_submodule(module)
    n = m.weight.shape[0]
    return np.zeros(n, dtype=np.int64)
