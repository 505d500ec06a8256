"""The WIDER FACE evaluation protocol, as the official MATLAB eval_tools compute it
(vectorised), and the submission format.

Everything below follows the official code (``wider_eval.m`` -> ``read_pred.m``,
``norm_score.m``, ``evaluation.m`` with ``image_evaluation``, ``image_pr_info`` and
``dataset_pr_info``, ``boxoverlap.m``, ``plot/VOCap.m``), detail by detail. What each
step does and where it was checked (the files as stored in the public repositories
DetectionTeamUCAS/SSH_Tensorflow ``eval_tools/`` at 590105b, an unmodified copy of
Shuo Yang's Dec 2015 eval_tools, and peiyunh/tiny ``eval_tools/boxoverlap.m`` at
146a483, Ross Girshick's voc-release function the tools ship):

1. ``read_pred.m`` sorts each image's boxes by score, descending, with MATLAB's
   ``sort(..., 'descend')``, which keeps the file order of equal scores (stable). Here
   each image's rows are ordered the same way (``np.argsort(-score, kind="stable")``).
   The widely used Python port (wondervictor/WiderFace-Evaluation ``evaluation.py``)
   does *not* sort; on a file not already in descending order it scores differently.
2. ``norm_score.m`` min-max normalises the scores over every prediction of every
   image, with ``max_score`` initialised to ``realmin('single')`` and ``min_score`` to
   ``realmax('single')`` (not 0 and 1 as in the Python port: there, scores all above 1
   or all below 0 normalise differently). MATLAB's ``max(single, double)`` is single,
   so the bounds and the normalised scores are single precision (stored back into the
   double matrix); reproduced here with float32 arithmetic. All scores equal gives
   ``0/0`` = NaN scores, which pass no threshold (the official result; nothing is
   special-cased). Non-finite raw scores are refused (ValueError) instead of being
   carried through as NaN.
3. ``image_evaluation`` turns ``x, y, w, h`` into ``x2 = x + w``, ``y2 = y + h`` for
   predictions and ground truth, then per prediction in that order computes
   ``boxoverlap`` against every ground-truth box of the image: ``iw = min(x2) - max(x1)
   + 1``, ``ih`` likewise, areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``, ``IoU = iw * ih /
   (area_a + area_b - iw * ih)``, set to 0 where ``iw <= 0`` or ``ih <= 0`` (the +1
   pixel convention: a 4 x 4 face is 5 x 5 pixels). ``[max_overlap, idx] = max(...)``
   takes the first box on ties. If ``max_overlap >= 0.5``: a face not in the subset
   (``ignore(idx) == 0``; the subset's ``gt_list`` indices set ``ignore = 1``) makes the
   prediction ignored (``proposal_list = -1``) and the face ``recall_list = -1``;
   otherwise a not yet recalled subset face becomes recalled. Anything else (a low
   overlap, a second hit of a recalled face) stays a proposal: a false positive.
   The face attributes, *including the invalid flag*, are never looked at: only the
   subset lists decide which faces count (an invalid face that a subset lists counts
   like any other; the former version of this module dropped such faces).
4. ``image_pr_info`` uses the 1000 thresholds ``thresh = 1 - t/1000``, t = 1..1000,
   and ``r_index = find(score >= thresh, 1, 'last')``; with the rows sorted this is
   "every prediction scoring >= thresh", so the number of proposals and of recalled
   faces at each threshold are counted here with one cumulative sum.
5. ``evaluation.m`` adds ``length(keep_index)`` to ``count_face`` for *every* image of
   the ground truth, then skips images with no ground-truth box or no prediction:
   their listed faces still count in the recall denominator, and predictions on an
   image without ground truth are neither true nor false positives (their scores did
   take part in step 2).
6. ``dataset_pr_info``: precision = recalled / proposals (``0/0`` = NaN at thresholds
   no proposal passes: kept as NaN in :attr:`EvalResult.pr`), recall = recalled /
   count_face (NaN everywhere for a subset without faces, whose AP is then NaN).
7. ``VOCap``: ``mrec = [0; rec; 1]``, ``mpre = [0; prec; 0]``, the backward running
   maximum with MATLAB's ``max``, which ignores NaN (``np.fmax`` here), then
   ``sum((mrec(i) - mrec(i-1)) .* mpre(i))`` over the indices where recall changes.

tests/test_evaluate_official.py checks hand-computed cases where the official rules
and the common ones differ, and compares this module on random cases with a literal,
loop-by-loop transcription of the MATLAB functions (identical AP to 1e-12).

One input differs from the official ones by construction, not by rule: predictions
are held as ``x1, y1, x2, y2`` (the official ``x + w`` happens when a submission is
read back, :func:`read_submission`). The ground truth is every box as written,
zero-size boxes and boxes outside the image included, as the official ``face_bbx_list``
holds them: read it with ``wider.load_split(root, "val", skip_degenerate=False)`` (what
``WiderFaceDataset`` does); a reader that skips them drops match candidates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .wider import ImageRecord, xywh_to_xyxy

THRESHOLD_COUNT = 1000
# image_pr_info: thresh = 1 - t/thresh_num for t = 1..1000; the same doubles here.
THRESHOLDS = 1.0 - (np.arange(THRESHOLD_COUNT) + 1) / THRESHOLD_COUNT

# norm_score.m's initial bounds.
_MAX_INIT = np.float32(np.finfo(np.float32).tiny)  # realmin('single')
_MIN_INIT = np.float32(np.finfo(np.float32).max)  # realmax('single')


@dataclass(frozen=True, eq=False)
class EvalResult:
    """AP and the precision-recall curve (over :data:`THRESHOLDS`) of each subset.

    ``pr[subset]`` is ``(precision, recall)``; precision is NaN at thresholds that no
    evaluated prediction passes, as in the official ``dataset_pr_info``.
    """

    ap: dict[str, float]
    pr: dict[str, tuple[np.ndarray, np.ndarray]]

    def __str__(self) -> str:
        return "  ".join(f"{name} AP {ap:.4f}" for name, ap in self.ap.items())


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The official ``boxoverlap`` as a matrix ``[len(a), len(b)]`` of ``x1, y1, x2, y2`` boxes.

    Pixel-inclusive (+1) widths, heights and areas; 0 where the boxes do not overlap
    (``iw <= 0`` or ``ih <= 0``).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    overlap = (iw > 0) & (ih > 0)
    # Where both extents are positive both areas are too and the union is >= either.
    union = np.where(overlap, area_a[:, None] + area_b[None, :] - inter, 1.0)
    return np.where(overlap, inter / union, 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """``VOCap``: the backward precision envelope (NaN ignored, as MATLAB's ``max``) over recall steps."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _checked(predictions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predictions as float64 ``[K, 5]`` copies, each image's rows in ``read_pred`` order."""
    arrays = {}
    for name, p in predictions.items():
        p = np.asarray(p, dtype=np.float64)
        if p.size == 0:
            p = p.reshape(0, 5)
        if p.ndim != 2 or p.shape[1] != 5:
            raise ValueError(
                f"predictions for {name!r} have shape {p.shape}; expected [K, 5] rows of x1, y1, x2, y2, score"
            )
        if not np.isfinite(p[:, 4]).all():
            raise ValueError(
                f"predictions for {name!r} have a non-finite score; scores must be finite numbers "
                "(drop or replace NaN/inf scores before evaluating)"
            )
        arrays[name] = p[np.argsort(-p[:, 4], kind="stable")]
    return arrays


def norm_scores(predictions: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``norm_score.m``: min-max normalised scores, over all images, in single precision.

    Args:
        predictions: image name -> ``[K, 5]`` float64 rows (not modified).

    Returns:
        Copies whose score column is ``(s - min) / (max - min)`` computed in float32
        with the official initial bounds (``realmin('single')``, ``realmax('single')``);
        NaN when every score is equal.
    """
    hi, lo = _MAX_INIT, _MIN_INIT
    for p in predictions.values():
        if len(p):
            # max(single, double) is single in MATLAB: round the image's extreme to float32.
            hi = max(hi, np.float32(p[:, 4].max()))
            lo = min(lo, np.float32(p[:, 4].min()))
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, p in predictions.items():
            p = p.copy()
            if len(p):
                p[:, 4] = ((p[:, 4].astype(np.float32) - lo) / (hi - lo)).astype(np.float64)
            out[name] = p
    return out


@dataclass(frozen=True)
class _Matches:
    """Every evaluated prediction of every image, in per-image ``read_pred`` order.

    ``face`` indexes the concatenated ground truth of all records (its best-overlap
    box), ``matched`` says whether that overlap reaches the threshold,
    ``first_threshold`` is the index of the first (highest) threshold the score passes
    (:data:`THRESHOLD_COUNT` for none).
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
            gt = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4).copy()
            gt[:, 2:4] += gt[:, 0:2]  # x2 = x + w in double, as image_evaluation
            iou = box_iou(pred[:, :4], gt)
            best = iou.argmax(axis=1)  # the first box on ties, as MATLAB's max
            faces.append(offset + best)
            matched.append(iou[np.arange(len(pred)), best] >= iou_threshold)
            scores.append(pred[:, 4])
        offset += len(r.boxes)
    if not faces:
        empty = np.zeros(0, np.int64)
        return _Matches(empty, empty.astype(bool), empty)
    score = np.concatenate(scores)
    # A score passes the thresholds t_k <= score, i.e. k >= first_threshold; NaN passes none.
    passed = np.searchsorted(THRESHOLDS[::-1], score, side="right")
    first = np.where(np.isnan(score), THRESHOLD_COUNT, THRESHOLD_COUNT - passed)
    return _Matches(np.concatenate(faces), np.concatenate(matched), first)


def _counts_at_thresholds(first_threshold: np.ndarray) -> np.ndarray:
    """Number of predictions with score >= each threshold."""
    return np.cumsum(np.bincount(first_threshold, minlength=THRESHOLD_COUNT + 1))[:THRESHOLD_COUNT]


def _subset_faces(records: Sequence[ImageRecord], members: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int]:
    """Mask over the concatenated ground truth of the faces the subset lists, and ``count_face``.

    As ``evaluation.m``: ``count_face`` adds every image's list length; attributes
    (the invalid flag included) are not looked at. Listed faces whose boxes were
    skipped on reading cannot be matched but still count.
    """
    keep, n_faces = [], 0
    for r in records:
        wanted = np.asarray(members.get(r.name, ()), dtype=np.int64).reshape(-1)
        n_faces += len(wanted)
        keep.append(np.isin(r.ids(), wanted))
    return (np.concatenate(keep) if keep else np.zeros(0, bool)), n_faces


def evaluate(
    predictions: Mapping[str, np.ndarray],
    records: Sequence[ImageRecord],
    subsets: Mapping[str, Mapping[str, np.ndarray]],
    iou_threshold: float = 0.5,
) -> EvalResult:
    """Evaluate face detections with the official WIDER FACE protocol (see the module docstring).

    Args:
        predictions: image name -> ``[K, 5]`` array ``x1, y1, x2, y2, score`` in
            ORIGINAL image pixels, rows in any order. Images without an entry have no
            predictions.
        records: the ground truth, every box as written
            (``wider.load_split(root, "val", skip_degenerate=False)``).
        subsets: ``{subset: {image name: 1-based face indices}}``
            (``wider.load_subsets(root)``), indices in annotation numbering
            (``ImageRecord.ids()``). Every subset given is evaluated.
        iou_threshold: overlap for a match (the official 0.5 by default).

    Returns:
        AP per subset (NaN for a subset without faces) and the (precision, recall)
        curves over :data:`THRESHOLDS` (precision NaN where nothing is predicted).

    Raises:
        ValueError: a prediction names an image not in ``records``, has the wrong
            shape or a non-finite score.

    Example:
        >>> gt = wider.load_split(root, "val", skip_degenerate=False)  # doctest: +SKIP
        >>> result = evaluate(preds, gt, wider.load_subsets(root))  # doctest: +SKIP
        >>> result.ap["hard"]  # doctest: +SKIP
    """
    names = {r.name for r in records}
    unknown = sorted(set(predictions) - names)
    if unknown:
        raise ValueError(
            f"predictions for {len(unknown)} image(s) not in the ground truth, e.g. {unknown[:3]}; "
            "keys must be image names like '<event>/<file>.jpg' as in ImageRecord.name"
        )
    matches = _match(norm_scores(_checked(predictions)), records, iou_threshold)
    ap: dict[str, float] = {}
    pr: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for subset, members in subsets.items():
        keep, n_faces = _subset_faces(records, members)
        counts = keep[matches.face]
        ignored = matches.matched & ~counts
        candidates = np.flatnonzero(matches.matched & counts)
        # A face's first match in score order recalls it; later ones are false positives.
        _, first = np.unique(matches.face[candidates], return_index=True)
        n_kept = _counts_at_thresholds(matches.first_threshold[~ignored]).astype(np.float64)
        n_tp = _counts_at_thresholds(matches.first_threshold[candidates[first]]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = n_tp / n_kept
            recall = n_tp / np.float64(n_faces)
        pr[subset] = (precision, recall)
        ap[subset] = voc_ap(recall, precision)
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
