"""Turn EagleEye's raw outputs into face boxes: decode, score threshold, NMS.

All box arithmetic and the suppression itself are torchvision.ops (``nms``,
``clip_boxes_to_image``, ``remove_small_boxes``); nothing here re-implements NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import clip_boxes_to_image, nms, remove_small_boxes

from .anchors import decode

__all__ = ["DetectConfig", "detect", "to_numpy"]


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


def to_numpy(detections: Tensor, scale: tuple[float, float] = (1.0, 1.0), offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``[K, 5]`` float32 numpy array, boxes mapped by ``original = input * scale + offset``.

    ``scale`` and ``offset`` are ``(x, y)`` pairs; the score column is left as it is.
    """
    out = detections.detach().cpu().numpy().astype(np.float32, copy=True)
    sx, sy = scale
    ox, oy = offset
    out[:, [0, 2]] = out[:, [0, 2]] * sx + ox
    out[:, [1, 3]] = out[:, [1, 3]] * sy + oy
    return out
