"""The report's four figures, each drawn on its own Agg canvas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from slimprune.plots import bn_scales, plot_channels, plot_gamma_histogram

from .config import PAPER
from .report import LABELS, MODELS, SUBSETS
from .scoring import Evaluated

__all__ = ["write_figures"]


_CHANNEL_ROWS = 128  # EagleEye has 94 conv and BatchNorm layers: draw them all


def _figure(size: tuple[float, float]) -> Any:
    """A matplotlib Figure on its own Agg canvas (pyplot's state is never touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def write_figures(
    out: Path,
    models: Mapping[str, nn.Module],
    evaluated: Mapping[str, Evaluated],
    threshold: float,
    sweep: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
) -> None:
    """``gamma_hist.png``, ``channels.png``, ``pr_curves.png`` and ``ap_vs_pruned.png`` in ``out``."""
    # A log axis has no zero: mark the smallest positive |γ| when nothing above 0 was removed.
    scales = bn_scales(models["sparse"])
    positive = scales[scales > 0]
    mark = threshold if threshold > 0 else (float(positive.min()) if positive.size else None)
    plot_gamma_histogram(models["baseline"], models["sparse"], threshold=mark, path=out / "gamma_hist.png")
    plot_channels(models["sparse"], models["finetuned"], out / "channels.png", max_layers=_CHANNEL_ROWS)
    _plot_pr(out / "pr_curves.png", evaluated)
    _plot_sweep(out / "ap_vs_pruned.png", sweep, report)


def _plot_pr(path: Path, evaluated: Mapping[str, Evaluated]) -> None:
    figure = _figure((13.0, 4.2))
    axes = figure.subplots(1, len(SUBSETS), sharey=True)
    styles = {"baseline": "-", "sparse": "--", "pruned": ":", "finetuned": "-"}
    colors = {"baseline": "tab:blue", "sparse": "tab:green", "pruned": "tab:red", "finetuned": "tab:orange"}
    for ax, subset in zip(axes, SUBSETS):
        for name in MODELS:
            precision, recall = evaluated[name].pr[subset]
            ax.plot(
                recall,
                precision,
                styles[name],
                color=colors[name],
                label=f"{LABELS[name]}: AP {evaluated[name].ap[subset]:.3f}",
            )
        ax.set_title(f"{subset}")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("precision")
    figure.suptitle("Precision-recall on the val split")
    figure.savefig(path)


def _plot_sweep(path: Path, sweep: Sequence[Mapping[str, Any]], report: Mapping[str, Any]) -> None:
    figure = _figure((7.5, 4.8))
    ax = figure.add_subplot()
    colors = {"easy": "tab:blue", "medium": "tab:orange", "hard": "tab:red"}
    models = report["models"]
    for source, style in (("sparse", "o-"), ("baseline", "s--")):
        rows = sorted((r for r in sweep if r["model"] == source), key=lambda r: r["params_reduction"])
        if not rows:
            continue
        x = [0.0] + [r["params_reduction"] for r in rows]
        for subset in SUBSETS:
            y = [models[source]["ap"][subset]] + [r["ap"][subset] for r in rows]
            label = f"{subset}, {'sparsity-trained' if source == 'sparse' else 'baseline'} model"
            ax.plot(x, y, style, color=colors[subset], alpha=1.0 if source == "sparse" else 0.5, label=label)
    ft = models["finetuned"]
    for subset in SUBSETS:
        ax.plot(
            [ft["params_reduction"]],
            [ft["ap"][subset]],
            "*",
            color=colors[subset],
            markersize=13,
            markeredgecolor="black",
            label=f"{subset}, pruned + fine-tuned" if subset == "easy" else None,
        )
    ax.axvline(PAPER["params_reduction"], color="grey", linestyle=":", label="paper: 56.3% fewer parameters")
    ax.set_xlabel("fraction of parameters removed (no fine-tuning unless starred)")
    ax.set_ylabel("AP")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.02, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    ax.set_title("AP against pruned fraction")
    figure.savefig(path)
