"""The public pruning API: ``analyze``, ``plan``, ``apply``, ``prune``."""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ._checks import check_eager, check_seed, is_real, names_list, real_number
from ._graph import ChannelGraph, build_channel_graph
from ._importance import IMPORTANCE, tiebreak_scores, unit_scores
from ._plan import Fold, GroupDecision, PruningPlan, SliceDecision, fingerprint
from ._rewrite import apply_plan
from ._silence import merge_stats, probe_consumers, silenced, zero_list
from ._solver import Constraints, Predictor, apply_rounding, group_caps, select_ranked, select_target
from ._trace import describe_fixed, trace
from ._regions import find_regions
from .errors import InfeasiblePlanError, InvalidArgumentError, TraceError
from .rules import has_module_rule, lookup_rule

__all__ = ["analyze", "plan", "apply", "prune"]

_TARGETS = ("channels", "params", "flops")


def analyze(model: nn.Module, example_inputs: Any = None, opaque: Iterable[str | type] = (), warn: bool = True) -> ChannelGraph:
    """Trace ``model`` and build its channel dependency graph.

    Args:
        model: any ``nn.Module`` (not modified).
        example_inputs: a tensor or tuple of positional inputs; built from the first layer
            when omitted.
        opaque: module names or types fx must not trace into; their channels are kept.
        warn: warn once about every op without a channel rule (a barrier).

    Returns:
        The :class:`ChannelGraph`: groups of channels that live or die together.

    Raises:
        InvalidArgumentError: ``model`` is not an eager ``nn.Module`` (a TorchScript module,
            whole or nested), or ``opaque`` is not a list of module names and types.
    """
    check_eager(model)
    return build_channel_graph(trace(model, example_inputs, _check_opaque(opaque)), warn=warn)


def _check_opaque(opaque: Any) -> list[str | type]:
    """``opaque`` as a list of module names and types."""
    items = names_list("opaque", opaque, "['backbone.head'] or [nn.MultiheadAttention]")
    for item in items:
        if not isinstance(item, (str, type)):
            raise InvalidArgumentError(
                f"opaque entries are module names (str) or module types, got {item!r} "
                f"({type(item).__name__}); use names from model.named_modules(), e.g. opaque=['layer1.0']"
            )
    return items


def _check_protect(model: nn.Module, protect: Any) -> list[str | type]:
    """``protect`` as a list whose entries are module types or names of existing modules."""
    modules = dict(model.named_modules())
    items = names_list("protect", protect, "['layer4'] or [nn.Linear]")
    for p in items:
        if not isinstance(p, (str, type)):
            raise InvalidArgumentError(
                f"protect entries are module names or module types, got {p!r} ({type(p).__name__}); "
                f"use names from model.named_modules(), e.g. protect=['layer4']"
            )
        if isinstance(p, str) and p not in modules:
            close = [m for m in modules if m and (p in m or m in p)][:5]
            raise InvalidArgumentError(
                f"protect names module {p!r}, which {type(model).__name__} does not have"
                + (f"; did you mean one of {close}?" if close else "")
                + " Use names from model.named_modules()."
            )
    return items


def _protected_units(graph: ChannelGraph, model: nn.Module, protect: Iterable[str | type]) -> frozenset[int]:
    protect = _check_protect(model, protect)
    modules = dict(model.named_modules())
    names = [p for p in protect if isinstance(p, str)]
    types = tuple(p for p in protect if isinstance(p, type))
    units: set[int] = set()
    for s in graph.slices:
        m = modules.get(s.module)
        hit = any(s.module == n or s.module.startswith(n + ".") or n == "" for n in names)
        if hit or (types and isinstance(m, types)):
            units.update(int(u) for u in np.unique(s.units))
    return frozenset(units)


def _zero_padded(m: nn.Module) -> bool:
    """A conv whose zero padding makes a folded constant inexact at the border."""
    pad = getattr(m, "padding", 0)
    return (isinstance(m, nn.modules.conv._ConvNd) and getattr(m, "padding_mode", "zeros") == "zeros"
            and (pad == "same" or (isinstance(pad, tuple) and any(pad))))


