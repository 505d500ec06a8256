"""CPU latency at batch 1: every model eager and BatchNorm-folded, in both memory layouts, interleaved."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["FORMS", "LAYOUTS", "Timing", "deployed", "time_models"]


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
