"""Sparsity training for network slimming: an L1 penalty on the scaling factors γ of norm layers.

Network slimming (Liu et al., ICCV 2017) trains with ``λ·Σ|γ|`` added to the loss, so that
the BatchNorm scales of unimportant channels go to zero and those channels can be removed
with ``slimprune.plan(model, threshold=...)``. This module regularises exactly the scales
that such a plan can remove: the ``"scale"`` slices (BN γ, GroupNorm/LayerNorm weight) of
channels in a prunable group of :func:`slimprune.analyze` (of each traceable region, for a
model fx cannot trace whole, as :func:`slimprune.plan` prunes it). Channels that are kept anyway
(tied to a model output, behind an op without a channel rule, or named in ``protect``)
are left alone, so a detection head's outputs keep their scales.

    >>> reg = SparsityRegularizer(model, lam=default_lambda(model))
    >>> for step, (x, y) in enumerate(loader):
    ...     loss = criterion(model(x), y)
    ...     optimizer.zero_grad()
    ...     loss.backward()
    ...     reg.step(step)                 # grad += λ·sign(γ), after backward, before the update
    ...     optimizer.step()
    >>> print(gamma_stats(model))
    >>> t = suggest_threshold(model, 0.5)   # the smallest threshold removing half the parameters
    >>> small = slimprune.prune(model, threshold=t)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._bisect import first_true
from ._checks import check_eager, is_real
from ._gamma import abs_gamma, unit_gamma_max
from ._graph import ChannelGraph
from ._parallel import unwrap_parallel
from ._plan import PruningPlan
from ._analysis import Analysis, analyze
from ._options import _protect_entries, _relative, check_protect, protected_units, protects_whole
from ._prune import plan as make_plan
from ._solver import Predictor
from .errors import InfeasiblePlanError, InvalidArgumentError

__all__ = [
    "COSTS",
    "Schedule",
    "SparsityRegularizer",
    "constant",
    "default_lambda",
    "gamma_stats",
    "linear_decay",
    "scale_per_cost",
    "suggest_ratio",
    "suggest_threshold",
    "warmup",
]

Schedule = Callable[[int], float]

# λ of the original network slimming experiments: 1e-4 for VGG-style chains, 1e-5 for
# ResNet and DenseNet, whose residual streams tie many layers' channels together.
_LAMBDA_PLAIN = 1e-4
_LAMBDA_RESIDUAL = 1e-5

_PERCENTILES = (1, 5, 25, 50, 75, 95, 99)

#: What a channel's λ can be scaled by (``SparsityRegularizer(cost=...)``).
COSTS: tuple[str, ...] = ("uniform", "flops", "params")


# ---------------------------------------------------------------------------- schedules


def constant(step: int) -> float:
    """The schedule that always applies the full λ."""
    return 1.0


@dataclass(frozen=True)
class _Warmup:
    steps: int

    def __call__(self, step: int) -> float:
        return min(1.0, max(0.0, step / self.steps))


@dataclass(frozen=True)
class _LinearDecay:
    total_steps: int

    def __call__(self, step: int) -> float:
        return min(1.0, max(0.0, 1.0 - step / self.total_steps))


def _positive_steps(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int (a number of optimizer steps), got {value!r}")
    return value


def warmup(steps: int) -> Schedule:
    """A schedule that ramps λ linearly from 0 at step 0 to the full λ at ``steps``, then holds it.

    Example:
        >>> warmup(100)(25)
        0.25
    """
    return _Warmup(_positive_steps("warmup steps", steps))


def linear_decay(total_steps: int) -> Schedule:
    """A schedule that lowers λ linearly from the full λ at step 0 to 0 at ``total_steps``.

    Example:
        >>> linear_decay(100)(75)
        0.25
    """
    return _LinearDecay(_positive_steps("total_steps", total_steps))


# ------------------------------------------------------------------ which scales count


@dataclass(frozen=True, eq=False)  # compared by identity: it holds a parameter
class _Scale:
    """One regularised norm weight, which of its channels count (None: all), their graph units
    and the index of the traced part (:class:`_Part`) those units belong to."""

    module: str
    param: nn.Parameter
    mask: torch.Tensor | None
    units: np.ndarray | None = None
    part: int = 0


@dataclass(frozen=True, eq=False)
class _Part:
    """A traced part of a model: the whole model, or (for a model fx cannot trace whole,
    planned by regions like an Ultralytics ``DetectionModel``) one of its regions."""

    path: str  # "" for the whole model
    module: nn.Module
    graph: ChannelGraph


def _parts(model: nn.Module, example_inputs: Any, graph: ChannelGraph | None = None, warn: bool = True) -> list[_Part]:
    """The parts :func:`slimprune.plan` would prune: the whole model when it traces, else its
    plannable regions (recursively, as ``plan()`` finds them)."""
    if graph is not None:
        return [_Part("", model, graph)]
    return list(_analysis_parts(analyze(model, example_inputs, warn=warn, regions=True), ""))


def _analysis_parts(analysis: Analysis, prefix: str) -> Iterator[_Part]:
    if not analysis.by_regions:
        assert analysis.graph is not None
        yield _Part(prefix, analysis.model, analysis.graph)
        return
    for r in analysis.regions:
        if r.plannable:
            yield from _analysis_parts(analysis.region(r), f"{prefix}.{r.path}" if prefix else r.path)


def _within(protect: tuple[str | type, ...], path: str) -> tuple[str | type, ...] | None:
    """``protect`` made relative to the part at ``path``; None when it protects the part whole."""
    if not path:
        return protect
    if protects_whole(protect, path):
        return None
    return _relative(protect, path)


def _scales_and_parts(
    model: nn.Module, example_inputs: Any, protect: Iterable[str | type], graph: ChannelGraph | None = None
) -> tuple[list[_Scale], list[_Part]]:
    """The scale-role slices of prunable, unprotected channels, found by analysing the graph:
    the whole model's or, for a model planned by regions, each region's (names are the
    whole model's)."""
    protect = check_protect(model, protect)
    parts = _parts(model, example_inputs, graph)
    out = []
    for index, part in enumerate(parts):
        rel = _within(protect, part.path)
        if rel is None:
            continue
        protected = protected_units(part.graph, part.module, rel)
        free = part.graph.unit_to_group >= 0
        if protected:
            free[list(protected)] = False
        for s in part.graph.slices:
            if s.role != "scale":
                continue
            owner = part.module.get_submodule(s.module) if s.module else part.module
            param = getattr(owner, s.param)
            if not isinstance(param, nn.Parameter) or not param.requires_grad:
                continue
            mask = free[s.units]
            if not mask.any():
                continue
            name = ".".join(p for p in (part.path, s.module) if p)
            out.append(_Scale(name, param, None if mask.all() else torch.from_numpy(mask.copy()), s.units, index))
    return out, parts


def _prunable_scales(
    model: nn.Module, example_inputs: Any, protect: Iterable[str | type], graph: ChannelGraph | None = None
) -> list[_Scale]:
    """The scale-role slices of prunable, unprotected channels (see :func:`_scales_and_parts`)."""
    return _scales_and_parts(model, example_inputs, protect, graph)[0]


def _unit_costs(graph: ChannelGraph, model: nn.Module, resource: str) -> np.ndarray:
    """What removing each channel unit alone saves: MACs (``"flops"``) or parameters (``"params"``).

    The saving is exact for that one unit with every other channel kept. Units that sit in the
    same parameter slices save the same, so the pruned count is computed once per such pattern.
    """
    predictor = Predictor(graph, model)
    count = predictor.macs if resource == "flops" else predictor.params
    none = np.zeros(graph.num_units, dtype=bool)
    full = count(none)
    pattern: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for i, s in enumerate(graph.slices):
        units, times = np.unique(s.units, return_counts=True)
        for u, n in zip(units.tolist(), times.tolist()):
            pattern[u].append((i, n))
    saved: dict[tuple[tuple[int, int], ...], int] = {}
    costs = np.zeros(graph.num_units, dtype=np.float64)
    for u, key in pattern.items():
        k = tuple(key)
        if k not in saved:
            removed = none.copy()
            removed[u] = True
            saved[k] = full - count(removed)
        costs[u] = saved[k]
    return costs


def _cost_weights(scales: list[_Scale], parts: list[_Part], resource: str) -> list[torch.Tensor]:
    """Per-channel multipliers of λ, proportional to what removing each channel alone saves
    (:func:`_unit_costs` in its part), averaging 1 over the regularised channels."""
    costs = {i: _unit_costs(parts[i].graph, parts[i].module, resource) for i in sorted({s.part for s in scales})}
    raw = [torch.from_numpy(costs[s.part][s.units].astype(np.float32)) for s in scales]
    counted = torch.cat([w if s.mask is None else w[s.mask] for w, s in zip(raw, scales)])
    mean = float(counted.mean()) if counted.numel() else 0.0
    if mean <= 0:
        raise InvalidArgumentError(
            "no regularised channel costs anything, so cost weighting is undefined; use cost='uniform'"
        )
    return [w / mean for w in raw]


def _named_scales(model: nn.Module, bn_modules: Iterable[str | nn.Module]) -> list[_Scale]:
    """Every channel of the weights of the norm layers the caller names (no analysis)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for item in bn_modules:
        if isinstance(item, str):
            try:
                module = model.get_submodule(item)
            except AttributeError:
                raise InvalidArgumentError(
                    f"bn_modules names {item!r}, which {type(model).__name__} does not have; "
                    f"use names from model.named_modules()"
                ) from None
            name = item
        elif isinstance(item, nn.Module):
            if id(item) not in names:
                raise InvalidArgumentError(f"bn_modules holds a {type(item).__name__} that is not part of the model")
            module, name = item, names[id(item)]
        else:
            raise InvalidArgumentError(f"bn_modules entries are module names or modules, got {item!r}")
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
            raise InvalidArgumentError(
                f"bn_modules entry {name!r} ({type(module).__name__}) has no 1-D weight parameter to "
                f"regularise; name affine norm layers such as BatchNorm2d"
            )
        out.append(_Scale(name, weight, None))
    return out


def _plan_scales(model: nn.Module, plan: PruningPlan) -> list[_Scale]:
    """The scaling factors of exactly the channels ``plan`` removes (each norm weight masked to
    them); ``plan`` must have been made for ``model``. A plan of regions lists its regions'
    slices with whole-model names too, so its own slices are all there is to read."""
    if not isinstance(plan, PruningPlan):
        raise InvalidArgumentError(f"plan must be a slimprune.PruningPlan, got {type(plan).__name__}")
    plan.check_model(model)
    out: list[_Scale] = []
    for s in plan.slices:
        if s.role != "scale" or not s.removed:
            continue
        weight = getattr(model.get_submodule(s.module) if s.module else model, s.param)
        mask = torch.zeros(weight.shape[0], dtype=torch.bool)
        mask[list(s.removed)] = True
        out.append(_Scale(s.module, weight, mask))
    return out


# -------------------------------------------------------------------------- regulariser


class SparsityRegularizer:
    """L1 sparsity on the scaling factors γ of a model's prunable channels.

    Use one of two equivalent forms, not both:

    * ``step()``: after ``loss.backward()`` (and after ``scaler.unscale_(optimizer)`` with
      AMP), before ``optimizer.step()``: adds ``λ·sign(γ)`` to each regularised gradient,
      the update rule of the original network slimming code;
    * ``penalty()``: ``λ·Σ|γ|`` as a differentiable term to add to the loss.

    With ``DistributedDataParallel`` pass the wrapped model; it is analysed through
    ``.module``. After DDP's all-reduce every rank holds the same gradients and the same γ,
    so every rank adds the same sign term and the replicas stay identical.

    The regulariser keeps references to the norm weights, so it survives ``model.to()``
    but must be rebuilt if the parameters are replaced.

    Args:
        model: the model (plain, DataParallel or DistributedDataParallel); not modified.
        lam: λ, the weight of the L1 term (see :func:`default_lambda`).
        schedule: ``step -> multiplier`` of λ, e.g. :func:`warmup` or :func:`linear_decay`;
            :func:`constant` when None.
        protect: module names or types whose channels are not regularised (as in
            :func:`slimprune.plan`).
        example_inputs: inputs for tracing, as for :func:`slimprune.analyze`. A model fx
            cannot trace whole (an Ultralytics ``DetectionModel``) is analysed region by
            region, as :func:`slimprune.plan` does: the scales regularised are those a plan of
            its regions can remove.
        bn_modules: instead of analysing the model, regularise every channel of these norm
            layers (names or modules), e.g. for a model no region of which traces.
        cost: ``"uniform"`` (default): every channel gets λ, as in network slimming.
            ``"flops"`` or ``"params"``: resource-aware sparsity; each channel's λ is scaled
            by the FLOPs (MACs at the ``example_inputs`` size) or parameters that removing it
            alone saves, normalised so that the weights average 1 over the regularised
            channels. Channels at high resolution then go first under ``"flops"``, wide
            late layers under ``"params"``. Needs the graph analysis (not ``bn_modules``).
        plan: instead of analysing the model, regularise exactly the channels this
            :class:`~slimprune.PruningPlan` of ``model`` removes (their scales, nothing else):
            the channels a later ``slimprune.apply(model, plan)`` cuts fade out first while
            training goes on, so that cutting them costs little (gradual pruning). The plan
            must have been made for this model (same parameter names and shapes).

    Raises:
        InvalidArgumentError: a bad ``lam``, ``schedule``, ``protect``, ``bn_modules``, ``cost`` or
            ``plan``, ``plan`` with ``bn_modules``/``protect``/another ``cost``, or a TorchScript
            model or submodule (regularise the eager module you will prune).
        PlanMismatchError: ``plan`` was made for another model.
        TraceError, ExampleInputError: the model cannot be analysed, whole or by regions
            (pass ``bn_modules``).

    Example:
        >>> reg = SparsityRegularizer(model, lam=1e-4, schedule=warmup(500))
        >>> loss.backward(); reg.step(step); optimizer.step()
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float = 1e-4,
        *,
        schedule: Schedule | None = None,
        protect: Iterable[str | type] = (),
        example_inputs: Any = None,
        bn_modules: Iterable[str | nn.Module] | None = None,
        cost: str = "uniform",
        plan: PruningPlan | None = None,
    ) -> None:
        check_eager(unwrap_parallel(model) if isinstance(model, nn.Module) else model)
        if plan is not None and (bn_modules is not None or _protect_entries(protect) or cost != "uniform"):
            raise InvalidArgumentError(
                "plan= names the channels to regularise itself; drop bn_modules, protect and cost "
                "(or drop plan and let the analysis choose the channels)"
            )
        if cost not in COSTS:
            raise InvalidArgumentError(
                f"cost={cost!r} is not one of {', '.join(map(repr, COSTS))}; "
                f"'uniform' is network slimming's λ for every channel"
            )
        if cost != "uniform" and bn_modules is not None:
            raise InvalidArgumentError(
                f"cost={cost!r} needs the model's channel graph to price each channel, but bn_modules skips the "
                f"analysis; drop bn_modules (pass example_inputs) or use cost='uniform'"
            )
        if not is_real(lam) or not math.isfinite(float(lam)) or lam < 0:
            raise InvalidArgumentError(f"lam must be a finite number >= 0 (the L1 weight λ), got {lam!r}")
        if schedule is not None and not callable(schedule):
            raise InvalidArgumentError(
                f"schedule must be a callable step -> multiplier (constant, warmup(n), linear_decay(n) "
                f"or your own), got {schedule!r}"
            )
        inner = unwrap_parallel(model)
        self._weights: list[torch.Tensor] | None = None
        if plan is not None:
            self._scales = _plan_scales(inner, plan)
        elif bn_modules is not None:
            self._scales = _named_scales(inner, bn_modules)
        else:
            self._scales, parts = _scales_and_parts(inner, example_inputs, protect)
            if cost != "uniform" and self._scales:
                self._weights = _cost_weights(self._scales, parts, cost)
        self.cost = cost
        self.lam = float(lam)
        self.schedule: Schedule = schedule if schedule is not None else constant
        self.steps_taken = 0
        self._multipliers: dict[tuple[int, torch.device, torch.dtype], torch.Tensor | None] = {}

    @property
    def layers(self) -> tuple[str, ...]:
        """Names of the modules whose scales are regularised."""
        return tuple(dict.fromkeys(s.module for s in self._scales))

    @property
    def channels(self) -> int:
        """How many scaling factors are regularised."""
        return sum(int(s.param.numel() if s.mask is None else s.mask.sum()) for s in self._scales)

    @property
    def channel_weights(self) -> dict[str, torch.Tensor]:
        """Each regularised layer's per-channel multiplier of λ (0 on channels left alone).

        All ones with ``cost="uniform"``; with ``"flops"``/``"params"`` they average 1 over
        the regularised channels.
        """
        out = {}
        for i, scale in enumerate(self._scales):
            w = torch.ones(scale.param.shape[0]) if self._weights is None else self._weights[i].clone()
            if scale.mask is not None:
                w = w * scale.mask.to(w.dtype)
            out[scale.module] = w
        return out

    def strength(self, step: int | None = None) -> float:
        """λ times the schedule's multiplier at ``step`` (the internal step count when None)."""
        step = self.steps_taken if step is None else step
        mult = float(self.schedule(step))
        if not math.isfinite(mult) or mult < 0:
            raise InvalidArgumentError(f"the schedule returned {mult!r} at step {step}; it must return a finite number >= 0")
        return self.lam * mult

    def _mask(self, scale: _Scale, like: torch.Tensor) -> torch.Tensor | None:
        """The channel multipliers of ``scale`` on ``like``'s device: its mask times its cost weights."""
        key = (id(scale), like.device, like.dtype)
        if key not in self._multipliers:
            mult = None
            if self._weights is not None:
                mult = self._weights[self._scales.index(scale)]
            if scale.mask is not None:
                mult = scale.mask.float() if mult is None else mult * scale.mask.float()
            self._multipliers[key] = None if mult is None else mult.to(device=like.device, dtype=like.dtype)
        return self._multipliers[key]

    @torch.no_grad()
    def step(self, step: int | None = None) -> None:
        """Add ``λ·sign(γ)`` to the gradient of every regularised scale.

        Call it after ``loss.backward()`` (after ``scaler.unscale_(optimizer)`` with a
        GradScaler, since the term is in unscaled units) and before ``optimizer.step()``.
        A scale without a gradient gets the term as its gradient.

        Args:
            step: the optimizer step, for the schedule; when None an internal counter is used
                (it counts calls of this method).
        """
        lam = self.strength(step)
        self.steps_taken = (self.steps_taken if step is None else step) + 1
        if lam == 0:
            return
        for scale in self._scales:
            p = scale.param
            term = torch.sign(p.detach()).mul_(lam)
            mask = self._mask(scale, term)
            if mask is not None:
                term.mul_(mask)
            if p.grad is None:
                p.grad = term
            else:
                p.grad.add_(term.to(p.grad.dtype))

    def penalty(self, step: int | None = None) -> torch.Tensor:
        """``λ·Σ|γ|`` over the regularised channels, differentiable: add it to the loss.

        Args:
            step: the step for the schedule (the internal counter when None; this method
                does not advance it).

        Returns:
            A scalar tensor on the scales' device (0 when nothing is regularised).
        """
        lam = self.strength(step)
        total: torch.Tensor | None = None
        for scale in self._scales:
            a = scale.param.abs()
            mask = self._mask(scale, a)
            term = (a * mask).sum() if mask is not None else a.sum()
            total = term if total is None else total + term.to(total.device)
        if total is None:
            return torch.zeros(())
        return total * lam

    def __repr__(self) -> str:
        cost = "" if self.cost == "uniform" else f"cost={self.cost!r}, "
        return (
            f"SparsityRegularizer(lam={self.lam:g}, {cost}schedule={self.schedule!r}, "
            f"{self.channels} channels in {len(self.layers)} layers)"
        )


