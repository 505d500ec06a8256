"""Stage 3's pruning policy: which channels of the sparse model go.

Every plan of a model is made on one :func:`slimprune.analyze` result (:func:`analyze`):
the prune stage's tries, the prune-ratio sweep and the report's |γ| statistics read the
same trace, and ``slimprune.plan(analysis, ...)`` never traces again. A ``target="params"``
plan already removes at least the fraction asked once the biases that folding adds are
counted (the engine asks for a little more itself), so nothing here retries for that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

import slimprune
from slimprune.sparsity import scale_per_cost

from .config import PipelineConfig, TrainConfig

__all__ = [
    "analyze",
    "example_batch",
    "plan_fraction",
    "prune_plan",
    "apply_plan",
    "effective_threshold",
    "removed_params",
    "removed_flops",
    "prunable_gamma_stats",
]

# With a FLOPs target, the fraction of the FLOPs asked is raised by this step until the plan
# (ranking by |γ| per FLOP) also removes ``target_params`` of the parameters.
_FLOPS_STEP = 0.02
_FLOPS_TRIES = 10
_MAX_FRACTION = 0.99
_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def example_batch(config: TrainConfig) -> tuple[torch.Tensor]:
    """A fixed random batch of two training-size images, for tracing and probing."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, config.image_size, config.image_size, generator=g),)


def analyze(model: nn.Module, config: TrainConfig) -> slimprune.Analysis:
    """The one analysis every plan of ``model`` (on the CPU, in eval mode) is made on.

    The analysis refers to ``model`` (it is not copied): plans read its current weights,
    and a change of its structure or mode since is refused by ``slimprune.plan``.
    """
    return slimprune.analyze(model, example_inputs=example_batch(config))


def plan_fraction(
    analysis: slimprune.Analysis, fraction: float, *, target: str = "params", round_to: int = 1
) -> slimprune.PruningPlan:
    """Remove at least ``fraction`` of the parameters (``target="params"``, smallest |γ| first)
    or of the FLOPs (``target="flops"``, smallest |γ| per FLOP first: by |γ| alone the cheap
    low-resolution channels go first and the target is reached only by removing far more of
    them, docs/eagleeye.md)."""
    importance = scale_per_cost("flops") if target == "flops" else "bn_scale"
    return slimprune.plan(analysis, fraction, target=target, importance=importance, round_to=round_to)


def removed_flops(plan: slimprune.PruningPlan) -> float:
    """The fraction of the FLOPs (at the analysis' input size) a plan removes."""
    return 1 - plan.flops_after / plan.flops_before


def removed_params(plan: slimprune.PruningPlan) -> float:
    """The fraction of the parameters a plan removes."""
    return 1 - plan.params_after / plan.params_before


def prune_plan(analysis: slimprune.Analysis, config: PipelineConfig) -> slimprune.PruningPlan:
    """The plan of stage 3: by ``threshold``; or every zeroed channel and at least ``target_params``;
    or, when that misses ``target_flops``, the smallest |γ| per FLOP until both targets are met.
    """
    rounding = config.round_to
    if config.threshold is not None:
        return slimprune.plan(analysis, threshold=config.threshold, round_to=rounding)
    plan = None
    if config.dead_threshold > 0:
        plan = slimprune.plan(analysis, threshold=config.dead_threshold, round_to=rounding)
    if plan is None or removed_params(plan) < config.target_params:
        plan = plan_fraction(analysis, config.target_params, round_to=rounding)
    if config.target_flops is None or removed_flops(plan) >= config.target_flops:
        return plan
    fraction = config.target_flops
    for _ in range(_FLOPS_TRIES):
        by_flops = plan_fraction(analysis, fraction, target="flops", round_to=rounding)
        if removed_params(by_flops) >= config.target_params or fraction >= _MAX_FRACTION:
            return by_flops
        fraction = min(_MAX_FRACTION, fraction + _FLOPS_STEP)
    return by_flops


def effective_threshold(model: nn.Module, plan: slimprune.PruningPlan) -> float:
    """The largest |γ| a plan removes: the threshold a ``target_params`` plan amounts to.

    Every scale (BatchNorm γ) of a removed channel is removed with it, so the maximum over
    removed scale entries is the largest per-channel max |γ| that went. 0 when nothing went.
    """
    largest = 0.0
    for s in plan.slices:
        if s.role != "scale" or not s.removed:
            continue
        owner = model.get_submodule(s.module) if s.module else model
        values = getattr(owner, s.param).detach().abs().float().cpu()[list(s.removed)]
        largest = max(largest, float(values.max()))
    return largest


def apply_plan(model: nn.Module, plan: slimprune.PruningPlan) -> nn.Module:
    """The pruned copy of ``model`` (on the CPU, in eval mode, every parameter trainable)."""
    return slimprune.apply(model.cpu().eval(), plan).eval()


def prunable_gamma_stats(analysis: slimprune.Analysis, thresholds: Iterable[float]) -> dict[str, Any]:
    """:func:`slimprune.sparsity.gamma_stats` of the analysed model, read from ``analysis``
    instead of tracing the model again (tests check that both agree).

    Returns:
        ``{"count": n, "percentiles": {1: ..., 50: ..., 99: ...}, "below": {threshold: count}}``.
    """
    model = analysis.model
    free = analysis.graph.unit_to_group >= 0
    values = []
    for s in analysis.graph.slices:
        if s.role != "scale":
            continue
        param = getattr(model.get_submodule(s.module) if s.module else model, s.param)
        if not isinstance(param, nn.Parameter) or not param.requires_grad:
            continue
        mask = free[s.units]
        if mask.any():
            values.append(param.detach().abs().float().cpu().numpy().astype(np.float64)[mask])
    g = np.concatenate(values) if values else np.zeros(0)
    pct = np.percentile(g, _PERCENTILES) if g.size else np.full(len(_PERCENTILES), np.nan)
    return {
        "count": int(g.size),
        "percentiles": {p: float(v) for p, v in zip(_PERCENTILES, pct)},
        "below": {float(t): int((g <= t).sum()) for t in thresholds},
    }
