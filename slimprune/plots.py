"""Pictures of pruning: the spread of BatchNorm scales, and the channels each layer kept.

matplotlib is optional (``pip install "slimprune[plots]"``) and imported only when a plot is
drawn. Figures are drawn on an Agg canvas of their own, never through pyplot, so the
caller's backend and open figures are left alone and no figure outlives the call.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ._atomic import atomic_write
from ._gamma import abs_gamma
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["bn_scales", "plot_channels", "plot_gamma_histogram"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

# Images are figsize × _DPI pixels exactly: layouts are "constrained", never cropped.
_DPI = 100
_HISTOGRAM_SIZE = (7.0, 4.5)
_CHANNELS_WIDTH = 8.0
_BINS = 60


def bn_scales(model: nn.Module) -> np.ndarray:
    """Return |γ| of every affine BatchNorm in ``model``, concatenated in ``named_modules()`` order.

    Args:
        model: any module; BatchNorm1d/2d/3d and SyncBatchNorm layers with ``affine=True``
            contribute, a BatchNorm registered under several names counts once.

    Returns:
        A 1-D float32 array with one entry per channel (empty if there is no such layer).

    Example:
        >>> scales = bn_scales(model)
        >>> print(f"{(scales < 1e-2).mean():.0%} of the channels have |γ| < 0.01")
    """
    scales = [
        abs_gamma(module.weight).flatten()
        for module in model.modules()
        if isinstance(module, _BATCH_NORMS) and module.weight is not None
    ]
    if not scales:
        return np.empty(0, dtype=np.float32)
    return torch.cat(scales).numpy()


def plot_gamma_histogram(
    before: nn.Module | np.ndarray | torch.Tensor,
    after: nn.Module | np.ndarray | torch.Tensor | None = None,
    threshold: float | None = None,
    path: str | os.PathLike[str] = "gamma_histogram.png",
    log: bool = True,
) -> Path:
    """Draw the histogram of BatchNorm |γ| before (and optionally after) sparsity training.

    Both histograms share their bins so the overlay compares like with like. With
    ``log=True`` the bins are log-spaced and the x axis logarithmic, which separates the
    pile of near-zero scales that sparsity training produces from the rest; scales that are
    exactly zero cannot sit on a log axis and are drawn in the leftmost bin (the legend
    says how many). The threshold, if given, is a dashed vertical line, and the legend
    gives how many channels of each histogram fall below it.

    Args:
        before: a model (its :func:`bn_scales` are used) or an array of scales.
        after: a second model or array drawn over the first, e.g. after sparsity training.
        threshold: a pruning threshold on |γ|, drawn and counted against.
        path: where to write the PNG; parent folders are created.
        log: log-spaced bins on a log axis (True) or linear ones (False).

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
        InvalidArgumentError (a ValueError): a model has no affine BatchNorm, an array is empty or not finite,
            ``threshold`` is negative (or zero with ``log=True``), or ``path`` does not end
            in ``.png``.

    Example:
        >>> plot_gamma_histogram(dense, sparse, threshold=1e-2, path="runs/gamma.png")
    """
    out = _png_path(path)
    series = [("before", _as_scales(before, "before"))]
    if after is not None:
        series.append(("after", _as_scales(after, "after")))
    if threshold is not None and (not np.isfinite(threshold) or threshold < 0 or (log and threshold == 0)):
        need = "positive (a log axis has no 0)" if log else "zero or more"
        raise InvalidArgumentError(f"plot_gamma_histogram(threshold=...) must be finite and {need}, got {threshold!r}; "
                                   f"pass e.g. threshold=1e-2, or None for no threshold line.")
    return _save(_gamma_figure(series, threshold, log), out)


def _gamma_figure(series: list[tuple[str, np.ndarray]], threshold: float | None, log: bool) -> Figure:
    """Draw the overlaid histograms of named |γ| arrays on one figure."""
    values = np.concatenate([scales for _, scales in series])
    edges = _log_edges(values, threshold) if log else _linear_edges(values, threshold)
    zero_position = np.sqrt(edges[0] * edges[1]) if log else 0.0

    figure = _figure(_HISTOGRAM_SIZE)
    axes = figure.add_subplot()
    for (name, scales), color in zip(series, ("tab:blue", "tab:orange")):
        label = f"{name}: {scales.size} channels"
        if threshold is not None:
            below = int((scales < threshold).sum())
            label += f", {below} ({below / scales.size:.1%}) < {threshold:.3g}"
        zeros = int((scales == 0).sum())
        if log and zeros:
            label += f", {zeros} exactly 0 (leftmost bin)"
        drawn = np.where(scales == 0, zero_position, scales) if log else scales
        axes.hist(drawn, bins=edges, alpha=0.55, color=color, edgecolor=color, label=label)
    if threshold is not None:
        axes.axvline(threshold, color="crimson", linestyle="--", linewidth=1.5, label=f"threshold = {threshold:.3g}")
    if log:
        axes.set_xscale("log")
    axes.set_xlabel("|γ| (BatchNorm scale)")
    axes.set_ylabel("channels")
    axes.set_title("BatchNorm scales")
    axes.legend(fontsize=8)
    return figure


def plot_channels(
    original: nn.Module,
    pruned: nn.Module,
    path: str | os.PathLike[str],
    max_layers: int = 60,
) -> Path:
    """Draw, per layer, the channels the pruned model kept against the original's.

    Layers are the Conv, Linear and BatchNorm modules whose name is present in both models
    (``out_channels``, ``out_features`` or ``num_features``), one horizontal bar each in the
    original's order: the original width in grey, the kept width over it, and, for layers
    whose width changed, "kept/original, change" written at the end of the bar.

    Args:
        original: the model before pruning.
        pruned: the model after pruning, with the same module names.
        path: where to write the PNG; parent folders are created.
        max_layers: draw at most this many layers (the first ones); the title says how many
            were left out.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
        InvalidArgumentError (a ValueError): no such layer name is present in both models, ``max_layers`` is not
            positive, or ``path`` does not end in ``.png``.

    Example:
        >>> plot_channels(model, pruned, "runs/channels.png")
    """
    out = _png_path(path)
    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise InvalidArgumentError(f"plot_channels(max_layers=...) must be a positive int, got {max_layers!r}; "
                                   f"for example max_layers=40.")
    rows = _matched_widths(original, pruned)
    if not rows:
        raise InvalidArgumentError(
            "No Conv, Linear or BatchNorm layer name is present in both models; plot_channels "
            "matches layers by module name, so pass the model and its pruned copy."
        )
    return _save(_channels_figure(rows, max_layers), out)


def _channels_figure(rows: list[tuple[str, int, int]], max_layers: int) -> Figure:
    """Draw one bar per (name, original width, kept width) row, the first max_layers of them."""
    shown = rows[:max_layers]
    narrowed = sum(kept < width for _, width, kept in rows)

    figure = _figure((_CHANNELS_WIDTH, max(3.0, 1.2 + 0.22 * len(shown))))
    axes = figure.add_subplot()
    positions = np.arange(len(shown))
    widths = np.array([width for _, width, _ in shown])
    kept = np.array([k for _, _, k in shown])
    axes.barh(positions, widths, color="lightgrey", label="original")
    axes.barh(positions, kept, color="tab:blue", label="kept")
    for position, width, k in zip(positions, widths, kept):
        if width and k != width:
            axes.annotate(
                f"{k}/{width}, {_signed_percent(k / width - 1)}",
                xy=(max(width, k), position),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    axes.set_yticks(positions, [name for name, _, _ in shown], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("channels")
    axes.margins(x=0.12)
    title = f"Channels kept per layer: {narrowed} of {len(rows)} layers narrowed"
    if len(rows) > len(shown):
        title += f"\n(first {len(shown)} of {len(rows)} layers shown)"
    axes.set_title(title, fontsize=10)
    figure.legend(fontsize=8, loc="outside lower center", ncols=2)
    return figure


def _as_scales(scales: Any, name: str) -> np.ndarray:
    """Return |γ| from a model, tensor or array as a finite, non-empty 1-D float array."""
    if isinstance(scales, nn.Module):
        values = bn_scales(scales)
        if not values.size:
            raise InvalidArgumentError(
                f"{name}: the model has no BatchNorm layer with affine weights, so there is no "
                "|γ| to plot; pass an array of scales instead."
            )
        return values.astype(np.float64)
    if isinstance(scales, torch.Tensor):
        scales = scales.detach().float().cpu().numpy()
    values = np.abs(np.asarray(scales, dtype=np.float64)).ravel()
    if not values.size:
        raise InvalidArgumentError(f"{name}: the array of scales is empty; pass a model with BatchNorm "
                                   f"layers or a non-empty array of |γ| values.")
    if not np.isfinite(values).all():
        raise InvalidArgumentError(f"{name}: the scales contain NaN or infinity; the model is likely diverged. "
                                   f"Plot a checkpoint from before the divergence, or lower the learning rate.")
    return values


def _log_edges(values: np.ndarray, threshold: float | None) -> np.ndarray:
    """Return log-spaced bin edges covering the positive values and the threshold."""
    points = values[values > 0]
    if threshold is not None:
        points = np.append(points, threshold)
    low, high = (points.min(), points.max()) if points.size else (1.0, 1.0)
    if low == high:
        low, high = low / 2, high * 2
    if (values == 0).any():
        low /= 10  # room on the left for the bin that holds exact zeros
    return np.geomspace(low, high, _BINS + 1)


def _linear_edges(values: np.ndarray, threshold: float | None) -> np.ndarray:
    """Return evenly spaced bin edges covering the values and the threshold."""
    points = values if threshold is None else np.append(values, threshold)
    low, high = points.min(), points.max()
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, _BINS + 1)


def _width(module: nn.Module) -> int | None:
    """Return the output width of a Conv, Linear or BatchNorm module, else None."""
    if isinstance(module, _CONVS):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, _BATCH_NORMS):
        return module.num_features
    return None


def _matched_widths(original: nn.Module, pruned: nn.Module) -> list[tuple[str, int, int]]:
    """Return (name, original width, pruned width) for layers present in both models."""
    pruned_modules = dict(pruned.named_modules())
    rows = []
    for name, module in original.named_modules():
        width = _width(module)
        kept = _width(pruned_modules[name]) if name in pruned_modules else None
        if width is not None and kept is not None:
            rows.append((name, width, kept))
    return rows


def _signed_percent(change: float) -> str:
    """Format a relative change as a signed whole percentage, with a decimal where rounding would hide it."""
    text = f"{change:+.0%}"
    if text in ("-100%", "+0%", "-0%") and change not in (-1.0, 0.0):
        text = f"{change:+.1%}"
    return text


def _png_path(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path after checking it names a PNG file."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise InvalidArgumentError(f"path={str(path)!r} must end in .png; the plots are written as PNG images. "
                                   f"Pass e.g. path=\"runs/plot.png\".")
    return out


def _figure(size: tuple[float, float]) -> Figure:
    """Return a new figure on its own Agg canvas, or say how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError('slimprune.plots needs matplotlib; install it with: pip install "slimprune[plots]"') from e
    figure = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out: Path) -> Path:
    """Write the figure as a PNG, creating parent folders, and return the path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    atomic_write(out, [buffer.getvalue()])  # a failed write leaves an older plot whole
    return out
