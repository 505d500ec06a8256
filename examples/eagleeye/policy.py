"""Stage 3's pruning policy: which channels of the sparse model go.

Every plan of a model is made on one :func:`slimprune.analyze` result (:func:`analyze`):
the prune stage's tries, the prune-ratio sweep and the report's |γ| statistics read the
same trace, and ``slimprune.plan(analysis, ...)`` never traces again. A ``target="params"``
plan already removes at least the fraction asked once the biases that folding adds are
counted (the engine asks for a little more itself), so nothing here retries for that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import copy
import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

import slimprune
from slimprune.sparsity import SparsityRegularizer, scale_per_cost

from .config import PipelineConfig, TrainConfig

__all__ = [
    "analyze",
    "analyze_for_latency",
    "latency_plan",
    "example_batch",
    "plan_fraction",
    "prune_plan",
    "first_step_plan",
    "step_goals",
    "step_epochs",
    "next_step_plan",
    "original_widths",
    "layer_caps",
    "combined_plan",
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
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# slimprune.plan's max_ratio: one fraction for every group, or one per module name.
MaxRatio = float | Mapping[str, float]


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


def analyze_for_latency(model: nn.Module, size: int) -> slimprune.Analysis:
    """The analysis a latency plan is made on: one image of ``size`` x ``size``, the batch and size
    the latency is measured at (``target="latency"`` profiles the layers on these shapes)."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return slimprune.analyze(model, example_inputs=(x,))


def latency_plan(
    analysis: slimprune.Analysis,
    fraction: float,
    threads: int,
    round_to: int,
    cache: Path | None,
    *,
    points: int = 5,
    min_run_time: float = 0.05,
    max_ratio: MaxRatio = 1.0,
) -> slimprune.PruningPlan:
    """Remove ``fraction`` of the predicted CPU latency at batch 1 (``slimprune.plan(target="latency")``):
    each layer is timed at a grid of widths (``slimprune.latency.profile``, on ``threads`` threads,
    the table cached in ``cache``), and the channel groups go in the order of |γ| lost per
    millisecond saved. The engine holds the time outside convolutions fixed, so it predicts
    less saving than the pruned model shows, and measures it once on the whole model, so on a
    busy machine its prediction is noisy (docs/eagleeye.md). ``points`` widths per layer axis are
    timed for ``min_run_time`` seconds each (``slimprune.latency.profile``)."""
    from slimprune.latency import profile

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        table = profile(
            analysis.model, analysis.example_inputs, analysis.graph, device="cpu", threads=threads,
            points=points, min_run_time=min_run_time, cache=cache, progress=False,
        )
        return slimprune.plan(analysis, fraction, target="latency", round_to=round_to, latency_table=table,
                              max_ratio=max_ratio)
    finally:
        torch.set_num_threads(previous)


def plan_fraction(
    analysis: slimprune.Analysis, fraction: float, *, target: str = "params", round_to: int = 1,
    max_ratio: MaxRatio = 1.0,
) -> slimprune.PruningPlan:
    """Remove at least ``fraction`` of the parameters (``target="params"``, smallest |γ| first)
    or of the FLOPs (``target="flops"``, smallest |γ| per FLOP first: by |γ| alone the cheap
    low-resolution channels go first and the target is reached only by removing far more of
    them, docs/eagleeye.md), no group losing more than ``max_ratio`` (``slimprune.plan``'s)."""
    importance = scale_per_cost("flops") if target == "flops" else "bn_scale"
    return slimprune.plan(
        analysis, fraction, target=target, importance=importance, round_to=round_to, max_ratio=max_ratio
    )


def original_widths(model: nn.Module) -> dict[str, int]:
    """The channel count of every BatchNorm of ``model`` (the unpruned model), by module name:
    what :func:`layer_caps` measures a later round's widths against."""
    return {name: m.num_features for name, m in model.named_modules() if isinstance(m, _NORMS)}


