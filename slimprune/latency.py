"""Measured latency as a function of width: the profiler and its cost table.

:func:`profile` times every convolution and linear layer of a model at a grid of widths
(its output width with the input full, its input width with the output full) on the
shapes the example inputs give it, in the deployed form (BatchNorm folded into the conv,
so a bias-carrying conv; channels-last memory on the CPU), with
:mod:`torch.utils.benchmark` at the user's thread count. Layers with the same shapes are
timed once. A :class:`CostTable` predicts the model's latency for any kept width per
channel group:

    latency(kept) = rest + sum over layers of full_ms * r_out(kept_out) * r_in(kept_in)
                         + sum over other ops of overhead + (full_ms - overhead) * kept fraction

where ``r`` interpolates the measured grid and rounds a width up to the kernel's block
(``stair``, 8 channels on the CPU): 17 channels cost what 24 cost. The other ops
(activations, additions, pooling, norms that are not folded) are each timed once on the
tensors the example inputs give them; an op's time beyond its call overhead scales with
the fraction of its channels kept (they are memory-bound: time follows the number of
elements), channel by channel through the groups its channel axis belongs to. On
mobilenet_v2 these ops are more than half of the model's time, so holding them fixed
overstated a pruned model's latency by up to 60%. ``rest`` is the forward's call overhead
(one module call per layer and op, timed on a one-element tensor), held fixed; the layers'
and ops' times are scaled so that rest and parts add up to the whole deployed model's
measured time (in the model their inputs come from memory, not from cache).

Tables are cached on disk under a key of device, torch version, thread count, model
layer shapes and grid; :func:`load_table` refuses a table whose key differs from the one
asked for, so a stale table (other torch, other threads) is never reused silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ExampleInputError, FileFormatError, InvalidArgumentError, SlimpruneError

__all__ = ["LayerCost", "OpCost", "CostTable", "TableKey", "profile", "table_key", "save_table", "load_table",
           "stair_width", "refine", "deployed", "deployed_inputs", "deployed_call", "onnxruntime_session", "onnxruntime_times",
           "session_times", "onnxruntime_latency", "check_device",
           "LatencyDeviceError", "StaleCacheError", "BackendError"]

FORMAT = 2


class LatencyDeviceError(InvalidArgumentError):
    """The device asked for latency cannot be used here."""


class StaleCacheError(SlimpruneError):
    """A cached cost table was made under other conditions than the ones asked for."""


def stair_width(width: int, stair: int, full: int) -> int:
    """The width a kernel really computes for ``width`` channels: rounded up to ``stair``, at most ``full``."""
    if width <= 0:
        return 0
    return min(full, int(math.ceil(width / stair)) * stair)


def grid_widths(full: int, stair: int, points: int) -> tuple[int, ...]:
    """About ``points`` widths on multiples of ``stair`` from ``stair`` to ``full`` (``full`` included)."""
    steps = max(1, full // stair)
    picks = {min(full, max(1, round(s)) * stair) for s in np.linspace(1, steps, num=max(2, points))}
    picks.add(full)
    return tuple(sorted(w for w in picks if 1 <= w <= full))


@dataclass(frozen=True)
class LayerCost:
    """One layer's measured time as a function of its kept input and output widths.

    ``out_group``/``in_group`` are channel-group ids (None: that side cannot change);
    a depthwise conv has its in and out tied to ``out_group`` and ``depthwise=True``.
    ``out_widths``/``out_ms``: times with the input full; ``in_widths``/``in_ms``: with the
    output full. Every list is sorted by width and ends at the full width.
    """

    module: str
    out_group: int | None
    in_group: int | None
    out_width: int
    in_width: int
    full_ms: float
    out_widths: tuple[int, ...] = ()
    out_ms: tuple[float, ...] = ()
    in_widths: tuple[int, ...] = ()
    in_ms: tuple[float, ...] = ()
    depthwise: bool = False
    floor_ms: float = 0.0  # the time with both widths at one staircase step (0: not measured)
    points: tuple[tuple[int, int, float], ...] = ()  # (out, in, ms) timed exactly (see refine)

    def point(self, kept_out: int, kept_in: int) -> float | None:
        """The time measured at exactly these widths, if it was."""
        for o, i, ms in self.points:
            if o == kept_out and i == kept_in:
                return ms
        return None

    def _ratio(self, widths: tuple[int, ...], ms: tuple[float, ...], width: int, full: int, stair: int) -> float:
        if not widths or width >= full or self.full_ms <= 0:
            return 1.0
        if width <= 0:
            return 0.0
        w = stair_width(width, stair, full)
        # Below the first grid point time falls linearly to zero at width 0.
        xs = (0, *widths)
        ys = (0.0, *ms)
        t = float(np.interp(w, xs, ys))
        # Times measured on a loaded machine can wobble; a layer never gets slower when narrower.
        return min(1.0, max(t, 0.0) / self.full_ms)

    def ms(self, kept_out: int, kept_in: int, stair: int) -> float:
        """Predicted milliseconds at these kept widths.

        With one side full the measured curve of the other gives the time. With both
        narrower, the times above the layer's floor (its time at one staircase step each
        way: what a kernel costs however narrow) multiply: ``c + (t_out - c)(t_in - c)/(T - c)``.
        """
        exact = self.point(kept_out, kept_out if self.depthwise else kept_in) if self.points else None
        if exact is not None:
            return exact
        r_out = self._ratio(self.out_widths, self.out_ms, kept_out, self.out_width, stair)
        r_in = 1.0 if self.depthwise else self._ratio(self.in_widths, self.in_ms, kept_in, self.in_width, stair)
        full = self.full_ms
        t_out, t_in = full * r_out, full * r_in
        c = min(self.floor_ms, t_out, t_in)
        if c <= 0 or full <= c:
            return full * r_out * r_in
        return c + (t_out - c) * (t_in - c) / (full - c)


@dataclass(frozen=True)
class OpCost:
    """A non-layer op's measured time, scaling with the kept fraction of its channels.

    ``groups``/``counts``: the channel groups its channel axis holds and how many of its
    channels lie in each; ``fixed``: channels in no group (always kept).
    """

    node: str
    full_ms: float
    groups: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()
    fixed: int = 0

    def ms(self, kept: Mapping[int, int], widths: Mapping[int, int], overhead: float) -> float:
        total = self.fixed + sum(self.counts)
        if total <= 0 or not self.groups:
            return self.full_ms
        got = self.fixed + sum(c * kept.get(g, widths.get(g, 1)) / max(widths.get(g, 1), 1)
                               for g, c in zip(self.groups, self.counts))
        base = min(overhead, self.full_ms)
        return base + (self.full_ms - base) * got / total


@dataclass(frozen=True)
class TableKey:
    """What a cost table depends on; a table is reused only under an equal key."""

    device: str
    torch: str
    threads: int
    shapes: str  # digest of every profiled layer's configuration and input shape
    stair: int
    points: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CostTable:
    """Per-layer latency as a function of width, plus the time the layers do not account for."""

    key: TableKey
    layers: tuple[LayerCost, ...]
    rest_ms: float
    stair: int = 8
    group_widths: Mapping[int, int] = field(default_factory=dict)
    ops: tuple[OpCost, ...] = ()
    op_overhead_ms: float = 0.0  # the time of an op on a tensor of one element: what no pruning removes
    # Layers and ops run slower or faster in the model than alone (their inputs come from
    # memory, not cache): their times are scaled by this so that rest + parts is the whole.
    scale: float = 1.0

    def predict(self, kept: Mapping[int, int]) -> float:
        """Milliseconds with ``kept[g]`` channels kept in group ``g`` (missing groups full)."""
        return self.rest_ms + self.parts_ms(self.layers, self.ops, kept)

    def parts_ms(self, layers: Iterable[LayerCost], ops: Iterable[OpCost], kept: Mapping[int, int]) -> float:
        """The predicted milliseconds of just these layers and ops."""
        total = 0.0
        for layer in layers:
            ko = kept.get(layer.out_group, layer.out_width) if layer.out_group is not None else layer.out_width
            ki = kept.get(layer.in_group, layer.in_width) if layer.in_group is not None else layer.in_width
            total += layer.ms(ko, ki, self.stair)
        for op in ops:
            total += op.ms(kept, self.group_widths, self.op_overhead_ms)
        return total * self.scale

    def full(self) -> float:
        return self.predict({})

    def layers_of(self, group: int) -> list[LayerCost]:
        return [l for l in self.layers if l.out_group == group or l.in_group == group]

    def ops_of(self, group: int) -> list[OpCost]:
        return [o for o in self.ops if group in o.groups]

    def fixed_ms(self) -> float:
        """What no width changes: ``rest_ms`` (the forward's per-call overhead) and the ungrouped layers and ops."""
        return self.rest_ms + self.parts_ms([l for l in self.layers if l.out_group is None and l.in_group is None],
                                            [o for o in self.ops if not o.groups], {})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": asdict(self.key), "rest_ms": self.rest_ms, "stair": self.stair,
                "group_widths": {str(k): v for k, v in self.group_widths.items()},
                "layers": [asdict(l) for l in self.layers], "ops": [asdict(o) for o in self.ops],
                "op_overhead_ms": self.op_overhead_ms, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostTable:
        if d.get("format") != FORMAT:
            raise FileFormatError(f"cost table format {d.get('format')!r} is not {FORMAT}; profile again")
        layers = tuple(LayerCost(**{k: (tuple(tuple(p) for p in v) if k == "points" else tuple(v))
                                    if isinstance(v, list) else v for k, v in l.items()}) for l in d["layers"])
        ops = tuple(OpCost(**{k: tuple(v) if isinstance(v, list) else v for k, v in o.items()}) for o in d["ops"])
        return cls(TableKey(**d["key"]), layers, float(d["rest_ms"]), int(d["stair"]),
                   {int(k): int(v) for k, v in d["group_widths"].items()}, ops, float(d["op_overhead_ms"]),
                   float(d["scale"]))


def save_table(table: CostTable, path: str | os.PathLike[str]) -> None:
    """Write ``table`` as JSON (atomically: a failed write leaves the old file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(table.to_dict()))
    os.replace(tmp, p)


def load_table(path: str | os.PathLike[str], key: TableKey) -> CostTable:
    """The table at ``path``; :class:`StaleCacheError` when it was made under another key."""
    try:
        table = CostTable.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileFormatError(f"cannot read cost table {str(path)!r}: {e}; delete it to profile again") from e
    if table.key != key:
        diff = {k: (getattr(table.key, k), getattr(key, k)) for k in asdict(key) if getattr(table.key, k) != getattr(key, k)}
        raise StaleCacheError(
            f"cost table {str(path)!r} was profiled under other conditions: "
            + ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            + ". Delete it or pass another cache path to profile again.")
    return table


def check_device(device: str | torch.device, what: str = "latency") -> torch.device:
    """``device`` as a concrete torch.device that can time here (``cuda`` with its index), or
    :class:`LatencyDeviceError` saying why not; ``what`` names the caller in the message."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise LatencyDeviceError(f"{what}: device={device!r} is not a device name torch knows ({e}); "
                                 f"use 'cpu' or 'cuda'") from e
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise LatencyDeviceError(f"{what} is measured on 'cpu' or 'cuda', got device={str(device)!r}")
    if not torch.cuda.is_available():
        raise LatencyDeviceError(
            f"device={str(device)!r} asks for GPU {what}, but torch {torch.__version__} sees no CUDA device here "
            f"(CUDA is not available: torch.cuda.is_available() is False). Time it on the machine you deploy "
            f"to, or use device='cpu'.")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise LatencyDeviceError(
            f"device={str(device)!r} names GPU {index}, but only {torch.cuda.device_count()} GPU(s) are visible; "
            f"use 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'")
    return torch.device("cuda", index)


