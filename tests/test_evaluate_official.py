"""examples.eagleeye.evaluate follows the official WIDER FACE eval_tools (MATLAB) in every
detail: hand-computed cases where the official rules differ from the usual ones, and a
property test against a literal, loop-by-loop transcription of the MATLAB functions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.eagleeye.evaluate import THRESHOLDS, box_iou, evaluate, norm_scores
from examples.eagleeye.wider import ImageRecord

# ---------------------------------------------------------------------------
# Helpers


def record(name: str, boxes_xywh: Sequence[Sequence[float]], invalid: Sequence[int] = ()) -> ImageRecord:
    """An annotation-only record (the evaluator needs no image file)."""
    attrs = np.zeros((len(boxes_xywh), 6), np.int32)
    attrs[list(invalid), 3] = 1
    return ImageRecord(
        name=name,
        path=Path("/nonexistent") / name,
        boxes=np.asarray(boxes_xywh, np.float64).reshape(-1, 4),
        attrs=attrs,
    )


def pred(*rows: tuple[float, float, float, float, float]) -> np.ndarray:
    """Predictions from ``x, y, w, h, score`` rows, as the evaluator takes them (x1, y1, x2, y2, score)."""
    out = np.asarray(rows, np.float64).reshape(-1, 5)
    out[:, 2:4] += out[:, :2]
    return out


def all_faces(records: Sequence[ImageRecord]) -> dict[str, dict[str, np.ndarray]]:
    """One subset, ``s``, holding every face."""
    return {"s": {r.name: np.arange(1, len(r.boxes) + 1) for r in records}}


# ---------------------------------------------------------------------------
# A literal transcription of the official MATLAB code (the oracle). Comments give the
# MATLAB line each statement transcribes. MATLAB indexing is kept 1-based by padding.


def _ml_max(a: float, b: float) -> float:
    """MATLAB ``max(a, b)`` of two scalars: NaN is ignored unless both are NaN."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return a if a >= b else b


def ml_read_pred(bbx: np.ndarray) -> np.ndarray:
    """read_pred.m: ``[~, s_index] = sort(bbx(:,5),'descend'); bbx_list{j} = bbx(s_index,:);``

    MATLAB's sort is stable: equal scores keep their file order.
    """
    order = sorted(range(len(bbx)), key=lambda k: -bbx[k][4])  # Python's sort is stable too
    return np.array([bbx[k] for k in order], np.float64).reshape(-1, 5)


def ml_norm_score(pred_list: list[np.ndarray]) -> list[np.ndarray]:
    """norm_score.m, with MATLAB's single/double rule: max(single, double) is single."""
    max_score = np.float32(np.finfo(np.float32).tiny)  # realmin('single')
    min_score = np.float32(np.finfo(np.float32).max)  # realmax('single')
    for p in pred_list:
        if len(p) == 0:  # if(isempty(pred_list{j})) continue;
            continue
        score_list = p[:, 4]
        max_score = np.float32(max(float(max_score), float(np.float32(max(score_list)))))
        min_score = np.float32(min(float(min_score), float(np.float32(min(score_list)))))
    out = []
    for p in pred_list:
        p = p.copy()
        if len(p):
            with np.errstate(invalid="ignore", divide="ignore"):
                for k in range(len(p)):
                    # (score_list - min_score)/(max_score - min_score), in single
                    v = (np.float32(p[k, 4]) - min_score) / (max_score - min_score)
                    p[k, 4] = float(np.float32(v))
        out.append(p)
    return out


def ml_boxoverlap(a: np.ndarray, b: np.ndarray) -> list[float]:
    """boxoverlap.m, one row of ``a`` at a time."""
    o = []
    for row in a:
        x1 = max(row[0], b[0])
        y1 = max(row[1], b[1])
        x2 = min(row[2], b[2])
        y2 = min(row[3], b[3])
        w = x2 - x1 + 1
        h = y2 - y1 + 1
        inter = w * h
        aarea = (row[2] - row[0] + 1) * (row[3] - row[1] + 1)
        barea = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = float(np.float64(inter) / np.float64(aarea + barea - inter))
        if w <= 0:
            v = 0.0
        if h <= 0:
            v = 0.0
        o.append(v)
    return o