def layer_caps(model: nn.Module, widths: Mapping[str, int], max_ratio: float) -> MaxRatio:
    """``slimprune.plan``'s ``max_ratio`` for ``model`` (pruned already, or not) such that no layer
    ends with fewer than ``(1 - max_ratio)`` of its channels in the unpruned model (``widths``,
    :func:`original_widths`): per BatchNorm, the share of its current channels that may still go.
    A group loses at most the smallest share among its members, so every layer of the group
    keeps its floor. ``max_ratio`` 1: no limit."""
    if max_ratio >= 1:
        return 1.0
    caps: dict[str, float] = {}
    for name, m in model.named_modules():
        if isinstance(m, _NORMS) and name in widths:
            keep = math.ceil((1 - max_ratio) * widths[name] - 1e-9)
            caps[name] = max(0, m.num_features - keep) / m.num_features
    return caps


def removed_flops(plan: slimprune.PruningPlan) -> float:
    """The fraction of the FLOPs (at the analysis' input size) a plan removes."""
    return 1 - plan.flops_after / plan.flops_before


def removed_params(plan: slimprune.PruningPlan) -> float:
    """The fraction of the parameters a plan removes."""
    return 1 - plan.params_after / plan.params_before


def prune_plan(
    analysis: slimprune.Analysis, config: PipelineConfig, latency_cache: Path | None = None
) -> slimprune.PruningPlan:
    """The plan of stage 3: by ``threshold`` (exactly the channels under it); or by
    ``target_latency`` (:func:`latency_plan` on a batch-1 analysis at the evaluation size); or
    every zeroed channel and at least ``target_params``; or, when that misses ``target_flops``,
    the smallest |γ| per FLOP until both targets are met. All but the threshold plan remove at
    most ``max_ratio`` of any group.
    """
    rounding, cap = config.round_to, config.max_ratio
    if config.target_latency is not None and config.threshold is None:
        at_size = analyze_for_latency(analysis.model, config.baseline.eval_size)
        return latency_plan(at_size, config.target_latency, config.latency_threads, rounding, latency_cache,
                            max_ratio=cap)
    if config.threshold is not None:
        return slimprune.plan(analysis, threshold=config.threshold, round_to=rounding)  # exactly |γ| <= T
    plan = None
    if config.dead_threshold > 0:
        plan = slimprune.plan(analysis, threshold=config.dead_threshold, round_to=rounding, max_ratio=cap)
    if plan is None or removed_params(plan) < config.target_params:
        plan = plan_fraction(analysis, config.target_params, round_to=rounding, max_ratio=cap)
    if config.target_flops is None or removed_flops(plan) >= config.target_flops:
        return plan
    fraction = config.target_flops
    for _ in range(_FLOPS_TRIES):
        by_flops = plan_fraction(analysis, fraction, target="flops", round_to=rounding, max_ratio=cap)
        if removed_params(by_flops) >= config.target_params or fraction >= _MAX_FRACTION:
            return by_flops
        fraction = min(_MAX_FRACTION, fraction + _FLOPS_STEP)
    return by_flops


def first_step_plan(analysis: slimprune.Analysis, config: PipelineConfig) -> slimprune.PruningPlan:
    """Round 1 of ``config.prune_steps`` rounds: :func:`prune_plan` without the FLOPs target (the
    zeroed channels and at least ``target_params``)."""
    return prune_plan(analysis, replace(config, target_flops=None, prune_steps=1))


def step_goals(first: float, target: float | None, steps: int) -> list[float]:
    """The fraction of the original FLOPs removed after each round of ``steps``: ``first`` (what
    round 1 removed), then evenly up to ``target`` (none above: rounds that find the target
    already met remove nothing more)."""
    goal = first if target is None else max(first, target)
    if steps == 1:
        return [first]
    return [first + (goal - first) * k / (steps - 1) for k in range(steps)]


def step_epochs(epochs: int, steps: int) -> list[int]:
    """The fine-tuning epochs of each round: an even split, the remainder to the last round."""
    each = epochs // steps
    return [each] * (steps - 1) + [epochs - each * (steps - 1)]


