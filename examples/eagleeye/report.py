"""The report: ``report.json``'s content, the targets it is held to and ``report.md``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

import slimprune
import slimprune.measure

from .config import PAPER, PipelineConfig
from .latency import FORMS, LAYOUTS, Timing
from .policy import prunable_gamma_stats, removed_flops, removed_params
from .scoring import Evaluated, flops_at

__all__ = [
    "MODELS",
    "LABELS",
    "SUBSETS",
    "build_report",
    "targets_met",
    "report_markdown",
    "aggregate_reports",
    "floor_markdown",
    "seeds_markdown",
    "mean_std",
    "human",
]


MODELS: tuple[str, ...] = ("baseline", "sparse", "pruned", "finetuned")

LABELS = {
    "baseline": "baseline (λ = 0)",
    "sparse": "sparsity-trained",
    "pruned": "pruned, before fine-tuning",
    "finetuned": "pruned + fine-tuned",
}
SUBSETS = ("easy", "medium", "hard")


# Targets this example is held to (issue 15, docs/eagleeye.md): against the fair baseline,
# and with seeds on the mean.
_TARGET_BASELINE_EASY = 0.80
_TARGET_PARAMS_REDUCTION = 0.65
_TARGET_FLOPS_REDUCTION = 0.65
_TARGET_AP_DROP = 0.005
_TARGET_SPEEDUP = 1.8
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
    curve: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The report (``report.json``'s content) of one run.

    ``analyses`` are the baseline's and the sparse model's analyses the plans were made on;
    the |γ| statistics are read from them. ``curve`` is the baseline's val-AP curve
    (:class:`~examples.eagleeye.scoring.ValCurve`'s points).
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
        "baseline_curve": {
            "fair": config.fair_baseline,
            "epochs": config.baseline.epochs,
            "budget": {"sparse": config.sparse.epochs, "finetune": config.finetune.epochs},
            "sparse_init": config.sparse_init,
            "every": config.curve_every,
            "images": config.curve_images,
            "points": [dict(p) for p in curve],
        },
        "pruning": {
            "mode": _mode(config, plan),
            "prune_steps": config.prune_rounds,
            "target_params": None if config.threshold is not None else config.target_params,
            "target_flops": None if config.threshold is not None else config.target_flops,
            "target_latency": None if config.threshold is not None else config.target_latency,
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
            "figures": ["gamma_hist.png", "channels.png", "pr_curves.png", "ap_vs_pruned.png", "baseline_curve.png"],
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
            ft["params_reduction"] >= _TARGET_PARAMS_REDUCTION,
            f"{ft['params_reduction']:.1%} fewer parameters (goal >= {_TARGET_PARAMS_REDUCTION:.0%}; "
            f"the paper's {PAPER['params_reduction']:.1%})",
        ),
        "flops_reduction": _target(
            ft["flops_reduction"] >= _TARGET_FLOPS_REDUCTION,
            f"{ft['flops_reduction']:.1%} fewer FLOPs (goal >= {_TARGET_FLOPS_REDUCTION:.0%})",
        ),
        "ap_drop": _target(
            worst_drop <= _TARGET_AP_DROP,
            "AP change against the fair baseline: "
            + ", ".join(f"{s} {100 * ft['ap_change'][s]:+.1f}" for s in SUBSETS)
            + f" points (goal: none below {-100 * _TARGET_AP_DROP:.1f})",
        ),
        "speedup": _target(
            ft["speedup"] >= _TARGET_SPEEDUP,
            f"{ft['speedup']:.2f}x CPU speed-up at batch 1 (goal >= {_TARGET_SPEEDUP:.1f}x)",
        ),
    }


def _mode(config: PipelineConfig, plan: slimprune.PruningPlan) -> str:
    """How stage 3 chose: ``"threshold"``, ``"steps"`` (``prune_steps`` > 1), ``"zeroed"``, ``"target_params"`` or ``"target_flops"``."""
    if config.threshold is not None:
        return "threshold"
    if config.prune_rounds > 1:
        return "steps"
    if plan.option("target") == "latency":
        return "target_latency"
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
        f"faster memory layout; eager timings in the last columns (torch {lat['torch']}, {lat['cpu_count']} cores). "
        + _baseline_sentence(report),
        "",
        f"| model | params | FLOPs @{size} | FLOPs @512 | latency (ms) | speed-up | AP easy | AP medium | AP hard "
        "| AP change (points) | folded NCHW | folded NHWC | eager NCHW | eager NHWC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
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
            + " | "
            + ("—" if name == "baseline" else " / ".join(f"{100 * m['ap_change'][s]:+.1f}" for s in SUBSETS))
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
        "target_latency": f"slimprune's latency target: {pruning.get('target_latency') or 0:.0%} of the predicted "
        f"CPU latency at batch 1, channels going by |γ| lost per millisecond saved",
        "target_flops": f"the channels of smallest |γ| per FLOP until {pruning.get('target_flops') or 0:.1%} of "
        f"the FLOPs are gone (largest |γ| removed: {pruning['threshold']:.3g})",
        "steps": f"{pruning.get('prune_steps')} rounds of prune + fine-tune: the zeroed channels first, then the "
        f"channels of smallest |γ| per FLOP of the fine-tuned model, stepped up to {pruning.get('target_flops') or 0:.1%} "
        f"of the FLOPs (largest |γ| of the sparse model removed: {pruning['threshold']:.3g})",
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
    lines += curve_markdown([report["baseline_curve"]])
    lines += onnxruntime_markdown(report.get("latency_onnxruntime"))
    lines += floor_markdown(report.get("latency_floor"))
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
        "![the baseline's val AP while it trains](baseline_curve.png)",
        "",
    ]
    return "\n".join(lines)


def onnxruntime_markdown(ort: Mapping[str, Any] | None) -> list[str]:
    """The models' latency under onnxruntime (the deployed form exported to ONNX), with speed-ups."""
    if not ort:
        return []
    if "skipped" in ort:
        return ["", f"onnxruntime latency: not measured ({ort['skipped']})."]
    ms = ort["ms"]
    base = ms["baseline"]
    lines = [
        "",
        "## onnxruntime",
        "",
        f"The same models, BatchNorm folded, exported with `torch.onnx.export` and run by onnxruntime's CPU "
        f"provider ({ort['threads']} intra-op thread(s), batch 1), timed interleaved like the table above.",
        "",
        "| model | latency (ms) | speed-up |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {LABELS[name]} | {v:.2f} | {base / v:.2f}x |" for name, v in ms.items()]
    return lines