def _can_fold(m: nn.Module) -> bool:
    """Does this consumer have an exact way to absorb constant input channels?"""
    rule = lookup_rule("call_module", None, m)
    if rule is None or rule.fold is None:
        return False
    return not (isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is None)


def _threshold_removed(graph: ChannelGraph, model: nn.Module, threshold: float, c: Constraints,
                       scores: np.ndarray, exact_borders: bool = False) -> tuple[np.ndarray, list[str]]:
    """Units whose every path passes a scaling factor <= threshold, verified constant by a probe.

    A unit stays unless its value at every consumer is one constant for every input, in eval
    mode and with batch statistics, and the same constant at every call of a consumer module
    called more than once (one bias serves them all). With ``exact_borders``, a unit whose
    constant is non-zero where a zero-padded conv reads it stays too, so folding its constant
    is exact everywhere, borders included. Returns the units and the probe's notes.
    """
    gmax = np.full(graph.num_units, -np.inf)
    for s in graph.slices:
        if s.role == "scale":
            owner = model.get_submodule(s.module) if s.module else model
            np.maximum.at(gmax, s.units, getattr(owner, s.param).detach().abs().float().cpu().numpy())
    in_group = graph.unit_to_group >= 0
    # Compare in the parameters' precision: a γ stored as float32(1e-3) is not above 1e-3.
    cand = in_group & np.isfinite(gmax) & (gmax <= np.float32(threshold))
    for g in graph.groups:
        if not g.exact:
            cand[g.units] = False
    cand[list(c.protected_units)] = False
    if not cand.any():
        return np.zeros(graph.num_units, bool), []
    zeros = zero_list(
        ((s.module, s.param, s.dim, s.role, np.flatnonzero(cand[s.units])) for s in graph.slices),
        keep_shift=True, roles=("scale",),
    )
    with silenced(model, zeros):
        stats, notes = _probe_all(graph, cand)
    for c_ in graph.consumers:
        st = stats.get((c_.graph, c_.node))
        if st is None:
            continue
        cand[c_.units[~st.constant()]] = False
        consumer = model.get_submodule(c_.module)
        if not _can_fold(consumer) or (exact_borders and _zero_padded(consumer)):
            cand[c_.units[st.center != 0]] = False
    cand[_site_conflicts(graph, stats, cand)] = False
    # Respect per-group caps: the largest-gamma candidates stay when a group would shrink too far.
    caps = group_caps(graph, c)
    removed = np.zeros(graph.num_units, bool)
    for g in graph.groups:
        u = g.units[cand[g.units]]
        if u.size > caps[g.id]:
            u = u[np.lexsort((u, gmax[u]))[: caps[g.id]]]
        removed[u] = True
    return apply_rounding(graph, removed, scores, c.round_to), notes


def _site_conflicts(graph: ChannelGraph, stats: dict, removed: np.ndarray) -> np.ndarray:
    """Removed units whose constants differ between the calls of one consumer module.

    Folding writes one bias per module; a module called at several sites adds it at every
    site, so the fold is exact only where every site sees the same constant (zero included).
    """
    by_module: dict[str, list[tuple[np.ndarray, Any]]] = {}
    for c in graph.consumers:
        st = stats.get((c.graph, c.node))
        if st is not None:
            by_module.setdefault(c.module, []).append((c.units, st))
    bad = np.zeros(graph.num_units, bool)
    for sites in by_module.values():
        if len(sites) < 2:
            continue
        units0, st0 = sites[0]
        for units, st in sites[1:]:
            if units.shape != units0.shape:  # cannot line the calls up: none of them folds
                for u, _ in sites:
                    bad[u[removed[u]]] = True
                break
            differ = np.abs(st.center - st0.center) > 1e-6 + 1e-5 * np.abs(st0.center)
            bad[units[differ & removed[units]]] = True
            bad[units0[differ & removed[units0]]] = True
    return bad


