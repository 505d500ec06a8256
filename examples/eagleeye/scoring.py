"""AP of a model on the val split, and its FLOPs: what the report measures besides latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from slimprune.measure import measure

from .config import PipelineConfig
from .detect import evaluate_model
from .evaluate import EvalResult

__all__ = ["Evaluated", "evaluate_val", "flops_at"]


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


def flops_at(model: nn.Module, size: int) -> int:
    """FLOPs (2 per multiply-add, convolutions only) of one ``size`` x ``size`` image."""
    return measure(model, torch.zeros(1, 3, size, size), latency=False).flops
