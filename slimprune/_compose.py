"""Composing a plan for a model fx cannot trace whole from plans of its regions.

Each traceable region (see :mod:`slimprune._regions`) is planned on its own analysis with
the options made relative to it and its boundary channels kept; the region plans are
then merged into one plan whose names are those of the whole model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

import torch

from ._analysis import Analysis
from ._options import PlanOptions, protects_whole
from ._plan import PruningPlan, fingerprint
from .errors import RegionFallbackWarning, user_stacklevel

__all__ = ["plan_regions"]

PlanFn = Callable[[Analysis, PlanOptions], PruningPlan]


def plan_regions(analysis: Analysis, options: PlanOptions, plan_one: PlanFn) -> PruningPlan:
    """Plan every region of ``analysis`` with ``plan_one`` and compose the plans.

    Raises the analysis's trace error when no region has anything to prune: then the
    error is the honest answer.
    """
    subplans: list[tuple[str, PruningPlan]] = []
    for r in analysis.regions:
        if protects_whole(options.protect, r.path):
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
    whole = _whole_flops(model, example_inputs)
    scope = ("params and FLOPs are the whole model's (one forward each; each region's own in plan.regions)"
             if whole is not None
             else "params are the whole model's, FLOPs those of the pruned regions (the whole model did not run)")
    cause = error.__cause__ if error.__cause__ is not None else error
    notes.insert(0, f"fx cannot trace {type(model).__name__} whole ({type(cause).__name__}: {str(cause)[:100]}); "
                    f"pruned inside the traceable regions [{reached}] with their boundary channels kept; "
                    f"{scope}")
    idle = [r.path for r in regions if r.path not in dict(subplans)]
    if idle:
        notes.append(f"regions with nothing prunable inside (all channels on their boundary): {', '.join(idle)}")
    notes += [f"not reached: {u}" for u in unreached]
    if analysis.warn:
        warnings.warn(
            f"slimprune: {notes[0]}. Channels at those boundaries and outside the regions are not pruned. "
            f"Fix: make the failing module traceable, or mark it opaque=[...] so the rest traces whole "
            f"(plan.notes lists the regions and what was not reached).", RegionFallbackWarning, stacklevel=user_stacklevel())
    before = sum(p.numel() for p in model.parameters())
    after = before - sum(sp.params_before - sp.params_after for _, sp in subplans)
    recorded = options.record()
    recorded.update(importance=options.importance if isinstance(options.importance, str) else "callable",
                    protect=[], regions=True)
    shapes = tuple(tuple(x.shape) for x in (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,))
                   if isinstance(x, torch.Tensor))
    plan = PruningPlan(
        model=type(model).__name__, fingerprint=fingerprint(model), input_shapes=shapes,
        options=tuple(sorted(recorded.items())), groups=tuple(groups), slices=tuple(slices), folds=tuple(folds),
        edits=(), opaque=(), params_before=before, params_after=after, flops_before=flops_before,
        flops_after=flops_after, barriers=tuple(barriers), notes=tuple(notes), regions=tuple(subplans),
    )
    if whole is None:
        return plan
    # The regions' predicted FLOPs stay in plan.regions; the plan reports the whole model's,
    # counted on one forward of the model and of the pruned model it gives.
    from ._rewrite import apply_plan

    try:
        pruned = _whole_flops(apply_plan(model, plan), example_inputs)
    except Exception:  # noqa: BLE001 - apply() reports its own error; the plan keeps the regions' figures
        return plan
    if pruned is None:
        return plan
    return replace(plan, flops_before=whole, flops_after=pruned)


def _whole_flops(model: torch.nn.Module, example_inputs: object) -> int | None:
    """FLOPs of one eval-mode forward of the whole model (None when it does not run on the inputs).

    Every module's training flag is restored afterwards, and nothing else changes (no_grad, eval).
    """
    from .measure import _as_input_tuple, _count_flops

    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return int(_count_flops(model, _as_input_tuple(example_inputs))[0])
    except Exception:  # noqa: BLE001 - then the regions' figures are reported, and said to be
        return None
    finally:
        for m, training in modes:
            m.training = training
