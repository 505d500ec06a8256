"""The solver: which units to remove, under the user's constraints.

Pure functions of the channel graph and the scores. Three ways to choose:

* ``ratio``: a global ranking; the lowest-scoring ``ratio`` of all prunable channels go;
* ``target="params"|"flops"``: the shortest prefix of that ranking that removes at least
  ``ratio`` of the parameters (or FLOPs);
* ``threshold``: every channel a caller marks removable (near-zero scaling factors that
  make it constant) goes.

Constraints act per channel group: ``min_channels`` stay in every group, at most
``max_ratio`` of a group goes, and the number kept is a multiple of ``round_to`` (or the
whole group).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from torch import nn

from ._bisect import first_true
from ._graph import ChannelGraph
from .errors import InfeasiblePlanError, InvalidArgumentError

__all__ = ["Constraints", "group_caps", "select_ranked", "select_target", "apply_rounding", "reach_at_least",
           "Predictor"]

T = TypeVar("T")


@dataclass(frozen=True)
class Constraints:
    """What the solver must respect. ``max_ratio`` may map module names to fractions."""

    min_channels: int = 1
    round_to: int = 1
    max_ratio: float | Mapping[str, float] = 1.0
    protected_units: frozenset[int] = field(default_factory=frozenset)
    allow_inexact: bool = True
    # Single units that must stay while the rest of their group may go (channels whose
    # removal no folded bias could make exact); protected_units protects whole groups.
    kept_units: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise InvalidArgumentError(f"min_channels must be an integer >= 1 (a layer never loses all its channels), got {self.min_channels!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise InvalidArgumentError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        values = self.max_ratio.values() if isinstance(self.max_ratio, Mapping) else [self.max_ratio]
        for v in values:
            if not 0.0 <= float(v) <= 1.0:
                raise InvalidArgumentError(f"max_ratio values must lie in [0, 1], got {v!r}")


def group_caps(graph: ChannelGraph, c: Constraints) -> np.ndarray:
    """The most units each group may lose (0 for protected or too narrow groups)."""
    caps = np.zeros(len(graph.groups), dtype=np.int64)
    per_module = c.max_ratio if isinstance(c.max_ratio, Mapping) else {}
    default = 1.0 if isinstance(c.max_ratio, Mapping) else float(c.max_ratio)
    widest = max((len(g) for g in graph.groups), default=0)
    if graph.groups and c.min_channels > widest:
        raise InfeasiblePlanError(
            f"min_channels={c.min_channels} is above the width of every prunable channel group "
            f"(the widest has {widest} channels), so nothing can be pruned. Lower min_channels."
        )
    for g in graph.groups:
        if any(int(u) in c.protected_units for u in g.units[:1]) or (not g.exact and not c.allow_inexact):
            continue
        r = default
        for m in g.members:
            r = min(r, float(per_module.get(graph.slices[m].module, default)))
        cap = min(len(g) - c.min_channels, math.floor(r * len(g) + 1e-9))
        caps[g.id] = max(cap, 0)
    return caps


def _eligible_order(graph: ChannelGraph, scores: np.ndarray, caps: np.ndarray,
                    tiebreak: np.ndarray | None = None, kept_units: frozenset[int] = frozenset()) -> np.ndarray:
    """Units that may go, lowest score first (each group contributes its ``cap`` lowest)."""
    tb = tiebreak if tiebreak is not None else np.zeros_like(scores)
    chosen = []
    for g in graph.groups:
        if caps[g.id] <= 0:
            continue
        units = g.units
        if kept_units:
            units = units[~np.isin(units, np.fromiter(kept_units, np.int64))]
        order = np.lexsort((units, tb[units], scores[units]))
        chosen.append(units[order[: caps[g.id]]])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    units = np.concatenate(chosen)
    return units[np.lexsort((units, tb[units], scores[units]))]


def apply_rounding(graph: ChannelGraph, removed: np.ndarray, scores: np.ndarray, round_to: int) -> np.ndarray:
    """Give back the best removed units of each group until its kept count is a multiple of ``round_to``."""
    if round_to <= 1:
        return removed
    removed = removed.copy()
    for g in graph.groups:
        r = removed[g.units]
        n_rem = int(r.sum())
        if not n_rem:
            continue
        kept = len(g) - n_rem
        want = min(len(g), math.ceil(kept / round_to) * round_to)
        give = want - kept
        if give > 0:
            cand = g.units[r]
            back = cand[np.lexsort((-cand, -scores[cand]))[:give]]
            removed[back] = False
    return removed


def select_ranked(graph: ChannelGraph, scores: np.ndarray, ratio: float, c: Constraints,
                  tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Remove the ``ratio`` lowest-scoring prunable units globally. Returns a mask over labels."""
    caps = group_caps(graph, c)
    prunable = sum(len(g) for g in graph.groups if not any(int(u) in c.protected_units for u in g.units[:1])
                   and (g.exact or c.allow_inexact))
    k = math.floor(ratio * prunable + 1e-9)
    order = _eligible_order(graph, scores, caps, tiebreak, c.kept_units)
    if k > order.size:
        raise InfeasiblePlanError(
            f"ratio={ratio} asks for {k} of {prunable} prunable channels, but the constraints "
            f"(min_channels={c.min_channels}, max_ratio={c.max_ratio!r}) allow at most {order.size} "
            f"({order.size / max(prunable, 1):.1%}). Lower the ratio or relax the constraints."
        )
    removed = np.zeros(graph.num_units, dtype=bool)
    removed[order[:k]] = True
    return apply_rounding(graph, removed, scores, c.round_to)