# --------------------------------------------------------------------------- defaults


def _is_residual(model: nn.Module, example_inputs: Any) -> bool:
    """True if some channel group (of the model, or of a region of a model planned by regions)
    is written by more than one dense producer (a residual add)."""
    for part in _parts(model, example_inputs, warn=False):
        modules = dict(part.module.named_modules())
        for group in part.graph.groups:
            producers = set()
            for i in group.members:
                s = part.graph.slices[i]
                if s.role != "out" or s.param != "weight" or s.dim != 0:
                    continue
                # A grouped or depthwise conv passes its input channels through; it adds no stream.
                if getattr(modules.get(s.module), "groups", 1) == 1:
                    producers.add(s.module)
            if len(producers) > 1:
                return True
    return False


def default_lambda(model: nn.Module, example_inputs: Any = None) -> float:
    """λ as the original network slimming chose it: 1e-4 for plain chains, 1e-5 for residual nets.

    A network counts as residual when one channel group is written by two or more dense
    (ungrouped) convs or linear layers, which is what an addition of two branches does.

    Example:
        >>> default_lambda(torchvision.models.vgg11_bn())
        0.0001
    """
    return _LAMBDA_RESIDUAL if _is_residual(unwrap_parallel(model), example_inputs) else _LAMBDA_PLAIN


