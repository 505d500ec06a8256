"""Network slimming of YOLOv8n with Ultralytics' own trainer, on SynthFaces in YOLO format.

Phases: sparsity training (L1 on every prunable BatchNorm γ, ``SparsityRegularizer.step()`` between
backward and the optimizer step, from a trainer subclass), pruning by threshold, fine-tuning
the pruned model with Ultralytics, and Ultralytics' ``val`` (mAP50, mAP50-95) before and
after, with params and FLOPs from :func:`slimprune.measure` and CPU latency timed with every stage
interleaved in one process (examples/yolo/timing.py).

    PYTHONPATH=. python -m examples.yolo.slimming [--quick] [--out runs/yolo-slimming]
    PYTHONPATH=. python -m examples.yolo.slimming --dense        # λ = 0, same total epochs, no pruning
    PYTHONPATH=. python -m examples.yolo.slimming --sweep 1e-3 1e-2 --sparse-epochs 5   # λ sweep

The threshold is read from the γ distribution after sparsity training, as network slimming
does: the ``prune_fraction`` percentile of |γ| over the prunable channels (those a
``threshold=`` plan can remove: the regulariser's channels), then ``plan(threshold=t)``.

Offline throughout (docs/ultralytics.md says what that takes). ``--quick`` is the smoke run
the tests use (tiny data, one epoch per phase).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import slimprune  # noqa: E402
from slimprune.measure import measure  # noqa: E402
from slimprune.sparsity import SparsityRegularizer  # noqa: E402

from . import data as yolo_data  # noqa: E402
from .workflow import trainer_for  # noqa: E402


@dataclass(frozen=True)
class Config:
    n_train: int = 200
    n_val: int = 50
    imgsz: int = 160
    batch: int = 16
    sparse_epochs: int = 10
    finetune_epochs: int = 5
    lam: float = 1e-2
    # threshold = this global percentile of the prunable |γ| after sparsity training (network
    # slimming's rule); an explicit ``threshold`` replaces it.
    prune_fraction: float = 0.5
    threshold: float | None = None
    seed: int = 0
    # Not Ultralytics' "auto" (AdamW for short runs: Adam divides λ·sign(γ) by its own running
    # scale, so the L1 term stops pulling γ to 0) but SGD, stepping every batch (nbs = batch;
    # the default nbs=64 steps every 4th batch of 16).
    optimizer: str = "SGD"
    lr0: float = 0.01
    nbs: int = 16


# The smoke run: two optimizer steps, so γ hardly leaves 1; the percentile threshold still
# removes the lower half of the prunable channels and exercises every phase.
QUICK = Config(n_train=8, n_val=4, batch=4, nbs=4, sparse_epochs=1, finetune_epochs=1, lam=0.1)


def _quiet_fonts() -> None:
    """check_det_dataset fetches Arial.ttf for plot labels when missing: use a local TTF."""
    import matplotlib
    import ultralytics.data.utils as data_utils

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    data_utils.check_font = lambda font="Arial.ttf": dejavu


def prunable_bns(model: nn.Module, imgsz: int) -> list[str]:
    """The BatchNorms a threshold plan can shrink: those with a channel removed at an infinite threshold.

    fx cannot trace a ``DetectionModel`` whole (its forward takes ``*args``), so slimprune plans
    it region by region; :class:`SparsityRegularizer` analyses it the same way and regularises
    exactly these layers by default (tests/test_ultralytics.py checks that they agree). Used
    here for the |γ| statistics."""
    probe = copy.deepcopy(model).float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(probe, threshold=1e30, example_inputs=torch.rand(1, 3, imgsz, imgsz))
    return sorted({s.module for s in plan.changed if s.role == "scale"})


def prunable_gammas(model: nn.Module, imgsz: int) -> np.ndarray:
    """|γ| of every channel of the prunable BatchNorms, as one array."""
    return np.concatenate([model.get_submodule(n).weight.detach().abs().flatten().cpu().double().numpy()
                           for n in prunable_bns(model, imgsz)])


def gamma_summary(g: np.ndarray) -> dict[str, Any]:
    """Percentiles of |γ| and the largest gap (in log |γ|) between neighbours of the sorted values."""
    pcts = (1, 5, 10, 25, 50, 75, 90, 99)
    srt = np.sort(g)
    logs = np.log10(np.maximum(srt, 1e-12))
    i = int(np.argmax(np.diff(logs))) if srt.size > 1 else 0
    return {"count": int(g.size), "percentiles": {f"p{p}": float(v) for p, v in zip(pcts, np.percentile(g, pcts))},
            "largest_gap": {"below": float(srt[i]), "above": float(srt[min(i + 1, srt.size - 1)]),
                            "fraction_below": (i + 1) / max(srt.size, 1)}}


def sparsity_trainer(yolo: Any, lam: float, imgsz: int = 160) -> type:
    """The task's trainer with λ·sign(γ) added to every prunable γ's gradient before each step."""
    base = yolo.task_map[yolo.task]["trainer"]

    class SparsityTrainer(base):  # type: ignore[misc, valid-type]
        _reg: SparsityRegularizer | None = None
        _steps = 0

        def optimizer_step(self) -> None:
            if self._reg is None:  # the prunable BatchNorms, found region by region (no bn_modules= needed)
                x = torch.rand(1, 3, imgsz, imgsz, device=next(self.model.parameters()).device)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._reg = SparsityRegularizer(self.model, lam, example_inputs=x)
            # Ultralytics' step (amp=False: nothing to unscale), with the L1 term added after its
            # gradient clipping: clipped together with the loss's (large) gradient, λ·sign(γ) would
            # be scaled down with it and γ would hardly move.
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
            self._reg.step(self._steps)
            self._steps += 1
            self.optimizer.step()
            self.optimizer.zero_grad()
            if self.ema:
                self.ema.update(self.model)

    return SparsityTrainer


def _args(cfg: Config, out: Path, name: str) -> dict[str, Any]:
    return dict(imgsz=cfg.imgsz, batch=cfg.batch, workers=0, plots=False, device="cpu", verbose=False,
                amp=False, seed=cfg.seed, deterministic=True, optimizer=cfg.optimizer, lr0=cfg.lr0, nbs=cfg.nbs, project=str(out / "runs"), name=name, exist_ok=True)


def _val(yolo: Any, data: Path, cfg: Config, out: Path, name: str) -> dict[str, float]:
    args = {k: v for k, v in _args(cfg, out, name).items() if k not in ("amp", "seed", "deterministic", "optimizer", "lr0", "nbs")}
    r = yolo.val(data=str(data), **args).results_dict
    return {"mAP50": float(r["metrics/mAP50(B)"]), "mAP50-95": float(r["metrics/mAP50-95(B)"])}


def _figures(model: nn.Module, cfg: Config) -> dict[str, float]:
    """Params and FLOPs of ``model``; its latency is timed with the other stages' (:func:`_latencies`)."""
    m = measure(model.eval(), torch.rand(1, 3, cfg.imgsz, cfg.imgsz), latency=False)
    return {"params": int(m.params), "flops": int(m.flops)}