def next_step_plan(
    analysis: slimprune.Analysis, flops_original: int, goal: float, round_to: int, max_ratio: MaxRatio = 1.0
) -> slimprune.PruningPlan:
    """A later round's plan of the (pruned, fine-tuned) model ``analysis`` holds: the smallest |γ|
    per FLOP go until ``goal`` of ``flops_original`` (the unpruned model's FLOPs at the same input)
    are gone, no group losing more than ``max_ratio`` (:func:`layer_caps` measures it against
    the unpruned widths). The model's own FLOPs are already below ``flops_original``; a goal
    they meet removes nothing (a threshold plan below every |γ|)."""
    # (only exact zeros; for the FLOPs now)
    empty = slimprune.plan(analysis, threshold=0.0, round_to=round_to, max_ratio=max_ratio)
    now = empty.flops_before
    fraction = 1 - (1 - goal) * flops_original / now
    if fraction <= 0:
        return empty
    return plan_fraction(analysis, min(fraction, _MAX_FRACTION), target="flops", round_to=round_to,
                         max_ratio=max_ratio)


def fade_hook(plan: slimprune.PruningPlan, lam: float) -> Callable[[nn.Module], None]:
    """An ``after_backward`` callback (:func:`.train.train`) that adds ``lam·sign(γ)`` to the
    gradient of every BatchNorm scale ``plan`` would remove, and to nothing else: the L1 pull of
    the sparse run (``SparsityRegularizer(model, lam, plan=plan)``), aimed at the channels the
    next round removes, so that they reach ~0 (and their removal costs almost nothing) while
    fine-tuning goes on. The model it is called with must be the one ``plan`` was made for (same
    shapes); the regulariser is built on the first call, on that model."""
    regularizer: SparsityRegularizer | None = None

    def fade(model: nn.Module) -> None:
        nonlocal regularizer
        if regularizer is None:
            regularizer = SparsityRegularizer(model, lam, plan=plan)
        regularizer.step()

    return fade


def combined_plan(
    model: nn.Module, config: TrainConfig, plans: Iterable[slimprune.PruningPlan]
) -> slimprune.PruningPlan:
    """The one plan of ``model`` (the unpruned sparse model) that removes every channel the rounds'
    ``plans`` removed, the first of ``model``, each later one of the model the one before pruned.

    A round's plan names its channels by their place in the model it pruned; following each
    layer's kept channels back through the rounds gives their place in ``model``. The plan is
    the threshold plan (``|γ| <= 0``) of a copy of ``model`` whose BatchNorm scales of exactly
    those channels are set to 0 (and every other scale that was exactly 0 to the smallest
    positive float, so a zeroed channel a round kept stays), so it has the layer widths (and
    the folded biases) the rounds left; the pipeline checks that the last round's weights load
    into ``apply(model, plan)``.
    """
    places: dict[tuple[str, str], list[int]] = {}
    gone: dict[tuple[str, str], list[int]] = {}
    for plan in plans:
        for s in plan.slices:
            if s.role != "scale" or not s.removed:
                continue
            key = (s.module, s.param)
            if key not in places:
                owner = model.get_submodule(s.module) if s.module else model
                places[key] = list(range(getattr(owner, s.param).shape[0]))
                gone[key] = []
            removed = set(s.removed)
            gone[key] += [places[key][i] for i in sorted(removed)]
            places[key] = [c for i, c in enumerate(places[key]) if i not in removed]
    silenced = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        # A γ already exactly 0 that a round kept (a width rounded up) must not fall under the
        # threshold: lift every exact zero to the smallest positive float first.
        for m in silenced.modules():
            if isinstance(m, _NORMS) and m.weight is not None:
                m.weight[m.weight == 0] = torch.finfo(m.weight.dtype).tiny
        for (module, param), channels in gone.items():
            owner = silenced.get_submodule(module) if module else silenced
            getattr(owner, param)[channels] = 0.0
    return slimprune.plan(analyze(silenced, config), threshold=0.0, round_to=1)


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
