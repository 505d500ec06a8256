"""The public pruning API: ``analyze``, ``plan``, ``apply``, ``prune``.

``plan`` turns its keywords into one :class:`~slimprune._options.PlanOptions`, gets an
:class:`~slimprune._analysis.Analysis` (given, or made here) and runs the passes over it:
scores (:mod:`._importance`), selection (:mod:`._solver`), constant probing and folding
(:mod:`._folding`), freezing (:mod:`._freeze`); models fx cannot trace whole go through
:mod:`._compose` region by region.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from torch import nn

from ._analysis import Analysis, analyze, analyze_for_plan
from ._checks import check_eager
from ._compose import plan_regions
from ._folding import folds as find_folds
from ._folding import threshold_removed, warn_inexact
from ._freeze import _method_source as _method_source  # noqa: F401
from ._freeze import fold_bias_params, make_plan
from ._gc_pause import gc_paused
from ._graph import ChannelGraph
from ._latency_calibration import LatencyState, calibrated
from ._importance import tiebreak_scores, unit_scores
from ._options import PlanOptions, protected_units, silence_roles
from ._plan import PruningPlan
from ._rewrite import apply_plan
from ._solver import Constraints, reach_at_least, select_ranked, select_target
from ._trace import describe_fixed
from .errors import InvalidArgumentError

__all__ = ["analyze", "plan", "apply", "prune"]

# io.py reads _method_source from here; older code read _protected_units from here.
_protected_units = protected_units


@gc_paused
def plan(
    model: nn.Module | Analysis,
    ratio: float | None = None,
    *,
    threshold: float | None = None,
    target: str = "channels",
    importance: str | Callable[..., Any] = "bn_scale",
    example_inputs: Any = None,
    opaque: Iterable[str | type] = (),
    protect: Iterable[str | type] = (),
    min_channels: int = 1,
    round_to: int = 1,
    max_ratio: float | Mapping[str, float] = 1.0,
    fold_bias: bool = True,
    allow_inexact: bool = True,
    exact_borders: bool = False,
    prune_outputs: bool = False,
    seed: int = 0,
    device: str = "cpu",
    latency_table: Any = None,
) -> PruningPlan:
    """Decide which channels to remove, without touching the model.

    Args:
        model: the model (not modified), or its :func:`analyze` result: then nothing is
            traced again and the plan equals the one for the model (``example_inputs`` and
            ``opaque`` belong to ``analyze`` then).
        ratio: fraction of prunable channels to remove (or of parameters/FLOPs, see ``target``).
        threshold: instead of ``ratio``: remove every channel whose scaling factors are all
            at most ``threshold`` and thereby make it constant on every path it takes
            (network slimming after sparsity training). Exactly one of the two.
        target: ``"channels"`` (default), ``"params"``, ``"flops"`` or ``"latency"``: what ``ratio``
            counts. ``"latency"``: the fraction of the measured latency of the deployed model
            (BatchNorm folded, channels-last) at the example inputs' batch size, the current
            thread count and ``device`` to remove (0.5 halves it); see :mod:`slimprune.latency`.
        importance: ``"bn_scale"`` (default), ``"l1"``, ``"l2"``, ``"random"``, ``"flops"`` (the
            compute each channel carries: with ``target="latency"``, the widest network the
            budget allows) or a callable ``fn(model, graph, group) -> scores``.
        example_inputs: a tensor or tuple of positional inputs (built from the first layer if omitted).
        opaque: module names/types not traced into (kept whole).
        protect: module names/types whose channels are never removed.
        min_channels: channels every group keeps (>= 1).
        round_to: kept channel counts are multiples of this (or the whole group).
        max_ratio: the largest fraction of any group removed; a float, or a mapping from module
            name to fraction for the groups that module belongs to.
        fold_bias: fold the constant output act(β) of removed normalised channels into the
            next layer's bias (exact for 1x1 convs and Linear, exact in the interior of
            zero-padded convs). False treats β as zero.
        allow_inexact: also prune groups whose removal cannot be exact because a member
            normalises across channels (LayerNorm, GroupNorm); False keeps them whole, so the
            pruned model equals the silenced original exactly.
        exact_borders: with ``threshold=`` and ``fold_bias``, also keep channels whose
            constant a zero-padded conv would read (their fold is exact only in the interior):
            the pruned model then equals the original everywhere, borders included.
        prune_outputs: also remove channels of the tensors the model returns (a bare
            encoder's ``last_hidden_state``, a backbone's feature map). False (the default)
            keeps every returned width, so the pruned model is a drop-in; True declares them
            free to go: the outputs get narrower (which channels stay: ``plan.kept`` of the
            layer making them), and the pruned model computes the silenced original's outputs
            at those channels (exactly, unless a group through a norm is inexact). Needs a
            model fx traces whole.
        seed: for ``importance="random"``.
        device: with ``target="latency"``: ``"cpu"`` or ``"cuda"``, where latency is timed.
        latency_table: with ``target="latency"``: a :class:`slimprune.latency.CostTable` made
            by :func:`slimprune.latency.profile`, used as it is (the plan is then a pure function
            of it). Without one the model is profiled here, and the table is refined up to three
            times at the widths the plan chose (:func:`slimprune.latency.refine`), so the
            predicted latency is made of times measured at the kept widths.

    Returns:
        A frozen :class:`PruningPlan`.

    Raises:
        InvalidArgumentError: a bad argument (also a TorchScript model: prune the eager one;
            an analysis of a model whose structure or mode changed since), or
            TraceError, ExampleInputError, InfeasiblePlanError.

    Example:
        >>> p = slimprune.plan(model, 0.5)
        >>> print(p)
        >>> small = slimprune.apply(model, p)
        >>> a = slimprune.analyze(model)                  # trace once, plan many times
        >>> plans = [slimprune.plan(a, r) for r in (0.3, 0.5)]
    """
    options = _options(model, dict(
        ratio=ratio, threshold=threshold, target=target, importance=importance, example_inputs=example_inputs,
        opaque=opaque, protect=protect, min_channels=min_channels, round_to=round_to, max_ratio=max_ratio,
        fold_bias=fold_bias, allow_inexact=allow_inexact, exact_borders=exact_borders, prune_outputs=prune_outputs,
        seed=seed, device=device, latency_table=latency_table))
    if isinstance(model, Analysis):
        return plan_analysis(model, options)
    options.check_model(model)
    analysis = analyze_for_plan(model, options.example_inputs, options.opaque, prune_outputs=options.prune_outputs)
    return plan_analysis(analysis, options, current=True)


def _options(model: Any, given: dict[str, Any]) -> PlanOptions:
    """The options of one ``plan()`` call, after the checks that come before them."""
    if isinstance(model, Analysis):
        if given["example_inputs"] is not None or _nonempty(given["opaque"]):
            raise InvalidArgumentError(
                "example_inputs= and opaque= describe how a model is traced, and this Analysis is traced "
                "already; pass them to slimprune.analyze(model, example_inputs=..., opaque=...) instead"
            )
    else:
        check_eager(model)
    return PlanOptions(**given)


def _nonempty(value: Any) -> bool:
    return isinstance(value, (str, bytes, type)) or not isinstance(value, Iterable) or bool(list(value))


def plan_analysis(analysis: Analysis, options: PlanOptions, current: bool = False) -> PruningPlan:
    """The plan of ``analysis``'s model under ``options`` (no tracing).

    ``current``: the analysis was made from the model just now, so it is not checked again."""
    if not current:
        analysis.check_current()
    options.check_model(analysis.model)
    analysis = analysis.with_prune_outputs(options.prune_outputs)  # (built once from the same trace)
    if analysis.by_regions:
        return plan_regions(analysis, options, plan_analysis)
    if options.target == "latency" and options.threshold is None and options.latency_table is None:
        # Profiled here: the table is refined at the chosen widths and the total checked on the device.
        plan_, notes = calibrated(analysis, options, _plan_graph, apply_plan)
    else:
        plan_, notes = _plan_graph(analysis, options)
    warn_inexact(notes)
    return plan_


def _plan_graph(analysis: Analysis, options: PlanOptions,
                latency: LatencyState | None = None) -> tuple[PruningPlan, list[str]]:
    graph, model, predictor, cache = analysis.graph, analysis.model, analysis.predictor, analysis.probes
    assert graph is not None and predictor is not None  # by_regions is handled by the caller
    protected = protected_units(graph, model, options.protect)
    constraints = options.constraints(protected)
    scores = unit_scores(graph, model, options.importance, options.seed, analysis.scores)
    roles = silence_roles(options.threshold_mode)
    fold_bias = options.fold_bias
    if options.threshold is not None:
        removed, probe_notes = threshold_removed(graph, model, options.threshold, constraints, scores,
                                                 options.exact_borders and fold_bias, cache)
        folds, notes, _ = find_folds(graph, model, removed, keep_shift=fold_bias, roles=roles, cache=cache)
        notes = probe_notes + notes
    else:
        removed, folds, notes, predicted = _select_ratio(analysis, options, scores, constraints, roles, latency)
    # A latency plan's last note is its predicted latency: information, not a warning.
    serious = list(notes[:-1] if options.target == "latency" and options.threshold is None else notes)
    narrower = [f"{where} {units.size} -> {int((~removed[units]).sum())}" for where, units in graph.returned
                if removed[units].any()]
    if narrower:
        notes.append(f"prune_outputs=True: the model returns narrower tensors ({', '.join(narrower)}); channel i of "
                     f"a pruned output is the i-th kept one (plan.kept of the layer making it), so a classifier's "
                     f"logits or a language model's vocabulary would no longer be indexed as before")
    if graph.traced.method == "concrete":
        fixed = graph.traced.fixed
        notes.insert(0, f"fx alone cannot follow {type(model).__name__}.forward; traced while running it on the "
                        f"example inputs" + (f", with Python decisions on shapes fixed there ({describe_fixed(fixed)})"
                                             if fixed else ""))
    # check_current (or a fresh analysis) vouches for the fingerprint; planning changes no shape.
    plan_ = make_plan(graph, model, removed, folds, notes, options.record(), predictor, protected, analysis.structure)
    if options.threshold is None and predicted is not None:
        plan_ = replace(plan_, latency_before_ms=predicted[0], latency_after_ms=predicted[1])
    return plan_, serious


def _select_ratio(analysis: Analysis, options: PlanOptions, scores: np.ndarray, constraints: Constraints,
                  roles: tuple[str, ...], latency: LatencyState | None = None,
                  ) -> tuple[np.ndarray, list, list[str], tuple[float, float] | None]:
    """The removed units, folds and notes of a ratio plan, and its predicted latency (ms before, after) if
    the target is latency."""
    graph, model, predictor, cache = analysis.graph, analysis.model, analysis.predictor, analysis.probes
    fold_bias, ratio, target = options.fold_bias, float(options.ratio), options.target
    importance = options.importance
    tiebreak = tiebreak_scores(graph, model, analysis.scores) if importance == "bn_scale" and _has_ties(graph, scores) else None
    kind = {"channels": None, "params": "params", "flops": "macs", "latency": "latency"}[target]
    latency_notes: list[str] = []
    predicted: list[tuple[float, float]] = []
    if kind == "latency":
        from ._latency_solver import select_for_graph
        from .latency import refine
        if latency is None:
            latency = LatencyState(_latency_table(analysis, options), refinable=False)
        elif latency.table is None:
            latency.table = _latency_table(analysis, options)

    def select(goal: float, cons: Constraints) -> np.ndarray:
        if kind == "latency":
            # A table profiled here is refined: the layers are timed again at the widths chosen
            # and the choice made again (kernels change algorithm at some widths; see
            # slimprune.latency.refine). A table the user passes is used as it is.
            assert latency is not None and latency.table is not None
            for rounds in range(_REFINE_ROUNDS + 1):
                removed_, note, ms = select_for_graph(graph, scores, goal, cons, latency.table,
                                                      options.round_to == "auto", latency.calibration)
                if not latency.refinable or rounds == _REFINE_ROUNDS:
                    break
                kept = {g.id: int((~removed_[g.units]).sum()) for g in graph.groups}
                better = refine(latency.table, model, analysis.example_inputs, kept)
                if better == latency.table:
                    break
                latency.table = better
            latency_notes[:], predicted[:] = [note], [ms]
            return removed_
        if kind is None:
            return select_ranked(graph, scores, goal, cons, tiebreak)
        return select_target(graph, scores, goal, cons, predictor, kind, tiebreak)

    removed = select(ratio, constraints)
    folds, notes, conflicts = find_folds(graph, model, removed, keep_shift=fold_bias, roles=roles, cache=cache)
    for _ in range(3):
        # Channels one folded bias cannot serve at every call of a shared module stay;
        # the others are chosen again under that constraint.
        if not conflicts.any():
            break
        constraints = replace(constraints, kept_units=constraints.kept_units
                              | frozenset(np.flatnonzero(conflicts).tolist()))
        removed = select(ratio, constraints)
        folds, notes, conflicts = find_folds(graph, model, removed, keep_shift=fold_bias, roles=roles, cache=cache)
    if target == "params" and folds:
        # Folding gives a bias-less consumer a bias: the solver asks for more until the
        # target holds with those biases counted.
        before = predictor.params(np.zeros(graph.num_units, bool))

        def attempt(goal: float) -> tuple[np.ndarray, list, list[str]]:
            r = select(goal, constraints)
            f, n, _ = find_folds(graph, model, r, keep_shift=fold_bias, roles=roles, cache=cache)
            return r, f, n

        def saved(candidate: tuple[np.ndarray, list, list[str]]) -> float:
            r, f, _ = candidate
            return 1.0 - predictor.params(r, fold_bias_params(graph, model, r, f)) / before

        removed, folds, notes = reach_at_least(ratio, (removed, folds, notes), attempt, saved, lambda got: (
            f"target='params' ratio={options.ratio} cannot be reached with fold_bias=True: the biases folding "
            f"adds to bias-less layers leave the saving at {got:.2%}. Lower the ratio or pass fold_bias=False."))
    return removed, folds, notes + latency_notes, (predicted[0] if predicted else None)


_REFINE_ROUNDS = 3  # re-timings of a profiled latency table at the chosen widths


def _latency_table(analysis: Analysis, options: PlanOptions) -> Any:
    """The cost table of ``target="latency"``: given, or profiled on the analysis's inputs."""
    from .latency import CostTable, check_device, profile

    if options.latency_table is not None:
        if not isinstance(options.latency_table, CostTable):
            raise InvalidArgumentError(
                f"latency_table must be a slimprune.latency.CostTable (from slimprune.latency.profile), got "
                f"{type(options.latency_table).__name__}")
        return options.latency_table
    check_device(options.device)
    if analysis.example_inputs is None:
        raise InvalidArgumentError("target='latency' times the model on its real input shapes: pass example_inputs=")
    return profile(analysis.model, analysis.example_inputs, analysis.graph, device=options.device)