# --------------------------------------------------------------------------- insight


def _prunable_gammas(model: nn.Module, example_inputs: Any, protect: Iterable[str | type],
                     graph: ChannelGraph | None = None) -> np.ndarray:
    values = []
    for scale in _prunable_scales(unwrap_parallel(model), example_inputs, protect, graph):
        g = abs_gamma(scale.param)
        if scale.mask is not None:
            g = g[scale.mask]
        values.append(g.numpy().astype(np.float64))
    return np.concatenate(values) if values else np.zeros(0)


def gamma_stats(
    model: nn.Module,
    thresholds: Sequence[float] = (1e-3, 1e-2, 1e-1),
    *,
    example_inputs: Any = None,
    protect: Iterable[str | type] = (),
) -> dict[str, Any]:
    """How small the scaling factors |γ| of the prunable channels are.

    Args:
        model: the model (plain or wrapped in DDP).
        thresholds: count the channels with |γ| at most each of these (the channels a
            ``threshold=`` plan may remove).
        example_inputs, protect: as for :class:`SparsityRegularizer`.

    Returns:
        ``{"count": n, "percentiles": {1: ..., 5: ..., 25: ..., 50: ..., 75: ..., 95: ..., 99: ...},
        "below": {threshold: count, ...}}``; percentiles are NaN when there is no channel.

    Example:
        >>> gamma_stats(model)["below"][1e-2]
        112
    """
    g = _prunable_gammas(model, example_inputs, protect)
    pct = np.percentile(g, _PERCENTILES) if g.size else np.full(len(_PERCENTILES), np.nan)
    return {
        "count": int(g.size),
        "percentiles": {p: float(v) for p, v in zip(_PERCENTILES, pct)},
        "below": {float(t): int((g <= t).sum()) for t in thresholds},
    }


