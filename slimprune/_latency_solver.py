"""The latency-budgeted selection: keep the most importance within a latency budget.

A greedy on importance lost per millisecond saved, over staircase steps. Each group
shrinks only to widths that make it cheaper: from its current width to the next lower
multiple of ``step`` (the cost table's kernel block, or ``round_to`` when that is given),
so the solver never keeps 17 channels where 16 cost less. At every round the group whose
next step saves the most time per unit of importance lost takes it, until the predicted
latency is within the budget. A budget below the floor (every group at the narrowest the
constraints allow) raises :class:`InfeasiblePlanError` naming the floor and the layers
that set it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import InfeasiblePlanError
from .latency import CostTable

if TYPE_CHECKING:
    from ._graph import ChannelGraph
    from ._solver import Constraints

__all__ = ["select_latency", "next_width", "latency_floor", "select_for_graph"]


def next_width(kept: int, lowest: int, step: int, round_to: int) -> int | None:
    """The next narrower width a group may take: a multiple of ``step`` (and ``round_to``) below ``kept``, or ``lowest``."""
    unit = step * round_to // math.gcd(step, round_to)
    w = ((kept - 1) // unit) * unit
    w = max(w, lowest)
    if w >= kept:
        return None
    if w != lowest and w % unit:
        return None
    return w


def _lowest(width: int, cap: int, round_to: int) -> int:
    """The narrowest kept width allowed: width - cap, rounded up to ``round_to`` (or the whole group)."""
    low = width - cap
    if round_to > 1:
        low = min(width, int(math.ceil(low / round_to)) * round_to)
    return low


def latency_floor(table: CostTable, widths: Mapping[int, int], caps: Mapping[int, int],
                  round_to: int = 1) -> tuple[float, dict[int, int]]:
    """The predicted latency with every group at its narrowest, and those widths."""
    kept = {g: _lowest(w, int(caps.get(g, 0)), round_to) for g, w in widths.items()}
    return table.predict(kept), kept


def select_latency(units: Sequence[np.ndarray], group_ids: Sequence[int], scores: np.ndarray,
                   caps: Sequence[int], table: CostTable, budget_ms: float, round_to: int = 1,
                   step: int | None = None, num_units: int | None = None) -> np.ndarray:
    """Units to remove so the table predicts at most ``budget_ms``, losing the least importance.

    Args:
        units: each group's unit ids; ``group_ids`` its id in ``table``; ``caps`` the most
            units it may lose.
        scores: importance per unit id (higher stays).
        round_to: kept widths are multiples of it (or the whole group).
        step: the staircase step (default ``table.stair``).

    Returns:
        A boolean mask over unit ids (``num_units`` long, default ``scores.size``).
    """
    step = table.stair if step is None else step
    n = scores.size if num_units is None else num_units
    widths = {gid: len(u) for gid, u in zip(group_ids, units)}
    capmap = {gid: int(c) for gid, c in zip(group_ids, caps)}
    floor, floor_kept = latency_floor(table, widths, capmap, round_to)
    if floor > budget_ms * (1 + 1e-9):
        setters = sorted(table.layers, key=lambda l: -l.ms(
            floor_kept.get(l.out_group, l.out_width) if l.out_group is not None else l.out_width,
            floor_kept.get(l.in_group, l.in_width) if l.in_group is not None else l.in_width, table.stair))[:5]
        names = ", ".join(f"{l.module} ({l.ms(floor_kept.get(l.out_group, l.out_width), floor_kept.get(l.in_group, l.in_width), table.stair):.3g} ms)"
                          for l in setters)
        raise InfeasiblePlanError(
            f"a latency budget of {budget_ms:.4g} ms is below the floor of {floor:.4g} ms (of {table.full():.4g} ms) "
            f"that removing every channel the constraints allow reaches; {table.fixed_ms():.3g} ms are in no "
            f"prunable channel group and the slowest layers at the floor are {names}. Ask for a larger fraction of the "
            f"latency or relax min_channels/max_ratio/protect.")
    order = {gid: u[np.lexsort((u, scores[u]))] for gid, u in zip(group_ids, units)}
    kept = dict(widths)
    lowest = {gid: _lowest(widths[gid], capmap[gid], round_to) for gid in widths}
    layers_of = {gid: table.layers_of(gid) for gid in widths}

    ops_of = {gid: table.ops_of(gid) for gid in widths}

    def local(gid: int, kept_map: Mapping[int, int]) -> float:
        return table.parts_ms(layers_of[gid], ops_of[gid], kept_map)

    def candidate(gid: int) -> tuple[float, float, int] | None:
        w = next_width(kept[gid], lowest[gid], step, round_to)
        if w is None:
            return None
        now = local(gid, kept)
        trial = dict(kept)
        trial[gid] = w
        saved = now - local(gid, trial)
        # Importance lost: the scores of the units between the two widths (lowest first).
        gone = order[gid][widths[gid] - kept[gid]: widths[gid] - w]
        lost = float(np.sum(np.maximum(scores[gone], 0.0)))
        return saved, lost, w

    total = table.predict(kept)
    cands = {gid: candidate(gid) for gid in widths}
    while total > budget_ms * (1 + 1e-9):
        best, best_key = None, None
        for gid, c in cands.items():
            if c is None:
                continue
            saved, lost, _ = c
            if saved <= 0:
                key = (0, -lost, -gid)  # free steps of no saving come last, least importance first
            else:
                key = (1, saved / (lost + 1e-12), -gid)
            if best_key is None or key > best_key:
                best, best_key = gid, key
        if best is None:
            break  # unreachable: the floor is within budget
        kept[best] = cands[best][2]  # type: ignore[index]
        total = table.predict(kept)
        touched = {best}
        for l in layers_of[best]:
            touched.update(g for g in (l.out_group, l.in_group) if g is not None and g in widths)
        for o in ops_of[best]:
            touched.update(g for g in o.groups if g in widths)
        for gid in touched:
            cands[gid] = candidate(gid)
    removed = np.zeros(n, dtype=bool)
    for gid in widths:
        removed[order[gid][: widths[gid] - kept[gid]]] = True
    return removed


def select_for_graph(graph: "ChannelGraph", scores: np.ndarray, fraction: float, constraints: "Constraints",
                     table: CostTable, auto_round: bool, calibration: float = 1.0,
                     ) -> tuple[np.ndarray, str, tuple[float, float]]:
    """Units of ``graph`` to remove so the predicted latency drops by ``fraction``, a note saying so,
    and the predicted milliseconds before and after.

    ``auto_round`` (``round_to="auto"``) keeps every group at a multiple of the table's
    staircase step (or whole). ``calibration``: measured / predicted kept fraction of an earlier
    candidate (see :mod:`._latency_calibration`); the table must then predict ``calibration``
    times less, so the measured latency lands on the budget.
    """
    from ._solver import group_caps

    caps = group_caps(graph, constraints)
    kept_units = np.fromiter(constraints.kept_units, np.int64) if constraints.kept_units else np.zeros(0, np.int64)
    s = scores.astype(np.float64).copy()
    s[kept_units] = np.inf  # units that must stay go last, and never within the cap below
    units, ids, capl = [], [], []
    for g in graph.groups:
        must = int(np.isin(g.units, kept_units).sum()) if kept_units.size else 0
        units.append(g.units)
        ids.append(g.id)
        capl.append(max(0, min(int(caps[g.id]), len(g) - must)))
    round_to = table.stair if auto_round else constraints.round_to
    before = table.full()
    budget = (1.0 - fraction) * before / max(calibration, 1e-6)
    removed = select_latency(units, ids, s, capl, table, budget, round_to=round_to, num_units=graph.num_units)
    kept = {g.id: int((~removed[g.units]).sum()) for g in graph.groups}
    after = table.predict(kept)
    note = (f"predicted latency {before:.3f} ms -> {after:.3f} ms ({after / before:.1%}; {table.key.device}, "
            f"{table.key.threads} thread(s), deployed form); slimprune.measure.measure(small, x, deployed=True) "
            f"gives the measured one")
    return removed, note, (before, after)
