"""Network slimming of EagleEye end to end, the way the PruneFaceDet paper does it.

Jiang et al., *PruneFaceDet: Pruning lightweight face detection network by sparsity
training*, Cognitive Computation and Systems 4(4), 2022, report that sparsity training
(an L1 penalty on every BatchNorm scale γ), removing the channels whose γ is near zero
and fine-tuning leaves EagleEye with 56.3% fewer parameters "with almost no accuracy
loss". :func:`run` reproduces the recipe in six stages:

1. ``baseline``: train EagleEye from scratch with λ = 0;
2. ``sparse``: train it again with λ > 0, so that unimportant γ go to zero: from scratch
   or, with ``sparse_init="baseline"``, starting from the trained baseline's weights
   (``TrainConfig.init``);
3. ``prune``: plan on the sparse model and apply the plan. Every channel that sparsity
   training switched off (|γ| <= ``dead_threshold``) goes, and if that is less than
   ``target_params`` (the paper's 56.3% of the parameters), the smallest-|γ| channels go
   until it is reached; if that still removes less than ``target_flops`` (default 66%)
   of the FLOPs, the plan instead removes the channels with the smallest |γ| per FLOP
   until both targets are met, every pruned layer keeping a multiple of ``round_to``
   channels. ``threshold`` instead removes exactly the channels with |γ| at most it;
4. ``finetune``: train the pruned model on, distilling from the baseline (weight 1 by default);
5. ``evaluate``: parameters, FLOPs, CPU latency at batch 1 (BatchNorm folded, the faster
   memory layout; eager too) and WIDER FACE AP of all four models, plus a sweep of
   prune ratios of the sparse (and the baseline) model without
   fine-tuning;
6. ``report``: ``report.json``, ``report.md`` and four figures under ``out_dir``.

Everything lands in ``out_dir``: each training stage's ``last.pt`` in a sub-folder,
``plan.json``, the pruned and fine-tuned models as slimprune model files
(``pruned.safetensors``, ``finetuned.safetensors``; read them with :func:`load_pruned`),
the report and the figures.

This module is the orchestration only; each concern has its own module: :mod:`.config`
(the run), :mod:`.policy` (which channels go, on one analysis per model), :mod:`.scoring`
(AP and FLOPs), :mod:`.latency`, :mod:`.report`, :mod:`.figures`, :mod:`.console`,
:mod:`.model_files` (pruned models on disk) and :mod:`.train` (the training runs).

    >>> report = run(PipelineConfig.create("runs/eagleeye"))  # doctest: +SKIP
    >>> report["models"]["finetuned"]["ap"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

import slimprune
import slimprune.io

from .config import PAPER, PipelineConfig
from .console import Stages, bar, summary_table
from .data import prepare_data
from .figures import write_figures
from .latency import floor_summary, layer_times, time_models, time_onnxruntime
from .model_files import build_spec, load_pruned
from .policy import (
    analyze,
    apply_plan,
    combined_plan,
    effective_threshold,
    fade_hook,
    first_step_plan,
    layer_caps,
    next_step_plan,
    original_widths,
    plan_fraction,
    prune_plan,
    removed_flops,
    removed_params,
    step_epochs,
    step_goals,
)
from .report import LABELS, MODELS, aggregate_reports, build_report, report_markdown, seeds_markdown, targets_met
from .scoring import ValCurve, evaluate_val
from .train import train

__all__ = [
    "PAPER",
    "MODELS",
    "PipelineConfig",
    "run",
    "summarize",
    "load_pruned",
    "effective_threshold",
    "report_markdown",
    "targets_met",
]


def run(config: PipelineConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every stage and write the report; returns the report (as in ``report.json``).

    With ``config.seeds > 1`` the whole pipeline runs once per seed (``seed``, ``seed + 1``,
    ...; the data stay the same) under ``out_dir/seed-<s>``, each with its own report, and
    ``out_dir``'s report holds the mean and standard deviation of every number
    (:func:`aggregate_reports`).

    Args:
        config: the run (see :meth:`PipelineConfig.create`).
        console: where progress and tables go (default: a new rich Console).

    Returns:
        The report: ``config``, ``paper``, ``models`` (params, FLOPs, latency, AP per model),
        ``baseline_curve``, ``pruning``, ``gamma``, ``sweep``, ``targets``, ``seconds`` and
        ``files``; with seeds, ``seeds``, ``runs`` and ``models`` of mean/std/values instead.

    Raises:
        CheckpointError: with ``resume``, a stage checkpoint does not fit its stage.
        slimprune.InfeasiblePlanError: the pruning target cannot be reached.
    """
    console = console or Console()
    if config.seeds > 1:
        return _run_seeds(config, console)
    return _run_one(config, console)