def _check_fraction(target_params: Any) -> float:
    if not is_real(target_params) or not 0 < float(target_params) < 1:
        raise InvalidArgumentError(f"target_params must be a fraction in (0, 1) of the parameters to remove, got {target_params!r}")
    return float(target_params)


def _removed_fraction(plan: Any) -> float:
    return 1.0 - plan.params_after / plan.params_before if plan.params_before else 0.0


def _smallest(candidates: Sequence[float], removes: Callable[[float], float], target: float, what: str) -> float:
    """The first candidate (in increasing order) whose plan removes at least ``target``: bisection."""
    best = removes(candidates[-1])
    if best + 1e-12 < target:
        raise InfeasiblePlanError(
            f"no {what} removes {target:.1%} of the parameters: the largest ({candidates[-1]:.4g}) "
            f"removes {best:.1%}. Lower target_params or relax min_channels/max_ratio/protect."
        )
    last = len(candidates) - 1  # known to reach the target
    return float(candidates[first_true(0, last, lambda i: removes(candidates[i]) + 1e-12 >= target)])


def _analysis_of(model: nn.Module, example_inputs: Any, plan_kwargs: dict[str, Any],
                 regions: bool) -> tuple[Analysis, dict[str, Any]]:
    """One analysis for every plan of a search, and the plan options left for ``plan()``."""
    kwargs = dict(plan_kwargs)
    opaque = kwargs.pop("opaque", ())
    return analyze(model, example_inputs, opaque, regions=regions), kwargs


