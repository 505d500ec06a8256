"""Anchors for EagleEye: generation per stride, matching to faces, box encoding.

Boxes are ``x1, y1, x2, y2`` in input-image pixels throughout. Anchors are square,
centred on the middle of each feature-map cell (``(j + 0.5) * stride``), and ordered as the
model flattens its outputs: level (finest stride first), row, column, anchor at a location.

Encoding is the SSD one: centre offsets divided by the anchor size times 0.1, log size
ratios divided by 0.2, so that the regression targets have roughly unit scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from .flags import option
from .model import STRIDES, feature_sizes

__all__ = [
    "AnchorSpec",
    "MatchResult",
    "DEFAULT_ANCHORS",
    "generate_anchors",
    "match",
    "encode",
    "decode",
]

#: Centre and size variances of the SSD encoding.
VARIANCES: tuple[float, float] = (0.1, 0.2)
# Largest log size ratio decode accepts, so that exp() cannot overflow on a wild prediction.
_MAX_LOG_RATIO = math.log(1000.0 / 16)


@dataclass(frozen=True)
class AnchorSpec:
    """Anchor sizes (pixels) per predicting layer.

    Attributes:
        strides: the predicting layers' strides, finest first (must match the model).
        sizes: for each stride, the side lengths of the square anchors at one location.
    """

    strides: tuple[int, ...] = option(STRIDES, flag="--anchor-strides", help="the predicting layers' strides")
    sizes: tuple[tuple[float, ...], ...] = option(
        ((16, 24), (32, 48), (64, 96), (128, 192)),
        flag="--anchor-sizes",
        metavar="S,S",
        help="anchor sides per stride, comma-separated, one argument per stride",
    )

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.sizes):
            raise ValueError(
                f"AnchorSpec has {len(self.strides)} strides but {len(self.sizes)} size tuples; "
                "give one tuple of anchor sizes per stride."
            )

    @property
    def num_anchors(self) -> tuple[int, ...]:
        """Anchors per location at each level (pass it to ``EagleEye(num_anchors=...)``)."""
        return tuple(len(s) for s in self.sizes)


DEFAULT_ANCHORS = AnchorSpec()


def generate_anchors(
    height: int,
    width: int,
    spec: AnchorSpec = DEFAULT_ANCHORS,
    device: torch.device | str | None = None,
) -> Tensor:
    """All anchors for an input of ``height`` x ``width`` pixels, as ``[A, 4]`` x1y1x2y2.

    Example:
        >>> generate_anchors(256, 256).shape
        torch.Size([2720, 4])
    """
    parts = []
    for (fh, fw), stride, sizes in zip(feature_sizes(height, width, spec.strides), spec.strides, spec.sizes):
        cy = (torch.arange(fh, dtype=torch.float32, device=device) + 0.5) * stride
        cx = (torch.arange(fw, dtype=torch.float32, device=device) + 0.5) * stride
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        half = torch.tensor(sizes, dtype=torch.float32, device=device).reshape(1, -1, 1) / 2
        offsets = torch.cat([-half, -half, half, half], dim=-1)
        parts.append((centres + offsets).reshape(-1, 4))
    return torch.cat(parts, dim=0)


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Regression targets ``[..., 4]`` that turn ``anchors`` into ``boxes`` (both x1y1x2y2)."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    acx = anchors[..., 0] + 0.5 * aw
    acy = anchors[..., 1] + 0.5 * ah
    bw = boxes[..., 2] - boxes[..., 0]
    bh = boxes[..., 3] - boxes[..., 1]
    bcx = boxes[..., 0] + 0.5 * bw
    bcy = boxes[..., 1] + 0.5 * bh
    cv, sv = VARIANCES
    return torch.stack(
        [
            (bcx - acx) / (aw * cv),
            (bcy - acy) / (ah * cv),
            torch.log(bw / aw) / sv,
            torch.log(bh / ah) / sv,
        ],
        dim=-1,
    )


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Boxes ``[..., 4]`` x1y1x2y2 from regression ``deltas`` relative to ``anchors``."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    acx = anchors[..., 0] + 0.5 * aw
    acy = anchors[..., 1] + 0.5 * ah
    cv, sv = VARIANCES
    cx = acx + deltas[..., 0] * cv * aw
    cy = acy + deltas[..., 1] * cv * ah
    w = aw * torch.exp((deltas[..., 2] * sv).clamp(max=_MAX_LOG_RATIO))
    h = ah * torch.exp((deltas[..., 3] * sv).clamp(max=_MAX_LOG_RATIO))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


@dataclass(frozen=True)
class MatchResult:
    """Which face each anchor learns from.

    Attributes:
        labels: ``[A]`` int64: 1 positive, 0 negative, -1 ignored (IoU between thresholds).
        matched: ``[A]`` int64: the index of the face a positive anchor regresses to
            (meaningless where ``labels != 1``; 0 when there are no faces).
    """

    labels: Tensor
    matched: Tensor


def match(
    anchors: Tensor,
    boxes: Tensor,
    pos_iou: float = 0.45,
    neg_iou: float = 0.35,
) -> MatchResult:
    """Assign faces to anchors by IoU, making sure every face gets at least one anchor.

    An anchor whose best IoU with any face is at least ``pos_iou`` is positive for that face;
    below ``neg_iou`` it is negative; in between it is ignored. Then every face claims its
    best anchor as a positive even if that IoU is below ``pos_iou`` (small faces between two
    anchor sizes would otherwise get none). Faces claim in order of how well their best
    anchor fits, and a face whose best anchor is already claimed by another face takes its
    best free anchor, so two nearby faces never share their only anchor.

    Args:
        anchors: ``[A, 4]`` x1y1x2y2.
        boxes: ``[N, 4]`` x1y1x2y2 faces (N may be 0; boxes must have positive area).
        pos_iou: IoU at or above which an anchor is positive.
        neg_iou: IoU below which an anchor is negative.

    Returns:
        a :class:`MatchResult`.
    """
    num_anchors = anchors.shape[0]
    if boxes.numel() == 0:
        zeros = torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device)
        return MatchResult(labels=zeros, matched=zeros.clone())
    iou = box_iou(boxes, anchors)  # [N, A]
    best_iou, matched = iou.max(dim=0)
    labels = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    labels[best_iou < neg_iou] = 0
    labels[best_iou >= pos_iou] = 1

    # Force one anchor per face; greedy on the faces' best IoU so that the faces that fit
    # an anchor well keep it and the rest take their next-best free anchor.
    claimed = torch.zeros(num_anchors, dtype=torch.bool, device=anchors.device)
    order = torch.argsort(iou.max(dim=1).values, descending=True)
    for face in order.tolist():
        free_iou = iou[face].masked_fill(claimed, -1.0)
        anchor = int(free_iou.argmax())
        claimed[anchor] = True
        labels[anchor] = 1
        matched[anchor] = face
    return MatchResult(labels=labels, matched=matched)