def ml_image_evaluation(pred_info: np.ndarray, gt_bbx: np.ndarray, ignore: np.ndarray, iou_thresh: float):
    """evaluation.m, image_evaluation."""
    n_pred, n_gt = len(pred_info), len(gt_bbx)
    pred_recall = [0] * n_pred
    recall_list = [0] * n_gt
    proposal_list = [1] * n_pred
    pred_info = pred_info.copy()
    gt_bbx = gt_bbx.copy()
    pred_info[:, 2] = pred_info[:, 0] + pred_info[:, 2]
    pred_info[:, 3] = pred_info[:, 1] + pred_info[:, 3]
    gt_bbx[:, 2] = gt_bbx[:, 0] + gt_bbx[:, 2]
    gt_bbx[:, 3] = gt_bbx[:, 1] + gt_bbx[:, 3]
    for h in range(n_pred):
        overlap_list = ml_boxoverlap(gt_bbx, pred_info[h, :4])
        # [max_overlap, idx] = max(overlap_list): first index of the (NaN-ignoring) maximum
        max_overlap, idx = float("nan"), 0
        for k, v in enumerate(overlap_list):
            if not math.isnan(v) and (math.isnan(max_overlap) or v > max_overlap):
                max_overlap, idx = v, k
        if max_overlap >= iou_thresh:
            if ignore[idx] == 0:
                recall_list[idx] = -1
                proposal_list[h] = -1
            elif recall_list[idx] == 0:
                recall_list[idx] = 1
        pred_recall[h] = sum(1 for v in recall_list if v == 1)  # length(find(recall_list == 1))
    return pred_recall, proposal_list


def ml_image_pr_info(thresh_num: int, pred_info: np.ndarray, proposal_list: list[int], pred_recall: list[int]):
    """evaluation.m, image_pr_info."""
    img_pr_info = np.zeros((thresh_num, 2))
    for t in range(1, thresh_num + 1):
        thresh = 1 - t / thresh_num
        hits = [k for k in range(len(pred_info)) if pred_info[k, 4] >= thresh]  # NaN >= x is false
        if not hits:
            img_pr_info[t - 1, 1] = 0
            img_pr_info[t - 1, 0] = 0
        else:
            r_index = hits[-1]  # find(..., 1, 'last')
            img_pr_info[t - 1, 0] = sum(1 for v in proposal_list[: r_index + 1] if v == 1)
            img_pr_info[t - 1, 1] = pred_recall[r_index]
    return img_pr_info