def suggest_threshold(model: nn.Module, target_params: float, example_inputs: Any = None, **plan_kwargs: Any) -> float:
    """The smallest threshold whose ``slimprune.plan(model, threshold=t)`` removes ``target_params``.

    Bisects over the sorted |γ| of the prunable channels, so it makes about
    ``log2(channels)`` calls of :func:`slimprune.plan`.

    Args:
        model: a (sparsity-trained) model; not modified.
        target_params: the fraction of parameters to remove, in (0, 1).
        example_inputs: as for :func:`slimprune.plan`.
        **plan_kwargs: other options of :func:`slimprune.plan` (``protect``, ``min_channels``...).

    Returns:
        A threshold that is one of the model's |γ| values.

    Raises:
        InfeasiblePlanError: even the largest |γ| does not remove that much.

    Example:
        >>> t = suggest_threshold(model, 0.5)
        >>> small = slimprune.prune(model, threshold=t)
    """
    target = _check_fraction(target_params)
    model = unwrap_parallel(model)
    analysis, plan_kwargs = _analysis_of(model, example_inputs, plan_kwargs, regions=True)
    protect = plan_kwargs.get("protect", ())
    # The candidates are the |γ| of the channels prunable without opaque modules, as always.
    base = None if analysis.opaque else analysis.graph
    gammas = np.unique(_prunable_gammas(model, example_inputs, protect, base))
    if not gammas.size:
        raise InfeasiblePlanError(f"{type(model).__name__} has no prunable channel with a scaling factor to threshold")
    cache: dict[float, float] = {}

    def removes(t: float) -> float:
        if t not in cache:
            cache[t] = _removed_fraction(make_plan(analysis, threshold=float(t), **plan_kwargs))
        return cache[t]

    return _smallest(gammas.tolist(), removes, target, "threshold")


