"""Model, optimiser, learning-rate schedule and the sparsity penalty of a training run."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .model import EagleEye

__all__ = ["AfterBackward", "build_model", "make_optimizer", "lr_factor", "sparsity_hook"]

AfterBackward = Callable[[nn.Module], None]


def build_model(config: TrainConfig) -> EagleEye:
    """A freshly initialised EagleEye for ``config`` (uses the current torch RNG)."""
    model = EagleEye(num_anchors=config.anchors.num_anchors, width_mult=config.width_mult, activation=config.activation)
    if config.gamma_init != 1.0:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                    m.weight.fill_(config.gamma_init)
    return model


def _param_groups(model: nn.Module, weight_decay: float, norm_weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """``weight_decay`` on conv/linear weights, ``norm_weight_decay`` on BatchNorm, none on the rest."""
    decay, norm, no_decay = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                decay.append(p)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                norm.append(p)
            else:
                no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": norm, "weight_decay": norm_weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, config.weight_decay, config.norm_weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 1% to 100%, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sparsity_hook(
    model: nn.Module,
    strength: float,
    example_input: torch.Tensor,
    step: Callable[[], int] | None = None,
    cost: str = "uniform",
) -> AfterBackward:
    """The network-slimming penalty λ·Σ|γ| as an ``after_backward`` callback.

    Adds ``λ·sign(γ)`` to BatchNorm weight gradients through
    ``slimprune.sparsity.SparsityRegularizer``, which analyses ``model`` and leaves alone the
    channels no plan could remove.

    Args:
        model: the model to regularise (plain or DDP-wrapped).
        strength: λ.
        example_input: an input batch for tracing, e.g. ``torch.zeros(1, 3, S, S)``.
        step: returns the current optimiser step (for λ schedules); None counts calls.
        cost: ``"uniform"``, ``"flops"`` or ``"params"``: how λ is shared among channels.
    """
    from slimprune.sparsity import SparsityRegularizer

    regulariser = SparsityRegularizer(model, lam=strength, example_inputs=(example_input,), cost=cost)

    def regularise(_: nn.Module) -> None:
        regulariser.step(None if step is None else step())

    return regularise