def ml_dataset_pr_info(thresh_num: int, org_pr_cruve: np.ndarray, count_face: int) -> np.ndarray:
    """evaluation.m, dataset_pr_info (MATLAB division: 0/0 is NaN)."""
    pr_cruve = np.zeros((thresh_num, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(thresh_num):
            pr_cruve[i, 0] = np.float64(org_pr_cruve[i, 1]) / np.float64(org_pr_cruve[i, 0])
            pr_cruve[i, 1] = np.float64(org_pr_cruve[i, 1]) / np.float64(count_face)
    return pr_cruve


def ml_vocap(rec: np.ndarray, prec: np.ndarray) -> float:
    """plot/VOCap.m."""
    mrec = [0.0, *rec.tolist(), 1.0]
    mpre = [0.0, *prec.tolist(), 0.0]
    for i in range(len(mpre) - 2, -1, -1):  # for i=numel(mpre)-1:-1:1
        mpre[i] = _ml_max(mpre[i], mpre[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):  # i=find(mrec(2:end)~=mrec(1:end-1))+1
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


def official(
    files: Mapping[str, np.ndarray],
    gt: Mapping[str, np.ndarray],
    gt_list: Mapping[str, np.ndarray],
    iou_thresh: float = 0.5,
) -> tuple[float, np.ndarray, np.ndarray]:
    """wider_eval.m for one setting: read_pred, norm_score, evaluation, VOCap.

    ``files``: image -> submission rows ``x y w h score`` in file order (a missing
    image has no file); ``gt``: image -> ``x y w h`` rows (the image order of
    face_bbx_list); ``gt_list``: image -> 1-based subset indices.
    """
    names = list(gt)
    pred_list = [ml_read_pred(files[n]) if n in files and len(files[n]) else np.zeros((0, 5)) for n in names]
    norm_pred_list = ml_norm_score(pred_list)
    thresh_num = 1000
    org_pr_cruve = np.zeros((thresh_num, 2))
    count_face = 0
    for n, pred_info in zip(names, norm_pred_list):
        gt_bbx = np.asarray(gt[n], np.float64).reshape(-1, 4)
        keep_index = np.asarray(gt_list.get(n, []), np.int64)
        count_face += len(keep_index)
        if len(gt_bbx) == 0 or len(pred_info) == 0:
            continue
        ignore = np.zeros(len(gt_bbx))
        if len(keep_index):
            ignore[keep_index - 1] = 1
        pred_recall, proposal_list = ml_image_evaluation(pred_info, gt_bbx, ignore, iou_thresh)
        org_pr_cruve += ml_image_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
    pr_cruve = ml_dataset_pr_info(thresh_num, org_pr_cruve, count_face)
    return ml_vocap(pr_cruve[:, 1], pr_cruve[:, 0]), pr_cruve[:, 0], pr_cruve[:, 1]


# ---------------------------------------------------------------------------
# Hand-computed cases


def test_iou_uses_the_official_plus_one_pixel_convention() -> None:
    """A 4 x 4 face and a 6 x 6 box on the same corner: 25/49 >= 0.5 officially, 16/36 < 0.5 continuously."""
    face = pred((10, 10, 4, 4, 0))[:, :4]
    box = pred((10, 10, 6, 6, 0))[:, :4]
    assert box_iou(box, face)[0, 0] == pytest.approx(25 / 49)
    # Touching edges share a pixel column: iw = 1, IoU 5 / 45; a gap of one pixel is 0.
    assert box_iou(pred((14, 10, 4, 4, 0))[:, :4], face)[0, 0] == pytest.approx(5 / 45)
    assert box_iou(pred((15, 10, 4, 4, 0))[:, :4], face)[0, 0] == 0.0


def test_small_face_hit_counts_only_under_the_plus_one_convention() -> None:
    """The 6 x 6 box (score 1) recalls the 4 x 4 face: AP 1. With continuous IoU (16/36) it
    would be a false positive, and the far box hits nothing either: AP 0."""
    records = [record("0--A/a.jpg", [[10, 10, 4, 4]])]
    preds = {"0--A/a.jpg": pred((10, 10, 6, 6, 1.0), (100, 100, 6, 6, 0.0))}
    result = evaluate(preds, records, all_faces(records))
    assert result.ap["s"] == pytest.approx(1.0)
    assert result.ap["s"] == pytest.approx(official(_files(preds), _gt(records), all_faces(records)["s"])[0])


def test_hit_on_a_face_outside_the_subset_is_ignored_every_time() -> None:
    """Face 1 in the subset, face 2 not. Predictions: face 2 (score 1), face 2 again (0.75),
    face 1 (0.5), a miss (0). Both face-2 hits are ignored (recall_list = -1 keeps the second
    one ignored too): precision 1 down to 0.5 and 1/2 at 0, recall 1: AP 1."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20], [50, 50, 8, 8]])]
    preds = {"0--A/a.jpg": pred((50, 50, 8, 8, 1.0), (50, 50, 8, 8, 0.75), (0, 0, 20, 20, 0.5), (200, 200, 9, 9, 0.0))}
    result = evaluate(preds, records, {"s": {"0--A/a.jpg": np.array([1])}})
    precision, recall = result.pr["s"]
    assert result.ap["s"] == pytest.approx(1.0)
    assert np.isnan(precision[: 499]).all()  # thresholds above 0.5: only ignored boxes pass
    assert precision[499] == 1.0 and precision[-1] == 0.5 and recall[-1] == 1.0


def test_second_match_of_a_recalled_face_is_a_false_positive() -> None:
    """Faces A, B; predictions A (1), A again (0.5), B (0). (recall, precision): (1/2, 1), (1/2, 1/2),
    (1, 2/3); envelope 1, 2/3: AP = 1/2 + 1/3 = 5/6."""
    records = [record("0--A/a.jpg", [[0, 0, 10, 10], [20, 0, 10, 10]])]
    preds = {"0--A/a.jpg": pred((0, 0, 10, 10, 1.0), (0, 0, 10, 10, 0.5), (20, 0, 10, 10, 0.0))}
    assert evaluate(preds, records, all_faces(records)).ap["s"] == pytest.approx(5 / 6)


def test_rows_are_evaluated_in_descending_score_order_whatever_the_file_order() -> None:
    """read_pred.m sorts each image's boxes by score. A miss (0.2) written before the hit (0.9):
    sorted, the hit alone passes every threshold above 0, AP 1. Without the sort (the Python
    port) ``find(score >= t, 1, 'last')`` would reach the miss's row and give precision 1/2: AP 0.5."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]])]
    unsorted = {"0--A/a.jpg": pred((100, 100, 20, 20, 0.2), (0, 0, 20, 20, 0.9))}
    result = evaluate(unsorted, records, all_faces(records))
    assert result.ap["s"] == pytest.approx(1.0)
    assert result.pr["s"][0][-2] == 1.0


def test_equal_scores_keep_file_order_when_sorted() -> None:
    """Two hits of one face with equal scores: the first in the file recalls it, the second is
    the false positive; the result equals the transcription's."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20], [40, 0, 20, 20]])]
    preds = {"0--A/a.jpg": pred((0, 0, 20, 20, 0.5), (1, 0, 20, 20, 0.5), (40, 0, 20, 20, 1.0), (90, 0, 5, 5, 0.0))}
    expected = official(_files(preds), _gt(records), all_faces(records)["s"])
    result = evaluate(preds, records, all_faces(records))
    assert result.ap["s"] == pytest.approx(expected[0], abs=1e-12)


def test_empty_images() -> None:
    """Faces of an image without predictions count in the recall denominator; predictions on an
    image without faces are not evaluated, yet their scores take part in the normalisation."""
    a, b, empty = record("0--A/a.jpg", [[0, 0, 20, 20]]), record("0--A/b.jpg", [[0, 0, 20, 20]]), record("0--A/e.jpg", [])
    records = [a, b, empty]
    # a: hit (0.5) and a miss (0.4999). b: no prediction. e: predictions only.
    base = {"0--A/a.jpg": pred((0, 0, 20, 20, 0.5), (90, 90, 20, 20, 0.4999))}
    result = evaluate(base, records, all_faces(records))
    assert result.ap["s"] == pytest.approx(0.5)  # recall tops out at 1 of 2 faces, at precision 1
    assert np.nanmax(result.pr["s"][1]) == 0.5
    # An outlier score 1000 on the empty image squeezes both of a's scores into the lowest
    # threshold bin: hit and miss now pass together, precision 1/2 at recall 1/2: AP 0.25.
    stretched = {**base, "0--A/e.jpg": pred((0, 0, 20, 20, 1000.0))}
    assert evaluate(stretched, records, all_faces(records)).ap["s"] == pytest.approx(0.25)
    # Predictions on the empty image alone are neither true nor false positives.
    only_empty = {"0--A/e.jpg": pred((0, 0, 20, 20, 1.0), (5, 5, 20, 20, 0.0))}
    nothing = evaluate(only_empty, records, all_faces(records))
    assert nothing.ap["s"] == 0.0 and np.isnan(nothing.pr["s"][0]).all()


def test_precision_is_nan_where_nothing_passes_and_the_envelope_ignores_it() -> None:
    """Scores -2 (hit) and -4 (miss): max starts at realmin('single') ~ 0, so the normalised
    scores are 0.5 and 0. Thresholds above 0.5 see no box: precision 0/0 = NaN there, and
    VOCap's max ignores NaN: AP 1."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]])]
    preds = {"0--A/a.jpg": pred((0, 0, 20, 20, -2.0), (90, 90, 20, 20, -4.0))}
    result = evaluate(preds, records, all_faces(records))
    precision, recall = result.pr["s"]
    assert np.isnan(precision[:499]).all() and (recall[:499] == 0).all()
    assert precision[499] == 1.0 and recall[499] == 1.0  # threshold exactly 0.5
    assert precision[-1] == 0.5
    assert result.ap["s"] == pytest.approx(1.0)


def test_norm_score_bounds_start_at_realmin_and_realmax_single() -> None:
    """Scores 3 and 2 normalise to 1 and 0 (min starts at realmax, not 1: the Python port's
    min(1, 2) = 1 would give 0.5 to the lower one)."""
    normed = norm_scores({"a": np.array([[0, 0, 1, 1, 3.0], [0, 0, 1, 1, 2.0]])})
    assert normed["a"][:, 4].tolist() == [1.0, 0.0]
    # A lone score (max == min) is 0/0: NaN, which passes no threshold.
    assert np.isnan(norm_scores({"a": np.array([[0, 0, 1, 1, 0.7]])})["a"][0, 4])


def test_normalised_scores_are_single_precision() -> None:
    """MATLAB's max(single, double) is single: 1/3 becomes float32(1/3), and a score a hair
    under 0.5 (0.5 - 1e-9) rounds to 0.5 and passes the threshold 0.5."""
    normed = norm_scores({"a": np.array([[0, 0, 1, 1, 0.0], [0, 0, 1, 1, 1 / 3], [0, 0, 1, 1, 1.0]])})
    assert normed["a"][1, 4] == float(np.float32(1 / 3)) != 1 / 3
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]])]
    preds = {"0--A/a.jpg": pred((90, 0, 9, 9, 1.0), (0, 0, 20, 20, 0.5 - 1e-9), (90, 90, 9, 9, 0.0))}
    recall = evaluate(preds, records, all_faces(records)).pr["s"][1]
    assert recall[499] == 1.0 and THRESHOLDS[499] == 0.5


