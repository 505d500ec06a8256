"""EagleEye's training loss: focal loss on face/background plus a box regression loss.

Both terms are summed over anchors and divided by the number of positive anchors in the
batch (at least 1), as in RetinaNet. Ignored anchors (IoU between the matching
thresholds) contribute to neither term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .anchors import decode, encode, match
from .flags import option

__all__ = ["LossConfig", "LossTerms", "detection_loss", "distillation_loss", "BOX_LOSSES"]

BOX_LOSSES = ("smooth_l1", "giou")


@dataclass(frozen=True)
class LossConfig:
    """Loss settings.

    Attributes:
        alpha, gamma: focal loss parameters (Lin et al. 2017 use 0.25 and 2).
        box_loss: ``"smooth_l1"`` on encoded deltas or ``"giou"`` on decoded boxes.
        box_weight: weight of the box term relative to the focal term.
        smooth_l1_beta: where smooth L1 turns from quadratic to linear (encoded units).
        pos_iou, neg_iou: the matching thresholds (see ``anchors.match``).
    """

    alpha: float = option(0.25, flag="--focal-alpha", help="focal loss α")
    gamma: float = option(2.0, flag="--focal-gamma", help="focal loss γ")
    box_loss: str = option("smooth_l1", choices=BOX_LOSSES, help="box loss")
    box_weight: float = option(1.0, help="weight of the box term relative to the focal term")
    smooth_l1_beta: float = option(0.11, help="where smooth L1 turns from quadratic to linear")
    pos_iou: float = option(0.45, help="anchors matching a face at IoU >= this are positives")
    neg_iou: float = option(0.35, help="anchors below this IoU with every face are negatives")

    def __post_init__(self) -> None:
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"Unknown box_loss {self.box_loss!r}; choose one of {', '.join(BOX_LOSSES)}.")
        if not 0 < self.neg_iou <= self.pos_iou <= 1:
            raise ValueError(
                f"Matching thresholds need 0 < neg_iou <= pos_iou <= 1, got neg_iou={self.neg_iou}, "
                f"pos_iou={self.pos_iou}."
            )


@dataclass(frozen=True)
class LossTerms:
    """The loss and its parts (``total`` carries the graph; the others are detached)."""

    total: Tensor
    cls: Tensor
    box: Tensor
    num_pos: int


def detection_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    targets: Sequence[Tensor],
    config: LossConfig = LossConfig(),
) -> LossTerms:
    """Focal loss plus box loss for a batch.

    Args:
        cls_logits: ``[B, A, 1]`` model logits.
        box_deltas: ``[B, A, 4]`` model regression outputs.
        anchors: ``[A, 4]`` x1y1x2y2 anchors for the batch's input size.
        targets: one ``[N_i, 4]`` x1y1x2y2 tensor of faces per image (``N_i`` may be 0).
        config: loss settings.

    Returns:
        :class:`LossTerms`; call ``.total.backward()``.
    """
    if len(targets) != cls_logits.shape[0]:
        raise ValueError(f"Got {len(targets)} target tensors for a batch of {cls_logits.shape[0]} images.")
    labels, gt = [], []
    for boxes in targets:
        boxes = boxes.to(anchors.device, torch.float32)
        result = match(anchors, boxes, config.pos_iou, config.neg_iou)
        labels.append(result.labels)
        gt.append(boxes[result.matched] if boxes.numel() else torch.zeros_like(anchors))
    labels_t = torch.stack(labels)  # [B, A]
    gt_t = torch.stack(gt)  # [B, A, 4]

    logits = cls_logits.squeeze(-1).float()
    valid = labels_t >= 0
    positive = labels_t == 1
    num_pos = int(positive.sum())
    normaliser = max(num_pos, 1)
    cls_loss = sigmoid_focal_loss(
        logits[valid],
        positive[valid].to(logits.dtype),
        alpha=config.alpha,
        gamma=config.gamma,
        reduction="sum",
    ) / normaliser

    deltas = box_deltas.float()[positive]
    pos_anchors = anchors.unsqueeze(0).expand_as(gt_t)[positive]
    pos_gt = gt_t[positive]
    if config.box_loss == "smooth_l1":
        box_loss = F.smooth_l1_loss(
            deltas, encode(pos_gt, pos_anchors), beta=config.smooth_l1_beta, reduction="sum"
        )
    else:
        box_loss = generalized_box_iou_loss(decode(deltas, pos_anchors), pos_gt, reduction="sum")
    box_loss = box_loss / normaliser
    total = cls_loss + config.box_weight * box_loss
    return LossTerms(total=total, cls=cls_loss.detach(), box=box_loss.detach(), num_pos=num_pos)


def distillation_loss(
    cls_logits: Tensor,
    box_deltas: Tensor,
    teacher_logits: Tensor,
    teacher_deltas: Tensor,
    anchors: Tensor,
    normaliser: int,
    gamma: float = 2.0,
) -> Tensor:
    """How far a student's dense outputs are from a teacher's on the same batch.

    The face score of every anchor is pulled towards the teacher's probability with a
    binary cross-entropy weighted by ``|p_student - p_teacher| ** gamma`` (the soft-target
    focal loss of GFL, Li et al. 2020: the many anchors both already call background weigh
    nothing, as in the focal loss), minus the teacher's own entropy so that a perfect match
    costs 0. The student's box at every anchor is pulled towards the teacher's box there
    (GIoU loss), weighted by the teacher's face probability. Both sums are divided by
    ``normaliser`` (the batch's positive anchors, as the detection loss is).

    Args:
        cls_logits, box_deltas: the student's ``[B, A, 1]`` and ``[B, A, 4]`` outputs.
        teacher_logits, teacher_deltas: the teacher's, same shapes (no gradient needed).
        anchors: ``[A, 4]`` x1y1x2y2 anchors.
        normaliser: divide the sums by this (at least 1).
        gamma: the focusing exponent of the score term.
    """
    if cls_logits.shape != teacher_logits.shape or box_deltas.shape != teacher_deltas.shape:
        raise ValueError(
            f"student outputs {tuple(cls_logits.shape)}/{tuple(box_deltas.shape)} and teacher outputs "
            f"{tuple(teacher_logits.shape)}/{tuple(teacher_deltas.shape)} differ: the teacher must use the same anchors."
        )
    logits = cls_logits.float()
    target = torch.sigmoid(teacher_logits.float()).detach()
    weight = (torch.sigmoid(logits) - target).abs().pow(gamma)
    entropy = F.binary_cross_entropy(target, target, reduction="none")
    score = ((F.binary_cross_entropy_with_logits(logits, target, reduction="none") - entropy) * weight).sum()
    expanded = anchors.unsqueeze(0).expand_as(box_deltas)
    student_boxes = decode(box_deltas.float().reshape(-1, 4), expanded.reshape(-1, 4))
    teacher_boxes = decode(teacher_deltas.float().reshape(-1, 4), expanded.reshape(-1, 4)).detach()
    box = (generalized_box_iou_loss(student_boxes, teacher_boxes, reduction="none") * target.reshape(-1)).sum()
    return (score + box) / max(normaliser, 1)
