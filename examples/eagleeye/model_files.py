"""Detectors on disk: slimprune model files that name their unpruned EagleEye, and
training checkpoints (of unpruned and of pruned models)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

import slimprune
import slimprune.io

from .config import TrainConfig
from .model import EagleEye

__all__ = ["FACTORY", "PRUNED_NAMES", "build_spec", "load_pruned", "load_detector"]

FACTORY = "examples.eagleeye.model:EagleEye"
#: What the pipeline writes beside its stage folders; a pruned checkpoint is rebuilt from one.
PRUNED_NAMES = ("pruned.safetensors", "finetuned.safetensors")


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


def _pruned_beside(checkpoint: Path) -> list[Path]:
    """The pipeline's pruned model files near a stage checkpoint (``<out>/finetune/last.pt``)."""
    found = []
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        found += [folder / name for name in PRUNED_NAMES if (folder / name).is_file()]
    return found


def load_detector(
    path: str | os.PathLike[str],
    *,
    architecture: str | os.PathLike[str] | None = None,
    map_location: str = "cpu",
) -> tuple[nn.Module, TrainConfig | None]:
    """Any EagleEye the example writes, in eval mode, and its training config when the file has one.

    Args:
        path: a pruned model file (``pruned.safetensors``, ``finetuned.safetensors``), or a
            training checkpoint (``last.pt``) of an unpruned model or of a pruned one.
        architecture: for a checkpoint of a pruned model, the pruned model file whose plan
            rebuilds its shape (default: the pipeline's ``pruned.safetensors`` or
            ``finetuned.safetensors`` in the checkpoint's folder or the one above it).
        map_location: device for the checkpoint's tensors.

    Returns:
        ``(model, config)``; ``config`` is None for a ``.safetensors`` file (it holds no training config).

    Raises:
        CheckpointError: the checkpoint cannot be read, or its weights fit neither the
            unpruned EagleEye nor any pruned model file found (names the files tried).
        ValueError, slimprune.FileFormatError, slimprune.PlanMismatchError: as :func:`load_pruned`.
    """
    from .checkpoints import CheckpointError, load_checkpoint
    from .optim import build_model

    path = Path(path)
    if path.suffix == ".safetensors":
        return load_pruned(path).eval(), None
    payload = load_checkpoint(path, map_location)
    config = TrainConfig.from_dict(payload["config"])
    model: nn.Module = build_model(config)
    try:
        model.load_state_dict(payload["model"])
        return model.eval(), config
    except RuntimeError as unpruned_error:
        candidates = [Path(architecture)] if architecture is not None else _pruned_beside(path)
        for candidate in candidates:
            model = load_pruned(candidate)
            try:
                model.load_state_dict(payload["model"])
            except RuntimeError:
                continue
            return model.eval(), config
        tried = ", ".join(str(c) for c in candidates) or "none found"
        raise CheckpointError(
            f"The weights in {path} fit neither EagleEye(width_mult={config.width_mult}, "
            f"activation={config.activation!r}) nor a pruned model file (tried: {tried}). "
            "For a checkpoint of a pruned model give the pruned.safetensors its pipeline wrote "
            f"(--architecture PATH). ({str(unpruned_error).splitlines()[0]})"
        ) from unpruned_error
