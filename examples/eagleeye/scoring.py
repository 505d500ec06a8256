"""AP of a model on the val split, and its FLOPs: what the report measures besides latency."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from slimprune.measure import measure

from .config import PipelineConfig
from . import evaluate as wider_eval
from .augment import EvalResize
from .detect import evaluate_model, predict
from .evaluate import EvalResult
from .wider import WiderFaceDataset, load_subsets

__all__ = ["Evaluated", "evaluate_val", "val_ap", "ValCurve", "flops_at"]


@dataclass(frozen=True)
class Evaluated:
    """One model's AP per subset, precision-recall curves and evaluation time on the val split."""

    ap: dict[str, float]
    pr: dict[str, tuple[np.ndarray, np.ndarray]]
    seconds: float


def evaluate_val(model: nn.Module, root: Path, cfg: PipelineConfig, console: Console, progress: bool) -> Evaluated:
    """AP of ``model`` on the val split at the run's ``eval_size``, on its device; ``model`` ends on the CPU."""
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
    return Evaluated(dict(result.ap), dict(result.pr), time.perf_counter() - start)


def val_ap(model: nn.Module, root: Path, cfg: PipelineConfig, images: int | None) -> dict[str, float]:
    """AP per subset of ``model`` on the first ``images`` val images (None: all), at ``eval_size``.

    For the baseline's training curve: the model is left in the mode it was in, on its device.
    """
    dataset = WiderFaceDataset(Path(root), "val", transform=EvalResize(cfg.baseline.eval_size))
    if images is not None:
        dataset.records = dataset.records[:images]
    names = {r.name for r in dataset.records}
    subsets = {k: {n: v for n, v in members.items() if n in names} for k, members in load_subsets(Path(root)).items()}
    device = next(model.parameters()).device
    predictions = predict(model, dataset, device=device, threads=cfg.eval_threads)
    return dict(wider_eval.evaluate(predictions, dataset.records, subsets).ap)


class ValCurve:
    """A training run's val-AP curve: ``train(..., after_epoch=curve)`` evaluates the model every
    ``cfg.curve_every`` epochs and after the last one, on the first ``cfg.curve_images`` val
    images, and keeps the points in ``path`` (JSON) so that a resumed run continues its curve.

    Attributes:
        points: ``[{"epoch": e, "ap": {"easy": ..., "medium": ..., "hard": ...}}, ...]`` by epoch.
    """

    def __init__(self, path: Path, root: Path, cfg: PipelineConfig, epochs: int, resume: bool) -> None:
        self.path, self.root, self.cfg, self.epochs = Path(path), Path(root), cfg, epochs
        self.points: list[dict[str, object]] = []
        if resume and self.path.is_file():
            self.points = list(json.loads(self.path.read_text())["points"])

    def __call__(self, epoch: int, model: nn.Module) -> None:
        every = self.cfg.curve_every
        if every <= 0 or (epoch % every and epoch != self.epochs):
            return
        ap = val_ap(model, self.root, self.cfg, self.cfg.curve_images)
        self.points = [p for p in self.points if p["epoch"] != epoch] + [{"epoch": epoch, "ap": ap}]
        self.points.sort(key=lambda p: p["epoch"])  # type: ignore[arg-type, return-value]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"images": self.cfg.curve_images, "points": self.points}, indent=1) + "\n")
        tmp.replace(self.path)


def flops_at(model: nn.Module, size: int) -> int:
    """FLOPs (2 per multiply-add, convolutions only) of one ``size`` x ``size`` image."""
    return measure(model, torch.zeros(1, 3, size, size), latency=False).flops