def floor_markdown(floor: Mapping[str, Any] | None) -> list[str]:
    """Where the baseline's and the pruned model's time goes, per kind of operation and slowest layers."""
    if not floor:
        return []
    kinds = list(dict.fromkeys(k for f in floor.values() for k in f["by_kind_ms"]))
    lines = [
        "",
        "## Where the time goes (the latency floor)",
        "",
        "Each operation of the deployed model (BatchNorm folded, channels-last, batch 1) timed on its own "
        "(median per operation; the sum is a little above one forward pass). `stem` is the first three "
        "convolutions; `other` is cat, reshape and permute, which pruning does not shrink.",
        "",
        "| model | total (ms) | " + " | ".join(kinds) + " |",
        "| --- | --- | " + " | ".join("---" for _ in kinds) + " |",
    ]
    for name, f in floor.items():
        total = f["total_ms"]
        cells = [f"{f['by_kind_ms'].get(k, 0.0):.2f} ({f['by_kind_ms'].get(k, 0.0) / total:.0%})" for k in kinds]
        lines.append(f"| {LABELS[name]} | {total:.2f} | " + " | ".join(cells) + " |")
    if "finetuned" in floor:
        lines += [
            "",
            "Slowest operations of the pruned + fine-tuned model: "
            + ", ".join(
                f"`{t['name']}` ({t['kind']}, {'x'.join(map(str, t['shape'])) or '-'}) {t['ms']:.2f} ms"
                for t in floor["finetuned"]["slowest"]
            )
            + ".",
        ]
    return lines


