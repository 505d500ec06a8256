"""One analysis, many plans: what ``plan()`` needs to plan a model again without tracing it.

``analyze(model)`` traces once and keeps the traced graph with its shapes, the
:class:`~slimprune._graph.ChannelGraph`, the cost predictor, the model it describes and a
cache of constant-probe results. ``plan(analysis, ...)`` accepts it in place of the model
and gives the plan ``plan(model, ...)`` gives.

What an analysis may be reused for:

* **Weights changed** (an optimiser step, ``load_state_dict``): the channel graph depends
  on names and shapes only, so it stays valid; scores are read from the model at every
  plan, and the probe cache notices the change (a version counter of every parameter
  and buffer) and probes again.
* **Structure changed** (the model was pruned in place, a layer replaced, a dtype changed)
  or **mode changed** (analysed in eval, now in train: the traced graph can differ):
  planning refuses with :class:`~slimprune.errors.InvalidArgumentError` saying to analyse
  again.

Attribute reads of the old return value (a ``ChannelGraph``: ``.groups``, ``.slices``,
``.traced``, ``.consumers``, ``.to_networkx()`` ...) are forwarded to :attr:`Analysis.graph`,
so code written against it keeps working; new code reads ``analysis.graph`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from ._checks import check_eager
from ._folding import ProbeCache
from ._gc_pause import gc_paused
from ._graph import ChannelGraph, build_channel_graph
from ._options import check_opaque
from ._plan import fingerprint
from ._regions import Region, find_regions
from ._score_cache import ScoreCache
from ._solver import Predictor
from ._trace import trace
from .errors import InvalidArgumentError, TraceError
from .rules import has_module_rule

__all__ = ["Analysis", "RegionAnalysis", "analyze"]

# What the ChannelGraph offered callers of the old analyze(); read through Analysis.
_GRAPH_ATTRS = frozenset(f.name for f in fields(ChannelGraph)) | {
    "kept_fn", "gm", "graphs", "group_of", "to_networkx", "clusters"}


@dataclass(frozen=True)
class RegionAnalysis:
    """A traceable region of a model fx cannot trace whole: its path and recorded inputs.

    The region's own :class:`Analysis` is made on first use (``Analysis.region``), so a
    region a plan protects is never traced, as before.
    """

    path: str
    inputs: tuple[Any, ...] = field(repr=False)
    plannable: bool  # False: one layer (every channel on the boundary) or no parameters


@dataclass(frozen=True, eq=False)
class Analysis:
    """The analysis of one model, reusable by :func:`slimprune.plan` (compared by identity).

    Attributes:
        model: the model it describes (not copied; planning reads its current weights).
        graph: the channel graph, or None when the model is planned region by region.
        predictor: parameter and FLOP predictions from the graph (None for regions).
        opaque: the opaque modules it was traced with.
        example_inputs: the inputs it was traced on (as given, for a region-planned model).
        regions: for a model fx cannot trace whole, its traceable regions.
        unreached: parts of such a model no region covers.
        trace_error: why the whole model does not trace (regions only).
        prune_outputs: whether the graph lets the returned widths go (see
            :meth:`with_prune_outputs`; ``plan(analysis, prune_outputs=...)`` picks the one it needs).
    """

    model: nn.Module
    graph: ChannelGraph | None
    predictor: Predictor | None
    opaque: tuple[str | type, ...]
    example_inputs: Any = field(repr=False)
    regions: tuple[RegionAnalysis, ...] = ()
    unreached: tuple[str, ...] = ()
    trace_error: TraceError | None = field(default=None, repr=False)
    training: bool = field(default=False, repr=False)
    structure: str = field(default="", repr=False)  # fingerprint: names, shapes, dtypes
    probes: ProbeCache | None = field(default=None, repr=False, compare=False)
    scores: ScoreCache | None = field(default=None, repr=False, compare=False)
    _subs: dict[str, Analysis] = field(default_factory=dict, repr=False, compare=False)
    warn: bool = field(default=True, repr=False)
    prune_outputs: bool = field(default=False, repr=False)
    _variants: dict[bool, Analysis] = field(default_factory=dict, repr=False, compare=False)

    @property
    def by_regions(self) -> bool:
        """True when the model is planned region by region (fx cannot trace it whole)."""
        return self.graph is None

    def check_current(self) -> None:
        """Refuse to plan when the model's structure or mode changed since the analysis."""
        if fingerprint(self.model) != self.structure:
            raise InvalidArgumentError(
                f"this Analysis describes {type(self.model).__name__} as it was when analysed, but the model's "
                f"parameter names, shapes or dtypes have changed since (pruned in place? a layer replaced?); "
                f"analyse it again: slimprune.analyze(model)"
            )
        if self.model.training != self.training:
            was, now = ("train", "eval") if self.training else ("eval", "train")
            raise InvalidArgumentError(
                f"{type(self.model).__name__} was analysed in {was} mode and is now in {now} mode, and its traced "
                f"graph may differ between the modes; call model.{was}() before planning, or analyse it again"
            )

    def with_prune_outputs(self, prune_outputs: bool) -> Analysis:
        """This analysis with the returned widths kept (False) or free to go (True).

        The other one is built from the same traced graph on first use (nothing is traced
        again) and kept. A model planned region by region cannot free them: a region's
        outputs feed the rest of the model, and only the model's own outputs could go."""
        if prune_outputs == self.prune_outputs:
            return self
        if self.graph is None:
            raise InvalidArgumentError(
                f"prune_outputs=True lets the widths {type(self.model).__name__} returns go, but fx cannot trace "
                f"it whole: it is planned region by region, and a region's outputs feed the rest of the model. "
                f"Plan it with prune_outputs=False (the default), or make its forward traceable as a whole"
            )
        if prune_outputs not in self._variants:
            graph = build_channel_graph(self.graph.traced, warn=False, keep_outputs=not prune_outputs)
            scores = ScoreCache()
            self._variants[prune_outputs] = Analysis(
                self.model, graph, Predictor(graph, self.model), self.opaque, self.example_inputs,
                training=self.training, structure=self.structure, probes=ProbeCache(self.model, scores=scores),
                scores=scores, warn=self.warn, prune_outputs=prune_outputs)
        return self._variants[prune_outputs]

    def region(self, r: RegionAnalysis) -> Analysis:
        """The analysis of one region's submodule, made on first use."""
        if r.path not in self._subs:
            rel = tuple(o[len(r.path) + 1:] if isinstance(o, str) else o for o in self.opaque
                        if not isinstance(o, str) or o.startswith(r.path + "."))
            self._subs[r.path] = analyze_for_plan(self.model.get_submodule(r.path), r.inputs, rel, self.warn)
        return self._subs[r.path]

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the ChannelGraph's fields and methods.
        if name in _GRAPH_ATTRS:
            graph = self.__dict__.get("graph")
            if graph is None:
                raise AttributeError(
                    f"{type(self.__dict__.get('model')).__name__} is planned region by region (fx cannot trace "
                    f"it whole), so its Analysis has no single channel graph to read {name!r} from; read "
                    f"analysis.region(r).graph for r in analysis.regions"
                )
            return getattr(graph, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _whole(model: nn.Module, example_inputs: Any, opaque: tuple[str | type, ...], warn: bool,
           prune_outputs: bool = False) -> Analysis:
    graph = build_channel_graph(trace(model, example_inputs, opaque, has_module_rule), warn=warn,
                                keep_outputs=not prune_outputs)
    scores = ScoreCache()
    return Analysis(model, graph, Predictor(graph, model), opaque, graph.traced.example_inputs,
                    training=model.training, structure=fingerprint(model),
                    probes=ProbeCache(model, scores=scores), scores=scores, warn=warn, prune_outputs=prune_outputs)


def _by_regions(model: nn.Module, example_inputs: Any, opaque: tuple[str | type, ...], warn: bool,
                error: TraceError) -> Analysis:
    found, unreached = find_regions(model, example_inputs, list(opaque))
    if not found:
        raise error
    regions = tuple(RegionAnalysis(r.path, r.inputs, _plannable(model, r)) for r in found)
    return Analysis(model, None, None, opaque, example_inputs, regions, tuple(unreached), error,
                    training=model.training, structure=fingerprint(model), warn=warn)


def _plannable(model: nn.Module, r: Region) -> bool:
    sub = model.get_submodule(r.path)
    return not has_module_rule(type(sub)) and next(sub.parameters(), None) is not None


def analyze_for_plan(model: nn.Module, example_inputs: Any, opaque: tuple[str | type, ...],
                     warn: bool = True, prune_outputs: bool = False) -> Analysis:
    """The analysis ``plan()`` makes: the whole model, else its traceable regions
    (``prune_outputs``: the whole model's graph lets its returned widths go)."""
    try:
        return _whole(model, example_inputs, opaque, warn, prune_outputs)
    except TraceError as exc:
        return _by_regions(model, example_inputs, opaque, warn, exc)


@gc_paused
def analyze(model: nn.Module, example_inputs: Any = None, opaque: Iterable[str | type] = (), warn: bool = True,
            *, regions: bool = False) -> Analysis:
    """Trace ``model`` once and build what :func:`slimprune.plan` needs to plan it again.

    Args:
        model: any ``nn.Module`` (not modified; the analysis refers to it).
        example_inputs: a tensor or tuple of positional inputs; built from the first layer
            when omitted.
        opaque: module names or types fx must not trace into; their channels are kept.
        warn: warn once about every op without a channel rule (a barrier).
        regions: when fx cannot trace the whole model (torchvision detectors), analyse its
            traceable regions instead of raising :class:`TraceError`, as ``plan()`` does.

    Returns:
        An :class:`Analysis`; ``analysis.graph`` is the :class:`ChannelGraph` (groups of
        channels that live or die together), whose attributes the analysis also reads
        through (``analysis.groups``). Pass it to ``plan()`` in place of the model.

    Raises:
        InvalidArgumentError: ``model`` is not an eager ``nn.Module`` (a TorchScript module,
            whole or nested), or ``opaque`` is not a list of module names and types.
        TraceError: fx cannot trace the model (and ``regions`` is False or no region traces).

    Example:
        >>> a = slimprune.analyze(model)
        >>> plans = [slimprune.plan(a, r) for r in (0.3, 0.5, 0.7)]   # traced once
    """
    check_eager(model)
    opaque = check_opaque(opaque)
    if regions:
        return analyze_for_plan(model, example_inputs, opaque, warn)
    return _whole(model, example_inputs, opaque, warn)
