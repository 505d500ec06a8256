"""WIDER FACE files (txt and .mat round trips, every bad-input case), SynthFaces
(determinism, disjoint crops, nested subsets) and box consistency of the augmentations."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from examples.eagleeye import synthfaces, wider
from examples.eagleeye.augment import FILL, EvalResize, TrainAugment, distort_colours

# ---------------------------------------------------------------------------
# A tiny WIDER data set written by the tests


def write_image(path: Path, hw: tuple[int, int], colour: tuple[int, int, int] = (90, 90, 90)) -> None:
    """A flat JPEG of the given (height, width)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (hw[1], hw[0]), colour).save(path, format="JPEG")


def tiny_records(root: Path, split: str = "val") -> list[wider.ImageRecord]:
    """Three images over two events, one without faces, one with an invalid face."""
    images = root / f"WIDER_{split}" / "images"
    spec = [
        ("0--Parade/0_Parade_a.jpg", (60, 80), [[10, 5, 20, 24], [40, 30, 12.5, 15]], [[0, 0, 0, 0, 0, 0], [2, 1, 0, 0, 1, 1]]),
        ("0--Parade/0_Parade_b.jpg", (50, 50), [], []),
        ("1--Handshaking/1_Hand_c.jpg", (40, 70), [[0, 0, 70, 40], [5, 5, 4, 4]], [[1, 0, 1, 0, 2, 0], [0, 0, 0, 1, 0, 0]]),
    ]
    records = []
    for name, hw, boxes, attrs in spec:
        write_image(images / name, hw)
        records.append(
            wider.ImageRecord(
                name=name,
                path=(images / name).absolute(),
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                attrs=np.asarray(attrs, np.int32).reshape(-1, 6),
                hw=hw,
            )
        )
    return records


def write_split(root: Path, split: str, records: list[wider.ImageRecord]) -> Path:
    """Annotation txt of a split in the WIDER layout; returns its path."""
    txt = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    wider.write_annotations(records, txt)
    return txt


def assert_same_records(got: list[wider.ImageRecord], expected: list[wider.ImageRecord]) -> None:
    """Names, paths, boxes, attributes and sizes agree."""
    assert [r.name for r in got] == [r.name for r in expected]
    for g, e in zip(got, expected):
        assert g.path == e.path and g.hw == e.hw
        np.testing.assert_array_equal(g.boxes, e.boxes)
        np.testing.assert_array_equal(g.attrs, e.attrs)
        assert g.boxes.dtype == np.float32 and g.attrs.dtype == np.int32


