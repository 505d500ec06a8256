"""Importance criteria: one score per unit (removable channel); low scores go first.

Built-in criteria, by name:

* ``"bn_scale"`` (default, network slimming): the largest |γ| over the unit's
  normalisation layers. Groups without a normalisation layer fall back to ``"l2"``,
  rescaled so the median fallback score equals the median |γ| of the model, which keeps
  one global ranking meaningful.
* ``"l1"`` / ``"l2"``: the L1 / L2 norm of the unit's producer rows and consumer
  columns summed over every member layer, divided by the mean over its group (so wide
  and narrow layers compete fairly in one global ranking).
* ``"random"``: uniform random scores (a baseline), seeded.
* ``"flops"``: the multiply-accumulates a unit carries (what removing it alone saves),
  whatever its weights. Not a measure of what a channel contributes to accuracy but of
  the compute it holds: with ``target="latency"`` the solver then keeps the most compute
  the latency budget allows, i.e. the widest network that meets it. Use it when the
  shape matters more than the weights kept (the pruned model is trained from scratch or
  fine-tuned at length) or when the weights carry no ranking yet (a freshly initialised
  model, where every γ is 1).

A callable ``fn(model, graph, group) -> sequence of len(group) floats`` adds your own.

Data-aware: :func:`taylor_importance` (first-order Taylor, |w·∇w| of every weight a unit
owns, the gradient of a loss summed over a few batches) returns such a callable. Magnitude
(``l1``/``l2``, or ``bn_scale`` where there are norms) needs no data and suits a model that
will be fine-tuned at length after pruning; Taylor needs a few batches and a loss, and
ranks by the estimated change of that loss, so it suits pruning a trained transformer
(attention heads, MLP neurons) with little or no fine-tuning afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ._gamma import unit_gamma_max
from ._modes import kept_modes
from ._graph import ChannelGraph
from ._score_cache import ScoreCache
from ._solver import Predictor
from ._submodules import Submodules
from .errors import InvalidArgumentError

__all__ = ["IMPORTANCE", "unit_scores", "tiebreak_scores", "as_float64", "taylor_importance"]

IMPORTANCE = ("bn_scale", "l1", "l2", "random", "flops")




def _per_index(t: torch.Tensor, dim: int, p: int) -> np.ndarray:
    """Sum of |w| (p=1) or of w² (p=2) over every dim but ``dim``, as float64.

    The reduction is torch's ``vector_norm`` (in float32, so its order of summation decides
    the last bits); what follows it (the square, the float64 copy) is elementwise, and for a
    float32/float64 CPU result NumPy does it with the same IEEE operations, bit for bit, in
    a third of the time of the torch calls (``tests/test_importance_norms.py``)."""
    t = t.detach()
    others = tuple(d for d in range(t.dim()) if d != dim)
    if others:
        v = torch.linalg.vector_norm(t if t.dtype == torch.float32 else t.float(), ord=p, dim=others)
        if _numpy_exact(v):
            a = v.numpy()
            return (a if p == 1 else a * a).astype(np.float64)
        return as_float64(v if p == 1 else v * v)
    if _numpy_exact(t):
        a = t.numpy()
        return (np.abs(a) if p == 1 else a * a).astype(np.float64)
    return as_float64(t.abs() if p == 1 else t * t)


# dtypes whose elementwise |x|, x*x and float64 conversion NumPy computes as torch does
_NUMPY_EXACT = frozenset({torch.float32, torch.float64})


def _numpy_exact(t: torch.Tensor) -> bool:
    """Can ``t.numpy()`` view ``t`` and NumPy's elementwise ops match torch's on it?"""
    return t.dtype in _NUMPY_EXACT and t.device.type == "cpu" and t.layout is torch.strided and not t.is_neg()


def as_float64(t: torch.Tensor) -> np.ndarray:
    """``t`` as a float64 NumPy array, whatever its dtype and device (NumPy has no bfloat16)."""
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _norm_scores(graph: ChannelGraph, model: nn.Module, p: int, units: np.ndarray | None = None,
                 roles: tuple[str, ...] = ("out", "in"), cache: ScoreCache | None = None) -> np.ndarray:
    """Per-unit weight norms over producer rows and consumer columns (only slices touching ``units``)."""
    acc = np.zeros(graph.num_units, dtype=np.float64)
    subs = Submodules(model)
    with torch.no_grad():
        for s in graph.slices:
            if s.role in roles and (units is None or units[s.units].any()):
                t = getattr(subs(s.module), s.param)  # not detached: the score cache knows it by identity
                if cache is None:
                    v = _per_index(t, s.dim, p)
                else:
                    v = cache.get((s.module, s.param, s.dim, p), t, lambda w, d=s.dim: _per_index(w, d, p))
                np.add.at(acc, s.units, v)
    return acc if p == 1 else np.sqrt(acc)


def _group_normalised(graph: ChannelGraph, raw: np.ndarray) -> np.ndarray:
    out = np.full(graph.num_units, np.nan)
    for g in graph.groups:
        v = raw[g.units]
        m = v.mean()
        out[g.units] = v / m if m > 0 else v
    return out


def _callable_scores(importance: Callable[..., Any], model: nn.Module, graph: ChannelGraph, g: Any) -> np.ndarray:
    """One group's scores from a user callable, checked: numbers, one per channel, no NaN."""
    name = getattr(importance, "__name__", type(importance).__name__)
    where = ", ".join(dict.fromkeys(graph.slices[m].module or "(root)" for m in g.members[:4]))
    raw = importance(model, graph, g)
    try:
        v = (as_float64(raw) if isinstance(raw, torch.Tensor) else np.asarray(raw, dtype=np.float64)).ravel()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"importance callable {name} returned {type(raw).__name__} {str(raw)[:60]!r} for group {g.id} "
            f"({where}), which is not a sequence of numbers ({exc}); return one float score per channel"
        ) from None
    if v.size != len(g):
        raise InvalidArgumentError(
            f"importance callable returned {v.size} scores for group {g.id} of {len(g)} "
            f"channels; return one score per channel of the group"
        )
    bad = np.flatnonzero(np.isnan(v))
    if bad.size:
        raise InvalidArgumentError(
            f"importance callable {name} returned NaN scores for {bad.size} of the {len(g)} channels of "
            f"group {g.id} ({where}), channel {int(bad[0])} first; NaN cannot be ranked. Return finite "
            f"scores (low scores are pruned first; np.nan_to_num(scores) replaces NaN by 0)"
        )
    return v


