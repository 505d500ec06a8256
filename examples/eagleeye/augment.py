"""SSD-style training augmentation and the evaluation resize, numpy in, numpy out.

Images are uint8 ``HxWx3`` RGB; boxes float32 ``[N, 4]`` ``x1, y1, x2, y2`` in
continuous pixel coordinates (pixel ``j`` covers ``[j, j+1)``), so every geometric
step maps a box with the same affine map it applies to the pixel grid.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

# Padding colour for expand and letterbox: the mean RGB of natural images (ImageNet).
FILL = (124, 116, 104)

# SSD's crop sampler: a minimum IoU between the crop and some face, None = keep the
# whole image, 0.0 = any crop.
_CROP_MODES = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)
_CROP_TRIALS = 50
_CROP_ROUNDS = 20


def _iou_with(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """IoU of each box with one rectangle."""
    lt = np.maximum(boxes[:, :2], rect[:2])
    rb = np.minimum(boxes[:, 2:], rect[2:])
    inter = np.prod((rb - lt).clip(min=0), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    rect_area = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return inter / (area + rect_area - inter)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2 resize: area averaging when shrinking, bilinear when enlarging."""
    shrink = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class TrainAugment:
    """SSD-style augmentation to a ``size x size`` training image.

    In order: colour distortion (brightness, contrast, saturation, hue, each with
    p = 0.5, contrast before or after the HSV steps), expand (p = ``expand_p``: the
    image placed at a random spot of a canvas up to ``expand_max`` times larger,
    filled with :data:`FILL`), SSD's random crop (scale 0.3-1, aspect 0.5-2, the crop
    must reach a minimum IoU with some face drawn from {none, 0.1, 0.3, 0.5, 0.7, 0.9}
    or be the whole image, and keeps only faces whose centre it contains), resize to
    ``size x size``, horizontal flip (p = 0.5). Boxes are clipped to the output and
    boxes narrower or lower than ``min_size`` pixels are dropped, so the output may
    hold no box.

    With ``reseed_in_workers`` (the default), inside a DataLoader worker the generator is
    reseeded from the worker's torch seed, so that one shared instance draws differently in
    each worker and epoch, yet a run seeded with ``torch.manual_seed`` repeats. An instance
    made for one image with its own seed (as :class:`~examples.eagleeye.train.AugmentedSplit`
    does) passes ``reseed_in_workers=False``: its draws then depend on that seed alone, not on
    how many workers load the data.

    Args:
        size: output side in pixels.
        seed: seed of the numpy generator (None: fresh entropy).
        expand_max: largest expand ratio.
        expand_p: probability of expanding.
        min_size: smallest box side kept, in output pixels.
        distort: apply the colour distortion (geometry only when False; for tests and
            ablations).
        reseed_in_workers: mix the DataLoader worker's seed into ``seed`` (see above).

    Example:
        >>> aug = TrainAugment(320, seed=0)
        >>> image, boxes = aug(np.zeros((240, 320, 3), np.uint8), np.array([[10, 10, 60, 70]], np.float32))
        >>> image.shape
        (320, 320, 3)
    """

    def __init__(
        self,
        size: int,
        seed: int | None = None,
        *,
        expand_max: float = 2.0,
        expand_p: float = 0.5,
        min_size: float = 2.0,
        distort: bool = True,
        reseed_in_workers: bool = True,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainAugment size must be positive, got {size}")
        if expand_max < 1:
            raise ValueError(f"expand_max is a ratio >= 1, got {expand_max}")
        self.size = size
        self.seed = seed
        self.expand_max = expand_max
        self.expand_p = expand_p
        self.min_size = min_size
        self.distort = distort
        self.rng = np.random.default_rng(seed)
        self.reseed_in_workers = reseed_in_workers
        self._worker_seed: int | None = None

    def _generator(self) -> np.random.Generator:
        """The generator, reseeded once per DataLoader worker process."""
        info = torch.utils.data.get_worker_info() if self.reseed_in_workers else None
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.rng = np.random.default_rng([self.seed or 0, info.seed])
        return self.rng

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self._generator()
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if self.distort:
            image = distort_colours(image, rng)
        if rng.random() < self.expand_p:
            image, boxes = self._expand(image, boxes, rng)
        image, boxes = self._crop(image, boxes, rng)
        h, w = image.shape[:2]
        image = _resize(image, self.size, self.size)
        boxes = boxes * np.array([self.size / w, self.size / h] * 2, np.float32)
        if rng.random() < 0.5:
            image = image[:, ::-1]
            boxes = np.stack([self.size - boxes[:, 2], boxes[:, 1], self.size - boxes[:, 0], boxes[:, 3]], axis=1)
        boxes = boxes.clip(0, self.size)
        keep = (boxes[:, 2] - boxes[:, 0] >= self.min_size) & (boxes[:, 3] - boxes[:, 1] >= self.min_size)
        return np.ascontiguousarray(image), boxes[keep].astype(np.float32).reshape(-1, 4)

    def _expand(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Place the image on a larger canvas of the fill colour."""
        h, w = image.shape[:2]
        ratio = rng.uniform(1.0, self.expand_max)
        eh, ew = int(h * ratio), int(w * ratio)
        top, left = int(rng.integers(0, eh - h + 1)), int(rng.integers(0, ew - w + 1))
        canvas = np.empty((eh, ew, 3), np.uint8)
        canvas[:] = FILL
        canvas[top : top + h, left : left + w] = image
        return canvas, boxes + np.array([left, top, left, top], np.float32)

    def _crop(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """SSD's crop sampler, constrained to keep at least one face centre."""
        if len(boxes) == 0:
            return image, boxes
        h, w = image.shape[:2]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(_CROP_ROUNDS):
            min_iou = _CROP_MODES[rng.integers(len(_CROP_MODES))]
            if min_iou is None:
                return image, boxes
            for _ in range(_CROP_TRIALS):
                cw, ch = rng.uniform(0.3 * w, w), rng.uniform(0.3 * h, h)
                if not 0.5 <= ch / cw <= 2.0:
                    continue
                left, top = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
                rect = np.array([left, top, left + int(cw), top + int(ch)], np.float32)
                if rect[2] <= rect[0] or rect[3] <= rect[1]:
                    continue
                if _iou_with(boxes, rect).max() < min_iou:
                    continue
                inside = np.all((centres > rect[:2]) & (centres < rect[2:]), axis=1)
                if not inside.any():
                    continue
                kept = boxes[inside].copy()
                kept[:, :2] = np.maximum(kept[:, :2], rect[:2])
                kept[:, 2:] = np.minimum(kept[:, 2:], rect[2:])
                kept -= np.concatenate([rect[:2], rect[:2]])
                x0, y0, x1, y1 = rect.astype(int)
                return image[y0:y1, x0:x1], kept
        return image, boxes


def distort_colours(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD photometric distortion: brightness ±32, contrast and saturation ×[0.5, 1.5],
    hue ±18°, each with p = 0.5; the result is clipped back to uint8."""
    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out += rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast is not None and contrast_first:
        out *= contrast
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = cv2.cvtColor(out.clip(0, 255) / 255.0, cv2.COLOR_RGB2HSV)
        if saturation is not None:
            hsv[..., 1] = (hsv[..., 1] * saturation).clip(0, 1)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    if contrast is not None and not contrast_first:
        out *= contrast
    return out.clip(0, 255).round().astype(np.uint8)


class EvalResize:
    """Letterbox to ``size x size``: scale the long side to ``size`` (aspect kept),
    place the image at the top-left corner, pad right and bottom with :data:`FILL`.

    Because the image sits at the origin, mapping back is a division by the scale:
    ``invert(boxes, original_hw)`` returns boxes in original image pixels, clipped to
    the original image (``scale(original_hw)`` is the factor; the short side's exact
    factor differs from it by the rounding of the resized side, which ``invert`` uses).

    Example:
        >>> resize = EvalResize(320)
        >>> image, boxes = resize(np.zeros((480, 640, 3), np.uint8), np.array([[64, 48, 128, 96]], np.float32))
        >>> image.shape, boxes.tolist()
        ((320, 320, 3), [[32.0, 24.0, 64.0, 48.0]])
        >>> resize.invert(boxes, (480, 640)).tolist()
        [[64.0, 48.0, 128.0, 96.0]]
    """

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"EvalResize size must be positive, got {size}")
        self.size = size

    def scale(self, original_hw: tuple[int, int]) -> float:
        """Nominal factor from original to letterboxed pixels (the long side's)."""
        return self.size / max(original_hw)

    def _factors(self, original_hw: tuple[int, int]) -> tuple[int, int, float, float]:
        """Resized width and height and the exact x and y factors of the pixel grid."""
        h, w = original_hw
        s = self.scale(original_hw)
        nw, nh = max(1, min(self.size, round(w * s))), max(1, min(self.size, round(h * s)))
        return nw, nh, nw / w, nh / h

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nw, nh, sx, sy = self._factors(image.shape[:2])
        canvas = np.empty((self.size, self.size, 3), np.uint8)
        canvas[:] = FILL
        canvas[:nh, :nw] = _resize(image, nw, nh)
        return canvas, np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)

    def invert(self, boxes: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
        """Boxes (``[K, 4]`` or ``[K, 5]`` with scores, which pass through) from the
        letterboxed image back to original pixels, clipped to the original image."""
        out = np.array(boxes, dtype=np.float32, copy=True)
        out = out.reshape(-1, out.shape[-1] if out.ndim == 2 else 4)
        _, _, sx, sy = self._factors(original_hw)
        h, w = original_hw
        out[:, 0:4:2] = (out[:, 0:4:2] / sx).clip(0, w)
        out[:, 1:4:2] = (out[:, 1:4:2] / sy).clip(0, h)
        return out