def _probe_all(graph: ChannelGraph, removed: np.ndarray) -> tuple[dict, list[str]]:
    """Consumer statistics keyed by (graph index, node) for consumers of removed units.

    A folded constant must hold for any input at any batch size, in eval mode and in
    training, so the statistics cover a batch of two different samples (the example's first
    and a redrawn one: a norm computing batch statistics over one sample maps any
    per-sample value to its shift), in eval mode and with the norms computing batch
    statistics. Constants do not depend on the input size, so spatial dims are first cut
    to 32; a model that insists on its example's shapes is probed on the example and a
    redrawn batch of the same shapes instead. Returns the statistics and notes on what could
    not be verified.
    """
    inputs = graph.traced.example_inputs
    attempts = [b for b in (_pair_batch(inputs, shrink=True), _pair_batch(inputs, shrink=False)) if b is not None]
    attempts.append((inputs, _perturbed(inputs)))
    for i, batches in enumerate(attempts):
        try:
            runs = [_probe_run(graph, b, removed, batch_stats=False) for b in batches]
        except Exception:
            if i == len(attempts) - 1:
                raise
            continue
        notes = []
        try:
            runs += [_probe_run(graph, b, removed, batch_stats=True) for b in batches]
        except Exception as exc:  # e.g. a norm over one value per channel at batch 1
            notes.append(f"constants were verified in eval mode only (with batch statistics the model "
                         f"failed: {type(exc).__name__}: {str(exc)[:80]}); check the pruned model in training mode")
        if i == len(attempts) - 1 and inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].shape[:1] == (1,):
            notes.append("constants were verified at batch size 1 only (the model refused a batch of two); "
                         "norms computing batch statistics may make them differ at other batch sizes")
        return merge_stats(runs), notes
    raise AssertionError("unreachable")


def _probe_run(graph: ChannelGraph, inputs: tuple, removed: np.ndarray, batch_stats: bool) -> dict:
    out = {}
    for gi, gm in enumerate(graph.graphs()):
        targets = {c.node: c.axis for c in graph.consumers if c.graph == gi and removed[c.units].any()}
        if targets:
            out.update({(gi, k): v for k, v in probe_consumers(gm, inputs, targets, batch_stats).items()})
    return out


def _pair_batch(inputs: tuple, shrink: bool) -> tuple[tuple] | None:
    """One batch of two samples: the example's first and a redrawn one (None if not batched).

    Tensors whose first dim is the example's batch size are batched; with ``shrink``, 4-D
    floating ones have their spatial dims cut to at most 32.
    """
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    if not tensors or tensors[0].dim() == 0:
        return None
    batch = tensors[0].shape[0]
    out = []
    for x, y in zip(inputs, _perturbed(inputs)):
        if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == batch:
            pair = torch.cat([x[:1], y[:1]])
            if shrink and pair.is_floating_point() and pair.dim() == 4 and any(d > 32 for d in pair.shape[2:]):
                pair = torch.nn.functional.adaptive_avg_pool2d(pair, [min(d, 32) for d in pair.shape[2:]])
            out.append(pair)
        else:
            out.append(x)
    return (tuple(out),)