def unit_scores(
    graph: ChannelGraph,
    model: nn.Module,
    importance: str | Callable[..., Any],
    seed: int = 0,
    cache: ScoreCache | None = None,
) -> np.ndarray:
    """Score every unit of ``graph`` (NaN for labels that are not units).

    ``cache``: keeps the weight norms of ``"l1"``/``"l2"`` (and ``"bn_scale"``'s fallback)
    between calls while the weights are unchanged (:class:`~slimprune._score_cache.ScoreCache`).

    Raises:
        InvalidArgumentError: unknown criterion name, or a callable returning the wrong length.
    """
    if callable(importance):
        out = np.full(graph.num_units, np.nan)
        for g in graph.groups:
            out[g.units] = _callable_scores(importance, model, graph, g)
        return out
    if importance == "random":
        rng = np.random.default_rng(seed)
        return rng.random(graph.num_units)
    if importance == "flops":
        return unit_macs(graph, model)
    if importance in ("l1", "l2"):
        return _group_normalised(graph, _norm_scores(graph, model, 1 if importance == "l1" else 2, cache=cache))
    if importance == "bn_scale":
        gamma = unit_gamma_max(graph, model)
        has = np.isfinite(gamma)
        out = np.where(has, gamma, np.nan)
        in_groups = np.zeros(graph.num_units, bool)
        for g in graph.groups:
            in_groups[g.units] = True
        need = in_groups & ~has
        if need.any():
            fallback = _group_normalised(graph, _norm_scores(graph, model, 2, need, cache=cache))
            ref = np.median(gamma[has & in_groups]) if (has & in_groups).any() else 1.0
            fb = fallback[need]
            med = np.median(fb) if fb.size else 1.0
            out[need] = fb * (ref / med if med > 0 else 1.0)
        return out
    raise InvalidArgumentError(
        f"unknown importance {importance!r}; choose one of {', '.join(map(repr, IMPORTANCE))} "
        f"or pass a callable fn(model, graph, group) -> scores"
    )


