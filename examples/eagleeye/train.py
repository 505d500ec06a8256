"""Training EagleEye: the loop (with resume, DDP and AMP) that :func:`train` runs.

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

The pieces the loop uses each have a module: :mod:`.config` (:class:`TrainConfig`),
:mod:`.data` (the data root and the augmented split), :mod:`.optim` (model, optimiser,
schedule, sparsity penalty), :mod:`.checkpoints`, :mod:`.distributed` and :mod:`.console`.
Their public names are importable from here too.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .anchors import generate_anchors
from .checkpoints import (
    CHECKPOINT_NAME,
    FORMAT,
    CheckpointError,
    load_checkpoint,
    load_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import QUICK_SYNTH, TrainConfig
from .console import training_progress
from .data import AugmentedSplit, prepare_data
from .distributed import Dist, average_buffers, setup_distributed
from .loss import detection_loss, distillation_loss
from .optim import AfterBackward, build_model, lr_factor, make_optimizer, sparsity_hook
from .wider import WiderFaceDataset, collate

__all__ = [
    "TrainConfig",
    "QUICK_SYNTH",
    "CheckpointError",
    "AfterBackward",
    "AugmentedSplit",
    "train",
    "build_model",
    "lr_factor",
    "sparsity_hook",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "prepare_data",
    "CHECKPOINT_NAME",
    "AfterEpoch",
]

#: Called as ``after_epoch(epoch, model)`` (``epoch`` counted from 1) at the end of every epoch,
#: after its checkpoint is written, on the main process only, with the unwrapped model.
AfterEpoch = Callable[[int, nn.Module], None]


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    after_backward: AfterBackward | None = None,
    dataset: Dataset | None = None,
    console: Console | None = None,
    teacher: nn.Module | None = None,
    after_epoch: AfterEpoch | None = None,
) -> nn.Module:
    """Train EagleEye (or continue ``model``) as ``config`` says; return it in eval mode.

    Args:
        config: the run (see :class:`TrainConfig`).
        model: start from this model instead of a fresh EagleEye (or ``config.init``'s
            checkpoint), e.g. a pruned one to fine-tune. It must produce ``(cls_logits, box_deltas)`` for ``config.anchors``.
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
        after_epoch: called as ``after_epoch(epoch, model)`` after every epoch's checkpoint
            (main process only), e.g. to evaluate the model; it must leave the model's
            weights and the global random generators as it found them (evaluation does).

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
    ctx = setup_distributed(config)
    console = console or Console()
    previous_threads = torch.get_num_threads()
    threads = config.threads or max(1, (os.cpu_count() or 1) // ctx.world_size - config.num_workers)
    torch.set_num_threads(threads)
    try:
        return _train(
            config, ctx, model, after_backward, dataset, console, teacher if config.distill > 0 else None, after_epoch
        )
    finally:
        torch.set_num_threads(previous_threads)
        if ctx.created_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    ctx: Dist,
    model: nn.Module | None,
    after_backward: AfterBackward | None,
    dataset: Dataset | None,
    console: Console,
    teacher: nn.Module | None,
    after_epoch: AfterEpoch | None = None,
) -> nn.Module:
    device = ctx.device
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    if model is None:
        model = load_model(config.init)[0] if config.init is not None else build_model(config)
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

    optimizer = make_optimizer(model, config)
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
        started_from = payload["config"].get("init")
        if (started_from is None) != (config.init is None):
            raise CheckpointError(
                f"Checkpoint {ckpt_path} is of a run that started "
                f"{'from scratch' if started_from is None else 'from ' + str(started_from)}, but this run starts "
                f"{'from scratch' if config.init is None else 'from ' + str(config.init)} (TrainConfig.init); "
                "use another out_dir or delete the checkpoint."
            )
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
        set_rng_state(payload["rng"], device)
        if ctx.is_main:
            console.print(f"Resuming from {ckpt_path} after epoch {start_epoch}/{config.epochs}.")

    net: nn.Module = model
    if ctx.world_size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    anchors = generate_anchors(config.image_size, config.image_size, config.anchors, device=device)
    with training_progress(config.progress and ctx.is_main, console) as progress:
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
                average_buffers(model, ctx.world_size)
            if ctx.is_main:
                save_checkpoint(
                    ckpt_path,
                    {
                        "format": FORMAT,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "epoch": epoch + 1,
                        "rng": rng_state(device),
                        "config": config.to_dict(),
                        "history": history,
                    },
                )
                console.print(
                    f"epoch {epoch + 1}/{config.epochs}: loss {means[0]:.4f} (cls {means[1]:.4f}, box {means[2]:.4f}), "
                    f"{record['images_per_s']:.1f} img/s, {seconds:.1f} s, lr {record['lr']:.2e}"
                )
                if after_epoch is not None:
                    after_epoch(epoch + 1, model)
            if ctx.world_size > 1:
                dist.barrier()
    return model.eval()
