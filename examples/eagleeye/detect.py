"""Turn EagleEye's raw outputs into face boxes, and run a model over a WIDER split.

``detect`` decodes, thresholds and suppresses (torchvision.ops ``nms``,
``clip_boxes_to_image``, ``remove_small_boxes``; nothing here re-implements NMS).
``predict`` runs a model over a split letterboxed by ``augment.EvalResize`` and maps the
boxes back to original image pixels; ``evaluate_model`` scores them with the WIDER FACE
protocol (``evaluate.evaluate``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.ops import clip_boxes_to_image, nms, remove_small_boxes

from . import evaluate as wider_eval
from .anchors import DEFAULT_ANCHORS, AnchorSpec, decode, generate_anchors
from .augment import EvalResize
from .wider import ImageRecord, WiderFaceDataset, collate, load_subsets

__all__ = ["DetectConfig", "detect", "predict", "evaluate_model"]


@dataclass(frozen=True)
class DetectConfig:
    """Post-processing settings.

    Attributes:
        score_thresh: drop detections scoring below this (low: AP wants the whole PR curve).
        nms_iou: suppress a box overlapping a higher-scoring one by more than this IoU.
        pre_nms_top_k: keep at most this many of the best-scoring boxes before NMS.
        max_detections: keep at most this many boxes per image after NMS.
        min_size: drop boxes narrower or shorter than this many input pixels.
    """

    score_thresh: float = 0.02
    nms_iou: float = 0.4
    pre_nms_top_k: int = 2000
    max_detections: int = 300
    min_size: float = 1.0


@torch.no_grad()
def detect(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    image_size: tuple[int, int],
    config: DetectConfig = DetectConfig(),
) -> list[Tensor]:
    """Per-image detections ``[K, 5]`` (x1, y1, x2, y2, score) in input-image pixels.

    Args:
        cls_logits: ``[B, A, 1]`` logits from the model.
        box_deltas: ``[B, A, 4]`` regression outputs from the model.
        anchors: ``[A, 4]`` anchors for this input size.
        image_size: ``(height, width)`` of the model input, to clip boxes to.
        config: post-processing settings.

    Returns:
        one float32 tensor per image, sorted by descending score.
    """
    scores_all = torch.sigmoid(cls_logits.squeeze(-1).float())
    results = []
    for scores, deltas in zip(scores_all, box_deltas.float()):
        keep = scores > config.score_thresh
        scores_k, deltas_k, anchors_k = scores[keep], deltas[keep], anchors[keep]
        if scores_k.numel() > config.pre_nms_top_k:
            top = scores_k.topk(config.pre_nms_top_k).indices
            scores_k, deltas_k, anchors_k = scores_k[top], deltas_k[top], anchors_k[top]
        boxes = clip_boxes_to_image(decode(deltas_k, anchors_k), image_size)
        big = remove_small_boxes(boxes, config.min_size)
        boxes, scores_k = boxes[big], scores_k[big]
        kept = nms(boxes, scores_k, config.nms_iou)[: config.max_detections]
        results.append(torch.cat([boxes[kept], scores_k[kept, None]], dim=1))
    return results



def _original_hw(record: ImageRecord) -> tuple[int, int]:
    """(height, width) of a record's image, from the record or the file header."""
    if record.hw is not None:
        return record.hw
    with Image.open(record.path) as im:
        return im.size[1], im.size[0]


@contextmanager
def _bar(enabled: bool, total: int, console: Console | None) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        progress.add_task("detect", total=total)
        yield progress


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: WiderFaceDataset,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    config: DetectConfig = DetectConfig(),
    anchors: AnchorSpec = DEFAULT_ANCHORS,
    num_workers: int = 0,
    threads: int | None = None,
    progress: bool = False,
    console: Console | None = None,
) -> dict[str, np.ndarray]:
    """Detections for every image of ``dataset``, in original image pixels.

    Args:
        model: an EagleEye (or a pruned one) returning ``(cls_logits, box_deltas)``.
        dataset: a split whose transform is an ``EvalResize`` (its size is the side of the
            letterboxed square the model sees).
        batch_size, device, num_workers: how to run it.
        threads: torch intra-op threads while predicting (None: half the cores, at least
            1; on 2 cores shared with other work, 2 threads were 2.3x slower than 1).
        config: post-processing settings.
        anchors: the anchor sizes the model was trained with.
        progress: show a rich progress bar.

    Returns:
        ``{image name: [K, 5] float32 array of x1, y1, x2, y2, score}``, every image present.
    """
    resize = dataset.transform
    if not isinstance(resize, EvalResize):
        raise TypeError(
            f"predict needs a dataset letterboxed by augment.EvalResize (to map boxes back to original "
            f"pixels), got transform {resize!r}; build it as WiderFaceDataset(root, split, transform=EvalResize(size))."
        )
    size = resize.size
    device = torch.device(device)
    was_training = model.training
    model.eval()
    anchor_boxes = generate_anchors(size, size, anchors, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    predictions: dict[str, np.ndarray] = {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // 2))
    try:
        with _bar(progress, len(loader), console) as bar:
            for images, _, indices in loader:
                cls_logits, box_deltas = model(images.to(device))
                for index, found in zip(indices, detect(cls_logits, box_deltas, anchor_boxes, (size, size), config)):
                    record = dataset.records[index]
                    found = found.cpu().numpy()
                    # EvalResize.invert cannot reshape an empty array; nothing to map anyway.
                    predictions[record.name] = resize.invert(found, _original_hw(record)) if len(found) else found
                if bar is not None:
                    bar.advance(bar.task_ids[0])
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return predictions


def evaluate_model(
    model: nn.Module,
    root: str | Path,
    split: str = "val",
    size: int = 384,
    **predict_kwargs: object,
) -> tuple[wider_eval.EvalResult, dict[str, np.ndarray]]:
    """Run ``model`` on a WIDER split and score it with the WIDER FACE protocol.

    Args:
        model: the detector.
        root: a WIDER FACE layout directory (SynthFaces or the real data set).
        split: the split to evaluate; the subsets (easy/medium/hard) exist for ``"val"``.
        size: letterbox side (384, ``TrainConfig.eval_size``'s default, suits SynthFaces).
        **predict_kwargs: passed to :func:`predict` (batch_size, device, config, ...).

    Returns:
        ``(EvalResult with .ap["easy"|"medium"|"hard"], predictions)``.

    Example:
        >>> result, _ = evaluate_model(model, "data/synthfaces")  # doctest: +SKIP
        >>> result.ap["easy"]  # doctest: +SKIP
    """
    dataset = WiderFaceDataset(Path(root), split, transform=EvalResize(size))
    predictions = predict(model, dataset, **predict_kwargs)
    result = wider_eval.evaluate(predictions, dataset.records, load_subsets(Path(root)))
    return result, predictions
