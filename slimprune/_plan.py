"""``PruningPlan``: the frozen, JSON-serialisable record of what a pruning removes."""

from __future__ import annotations

import hashlib
import json
import math
import operator
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ._checks import check_eager
from ._submodules import Submodules
from .errors import FileFormatError, PlanMismatchError

__all__ = ["PLAN_VERSION", "SliceDecision", "GroupDecision", "Fold", "PruningPlan", "fingerprint"]

PLAN_VERSION = 1


def fingerprint(model: nn.Module) -> str:
    """A hash of the model's class and of every parameter's and buffer's name, shape and dtype."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    h.update("".join(f"{name}:{tuple(t.shape)}:{t.dtype};" for name, t in tensors).encode())  # one update: same hash
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SliceDecision:
    """One dimension of one parameter after pruning: which indices stay."""

    module: str
    param: str
    dim: int
    role: str
    size: int
    kept: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.module + '.' if self.module else ''}{self.param}[{self.dim}]"

    @property
    def removed(self) -> tuple[int, ...]:
        keep = set(self.kept)
        return tuple(i for i in range(self.size) if i not in keep)


@dataclass(frozen=True)
class GroupDecision:
    """One channel group: its members, size, and the positions (in unit order) removed."""

    id: int
    members: tuple[str, ...]
    size: int
    removed: tuple[int, ...]
    exact: bool
    protected: bool = False


@dataclass(frozen=True)
class Fold:
    """Constants of removed input channels of one consumer, folded into its bias."""

    module: str
    node: str
    size: int  # the consumer's input width
    index: tuple[int, ...]
    value: tuple[float, ...]


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class PruningPlan:
    """What a pruning removes, and what it is predicted to save.

    Make one with :func:`slimprune.plan`, inspect it (``print(plan)``), save it
    (``plan.to_json()``) and apply it with :func:`slimprune.apply`.
    """

    model: str
    fingerprint: str
    input_shapes: tuple[tuple[int, ...], ...]
    options: tuple[tuple[str, Any], ...]
    groups: tuple[GroupDecision, ...]
    slices: tuple[SliceDecision, ...]
    folds: tuple[Fold, ...]
    edits: tuple[str, ...]  # JSON-encoded graph edits (see slimprune._edits)
    opaque: tuple[str, ...]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    barriers: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    version: int = PLAN_VERSION
    # For models fx cannot trace whole: (submodule path, that submodule's own plan). The
    # fields above then list every region's slices and groups under their full names.
    regions: tuple[tuple[str, "PruningPlan"], ...] = ()
    # target="latency": the cost table's predicted milliseconds of the deployed model (else None).
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None

    # ------------------------------------------------------------------- reading it
    @property
    def removed_channels(self) -> int:
        """Units removed, summed over groups."""
        return sum(len(g.removed) for g in self.groups)

    @property
    def prunable_channels(self) -> int:
        return sum(g.size for g in self.groups if not g.protected)

    @property
    def changed(self) -> tuple[SliceDecision, ...]:
        """Slices that lose at least one index."""
        return tuple(s for s in self.slices if len(s.kept) < s.size)

    def kept(self, module: str, param: str = "weight", dim: int = 0) -> tuple[int, ...] | None:
        """Indices of ``module.param`` along ``dim`` that stay (None if that dim is not sliced)."""
        for s in self.slices:
            if (s.module, s.param, s.dim) == (module, param, dim):
                return s.kept
        return None

    def option(self, name: str) -> Any:
        return dict(self.options).get(name)

    def __str__(self) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100.0 * (1 - a / b):.1f}%" if b else "n/a"

        lines = [
            f"PruningPlan for {self.model} (fingerprint {self.fingerprint}, input {self.input_shapes})",
            f"  channels: {self.removed_channels} of {self.prunable_channels} prunable removed "
            f"in {sum(1 for g in self.groups if g.removed)} of {len(self.groups)} groups",
            f"  params:   {self.params_before:,} -> {self.params_after:,} (-{pct(self.params_after, self.params_before)})",
            f"  FLOPs:    {self.flops_before:,} -> {self.flops_after:,} (-{pct(self.flops_after, self.flops_before)})",
        ]
        if self.latency_before_ms is not None and self.latency_after_ms is not None:
            lines.append(f"  latency:  {self.latency_before_ms:.3f} ms -> {self.latency_after_ms:.3f} ms "
                         f"(-{100.0 * (1 - self.latency_after_ms / self.latency_before_ms):.1f}%, predicted; "
                         f"measure(deployed=True) gives the measured one)")
        shown = [g for g in self.groups if g.removed][:12]
        for g in shown:
            head = ", ".join(g.members[:3]) + (" ..." if len(g.members) > 3 else "")
            lines.append(f"  group {g.id:>4}: {g.size - len(g.removed):>5}/{g.size:<5} kept  [{head}]")
        hidden = sum(1 for g in self.groups if g.removed) - len(shown)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more groups")
        if self.barriers:
            lines.append(f"  barriers (kept): {len(self.barriers)}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regions"] = [{"path": path, "plan": sub.to_dict()} for path, sub in self.regions]
        d["format"] = "slimprune.plan"
        d["options"] = dict(self.options)
        d["edits"] = [json.loads(e) for e in self.edits]
        for name in ("latency_before_ms", "latency_after_ms"):  # only latency plans carry them
            if d[name] is None:
                del d[name]
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(d, Mapping) or d.get("format") != "slimprune.plan":
            raise FileFormatError("not a slimprune plan: the 'format' field is missing or wrong")
        version = d.get("version")
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise FileFormatError(
                f"plan format version {version!r} is newer than this slimprune understands "
                f"({PLAN_VERSION}); upgrade slimprune to read it"
            )
        try:
            return cls(
                model=str(d["model"]),
                fingerprint=str(d["fingerprint"]),
                input_shapes=tuple(tuple(int(v) for v in s) for s in d["input_shapes"]),
                options=tuple(sorted(dict(d["options"]).items())),
                groups=tuple(
                    GroupDecision(int(g["id"]), tuple(g["members"]), int(g["size"]),
                                  tuple(int(i) for i in g["removed"]), bool(g["exact"]), bool(g.get("protected", False)))
                    for g in d["groups"]
                ),
                slices=tuple(
                    SliceDecision(str(s["module"]), str(s["param"]), int(s["dim"]), str(s["role"]),
                                  int(s["size"]), tuple(int(i) for i in s["kept"]))
                    for s in d["slices"]
                ),
                folds=tuple(
                    Fold(str(f["module"]), str(f["node"]), int(f["size"]), tuple(int(i) for i in f["index"]),
                         tuple(float(v) for v in f["value"]))
                    for f in d["folds"]
                ),
                edits=tuple(json.dumps(e, sort_keys=True) for e in d["edits"]),
                opaque=tuple(d["opaque"]),
                params_before=int(d["params_before"]),
                params_after=int(d["params_after"]),
                flops_before=int(d["flops_before"]),
                flops_after=int(d["flops_after"]),
                barriers=tuple(d.get("barriers", ())),
                notes=tuple(d.get("notes", ())),
                version=version,
                regions=tuple((str(r["path"]), cls.from_dict(r["plan"])) for r in d.get("regions", ())),
                latency_before_ms=_optional_float(d.get("latency_before_ms")),
                latency_after_ms=_optional_float(d.get("latency_after_ms")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"the plan is malformed: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"the plan is not valid JSON: {exc}") from exc
        return cls.from_dict(d)

    def check_model(self, model: nn.Module, known_fingerprint: str | None = None) -> None:
        """Raise :class:`PlanMismatchError` unless ``model`` is the model this plan was made for,
        and the plan is one that model can be pruned by (every kept index in range, no group
        left empty: a hand-edited plan is checked before anything is changed).

        ``known_fingerprint``: ``fingerprint(model)``, when the caller has it already (``prune``:
        the analysis it planned from, made from this model in the same call).

        Raises:
            InvalidArgumentError: ``model`` is not an eager ``nn.Module`` (TorchScript).
            PlanMismatchError: another model, or a plan no pruning could have produced.
        """
        check_eager(model)
        fp = known_fingerprint or fingerprint(model)
        if fp != self.fingerprint:
            raise PlanMismatchError(
                f"this plan was made for a {self.model} with fingerprint {self.fingerprint}, but "
                f"the given {type(model).__name__} has fingerprint {fp} (different parameter names, "
                f"shapes or dtypes). Make a new plan with slimprune.plan(model, ...) for this model."
            )
        self._check_structure(model)

    def _check_structure(self, model: nn.Module) -> None:
        """Every slice, group and fold describes indices that exist, and keeps channels."""
        fix = "the plan was edited or corrupted; make a new plan with slimprune.plan(model, ...)"

        def indices(values: tuple[int, ...], size: int, what: str) -> None:
            # Ascending (compared in C by map) and then only the ends need a range check; the
            # one-by-one scan runs only to name the first bad index.
            ascending = all(map(operator.lt, values, values[1:]))
            if not ascending or (values and (values[0] < 0 or values[-1] >= size)):
                bad = [i for i in values if not 0 <= i < size]
                if bad:
                    raise PlanMismatchError(f"{what}: index {bad[0]} is outside 0..{size - 1}; {fix}")
            if not ascending:
                raise PlanMismatchError(f"{what}: the indices are not sorted and distinct ({list(values)[:8]}); {fix}")

        subs = Submodules(model)
        for s in self.slices:
            indices(s.kept, s.size, f"the kept indices of {s.name}")
            if len(s.kept) == s.size:
                continue  # kept whole: nothing is sliced (it may be a constant only the traced graph has)
            try:
                owner = subs(s.module)
            except AttributeError:
                raise PlanMismatchError(f"the plan slices module {s.module!r}, which this model does not have; {fix}") from None
            t = getattr(owner, s.param, None)
            if t is None or not hasattr(t, "shape") or not 0 <= s.dim < len(t.shape):
                raise PlanMismatchError(f"the plan slices {s.name}, which this model does not have; {fix}")
            if t.shape[s.dim] != s.size:
                raise PlanMismatchError(f"{s.name} has size {t.shape[s.dim]}, the plan expects {s.size}; {fix}")
            if not s.kept:
                raise PlanMismatchError(
                    f"the plan keeps 0 of the {s.size} channels of {s.name}, and a layer without channels "
                    f"cannot run; {fix} (min_channels >= 1 keeps at least one per group)"
                )
        for g in self.groups:
            indices(g.removed, g.size, f"group {g.id}'s removed positions")
            if len(g.removed) >= g.size:
                raise PlanMismatchError(
                    f"group {g.id} ({', '.join(g.members[:3])}) would keep 0 of its {g.size} channels, and a layer "
                    f"without channels cannot run; {fix} (min_channels >= 1 keeps at least one per group)"
                )
        for f in self.folds:
            try:
                subs(f.module)
            except AttributeError:
                raise PlanMismatchError(f"the plan folds constants into module {f.module!r}, which this model "
                                        f"does not have; {fix}") from None
            if len(f.index) != len(f.value) or not all(math.isfinite(v) for v in f.value):
                raise PlanMismatchError(f"the fold into {f.module!r} is malformed (index and value differ "
                                        f"in length, or a value is not finite); {fix}")
            indices(f.index, f.size, f"the fold into {f.module!r}")