def unit_macs(graph: ChannelGraph, model: nn.Module) -> np.ndarray:
    """Per unit, the multiply-accumulates per sample that removing it alone saves (NaN off groups).

    Every unit of a group spans the same layers, so one removal per group gives the group's
    value; the counts are the graph's own cost model (the one ``target="flops"`` uses).
    """
    predictor = Predictor(graph, model)
    removed = np.zeros(graph.num_units, dtype=bool)
    whole = predictor.macs(removed)
    out = np.full(graph.num_units, np.nan)
    for g in graph.groups:
        removed[g.units[0]] = True
        out[g.units] = float(whole - predictor.macs(removed))
        removed[g.units[0]] = False
    return out


def tiebreak_scores(graph: ChannelGraph, model: nn.Module, cache: ScoreCache | None = None) -> np.ndarray:
    """Second ranking key: the group-normalised L2 norm of the producer rows.

    Equal scores are common (every γ is 1 in a freshly initialised network); ranking them
    by unit id would strip the first layers bare, so ties go to the weaker filters instead.
    """
    return _group_normalised(graph, _norm_scores(graph, model, 2, roles=("out",), cache=cache))


# ------------------------------------------------------------------ first-order Taylor
Loss = Callable[[Any, Any], torch.Tensor]


def _default_loss(output: Any, batch: Any) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise InvalidArgumentError(
            f"taylor_importance needs a loss: the model returned {type(output).__name__} without a "
            f"'loss' (a Hugging Face model computes one when the batch holds labels=...); pass "
            f"loss=fn(output, batch) -> scalar tensor"
        )
    return loss


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def taylor_importance(batches: Iterable[Any], loss: Loss | None = None) -> Callable[..., np.ndarray]:
    """A data-aware importance for ``plan(importance=...)``: first-order Taylor.

    The gradient of ``loss(model(batch), batch)`` is summed over ``batches`` (a few: each is
    a tensor, a tuple of positional inputs or a dict of keyword inputs); a unit scores
    Σ |w · ∂L/∂w| over every weight it owns (its producer rows, consumer columns, norm
    parameters), divided by its group's mean so that groups compete in one ranking.
    Without ``loss`` the model's own ``output.loss`` is used (Hugging Face models with
    ``labels=`` in the batch). The model's parameters, their ``.grad`` and its train/eval
    flags are left as they were; gradients are computed once, on the first group scored.

    Example:
        >>> batches = [{"input_ids": ids, "labels": ids} for ids in data[:4]]
        >>> plan = slimprune.plan(model, 0.3, example_inputs={"input_ids": ids},
        ...                       importance=slimprune.taylor_importance(batches))
    """
    batches = list(batches)
    if not batches:
        raise InvalidArgumentError("taylor_importance needs at least one batch to compute gradients on")
    fn = loss or _default_loss
    cache: dict[int, np.ndarray] = {}

    def scores(model: nn.Module, graph: ChannelGraph, group: Any) -> np.ndarray:
        key = id(graph)
        if key not in cache:
            cache.clear()
            cache[key] = _group_normalised(graph, _taylor_units(model, graph, batches, fn))
        return cache[key][group.units]

    scores.__name__ = "taylor_importance"
    return scores


def _taylor_units(model: nn.Module, graph: ChannelGraph, batches: list[Any], fn: Loss) -> np.ndarray:
    params = dict(model.named_parameters())
    saved = {n: (p.grad, p.requires_grad) for n, p in params.items()}
    acc = np.zeros(graph.num_units, dtype=np.float64)
    try:
        for p in params.values():
            p.grad = None
            p.requires_grad_(True)
        with kept_modes(model), torch.enable_grad():
            for batch in batches:
                value = fn(_call(model, batch), batch)
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise InvalidArgumentError(
                        f"the Taylor loss returned {type(value).__name__} "
                        f"{tuple(getattr(value, 'shape', ()))}; return a scalar tensor")
                value.backward()
        with torch.no_grad():
            for s in graph.slices:
                name = f"{s.module}.{s.param}" if s.module else s.param
                p = params.get(name)
                if p is None or p.grad is None:
                    continue
                np.add.at(acc, s.units, _per_index((p * p.grad).abs(), s.dim, 1))
    finally:
        for n, p in params.items():
            p.grad, req = saved[n]
            p.requires_grad_(req)
    return acc
