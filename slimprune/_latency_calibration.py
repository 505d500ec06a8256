"""A latency plan checked on the device: the pruned candidate is built and timed whole.

The cost table predicts a model's latency from its layers and ops, each timed alone; a
pruned model can run faster or slower than that sum says (in the model, inputs and weights
come from memory rather than cache, and narrow layers change kernels). When ``plan``
profiles its own table, it builds the candidate the table chose, times its deployed form
whole, interleaved with the original's (pair by pair, so a load change on a shared machine
moves both alike), and when the measured kept fraction misses the one asked for
by more than :data:`TOLERANCE`, chooses again with the table's budget scaled by measured /
predicted (at most :data:`ROUNDS` times more). The plan returned is the candidate whose
measured fraction came closest, and it carries those measured latencies, with the table's
prediction in its notes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import InfeasiblePlanError

if TYPE_CHECKING:
    from ._analysis import Analysis
    from ._options import PlanOptions
    from ._plan import PruningPlan

__all__ = ["LatencyState", "calibrated", "TOLERANCE", "ROUNDS", "PAIRS"]

TOLERANCE = 0.03  # of the original latency: a candidate this close to the budget is taken
ROUNDS = 2  # re-plans after the first candidate
PAIRS = 3  # (original, candidate) timings per candidate, interleaved


@dataclass
class LatencyState:
    """What the latency selection carries across the rounds of one plan: the cost table (refined
    as it goes), the calibration (measured / predicted kept fraction of the last candidate)
    and whether the table may be refined (not a table the user passed)."""

    table: Any = None
    calibration: float = 1.0
    refinable: bool = True


PlanGraph = Callable[..., "tuple[PruningPlan, list[str]]"]
ApplyFn = Callable[[nn.Module, "PruningPlan"], nn.Module]


def calibrated(analysis: Analysis, options: PlanOptions, plan_graph: PlanGraph,
               apply_fn: ApplyFn) -> tuple[PruningPlan, list[str]]:
    """The latency plan of ``analysis`` whose kept fraction was measured on the device (see the module)."""
    from ._trace import normalize_inputs
    from .latency import check_device, deployed_call, time_ms

    dev = check_device(options.device)
    threads = torch.get_num_threads()
    inputs = normalize_inputs(analysis.example_inputs)

    run_original = deployed_call(analysis.model, inputs, dev)
    originals: list[float] = []

    def kept_fraction(candidate: nn.Module) -> float:
        # Interleaved with the original, pair by pair: a load change on a shared machine
        # moves both times of a pair alike, and the median of the pairs' ratios ignores it.
        run = deployed_call(candidate, inputs, dev)
        ratios = []
        for _ in range(PAIRS):
            before = time_ms(run_original, dev, threads, 0.2)
            ratios.append(time_ms(run, dev, threads, 0.2) / before)
            originals.append(before)
        return float(np.median(ratios))

    goal = 1.0 - float(options.ratio)
    state = LatencyState()
    plan_, notes = plan_graph(analysis, options, state)
    tried: list[tuple[float, PruningPlan, list[str], float]] = []
    for _ in range(ROUNDS + 1):
        assert plan_.latency_before_ms is not None and plan_.latency_after_ms is not None
        predicted = plan_.latency_after_ms / plan_.latency_before_ms
        kept = kept_fraction(apply_fn(analysis.model, plan_))
        tried.append((kept, plan_, notes, predicted))
        if abs(kept - goal) <= TOLERANCE or predicted <= 0:
            break
        # One noisy timing must not swing the budget wildly: a step moves it at most 2x.
        state.calibration *= min(2.0, max(0.5, kept / predicted))
        try:
            plan_, notes = plan_graph(analysis, options, state)
        except InfeasiblePlanError:
            break  # the table's floor: keep the closest candidate measured so far
    kept, plan_, notes, predicted = min(tried, key=lambda t: abs(t[0] - goal))
    original = float(np.median(originals))
    note = (f"measured latency {original:.3f} ms -> {kept * original:.3f} ms ({kept:.1%} kept; {dev}, {threads} "
            f"thread(s), deployed form) on the pruned candidate while planning ({len(tried)} candidate(s) timed; "
            f"the cost table predicted {predicted:.1%})")
    return replace(plan_, latency_before_ms=original, latency_after_ms=kept * original,
                   notes=(*plan_.notes[:-1], note) if plan_.notes else (note,)), notes