def test_lone_prediction_scores_zero_as_officially() -> None:
    """One prediction, a perfect hit: its normalised score is NaN, so nothing passes any
    threshold and AP is 0 (the official tools do exactly this)."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]])]
    assert evaluate({"0--A/a.jpg": pred((0, 0, 20, 20, 0.9))}, records, all_faces(records)).ap["s"] == 0.0


def test_invalid_flag_is_not_looked_at() -> None:
    """The subset list alone decides: a listed face marked invalid counts like any other."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20], [50, 50, 20, 20]], invalid=[1])]
    preds = {"0--A/a.jpg": pred((0, 0, 20, 20, 1.0), (200, 200, 9, 9, 0.0))}
    result = evaluate(preds, records, {"s": {"0--A/a.jpg": np.array([1, 2])}})
    assert np.nanmax(result.pr["s"][1]) == 0.5  # 1 of 2 listed faces, the invalid one included
    assert result.ap["s"] == pytest.approx(0.5)


def test_subset_without_faces_has_nan_ap() -> None:
    """count_face = 0: recall 0/0 = NaN everywhere and so is AP."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]])]
    preds = {"0--A/a.jpg": pred((0, 0, 20, 20, 1.0), (90, 0, 9, 9, 0.0))}
    assert math.isnan(evaluate(preds, records, {"s": {}}).ap["s"])


def test_non_finite_scores_are_refused() -> None:
    """The official tools would carry NaN through; here it is an error naming the image."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]])]
    with pytest.raises(ValueError, match=r"0--A/a\.jpg.*non-finite"):
        evaluate({"0--A/a.jpg": pred((0, 0, 20, 20, float("nan")))}, records, all_faces(records))


