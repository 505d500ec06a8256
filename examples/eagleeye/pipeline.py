"""Network slimming of EagleEye end to end, the way the PruneFaceDet paper does it.

Jiang et al., *PruneFaceDet: Pruning lightweight face detection network by sparsity
training*, Cognitive Computation and Systems 4(4), 2022, report that sparsity training
(an L1 penalty on every BatchNorm scale γ), removing the channels whose γ is near zero
and fine-tuning leaves EagleEye with 56.3% fewer parameters "with almost no accuracy
loss". :func:`run` reproduces the recipe in six stages:

1. ``baseline``: train EagleEye from scratch with λ = 0;
2. ``sparse``: train it from scratch again with λ > 0, so that unimportant γ go to zero;
3. ``prune``: plan on the sparse model and apply the plan. Every channel that sparsity
   training switched off (|γ| <= ``dead_threshold``) goes, and if that is less than
   ``target_params`` (the paper's 56.3% of the parameters), the smallest-|γ| channels go
   until it is reached; if that still removes less than ``target_flops`` (default 78%)
   of the FLOPs, the plan instead removes the channels with the smallest |γ| per FLOP
   until both targets are met, every pruned layer keeping a multiple of ``round_to``
   channels. ``threshold`` instead removes exactly the channels with |γ| at most it;
4. ``finetune``: train the pruned model on (optionally distilling from the baseline);
5. ``evaluate``: parameters, FLOPs, CPU latency at batch 1 (BatchNorm folded, the faster
   memory layout; eager too) and WIDER FACE AP of all four models, plus a sweep of
   prune ratios of the sparse (and the baseline) model without
   fine-tuning;
6. ``report``: ``report.json``, ``report.md`` and four figures under ``out_dir``.

Everything lands in ``out_dir``: each training stage's ``last.pt`` in a sub-folder,
``plan.json``, the pruned and fine-tuned models as slimprune model files
(``pruned.safetensors``, ``finetuned.safetensors``; read them with :func:`load_pruned`),
the report and the figures.

    >>> report = run(PipelineConfig.create("runs/eagleeye"))  # doctest: +SKIP
    >>> report["models"]["finetuned"]["ap"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn

import slimprune
import slimprune.io
from slimprune.measure import measure
from slimprune.plots import bn_scales, plot_channels, plot_gamma_histogram
from slimprune.sparsity import gamma_stats, scale_per_cost

from .detect import evaluate_model
from .evaluate import EvalResult
from .model import EagleEye
from .train import TrainConfig, prepare_data, train

__all__ = [
    "PAPER",
    "MODELS",
    "PipelineConfig",
    "run",
    "load_pruned",
    "effective_threshold",
    "report_markdown",
    "targets_met",
]

#: What PruneFaceDet reports (the only numbers its abstract gives).
PAPER: Mapping[str, Any] = {
    "citation": (
        "N. Jiang et al., PruneFaceDet: Pruning lightweight face detection network by sparsity "
        "training, Cognitive Computation and Systems 4(4):391-399, 2022, doi 10.1049/ccs2.12065"
    ),
    "params_reduction": 0.563,
    "accuracy": "almost no accuracy loss on WIDER FACE (per-subset APs, λ and FLOPs not published)",
}

#: The four models the report compares, in order.
MODELS: tuple[str, ...] = ("baseline", "sparse", "pruned", "finetuned")

_LABELS = {
    "baseline": "baseline (λ = 0)",
    "sparse": "sparsity-trained",
    "pruned": "pruned, before fine-tuning",
    "finetuned": "pruned + fine-tuned",
}
_SUBSETS = ("easy", "medium", "hard")
_CHANNEL_ROWS = 128  # EagleEye has 94 conv and BatchNorm layers: draw them all
_FACTORY = "examples.eagleeye.model:EagleEye"

# Targets this example is held to (see docs/eagleeye.md).
_TARGET_BASELINE_EASY = 0.80
_TARGET_FLOPS_REDUCTION = 0.45
_TARGET_AP_DROP = 0.01
_TARGET_SPEEDUP = 1.5


# ---------------------------------------------------------------------------
# Configuration


# The training recipe is TrainConfig's defaults, chosen by the measurements in
# docs/eagleeye.md: SGD (AdamW divides the λ·sign(γ) term by the running gradient scale, so
# in 12 epochs γ cannot travel to 0, while SGD with momentum moves it λ·lr/(1-momentum) per
# step: at most ~113·λ over the whole schedule), every γ starting at 0.5 (network slimming's
# own initialisation) so that λ = 0.005 can reach zero, and the GIoU box loss (baseline easy
# AP 0.770 -> 0.878 at seed 0 against smooth L1; 0.902 with γ starting at 0.5). λ is large by
# network-slimming standards (1e-4 for VGG) because the schedule is 444 steps, not tens of
# thousands.
_SPARSITY = 0.005
_SPARSITY_COST = "uniform"
# Fine-tuning: 16 epochs at lr 0.03. The pruned model has lost live channels (the FLOPs
# target goes past the zeroed ones), so it needs retraining more than polishing: at 75% of
# the FLOPs, 4 epochs at lr 0.01 left easy AP 7.7 points below the baseline, 16 at 0.01 3.2,
# 16 at 0.03 0.4. Distilling from the baseline (``distill``, weight 1) was mixed: +1.6 hard
# but -0.2 easy at 75%, -0.9 easy at 78%, so it is off by default (docs/eagleeye.md).
_FINETUNE: Mapping[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.03,
    "weight_decay": 5e-4,
    "warmup_epochs": 0.2,
    "distill": 0.0,
}
_FINETUNE_EPOCHS = 16
# |γ| at or below this counts as zeroed by sparsity training: after it, such channels sit
# at 1e-7..1e-4 while the smallest channels that matter are above 1e-2.
_DEAD = 1e-3
# Remove at least this fraction of the FLOPs, ranking channels by |γ| per FLOP: removing only
# the zeroed channels leaves the stride-8 layers, which hold the FLOPs and the latency, nearly
# whole. Fine-tuned as above, 75/78/80% of the FLOPs kept easy AP within -0.4/-0.8/-2.1 points
# of the baseline (80% with distillation) and timed 1.53/1.55/1.57x (docs/eagleeye.md).
_TARGET_FLOPS_PRUNED = 0.78
# Pruned widths are multiples of this: CPU kernels process channels in blocks of 8 or 16
# floats, so other widths pay for the padding (docs/eagleeye.md, "Measuring latency").
_ROUND_TO = 8
_QUICK_EPOCHS = 30
_QUICK_FINETUNE_EPOCHS = 30


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run: three training runs plus how to prune, sweep and measure.

    Attributes:
        out_dir: where everything is written.
        baseline: the λ = 0 run (its ``data_root``, ``device``, ``eval_size`` serve all stages).
        sparse: the sparsity-training run (``sparsity`` is λ).
        finetune: the fine-tuning run of the pruned model.
        target_params: the least fraction of parameters to remove: the smallest-|γ| channels
            go until this fraction is gone (ignored when ``threshold`` is set).
        target_flops: with ``target_params``, the least fraction of FLOPs (at the training
            size) to remove as well (default 0.78): when removing the zeroed channels and
            ``target_params`` falls short of it, the channels with the smallest |γ| per FLOP
            go until both targets are met (:func:`slimprune.sparsity.scale_per_cost`).
            None: no FLOPs target.
        dead_threshold: with ``target_params``, also remove every channel whose |γ| are all at
            most this, i.e. every channel sparsity training switched off, even beyond
            ``target_params``. 0 stops exactly at ``target_params``.
        threshold: instead of both, remove exactly the channels whose |γ| are all at most this
            (network slimming's global threshold).
        round_to: every pruned layer keeps a multiple of this many channels (``slimprune.plan``'s
            ``round_to``; the channels given back are the best of those the plan removed). CPU
            convolution kernels work on blocks of 8 (AVX2) or 16 (AVX-512) channels, so a
            layer cut to 17 channels costs what 24 or 32 do (docs/eagleeye.md). 1: any width.
        sweep: parameter fractions at which the sparse and the baseline model are pruned
            and evaluated without fine-tuning (for ``ap_vs_pruned.png``).
        sweep_baseline: also sweep the baseline model (the curve without sparsity training).
        latency_threads: torch threads while timing (batch 1, on the CPU).
        latency_repeats: forward passes timed per model and memory layout, all models
            interleaved (see :func:`_time_models`); the median is kept.
        latency_rounds: the passes are split over this many rounds, each on fresh copies.
        eval_threads: torch threads while evaluating (None: the evaluator's default).
        progress: rich progress bars.
    """

    out_dir: str
    baseline: TrainConfig
    sparse: TrainConfig
    finetune: TrainConfig
    target_params: float = PAPER["params_reduction"]
    target_flops: float | None = _TARGET_FLOPS_PRUNED
    dead_threshold: float = _DEAD
    threshold: float | None = None
    round_to: int = _ROUND_TO
    sweep: tuple[float, ...] = (0.2, 0.4, 0.563, 0.7, 0.8)
    sweep_baseline: bool = True
    latency_threads: int = 1
    latency_repeats: int = 300
    latency_rounds: int = 3
    eval_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.threshold is None and not 0 < self.target_params < 1:
            raise ValueError(f"target_params={self.target_params} must be a fraction in (0, 1) of the parameters.")
        if self.threshold is not None and not self.threshold >= 0:
            raise ValueError(f"threshold={self.threshold} must be >= 0 (it bounds |γ|).")
        if self.target_flops is not None and not 0 < self.target_flops < 1:
            raise ValueError(f"target_flops={self.target_flops} must be a fraction in (0, 1) of the FLOPs, or None.")
        if not self.dead_threshold >= 0:
            raise ValueError(f"dead_threshold={self.dead_threshold} must be >= 0 (0 disables it).")
        if self.round_to < 1:
            raise ValueError(f"round_to={self.round_to} must be >= 1 (1 keeps any width).")
        if any(not 0 < r < 1 for r in self.sweep):
            raise ValueError(f"sweep={self.sweep}: every entry is a parameter fraction in (0, 1).")
        if self.sparse.sparsity <= 0:
            raise ValueError(f"sparse.sparsity={self.sparse.sparsity}: sparsity training needs λ > 0.")

    @classmethod
    def create(
        cls,
        out_dir: str = "runs/eagleeye",
        *,
        quick: bool = False,
        train_overrides: Mapping[str, Any] | None = None,
        sparsity: float | None = None,
        sparsity_cost: str | None = None,
        finetune_epochs: int | None = None,
        resume: bool = False,
        **fields: Any,
    ) -> PipelineConfig:
        """The default pipeline (or the ``quick`` one), with the given changes.

        Args:
            out_dir: where everything goes; stage checkpoints in ``<out_dir>/<stage>/``.
            quick: tiny data, a few epochs per stage, a two-point sweep: a smoke run of
                under a minute.
            train_overrides: :class:`TrainConfig` fields applied to all three runs
                (``data_root``, ``epochs``, ``image_size``, ``device``, ``seed``, ...);
                ``epochs`` applies to the baseline and sparse runs only.
            sparsity: λ of the sparse run (default 0.005).
            sparsity_cost: how λ is shared among channels in the sparse run (``"uniform"``,
                ``"flops"``, ``"params"``; see ``TrainConfig.sparsity_cost``).
            finetune_epochs: epochs of fine-tuning (default 16).
            resume: continue each training stage from its checkpoint in ``out_dir``.
            **fields: other :class:`PipelineConfig` fields (``target_params``, ``threshold``, ...).

        Example:
            >>> config = PipelineConfig.create("runs/ee", train_overrides={"epochs": 16})
        """
        overrides = dict(train_overrides or {})
        out = Path(out_dir)
        base = TrainConfig.quick() if quick else TrainConfig()
        if quick:
            # TrainConfig.quick's two epochs of 6 steps leave every score at the 0.01 prior;
            # 30 epochs (180 steps, ~15 s) find some faces (AP ~0.1).
            base = replace(base, epochs=_QUICK_EPOCHS)
        ft_overrides = {k: v for k, v in overrides.items() if k != "epochs"}
        baseline = replace(base, out_dir=str(out / "baseline"), resume=resume, **overrides)
        sparse = replace(
            baseline,
            out_dir=str(out / "sparse"),
            sparsity=_SPARSITY if sparsity is None else sparsity,
            sparsity_cost=_SPARSITY_COST if sparsity_cost is None else sparsity_cost,
        )
        # A quick sparse run is too short to zero many channels, so its pruned model has lost
        # real ones and needs retraining more than fine-tuning: the full learning rate.
        finetune = replace(
            base,
            out_dir=str(out / "finetune"),
            resume=resume,
            epochs=finetune_epochs or (_QUICK_FINETUNE_EPOCHS if quick else _FINETUNE_EPOCHS),
            **{**_FINETUNE, **({"lr": base.lr} if quick else {}), **ft_overrides},
        )
        if quick:
            # A quick sparse run zeroes almost nothing, so a FLOPs target would cut live channels.
            fields = {
                "target_flops": None,
                "sweep": (0.4, 0.7),
                "sweep_baseline": False,
                "latency_repeats": 10,
                "latency_rounds": 1,
                **fields,
            }
        return cls(out_dir=str(out), baseline=baseline, sparse=sparse, finetune=finetune, **fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for report.json."""
        return {
            "out_dir": self.out_dir,
            "baseline": self.baseline.to_dict(),
            "sparse": self.sparse.to_dict(),
            "finetune": self.finetune.to_dict(),
            "target_params": self.target_params,
            "target_flops": self.target_flops,
            "dead_threshold": self.dead_threshold,
            "threshold": self.threshold,
            "round_to": self.round_to,
            "sweep": list(self.sweep),
            "sweep_baseline": self.sweep_baseline,
            "latency_threads": self.latency_threads,
            "latency_repeats": self.latency_repeats,
            "latency_rounds": self.latency_rounds,
            "eval_threads": self.eval_threads,
        }


# ---------------------------------------------------------------------------
# Models on disk


def _build_spec(config: TrainConfig) -> dict[str, Any]:
    """How :func:`slimprune.io.load` rebuilds the unpruned EagleEye of ``config``."""
    return {
        "factory": _FACTORY,
        "kwargs": {
            "num_anchors": list(config.anchors.num_anchors),
            "width_mult": config.width_mult,
            "activation": config.activation,
        },
    }


def load_pruned(path: str | os.PathLike[str]) -> nn.Module:
    """A pruned EagleEye saved by the pipeline (``pruned.safetensors``, ``finetuned.safetensors``).

    The file names its original architecture as ``EagleEye(**kwargs)``; only that factory
    is accepted, so loading never imports anything the file chooses.

    Raises:
        ValueError: the file was not written by this pipeline.
        slimprune.FileFormatError, slimprune.PlanMismatchError: as :func:`slimprune.io.load`.
    """
    info = slimprune.io.read_header(path)
    if info.build is None or info.build.factory != _FACTORY:
        found = None if info.build is None else info.build.factory
        raise ValueError(
            f"{path} does not hold a pruned EagleEye (its build spec names {found!r}, expected {_FACTORY!r})."
        )
    kwargs = dict(info.build.kwargs)
    return slimprune.io.load(path, build_fn=lambda: EagleEye(**kwargs))


# ---------------------------------------------------------------------------
# Pieces of the pipeline


def effective_threshold(model: nn.Module, plan: slimprune.PruningPlan) -> float:
    """The largest |γ| a plan removes: the threshold a ``target_params`` plan amounts to.

    Every scale (BatchNorm γ) of a removed channel is removed with it, so the maximum over
    removed scale entries is the largest per-channel max |γ| that went. 0 when nothing went.
    """
    largest = 0.0
    for s in plan.slices:
        if s.role != "scale" or not s.removed:
            continue
        owner = model.get_submodule(s.module) if s.module else model
        values = getattr(owner, s.param).detach().abs().float().cpu()[list(s.removed)]
        largest = max(largest, float(values.max()))
    return largest


def _example(config: TrainConfig) -> tuple[torch.Tensor]:
    """A fixed random batch of two training-size images, for tracing and probing."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, config.image_size, config.image_size, generator=g),)


# Planning by parameter fraction selects channels before removed channels' constants are
# folded into biases; a conv without a bias gains one, so the pruned model can keep a few
# hundred parameters more than asked. The fraction asked is raised by the shortfall (plus
# this step) until the plan, whose params_after counts the new biases, removes enough.
_FRACTION_STEP = 1e-3
_FRACTION_TRIES = 10
_MAX_FRACTION = 0.99


def _plan(
    model: nn.Module,
    config: TrainConfig,
    *,
    fraction: float | None = None,
    threshold: float | None = None,
    target: str = "params",
    round_to: int = 1,
) -> slimprune.PruningPlan:
    """Plan on a CPU copy of ``model``: by threshold on |γ|, or removing at least ``fraction`` of the ``target``."""
    cpu = copy.deepcopy(model).cpu().eval()
    example = _example(config)
    if threshold is not None:
        return slimprune.plan(cpu, threshold=threshold, example_inputs=example, round_to=round_to)
    assert fraction is not None
    measure_removed = _removed if target == "params" else _removed_flops
    # By FLOPs, rank by |γ| per FLOP: by |γ| alone the cheap low-resolution channels go first
    # and the target is reached only by removing far more of them (docs/eagleeye.md).
    importance = scale_per_cost("flops") if target == "flops" else "bn_scale"
    plan_for = functools.partial(
        slimprune.plan, cpu, target=target, importance=importance, example_inputs=example, round_to=round_to
    )
    # slimprune may fall a hair short of (or refuse) a fraction once folded biases are counted;
    # ask for a little more until the plan removes what was asked.
    asked = fraction
    for _ in range(_FRACTION_TRIES):
        try:
            plan = plan_for(asked)
        except slimprune.InfeasiblePlanError:
            if asked >= _MAX_FRACTION:
                raise
            asked = min(_MAX_FRACTION, asked + _FRACTION_STEP)
            continue
        if measure_removed(plan) >= fraction or asked >= _MAX_FRACTION:
            return plan
        asked = min(_MAX_FRACTION, asked + (fraction - measure_removed(plan)) + _FRACTION_STEP)
    return plan_for(asked)


def _removed_flops(plan: slimprune.PruningPlan) -> float:
    return 1 - plan.flops_after / plan.flops_before


def _removed(plan: slimprune.PruningPlan) -> float:
    return 1 - plan.params_after / plan.params_before


def _prune_plan(sparse: nn.Module, config: PipelineConfig) -> slimprune.PruningPlan:
    """The plan of stage 3: by ``threshold``; or every zeroed channel and at least ``target_params``;
    or, when that misses ``target_flops``, the smallest |γ| per FLOP until both targets are met.
    """
    rounding = config.round_to
    if config.threshold is not None:
        return _plan(sparse, config.sparse, threshold=config.threshold, round_to=rounding)
    plan = None
    if config.dead_threshold > 0:
        plan = _plan(sparse, config.sparse, threshold=config.dead_threshold, round_to=rounding)
    if plan is None or _removed(plan) < config.target_params:
        plan = _plan(sparse, config.sparse, fraction=config.target_params, round_to=rounding)
    if config.target_flops is None or _removed_flops(plan) >= config.target_flops:
        return plan
    fraction = config.target_flops
    for _ in range(_FRACTION_TRIES):
        by_flops = _plan(sparse, config.sparse, fraction=fraction, target="flops", round_to=rounding)
        if _removed(by_flops) >= config.target_params or fraction >= _MAX_FRACTION:
            return by_flops
        fraction = min(_MAX_FRACTION, fraction + 0.02)
    return by_flops


def _apply(model: nn.Module, plan: slimprune.PruningPlan) -> nn.Module:
    """The pruned copy of ``model`` (on the CPU, in eval mode, every parameter trainable)."""
    return slimprune.apply(model.cpu().eval(), plan).eval()


@dataclass(frozen=True)
class _Evaluated:
    ap: dict[str, float]
    pr: dict[str, tuple[np.ndarray, np.ndarray]]
    seconds: float


def _evaluate(model: nn.Module, root: Path, cfg: PipelineConfig, console: Console, progress: bool) -> _Evaluated:
    start = time.perf_counter()
    device = cfg.baseline.device
    result: EvalResult
    result, _ = evaluate_model(
        model.to(device),
        root,
        "val",
        cfg.baseline.eval_size,
        device=device,
        threads=cfg.eval_threads,
        progress=progress,
        console=console,
    )
    model.cpu()
    return _Evaluated(dict(result.ap), dict(result.pr), time.perf_counter() - start)


#: How every model is timed: eager as trained, and as deployed (BatchNorm folded into the
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


def _deployed(model: nn.Module, form: str, layout: str) -> nn.Module:
    """A copy of ``model`` in eval mode, BatchNorm folded when ``form`` is ``"folded"``, in ``layout``."""
    from torch.fx.experimental.optimization import fuse

    copied = copy.deepcopy(model).cpu().eval()
    if form == "folded":
        copied = fuse(copied)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return copied.to(memory_format=fmt)


def _time_models(
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
                model = _deployed(models[name], form, layout)
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


def _flops(model: nn.Module, size: int) -> int:
    return measure(model, torch.zeros(1, 3, size, size), latency=False).flops


class _Stages:
    """Rule, timer and summary line around each stage of the run."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.index = 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.index += 1
        self.console.rule(f"[bold]stage {self.index}/{self.total}: {name}[/bold] - {what}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"[green]✓[/green] {name} done in {self.seconds[name]:.1f} s")


@contextmanager
def _bar(enabled: bool, console: Console, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar; yields a function that advances it by one."""
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


# ---------------------------------------------------------------------------
# The run


def run(config: PipelineConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every stage and write the report; returns the report (as in ``report.json``).

    Args:
        config: the run (see :meth:`PipelineConfig.create`).
        console: where progress and tables go (default: a new rich Console).

    Returns:
        The report: ``config``, ``paper``, ``models`` (params, FLOPs, latency, AP per model),
        ``pruning``, ``gamma``, ``sweep``, ``targets``, ``seconds`` and ``files``.

    Raises:
        CheckpointError: with ``resume``, a stage checkpoint does not fit its stage.
        slimprune.InfeasiblePlanError: the pruning target cannot be reached.
    """
    console = console or Console()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stage = _Stages(console, 6)
    train_kw = {"console": console}

    with stage("baseline", f"train from scratch, λ = 0, {config.baseline.epochs} epochs"):
        baseline = train(replace(config.baseline, progress=config.progress), **train_kw).cpu().eval()
    with stage("sparse", f"train from scratch, λ = {config.sparse.sparsity:g}, {config.sparse.epochs} epochs"):
        sparse = train(replace(config.sparse, progress=config.progress), **train_kw).cpu().eval()

    with stage("prune", "plan on the sparse model and apply"):
        plan = _prune_plan(sparse, config)
        (out / "plan.json").write_text(plan.to_json(indent=1) + "\n")
        pruned = _apply(sparse, plan)
        threshold = config.threshold if config.threshold is not None else effective_threshold(sparse, plan)
        slimprune.io.save(pruned, out / "pruned.safetensors", plan=plan, build=_build_spec(config.sparse))
        console.print(str(plan))

    teaching = f", distilling from the baseline (weight {config.finetune.distill:g})" if config.finetune.distill > 0 else ""
    with stage("finetune", f"train the pruned model for {config.finetune.epochs} epochs{teaching}"):
        finetuned = train(
            replace(config.finetune, progress=config.progress),
            model=copy.deepcopy(pruned),
            teacher=baseline,  # used only when config.finetune.distill > 0
            **train_kw,
        ).cpu().eval()
        slimprune.io.save(finetuned, out / "finetuned.safetensors", plan=plan, build=_build_spec(config.sparse))

    models = {"baseline": baseline, "sparse": sparse, "pruned": pruned, "finetuned": finetuned}
    root = prepare_data(config.baseline)
    with stage("evaluate", "AP, parameters, FLOPs, latency; prune-ratio sweep"):
        evaluated = {}
        for name, model in models.items():
            console.print(f"evaluating {_LABELS[name]}")
            evaluated[name] = _evaluate(model, root, config, console, config.progress)
        sweep = _sweep(config, {"sparse": sparse, "baseline": baseline}, root, console)
        console.print(f"timing at batch 1, {config.baseline.eval_size} px, {config.latency_threads} thread(s)")
        latencies = _time_models(
            models, config.baseline.eval_size, config.latency_threads, config.latency_repeats, config.latency_rounds
        )

    with stage("report", f"report.json, report.md and figures in {out}"):
        report = _report(config, models, evaluated, latencies, plan, threshold, sweep, stage.seconds)
        report["seconds"]["total"] = time.perf_counter() - started
        _figures(out, models, evaluated, threshold, sweep, report)
        report["seconds"]["report"] = time.perf_counter() - started - sum(
            v for k, v in report["seconds"].items() if k != "total"
        )
        report["seconds"]["total"] = time.perf_counter() - started
        (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
        (out / "report.md").write_text(report_markdown(report))
    console.print(_summary_table(report))
    for name, target in report["targets"].items():
        mark = "[green]met[/green]" if target["met"] else "[red]missed[/red]"
        console.print(f"target {name}: {target['text']}: {mark}")
    console.print(f"total {report['seconds']['total'] / 60:.1f} min; report in {out / 'report.md'}")
    return report


def _sweep(
    config: PipelineConfig, sources: Mapping[str, nn.Module], root: Path, console: Console
) -> list[dict[str, Any]]:
    """Prune each source model at every sweep fraction and evaluate it without fine-tuning."""
    names = [n for n in sources if n == "sparse" or config.sweep_baseline]
    rows = []
    with _bar(config.progress, console, "prune-ratio sweep", len(names) * len(config.sweep)) as advance:
        for name in names:
            for fraction in config.sweep:
                plan = _plan(sources[name], config.sparse, fraction=fraction)
                small = _apply(sources[name], plan)
                result = _evaluate(small, root, config, console, progress=False)
                rows.append(
                    {
                        "model": name,
                        "target_params": fraction,
                        "params_reduction": 1 - plan.params_after / plan.params_before,
                        "flops_reduction": 1 - plan.flops_after / plan.flops_before,
                        "ap": result.ap,
                    }
                )
                advance()
    return rows


# ---------------------------------------------------------------------------
# Report


def _report(
    config: PipelineConfig,
    models: Mapping[str, nn.Module],
    evaluated: Mapping[str, _Evaluated],
    latencies: Mapping[str, Timing],
    plan: slimprune.PruningPlan,
    threshold: float,
    sweep: list[dict[str, Any]],
    seconds: Mapping[str, float],
) -> dict[str, Any]:
    size = config.baseline.eval_size
    entries: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        entries[name] = {
            "label": _LABELS[name],
            "params": slimprune.measure.count_params(model),
            "flops": _flops(model, size),
            "flops_512": _flops(model, 512),
            "flops_train": _flops(model, config.baseline.image_size),
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
        entry["ap_change"] = {s: entry["ap"][s] - base["ap"][s] for s in _SUBSETS}
    targets = targets_met(entries)
    example = _example(config.sparse)
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
            "flops_reduction": _removed_flops(plan),
            "dead_threshold": None if config.threshold is not None else config.dead_threshold,
            "threshold": threshold,
            "round_to": config.round_to,
            "params_reduction": _removed(plan),
            "removed_channels": plan.removed_channels,
            "prunable_channels": plan.prunable_channels,
            "params_before": plan.params_before,
            "params_after": plan.params_after,
            "flops_before_train_size": plan.flops_before,
            "flops_after_train_size": plan.flops_after,
            "notes": list(plan.notes),
        },
        "gamma": {
            "baseline": _jsonable(gamma_stats(models["baseline"], (1e-3, 1e-2, 1e-1), example_inputs=example)),
            "sparse": _jsonable(gamma_stats(models["sparse"], (1e-3, 1e-2, 1e-1), example_inputs=example)),
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
    worst_drop = max(-ft["ap_change"][s] for s in _SUBSETS)
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
            + ", ".join(f"{s} {100 * ft['ap_change'][s]:+.1f}" for s in _SUBSETS)
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


def _human(n: float) -> str:
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
        params, flops = f"{m['params']:,}", _human(m["flops"])
        if m["params_reduction"]:
            params += f" ({-m['params_reduction']:+.1%})"
        if m["flops_reduction"]:
            flops += f" ({-m['flops_reduction']:+.1%})"
        lines.append(
            f"| {m['label']} | {params} | {flops} | {_human(m['flops_512'])} | {m['latency_ms']:.2f} | "
            f"{m['speedup']:.2f}x | "
            + " | ".join(f"{m['ap'][s]:.3f}" for s in _SUBSETS)
            + "".join(
                f" | {m['latency_by_setting_ms'][f'{form}/{lay}']:.2f}"
                for form in ("folded", "eager")
                for lay in LAYOUTS
            )
            + " |"
        )
    ft = models["finetuned"]
    drops = ", ".join(f"{s} {100 * ft['ap_change'][s]:+.1f}" for s in _SUBSETS)
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
            f"| {_LABELS[name]} | {g['percentiles']['50']:.3g} | {g['percentiles']['5']:.3g} | "
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
            + " | ".join(f"{row['ap'][s]:.3f}" for s in _SUBSETS)
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


def _summary_table(report: Mapping[str, Any]) -> Table:
    table = Table(title=f"EagleEye pruning pipeline ({report['eval_size']} px, CPU latency at batch 1)")
    for column in ("model", "params", "FLOPs", "latency", "speed-up", "easy", "medium", "hard"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in MODELS:
        m = report["models"][name]
        table.add_row(
            m["label"],
            f"{m['params']:,}",
            _human(m["flops"]),
            f"{m['latency_ms']:.2f} ms",
            f"{m['speedup']:.2f}x",
            *(f"{m['ap'][s]:.3f}" for s in _SUBSETS),
        )
    return table


# ---------------------------------------------------------------------------
# Figures


def _figure(size: tuple[float, float]) -> Any:
    """A matplotlib Figure on its own Agg canvas (pyplot's state is never touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _figures(
    out: Path,
    models: Mapping[str, nn.Module],
    evaluated: Mapping[str, _Evaluated],
    threshold: float,
    sweep: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
) -> None:
    # A log axis has no zero: mark the smallest positive |γ| when nothing above 0 was removed.
    scales = bn_scales(models["sparse"])
    positive = scales[scales > 0]
    mark = threshold if threshold > 0 else (float(positive.min()) if positive.size else None)
    plot_gamma_histogram(models["baseline"], models["sparse"], threshold=mark, path=out / "gamma_hist.png")
    plot_channels(models["sparse"], models["finetuned"], out / "channels.png", max_layers=_CHANNEL_ROWS)
    _plot_pr(out / "pr_curves.png", evaluated)
    _plot_sweep(out / "ap_vs_pruned.png", sweep, report)


def _plot_pr(path: Path, evaluated: Mapping[str, _Evaluated]) -> None:
    figure = _figure((13.0, 4.2))
    axes = figure.subplots(1, len(_SUBSETS), sharey=True)
    styles = {"baseline": "-", "sparse": "--", "pruned": ":", "finetuned": "-"}
    colors = {"baseline": "tab:blue", "sparse": "tab:green", "pruned": "tab:red", "finetuned": "tab:orange"}
    for ax, subset in zip(axes, _SUBSETS):
        for name in MODELS:
            precision, recall = evaluated[name].pr[subset]
            ax.plot(
                recall,
                precision,
                styles[name],
                color=colors[name],
                label=f"{_LABELS[name]}: AP {evaluated[name].ap[subset]:.3f}",
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
        for subset in _SUBSETS:
            y = [models[source]["ap"][subset]] + [r["ap"][subset] for r in rows]
            label = f"{subset}, {'sparsity-trained' if source == 'sparse' else 'baseline'} model"
            ax.plot(x, y, style, color=colors[subset], alpha=1.0 if source == "sparse" else 0.5, label=label)
    ft = models["finetuned"]
    for subset in _SUBSETS:
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