def _latencies(models: dict[str, nn.Module], cfg: Config, quick: bool) -> dict[str, dict[str, float]]:
    """CPU latency of every model, timed in one process, interleaved (examples/yolo/timing.py):
    the same input, 1 thread, eval mode, float32, each model once per round in rotated order, so
    that load from other jobs falls on every stage alike (each stage used to be timed alone,
    right after it was made, and read up to 2.7x slow under load). ``latency_ms`` is the median
    of the round medians."""
    from .timing import interleaved

    x = torch.rand(1, 3, cfg.imgsz, cfg.imgsz, generator=torch.Generator().manual_seed(0))
    torch.set_num_threads(1)
    with torch.no_grad():
        t = interleaved({n: (lambda m=m.float().eval(): m(x)) for n, m in models.items()},
                        rounds=1 if quick else 7, min_run_time=0.05 if quick else 0.5)
    return {n: {"latency_ms": v["median_ms"], "latency_range_ms": [v["min_ms"], v["max_ms"]]} for n, v in t.items()}


def _setup(cfg: Config, out: Path) -> tuple[Any, Path]:
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    SETTINGS.update(sync=False)
    _quiet_fonts()
    torch.set_num_threads(1)
    data = yolo_data.write(out / "data", n_train=cfg.n_train, n_val=cfg.n_val, image_size=cfg.imgsz, seed=cfg.seed)
    return YOLO("yolov8n.yaml", verbose=False), data


def _sparse_phase(cfg: Config, out: Path, epochs: int, name: str) -> tuple[Any, Path, nn.Module]:
    yolo, data = _setup(cfg, out)
    yolo.train(data=str(data), trainer=sparsity_trainer(yolo, cfg.lam, cfg.imgsz), epochs=epochs,
               pretrained=False, **_args(cfg, out, name))
    return yolo, data, yolo.model.float().eval()  # best.pt, reloaded


