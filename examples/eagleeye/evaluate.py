"""The WIDER FACE evaluation protocol (the official eval_tools, vectorised) and the
submission format.

Protocol, per subset:

1. Scores are min-max normalised over all predictions of all images.
2. Per image, predictions are taken in descending score; each takes the ground-truth
   box of highest IoU. If that IoU is >= ``iou_threshold`` and the face is not in the
   subset (or is marked invalid), the prediction is ignored: neither true nor false
   positive. Otherwise a not yet recalled subset face becomes recalled (true
   positive); anything else is a false positive (IoU too low, or a second match of a
   recalled face).
3. At each of 1,000 thresholds ``t = 1 - k/1000`` (k = 1..1000) precision and recall
   are summed over images: precision = recalled faces / non-ignored predictions with
   score >= t, recall = recalled faces / subset faces.
4. AP is the VOC all-point AP: the precision envelope integrated over recall.

Two details follow the official code rather than common sense, so that numbers stay
comparable with published ones: subset faces of an image without predictions count in
the denominator, and predictions on an image without any ground-truth face are not
evaluated at all (they are not false positives). IoU here uses continuous coordinates
(``x2 = x1 + w``), not the official ``+1`` pixel convention; the difference is
negligible except for faces a few pixels tall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .wider import ImageRecord, xywh_to_xyxy

THRESHOLD_COUNT = 1000
# The official loop computes 1 - (k + 1) / 1000 for k = 0..999; same floats here.
THRESHOLDS = 1.0 - (np.arange(THRESHOLD_COUNT) + 1) / THRESHOLD_COUNT


@dataclass(frozen=True, eq=False)
class EvalResult:
    """AP and the precision-recall curve (over :data:`THRESHOLDS`) of each subset."""

    ap: dict[str, float]
    pr: dict[str, tuple[np.ndarray, np.ndarray]]

    def __str__(self) -> str:
        return "  ".join(f"{name} AP {ap:.4f}" for name, ap in self.ap.items())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of ``x1, y1, x2, y2`` boxes (0 for empty boxes)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = iw.clip(min=0) * ih.clip(min=0)
    area_a = (a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0)
    area_b = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: sum of recall steps times the precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _normalised(predictions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predictions as float64 ``[K, 5]`` with min-max normalised scores."""
    arrays = {}
    for name, p in predictions.items():
        p = np.asarray(p, dtype=np.float64)
        if p.size == 0:
            p = p.reshape(0, 5)
        if p.ndim != 2 or p.shape[1] != 5:
            raise ValueError(
                f"predictions for {name!r} have shape {p.shape}; expected [K, 5] rows of x1, y1, x2, y2, score"
            )
        arrays[name] = p
    scores = [p[:, 4] for p in arrays.values() if len(p)]
    if not scores:
        return arrays
    lo = min(s.min() for s in scores)
    hi = max(s.max() for s in scores)
    for p in arrays.values():
        # All scores equal: every prediction sits at the top threshold.
        p[:, 4] = (p[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
    return arrays


@dataclass(frozen=True)
class _Matches:
    """Every evaluated prediction of every image, in per-image descending score order.

    ``face`` indexes the concatenated ground truth of all records (its best-IoU box),
    ``matched`` says whether that IoU reaches the threshold, ``first_threshold`` is
    the index of the first (highest) threshold the score passes.
    """

    face: np.ndarray
    matched: np.ndarray
    first_threshold: np.ndarray


def _match(preds: Mapping[str, np.ndarray], records: Sequence[ImageRecord], iou_threshold: float) -> _Matches:
    """Best ground-truth box of each prediction; subset-independent, so done once."""
    faces, matched, scores = [], [], []
    offset = 0
    for r in records:
        pred = preds.get(r.name)
        if pred is not None and len(pred) and len(r.boxes):
            pred = pred[np.argsort(-pred[:, 4], kind="stable")]
            iou = box_iou(pred[:, :4], xywh_to_xyxy(r.boxes).astype(np.float64))
            best = iou.argmax(axis=1)
            faces.append(offset + best)
            matched.append(iou[np.arange(len(pred)), best] >= iou_threshold)
            scores.append(pred[:, 4])
        offset += len(r.boxes)
    if not faces:
        empty = np.zeros(0, np.int64)
        return _Matches(empty, empty.astype(bool), empty)
    score = np.concatenate(scores)
    # A score passes the thresholds t_k <= score, i.e. k >= first_threshold.
    passed = np.searchsorted(THRESHOLDS[::-1], score, side="right")
    return _Matches(np.concatenate(faces), np.concatenate(matched), THRESHOLD_COUNT - passed)


def _counts_at_thresholds(first_threshold: np.ndarray) -> np.ndarray:
    """Number of predictions with score >= each threshold."""
    return np.cumsum(np.bincount(first_threshold, minlength=THRESHOLD_COUNT + 1))[:THRESHOLD_COUNT]


def _subset_faces(records: Sequence[ImageRecord], members: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """Mask over the concatenated ground truth of the faces that count, and their number.

    Invalid faces never count, even if listed; listed faces whose boxes were skipped
    on reading cannot be found but still count in the denominator, as officially.
    """
    keep, n_faces = [], 0
    for r in records:
        wanted = np.asarray(members.get(r.name, ()), dtype=np.int64)
        ids, valid = r.ids(), r.valid()
        n_faces += len(wanted) - int(np.isin(wanted, ids[~valid]).sum())
        keep.append(np.isin(ids, wanted) & valid)
    return (np.concatenate(keep) if keep else np.zeros(0, bool)), n_faces


def evaluate(
    predictions: Mapping[str, np.ndarray],
    records: Sequence[ImageRecord],
    subsets: Mapping[str, Mapping[str, np.ndarray]],
    iou_threshold: float = 0.5,
) -> EvalResult:
    """Evaluate face detections with the WIDER FACE protocol (see the module docstring).

    Args:
        predictions: image name -> ``[K, 5]`` array ``x1, y1, x2, y2, score`` in
            ORIGINAL image pixels. Images without an entry have no predictions.
        records: the ground truth (``wider.load_split(root, "val")``).
        subsets: ``{subset: {image name: 1-based face indices}}``
            (``wider.load_subsets(root)``), indices in annotation numbering
            (``ImageRecord.ids()``). Every subset given is evaluated.
        iou_threshold: IoU for a match.

    Returns:
        AP per subset (NaN for a subset without faces) and the (precision, recall)
        curves over :data:`THRESHOLDS`.

    Raises:
        ValueError: a prediction names an image not in ``records``, or has the wrong shape.

    Example:
        >>> result = evaluate(preds, wider.load_split(root, "val"), wider.load_subsets(root))  # doctest: +SKIP
        >>> result.ap["hard"]  # doctest: +SKIP
    """
    names = {r.name for r in records}
    unknown = sorted(set(predictions) - names)
    if unknown:
        raise ValueError(
            f"predictions for {len(unknown)} image(s) not in the ground truth, e.g. {unknown[:3]}; "
            "keys must be image names like '<event>/<file>.jpg' as in ImageRecord.name"
        )
    matches = _match(_normalised(predictions), records, iou_threshold)
    ap: dict[str, float] = {}
    pr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for subset, members in subsets.items():
        keep, n_faces = _subset_faces(records, members)
        counts = keep[matches.face]
        ignored = matches.matched & ~counts
        candidates = np.flatnonzero(matches.matched & counts)
        # A face's first match in score order recalls it; later ones are false positives.
        _, first = np.unique(matches.face[candidates], return_index=True)
        n_kept = _counts_at_thresholds(matches.first_threshold[~ignored])
        n_tp = _counts_at_thresholds(matches.first_threshold[candidates[first]])
        precision = np.divide(n_tp, n_kept, out=np.zeros(THRESHOLD_COUNT), where=n_kept > 0)
        recall = n_tp / n_faces if n_faces else np.zeros(THRESHOLD_COUNT)
        pr[subset] = (precision, recall)
        ap[subset] = voc_ap(recall, precision) if n_faces else float("nan")
    return EvalResult(ap=ap, pr=pr)


def write_submission(predictions: Mapping[str, np.ndarray], out_dir: Path) -> None:
    """Write predictions in the WIDER FACE submission format.

    One file ``<out_dir>/<event>/<file stem>.txt`` per image: the file stem, the box
    count, then one ``x y w h score`` line per box (``predictions`` rows are
    ``x1, y1, x2, y2, score`` in original pixels).
    """
    out_dir = Path(out_dir)
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 5)
        path = out_dir / Path(name).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [Path(name).stem, str(len(pred))]
        for x1, y1, x2, y2, score in pred:
            lines.append(f"{x1:.2f} {y1:.2f} {x2 - x1:.2f} {y2 - y1:.2f} {score:.6f}")
        path.write_text("\n".join(lines) + "\n")


def read_submission(pred_dir: Path) -> dict[str, np.ndarray]:
    """Read a submission directory back into ``{"<event>/<file>.jpg": [K, 5] x1y1x2y2 score}``.

    Raises:
        ValueError: a file's count line disagrees with its box lines (names the file).
    """
    pred_dir = Path(pred_dir)
    predictions: dict[str, np.ndarray] = {}
    for path in sorted(pred_dir.glob("*/*.txt")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if len(lines) < 2:
            raise ValueError(f"{path}: expected the image name and the box count on the first two lines")
        count = int(lines[1])
        rows = [[float(v) for v in line.split()[:5]] for line in lines[2:]]
        if len(rows) != count or any(len(row) != 5 for row in rows):
            raise ValueError(f"{path}: the count line says {count} boxes but {len(rows)} 'x y w h score' lines follow")
        boxes = xywh_to_xyxy(np.asarray(rows, dtype=np.float64).reshape(-1, 5))
        predictions[f"{path.parent.name}/{path.stem}.jpg"] = boxes.astype(np.float64)
    return predictions