def _perturbed(inputs: tuple) -> tuple:
    """A second, different batch of the same shapes (floating tensors redrawn, others kept)."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            noise = torch.randn(x.shape, generator=g, dtype=torch.float32).to(dtype=x.dtype, device=x.device)
            out.append(noise * (x.std() if x.numel() > 1 else 1.0) + x.mean())
        else:
            out.append(x)
    return tuple(out)


def silence_roles(threshold_mode: bool) -> tuple[str, ...]:
    """What silencing zeroes: the model as trained (threshold) or whole channels (ratio)."""
    return ("scale",) if threshold_mode else ("out", "scale", "source", "mean")


def _folds(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, keep_shift: bool,
           roles: tuple[str, ...]) -> tuple[list[Fold], list[str], np.ndarray]:
    """Constants that removed channels hold at each consumer, measured on the silenced model.

    Also returns the removed units whose constants differ between the calls of a consumer
    module called at several sites: no single bias is exact for them.
    """
    none = np.zeros(graph.num_units, bool)
    if not any(removed[c.units].any() for c in graph.consumers):
        return [], [], none
    zeros = zero_list(((s.module, s.param, s.dim, s.role, np.flatnonzero(removed[s.units])) for s in graph.slices),
                      keep_shift=keep_shift, roles=roles)
    with silenced(model, zeros):
        stats, notes = _probe_all(graph, removed)
    conflicts = _site_conflicts(graph, stats, removed)
    folds: dict[str, Fold] = {}
    for c in graph.consumers:
        if (c.graph, c.node) not in stats:
            continue
        st = stats[(c.graph, c.node)]
        idx = np.flatnonzero(removed[c.units])
        vals = st.center[idx]
        if not st.constant()[idx].all():
            notes.append(f"{c.module}: some removed input channels are not constant, so folding them is approximate")
        nz = np.abs(vals) > 0
        if not nz.any() or c.module in folds:
            continue  # calls of one module agree (or conflicts says otherwise): one fold serves all
        m = model.get_submodule(c.module)
        if not _can_fold(m):
            notes.append(f"{c.module}: removed input channels hold non-zero constants but {type(m).__name__} "
                         f"cannot fold them, so the pruned model differs from the silenced one there")
            continue
        folds[c.module] = Fold(c.module, c.node, int(c.units.size), tuple(int(i) for i in idx[nz]),
                               tuple(float(v) for v in vals[nz]))
        if _zero_padded(m):
            notes.append(f"{c.module}: folded constants are exact in the interior; zero padding makes border outputs differ")
    if conflicts.any():
        notes.append("a module called at several sites sees different constants in removed channels at "
                     "different calls, so no single folded bias is exact")
    return list(folds.values()), notes, conflicts


def _warn_inexact(notes: list[str]) -> None:
    """One warning listing the plan's notes that mean the pruned model is not the silenced one."""
    serious = [n for n in notes if "approximate" in n or "cannot fold" in n or "several sites" in n
               or "verified" in n]
    if serious:
        warnings.warn("slimprune: the pruned model will not equal the silenced original exactly:\n  - "
                      + "\n  - ".join(dict.fromkeys(serious)), stacklevel=3)


def _has_ties(graph: ChannelGraph, scores: np.ndarray) -> bool:
    units = np.concatenate([g.units for g in graph.groups]) if graph.groups else np.zeros(0, np.int64)
    return np.unique(scores[units]).size < units.size


def _check_args(ratio: Any, threshold: Any, target: str, importance: Any) -> None:
    if (ratio is None) == (threshold is None):
        raise InvalidArgumentError(
            "give exactly one of ratio= (the fraction of channels, or of params/FLOPs with target=, "
            "to remove) or threshold= (remove channels whose scaling factors are at most this)"
        )
    # Any real number type (NumPy's float32 included); bool, NaN and inf are not numbers here.
    if ratio is not None and not (is_real(ratio) and 0.0 <= float(ratio) < 1.0):
        raise InvalidArgumentError(f"ratio must be a number in [0, 1) (the fraction to remove), got {ratio!r}")
    if threshold is not None and not (is_real(threshold) and 0.0 <= float(threshold) < np.inf):
        raise InvalidArgumentError(
            f"threshold must be a number >= 0, got {threshold!r}; channels whose scaling factors |γ| are "
            f"at most the threshold are removed, e.g. threshold=1e-3 (finite: not NaN or inf)"
        )
    if target not in _TARGETS:
        raise InvalidArgumentError(f"target must be one of {_TARGETS}, got {target!r}")
    if threshold is not None and target != "channels":
        raise InvalidArgumentError("target= applies to ratio=; with threshold= the channels to remove are fixed")
    if not callable(importance) and importance not in IMPORTANCE:
        raise InvalidArgumentError(
            f"unknown importance {importance!r}; choose one of {', '.join(map(repr, IMPORTANCE))} "
            f"or pass a callable fn(model, graph, group) -> scores"
        )