def _baseline_sentence(report: Mapping[str, Any]) -> str:
    """What the baseline was trained for: the AP change is measured against it."""
    c = report.get("baseline_curve", {})
    if not c:
        return ""
    budget = c["budget"]
    if c.get("sparse_init") == "baseline":
        return (
            f"The pruned model is derived from the baseline: its sparse run started from the baseline's "
            f"trained weights, so it had the baseline's {c['epochs']} epochs plus {budget['sparse']} sparse + "
            f"{budget['finetune']} fine-tuning; every AP change compares it with the baseline it came from "
            "(as PruneFaceDet does)."
        )
    if c["fair"]:
        return (
            f"The baseline trained {c['epochs']} epochs, the pruned model's whole budget "
            f"({budget['sparse']} sparse + {budget['finetune']} fine-tuning); every AP change is against it."
        )
    return (
        f"The baseline trained only {c['epochs']} epochs against the pruned model's "
        f"{budget['sparse']} + {budget['finetune']} (--no-fair-baseline): its AP changes flatter the pruned model."
    )


def mean_curve(curves: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The baseline curves of several seeds as ``[{"epoch", "ap": {subset: [per-seed AP]}}]``,
    for the epochs every seed has."""
    by_epoch: dict[int, list[Mapping[str, float]]] = {}
    for c in curves:
        for p in c["points"]:
            by_epoch.setdefault(int(p["epoch"]), []).append(p["ap"])
    return [
        {"epoch": e, "ap": {s: [float(a[s]) for a in aps] for s in SUBSETS}}
        for e, aps in sorted(by_epoch.items())
        if len(aps) == len(curves)
    ]


def curve_markdown(curves: Sequence[Mapping[str, Any]]) -> list[str]:
    """The baseline's val-AP curve as a table (mean ± std over seeds when there are several)."""
    points = mean_curve(curves)
    if not points:
        return []
    images = curves[0]["images"]
    where = "the whole val split" if images is None else f"the first {images} val images"
    seeds = f", mean ± std over {len(curves)} seeds" if len(curves) > 1 else ""
    lines = [
        "",
        "## The baseline's val-AP curve",
        "",
        f"AP of the baseline while it trains, on {where}{seeds} (the report's AP above uses the whole split).",
        "",
        "| epoch | AP easy | AP medium | AP hard |",
        "| --- | --- | --- | --- |",
    ]
    for p in points:
        lines.append(f"| {p['epoch']} | " + " | ".join(_pm(p["ap"][s], 3) for s in SUBSETS) + " |")
    lines += ["", _curve_verdict(points)]
    return lines


# A curve point within this of the one before counts as level (about the seed-to-seed spread
# of the AP of one model on 100 val images is larger).
_LEVEL = 0.005


def _curve_verdict(points: Sequence[Mapping[str, Any]]) -> str:
    """Whether the baseline had stopped improving, read from its hard-AP curve."""
    hard = [float(np.mean(p["ap"]["hard"])) for p in points]
    best = int(np.argmax(hard))
    last = hard[-1]
    gain = last - hard[-2] if len(hard) > 1 else float("nan")
    text = (
        f"Hard AP peaks at epoch {points[best]['epoch']} ({hard[best]:.3f}); the last epoch's is {last:.3f} "
        f"({100 * (last - hard[best]):+.1f} points from the peak, {100 * gain:+.1f} over the point before)"
    )
    if hard[best] - last > _LEVEL:
        return text + ": later epochs lost AP on this subset."
    if gain > _LEVEL:
        return text + ": still rising at the end, so a longer baseline might score higher."
    return text + ": the baseline had levelled off."


def _pm(values: Sequence[float] | float, digits: int, scale: float = 1.0, sign: bool = False) -> str:
    """``mean ± std`` of per-seed values (``mean`` alone for one value)."""
    v = np.atleast_1d(np.asarray(values, dtype=np.float64)) * scale
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    if v.size == 1:
        return fmt.format(v[0])
    return fmt.format(v.mean()) + f" ± {v.std(ddof=1):.{digits}f}"


# The per-model numbers of a report the seeds' report gives mean and spread of.
_SCALARS = (
    "params", "flops", "flops_512", "latency_ms", "latency_iqr_ms", "speedup", "speedup_eager",
    "params_reduction", "flops_reduction",
)


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std" (sample, ddof 1; 0 for one value), "values"}`` of per-seed values."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "values": [float(x) for x in v]}


