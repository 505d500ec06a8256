"""Composing a plan for a model fx cannot trace whole from plans of its regions.

Each traceable region (see :mod:`slimprune._regions`) is planned on its own analysis with
the options made relative to it and its boundary channels kept; the region plans are
then merged into one plan whose names are those of the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ._analysis import Analysis
from ._options import PlanOptions
from ._plan import PruningPlan, fingerprint

__all__ = ["plan_regions"]

PlanFn = Callable[[Analysis, PlanOptions], PruningPlan]


def plan_regions(analysis: Analysis, options: PlanOptions, plan_one: PlanFn) -> PruningPlan:
    """Plan every region of ``analysis`` with ``plan_one`` and compose the plans.

    Raises the analysis's trace error when no region has anything to prune: then the
    error is the honest answer.
    """
    subplans: list[tuple[str, PruningPlan]] = []
    for r in analysis.regions:
        if any(isinstance(p, str) and (p == r.path or r.path.startswith(p + ".") or p == "") for p in options.protect):
            continue
        if not r.plannable:
            continue  # one layer (every channel on the region's boundary), or nothing to prune
        sub = analysis.region(r)
        sp = plan_one(sub, options.within(r.path, r.inputs))
        if sp.prunable_channels:
            subplans.append((r.path, sp))
    if not subplans:
        raise analysis.trace_error
    return _compose(analysis, subplans, options)


def _compose(analysis: Analysis, subplans: list[tuple[str, PruningPlan]], options: PlanOptions) -> PruningPlan:
    """One plan of the whole model from its regions' plans (names made absolute)."""
    model, regions, unreached, error = analysis.model, analysis.regions, analysis.unreached, analysis.trace_error
    example_inputs = analysis.example_inputs
    def full(path: str, name: str) -> str:
        return f"{path}.{name}" if name else path

    slices, groups, folds, barriers, notes = [], [], [], [], []
    flops_before = flops_after = 0
    for path, sp in subplans:
        slices += [replace(s, module=full(path, s.module)) for s in sp.slices]
        groups += [replace(g, id=len(groups) + i, members=tuple(full(path, m) for m in g.members))
                   for i, g in enumerate(sp.groups)]
        folds += [replace(f, module=full(path, f.module)) for f in sp.folds]
        barriers += [f"{path}: {b}" for b in sp.barriers]
        notes += [f"{path}: {n}" for n in sp.notes]
        flops_before += sp.flops_before
        flops_after += sp.flops_after
    reached = ", ".join(p for p, _ in subplans) or "none"
    cause = error.__cause__ if error.__cause__ is not None else error
    notes.insert(0, f"fx cannot trace {type(model).__name__} whole ({type(cause).__name__}: {str(cause)[:100]}); "
                    f"pruned inside the traceable regions [{reached}] with their boundary channels kept; "
                    f"FLOPs are those of the pruned regions")
    idle = [r.path for r in regions if r.path not in dict(subplans)]
    if idle:
        notes.append(f"regions with nothing prunable inside (all channels on their boundary): {', '.join(idle)}")
    notes += [f"not reached: {u}" for u in unreached]
    before = sum(p.numel() for p in model.parameters())
    after = before - sum(sp.params_before - sp.params_after for _, sp in subplans)
    recorded = options.record()
    recorded.update(importance=options.importance if isinstance(options.importance, str) else "callable",
                    protect=[], regions=True)
    shapes = tuple(tuple(x.shape) for x in (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,))
                   if isinstance(x, torch.Tensor))
    return PruningPlan(
        model=type(model).__name__, fingerprint=fingerprint(model), input_shapes=shapes,
        options=tuple(sorted(recorded.items())), groups=tuple(groups), slices=tuple(slices), folds=tuple(folds),
        edits=(), opaque=(), params_before=before, params_after=after, flops_before=flops_before,
        flops_after=flops_after, barriers=tuple(barriers), notes=tuple(notes), regions=tuple(subplans),
    )