def _run_seeds(config: PipelineConfig, console: Console) -> dict[str, Any]:
    """:func:`_run_one` for every seed, then the mean ± standard deviation report in ``out_dir``."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seeds = [config.baseline.seed + i for i in range(config.seeds)]
    reports = []
    for i, seed in enumerate(seeds):
        console.rule(f"seed {seed} ({i + 1} of {len(seeds)})")
        reports.append(_run_one(config.with_seed(seed), console))
    report = aggregate_reports(config, seeds, reports, [f"seed-{s}/report.json" for s in seeds])
    report["seconds"] = {"total": time.perf_counter() - started}
    _write_seeds_report(out, report, console)
    console.print(f"total {report['seconds']['total'] / 60:.1f} min; report in {out / 'report.md'}")
    return report


def _write_seeds_report(out: Path, report: dict[str, Any], console: Console) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    (out / "report.md").write_text(seeds_markdown(report))
    for name, target in report["targets"].items():
        mark = "[green]met[/green]" if target["met"] else "[red]missed[/red]"
        console.print(f"target {name} ({len(report['seeds'])}-seed mean): {target['text']}: {mark}")


#: Config entries that may differ between the runs one summary puts together.
_PER_RUN = frozenset({"out_dir", "init", "seed", "resume", "progress", "seeds"})


def _shared_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without what belongs to one run (its folders, seed, resumption); a relative
    ``data_root`` is taken from the current directory, as the pipeline took it."""
    shared: dict[str, Any] = {}
    for k, v in config.items():
        if k in _PER_RUN:
            continue
        shared[k] = _shared_config(v) if isinstance(v, Mapping) else os.path.abspath(v) if k == "data_root" else v
    return shared