def test_txt_round_trip(tmp_path: Path) -> None:
    """write_annotations then read_annotations gives the records back; empty images get a zero line."""
    records = tiny_records(tmp_path)
    txt = write_split(tmp_path, "val", records)
    lines = txt.read_text().splitlines()
    assert lines[:5] == ["0--Parade/0_Parade_a.jpg", "2", "10 5 20 24 0 0 0 0 0 0", "40 30 12.5 15 2 1 0 0 1 1", "0--Parade/0_Parade_b.jpg"]
    assert lines[5:7] == ["0", "0 0 0 0 0 0 0 0 0 0"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = wider.read_annotations(txt, tmp_path / "WIDER_val" / "images")
    assert_same_records(back, records)
    assert back[1].boxes.shape == (0, 4) and back[1].attrs.shape == (0, 6)


def test_mat_round_trip_and_official_structure(tmp_path: Path) -> None:
    """write_subsets then read_subsets gives the subsets back, in the official cell layout."""
    records = tiny_records(tmp_path)
    subsets = {
        "easy": {"0--Parade/0_Parade_a.jpg": np.array([1]), "0--Parade/0_Parade_b.jpg": np.array([], np.int64)},
        "medium": {"0--Parade/0_Parade_a.jpg": np.array([1, 2])},
        "hard": {"0--Parade/0_Parade_a.jpg": np.array([1, 2]), "1--Handshaking/1_Hand_c.jpg": np.array([1])},
    }
    split_dir = tmp_path / "wider_face_split"
    wider.write_subsets(records, subsets, split_dir)
    back = wider.read_subsets(split_dir)
    assert set(back) == {"easy", "medium", "hard"}
    for subset, members in subsets.items():
        assert set(back[subset]) == {r.name for r in records}  # every image listed
        for r in records:
            np.testing.assert_array_equal(back[subset][r.name], members.get(r.name, np.zeros(0, np.int64)))
    hard = scipy.io.loadmat(split_dir / "wider_hard_val.mat")
    assert hard["event_list"].shape == (2, 1) and hard["event_list"][1, 0][0] == "1--Handshaking"
    assert hard["file_list"][0, 0].shape == (2, 1) and hard["file_list"][0, 0][1, 0][0] == "0_Parade_b"
    np.testing.assert_array_equal(hard["face_bbx_list"][0, 0][0, 0], records[0].boxes)
    assert hard["gt_list"][0, 0][0, 0].shape == (2, 1)
    val = scipy.io.loadmat(split_dir / "wider_face_val.mat")
    np.testing.assert_array_equal(val["occlusion_label_list"][1, 0][0, 0].ravel(), [2, 0])
    np.testing.assert_array_equal(val["invalid_label_list"][1, 0][0, 0].ravel(), [0, 1])
    # Equal content, equal bytes: no timestamp in the header.
    first = (split_dir / "wider_hard_val.mat").read_bytes()
    wider.write_subsets(records, subsets, split_dir)
    assert (split_dir / "wider_hard_val.mat").read_bytes() == first


def test_missing_image_names_the_file(tmp_path: Path) -> None:
    """A listed image that does not exist: WiderFormatError with its name and line."""
    records = tiny_records(tmp_path)
    txt = write_split(tmp_path, "val", records)
    records[2].path.unlink()
    with pytest.raises(wider.WiderFormatError, match=r"1_Hand_c\.jpg") as err:
        wider.read_annotations(txt, tmp_path / "WIDER_val" / "images")
    assert f"{txt}:8:" in str(err.value)


@pytest.mark.parametrize(
    ("lineno", "bad", "what"),
    [
        (4, "40 30 12 15 2 1 0", "10 numbers"),
        (4, "40 30 twelve 15 2 1 0 0 1 1", "10 numbers"),
        (4, "40 30 12 15 2 1 0 0 1 1.5", "10 numbers"),
        (2, "two", "face count"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, lineno: int, bad: str, what: str) -> None:
    """A broken line: the error carries 'path:line' and says what was expected."""
    txt = write_split(tmp_path, "val", tiny_records(tmp_path))
    lines = txt.read_text().splitlines()
    lines[lineno - 1] = bad
    txt.write_text("\n".join(lines) + "\n")
    with pytest.raises(wider.WiderFormatError, match=what) as err:
        wider.read_annotations(txt, tmp_path / "WIDER_val" / "images")
    assert f"{txt}:{lineno}:" in str(err.value) and repr(bad) in str(err.value)


def test_truncated_file_is_an_error(tmp_path: Path) -> None:
    """A file that ends inside an image's face list is reported with its line."""
    txt = write_split(tmp_path, "val", tiny_records(tmp_path))
    txt.write_text("\n".join(txt.read_text().splitlines()[:3]) + "\n")
    with pytest.raises(wider.WiderFormatError, match=r"ends after 1 of the 2 faces") as err:
        wider.read_annotations(txt, tmp_path / "WIDER_val" / "images")
    assert f"{txt}:4:" in str(err.value)


def test_every_box_is_kept_as_written_when_asked_as_the_official_evaluation_reads_them(tmp_path: Path) -> None:
    """skip_degenerate=False: zero-size and outside boxes stay, numbered 1..N, with no warning."""
    import warnings

    records = tiny_records(tmp_path)
    a = records[0]
    boxes = np.array([[10, 5, 20, 24], [3, 3, 0, 9], [85, 10, 5, 5], [1, 1, 4, 0]], np.float32)
    bad = wider.ImageRecord(name=a.name, path=a.path, boxes=boxes, attrs=np.zeros((4, 6), np.int32))
    txt = write_split(tmp_path, "val", [bad, *records[1:]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = wider.read_annotations(txt, tmp_path / "WIDER_val" / "images", skip_degenerate=False)
    np.testing.assert_array_equal(back[0].boxes, boxes)
    np.testing.assert_array_equal(back[0].ids(), [1, 2, 3, 4])
    dataset = wider.WiderFaceDataset(tmp_path, "val")  # the dataset keeps them for evaluation ...
    assert len(dataset.records[0].boxes) == 4
    _, targets = dataset.load(0)  # ... and trains on the ones with area inside the image
    assert len(targets) == 1


def test_bad_boxes_are_skipped_with_one_counted_warning(tmp_path: Path) -> None:
    """Zero-size and fully-outside boxes go, once-warned with their count; positions are kept."""
    records = tiny_records(tmp_path)
    a = records[0]
    bad = wider.ImageRecord(
        name=a.name,
        path=a.path,
        # 80x60 image: keep, zero width, outside right, keep (sticks out), zero height.
        boxes=np.array([[10, 5, 20, 24], [3, 3, 0, 9], [85, 10, 5, 5], [70, 50, 20, 20], [1, 1, 4, 0]], np.float32),
        attrs=np.zeros((5, 6), np.int32),
    )
    txt = write_split(tmp_path, "val", [bad, *records[1:]])
    with pytest.warns(wider.WiderFormatWarning, match=r"skipped 3 boxes") as caught:
        back = wider.read_annotations(txt, tmp_path / "WIDER_val" / "images")
    assert len(caught) == 1
    assert f"{txt}:4" in str(caught[0].message)
    np.testing.assert_array_equal(back[0].boxes, bad.boxes[[0, 3]])
    np.testing.assert_array_equal(back[0].ids(), [1, 4])
    np.testing.assert_array_equal(back[2].ids(), [1, 2])  # untouched images keep 1..N
    # Subsets written from such records point at the kept boxes.
    wider.write_subsets(back, {"easy": {a.name: np.array([4])}, "medium": {}, "hard": {a.name: np.array([1, 2, 4])}}, tmp_path / "s")
    sub = wider.read_subsets(tmp_path / "s")
    np.testing.assert_array_equal(sub["easy"][a.name], [2])
    np.testing.assert_array_equal(sub["hard"][a.name], [1, 2])


def test_not_wider_layout_says_what_is_missing(tmp_path: Path) -> None:
    """load_split on a wrong directory: WiderFormatError (a ValueError) naming the missing path."""
    with pytest.raises(wider.WiderFormatError, match="does not exist"):
        wider.load_split(tmp_path / "nowhere", "val")
    (tmp_path / "WIDER_val" / "images").mkdir(parents=True)
    with pytest.raises(wider.WiderFormatError, match=r"missing .*wider_face_val_bbx_gt\.txt") as err:
        wider.load_split(tmp_path, "val")
    assert isinstance(err.value, ValueError) and "expected layout" in str(err.value)
    with pytest.raises(wider.WiderFormatError, match=r"missing .*WIDER_train"):
        wider.load_split(tmp_path, "train")
    with pytest.raises(ValueError, match="train, val"):
        wider.load_split(tmp_path, "test")
    with pytest.raises(wider.WiderFormatError, match="wider_hard_val.mat"):
        wider.load_subsets(tmp_path)


def test_dataset_items_and_collate(tmp_path: Path) -> None:
    """Items are [3,H,W] floats in [0,1] with x1y1x2y2 boxes; invalid faces dropped on request."""
    records = tiny_records(tmp_path)
    write_split(tmp_path, "val", records)
    dataset = wider.WiderFaceDataset(tmp_path, "val")
    image, boxes, index = dataset[0]
    assert image.shape == (3, 60, 80) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    torch.testing.assert_close(boxes, torch.tensor([[10, 5, 30, 29], [40, 30, 52.5, 45]]))
    assert index == 0
    assert len(dataset[2][1]) == 1  # the invalid face is gone
    assert len(wider.WiderFaceDataset(tmp_path, "val", drop_invalid=False)[2][1]) == 2
    assert dataset[1][1].shape == (0, 4)
    with pytest.raises(ValueError, match="different sizes"):
        wider.collate([dataset[0], dataset[1]])
    resized = wider.WiderFaceDataset(tmp_path, "val", transform=EvalResize(64))
    images, box_list, indices = wider.collate([resized[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and indices == [0, 1, 2]
    torch.testing.assert_close(box_list[0], torch.tensor([[8, 4, 24, 23.2], [32, 24, 42, 36]]))


# ---------------------------------------------------------------------------
# SynthFaces


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


TINY = {"n_train": 4, "n_val": 3, "image_size": 96}


def test_synthfaces_is_deterministic(tmp_path: Path) -> None:
    """Same seed and parameters: identical bytes; another seed: different images."""
    a = tree_hashes(synthfaces.generate(tmp_path / "a", seed=3, **TINY))
    b = tree_hashes(synthfaces.generate(tmp_path / "b", seed=3, **TINY))
    c = tree_hashes(synthfaces.generate(tmp_path / "c", seed=4, **TINY))
    assert a == b
    assert len([k for k in a if k.endswith(".jpg")]) == 7
    jpg_a = {v for k, v in a.items() if k.endswith(".jpg")}
    jpg_c = {v for k, v in c.items() if k.endswith(".jpg")}
    assert not jpg_a & jpg_c


def test_crop_split_is_disjoint_and_covers_everything() -> None:
    """Val and train face crops never overlap, for any seed; distractors likewise."""
    for seed in range(5):
        split = synthfaces.crop_split(seed, 20)
        assert len(split["val_faces"]) == 20 and not set(split["val_faces"]) & set(split["train_faces"])
        assert sorted(split["val_faces"] + split["train_faces"]) == list(range(100))
        assert sorted(split["val_distractors"] + split["train_distractors"]) == list(range(100, 200))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SynthFaces set at the default image size."""
    return synthfaces.ensure(tmp_path_factory.mktemp("synth") / "set", n_train=12, n_val=16)


def test_val_faces_come_only_from_val_crops(synth_root: Path) -> None:
    """Every pasted face's crop, as recorded per image, belongs to its split's crops."""
    manifest = json.loads((synth_root / synthfaces.MANIFEST).read_text())
    crops = manifest["crops"]
    for split in ("train", "val"):
        used = {c for faces in manifest["provenance"][split].values() for c in faces}
        assert used and used <= set(crops[f"{split}_faces"])
        records = wider.load_split(synth_root, split)
        assert {r.name: len(r.boxes) for r in records} == {k: len(v) for k, v in manifest["provenance"][split].items()}
    assert not set(crops["val_faces"]) & set(crops["train_faces"])


def test_synthfaces_subsets_are_nested_and_valid(synth_root: Path) -> None:
    """easy within medium within hard; no invalid or <= 10 px face in any; hard holds most faces."""
    records = {r.name: r for r in wider.load_split(synth_root, "val")}
    subsets = wider.load_subsets(synth_root)
    assert set(subsets["hard"]) == set(records)
    totals = {s: sum(len(v) for v in subsets[s].values()) for s in subsets}
    assert 0 < totals["easy"] < totals["medium"] < totals["hard"]
    for name, r in records.items():
        easy, medium, hard = (set(subsets[s][name].tolist()) for s in ("easy", "medium", "hard"))
        assert easy <= medium <= hard
        for i in hard:
            assert r.attrs[i - 1, 3] == 0 and r.boxes[i - 1, 3] > 10
        for i in easy:
            assert r.attrs[i - 1, 4] == 0 and r.boxes[i - 1, 3] >= 40
    assert totals["hard"] >= 0.8 * sum(len(r.boxes) for r in records.values())


def test_synthfaces_annotations_are_plausible(synth_root: Path) -> None:
    """Boxes lie inside their images; labels are in range; invalid means tiny or heavily occluded."""
    for split in ("train", "val"):
        for r in wider.load_split(synth_root, split):
            h, w = r.hw
            assert max(h, w) == 320 and 1 <= len(r.boxes) <= 8
            x, y, bw, bh = r.boxes.T
            assert np.all((x >= 0) & (y >= 0) & (x + bw <= w) & (y + bh <= h))
            assert np.all(r.attrs[:, [0, 4]] <= 2) and np.all(r.attrs[:, [2, 3, 5]] <= 1) and np.all(r.attrs[:, 1] == 0)
            invalid = r.attrs[:, 3] == 1
            assert np.all((bh[invalid] < 8) | (r.attrs[invalid, 4] == 2))


def test_ensure_reuses_and_regenerates(synth_root: Path, tmp_path: Path) -> None:
    """ensure keeps a matching set, rebuilds on other parameters, and never clobbers foreign data."""
    manifest = synth_root / synthfaces.MANIFEST
    stamp = manifest.stat().st_mtime_ns
    assert synthfaces.ensure(synth_root, n_train=12, n_val=16) == synth_root
    assert manifest.stat().st_mtime_ns == stamp
    with pytest.raises(TypeError, match="n_images"):
        synthfaces.ensure(tmp_path / "x", n_images=3)
    other = synthfaces.ensure(tmp_path / "small", **TINY)
    assert json.loads((other / synthfaces.MANIFEST).read_text())["counts"]["val"]["images"] == 3
    synthfaces.ensure(other, **{**TINY, "n_val": 2})
    assert len(list((other / "WIDER_val" / "images").glob("*/*.jpg"))) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".small.") and p.is_dir()]  # no leftovers
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="will not overwrite"):
        synthfaces.ensure(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


# ---------------------------------------------------------------------------
# Augmentation: every transform keeps boxes on their pixels

# How far (in output pixels) a box edge may sit from its painted edge.
TOL = 0.5
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255], [0, 0, 0], [255, 255, 255]], np.uint8)


def painted_scene(rng: np.random.Generator, hw: tuple[int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with up to n non-overlapping solid boxes, box k in PALETTE[k]."""
    h, w = hw
    image = np.full((h, w, 3), 128, np.uint8)
    boxes: list[list[float]] = []
    for _ in range(50):
        if len(boxes) == n:
            break
        bw, bh = rng.integers(6, max(7, w // 3)), rng.integers(6, max(7, h // 3))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        box = [x, y, x + bw, y + bh]
        if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2 for b in boxes):
            continue
        image[y : y + bh, x : x + bw] = PALETTE[len(boxes)]
        boxes.append(box)
    return image, np.asarray(boxes, np.float32).reshape(-1, 4)


def assert_boxes_on_paint(image: np.ndarray, boxes: np.ndarray, tol: float) -> None:
    """Each box is filled with one palette colour, and that colour appears nowhere outside it.

    Resampling blends the pixels at a box edge, so the fill is checked ``1 + tol``
    pixels inside the box and the colour may appear up to ``tol`` pixels outside.
    """
    for box in boxes:
        x1, y1, x2, y2 = box
        shrink = 1 + tol
        r0, r1 = int(np.ceil(y1 + shrink)), int(np.floor(y2 - shrink))
        c0, c1 = int(np.ceil(x1 + shrink)), int(np.floor(x2 - shrink))
        if r1 <= r0 or c1 <= c0:  # a box too thin to have an inside (a negative stop would wrap around)
            continue
        inner = image[r0:r1, c0:c1]
        colours = inner.reshape(-1, 3).astype(int)
        distance = np.abs(colours[:, None, :] - PALETTE[None].astype(int)).sum(axis=2)
        k = np.bincount(distance.argmin(axis=1), minlength=len(PALETTE)).argmax()
        assert np.mean(distance[:, k] <= 40) >= 0.95, f"box {box} is not filled by one colour"
        same = np.abs(image.astype(int) - PALETTE[k].astype(int)).sum(axis=2) <= 40
        ys, xs = np.nonzero(same)
        assert np.all((xs + 0.5 >= x1 - tol) & (xs + 0.5 <= x2 + tol) & (ys + 0.5 >= y1 - tol) & (ys + 0.5 <= y2 + tol)), (
            f"colour {PALETTE[k]} of box {box} found outside it"
        )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), hw=st.tuples(st.integers(60, 200), st.integers(60, 200)))
def test_train_augment_keeps_boxes_on_their_pixels(seed: int, hw: tuple[int, int]) -> None:
    """Expand, crop, resize and flip move boxes exactly as they move the painted pixels."""
    rng = np.random.default_rng(seed)
    image, boxes = painted_scene(rng, hw, 6)
    aug = TrainAugment(64, seed=seed, distort=False, min_size=2.0)
    out, out_boxes = aug(image, boxes)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out_boxes.dtype == np.float32 and out_boxes.shape[1] == 4
    assert np.all(out_boxes >= 0) and np.all(out_boxes <= 64)
    assert np.all(out_boxes[:, 2:] - out_boxes[:, :2] >= 2.0)
    assert_boxes_on_paint(out, out_boxes, tol=TOL)


def test_train_augment_covers_every_step() -> None:
    """Over many draws the augmentation expands, crops away faces, flips, and mostly keeps faces."""
    rng = np.random.default_rng(0)
    image, boxes = painted_scene(rng, (120, 160), 4)
    # Box 0: red left half, orange right half, so a flip shows as orange left of red.
    x1, y1, x2, y2 = boxes[0].astype(int)
    image[y1:y2, (x1 + x2) // 2 : x2] = (255, 128, 0)
    aug = TrainAugment(64, seed=1, distort=False)
    fills = crops = flips = kept = 0
    for _ in range(60):
        out, out_boxes = aug(image, boxes)
        fills += bool(np.any(np.all(out == FILL, axis=2)))
        crops += len(out_boxes) < len(boxes)
        kept += len(out_boxes) > 0
        red = np.nonzero(np.all(out == (255, 0, 0), axis=2))[1]
        orange = np.nonzero(np.all(np.abs(out.astype(int) - (255, 128, 0)) <= 10, axis=2))[1]
        if len(red) and len(orange):
            flips += orange.mean() < red.mean()
    assert fills >= 10 and crops >= 10 and flips >= 10 and kept >= 45, (fills, crops, flips, kept)


def test_distortion_is_pointwise_and_changes_colours() -> None:
    """Colour distortion maps equal pixels to equal pixels (no spatial effect) and does something."""
    rng = np.random.default_rng(0)
    image, _ = painted_scene(rng, (80, 80), 6)
    changed = 0
    for seed in range(20):
        out = distort_colours(image, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        for colour in np.unique(image.reshape(-1, 3), axis=0):
            mask = np.all(image == colour, axis=2)
            assert len(np.unique(out[mask], axis=0)) == 1
        changed += not np.array_equal(out, image)
    assert changed >= 15


def test_train_augment_with_distortion_keeps_shapes_and_seed() -> None:
    """Full augmentation: same seed, same output; boxes stay inside the image."""
    rng = np.random.default_rng(2)
    image, boxes = painted_scene(rng, (100, 140), 5)
    first = [TrainAugment(96, seed=7)(image, boxes) for _ in range(2)]
    np.testing.assert_array_equal(first[0][0], first[1][0])
    np.testing.assert_array_equal(first[0][1], first[1][1])
    assert first[0][0].shape == (96, 96, 3)
    assert np.all(first[0][1] >= 0) and np.all(first[0][1] <= 96)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), hw=st.tuples(st.integers(40, 300), st.integers(40, 300)), size=st.sampled_from([64, 100, 128]))
def test_eval_resize_is_consistent_and_invertible(seed: int, hw: tuple[int, int], size: int) -> None:
    """Letterboxed boxes sit on their pixels, the pad is the fill colour, and invert maps back."""
    rng = np.random.default_rng(seed)
    image, boxes = painted_scene(rng, hw, 5)
    resize = EvalResize(size)
    out, out_boxes = resize(image, boxes)
    assert out.shape == (size, size, 3)
    assert_boxes_on_paint(out, out_boxes, tol=TOL)
    np.testing.assert_allclose(resize.invert(out_boxes, hw), boxes, atol=1e-3)
    scored = np.hstack([out_boxes, np.full((len(out_boxes), 1), 0.7, np.float32)])
    np.testing.assert_allclose(resize.invert(scored, hw)[:, 4], 0.7)
    # The letterbox pads right or bottom only.
    h, w = hw
    s = size / max(h, w)
    if round(w * s) < size - 1:
        assert np.all(out[:, -1] == FILL)
    if round(h * s) < size - 1:
        assert np.all(out[-1] == FILL)


def test_images_without_boxes_pass_through() -> None:
    """No faces: both transforms return an empty [0, 4] array and invert keeps [0, 5] empty."""
    image = np.full((50, 70, 3), 128, np.uint8)
    out, boxes = TrainAugment(32, seed=0)(image, np.zeros((0, 4), np.float32))
    assert out.shape == (32, 32, 3) and boxes.shape == (0, 4)
    resize = EvalResize(32)
    out, boxes = resize(image, np.zeros((0, 4), np.float32))
    assert out.shape == (32, 32, 3) and boxes.shape == (0, 4)
    assert resize.invert(np.zeros((0, 5), np.float32), (50, 70)).shape == (0, 5)


def test_augmented_split_draws_the_same_items_with_any_number_of_workers(synth_root: Path) -> None:
    """AugmentedSplit's items depend on (seed, epoch, index) only: loading them in 0 or 2
    DataLoader workers gives identical images and boxes (a worker-seeded TrainAugment made
    the pipeline's run depend on its worker count), and another epoch draws differently."""
    from examples.eagleeye.train import AugmentedSplit
    from examples.eagleeye.wider import WiderFaceDataset, collate

    split = AugmentedSplit(WiderFaceDataset(synth_root, "train"), 96, seed=3)

    def items(workers: int, epoch: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        split.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(split, batch_size=4, num_workers=workers, collate_fn=collate)
        return [(images, list(boxes)) for images, boxes, _ in loader]

    inline, workers = items(0, 1), items(2, 1)
    assert len(inline) == len(workers) == 3
    for (a, boxes_a), (b, boxes_b) in zip(inline, workers):
        assert torch.equal(a, b)
        assert all(torch.equal(x, y) for x, y in zip(boxes_a, boxes_b, strict=True))
    assert not torch.equal(items(0, 2)[0][0], inline[0][0])
