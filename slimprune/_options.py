"""The options of one plan: a frozen, typed value validated when it is made.

``plan()`` keeps its keyword signature and builds a :class:`PlanOptions` from it; the
region composer, the sparsity searches and the CLI pass the value on instead of
re-listing its fields. Checks that need the model (module names in ``protect`` and
``max_ratio``) live in :meth:`PlanOptions.check_model`; protected units in
:func:`protected_units`, shared by the planner and the sparsity tools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from torch import nn

from ._checks import check_seed, is_real, names_list, real_number
from ._graph import ChannelGraph
from ._importance import IMPORTANCE
from ._solver import Constraints
from .errors import InvalidArgumentError

__all__ = ["PlanOptions", "TARGETS", "check_opaque", "check_protect", "protected_units", "silence_roles"]

TARGETS = ("channels", "params", "flops", "latency")


def silence_roles(threshold_mode: bool) -> tuple[str, ...]:
    """What silencing zeroes: the model as trained (threshold) or whole channels (ratio)."""
    return ("scale",) if threshold_mode else ("out", "scale", "source", "mean")


def check_opaque(opaque: Any) -> tuple[str | type, ...]:
    """``opaque`` as a tuple of module names and types."""
    items = names_list("opaque", opaque, "['backbone.head'] or [nn.MultiheadAttention]")
    for item in items:
        if not isinstance(item, (str, type)):
            raise InvalidArgumentError(
                f"opaque entries are module names (str) or module types, got {item!r} "
                f"({type(item).__name__}); use names from model.named_modules(), e.g. opaque=['layer1.0']"
            )
    return tuple(items)


def _protect_entries(protect: Any) -> tuple[str | type, ...]:
    """``protect`` as a tuple of module names and types (names not yet checked against a model)."""
    items = names_list("protect", protect, "['layer4'] or [nn.Linear]")
    for p in items:
        if not isinstance(p, (str, type)):
            raise InvalidArgumentError(
                f"protect entries are module names or module types, got {p!r} ({type(p).__name__}); "
                f"use names from model.named_modules(), e.g. protect=['layer4']"
            )
    return tuple(items)


def check_protect(model: nn.Module, protect: Any) -> tuple[str | type, ...]:
    """``protect`` as a tuple whose entries are module types or names of existing modules."""
    items = _protect_entries(protect)
    if not any(isinstance(p, str) for p in items):
        return items  # types only: nothing to look up
    modules = dict(model.named_modules())
    for p in items:
        if isinstance(p, str) and p not in modules:
            close = [m for m in modules if m and (p in m or m in p)][:5]
            raise InvalidArgumentError(
                f"protect names module {p!r}, which {type(model).__name__} does not have"
                + (f"; did you mean one of {close}?" if close else "")
                + " Use names from model.named_modules()."
            )
    return items


def protected_units(graph: ChannelGraph, model: nn.Module, protect: Iterable[str | type]) -> frozenset[int]:
    """Units with a slice in a protected module (by name, prefix or type)."""
    protect = check_protect(model, protect)
    if not protect:
        return frozenset()
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


def _count(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
        raise InvalidArgumentError(
            f"{name} must be an integer >= 1, got {value!r}"
            + (" (a layer never loses all its channels)" if name == "min_channels" else "")
        )
    return int(value)


def _fraction(v: Any, where: str) -> float:
    f = real_number(where, v, "a number in [0, 1] (the largest fraction of a channel group removed)")
    if not 0.0 <= f <= 1.0:
        raise InvalidArgumentError(f"{where} must lie in [0, 1] (the largest fraction of a channel group removed), got {v!r}")
    return f


def protects_whole(protect: Iterable[Any], path: str) -> bool:
    """Does a name in ``protect`` cover the submodule at ``path`` whole (``""``, the path
    itself or a module above it)? Types never do: they protect modules, not regions."""
    return any(isinstance(p, str) and (p == "" or p == path or path.startswith(p + ".")) for p in protect)


def _relative(names: Iterable[Any], path: str) -> tuple[Any, ...]:
    """Names inside ``path`` made relative to it; types pass through."""
    return tuple(n[len(path) + 1:] if isinstance(n, str) else n for n in names
                 if not isinstance(n, str) or n.startswith(path + "."))


@dataclass(frozen=True)
class PlanOptions:
    """Every option of :func:`slimprune.plan`, validated and normalised on construction.

    Numbers become ``float``/``int``, ``opaque`` and ``protect`` tuples, ``max_ratio`` a
    float or a ``{module name: float}`` dict. Raises :class:`InvalidArgumentError` with
    the same messages ``plan()`` always gave.
    """

    ratio: float | None = None
    threshold: float | None = None
    target: str = "channels"
    importance: str | Callable[..., Any] = "bn_scale"
    example_inputs: Any = field(default=None, compare=False, repr=False)
    opaque: tuple[str | type, ...] = ()
    protect: tuple[str | type, ...] = ()
    min_channels: int = 1
    round_to: int = 1
    max_ratio: float | Mapping[str, float] = 1.0
    fold_bias: bool = True
    allow_inexact: bool = True
    exact_borders: bool = False
    # the widths of the tensors the model returns may go too (the user reads fewer channels)
    prune_outputs: bool = False
    seed: int = 0
    # target="latency": where to time (slimprune.latency) and an optional ready cost table.
    device: str = "cpu"
    latency_table: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        ratio, threshold = self.ratio, self.threshold
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
        if self.target not in TARGETS:
            raise InvalidArgumentError(f"target must be one of {TARGETS}, got {self.target!r}")
        if threshold is not None and self.target != "channels":
            raise InvalidArgumentError("target= applies to ratio=; with threshold= the channels to remove are fixed")
        if not callable(self.importance) and self.importance not in IMPORTANCE:
            raise InvalidArgumentError(
                f"unknown importance {self.importance!r}; choose one of {', '.join(map(repr, IMPORTANCE))} "
                f"or pass a callable fn(model, graph, group) -> scores"
            )
        if not isinstance(self.prune_outputs, (bool, np.bool_)):
            raise InvalidArgumentError(
                f"prune_outputs must be True or False, got {self.prune_outputs!r}; True lets the widths of the "
                f"tensors the model returns go (its outputs get narrower), False (the default) keeps them"
            )
        opaque = check_opaque(self.opaque)
        protect = _protect_entries(self.protect)
        min_channels = _count("min_channels", self.min_channels)
        round_to: int | str = "auto" if self.round_to == "auto" else _count("round_to", self.round_to)
        if round_to == "auto" and self.target != "latency":
            raise InvalidArgumentError("round_to='auto' (widths at the kernels' staircase steps) needs target='latency'")
        if isinstance(self.max_ratio, Mapping):
            max_ratio: float | dict[str, float] = {
                key: _fraction(v, f"max_ratio[{key!r}]") for key, v in self.max_ratio.items()}
        else:
            max_ratio = _fraction(self.max_ratio, "max_ratio")
        normalised = dict(
            ratio=None if ratio is None else float(ratio),
            threshold=None if threshold is None else float(threshold),
            opaque=opaque, protect=protect, min_channels=min_channels, round_to=round_to,
            max_ratio=max_ratio, seed=check_seed(self.seed), prune_outputs=bool(self.prune_outputs),
        )
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @property
    def threshold_mode(self) -> bool:
        return self.threshold is not None

    def check_model(self, model: nn.Module) -> None:
        """Refuse module names in ``protect`` or ``max_ratio`` that ``model`` does not have."""
        check_protect(model, self.protect)
        if not isinstance(self.max_ratio, Mapping):
            return
        modules = dict(model.named_modules())
        for key in self.max_ratio:
            if not isinstance(key, str) or key not in modules:
                close = [m for m in modules if m and isinstance(key, str) and (key in m or m in key)][:5]
                raise InvalidArgumentError(
                    f"max_ratio names module {key!r}, which {type(model).__name__} does not have"
                    + (f"; did you mean one of {close}?" if close else "")
                    + " Keys are names from model.named_modules(), e.g. max_ratio={'layer1.0.conv1': 0.5}"
                )

    def constraints(self, protected: frozenset[int]) -> Constraints:
        """The solver's constraints for these options and the given protected units."""
        round_to = 1 if self.round_to == "auto" else int(self.round_to)
        return Constraints(self.min_channels, round_to, self.max_ratio, protected, self.allow_inexact)

    def within(self, path: str, inputs: Any) -> PlanOptions:
        """The options for the submodule at ``path`` (a region), run on ``inputs``."""
        max_ratio = self.max_ratio
        if isinstance(max_ratio, Mapping):
            max_ratio = {k[len(path) + 1:]: v for k, v in max_ratio.items() if k.startswith(path + ".")}
        return replace(self, example_inputs=inputs, opaque=_relative(self.opaque, path),
                       protect=_relative(self.protect, path), max_ratio=max_ratio)

    def record(self) -> dict[str, Any]:
        """The options as a plan stores them (JSON values: names for types and callables)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("example_inputs", "opaque", "latency_table"):
                continue  # the plan records the inputs' shapes and the opaque modules itself
            value = getattr(self, f.name)
            if f.name == "importance" and not isinstance(value, str):
                value = getattr(value, "__name__", "callable")
            elif f.name == "max_ratio" and isinstance(value, Mapping):
                value = dict(value)
            elif f.name == "protect":
                value = [p if isinstance(p, str) else p.__name__ for p in value]
            out[f.name] = value
        out["silence"] = list(silence_roles(self.threshold_mode))
        return out