def deployed(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` as it is deployed: eval, BatchNorm folded into convs, channels-last on the CPU."""
    import copy

    m = copy.deepcopy(model).eval()
    try:
        from torch.fx.experimental.optimization import fuse
        m = fuse(m)
    except Exception:  # untraceable models are timed unfused (slower, never wrong)
        pass
    m = m.to(device)
    if device.type == "cpu":
        m = m.to(memory_format=torch.channels_last)
    return m


def time_ms(fn: Callable[[], Any], device: torch.device, threads: int, min_run_time: float) -> float:
    """Median milliseconds of ``fn`` (torch.utils.benchmark on the CPU, CUDA events on a GPU)."""
    if device.type == "cuda":
        for _ in range(3):
            fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        return float(np.median(times))
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)


def _layer_groups(graph: Any, name: str) -> tuple[int | None, int | None]:
    """The channel groups of ``name``'s weight rows (out) and columns (in), None where not one group."""
    out: set[int] = set()
    inn: set[int] = set()
    for s in graph.slices:
        if s.module != name or s.param != "weight":
            continue
        groups = {int(g) for g in np.unique(graph.unit_to_group[s.units]) if g >= 0}
        (out if s.dim == 0 else inn).update(groups)
    return (next(iter(out)) if len(out) == 1 else None, next(iter(inn)) if len(inn) == 1 else None)


def _signature(m: nn.Module, shape: tuple[int, ...]) -> tuple[Any, ...]:
    if isinstance(m, nn.Conv2d):
        return ("conv", m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.padding_mode, shape)
    assert isinstance(m, nn.Linear)
    return ("linear", m.in_features, m.out_features, shape)


def _make(m: nn.Module, c_in: int, c_out: int, depthwise: bool) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        groups = c_out if depthwise else m.groups
        return nn.Conv2d(c_in, c_out, m.kernel_size, m.stride, m.padding, m.dilation, groups, True, m.padding_mode)
    return nn.Linear(c_in, c_out, True)


def _input_shapes(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
                shapes.setdefault(name, tuple(args[0].shape))  # returning it would replace the output
            hooks.append(m.register_forward_hook(hook))
    try:
        from ._trace import call_model

        with torch.no_grad():
            call_model(model.eval(), inputs)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def table_key(model: nn.Module, example_inputs: Any, device: str | torch.device = "cpu", threads: int | None = None,
              stair: int = 8, points: int = 5) -> TableKey:
    """The cache key of ``model``'s cost table under these conditions."""
    inputs = _inputs(example_inputs)
    shapes = _input_shapes(_train_copy_state(model), inputs)
    mods = dict(model.named_modules())
    sig = [(n, _signature(mods[n], s)) for n, s in sorted(shapes.items())]
    digest = hashlib.sha256(repr(sig).encode()).hexdigest()[:16]
    return TableKey(str(check_device(device)), torch.__version__, int(threads or torch.get_num_threads()), digest,
                    int(stair), int(points))


def _train_copy_state(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model)


def profile(model: nn.Module, example_inputs: Any, graph: Any, *, device: str | torch.device = "cpu",
            threads: int | None = None, stair: int = 8, points: int = 5, min_run_time: float = 0.05,
            cache: str | os.PathLike[str] | None = None, progress: bool = True) -> CostTable:
    """Time ``model``'s conv and linear layers at a grid of widths and build its :class:`CostTable`.

    Args:
        graph: the model's :class:`~slimprune.ChannelGraph` (which groups each layer's widths follow).
        device: ``"cpu"`` or ``"cuda"`` (CUDA events); an unusable device raises :class:`LatencyDeviceError`.
        threads: CPU threads to time with (default: ``torch.get_num_threads()``).
        stair: the kernel block in channels; grid widths are multiples of it.
        points: grid widths per axis per layer.
        cache: a JSON path; an equal-keyed table there is reused, a stale one raises
            :class:`StaleCacheError`, a missing one is written.
    """
    dev = check_device(device)
    threads = int(threads or torch.get_num_threads())
    if not isinstance(stair, int) or stair < 1 or not isinstance(points, int) or points < 2:
        raise InvalidArgumentError(f"stair must be an integer >= 1 and points an integer >= 2, got {stair!r}, {points!r}")
    inputs = _inputs(example_inputs)
    key = table_key(model, inputs, dev, threads, stair, points)
    if cache is not None and Path(cache).exists():
        return load_table(cache, key)
    shapes = _input_shapes(_train_copy_state(model), inputs)
    mods = dict(model.named_modules())
    group_widths = {g.id: len(g) for g in graph.groups}
    memo: dict[tuple[Any, ...], float] = {}
    prev = torch.get_num_threads()

    def timed(m: nn.Module, shape: tuple[int, ...], c_in: int, c_out: int, dw: bool) -> float:
        return _time_layer(m, shape, c_in, c_out, dw, dev, threads, min_run_time, memo)

    layers: list[LayerCost] = []
    names = [n for n in shapes if isinstance(mods[n], (nn.Conv2d, nn.Linear))]
    from rich.progress import Progress

    torch.set_num_threads(threads)
    try:
        # The whole deployed model is timed before the layers and twice after them; their median
        # is what the parts must add up to (a load change during profiling moves it less).
        whole_fn = deployed_call(model, inputs, dev)
        wholes_ms = [time_ms(whole_fn, dev, threads, max(min_run_time, 0.1))]
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("profiling layer latency", total=len(names))
            for name in names:
                m, shape = mods[name], shapes[name]
                g_out, g_in = _layer_groups(graph, name)
                c_out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                c_in = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
                dw = isinstance(m, nn.Conv2d) and m.groups == c_in == c_out and c_in > 1
                if isinstance(m, nn.Conv2d) and m.groups > 1 and not dw:
                    g_out = g_in = None  # grouped convs: timed at full width only
                if dw:
                    g_in = g_out
                full = timed(m, shape, c_in, c_out, dw)
                ow = grid_widths(c_out, stair, points) if g_out is not None else ()
                om = tuple(timed(m, shape, w if dw else c_in, w, dw) for w in ow)
                iw = grid_widths(c_in, stair, points) if g_in is not None and not dw else ()
                im = tuple(timed(m, shape, w, c_out, dw) for w in iw)
                floor = timed(m, shape, min(stair, c_in), min(stair, c_out), dw) if ow and iw else 0.0
                layers.append(LayerCost(name, g_out, g_in, c_out, c_in, full, ow, om, iw, im, dw, floor))
                bar.advance(task)
            ops, overhead = _op_costs(graph, inputs, dev, threads, min_run_time, bar)
            call_ms = _call_overhead_ms(dev, threads, min_run_time)
            wholes_ms += [time_ms(whole_fn, dev, threads, max(min_run_time, 0.1)) for _ in range(2)]
            whole = float(np.median(wholes_ms))
    finally:
        torch.set_num_threads(prev)
    summed = sum(l.full_ms for l in layers) + sum(o.full_ms for o in ops)
    # The whole model = the Python of its forward (one call's overhead per layer and op: no
    # pruning removes it) + its layers and ops, which run slower or faster in the model than
    # alone (their inputs come from memory, not cache): the scale makes the parts add up.
    fixed = min(call_ms * (len(layers) + len(ops)), 0.5 * whole)
    scale = (whole - fixed) / summed if summed > 0 else 1.0
    table = CostTable(key, tuple(layers), fixed, stair, group_widths, ops, overhead, scale)
    if cache is not None:
        save_table(table, cache)
    return table


def _call_overhead_ms(dev: torch.device, threads: int, min_run_time: float) -> float:
    """What calling one layer costs besides its arithmetic: a module called on a one-element tensor."""
    layer, one = nn.ReLU().to(dev), torch.ones(1, device=dev)

    def fn() -> None:
        with torch.no_grad():
            layer(one)
    return time_ms(fn, dev, threads, min_run_time)


def _folded(node: Any, mods: Mapping[str, nn.Module]) -> bool:
    """Is ``node`` a BatchNorm that the deployed form folds into the conv or linear layer feeding it?"""
    if node.op != "call_module" or not isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
        return False
    src = node.args[0] if node.args else None
    return getattr(src, "op", None) == "call_module" and isinstance(mods.get(src.target), (nn.Conv2d, nn.Linear)) \
        and len(src.users) == 1


def _op_costs(graph: Any, inputs: tuple[Any, ...], dev: torch.device, threads: int, min_run_time: float,
              bar: Any = None) -> tuple[tuple[OpCost, ...], float]:
    """Every op of ``graph``'s traced module that is not a conv or linear layer (nor a BatchNorm the
    deployed form folds), timed alone on the tensors the example inputs give it, and the time of an
    op on a one-element tensor. Ops of equal type and input shapes are timed once. A graph that
    cannot be run this way gives no ops (their time then stays in the table's fixed rest)."""
    import copy

    from torch import fx
    from torch.utils._pytree import tree_map

    try:
        gm = copy.deepcopy(graph.gm).eval().to(dev)
    except Exception:
        return (), 0.0
    if dev.type == "cpu":
        gm = gm.to(memory_format=torch.channels_last)
    mods = dict(gm.named_modules())
    heavy = {n for n, m in mods.items() if any(isinstance(s, (nn.Conv2d, nn.Linear)) for s in m.modules())}
    node_units, u2g = graph.node_units, graph.unit_to_group
    memo: dict[Any, float] = {}
    costs: list[OpCost] = []

    def signature(n: fx.Node, args: Any, kwargs: Any) -> Any:
        def sig(v: Any) -> Any:
            return (tuple(v.shape), v.stride(), str(v.dtype)) if isinstance(v, torch.Tensor) else repr(v)
        what = repr(mods[n.target]) if n.op == "call_module" else (n.op, str(n.target))
        return what, tuple(sig(a) for a in args), tuple((k, sig(v)) for k, v in sorted(kwargs.items()))

    def channel_units(n: fx.Node) -> np.ndarray | None:
        u = node_units.get(n.name)
        if u is None:
            for a in n.all_input_nodes:
                if a.name in node_units:
                    return node_units[a.name]
        return u

    class Timing(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            args, kwargs = self.fetch_args_kwargs_from_env(n) if n.op.startswith("call") else ((), {})
            result = super().run_node(n)
            if not n.op.startswith("call") or not isinstance(result, torch.Tensor) or result.numel() == 0:
                return result
            if n.op == "call_module" and (n.target in heavy or _folded(n, mods)):
                return result
            key = signature(n, args, kwargs)
            if key not in memo:
                clone = (lambda v: v.clone() if isinstance(v, torch.Tensor) else v)
                cargs, ckwargs = tree_map(clone, args), tree_map(clone, kwargs)
                run = getattr(self, n.op)

                def fn() -> None:
                    with torch.no_grad():
                        run(n.target, cargs, ckwargs)
                memo[key] = time_ms(fn, dev, threads, min_run_time)
            u = channel_units(n)
            if u is None or u.size == 0:
                costs.append(OpCost(n.name, memo[key]))
            else:
                g = u2g[np.asarray(u, dtype=np.int64)] if u2g.size else np.full(u.size, -1)
                ids, counts = np.unique(g[g >= 0], return_counts=True)
                costs.append(OpCost(n.name, memo[key], tuple(int(i) for i in ids), tuple(int(c) for c in counts),
                                    int((g < 0).sum())))
            return result

    task = bar.add_task("profiling other ops", total=None) if bar is not None else None
    try:
        with torch.no_grad():
            Timing(gm).run(*deployed_inputs(inputs, dev))
    except Exception:
        return (), 0.0
    finally:
        if task is not None:
            bar.remove_task(task)
    one = torch.ones(1, device=dev)
    overhead = time_ms(lambda: torch.relu(one), dev, threads, min_run_time)
    return tuple(costs), overhead


def _time_layer(m: nn.Module, shape: tuple[int, ...], c_in: int, c_out: int, dw: bool, dev: torch.device,
                threads: int, min_run_time: float, memo: dict[tuple[Any, ...], float]) -> float:
    """Milliseconds of a layer like ``m`` with ``c_in``/``c_out`` channels on an input of ``shape`` (memoised)."""
    k = (_signature(m, shape), c_in, c_out, dw)
    if k not in memo:
        layer = _make(m, c_in, c_out, dw).eval().to(dev)
        x = torch.randn(*shape[:1], c_in, *shape[2:], device=dev) if len(shape) > 1 else torch.randn(c_in, device=dev)
        if isinstance(m, nn.Linear):
            x = torch.randn(*shape[:-1], c_in, device=dev)
        elif dev.type == "cpu" and x.dim() == 4:
            layer = layer.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)

        def run() -> None:
            with torch.no_grad():
                layer(x)
        memo[k] = time_ms(run, dev, threads, min_run_time)
    return memo[k]


def refine(table: CostTable, model: nn.Module, example_inputs: Any, kept: Mapping[int, int], *,
           min_run_time: float = 0.05) -> CostTable:
    """``table`` with every layer also timed at the widths ``kept`` gives it (an exact point).

    Between its grid points a layer's time is interpolated, and CPU kernels do not change
    smoothly: PyTorch picks another convolution algorithm when a layer's input falls under a
    size (a narrow depthwise conv leaves oneDNN for a direct loop), so a pruned model's
    layers can run at other speeds than the grid suggests. A latency plan refines its table
    at the widths it chose and chooses again (see :func:`slimprune.plan`). ``model`` must be
    the model ``table`` was profiled for, under the same conditions (device, threads).
    """
    dev = torch.device(table.key.device)
    threads = table.key.threads
    inputs = _inputs(example_inputs)
    shapes = _input_shapes(_train_copy_state(model), inputs)
    mods = dict(model.named_modules())
    memo: dict[tuple[Any, ...], float] = {}
    prev = torch.get_num_threads()
    layers = []
    torch.set_num_threads(threads)
    try:
        for l in table.layers:
            ko = kept.get(l.out_group, l.out_width) if l.out_group is not None else l.out_width
            ki = kept.get(l.in_group, l.in_width) if l.in_group is not None else l.in_width
            if l.depthwise:
                ki = ko
            if (ko, ki) == (l.out_width, l.in_width) or ko <= 0 or ki <= 0 or l.point(ko, ki) is not None \
                    or l.module not in shapes:
                layers.append(l)
                continue
            ms = _time_layer(mods[l.module], shapes[l.module], ki, ko, l.depthwise, dev, threads, min_run_time, memo)
            layers.append(replace(l, points=tuple(sorted((*l.points, (ko, ki, ms))))))
    finally:
        torch.set_num_threads(prev)
    return replace(table, layers=tuple(layers))


def _inputs(example_inputs: Any) -> tuple[Any, ...]:
    """The example inputs as a tuple (positional or keyword), holding at least one tensor."""
    from ._trace import normalize_inputs

    inputs = normalize_inputs(example_inputs)
    if not any(isinstance(x, torch.Tensor) for x in inputs):
        raise ExampleInputError("latency is timed on the real input shapes, and example_inputs holds no tensor; "
                                "pass at least one, e.g. torch.randn(1, 3, 224, 224)")
    return inputs


def deployed_inputs(inputs: tuple[Any, ...], dev: torch.device) -> tuple[Any, ...]:
    """``inputs`` on ``dev``, 4-d tensors channels-last on the CPU: what the deployed form is fed
    (keyword inputs stay keyword inputs)."""
    from ._trace import KeywordInputs

    def moved(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        x = x.to(dev)
        return x.contiguous(memory_format=torch.channels_last) if dev.type == "cpu" and x.dim() == 4 else x
    if isinstance(inputs, KeywordInputs):
        return KeywordInputs({k: moved(v) for k, v in inputs.as_dict().items()})
    return tuple(moved(x) for x in inputs)


def deployed_call(model: nn.Module, inputs: tuple[Any, ...], dev: torch.device) -> Callable[[], None]:
    """A call of ``model``'s deployed form on ``inputs`` as that form is fed, under ``no_grad``: what
    every whole-model timing times (the profile's reference, the plan's on-device check)."""
    form, fed = deployed(model, dev), deployed_inputs(inputs, dev)

    def call() -> None:
        _no_grad_call(form, fed)
    return call


def _no_grad_call(m: nn.Module, inputs: tuple[Any, ...]) -> None:
    from ._trace import call_model

    with torch.no_grad():
        call_model(m, inputs)


class BackendError(SlimpruneError, RuntimeError):
    """A latency backend cannot run this model here (not installed, or the export failed)."""


def onnxruntime_session(model: nn.Module, example_inputs: Any, *, threads: int | None = None,
                        path: str | os.PathLike[str] | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """``model``'s deployed form exported with :func:`torch.onnx.export` as an onnxruntime CPU session, and its feed.

    The export uses the TorchScript-based exporter (``dynamo=False``): it records the forward
    pass the example inputs take, so it exports whatever runs once (as slimprune's own
    concrete trace does), needs no onnxscript, and exported mobilenet_v2 in 3.5 s where the
    torch.export-based one took 16 s (one run each, 96 px, on the shared 2-core machine).
    ``path``: where to write the ``.onnx`` file (default: a temporary directory, removed
    before returning; the session holds the model in memory). Needs the ``onnx`` extra.

    Raises:
        BackendError: onnxruntime is not installed, or the export failed (naming the operator
            the exporter does not support when it says which).
    """
    import re
    import tempfile
    import warnings

    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError("the onnxruntime latency backend needs onnxruntime, which is not installed here; "
                           "pip install 'slimprune[onnx]' (onnx, onnxruntime) or use backend='torch'") from e
    inputs = _inputs(example_inputs)
    if any(not isinstance(t, torch.Tensor) for t in inputs) or hasattr(inputs, "names"):
        raise BackendError("the onnxruntime backend feeds positional tensor inputs only; this model takes "
                           "non-tensor or keyword inputs. Use backend='torch'.")
    threads = int(threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(path) if path is not None else Path(tmp) / "model.onnx"
        m = deployed(model, torch.device("cpu"))
        cpu_inputs = tuple(t.detach().cpu() for t in inputs)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(m, cpu_inputs, str(target), dynamo=False)
        except Exception as e:
            op = re.search(r"operator '([\w:.]+)'", str(e))
            what = f"it does not support the operator {op.group(1)!r}" if op else f"{type(e).__name__}: {str(e)[:300]}"
            raise BackendError(
                f"torch.onnx.export could not export {type(model).__name__} for the onnxruntime latency backend: {what}. "
                f"Time it with backend='torch', or replace that operation with one ONNX has.") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(target), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), cpu_inputs)}
    return sess, feed


def onnxruntime_times(model: nn.Module, example_inputs: Any, *, threads: int | None = None,
                      min_run_time: float = 0.5) -> list[float]:
    """Milliseconds of each timed onnxruntime run of ``model`` (see :func:`onnxruntime_session`), after 3 warm-ups."""
    sess, feed = onnxruntime_session(model, example_inputs, threads=threads)
    for _ in range(3):
        sess.run(None, feed)
    return session_times(sess, feed, min_run_time)


def session_times(sess: Any, feed: dict[str, np.ndarray], min_run_time: float, at_least: int = 5) -> list[float]:
    """Milliseconds of each run of an onnxruntime session on ``feed`` for ``min_run_time``
    seconds, and at least ``at_least`` runs (warm it up first)."""
    import time

    times: list[float] = []
    end = time.perf_counter() + min_run_time
    while time.perf_counter() < end or len(times) < at_least:
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def onnxruntime_latency(model: nn.Module, example_inputs: Any, *, threads: int | None = None,
                        min_run_time: float = 0.5) -> float:
    """Median milliseconds of ``model``'s deployed form run by onnxruntime on the CPU."""
    return float(np.median(onnxruntime_times(model, example_inputs, threads=threads, min_run_time=min_run_time)))