def run(cfg: Config, out: Path) -> dict[str, Any]:
    """Sparsity training, threshold pruning at the γ percentile, fine-tuning; result.json."""
    quick = cfg == QUICK
    out = Path(out)
    yolo, data, dense = _sparse_phase(cfg, out, cfg.sparse_epochs, "sparse")
    before = {**_val(yolo, data, cfg, out, "val-sparse"), **_figures(dense, cfg)}
    gammas = prunable_gammas(dense, cfg.imgsz)
    before["gamma"] = gamma_summary(gammas)
    threshold = cfg.threshold if cfg.threshold is not None else float(np.quantile(gammas, cfg.prune_fraction))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(dense, threshold=threshold, example_inputs=torch.rand(1, 3, cfg.imgsz, cfg.imgsz))
    small = slimprune.apply(dense, plan)
    yolo.model = small
    pruned = {**_val(yolo, data, cfg, out, "val-pruned"), **_figures(small, cfg)}
    yolo.train(data=str(data), trainer=trainer_for(yolo, small.train()), epochs=cfg.finetune_epochs,
               **_args(cfg, out, "finetune"))
    after = {**_val(yolo, data, cfg, out, "val-finetuned"), **_figures(yolo.model.float(), cfg)}
    # fine-tuning trained `small` in place: the pruned stage is timed as a fresh apply of the plan
    timed = _latencies({"sparse": dense, "pruned": slimprune.apply(dense, plan), "finetuned": yolo.model}, cfg, quick)
    for stage, figures in (("sparse", before), ("pruned", pruned), ("finetuned", after)):
        figures.update(timed[stage])
    removed = int(sum(len(s.removed) for s in plan.changed if s.role == "scale"))  # BN γ
    result = {"config": asdict(cfg), "sparse": before, "pruned": pruned, "finetuned": after,
              "threshold": threshold, "threshold_rule": "explicit" if cfg.threshold is not None
              else f"{cfg.prune_fraction:.0%} percentile of the prunable |γ|",
              "prunable_channels": int(gammas.size), "channels_removed": removed,
              "channels_removed_fraction": removed / max(int(gammas.size), 1)}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def run_dense(cfg: Config, out: Path) -> dict[str, Any]:
    """The baseline: the same trainer with λ = 0 for sparse + fine-tuning epochs, no pruning."""
    cfg = dataclasses.replace(cfg, lam=0.0)
    out = Path(out)
    yolo, data, dense = _sparse_phase(cfg, out, cfg.sparse_epochs + cfg.finetune_epochs, "dense")
    result = {"config": asdict(cfg), "dense": {**_val(yolo, data, cfg, out, "val-dense"),
                                                **_figures(dense, cfg), **_latencies({"dense": dense}, cfg, cfg == QUICK)["dense"],
                                                "gamma": gamma_summary(prunable_gammas(dense, cfg.imgsz))}}
    (out / "dense.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def sweep(cfg: Config, out: Path, lams: list[float]) -> list[dict[str, Any]]:
    """Sparsity phase only, per λ: mAP of the sparse model, |γ| percentiles, and what the
    percentile threshold would remove (params, and the mAP of the pruned, not fine-tuned model)."""
    rows = []
    for lam in lams:
        c = dataclasses.replace(cfg, lam=lam)
        o = Path(out) / f"lam-{lam:g}"
        yolo, data, dense = _sparse_phase(c, o, c.sparse_epochs, "sparse")
        g = prunable_gammas(dense, c.imgsz)
        t = float(np.quantile(g, c.prune_fraction))
        row: dict[str, Any] = {"lam": lam, **_val(yolo, data, c, o, "val-sparse"), "gamma": gamma_summary(g), "threshold": t}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = slimprune.plan(dense, threshold=t, example_inputs=torch.rand(1, 3, c.imgsz, c.imgsz))
        yolo.model = slimprune.apply(dense, plan)
        pruned = _val(yolo, data, c, o, "val-pruned")
        row.update({"pruned_mAP50": pruned["mAP50"], "pruned_mAP50-95": pruned["mAP50-95"],
                    "params_removed": 1 - plan.params_after / plan.params_before})
        rows.append(row)
        print(json.dumps(row), flush=True)
    (Path(out) / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data, one epoch per phase")
    ap.add_argument("--dense", action="store_true", help="the baseline: λ = 0, sparse + fine-tuning epochs, no pruning")
    ap.add_argument("--sweep", type=float, nargs="+", metavar="LAM", help="sparsity phase only, for each λ")
    ap.add_argument("--lam", type=float, help="λ instead of the default")
    ap.add_argument("--sparse-epochs", type=int)
    ap.add_argument("--finetune-epochs", type=int)
    ap.add_argument("--prune-fraction", type=float, help="the percentile of prunable |γ| used as the threshold")
    ap.add_argument("--out", type=Path, default=Path("runs/yolo-slimming"))
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    over = {k: v for k, v in (("lam", args.lam), ("sparse_epochs", args.sparse_epochs),
                              ("finetune_epochs", args.finetune_epochs), ("prune_fraction", args.prune_fraction)) if v is not None}
    cfg = dataclasses.replace(cfg, **over)
    if args.sweep:
        sweep(cfg, args.out, args.sweep)
        return
    if args.dense:
        r = run_dense(cfg, args.out)["dense"]
        print(f"| dense | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['params']:,} | {r['flops'] / 1e6:.1f}M | "
              f"{r['latency_ms']:.2f} ({r['latency_range_ms'][0]:.2f}–{r['latency_range_ms'][1]:.2f}) |")
        return
    result = run(cfg, args.out)
    print(f"threshold {result['threshold']:.4g} ({result['threshold_rule']}): {result['channels_removed']} of "
          f"{result['prunable_channels']} prunable channels removed")
    print("| stage | mAP50 | mAP50-95 | params | FLOPs | CPU latency (ms, 1 thread, interleaved: median (range)) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for stage in ("sparse", "pruned", "finetuned"):
        r = result[stage]
        print(f"| {stage} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['params']:,} | {r['flops'] / 1e6:.1f}M | {r['latency_ms']:.2f} ({r['latency_range_ms'][0]:.2f}–{r['latency_range_ms'][1]:.2f}) |")


if __name__ == "__main__":
    main()
