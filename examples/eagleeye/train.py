"""Training EagleEye: data, optimiser and schedule, checkpoints, resume, DDP, AMP.

``train(config)`` trains from scratch (or continues a given model, e.g. a pruned one for
fine-tuning) and returns the model. A checkpoint is written atomically at the end of
every epoch; ``TrainConfig(resume=True)`` continues from it exactly: on CPU with
``num_workers=0`` the final weights are bit-identical to those of an uninterrupted run.

Why resuming is exact:

* the data order is a function of (seed, epoch) only (``DistributedSampler.set_epoch``);
* each training image's augmentation draws from its own generator seeded with
  (seed, epoch, image index), so no augmentation state needs saving;
* the checkpoint holds model, optimiser, LR schedule, AMP scaler, the epoch and the global
  RNG states (torch, CUDA, numpy, random), all as tensors and plain Python values so that
  ``torch.load(..., weights_only=True)`` reads them.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on CUDA), each rank reads its share of every epoch through a
DistributedSampler, and rank 0 alone writes checkpoints and shows progress. The batch size
is per rank.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .anchors import AnchorSpec, generate_anchors
from .augment import TrainAugment
from .loss import LossConfig, detection_loss, distillation_loss
from .model import EagleEye
from .wider import WiderFaceDataset, collate

__all__ = [
    "TrainConfig",
    "CheckpointError",
    "AfterBackward",
    "train",
    "build_model",
    "load_checkpoint",
    "load_model",
    "prepare_data",
    "CHECKPOINT_NAME",
]

#: File name of the checkpoint inside ``TrainConfig.out_dir``.
CHECKPOINT_NAME = "last.pt"
_FORMAT = "slimprune.eagleeye.checkpoint/1"

AfterBackward = Callable[[nn.Module], None]


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read, is not an EagleEye checkpoint, or does not fit."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; frozen so that a run is described by one value.

    Attributes:
        data_root: a WIDER FACE layout directory. If it does not exist and ``synthesize``
            is set, SynthFaces is generated there first.
        synthesize: SynthFaces generation parameters (``synthfaces.ensure(data_root, **...)``)
            as ``(name, value)`` pairs, or None to require existing data.
        out_dir: where the checkpoint (``last.pt``) goes.
        image_size: side of the square training crops.
        epochs: number of epochs (the LR schedule spans all of them).
        batch_size: images per step (per rank under DDP).
        optimizer: ``"sgd"`` (momentum, Nesterov; the default) or ``"adamw"``. The defaults
            are the pipeline's recipe (docs/eagleeye.md): SGD, lr 0.05, weight decay 5e-4,
            GIoU box loss, γ starting at 0.5 reach 0.902 easy AP at 384 px (seed 0); with the
            smooth-L1 box loss SGD reached 0.770 and AdamW (lr 3e-3, weight decay 0.05) 0.638.
            AdamW also cannot do sparsity training in this budget: it divides the λ·sign(γ)
            term by the running gradient scale, so γ moves about lr per step at most.
        lr: peak learning rate, reached at the end of the warm-up.
        momentum: SGD momentum (ignored by AdamW).
        weight_decay: applied to conv weights only, not to BatchNorm, PReLU or biases
            (so it does not fight the sparsity penalty on BatchNorm γ); AdamW's is decoupled
            (multiplied by the learning rate), so use a larger one with it (0.05).
        norm_weight_decay: weight decay of the BatchNorm weights and biases (γ, β). A conv
            followed by BatchNorm computes the same function at any scale of its weights, so
            decaying them only raises the effective learning rate; γ and β are what set the
            network's capacity.
        warmup_epochs: linear warm-up length, then cosine decay to ``lr * min_lr_ratio``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        grad_clip: clip the gradient norm to this (None: no clipping).
        width_mult, activation: passed to :class:`EagleEye`.
        gamma_init: the value every BatchNorm γ starts at. Network slimming's own code starts
            them at 0.5 rather than PyTorch's 1: the L1 penalty then has half as far to push
            a channel to zero (with SGD a γ travels at most λ·Σlr/(1 − momentum) in a run).
        anchors: the anchor sizes (the model is built with matching ``num_anchors``).
        loss: loss settings.
        sparsity: λ of the L1 penalty on BatchNorm γ (network slimming); 0 disables it.
        distill: weight of the distillation term (``loss.distillation_loss``: the student's
            scores and boxes pulled towards a teacher's on the same batch) when :func:`train`
            is given a ``teacher``; 0 disables it.
        sparsity_cost: how λ is shared among channels: ``"uniform"`` (network slimming) or
            ``"flops"``/``"params"``, λ scaled per channel by what removing it saves, averaging
            λ (``slimprune.sparsity.SparsityRegularizer``'s ``cost``).
        seed: seeds model initialisation, data order and augmentation.
        device: ``"cpu"`` or ``"cuda"`` (under torchrun each rank takes ``cuda:LOCAL_RANK``).
        amp: use float16 autocast and a GradScaler; only ever active on CUDA.
        num_workers: DataLoader worker processes.
        threads: torch intra-op threads for the run (None: the cores this rank has left
            after its data workers, at least 1). Oversubscribing cores is very costly for
            this small model: on 2 shared cores, 2 threads plus a worker made steps up to
            20x slower than 1 thread.
        resume: continue from ``out_dir/last.pt`` if it exists.
        progress: show rich progress bars (rank 0 only).
        max_images: train on only the first this-many images (None: all).
        eval_size: letterbox side for evaluation. SynthFaces images are 320 px on the long
            side; upscaling them to 384 matches the face scales the 192 px training crops
            show best (easy AP 0.80 / 0.83 / 0.85 / 0.83 / 0.81 at 288 / 320 / 384 / 416 / 448,
            measured on SynthFaces generated before commit 5a34867).
    """

    data_root: str = "data/synthfaces"
    synthesize: tuple[tuple[str, Any], ...] | None = ()
    out_dir: str = "runs/eagleeye"
    image_size: int = 192
    epochs: int = 12
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    norm_weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.02
    grad_clip: float | None = 10.0
    width_mult: float = 1.0
    activation: str = "leaky_relu"
    gamma_init: float = 0.5
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    loss: LossConfig = field(default_factory=lambda: LossConfig(box_loss="giou"))
    sparsity: float = 0.0
    distill: float = 0.0
    sparsity_cost: str = "uniform"
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    num_workers: int = 1
    threads: int | None = None
    resume: bool = False
    progress: bool = True
    max_images: int | None = None
    eval_size: int = 384

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: choose 'sgd' or 'adamw'.")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: choose 'cpu' or 'cuda'.")
        if self.epochs < 1 or self.batch_size < 1 or self.image_size < 32:
            raise ValueError(
                f"epochs={self.epochs}, batch_size={self.batch_size} must be >= 1 and "
                f"image_size={self.image_size} >= 32."
            )
        if self.sparsity < 0:
            raise ValueError(f"sparsity={self.sparsity} must be >= 0 (it is the L1 weight λ).")
        if self.distill < 0:
            raise ValueError(f"distill={self.distill} must be >= 0 (it weighs the distillation term).")
        if not self.gamma_init > 0:
            raise ValueError(f"gamma_init={self.gamma_init} must be > 0 (the starting BatchNorm scale).")

    @classmethod
    def quick(cls, **overrides: Any) -> TrainConfig:
        """A tiny configuration (small data and images, 2 epochs) for tests and smoke runs."""
        values: dict[str, Any] = dict(
            data_root="data/synthfaces-quick",
            synthesize=QUICK_SYNTH,
            out_dir="runs/eagleeye-quick",
            image_size=128,
            epochs=2,
            batch_size=8,
            warmup_epochs=0.5,
            num_workers=0,
            eval_size=160,
            threads=1,
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-value form (for checkpoints and logs)."""
        out = asdict(self)
        out["synthesize"] = None if self.synthesize is None else [list(p) for p in self.synthesize]
        out["anchors"] = {"strides": list(self.anchors.strides), "sizes": [list(s) for s in self.anchors.sizes]}
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in values.items() if k in known}
        if kw.get("synthesize") is not None:
            kw["synthesize"] = tuple(tuple(p) for p in kw["synthesize"])
        if isinstance(kw.get("anchors"), Mapping):
            a = kw["anchors"]
            kw["anchors"] = AnchorSpec(tuple(a["strides"]), tuple(tuple(s) for s in a["sizes"]))
        if isinstance(kw.get("loss"), Mapping):
            kw["loss"] = LossConfig(**kw["loss"])
        return cls(**kw)


#: SynthFaces parameters of the quick configuration.
QUICK_SYNTH: tuple[tuple[str, Any], ...] = (("n_train", 48), ("n_val", 16), ("image_size", 160))


# ---------------------------------------------------------------------------
# Data


def prepare_data(config: TrainConfig) -> Path:
    """The data root, generating SynthFaces there first when allowed and needed.

    With ``config.synthesize`` set, a missing root, an empty one or a SynthFaces set made
    with other parameters is (re)generated; any other existing directory (the real WIDER
    FACE, say) is used as it is.
    """
    root = Path(config.data_root)
    if config.synthesize is None:
        return root
    from . import synthfaces

    foreign = root.is_dir() and any(root.iterdir()) and not (root / synthfaces.MANIFEST).is_file()
    if foreign:
        return root
    return Path(synthfaces.ensure(root, **dict(config.synthesize)))


def _item_seed(seed: int, epoch: int, index: int) -> int:
    """An independent 63-bit seed per (run seed, epoch, image)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class AugmentedSplit(Dataset):
    """A WIDER split with :class:`TrainAugment`, reseeded per (seed, epoch, image).

    An item depends on the run seed, the epoch and its index only, so a run draws the same
    augmentations with any number of DataLoader workers. Call :meth:`set_epoch` before each
    epoch, as with a DistributedSampler.
    """

    def __init__(self, base: WiderFaceDataset, size: int, seed: int, max_images: int | None = None) -> None:
        self.base = base
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.length = len(base) if max_images is None else min(len(base), max_images)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s augmentation draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, boxes = self.base.load(i)
        augment = TrainAugment(self.size, seed=_item_seed(self.seed, self.epoch, i), reseed_in_workers=False)
        image, boxes = augment(image, boxes)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        return tensor, torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)), i