def select_target(graph: ChannelGraph, scores: np.ndarray, fraction: float, c: Constraints,
                  predictor: "Predictor", kind: str, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Shortest prefix of the ranking that removes at least ``fraction`` of params or FLOPs."""
    caps = group_caps(graph, c)
    order = _eligible_order(graph, scores, caps, tiebreak, c.kept_units)
    before = predictor.params(np.zeros(graph.num_units, bool)) if kind == "params" else predictor.macs(np.zeros(graph.num_units, bool))

    def removed_for(k: int) -> np.ndarray:
        m = np.zeros(graph.num_units, dtype=bool)
        m[order[:k]] = True
        return apply_rounding(graph, m, scores, c.round_to)

    def saved(k: int) -> float:
        m = removed_for(k)
        after = predictor.params(m) if kind == "params" else predictor.macs(m)
        return 1.0 - after / before if before else 0.0

    if saved(order.size) + 1e-12 < fraction:
        raise InfeasiblePlanError(
            f"target={'params' if kind == 'params' else 'flops'!r} ratio={fraction} cannot be reached: "
            f"removing every channel the constraints allow saves only {saved(order.size):.1%} of the "
            f"{'parameters' if kind == 'params' else 'FLOPs'}. Lower the ratio or relax "
            f"min_channels/max_ratio/round_to/protect."
        )
    return removed_for(first_true(0, order.size, lambda k: saved(k) + 1e-12 >= fraction))


def reach_at_least(fraction: float, first: T, attempt: Callable[[float], T], achieved: Callable[[T], float],
                   explain: Callable[[float], str], rounds: int = 8) -> T:
    """Ask for a little more until a selection really saves at least ``fraction``.

    ``select_target`` meets its goal as the graph predicts it; what the plan finally saves
    can be less (folding gives a bias-less consumer a bias). Starting from ``first``, each
    round asks ``attempt`` for the goal raised by the shortfall (at least a small step, so
    rounds cannot stall on a hair) until ``achieved`` reaches ``fraction``, for at most
    ``rounds`` rounds; a goal the constraints cannot meet ends the search.

    Raises:
        InfeasiblePlanError: ``explain(achieved)`` when the fraction is still not reached.
    """
    candidate, goal = first, fraction
    for _ in range(rounds):
        got = achieved(candidate)
        if got + 1e-12 >= fraction:
            return candidate
        goal += max(fraction - got, 1e-4)
        try:
            candidate = attempt(goal)
        except InfeasiblePlanError:
            break
    got = achieved(candidate)
    if got + 1e-12 < fraction:
        raise InfeasiblePlanError(explain(got))
    return candidate


def _own_parameters(m: nn.Module) -> list[tuple[str, Any]]:
    """``list(m.named_parameters(recurse=False))``, read from ``m._parameters`` directly where
    the class keeps nn.Module's ``named_parameters`` (each tensor once, Nones left out)."""
    if type(m).named_parameters is not nn.Module.named_parameters:
        return list(m.named_parameters(recurse=False))
    out, seen = [], set()
    for name, p in m._parameters.items():
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


class Predictor:
    """Parameter and MAC counts of the pruned model, from the graph alone."""

    def __init__(self, graph: ChannelGraph, model: nn.Module) -> None:
        self.graph = graph
        self.params_by_key: dict[tuple[str, str], tuple[int, ...]] = {}
        seen: set[int] = set()
        self.fixed = 0
        sliced = {(s.module, s.param) for s in graph.slices}
        self.param_shapes: dict[tuple[str, str], tuple[int, ...]] = {}
        for mname, m in model.named_modules():
            for pname, p in _own_parameters(m):
                self.param_shapes[(mname, pname)] = tuple(p.shape)
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if (mname, pname) in sliced:
                    self.params_by_key[(mname, pname)] = tuple(p.shape)
                else:
                    self.fixed += p.numel()
        # The slices of parameters, their units laid end to end: one pass counts every kept size.
        counted = [(i, s) for i, s in enumerate(graph.slices) if (s.module, s.param) in self.params_by_key]
        self._counted = [((s.module, s.param), s.dim) for _, s in counted]
        self._units = np.concatenate([s.units for _, s in counted]) if counted else np.zeros(0, np.int64)
        sizes = np.array([s.units.size for _, s in counted], dtype=np.int64)
        self._ends = np.cumsum(sizes)
        self._starts = self._ends - sizes

    def _shapes(self, removed: np.ndarray) -> dict[tuple[str, str], list[int]]:
        """The pruned shape of every sliced parameter: each sliced dim counts its kept units."""
        running = np.concatenate([[0], np.cumsum(~removed[self._units], dtype=np.int64)])
        kept = (running[self._ends] - running[self._starts]).tolist()
        shapes: dict[tuple[str, str], list[int]] = {}
        for (key, dim), n in zip(self._counted, kept):
            shapes.setdefault(key, list(self.params_by_key[key]))[dim] = n
        return shapes

    def params(self, removed: np.ndarray, extra: int = 0) -> int:
        shapes = self._shapes(removed)
        total = self.fixed + extra
        for key, shp in self.params_by_key.items():
            total += math.prod(shapes.get(key, shp))
        return total

    def macs(self, removed: np.ndarray) -> int:
        shapes = self._shapes(removed)
        total = 0.0
        for c in self.graph.costs:
            shp = shapes.get((c.module, c.param)) or self.param_shapes.get((c.module, c.param))
            if shp:
                total += (math.prod(shp) if c.dim is None else shp[c.dim]) * c.factor
        return round(total)