def suggest_ratio(model: nn.Module, target_params: float, example_inputs: Any = None, **plan_kwargs: Any) -> float:
    """The smallest channel ratio whose ``slimprune.plan(model, ratio)`` removes ``target_params``.

    This is the global channel percentile network slimming reports ("prune 70% of the
    channels"); ``slimprune.plan(model, target_params, target="params")`` reaches the same
    parameter fraction directly. Bisects over ``k / prunable_channels``.

    Args, Raises: as for :func:`suggest_threshold`.

    Returns:
        A ratio ``k / n`` for n the number of prunable channels.
    """
    target = _check_fraction(target_params)
    model = unwrap_parallel(model)
    analysis, plan_kwargs = _analysis_of(model, example_inputs, plan_kwargs, regions=True)
    n = make_plan(analysis, 0.0, **plan_kwargs).prunable_channels
    if n == 0:
        raise InfeasiblePlanError(f"{type(model).__name__} has no prunable channel")

    def feasible(k: int) -> bool:
        try:
            make_plan(analysis, k / n, **plan_kwargs)
        except InfeasiblePlanError:  # more channels than min_channels/max_ratio allow
            return False
        return True

    # the largest k the constraints allow (0 always is): feasibility is monotone in k
    lo = first_true(1, n, lambda k: not feasible(k)) - 1
    cache: dict[float, float] = {}

    def removes(r: float) -> float:
        if r not in cache:
            cache[r] = _removed_fraction(make_plan(analysis, r, **plan_kwargs))
        return cache[r]

    return _smallest([k / n for k in range(lo + 1)], removes, target, "channel ratio")