def aggregate_reports(
    config: PipelineConfig | Mapping[str, Any],
    seeds: Sequence[int],
    reports: Sequence[Mapping[str, Any]],
    files: Sequence[str],
) -> dict[str, Any]:
    """The report of a run over several seeds: mean and spread of every number of the per-seed reports.

    Every model's ``params``, FLOPs, latency, speed-ups, reductions, ``ap`` and ``ap_change`` per
    subset become ``{"mean", "std", "values"}``; the targets are checked on the means.
    """
    models: dict[str, dict[str, Any]] = {}
    means: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        entries = [r["models"][name] for r in reports]
        row: dict[str, Any] = {"label": LABELS[name]}
        for key in _SCALARS:
            row[key] = mean_std([e[key] for e in entries])
        for key in ("ap", "ap_change"):
            row[key] = {s: mean_std([e[key][s] for e in entries]) for s in SUBSETS}
        models[name] = row
        means[name] = {
            **{k: row[k]["mean"] for k in _SCALARS},
            **{k: {s: row[k][s]["mean"] for s in SUBSETS} for k in ("ap", "ap_change")},
        }
    return {
        "paper": dict(PAPER),
        "config": config.to_dict() if isinstance(config, PipelineConfig) else dict(config),
        "seeds": list(seeds),
        "runs": list(files),
        "eval_size": reports[0]["eval_size"],
        "latency": reports[0]["latency"],
        "models": models,
        "baseline_curves": [r["baseline_curve"] for r in reports],
        "pruning": [
            {k: r["pruning"][k] for k in ("mode", "params_reduction", "flops_reduction", "removed_channels")}
            for r in reports
        ],
        "latency_floor": [r.get("latency_floor") for r in reports],
        "latency_onnxruntime": aggregate_onnxruntime([r.get("latency_onnxruntime") for r in reports]),
        "targets": targets_met(means),
        "seconds_per_seed": [r["seconds"]["total"] for r in reports],
    }