def _has_ties(graph: ChannelGraph, scores: np.ndarray) -> bool:
    units = np.concatenate([g.units for g in graph.groups]) if graph.groups else np.zeros(0, np.int64)
    return np.unique(scores[units]).size < units.size


@gc_paused
def apply(model: nn.Module, plan: PruningPlan, *, inplace: bool = False) -> nn.Module:
    """Build the pruned model a plan describes.

    Args:
        model: the model the plan was made for (checked by fingerprint).
        plan: from :func:`plan`.
        inplace: modify ``model`` itself instead of a copy. (When the plan rewrites literal
            sizes in ``forward``, the returned module keeps its class and attributes and its forward is the
            rewritten code: an instance of :class:`slimprune.Rewritten`.)

    Returns:
        A physically smaller module computing what ``silence(model, plan)`` computes.

    Raises:
        PlanMismatchError: the plan was made for another model.
    """
    return apply_plan(model, plan, inplace=inplace)


@gc_paused
def prune(model: nn.Module, ratio: float | None = None, *, inplace: bool = False, **kwargs: Any) -> nn.Module:
    """Plan and apply in one call: ``slimprune.prune(model, 0.5)``. See :func:`plan` for options."""
    plan_ = plan(model, ratio, **kwargs)
    # The plan was made from this very model just now (nothing ran since): it is the model's plan
    # (fingerprint, eager check, indices in range), so apply does not check it again.
    return apply_plan(model, plan_, inplace=inplace, fresh=True)