def _check_constraints(model: nn.Module, min_channels: Any, round_to: Any, max_ratio: Any,
                       seed: Any) -> tuple[int, int, float | dict[str, float], int]:
    """min_channels, round_to and seed as ints, max_ratio as a float or a {module name: float} dict."""
    out = []
    for name, value in (("min_channels", min_channels), ("round_to", round_to)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
            raise InvalidArgumentError(
                f"{name} must be an integer >= 1, got {value!r}"
                + (" (a layer never loses all its channels)" if name == "min_channels" else "")
            )
        out.append(int(value))

    def fraction(v: Any, where: str) -> float:
        f = real_number(where, v, "a number in [0, 1] (the largest fraction of a channel group removed)")
        if not 0.0 <= f <= 1.0:
            raise InvalidArgumentError(f"{where} must lie in [0, 1] (the largest fraction of a channel group removed), got {v!r}")
        return f

    if isinstance(max_ratio, Mapping):
        modules = dict(model.named_modules())
        ratios = {}
        for key, v in max_ratio.items():
            if not isinstance(key, str) or key not in modules:
                close = [m for m in modules if m and isinstance(key, str) and (key in m or m in key)][:5]
                raise InvalidArgumentError(
                    f"max_ratio names module {key!r}, which {type(model).__name__} does not have"
                    + (f"; did you mean one of {close}?" if close else "")
                    + " Keys are names from model.named_modules(), e.g. max_ratio={'layer1.0.conv1': 0.5}"
                )
            ratios[key] = fraction(v, f"max_ratio[{key!r}]")
        checked: float | dict[str, float] = ratios
    else:
        checked = fraction(max_ratio, "max_ratio")
    return out[0], out[1], checked, check_seed(seed)


def plan(
    model: nn.Module,
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
    seed: int = 0,
) -> PruningPlan:
    """Decide which channels to remove, without touching the model.

    Args:
        model: the model (not modified).
        ratio: fraction of prunable channels to remove (or of parameters/FLOPs, see ``target``).
        threshold: instead of ``ratio``: remove every channel whose scaling factors are all
            at most ``threshold`` and thereby make it constant on every path it takes
            (network slimming after sparsity training). Exactly one of the two.
        target: ``"channels"`` (default), ``"params"`` or ``"flops"``: what ``ratio`` counts.
        importance: ``"bn_scale"`` (default), ``"l1"``, ``"l2"``, ``"random"`` or a callable
            ``fn(model, graph, group) -> scores``.
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
        seed: for ``importance="random"``.

    Returns:
        A frozen :class:`PruningPlan`.

    Raises:
        InvalidArgumentError: a bad argument (also a TorchScript model: prune the eager one), or
            TraceError, ExampleInputError, InfeasiblePlanError.

    Example:
        >>> p = slimprune.plan(model, 0.5)
        >>> print(p)
        >>> small = slimprune.apply(model, p)
    """
    check_eager(model)
    _check_args(ratio, threshold, target, importance)
    ratio = None if ratio is None else float(ratio)
    threshold = None if threshold is None else float(threshold)
    opaque = _check_opaque(opaque)
    protect = _check_protect(model, protect)
    min_channels, round_to, max_ratio, seed = _check_constraints(model, min_channels, round_to, max_ratio, seed)
    try:
        graph = analyze(model, example_inputs, opaque)
    except TraceError as exc:
        kwargs = dict(threshold=threshold, target=target, importance=importance, min_channels=min_channels,
                      round_to=round_to, max_ratio=max_ratio, fold_bias=fold_bias, allow_inexact=allow_inexact,
                      exact_borders=exact_borders, seed=seed)
        return _plan_regions(model, exc, ratio, example_inputs, opaque, protect, kwargs)
    protected = _protected_units(graph, model, protect)
    constraints = Constraints(min_channels, round_to, max_ratio, protected, allow_inexact)
    scores = unit_scores(graph, model, importance, seed)
    predictor = Predictor(graph, model)
    roles = silence_roles(threshold is not None)
    if threshold is not None:
        removed, probe_notes = _threshold_removed(graph, model, float(threshold), constraints, scores,
                                                  exact_borders and fold_bias)
        folds, notes, _ = _folds(graph, model, removed, keep_shift=fold_bias, roles=roles)
        notes = probe_notes + notes
    else:
        tiebreak = tiebreak_scores(graph, model) if importance == "bn_scale" and _has_ties(graph, scores) else None
        kind = {"channels": None, "params": "params", "flops": "macs"}[target]

        def select(goal: float, cons: Constraints) -> np.ndarray:
            if kind is None:
                return select_ranked(graph, scores, goal, cons, tiebreak)
            return select_target(graph, scores, goal, cons, predictor, kind, tiebreak)

        removed = select(float(ratio), constraints)
        folds, notes, conflicts = _folds(graph, model, removed, keep_shift=fold_bias, roles=roles)
        for _ in range(3):
            # Channels one folded bias cannot serve at every call of a shared module stay;
            # the others are chosen again under that constraint.
            if not conflicts.any():
                break
            constraints = replace(constraints, kept_units=constraints.kept_units
                                  | frozenset(np.flatnonzero(conflicts).tolist()))
            removed = select(float(ratio), constraints)
            folds, notes, conflicts = _folds(graph, model, removed, keep_shift=fold_bias, roles=roles)
        if target == "params" and folds:
            # Folding gives a bias-less consumer a bias; ask for that much more, until the
            # target holds with those biases counted (a few rounds at most).
            before = predictor.params(np.zeros(graph.num_units, bool))

            def saved() -> float:
                return 1.0 - predictor.params(removed, _fold_bias_params(graph, model, removed, folds)) / before

            goal = float(ratio)
            for _ in range(8):
                got = saved()
                if got + 1e-12 >= float(ratio):
                    break
                goal += max(float(ratio) - got, 1e-4)  # at least a step, so rounds cannot stall on a hair
                try:
                    removed = select(goal, constraints)
                except InfeasiblePlanError:
                    break
                folds, notes, _ = _folds(graph, model, removed, keep_shift=fold_bias, roles=roles)
            got = saved()
            if got + 1e-12 < float(ratio):
                raise InfeasiblePlanError(
                    f"target='params' ratio={ratio} cannot be reached with fold_bias=True: the biases folding "
                    f"adds to bias-less layers leave the saving at {got:.2%}. Lower the ratio or pass fold_bias=False."
                )
    _warn_inexact(notes)
    if graph.traced.method == "concrete":
        fixed = graph.traced.fixed
        notes.insert(0, f"fx alone cannot follow {type(model).__name__}.forward; traced while running it on the "
                        f"example inputs" + (f", with Python decisions on shapes fixed there ({describe_fixed(fixed)})"
                                             if fixed else ""))
    options = {
        "ratio": ratio, "threshold": threshold, "target": target,
        "importance": importance if isinstance(importance, str) else getattr(importance, "__name__", "callable"),
        "min_channels": min_channels, "round_to": round_to,
        "max_ratio": dict(max_ratio) if isinstance(max_ratio, Mapping) else max_ratio,
        "protect": [p if isinstance(p, str) else p.__name__ for p in protect],
        "fold_bias": fold_bias, "allow_inexact": allow_inexact, "exact_borders": exact_borders, "seed": seed, "silence": list(roles),
    }
    return make_plan(graph, model, removed, folds, notes, options, predictor, protected)


def make_plan(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, folds: list[Fold], notes: list[str],
              options: dict[str, Any], predictor: Predictor | None = None,
              protected: frozenset[int] = frozenset()) -> PruningPlan:
    """Freeze a removal decision into a :class:`PruningPlan` (predictions included)."""
    predictor = predictor or Predictor(graph, model)
    kept = graph.kept_fn(removed)
    slices = tuple(
        SliceDecision(s.module, s.param, s.dim, s.role, int(s.units.size), tuple(np.flatnonzero(~removed[s.units]).tolist()))
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
    extra = _fold_bias_params(graph, model, removed, folds)
    none = np.zeros(graph.num_units, bool)
    inputs = graph.traced.example_inputs
    return PruningPlan(
        model=type(model).__name__,
        fingerprint=fingerprint(model),
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


def _fold_bias_params(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, folds: Iterable[Fold]) -> int:
    """Parameters folding adds: a consumer without a bias gets one."""
    extra = 0
    for f in folds:
        m = model.get_submodule(f.module)
        if not isinstance(m, nn.MultiheadAttention) and getattr(m, "bias", None) is None:
            extra += int(np.count_nonzero(~removed[_out_units(graph, f.module)]))
    return extra


def _relative(names: Iterable[Any], path: str) -> list[Any]:
    """Names inside ``path`` made relative to it; types pass through."""
    return [n[len(path) + 1:] if isinstance(n, str) else n for n in names
            if not isinstance(n, str) or n.startswith(path + ".")]


def _plan_regions(model: nn.Module, error: TraceError, ratio: float | None, example_inputs: Any,
                  opaque: Iterable[str | type], protect: Iterable[str | type], kwargs: dict[str, Any]) -> PruningPlan:
    """Plan every traceable region of a model fx cannot trace whole, and compose the plans."""
    opaque, protect = list(opaque), list(protect)
    _check_protect(model, protect)
    regions, unreached = find_regions(model, example_inputs, opaque)
    if not regions:
        raise error
    subplans: list[tuple[str, PruningPlan]] = []
    for r in regions:
        if any(isinstance(p, str) and (p == r.path or r.path.startswith(p + ".") or p == "") for p in protect):
            continue
        sub = model.get_submodule(r.path)
        if has_module_rule(type(sub)) or next(sub.parameters(), None) is None:
            continue  # one layer (every channel on the region's boundary), or nothing to prune
        sub_kwargs = dict(kwargs)
        if isinstance(kwargs["max_ratio"], Mapping):
            sub_kwargs["max_ratio"] = dict(zip(_relative(kwargs["max_ratio"], r.path),
                                               [v for k, v in kwargs["max_ratio"].items() if k.startswith(r.path + ".")]))
        sp = plan(sub, ratio, example_inputs=r.inputs, opaque=_relative(opaque, r.path),
                  protect=_relative(protect, r.path), **sub_kwargs)
        if sp.prunable_channels:
            subplans.append((r.path, sp))
    if not subplans:  # nothing to gain from regions: the trace error is the honest answer
        raise error
    return _compose(model, subplans, regions, unreached, error, ratio, example_inputs, kwargs)


def _compose(model: nn.Module, subplans: list[tuple[str, PruningPlan]], regions: list, unreached: list[str],
             error: TraceError, ratio: float | None, example_inputs: Any, kwargs: dict[str, Any]) -> PruningPlan:
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
    options = {k: v for k, v in kwargs.items()}
    options.update(ratio=ratio, importance=kwargs["importance"] if isinstance(kwargs["importance"], str) else "callable",
                   max_ratio=dict(kwargs["max_ratio"]) if isinstance(kwargs["max_ratio"], Mapping) else kwargs["max_ratio"],
                   silence=list(silence_roles(kwargs["threshold"] is not None)), protect=[], regions=True)
    shapes = tuple(tuple(x.shape) for x in (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,))
                   if isinstance(x, torch.Tensor))
    return PruningPlan(
        model=type(model).__name__, fingerprint=fingerprint(model), input_shapes=shapes,
        options=tuple(sorted(options.items())), groups=tuple(groups), slices=tuple(slices), folds=tuple(folds),
        edits=(), opaque=(), params_before=before, params_after=after, flops_before=flops_before,
        flops_after=flops_after, barriers=tuple(barriers), notes=tuple(notes), regions=tuple(subplans),
    )


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
    names = [k for k, v in vars(owner).items() if not k.startswith("_") and type(v) is type(old) and v == old]
    if len(names) != 1 or f"self.{names[0]}" not in _method_source(type(owner)):
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


def apply(model: nn.Module, plan: PruningPlan, *, inplace: bool = False) -> nn.Module:
    """Build the pruned model a plan describes.

    Args:
        model: the model the plan was made for (checked by fingerprint).
        plan: from :func:`plan`.
        inplace: modify ``model`` itself instead of a copy. (When the plan rewrites literal
            sizes in ``forward``, a ``GraphModule`` wrapping the modified model is returned.)

    Returns:
        A physically smaller module computing what ``silence(model, plan)`` computes.

    Raises:
        PlanMismatchError: the plan was made for another model.
    """
    return apply_plan(model, plan, inplace=inplace)


def prune(model: nn.Module, ratio: float | None = None, *, inplace: bool = False, **kwargs: Any) -> nn.Module:
    """Plan and apply in one call: ``slimprune.prune(model, 0.5)``. See :func:`plan` for options."""
    return apply(model, plan(model, ratio, **kwargs), inplace=inplace)
