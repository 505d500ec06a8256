"""The WIDER FACE evaluation protocol: hand-computed APs on tiny cases, speed, and the
submission format. tests/test_evaluate_official.py holds the cases specific to the
official code and the property test against a literal transcription of it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from examples.eagleeye.evaluate import THRESHOLDS, evaluate, read_submission, voc_ap, write_submission
from examples.eagleeye.wider import ImageRecord


def record(name: str, boxes_xywh: list[list[float]], invalid: list[int] | None = None, face_ids: list[int] | None = None) -> ImageRecord:
    """An annotation-only record (no image file needed by the evaluator)."""
    attrs = np.zeros((len(boxes_xywh), 6), np.int32)
    if invalid:
        attrs[invalid, 3] = 1
    return ImageRecord(
        name=name,
        path=Path("/nonexistent") / name,
        boxes=np.asarray(boxes_xywh, np.float32).reshape(-1, 4),
        attrs=attrs,
        face_ids=None if face_ids is None else np.asarray(face_ids, np.int64),
    )


def pred(*rows: tuple[float, float, float, float, float]) -> np.ndarray:
    """Predictions from x, y, w, h, score rows (converted to x1, y1, x2, y2, score)."""
    out = np.asarray(rows, np.float64).reshape(-1, 5)
    out[:, 2:4] += out[:, :2]
    return out


def everything(records: list[ImageRecord]) -> dict[str, dict[str, np.ndarray]]:
    """A single subset holding every face."""
    return {"all": {r.name: np.arange(1, len(r.boxes) + 1) for r in records}}


def test_voc_ap_by_hand() -> None:
    """Two recall steps of 0.5 at envelope precisions 1 and 2/3: AP = 5/6."""
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)


def test_perfect_detector_scores_one() -> None:
    """Every face found once, nothing else: AP 1 and precision 1 wherever anything is predicted."""
    records = [record("0--A/a.jpg", [[0, 0, 10, 10], [30, 30, 20, 25]]), record("0--A/b.jpg", [[5, 5, 40, 40]])]
    preds = {"0--A/a.jpg": pred((0, 0, 10, 10, 0.9), (30, 30, 20, 25, 0.3)), "0--A/b.jpg": pred((5, 5, 40, 40, 0.6))}
    result = evaluate(preds, records, everything(records))
    assert result.ap["all"] == pytest.approx(1.0)
    precision, recall = result.pr["all"]
    assert precision.shape == recall.shape == (1000,)
    assert recall[-1] == pytest.approx(1.0)
    assert np.all(precision[recall > 0] == 1.0)


def test_duplicate_becomes_false_positive() -> None:
    """Faces A, B; predictions A (1.0), A again (0.6), B (0.2).

    Normalised scores 1, 0.5, 0. Points (recall, precision): (0.5, 1) above 0.5,
    (0.5, 0.5) from 0.5 down, (1, 2/3) at 0. Envelope 1 then 2/3:
    AP = 0.5 * 1 + 0.5 * 2/3 = 5/6. Were the duplicate not a false positive, AP would be 1.
    """
    records = [record("0--A/a.jpg", [[0, 0, 10, 10], [20, 0, 10, 10]])]
    preds = {"0--A/a.jpg": pred((0, 0, 10, 10, 1.0), (0, 0, 10, 10, 0.6), (20, 0, 10, 10, 0.2))}
    result = evaluate(preds, records, everything(records))
    assert result.ap["all"] == pytest.approx(5 / 6)
    precision, recall = result.pr["all"]
    assert precision[-1] == pytest.approx(2 / 3) and recall[-1] == pytest.approx(1.0)


def test_detection_of_face_outside_subset_is_ignored() -> None:
    """Face A in the subset, face B not. Predictions: B (1.0), A (0.5), far away (0.0).

    The B hit is ignored, so at t <= 0.5 precision is 1/1 with recall 1: AP = 1.
    Were it a false positive, precision there would be 1/2 and AP 0.5.
    """
    records = [record("0--A/a.jpg", [[0, 0, 20, 20], [50, 50, 8, 8]])]
    preds = {"0--A/a.jpg": pred((50, 50, 8, 8, 1.0), (0, 0, 20, 20, 0.5), (200, 200, 10, 10, 0.0))}
    result = evaluate(preds, records, {"easy": {"0--A/a.jpg": np.array([1])}})
    assert result.ap["easy"] == pytest.approx(1.0)
    precision, recall = result.pr["easy"]
    assert precision[-1] == pytest.approx(0.5)  # the far-away box is still a false positive
    # The same high-scoring box away from any face is a false positive: AP 0.5.
    moved = {"0--A/a.jpg": pred((120, 120, 8, 8, 1.0), (0, 0, 20, 20, 0.5), (200, 200, 10, 10, 0.0))}
    assert evaluate(moved, records, {"easy": {"0--A/a.jpg": np.array([1])}}).ap["easy"] == pytest.approx(0.5)


def test_invalid_face_counts_when_listed() -> None:
    """As officially, the invalid flag is not looked at: a listed invalid face is a face to find."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20], [50, 50, 20, 20]], invalid=[1])]
    preds = {"0--A/a.jpg": pred((50, 50, 20, 20, 1.0), (200, 200, 20, 20, 0.5))}
    result = evaluate(preds, records, {"s": {"0--A/a.jpg": np.array([1, 2])}})
    assert result.ap["s"] == pytest.approx(0.5)
    assert result.pr["s"][1][-1] == pytest.approx(0.5)  # recall 1 of 2 listed faces