# ---------------------------------------------------------------------------
# Model, optimiser, schedule


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


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
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


# ---------------------------------------------------------------------------
# Sparsity


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


# ---------------------------------------------------------------------------
# RNG states and checkpoints


def _rng_state(device: torch.device) -> dict[str, Any]:
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


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
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
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not an EagleEye training checkpoint (format {found!r}, expected {_FORMAT!r})."
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


# ---------------------------------------------------------------------------
# Distributed setup


@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(config: TrainConfig) -> _Dist:
    """Join the torchrun process group if ``WORLD_SIZE > 1``; pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False; use device='cpu'.")
    if world_size <= 1:
        device = torch.device("cuda" if config.device == "cuda" else "cpu")
        return _Dist(rank=0, world_size=1, device=device, created_group=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if config.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return _Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, created_group=created)


def _average_buffers(model: nn.Module, world_size: int) -> None:
    """Average float buffers (BatchNorm running statistics) over ranks.

    DDP broadcasts rank 0's buffers at the start of every forward, but the last forward of
    an epoch leaves each rank with its own statistics; averaging makes them equal again.
    """
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world_size)


@contextmanager
def _progress(enabled: bool, console: Console) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:6.1f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield progress


# ---------------------------------------------------------------------------
# The loop


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    after_backward: AfterBackward | None = None,
    dataset: Dataset | None = None,
    console: Console | None = None,
    teacher: nn.Module | None = None,
) -> nn.Module:
    """Train EagleEye (or continue ``model``) as ``config`` says; return it in eval mode.

    Args:
        config: the run (see :class:`TrainConfig`).
        model: start from this model instead of a fresh EagleEye, e.g. a pruned one to
            fine-tune. It must produce ``(cls_logits, box_deltas)`` for ``config.anchors``.
            With ``config.resume`` the checkpoint's weights are loaded into it.
        after_backward: called as ``after_backward(model)`` after every ``backward()`` (and
            after the AMP gradients are unscaled and clipped) and before ``optimizer.step()``,
            with the unwrapped model. Runs in addition to ``config.sparsity``'s penalty.
        dataset: train on this instead of the ``data_root`` training split; items must be
            ``(image [3, S, S], boxes [N, 4] x1y1x2y2, index)`` as from
            :class:`AugmentedSplit`. If it has ``set_epoch``, it is called every epoch.
        console: where progress and epoch summaries go (default: a new rich Console).
        teacher: with ``config.distill > 0``, a detector with the same outputs (e.g. the
            unpruned model) whose scores and boxes the model is also pulled towards; it is run
            in eval mode without gradients and is not changed.

    Returns:
        the trained model (unwrapped from DDP), in eval mode, on ``config.device``.

    Side effects: seeds the global torch/numpy/random generators with ``config.seed`` (and
    restores them from the checkpoint when resuming); sets torch's thread count for the run
    and restores it afterwards; under torchrun, joins (and afterwards leaves) the process group
    unless one is already initialised.

    Raises:
        CheckpointError: ``config.resume`` and the checkpoint is unreadable or does not fit.
        FloatingPointError: the loss became NaN or infinite (lower ``lr``).

    Example:
        >>> model = train(TrainConfig.quick(out_dir="/tmp/ee"))  # doctest: +SKIP
    """
    if config.distill > 0 and teacher is None:
        raise ValueError(f"distill={config.distill} needs a teacher: pass train(..., teacher=model), or set distill=0.")
    ctx = _setup_distributed(config)
    console = console or Console()
    previous_threads = torch.get_num_threads()
    threads = config.threads or max(1, (os.cpu_count() or 1) // ctx.world_size - config.num_workers)
    torch.set_num_threads(threads)
    try:
        return _train(config, ctx, model, after_backward, dataset, console, teacher if config.distill > 0 else None)
    finally:
        torch.set_num_threads(previous_threads)
        if ctx.created_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    ctx: _Dist,
    model: nn.Module | None,
    after_backward: AfterBackward | None,
    dataset: Dataset | None,
    console: Console,
    teacher: nn.Module | None,
) -> nn.Module:
    device = ctx.device
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    if model is None:
        model = build_model(config)
    model = model.to(device)
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    if dataset is None:
        root = prepare_data(config) if ctx.is_main else Path(config.data_root)
        if ctx.world_size > 1:
            dist.barrier()  # rank 0 may have generated the data
        base = WiderFaceDataset(root, "train")
        dataset = AugmentedSplit(base, config.image_size, config.seed, config.max_images)
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} training images make no full batch of {config.batch_size} per rank "
            f"on {ctx.world_size} rank(s); lower batch_size or add data."
        )
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = max(1, round(config.warmup_epochs * steps_per_epoch))

    optimizer = _make_optimizer(model, config)
    # A closure, not a callable object: LambdaLR would save an object's attributes and
    # restore them over a resumed run's own.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, config.min_lr_ratio)
    )
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    hooks: list[AfterBackward] = []
    if config.sparsity > 0:
        example = torch.zeros(1, 3, config.image_size, config.image_size, device=device)
        hooks.append(
            sparsity_hook(model, config.sparsity, example, step=lambda: scheduler.last_epoch, cost=config.sparsity_cost)
        )
    if after_backward is not None:
        hooks.append(after_backward)

    ckpt_path = Path(config.out_dir) / CHECKPOINT_NAME
    start_epoch = 0
    history: list[dict[str, float]] = []
    if config.resume and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path, map_location=device)
        try:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"Checkpoint {ckpt_path} does not fit this model/optimiser ({e}); it was written by a "
                "different configuration. Use another out_dir or delete the checkpoint."
            ) from e
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        start_epoch = int(payload["epoch"])
        history = list(payload.get("history", []))
        _set_rng_state(payload["rng"], device)
        if ctx.is_main:
            console.print(f"Resuming from {ckpt_path} after epoch {start_epoch}/{config.epochs}.")

    net: nn.Module = model
    if ctx.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    anchors = generate_anchors(config.image_size, config.image_size, config.anchors, device=device)
    with _progress(config.progress and ctx.is_main, console) as progress:
        for epoch in range(start_epoch, config.epochs):
            sampler.set_epoch(epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            net.train()
            task = None
            if progress is not None:
                task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps_per_epoch, loss=0.0, ips=0.0)
            sums = torch.zeros(3, dtype=torch.float64)
            seen = 0
            start = time.perf_counter()
            for images, boxes, _ in loader:
                images = images.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    cls_logits, box_deltas = net(images)
                terms = detection_loss(cls_logits, box_deltas, anchors, boxes, config.loss)
                total = terms.total
                if teacher is not None:
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                        teacher_logits, teacher_deltas = teacher(images)
                    total = total + config.distill * distillation_loss(
                        cls_logits, box_deltas, teacher_logits, teacher_deltas, anchors, terms.num_pos
                    )
                if not torch.isfinite(total):
                    raise FloatingPointError(
                        f"Loss became {float(total)} in epoch {epoch + 1}; lower lr (now {config.lr}) "
                        "or raise warmup_epochs."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.unscale_(optimizer)
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                for hook in hooks:
                    hook(model)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()

                seen += images.shape[0] * ctx.world_size
                parts = [float(terms.total.detach()), float(terms.cls), float(terms.box)]
                sums += torch.tensor(parts, dtype=torch.float64)
                if progress is not None:
                    elapsed = time.perf_counter() - start
                    progress.update(task, advance=1, loss=float(terms.total.detach()), ips=seen / max(elapsed, 1e-9))
            seconds = time.perf_counter() - start
            means = (sums / steps_per_epoch).tolist()
            record = {
                "epoch": epoch + 1,
                "loss": means[0],
                "cls": means[1],
                "box": means[2],
                "images_per_s": seen / seconds,
                "seconds": seconds,
                "lr": optimizer.param_groups[0]["lr"],
            }
            history.append(record)
            if ctx.world_size > 1:
                _average_buffers(model, ctx.world_size)
            if ctx.is_main:
                save_checkpoint(
                    ckpt_path,
                    {
                        "format": _FORMAT,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch + 1,
                        "rng": _rng_state(device),
                        "config": config.to_dict(),
                        "history": history,
                    },
                )
                console.print(
                    f"epoch {epoch + 1}/{config.epochs}: loss {means[0]:.4f} (cls {means[1]:.4f}, box {means[2]:.4f}), "
                    f"{record['images_per_s']:.1f} img/s, {seconds:.1f} s, lr {record['lr']:.2e}"
                )
            if ctx.world_size > 1:
                dist.barrier()
    return model.eval()