def aggregate_onnxruntime(runs: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Mean ± std of the seeds' onnxruntime latencies and speed-ups against each seed's baseline;
    None when no seed measured it, ``{"skipped": ...}`` when some did not."""
    measured = [r for r in runs if r and "ms" in r]
    if not measured:
        return None
    if len(measured) < len(runs):
        return {"skipped": f"measured in {len(measured)} of {len(runs)} seeds only"}
    names = list(measured[0]["ms"])
    return {
        "threads": measured[0]["threads"],
        "ms": {n: mean_std([r["ms"][n] for r in measured]) for n in names},
        "speedup": {n: mean_std([r["ms"]["baseline"] / r["ms"][n] for r in measured]) for n in names},
    }


def seeds_markdown(report: Mapping[str, Any]) -> str:
    """``report.md`` of a run over several seeds: every number as mean ± standard deviation."""
    seeds = report["seeds"]
    size = report["eval_size"]
    lat = report["latency"]
    models = report["models"]
    lines = [
        f"# EagleEye network slimming: results over {len(seeds)} seeds",
        "",
        f"Seeds {', '.join(map(str, seeds))} (model initialisation, data order and augmentation; the data are the "
        f"same). Every number is the mean ± sample standard deviation over the seeds; each seed's own report is in "
        f"{', '.join(report['runs'])}. AP on the val split at {size} px; FLOPs at {size}x{size}; CPU latency at "
        f"batch 1, {lat['threads']} thread(s), BatchNorm folded, each model in its faster memory layout "
        f"(torch {lat['torch']}, {lat['cpu_count']} cores). "
        + _baseline_sentence({"baseline_curve": report["baseline_curves"][0]}),
        "",
        f"| model | params | FLOPs @{size} | latency (ms) | speed-up | AP easy | AP medium | AP hard "
        "| AP change easy / medium / hard (points) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in MODELS:
        m = models[name]
        params = f"{m['params']['mean']:,.0f} ± {m['params']['std']:,.0f}"
        flops = f"{human(m['flops']['mean'])} ± {human(m['flops']['std'])}"
        if name != "baseline":
            params += f" ({_pm(m['params_reduction']['values'], 1, -100, True)}%)"
            flops += f" ({_pm(m['flops_reduction']['values'], 1, -100, True)}%)"
        change = "—" if name == "baseline" else " / ".join(
            _pm(m["ap_change"][s]["values"], 1, 100, True) for s in SUBSETS
        )
        lines.append(
            f"| {m['label']} | {params} | {flops} | {_pm(m['latency_ms']['values'], 2)} | "
            f"{_pm(m['speedup']['values'], 2)}x | "
            + " | ".join(_pm(m["ap"][s]["values"], 3) for s in SUBSETS)
            + f" | {change} |"
        )
    lines += ["", "## Targets (on the means)", ""]
    for target in report["targets"].values():
        lines.append(f"- [{'x' if target['met'] else ' '}] {target['text']}")
    ft = models["finetuned"]
    lines += [
        "",
        "## Per seed (pruned + fine-tuned)",
        "",
        "| seed | params removed | FLOPs removed | speed-up | AP change easy / medium / hard (points) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, seed in enumerate(seeds):
        lines.append(
            f"| {seed} | {ft['params_reduction']['values'][i]:.1%} | {ft['flops_reduction']['values'][i]:.1%} | "
            f"{ft['speedup']['values'][i]:.2f}x | "
            + " / ".join(f"{100 * ft['ap_change'][s]['values'][i]:+.1f}" for s in SUBSETS)
            + " |"
        )
    ort = report.get("latency_onnxruntime")
    if ort and "skipped" in ort:
        lines += ["", f"onnxruntime latency: not aggregated ({ort['skipped']})."]
    elif ort:
        lines += [
            "",
            "## onnxruntime",
            "",
            f"The same models exported to ONNX (BatchNorm folded), onnxruntime's CPU provider, {ort['threads']} "
            "intra-op thread(s), batch 1; speed-ups against each seed's baseline in the same runtime.",
            "",
            "| model | latency (ms) | speed-up |",
            "| --- | --- | --- |",
        ]
        lines += [
            f"| {LABELS[n]} | {_pm(ort['ms'][n]['values'], 2)} | {_pm(ort['speedup'][n]['values'], 2)}x |"
            for n in ort["ms"]
        ]
    lines += curve_markdown(report["baseline_curves"])
    if report["latency_floor"] and report["latency_floor"][0]:
        lines += floor_markdown(report["latency_floor"][0])
        lines += ["", f"(The per-layer times above are seed {seeds[0]}'s.)"]
    lines += [
        "",
        "## Time",
        "",
        ", ".join(f"seed {s} {t / 60:.1f} min" for s, t in zip(seeds, report["seconds_per_seed"]))
        + (
            f"; total {report['seconds']['total'] / 60:.1f} min."
            if "seconds" in report
            else " (run separately, then put together by `summarize`)."
        ),
        "",
    ]
    return "\n".join(lines)