def test_image_without_predictions_counts_its_faces() -> None:
    """Face A found (and a miss scored lower), face B (other image) never predicted:
    recall tops out at 0.5, AP 0.5."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]]), record("0--A/b.jpg", [[0, 0, 20, 20]])]
    preds = {"0--A/a.jpg": pred((0, 0, 20, 20, 0.7), (90, 90, 20, 20, 0.1))}
    result = evaluate(preds, records, everything(records))
    assert result.ap["all"] == pytest.approx(0.5)
    assert np.nanmax(result.pr["all"][1]) == pytest.approx(0.5)


def test_predictions_on_image_without_faces_are_not_evaluated() -> None:
    """As in the official code, an image with no ground truth contributes nothing at all."""
    records = [record("0--A/a.jpg", [[0, 0, 20, 20]]), record("0--A/empty.jpg", [])]
    # A lone prediction normalises to 0/0 = NaN (officially), so a: hit 0.5 and miss 0.1.
    base = {"0--A/a.jpg": pred((0, 0, 20, 20, 0.5), (90, 90, 20, 20, 0.1))}
    with_empty = {**base, "0--A/empty.jpg": pred((0, 0, 20, 20, 0.5), (40, 40, 9, 9, 0.1))}
    subsets = everything(records)
    assert evaluate(base, records, subsets).ap["all"] == pytest.approx(1.0)
    assert evaluate(with_empty, records, subsets).ap["all"] == pytest.approx(1.0)
    assert evaluate({}, records, subsets).ap["all"] == 0.0


def test_hand_computed_mixed_case() -> None:
    """Image 1: faces A (0,0,10,10), B (20,0,10,10); image 2: face C (0,0,10,10).

    Predictions, raw score -> normalised: A exact 0.9 -> 1; a box on no face 0.8 ->
    0.75; C exact 0.7 -> 0.5; B shifted by 5 px (IoU 66/176, a false positive) 0.6 ->
    0.25; B exact 0.5 -> 0. Cumulative (TP, predictions): (1,1) (1,2) (2,3) (2,4)
    (3,5), so (recall, precision) = (1/3, 1) (1/3, 1/2) (2/3, 2/3) (2/3, 1/2) (1, 3/5).
    Envelope at recall 1/3, 2/3, 1: 1, 2/3, 3/5. AP = (1 + 2/3 + 3/5) / 3 = 34/45.
    """
    records = [record("0--A/1.jpg", [[0, 0, 10, 10], [20, 0, 10, 10]]), record("0--A/2.jpg", [[0, 0, 10, 10]])]
    preds = {
        "0--A/1.jpg": pred((0, 0, 10, 10, 0.9), (50, 50, 10, 10, 0.8), (25, 0, 10, 10, 0.6), (20, 0, 10, 10, 0.5)),
        "0--A/2.jpg": pred((0, 0, 10, 10, 0.7)),
    }
    result = evaluate(preds, records, everything(records))
    assert result.ap["all"] == pytest.approx(34 / 45)


def test_low_iou_is_false_positive_and_threshold_is_a_parameter() -> None:
    """A box shifted by half its width (IoU 66/176 = 0.375 in pixels) misses at the default
    0.5 and hits at 0.3 (a far box scored lower makes the scores normalisable)."""
    records = [record("0--A/a.jpg", [[20, 0, 10, 10]])]
    preds = {"0--A/a.jpg": pred((25, 0, 10, 10, 0.5), (90, 90, 10, 10, 0.1))}
    assert evaluate(preds, records, everything(records)).ap["all"] == 0.0
    assert evaluate(preds, records, everything(records), iou_threshold=0.3).ap["all"] == pytest.approx(1.0)


def test_subset_indices_follow_annotation_numbering_with_skipped_boxes() -> None:
    """With box 2 skipped on reading, subset index 3 refers to the second kept box."""
    records = [record("0--A/a.jpg", [[0, 0, 10, 10], [40, 40, 10, 10]], face_ids=[1, 3])]
    preds = {"0--A/a.jpg": pred((40, 40, 10, 10, 1.0), (0, 0, 10, 10, 0.0))}
    result = evaluate(preds, records, {"s": {"0--A/a.jpg": np.array([3])}})
    # The top box hits face 3 (recall 1 at precision 1); the face-1 hit is ignored.
    assert result.ap["s"] == pytest.approx(1.0)
    assert result.pr["s"][0][-1] == pytest.approx(1.0)


def test_unknown_image_and_bad_shape_are_rejected() -> None:
    """Predictions must name known images and have 5 columns."""
    records = [record("0--A/a.jpg", [[0, 0, 10, 10]])]
    with pytest.raises(ValueError, match="0--A/typo.jpg"):
        evaluate({"0--A/typo.jpg": pred((0, 0, 1, 1, 1))}, records, everything(records))
    with pytest.raises(ValueError, match=r"\[K, 5\]"):
        evaluate({"0--A/a.jpg": np.zeros((2, 4))}, records, everything(records))


def test_thresholds_are_the_official_ones() -> None:
    """1000 thresholds from 0.999 down to exactly 0."""
    assert len(THRESHOLDS) == 1000 and THRESHOLDS[0] == pytest.approx(0.999) and THRESHOLDS[-1] == 0.0


def test_300_images_of_1000_predictions_take_well_under_a_second() -> None:
    """Vectorised matching: 300 images x 1000 predictions, three subsets."""
    rng = np.random.default_rng(0)
    records, preds = [], {}
    for i in range(300):
        n = 8
        xy = rng.uniform(0, 300, (n, 2))
        records.append(record(f"0--A/{i}.jpg", np.hstack([xy, rng.uniform(8, 60, (n, 2))]).tolist()))
        xy = rng.uniform(0, 300, (1000, 2))
        preds[f"0--A/{i}.jpg"] = np.hstack([xy, xy + rng.uniform(8, 60, (1000, 2)), rng.random((1000, 1))])
    subsets = {s: {r.name: np.arange(1, 9)[: 3 + k * 2] for r in records} for k, s in enumerate(("easy", "medium", "hard"))}
    start = time.perf_counter()
    result = evaluate(preds, records, subsets)
    elapsed = time.perf_counter() - start
    assert set(result.ap) == {"easy", "medium", "hard"}
    assert elapsed < 1.0, f"evaluation took {elapsed:.2f} s"


def test_submission_round_trip_and_format(tmp_path: Path) -> None:
    """write_submission writes <event>/<stem>.txt with name, count, 'x y w h score'; read_submission inverts it."""
    preds = {
        "0--Parade/0_Parade_1.jpg": pred((10, 20, 30, 40, 0.9), (1.5, 2.25, 3, 4, 0.125)),
        "1--Handshaking/1_Hand_2.jpg": np.zeros((0, 5)),
    }
    write_submission(preds, tmp_path)
    lines = (tmp_path / "0--Parade" / "0_Parade_1.txt").read_text().splitlines()
    assert lines[0] == "0_Parade_1" and lines[1] == "2"
    assert [float(v) for v in lines[2].split()] == [10, 20, 30, 40, 0.9]
    assert (tmp_path / "1--Handshaking" / "1_Hand_2.txt").read_text().splitlines() == ["1_Hand_2", "0"]
    back = read_submission(tmp_path)
    assert set(back) == set(preds)
    np.testing.assert_allclose(back["0--Parade/0_Parade_1.jpg"], preds["0--Parade/0_Parade_1.jpg"], atol=0.01)
    assert back["1--Handshaking/1_Hand_2.jpg"].shape == (0, 5)
