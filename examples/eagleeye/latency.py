"""CPU latency at batch 1: every model eager and BatchNorm-folded, in both memory layouts, interleaved."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FORMS", "LAYOUTS", "Timing", "LayerTime", "deployed", "time_models", "time_onnxruntime", "layer_times",
           "floor_summary"]


#: convolutions), each in both memory layouts.
FORMS: tuple[str, ...] = ("eager", "folded")
LAYOUTS: tuple[str, ...] = ("contiguous", "channels_last")


@dataclass(frozen=True)
class Timing:
    """CPU latency of one model at batch 1.

    Attributes:
        median_ms: the latency the targets use: the median wall time of one forward pass with
            BatchNorm folded into the convolutions, in the faster memory layout.
        iqr_ms: interquartile range of those times.
        layout: ``"contiguous"`` (NCHW, PyTorch's default) or ``"channels_last"`` (NHWC).
        by_setting: the median of every ``"<form>/<layout>"`` timed (form ``eager`` or ``folded``).
        repeats: forward passes timed per setting.
    """

    median_ms: float
    iqr_ms: float
    layout: str
    by_setting: dict[str, float]
    repeats: int


def deployed(model: nn.Module, form: str, layout: str) -> nn.Module:
    """A copy of ``model`` in eval mode, BatchNorm folded when ``form`` is ``"folded"``, in ``layout``."""
    from torch.fx.experimental.optimization import fuse

    copied = copy.deepcopy(model).cpu().eval()
    if form == "folded":
        copied = fuse(copied)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return copied.to(memory_format=fmt)


def time_models(
    models: Mapping[str, nn.Module], size: int, threads: int, repeats: int, rounds: int
) -> dict[str, Timing]:
    """CPU latency at batch 1 of every model, eager and BatchNorm-folded, in both layouts, all interleaved.

    Each pass runs every (model, form, layout) once, in an order that rotates from pass to
    pass, so that whatever else the machine is doing slows all of them alike; each of
    ``rounds`` rounds times fresh copies for ``repeats // rounds`` passes, and the median over
    all passes is kept.

    The latency the targets use is the folded model in its faster layout, i.e. the model as
    it would be deployed. Eager timings of the full-width model are dominated by oneDNN
    kernels that are slow for its 16-channel, 192x192 stem output and for nothing else
    (here: the 3 -> 16 stride-2 conv on a contiguous input 1.5-7 ms where channels-last
    takes 0.4; BatchNorm on the channels-last 16-channel map 2 ms), so eager speed-ups
    flatter any model whose stem was pruned (docs/eagleeye.md).
    """
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    settings = [(form, layout) for form in FORMS for layout in LAYOUTS]
    keys = [(name, form, layout) for form, layout in settings for name in models]
    times: dict[tuple[str, str, str], list[float]] = {k: [] for k in keys}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(rounds):
            runs = []
            for name, form, layout in keys:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                model = deployed(models[name], form, layout)
                runs.append(((name, form, layout), model, x.contiguous(memory_format=fmt)))
            with torch.inference_mode():
                for _, model, inp in runs:
                    for _ in range(3):
                        model(inp)
                for i in range(max(1, repeats // rounds)):
                    shift = i % len(runs)
                    for key, model, inp in runs[shift:] + runs[:shift]:
                        start = time.perf_counter()
                        model(inp)
                        times[key].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    out = {}
    for name in models:
        stats = {
            (form, lay): np.percentile(np.asarray(times[(name, form, lay)]) * 1e3, (25, 50, 75))
            for form, lay in settings
        }
        best = min(LAYOUTS, key=lambda lay: stats[("folded", lay)][1])
        q1, median, q3 = stats[("folded", best)]
        out[name] = Timing(
            median_ms=float(median),
            iqr_ms=float(q3 - q1),
            layout=best,
            by_setting={f"{form}/{lay}": float(v[1]) for (form, lay), v in stats.items()},
            repeats=len(times[(name, "folded", best)]),
        )
    return out


@dataclass(frozen=True)
class LayerTime:
    """The median time of one operation of the deployed (BatchNorm-folded) model at batch 1.

    Attributes:
        name: the module (``stem.0.0``) or the graph node (``cat_1``) it is.
        kind: ``"stem"`` (the first three convolutions), ``"depthwise"``, ``"pointwise"``,
            ``"conv"`` (other convolutions: the heads'), ``"activation"`` or ``"other"`` (cat,
            reshape, permute: operations without channels to prune).
        ms: median milliseconds over the timed passes.
        shape: the output shape ``(C, H, W)`` (empty when it is not one tensor).
    """

    name: str
    kind: str
    ms: float
    shape: tuple[int, ...]


def _kind(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op != "call_module":
        return "other"
    module = modules[str(node.target)]
    if isinstance(module, nn.Conv2d):
        if str(node.target).startswith("stem."):
            return "stem"
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise"
        return "pointwise" if module.kernel_size == (1, 1) else "conv"
    return "activation" if not list(module.parameters()) or isinstance(module, nn.PReLU) else "other"


def layer_times(model: nn.Module, size: int, threads: int, repeats: int = 30) -> list[LayerTime]:
    """Per-operation CPU time of ``model`` as deployed (BatchNorm folded, channels-last), batch 1.

    Every node of the folded model's fx graph is run and timed on its own (an fx Interpreter
    with a clock around each node), ``repeats`` passes after 3 warm-up passes; the per-node
    median is kept. The sum is a little more than one timed forward pass (the interpreter's
    own overhead, ~µs per node); it shows which layers set the latency floor of a pruned model.
    """
    folded = deployed(model, "folded", "channels_last")
    modules = dict(folded.named_modules())
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    nodes = [n for n in folded.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    times: dict[str, list[float]] = {n.name: [] for n in nodes}
    shapes: dict[str, tuple[int, ...]] = {}

    class _Timed(torch.fx.Interpreter):
        record = False

        def run_node(self, n: torch.fx.Node) -> Any:
            start = time.perf_counter()
            result = super().run_node(n)
            if self.record and n.name in times:
                times[n.name].append(time.perf_counter() - start)
                if isinstance(result, torch.Tensor) and result.dim() == 4:
                    shapes[n.name] = tuple(result.shape[1:])
            return result

    runner = _Timed(folded)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(3):
                runner.run(x)
            runner.record = True
            for _ in range(repeats):
                runner.run(x)
    finally:
        torch.set_num_threads(previous)
    return [
        LayerTime(
            name=str(n.target) if n.op == "call_module" else n.name,
            kind=_kind(n, modules),
            ms=float(np.median(times[n.name]) * 1e3),
            shape=shapes.get(n.name, ()),
        )
        for n in nodes
    ]


def floor_summary(layers: Sequence[LayerTime], top: int = 8) -> dict[str, Any]:
    """Milliseconds per kind of operation and the ``top`` slowest operations, for the report."""
    total = sum(t.ms for t in layers)
    by_kind: dict[str, float] = {}
    for t in layers:
        by_kind[t.kind] = by_kind.get(t.kind, 0.0) + t.ms
    slowest = sorted(layers, key=lambda t: -t.ms)[:top]
    return {
        "total_ms": total,
        "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "slowest": [{"name": t.name, "kind": t.kind, "ms": t.ms, "shape": list(t.shape)} for t in slowest],
    }


def time_onnxruntime(models: Mapping[str, nn.Module], size: int, threads: int, rounds: int,
                     min_run_time: float = 0.3) -> dict[str, Any]:
    """Batch-1 latency of every model exported to ONNX and run by onnxruntime's CPU provider.

    Each model's deployed form (BatchNorm folded) is exported once
    (:func:`slimprune.latency.onnxruntime_session`); then ``rounds`` rounds time every session
    for ``min_run_time`` seconds in turn, so a load change hits all alike, and the median over
    all runs is kept. Returns ``{"ms": {name: median}, "threads": threads}``, or
    ``{"skipped": reason}`` where onnxruntime is not installed or a model does not export.
    """
    from slimprune.latency import BackendError, onnxruntime_session, session_times

    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        sessions = {name: onnxruntime_session(model, x, threads=threads) for name, model in models.items()}
    except BackendError as e:
        return {"skipped": str(e)}
    runs: dict[str, list[float]] = {name: [] for name in models}
    for sess, feed in sessions.values():
        for _ in range(3):
            sess.run(None, feed)
    for _ in range(rounds):
        for name, (sess, feed) in sessions.items():
            runs[name] += session_times(sess, feed, min_run_time / rounds, at_least=1)
    return {"ms": {name: float(np.median(v)) for name, v in runs.items()}, "threads": threads}
