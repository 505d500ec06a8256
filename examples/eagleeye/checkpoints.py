"""Training checkpoints: written atomically, read safely (``weights_only``), RNG states included."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .model import EagleEye
from .optim import build_model

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "CheckpointError",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
]


#: File name of the checkpoint inside ``TrainConfig.out_dir``.
CHECKPOINT_NAME = "last.pt"
FORMAT = "slimprune.eagleeye.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, is not an EagleEye checkpoint, or does not fit."""


def rng_state(device: torch.device) -> dict[str, Any]:
    """Global RNG states as tensors and plain values (``weights_only``-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_REQUIRED_KEYS = ("format", "model", "optimizer", "scheduler", "scaler", "epoch", "rng", "config")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or not an EagleEye
            training checkpoint; the message says which file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; train first or check the path.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for bad files (zip, pickle, EOF...)
        raise CheckpointError(
            f"Checkpoint {path} is corrupt or truncated and cannot be read ({type(e).__name__}: {e}). "
            "Delete it to start over, or restore it from a backup."
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not an EagleEye training checkpoint (format {found!r}, expected {FORMAT!r})."
        )
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(
            f"Checkpoint {path} lacks {', '.join(missing)}; it is incomplete. Delete it to start over."
        )
    return payload


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[EagleEye, TrainConfig]:
    """The trained (unpruned) EagleEye in a checkpoint and the config that trained it, in eval mode."""
    payload = load_checkpoint(path, map_location)
    config = TrainConfig.from_dict(payload["config"])
    model = build_model(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"The weights in {path} do not fit EagleEye(width_mult={config.width_mult}, "
            f"activation={config.activation!r}); a pruned model must be rebuilt by its pipeline. ({e})"
        ) from e
    return model.eval(), config
