"""SynthFaces: a small WIDER-FACE-layout data set generated offline, the example's default.

Faces are the 100 real face crops of ``skimage.data.lfw_subset()`` (25x25 grey,
shipped inside the scikit-image wheel); its 100 non-face crops are pasted the same way
as unannotated distractors, so neither the soft elliptical paste mask nor the skin tint
tells a face from a distractor. Each object is scaled (box height log-normal around a
per-image scale, 6-200 px), squeezed (width/height 0.75-0.95), mirrored, rotated
(in-plane, sd 10°), re-lit, tinted, sometimes blurred and sometimes occluded by a band,
then composited onto a procedural background (colour gradient, value-noise texture,
random shapes, grain). Val uses ``val_crops`` face crops (and as many distractor
crops) that train never sees.

Attributes are written from what was applied:

- blur: 0 none, 1 Gaussian sigma 2.5-5% of the face height, 2 sigma 6-10%;
- expression: always 0 (nothing is known about it);
- illumination: 1 when the brightness gain is below 0.5 or above 1.8;
- occlusion: fraction of the face box covered, 0 none, 1 up to 30%, 2 more;
- invalid: 1 when the face is under 8 px tall or over 65% covered;
- pose: 1 when rotated more than 20°.

Subsets (nested, valid faces only, like the official ones): hard = taller than 10 px;
medium = hard and at least 20 px and occlusion <= 1; easy = medium and at least 40 px,
unoccluded and blur <= 1.

Same seed and parameters give byte-identical files: every image draws from its own
generator seeded by (seed, split, index), and JPEG, .mat and json writers are
deterministic.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage.data import lfw_subset

from . import wider

# Bump whenever the same parameters would produce different files.
VERSION = 2
MANIFEST = "synthfaces.json"
EVENTS = ("0--Single", "1--Couple", "2--Group", "3--Crowd")

_SPLIT_CODES = {"train": 1, "val": 2}
_MEDIAN_FACE = 36.0  # px at the default 320 px image size; scales with image_size
_SCALE_SD_IMAGE = 0.45  # log-sd of the per-image face scale
_SCALE_SD_FACE = 0.35  # log-sd of faces around it
_MIN_FACE, _MAX_FACE = 6.0, 200.0
_DISTRACTORS = (0, 4)  # inclusive range per image
_OCCLUDED_P = 0.3
_BLUR_SIGMA = {1: (0.025, 0.05), 2: (0.06, 0.1)}  # Gaussian sigma / face height, by blur label
_PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class SynthParams:
    """Everything that decides the generated files (recorded in the manifest).

    Attributes:
        seed: master seed.
        n_train, n_val: images per split.
        image_size: long side of every image in px (the short side is 0.6-1.0 of it).
        max_faces: faces per image are drawn from 1..max_faces (fewer when they do not fit).
        val_crops: LFW face crops reserved for val (train uses the other 100 - val_crops).
        quality: JPEG quality.
    """

    seed: int = 0
    n_train: int = 1200
    n_val: int = 250
    image_size: int = 320
    max_faces: int = 8
    val_crops: int = 20
    quality: int = 90

    def __post_init__(self) -> None:
        checks = {
            "n_train": self.n_train >= 1,
            "n_val": self.n_val >= 1,
            "image_size": self.image_size >= 64,
            "max_faces": self.max_faces >= 1,
            "val_crops": 1 <= self.val_crops <= 99,
            "quality": 1 <= self.quality <= 100,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid SynthFaces parameter(s) {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}: "
                "need n_train, n_val, max_faces >= 1, image_size >= 64, 1 <= val_crops <= 99, 1 <= quality <= 100"
            )


@dataclass(frozen=True)
class _Face:
    """One pasted and annotated face."""

    box: tuple[int, int, int, int]  # x1, y1, w, h
    attrs: tuple[int, int, int, int, int, int]
    crop: int


def crop_split(seed: int, val_crops: int) -> dict[str, list[int]]:
    """Disjoint LFW crop indices for each split: faces 0-99, distractors 100-199."""
    rng = np.random.default_rng([seed, 0xC0])
    faces = rng.permutation(100)
    distractors = 100 + rng.permutation(100)
    return {
        "train_faces": sorted(int(i) for i in faces[val_crops:]),
        "val_faces": sorted(int(i) for i in faces[:val_crops]),
        "train_distractors": sorted(int(i) for i in distractors[val_crops:]),
        "val_distractors": sorted(int(i) for i in distractors[:val_crops]),
    }


# ---------------------------------------------------------------------------
# Rendering


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cluttered float32 RGB background in [0, 255]: gradient, texture, shapes, grain."""
    yy, xx = np.ogrid[0:h, 0:w]
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle)).astype(np.float32)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    image = c0 + (c1 - c0) * t[..., None]
    amplitude = rng.uniform(10, 45)
    for octave, cell in enumerate((64, 24, 8)):
        # Mostly luminance with a little colour, like natural texture.
        shape = (h // cell + 2, w // cell + 2)
        grid = (rng.normal(0, 1, (*shape, 1)) + 0.4 * rng.normal(0, 1, (*shape, 3))).astype(np.float32)
        image += amplitude / (octave + 1) * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(4, 20))):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = int(rng.integers(5))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.uniform(0.02, 0.25) * max(h, w))
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 6))
        if kind == 0:
            cv2.rectangle(image, (x - r, y - r // 2), (x + r, y + r), colour, thick)
        elif kind == 1:
            axes = (r, max(1, int(r * rng.uniform(0.3, 1.0))))
            cv2.ellipse(image, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, thick, cv2.LINE_AA)
        elif kind == 2:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(image, (x, y), (x2, y2), colour, int(rng.integers(1, 8)), cv2.LINE_AA)
        elif kind == 3:
            pts = (np.array([x, y]) + rng.integers(-r, r + 1, (3, 2))).astype(np.int32)
            cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)
        else:
            # Stripes: a texture that no crop contains.
            period = int(rng.integers(3, 12))
            y0, y1, x0, x1 = max(0, y - r), min(h, y + r), max(0, x - r), min(w, x + r)
            image[y0:y1:period * 2, x0:x1] = colour
    image += rng.normal(0, rng.uniform(1, 6), image.shape).astype(np.float32)
    return image


def _tint(rng: np.random.Generator) -> np.ndarray:
    """An RGB multiplier: mostly skin-like, sometimes neutral grey."""
    if rng.random() < 0.15:
        return np.ones(3, np.float32)
    return np.array([1.0, rng.uniform(0.72, 0.9), rng.uniform(0.55, 0.8)], np.float32)


def _half_extents(a: float, b: float, angle: float) -> tuple[float, float]:
    """Half width and half height of the bounding box of an ellipse rotated by ``angle``."""
    c, s = math.cos(angle), math.sin(angle)
    return math.sqrt((a * c) ** 2 + (b * s) ** 2), math.sqrt((a * s) ** 2 + (b * c) ** 2)


def _paste(
    canvas: np.ndarray,
    crop: np.ndarray,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    tint: np.ndarray,
    gain: float,
    contrast: float,
    sigma: float,
    mirror: bool,
) -> None:
    """Composite one 25x25 grey crop into ``canvas`` (in place) through a soft ellipse."""
    h, w = canvas.shape[:2]
    a, b = axes
    cx, cy = centre
    margin = 2 + 3 * sigma + max(1.0, 0.06 * b)
    hx, hy = _half_extents(a, b, angle)
    x0, x1 = max(0, int(cx - hx - margin)), min(w, int(math.ceil(cx + hx + margin)))
    y0, y1 = max(0, int(cy - hy - margin)), min(h, int(math.ceil(cy + hy + margin)))
    src = crop[:, ::-1] if mirror else crop
    n = src.shape[0]
    if 2 * b < n:
        # Pre-filter before shrinking so the bilinear warp does not alias.
        src = cv2.GaussianBlur(src, (0, 0), 0.4 * n / (2 * b))
    # Affine map from crop pixel centres to region pixel centres.
    c, s = math.cos(angle), math.sin(angle)
    scale = np.array([[2 * a / n, 0.0], [0.0, 2 * b / n]])
    rot = np.array([[c, -s], [s, c]])
    lin = rot @ scale
    offset = np.array([cx - x0 - 0.5, cy - y0 - 0.5]) + lin @ np.array([0.5 - n / 2, 0.5 - n / 2])
    matrix = np.hstack([lin, offset[:, None]]).astype(np.float64)
    grey = cv2.warpAffine(
        src.astype(np.float32), matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    mean = float(src.mean())
    grey = ((grey - mean) * contrast + mean) * gain
    rgb = grey[..., None] * tint * 255.0
    # Soft ellipse: alpha 0.5 on the ellipse itself, ramping over a few pixels.
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    u, v = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
    r = np.sqrt(u * u + v * v)
    feather = max(1.0, 0.06 * b)
    alpha = ((1.0 - r) * min(a, b) / feather + 0.5).clip(0, 1)
    if sigma > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    region = canvas[y0:y1, x0:x1]
    region += alpha[..., None] * (rgb - region)


def _occlude(
    canvas: np.ndarray,
    rng: np.random.Generator,
    box: tuple[int, int, int, int],
    fraction: float,
    texture: np.ndarray,
) -> float:
    """Cover ``fraction`` of the box with a band from one side; returns the covered fraction."""
    x, y, w, h = box
    side = int(rng.integers(4))
    if side < 2:
        depth = max(1, round(fraction * h))
        y0 = y if side == 0 else y + h - depth
        rect = (x, y0, w, depth)
    else:
        depth = max(1, round(fraction * w))
        x0 = x if side == 2 else x + w - depth
        rect = (x0, y, depth, h)
    rx, ry, rw, rh = rect
    if rng.random() < 0.5:
        fill = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (rh, rw, 3))
    else:
        patch = cv2.resize(texture.astype(np.float32), (rw, rh), interpolation=cv2.INTER_LINEAR)
        fill = patch[..., None] * rng.uniform(100, 255, 3).astype(np.float32)
    canvas[ry : ry + rh, rx : rx + rw] = fill
    return (rw * rh) / (w * h)


def _overlaps(box: tuple[float, float, float, float], placed: list[tuple[float, float, float, float]]) -> bool:
    """Whether an x1y1x2y2 box intersects any placed one."""
    return any(box[0] < p[2] and p[0] < box[2] and box[1] < p[3] and p[1] < box[3] for p in placed)


def render_image(
    rng: np.random.Generator,
    hw: tuple[int, int],
    crops: np.ndarray,
    face_ids: list[int],
    distractor_ids: list[int],
    max_faces: int,
    median_face: float,
) -> tuple[np.ndarray, list[_Face]]:
    """One SynthFaces image (uint8 RGB) and its faces, drawn from ``rng``."""
    h, w = hw
    canvas = _background(rng, h, w)
    log_scale = math.log(median_face) + rng.normal(0, _SCALE_SD_IMAGE)
    largest = min(_MAX_FACE, 0.8 * min(h, w))
    n_faces = int(rng.integers(1, max_faces + 1))
    n_distractors = int(rng.integers(_DISTRACTORS[0], _DISTRACTORS[1] + 1))
    heights = np.exp(log_scale + rng.normal(0, _SCALE_SD_FACE, n_faces + n_distractors)).clip(_MIN_FACE, largest)
    objects = sorted(heights[:n_faces], reverse=True) + list(heights[n_faces:])
    placed: list[tuple[float, float, float, float]] = []
    faces: list[_Face] = []
    for k, height in enumerate(objects):
        is_face = k < n_faces
        b = float(height) / 2
        a = b * rng.uniform(0.75, 0.95)
        angle = float(np.clip(rng.normal(0, math.radians(10)), -math.radians(30), math.radians(30)))
        hx, hy = _half_extents(a, b, angle)
        bw, bh = max(1, round(2 * hx)), max(1, round(2 * hy))
        if bw > w or bh > h:
            continue
        margin = 0.1 * max(bw, bh) + 1
        for _ in range(_PLACEMENT_TRIES):
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            if not _overlaps((x - margin, y - margin, x + bw + margin, y + bh + margin), placed):
                break
        else:
            continue
        placed.append((x, y, x + bw, y + bh))
        crop_id = int(rng.choice(face_ids if is_face else distractor_ids))
        gain = float(math.exp(rng.normal(0, 0.35)))
        blur = int(rng.choice(3, p=(0.6, 0.28, 0.12)))
        sigma = 0.0 if blur == 0 else rng.uniform(*_BLUR_SIGMA[blur]) * bh
        _paste(
            canvas,
            crops[crop_id],
            centre=(x + bw / 2, y + bh / 2),
            axes=(a, b),
            angle=angle,
            tint=_tint(rng),
            gain=gain,
            contrast=float(math.exp(rng.normal(0, 0.25))),
            sigma=float(sigma),
            mirror=bool(rng.random() < 0.5),
        )
        if not is_face:
            continue
        covered = 0.0
        if rng.random() < _OCCLUDED_P:
            texture = crops[int(rng.choice(distractor_ids))]
            covered = _occlude(canvas, rng, (x, y, bw, bh), float(rng.uniform(0.1, 0.7)), texture)
        occlusion = 0 if covered == 0 else (1 if covered <= 0.3 else 2)
        attrs = (
            blur,
            0,
            int(gain < 0.5 or gain > 1.8),
            int(bh < 8 or covered > 0.65),
            occlusion,
            int(abs(angle) > math.radians(20)),
        )
        faces.append(_Face(box=(x, y, bw, bh), attrs=attrs, crop=crop_id))
    return canvas.clip(0, 255).round().astype(np.uint8), faces


def subset_masks(record: wider.ImageRecord) -> dict[str, np.ndarray]:
    """SynthFaces' easy/medium/hard membership of each face of a record (nested)."""
    height = record.boxes[:, 3]
    blur, occlusion = record.attrs[:, 0], record.attrs[:, 4]
    hard = record.valid() & (height > 10)
    medium = hard & (height >= 20) & (occlusion <= 1)
    easy = medium & (height >= 40) & (occlusion == 0) & (blur <= 1)
    return {"easy": easy, "medium": medium, "hard": hard}


def _event(n_faces: int) -> str:
    """Event directory by crowd size."""
    return EVENTS[0 if n_faces <= 1 else 1 if n_faces == 2 else 2 if n_faces <= 5 else 3]


def _image_hw(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """Variable aspect like WIDER: mostly landscape, short side 0.6-1.0 of the long one."""
    short = int(round(size * rng.uniform(0.6, 1.0)))
    return (short, size) if rng.random() < 0.75 else (size, short)


def _render_split(
    out: Path,
    params: SynthParams,
    split: str,
    crops: np.ndarray,
    split_crops: dict[str, list[int]],
) -> tuple[list[wider.ImageRecord], dict[str, list[int]]]:
    """Write one split's images; returns its records and the crop of each face."""
    count = params.n_train if split == "train" else params.n_val
    median_face = _MEDIAN_FACE * params.image_size / 320
    records: list[wider.ImageRecord] = []
    provenance: dict[str, list[int]] = {}
    for index in range(count):
        rng = np.random.default_rng([params.seed, _SPLIT_CODES[split], index])
        hw = _image_hw(rng, params.image_size)
        faces_pool, distractor_pool = split_crops[f"{split}_faces"], split_crops[f"{split}_distractors"]
        image, faces = render_image(rng, hw, crops, faces_pool, distractor_pool, params.max_faces, median_face)
        event = _event(len(faces))
        name = f"{event}/{event.split('--')[0]}_{event.split('--')[1]}_{split}_{index:05d}.jpg"
        path = out / f"WIDER_{split}" / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, format="JPEG", quality=params.quality)
        records.append(
            wider.ImageRecord(
                name=name,
                path=path,
                boxes=np.array([f.box for f in faces], np.float32).reshape(-1, 4),
                attrs=np.array([f.attrs for f in faces], np.int32).reshape(-1, 6),
                hw=hw,
            )
        )
        provenance[name] = [f.crop for f in faces]
    # Group by event like the official files.
    records.sort(key=lambda r: (EVENTS.index(r.event), r.name))
    return records, provenance


def _write(out: Path, params: SynthParams) -> None:
    """Generate the whole data set into ``out`` (which must be empty or missing)."""
    crops = lfw_subset().astype(np.float32)
    split_crops = crop_split(params.seed, params.val_crops)
    manifest: dict[str, object] = {
        "generator": "slimprune examples.eagleeye.synthfaces",
        "version": VERSION,
        "params": dataclasses.asdict(params),
        "crops": split_crops,
    }
    counts: dict[str, dict[str, int]] = {}
    provenance: dict[str, dict[str, list[int]]] = {}
    split_dir = out / "wider_face_split"
    for split in wider.SPLITS:
        records, provenance[split] = _render_split(out, params, split, crops, split_crops)
        wider.write_annotations(records, split_dir / f"wider_face_{split}_bbx_gt.txt")
        counts[split] = {"images": len(records), "faces": int(sum(len(r.boxes) for r in records))}
        if split == "val":
            masks = {r.name: subset_masks(r) for r in records}
            subsets = {
                s: {r.name: np.flatnonzero(masks[r.name][s]) + 1 for r in records} for s in wider.SUBSETS
            }
            wider.write_subsets(records, subsets, split_dir)
            for s in wider.SUBSETS:
                counts[split][s] = int(sum(len(v) for v in subsets[s].values()))
    manifest["counts"] = counts
    manifest["provenance"] = provenance
    # Written last: a directory with a manifest is complete.
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _read_manifest(root: Path) -> dict | None:
    """The manifest of a SynthFaces directory, or None."""
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def generate(
    root: Path,
    seed: int = 0,
    n_train: int = SynthParams.n_train,
    n_val: int = SynthParams.n_val,
    image_size: int = SynthParams.image_size,
    max_faces: int = SynthParams.max_faces,
    val_crops: int = SynthParams.val_crops,
    quality: int = SynthParams.quality,
) -> Path:
    """Write a SynthFaces data set in the WIDER FACE layout under ``root``.

    The set is built in a sibling temporary directory and moved into place, so
    ``root`` never holds a half-written set. An existing SynthFaces set at ``root``
    is replaced; any other non-empty directory is left alone.

    Args:
        root: target directory.
        seed, n_train, n_val, image_size, max_faces, val_crops, quality: see
            :class:`SynthParams`.

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` is a non-empty directory that is not a SynthFaces set.

    Example:
        >>> root = generate(Path("/tmp/synth"), n_train=8, n_val=4)  # doctest: +SKIP
        >>> wider.load_split(root, "val")  # doctest: +SKIP
    """
    params = SynthParams(seed, n_train, n_val, image_size, max_faces, val_crops, quality)
    root = Path(root)
    if root.exists() and any(root.iterdir()) and _read_manifest(root) is None:
        raise FileExistsError(
            f"{root} is a non-empty directory without a {MANIFEST}; SynthFaces will not overwrite it. "
            "Choose another root or empty it."
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    old = root.with_name(f".{root.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(tmp, params)
        if root.exists():
            root.rename(old)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root


def is_complete(root: Path, params: SynthParams) -> bool:
    """Whether ``root`` holds a complete SynthFaces set made with ``params`` by this version."""
    manifest = _read_manifest(Path(root))
    if manifest is None or manifest.get("version") != VERSION or manifest.get("params") != dataclasses.asdict(params):
        return False
    for split in wider.SPLITS:
        try:
            wider.check_layout(root, split)
        except wider.WiderFormatError:
            return False
        images = sum(1 for _ in (Path(root) / f"WIDER_{split}" / "images").glob("*/*.jpg"))
        if images != manifest["counts"][split]["images"]:
            return False
    return all((Path(root) / "wider_face_split" / f"wider_{s}_val.mat").is_file() for s in wider.SUBSETS)


def ensure(root: Path, **params: int) -> Path:
    """Return ``root`` after making sure it holds the SynthFaces set for ``params``.

    Generates (see :func:`generate`) unless ``root`` already holds a complete set made
    with the same parameters and generator version. A lock file next to ``root``
    serialises concurrent callers.

    Args:
        root: target directory.
        **params: any of :class:`SynthParams`' fields; the rest take their defaults.

    Raises:
        TypeError: an unknown parameter name (the message lists the valid ones).

    Example:
        >>> root = ensure(Path("data/synthfaces"))  # doctest: +SKIP
    """
    names = [f.name for f in dataclasses.fields(SynthParams)]
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise TypeError(f"unknown SynthFaces parameter(s) {unknown}; valid: {', '.join(names)}")
    wanted = SynthParams(**params)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.with_name(f".{root.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(root, wanted):
            generate(root, **dataclasses.asdict(wanted))
    return root