# ------------------------------------------------------------- resource-aware ranking


def scale_per_cost(resource: str = "flops") -> Callable[[nn.Module, ChannelGraph, Any], np.ndarray]:
    """An importance for :func:`slimprune.plan`: a channel's |γ| divided by what it costs.

    Network slimming ranks channels by |γ| alone, so a plan with ``target="flops"`` spends
    its budget on whichever channels have small scales, often cheap ones in late, low
    resolution layers, and must remove many to reach the target. Dividing by the FLOPs (or
    parameters) that removing the channel alone saves ranks by importance per unit of
    resource instead: expensive high-resolution channels go before cheap ones of equal |γ|.
    A channel's |γ| is the largest over its norm layers; a unit without any scale scores 0.

    Args:
        resource: ``"flops"`` or ``"params"``.

    Example:
        >>> plan = slimprune.plan(model, 0.6, target="flops", importance=scale_per_cost("flops"))
    """
    if resource not in COSTS[1:]:
        raise InvalidArgumentError(f"resource={resource!r} is not one of {', '.join(map(repr, COSTS[1:]))}")
    cache: dict[int, tuple[ChannelGraph, np.ndarray]] = {}

    def importance(model: nn.Module, graph: ChannelGraph, group: Any) -> np.ndarray:
        if id(graph) not in cache or cache[id(graph)][0] is not graph:
            gamma = np.maximum(unit_gamma_max(graph, model), 0.0)  # 0 where no scale slices a unit
            costs = _unit_costs(graph, model, resource)
            cache.clear()
            cache[id(graph)] = (graph, gamma / np.maximum(costs, 1.0))
        return cache[id(graph)][1][group.units]

    importance.__name__ = f"scale_per_{resource}"
    return importance
