"""Pruned models on disk: slimprune model files that name their unpruned EagleEye."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

import slimprune
import slimprune.io

from .config import TrainConfig
from .model import EagleEye

__all__ = ["FACTORY", "build_spec", "load_pruned"]

FACTORY = "examples.eagleeye.model:EagleEye"


def build_spec(config: TrainConfig) -> dict[str, Any]:
    """How :func:`slimprune.io.load` rebuilds the unpruned EagleEye of ``config``."""
    return {
        "factory": FACTORY,
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
    if info.build is None or info.build.factory != FACTORY:
        found = None if info.build is None else info.build.factory
        raise ValueError(
            f"{path} does not hold a pruned EagleEye (its build spec names {found!r}, expected {FACTORY!r})."
        )
    kwargs = dict(info.build.kwargs)
    return slimprune.io.load(path, build_fn=lambda: EagleEye(**kwargs))