# ---------------------------------------------------------------------------
# Property test: the vectorised evaluator equals the literal transcription


def _files(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predictions back in submission form ``x y w h score`` (exact for the values used here)."""
    out = {}
    for name, p in preds.items():
        p = np.asarray(p, np.float64).reshape(-1, 5).copy()
        p[:, 2:4] -= p[:, :2]
        out[name] = p
    return out


def _gt(records: Sequence[ImageRecord]) -> dict[str, np.ndarray]:
    return {r.name: np.asarray(r.boxes, np.float64) for r in records}


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[ImageRecord], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Crowded images of small faces on a half-pixel grid (so x + w and x2 - x1 are exact),
    predictions jittered around them, duplicated, or anywhere, scores with ties, sometimes
    all negative or all above 1; some images without faces or without predictions."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    score_mode = draw(st.sampled_from(["unit", "ties", "negative", "large"]))
    records, preds, subset = [], {}, {}
    for i in range(draw(st.integers(1, 4))):
        n = int(rng.integers(0, 6))
        xy = rng.integers(0, 80, (n, 2)) / 2
        wh = rng.integers(0, 24, (n, 2)) / 2  # 0 to 11.5 px: where +1 matters
        name = f"0--A/{i}.jpg"
        records.append(record(name, np.hstack([xy, wh]).tolist(), invalid=np.flatnonzero(rng.random(n) < 0.2)))
        subset[name] = np.flatnonzero(rng.random(n) < 0.6) + 1
        if rng.random() < 0.2:
            continue  # no prediction file
        k = int(rng.integers(0, 7))
        src = np.hstack([xy, wh])[rng.integers(0, n, k)] if n else np.zeros((0, 4))
        jitter = rng.integers(-3, 4, src.shape) / 2
        boxes = np.vstack([src + jitter, np.hstack([rng.integers(0, 80, (2, 2)) / 2, rng.integers(0, 24, (2, 2)) / 2])])
        boxes[:, 2:] = np.abs(boxes[:, 2:])
        m = len(boxes)
        if score_mode == "unit":
            scores = rng.random(m)
        elif score_mode == "ties":
            scores = rng.integers(0, 4, m) / 3
        elif score_mode == "negative":
            scores = -rng.random(m) * 5
        else:
            scores = 1 + rng.random(m) * 5
        rows = np.hstack([boxes, scores[:, None]])
        rows[:, 2:4] += rows[:, :2]
        preds[name] = rows
    return records, preds, subset


@settings(max_examples=40, deadline=None)
@given(case=cases(), iou=st.sampled_from([0.5, 0.3, 0.7]))
def test_equals_the_literal_matlab_transcription(case, iou: float) -> None:
    """Identical AP (to 1e-12) and PR curves (NaN where the official code has NaN)."""
    records, preds, subset = case
    expected_ap, expected_p, expected_r = official(_files(preds), _gt(records), subset, iou)
    result = evaluate(preds, records, {"s": subset}, iou_threshold=iou)
    if math.isnan(expected_ap):
        assert math.isnan(result.ap["s"])
    else:
        assert result.ap["s"] == pytest.approx(expected_ap, abs=1e-12)
    np.testing.assert_allclose(result.pr["s"][0], expected_p, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(result.pr["s"][1], expected_r, atol=1e-12, equal_nan=True)


def test_a_zero_size_face_is_a_match_candidate_as_in_the_official_face_bbx_list(tmp_path: Path) -> None:
    """The official code matches against every box as written: under the +1 pixel convention a
    0 x 0 box is one pixel, a prediction on it recalls it. Read so (skip_degenerate=False), a
    listed zero-size face is found; a reader that skips it leaves it counted but unmatchable."""
    from examples.eagleeye.wider import read_annotations

    txt = tmp_path / "gt.txt"
    txt.write_text("e/a.jpg\n2\n10 10 0 0 0 0 0 0 0 0\n30 30 20 20 0 0 0 0 0 0\n")
    subsets = {"s": {"e/a.jpg": np.array([1, 2])}}
    preds = {"e/a.jpg": pred((10, 10, 0, 0, 0.9), (30, 30, 20, 20, 0.8))}
    every = read_annotations(txt, tmp_path, check_images=False, skip_degenerate=False)
    assert len(every[0].boxes) == 2
    assert evaluate(preds, every, subsets).ap["s"] == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="skipped 1 box"):
        fewer = read_annotations(txt, tmp_path, check_images=False)
    # Only the 20 x 20 face can be recalled, by the lower-scored prediction, after the top one
    # became a false positive: recall 0.5 at precision 0.5.
    assert evaluate(preds, fewer, subsets).ap["s"] == pytest.approx(0.25)