def summarize(runs: Sequence[str | Path], out: str | Path, console: Console | None = None) -> dict[str, Any]:
    """The mean ± standard deviation report of finished single-seed pipeline runs, as
    ``pipeline --seeds N`` writes it, for seeds run separately (on several machines or cores at
    once, or kept from an earlier run): reads each run's ``report.json``, writes ``out/report.json``
    and ``out/report.md``. Run it from the directory the pipeline ran in when the runs' data
    folder was given as a relative path.

    Raises:
        ValueError: fewer than two runs, a run without ``report.json``, two runs with the same seed,
            or runs whose configurations differ in anything but their folders and seeds (names the
            first differing entry).
    """
    console = console or Console()
    folders = [Path(r) for r in runs]
    if len(folders) < 2:
        raise ValueError(f"summarize needs at least two runs to give a spread, got {len(folders)}.")
    reports = []
    for folder in folders:
        path = folder / "report.json"
        if not path.is_file():
            raise ValueError(f"{path} does not exist: give folders of finished `pipeline` runs (one seed each).")
        reports.append(json.loads(path.read_text()))
    seeds = [int(r["config"]["baseline"]["seed"]) for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs {', '.join(map(str, folders))} have seeds {seeds}: each seed once.")
    first = _shared_config(reports[0]["config"])
    for folder, report in zip(folders[1:], reports[1:]):
        other = _shared_config(report["config"])
        if other != first:
            key = _first_difference(first, other)
            raise ValueError(
                f"{folder} was run with another configuration than {folders[0]} (config entry {key}); "
                "a summary puts together runs that differ only in their seed."
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [os.path.relpath(f / "report.json", out) for f in folders]
    report = aggregate_reports(reports[0]["config"], seeds, reports, files)
    _write_seeds_report(out, report, console)
    console.print(f"report of {len(seeds)} seeds in {out / 'report.md'}")
    return report


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, Mapping) and isinstance(y, Mapping) and x != y:
            return _first_difference(x, y, f"{prefix}{key}.")
        if x != y:
            return f"{prefix}{key}: {x!r} against {y!r}"
    return prefix.rstrip(".")


def _run_one(config: PipelineConfig, console: Console) -> dict[str, Any]:
    """The six stages of one seed (see :func:`run`)."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stage = Stages(console, 6)
    train_kw = {"console": console}

    root = prepare_data(config.baseline)
    fair = " (the pruned model's sparse + fine-tuning budget)" if config.fair_baseline else ""
    with stage("baseline", f"train from scratch, λ = 0, {config.baseline.epochs} epochs{fair}"):
        curve = ValCurve(
            Path(config.baseline.out_dir) / "curve.json", root, config, config.baseline.epochs, config.baseline.resume
        )
        baseline = train(replace(config.baseline, progress=config.progress), after_epoch=curve, **train_kw)
        baseline = baseline.cpu().eval()
    start = "from the baseline's weights" if config.sparse_init == "baseline" else "from scratch"
    with stage("sparse", f"train {start}, λ = {config.sparse.sparsity:g}, {config.sparse.epochs} epochs"):
        sparse = train(replace(config.sparse, progress=config.progress), **train_kw).cpu().eval()

    # One analysis per model: every plan of it (stage 3's tries, the sweep) and the report's
    # |γ| statistics read this trace.
    analyses = {"sparse": analyze(sparse, config.sparse)}
    if config.prune_rounds > 1:
        pruned, finetuned, plan, steps = _prune_in_steps(config, sparse, analyses["sparse"], baseline, stage, train_kw)
        threshold = effective_threshold(sparse, plan)
    else:
        steps = None
        with stage("prune", "plan on the sparse model and apply"):
            plan = prune_plan(analyses["sparse"], config, latency_cache=out / "latency_table.json")
            (out / "plan.json").write_text(plan.to_json(indent=1) + "\n")
            pruned = apply_plan(sparse, plan)
            threshold = config.threshold if config.threshold is not None else effective_threshold(sparse, plan)
            slimprune.io.save(pruned, out / "pruned.safetensors", plan=plan, build=build_spec(config.sparse))
            console.print(str(plan))

        teaching = (
            f", distilling from the baseline (weight {config.finetune.distill:g})" if config.finetune.distill > 0 else ""
        )
        with stage("finetune", f"train the pruned model for {config.finetune.epochs} epochs{teaching}"):
            finetuned = train(
                replace(config.finetune, progress=config.progress),
                model=copy.deepcopy(pruned),
                teacher=baseline,  # used only when config.finetune.distill > 0
                **train_kw,
            ).cpu().eval()
            slimprune.io.save(finetuned, out / "finetuned.safetensors", plan=plan, build=build_spec(config.sparse))

    models = {"baseline": baseline, "sparse": sparse, "pruned": pruned, "finetuned": finetuned}
    with stage("evaluate", "AP, parameters, FLOPs, latency; prune-ratio sweep"):
        evaluated = {}
        for name, model in models.items():
            console.print(f"evaluating {LABELS[name]}")
            evaluated[name] = evaluate_val(model, root, config, console, config.progress)
        analyses["baseline"] = analyze(baseline, config.sparse)
        sweep = _sweep(config, analyses, root, console)
        console.print(f"timing at batch 1, {config.baseline.eval_size} px, {config.latency_threads} thread(s)")
        latencies = time_models(
            models, config.baseline.eval_size, config.latency_threads, config.latency_repeats, config.latency_rounds
        )
        console.print("the same models exported to ONNX, timed by onnxruntime")
        onnx_latency = time_onnxruntime(models, config.baseline.eval_size, config.latency_threads, config.latency_rounds)
        console.print("per-layer time of the baseline and the pruned + fine-tuned model (the latency floor)")
        floor = {
            name: floor_summary(
                layer_times(models[name], config.baseline.eval_size, config.latency_threads, config.floor_repeats)
            )
            for name in ("baseline", "finetuned")
        }

    with stage("report", f"report.json, report.md and figures in {out}"):
        report = build_report(
            config, models, evaluated, latencies, plan, threshold, sweep, stage.seconds, analyses, curve.points
        )
        report["latency_floor"] = floor
        if steps is not None:
            report["pruning"]["steps"] = steps
        report["latency_onnxruntime"] = onnx_latency
        report["seconds"]["total"] = time.perf_counter() - started
        write_figures(out, models, evaluated, threshold, sweep, report)
        report["seconds"]["report"] = time.perf_counter() - started - sum(
            v for k, v in report["seconds"].items() if k != "total"
        )
        report["seconds"]["total"] = time.perf_counter() - started
        (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
        (out / "report.md").write_text(report_markdown(report))
    console.print(summary_table(report))
    for name, target in report["targets"].items():
        mark = "[green]met[/green]" if target["met"] else "[red]missed[/red]"
        console.print(f"target {name}: {target['text']}: {mark}")
    console.print(f"total {report['seconds']['total'] / 60:.1f} min; report in {out / 'report.md'}")
    return report


def _prune_in_steps(
    config: PipelineConfig,
    sparse: nn.Module,
    analysis: slimprune.Analysis,
    teacher: nn.Module,
    stage: Stages,
    train_kw: Mapping[str, Any],
) -> tuple[nn.Module, nn.Module, slimprune.PruningPlan, list[dict[str, Any]]]:
    """Stages 3 and 4 in ``config.prune_steps`` rounds of prune + fine-tune (see
    :class:`PipelineConfig`): round 1's plan in the prune stage, every round's fine-tuning and
    the later rounds' plans in the fine-tuning stage.

    Returns:
        ``(pruned, finetuned, plan, steps)``: the sparse model pruned by ``plan`` (the one plan of
        the sparse model removing what all rounds removed, :func:`combined_plan`; not fine-tuned),
        the last round's fine-tuned model (exactly ``plan``'s shapes), ``plan``, and per round its
        epochs and the fraction of the original parameters and FLOPs removed after it.
    """
    console = train_kw["console"]
    out = Path(config.out_dir)
    n = config.prune_rounds
    epochs = step_epochs(config.finetune.epochs, n)
    with stage("prune", f"round 1 of {n}: plan on the sparse model (the zeroed channels) and apply"):
        first = first_step_plan(analysis, config)
        console.print(str(first))
    flops0, params0 = first.flops_before, first.params_before
    widths = original_widths(sparse)

    def plan_towards(model: nn.Module, goal: float) -> slimprune.PruningPlan:
        """The smallest |γ| per FLOP of ``model`` until ``goal`` of the original FLOPs are gone, capped."""
        return next_step_plan(analyze(model, config.sparse), flops0, goal, config.round_to,
                              layer_caps(model, widths, config.max_ratio))

    goals = step_goals(removed_flops(first), config.target_flops, n)
    plans, steps = [first], []
    teaching = f", distilling from the baseline (weight {config.finetune.distill:g})" if config.finetune.distill > 0 else ""
    with stage("finetune", f"{n} rounds of prune + fine-tune, {'+'.join(map(str, epochs))} epochs{teaching}"):
        model = apply_plan(sparse, first)
        doomed: slimprune.PruningPlan | None = None
        for k in range(n):
            if k > 0:
                # With fading, the round removes exactly the channels the round before faded out.
                if doomed is not None:
                    plan_k, chosen = doomed, "the channels faded out in the round before"
                else:
                    plan_k = plan_towards(model, goals[k])
                    chosen = "smallest |γ| per FLOP"
                console.print(
                    f"round {k + 1} of {n} ({chosen}; largest |γ| removed {effective_threshold(model, plan_k):.3g}): "
                    + str(plan_k)
                )
                model = apply_plan(model, plan_k)
                plans.append(plan_k)
            (out / f"plan-round-{k + 1}.json").write_text(plans[-1].to_json(indent=1) + "\n")
            folder = config.finetune.out_dir if k == n - 1 else str(Path(config.finetune.out_dir) / f"round-{k + 1}")
            run = replace(config.finetune, epochs=epochs[k], out_dir=folder, progress=config.progress)
            fade, doomed = None, None
            if config.fade > 0 and k < n - 1:
                doomed = plan_towards(model, goals[k + 1])
                fade = fade_hook(doomed, config.fade)
                console.print(f"round {k + 1}: fading out the {doomed.removed_channels} channels round {k + 2} would "
                              f"remove now (λ = {config.fade:g})")
            model = train(run, model=model, teacher=teacher, after_backward=fade, **train_kw).cpu().eval()
            if k < n - 1:
                # The rounds so far as one plan of the sparse model, so that load_detector rebuilds
                # this round's checkpoint (finetune/round-<k>/last.pt) from the file beside it.
                slimprune.io.save(model, Path(folder) / "finetuned.safetensors",
                                  plan=combined_plan(sparse, config.sparse, plans), build=build_spec(config.sparse))
            steps.append(
                {
                    "round": k + 1,
                    "epochs": epochs[k],
                    "params_reduction": 1 - plans[-1].params_after / params0,
                    "flops_reduction": 1 - plans[-1].flops_after / flops0,
                    "checkpoint": str(Path(folder) / "last.pt"),
                }
            )
        plan = combined_plan(sparse, config.sparse, plans)
        pruned = apply_plan(sparse, plan)
        shaped = copy.deepcopy(pruned)
        shaped.load_state_dict(model.state_dict())  # raises if the rounds' model is not plan's shape
        (out / "plan.json").write_text(plan.to_json(indent=1) + "\n")
        slimprune.io.save(pruned, out / "pruned.safetensors", plan=plan, build=build_spec(config.sparse))
        slimprune.io.save(model, out / "finetuned.safetensors", plan=plan, build=build_spec(config.sparse))
        console.print("all rounds as one plan of the sparse model: " + str(plan))
    return pruned, model, plan, steps


def _sweep(
    config: PipelineConfig, analyses: Mapping[str, slimprune.Analysis], root: Path, console: Console
) -> list[dict[str, Any]]:
    """Prune the sparse (and the baseline) model at every sweep fraction, each planned on its
    one analysis, and evaluate it without fine-tuning."""
    sources = {name: analyses[name] for name in ("sparse", "baseline")}
    names = [n for n in sources if n == "sparse" or config.sweep_baseline]
    rows = []
    with bar(config.progress, console, "prune-ratio sweep", len(names) * len(config.sweep)) as advance:
        for name in names:
            for fraction in config.sweep:
                plan = plan_fraction(sources[name], fraction)
                small = apply_plan(sources[name].model, plan)
                result = evaluate_val(small, root, config, console, progress=False)
                rows.append(
                    {
                        "model": name,
                        "target_params": fraction,
                        "params_reduction": removed_params(plan),
                        "flops_reduction": removed_flops(plan),
                        "ap": result.ap,
                    }
                )
                advance()
    return rows
