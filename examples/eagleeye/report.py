"""The report: ``report.json``'s content, the targets it is held to and ``report.md``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import slimprune
import slimprune.measure

from .config import PAPER, PipelineConfig
from .latency import FORMS, LAYOUTS, Timing
from .policy import prunable_gamma_stats, removed_flops, removed_params
from .scoring import Evaluated, flops_at

__all__ = ["MODELS", "LABELS", "SUBSETS", "build_report", "targets_met", "report_markdown", "human"]


MODELS: tuple[str, ...] = ("baseline", "sparse", "pruned", "finetuned")

LABELS = {
    "baseline": "baseline (λ = 0)",
    "sparse": "sparsity-trained",
    "pruned": "pruned, before fine-tuning",
    "finetuned": "pruned + fine-tuned",
}
SUBSETS = ("easy", "medium", "hard")


# Targets this example is held to (see docs/eagleeye.md).
_TARGET_BASELINE_EASY = 0.80
_TARGET_FLOPS_REDUCTION = 0.45
_TARGET_AP_DROP = 0.01
_TARGET_SPEEDUP = 1.5
# The |γ| the report counts the prunable channels at or below.
_GAMMA_BELOW = (1e-3, 1e-2, 1e-1)


def build_report(
    config: PipelineConfig,
    models: Mapping[str, nn.Module],
    evaluated: Mapping[str, Evaluated],
    latencies: Mapping[str, Timing],
    plan: slimprune.PruningPlan,
    threshold: float,
    sweep: list[dict[str, Any]],
    seconds: Mapping[str, float],
    analyses: Mapping[str, slimprune.Analysis],
) -> dict[str, Any]:
    """The report (``report.json``'s content) of one run.

    ``analyses`` are the baseline's and the sparse model's analyses the plans were made on;
    the |γ| statistics are read from them.
    """
    size = config.baseline.eval_size
    entries: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        entries[name] = {
            "label": LABELS[name],
            "params": slimprune.measure.count_params(model),
            "flops": flops_at(model, size),
            "flops_512": flops_at(model, 512),
            "flops_train": flops_at(model, config.baseline.image_size),
            "latency_ms": latencies[name].median_ms,
            "latency_iqr_ms": latencies[name].iqr_ms,
            "latency_layout": latencies[name].layout,
            "latency_by_setting_ms": dict(latencies[name].by_setting),
            "ap": evaluated[name].ap,
            "eval_seconds": evaluated[name].seconds,
        }
    base = entries["baseline"]
    for entry in entries.values():
        entry["params_reduction"] = 1 - entry["params"] / base["params"]
        entry["flops_reduction"] = 1 - entry["flops"] / base["flops"]
        entry["speedup"] = base["latency_ms"] / entry["latency_ms"]
        entry["speedup_eager"] = _eager_ms(base) / _eager_ms(entry)
        entry["ap_change"] = {s: entry["ap"][s] - base["ap"][s] for s in SUBSETS}
    targets = targets_met(entries)
    return {
        "paper": dict(PAPER),
        "config": config.to_dict(),
        "eval_size": size,
        "latency": {
            "device": "cpu",
            "batch": 1,
            "size": size,
            "threads": config.latency_threads,
            "repeats": config.latency_repeats,
            "rounds": config.latency_rounds,
            "layouts": list(LAYOUTS),
            "forms": list(FORMS),
            "statistic": "median over interleaved passes, BatchNorm folded, in each model's faster memory layout",
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
        },
        "models": entries,
        "pruning": {
            "mode": _mode(config, plan),
            "target_params": None if config.threshold is not None else config.target_params,
            "target_flops": None if config.threshold is not None else config.target_flops,
            "flops_reduction": removed_flops(plan),
            "dead_threshold": None if config.threshold is not None else config.dead_threshold,
            "threshold": threshold,
            "round_to": config.round_to,
            "params_reduction": removed_params(plan),
            "removed_channels": plan.removed_channels,
            "prunable_channels": plan.prunable_channels,
            "params_before": plan.params_before,
            "params_after": plan.params_after,
            "flops_before_train_size": plan.flops_before,
            "flops_after_train_size": plan.flops_after,
            "notes": list(plan.notes),
        },
        "gamma": {
            "baseline": _jsonable(prunable_gamma_stats(analyses["baseline"], _GAMMA_BELOW)),
            "sparse": _jsonable(prunable_gamma_stats(analyses["sparse"], _GAMMA_BELOW)),
        },
        "sweep": sweep,
        "targets": targets,
        "seconds": dict(seconds),
        "files": {
            "plan": "plan.json",
            "pruned": "pruned.safetensors",
            "finetuned": "finetuned.safetensors",
            "checkpoints": {n: f"{n}/last.pt" for n in ("baseline", "sparse", "finetune")},
            "figures": ["gamma_hist.png", "channels.png", "pr_curves.png", "ap_vs_pruned.png"],
        },
    }


def _eager_ms(entry: Mapping[str, Any]) -> float:
    """A report entry's eager (BatchNorm not folded) latency in its faster layout."""
    return min(entry["latency_by_setting_ms"][f"eager/{lay}"] for lay in LAYOUTS)


def targets_met(models: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The targets this example is held to, checked on the report's ``models`` entries.

    Returns:
        ``{name: {"met": bool, "text": what was measured against what was wanted}}``.
    """
    base, ft = models["baseline"], models["finetuned"]
    worst_drop = max(-ft["ap_change"][s] for s in SUBSETS)
    return {
        "baseline_easy_ap": _target(
            base["ap"]["easy"] >= _TARGET_BASELINE_EASY,
            f"baseline easy AP {base['ap']['easy']:.3f} (goal >= {_TARGET_BASELINE_EASY:.2f})",
        ),
        "params_reduction": _target(
            ft["params_reduction"] >= PAPER["params_reduction"] - 5e-4,
            f"{ft['params_reduction']:.1%} fewer parameters (goal >= {PAPER['params_reduction']:.1%})",
        ),
        "flops_reduction": _target(
            ft["flops_reduction"] >= _TARGET_FLOPS_REDUCTION,
            f"{ft['flops_reduction']:.1%} fewer FLOPs (goal >= {_TARGET_FLOPS_REDUCTION:.0%})",
        ),
        "ap_drop": _target(
            worst_drop <= _TARGET_AP_DROP,
            "AP change against the baseline: "
            + ", ".join(f"{s} {100 * ft['ap_change'][s]:+.1f}" for s in SUBSETS)
            + f" points (goal: none below {-100 * _TARGET_AP_DROP:.1f})",
        ),
        "speedup": _target(
            ft["speedup"] >= _TARGET_SPEEDUP,
            f"{ft['speedup']:.2f}x CPU speed-up at batch 1 (goal >= {_TARGET_SPEEDUP:.1f}x)",
        ),
    }


def _mode(config: PipelineConfig, plan: slimprune.PruningPlan) -> str:
    """How stage 3 chose: ``"threshold"``, ``"zeroed"``, ``"target_params"`` or ``"target_flops"``."""
    if config.threshold is not None:
        return "threshold"
    if plan.option("threshold") is not None:
        return "zeroed"
    return "target_flops" if plan.option("target") == "flops" else "target_params"


def _target(met: bool, text: str) -> dict[str, Any]:
    return {"met": bool(met), "text": text}


def _jsonable(stats: Mapping[str, Any]) -> dict[str, Any]:
    """gamma_stats with string keys (JSON has no float keys)."""
    return {
        "count": stats["count"],
        "percentiles": {str(k): v for k, v in stats["percentiles"].items()},
        "below": {f"{k:g}": v for k, v in stats["below"].items()},
    }


def human(n: float) -> str:
    """``1234567`` as ``1.23M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def report_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the four models, the paper's claim next to ours, the targets, the timings."""
    lat = report["latency"]
    size = report["eval_size"]
    models = report["models"]
    lines = [
        "# EagleEye network slimming: results",
        "",
        f"AP on the val split ({report['config']['baseline']['data_root']}) at {size} px; FLOPs "
        f"(2 per multiply-add, convolutions only) at {size}x{size} and 512x512; CPU latency at "
        f"batch 1, {size}x{size}, {lat['threads']} thread(s): the median of {lat['repeats']} forward passes, "
        f"all models interleaved, with BatchNorm folded into the convolutions (as deployed), each in its "
        f"faster memory layout; eager timings in the last columns (torch {lat['torch']}, {lat['cpu_count']} cores).",
        "",
        f"| model | params | FLOPs @{size} | FLOPs @512 | latency (ms) | speed-up | AP easy | AP medium | AP hard "
        "| folded NCHW | folded NHWC | eager NCHW | eager NHWC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in MODELS:
        m = models[name]
        params, flops = f"{m['params']:,}", human(m["flops"])
        if m["params_reduction"]:
            params += f" ({-m['params_reduction']:+.1%})"
        if m["flops_reduction"]:
            flops += f" ({-m['flops_reduction']:+.1%})"
        lines.append(
            f"| {m['label']} | {params} | {flops} | {human(m['flops_512'])} | {m['latency_ms']:.2f} | "
            f"{m['speedup']:.2f}x | "
            + " | ".join(f"{m['ap'][s]:.3f}" for s in SUBSETS)
            + "".join(
                f" | {m['latency_by_setting_ms'][f'{form}/{lay}']:.2f}"
                for form in ("folded", "eager")
                for lay in LAYOUTS
            )
            + " |"
        )
    ft = models["finetuned"]
    drops = ", ".join(f"{s} {100 * ft['ap_change'][s]:+.1f}" for s in SUBSETS)
    pruning = report["pruning"]
    how = {
        "threshold": f"the threshold |γ| <= {pruning['threshold']:.3g} given on the command line",
        "zeroed": f"removing every channel sparsity training zeroed (|γ| <= {pruning['threshold']:.3g}), "
        f"which is more than the {pruning['target_params']:.1%} of the parameters asked for",
        "target_params": f"the smallest-|γ| channels until {pruning['target_params']:.1%} of the parameters "
        f"are gone (effective threshold |γ| <= {pruning['threshold']:.3g})",
        "target_flops": f"the channels of smallest |γ| per FLOP until {pruning.get('target_flops') or 0:.1%} of "
        f"the FLOPs are gone (largest |γ| removed: {pruning['threshold']:.3g})",
    }[pruning["mode"]]
    if pruning.get("round_to", 1) > 1:
        how += f", every layer's width rounded up to a multiple of {pruning['round_to']}"
    lines += [
        "",
        "## The paper's claim next to ours",
        "",
        "| | PruneFaceDet (paper) | this run |",
        "| --- | --- | --- |",
        f"| parameters removed | {report['paper']['params_reduction']:.1%} | {ft['params_reduction']:.1%} |",
        f"| FLOPs removed | not published | {ft['flops_reduction']:.1%} |",
        f"| accuracy change | almost none (WIDER FACE) | AP points: {drops} (SynthFaces) |",
        f"| speed | not published for the pruned model | {ft['speedup']:.2f}x on the CPU at batch 1 "
        f"(BatchNorm folded; {ft['speedup_eager']:.2f}x eager) |",
        "",
        f"Pruned by {how}: {pruning['removed_channels']} of {pruning['prunable_channels']} prunable channels.",
        "",
        "## Targets",
        "",
    ]
    for target in report["targets"].values():
        lines.append(f"- [{'x' if target['met'] else ' '}] {target['text']}")
    gamma = report["gamma"]
    lines += [
        "",
        "## BatchNorm |γ| of the prunable channels",
        "",
        "| model | median | 5th percentile | <= 1e-3 | <= 1e-2 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("baseline", "sparse"):
        g = gamma[name]
        lines.append(
            f"| {LABELS[name]} | {g['percentiles']['50']:.3g} | {g['percentiles']['5']:.3g} | "
            f"{g['below']['0.001']} of {g['count']} | {g['below']['0.01']} of {g['count']} |"
        )
    lines += ["", "## Prune-ratio sweep (no fine-tuning)", ""]
    lines += [
        "| model | params removed | FLOPs removed | AP easy | AP medium | AP hard |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["sweep"]:
        lines.append(
            f"| {row['model']} | {row['params_reduction']:.1%} | {row['flops_reduction']:.1%} | "
            + " | ".join(f"{row['ap'][s]:.3f}" for s in SUBSETS)
            + " |"
        )
    seconds = report["seconds"]
    lines += [
        "",
        "## Time",
        "",
        ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
        + f"; total {seconds['total'] / 60:.1f} min.",
        "",
        "![|γ| before and after sparsity training](gamma_hist.png)",
        "![channels kept per layer](channels.png)",
        "![precision-recall curves](pr_curves.png)",
        "![AP against the pruned fraction](ap_vs_pruned.png)",
        "",
    ]
    return "\n".join(lines)
