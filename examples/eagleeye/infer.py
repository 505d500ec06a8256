"""Face detection on image files: the ``detect`` subcommand's logic.

Images are letterboxed exactly as in evaluation (``augment.EvalResize``), the raw outputs
decoded by :func:`detect.detect`, the boxes mapped back to original pixels; each image
gets a JSON file of boxes and a PNG with the boxes drawn (Pillow).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .anchors import DEFAULT_ANCHORS, AnchorSpec, generate_anchors
from .augment import EvalResize
from .detect import DetectConfig, detect

__all__ = ["IMAGE_SUFFIXES", "image_files", "detect_image", "write_detections", "run_detect"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_BOX_COLOUR = (255, 48, 48)


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The images named, and those directly or deeper inside named directories, sorted per directory.

    Raises:
        FileNotFoundError: an input does not exist (names it).
        ValueError: no image was found (says which suffixes count).
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such image file or directory")
    if not files:
        raise ValueError(f"no image found in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


@torch.no_grad()
def detect_image(
    model: nn.Module,
    image: np.ndarray,
    size: int = 384,
    config: DetectConfig = DetectConfig(),
    anchors: AnchorSpec = DEFAULT_ANCHORS,
) -> np.ndarray:
    """Faces in one ``HxWx3`` uint8 RGB image: ``[K, 5]`` float32 ``x1, y1, x2, y2, score`` in its pixels."""
    resize = EvalResize(size)
    letterboxed, _ = resize(image, np.zeros((0, 4), np.float32))
    tensor = torch.from_numpy(np.ascontiguousarray(letterboxed.transpose(2, 0, 1))).float().div_(255.0)[None]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        cls_logits, box_deltas = model(tensor.to(device))
    finally:
        model.train(was_training)
    anchor_boxes = generate_anchors(size, size, anchors, device=cls_logits.device)
    found = detect(cls_logits, box_deltas, anchor_boxes, (size, size), config)[0].cpu().numpy()
    return resize.invert(found, image.shape[:2]) if len(found) else found.reshape(0, 5)


def write_detections(image: np.ndarray, boxes: np.ndarray, source: Path, out_dir: Path) -> tuple[Path, Path]:
    """``<out_dir>/<stem>.json`` (boxes) and ``<out_dir>/<stem>.png`` (the image, boxes drawn)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    faces = [
        {"box": [round(float(v), 2) for v in row[:4]], "score": round(float(row[4]), 4)} for row in boxes
    ]
    json_path = out_dir / f"{source.stem}.json"
    json_path.write_text(json.dumps({"image": str(source), "width": w, "height": h, "faces": faces}, indent=2) + "\n")
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    line = max(1, round(max(h, w) / 300))
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        draw.rectangle((x1, y1, x2, y2), outline=_BOX_COLOUR, width=line)
        draw.text((x1, max(0.0, y1 - 11)), f"{face['score']:.2f}", fill=_BOX_COLOUR)
    png_path = out_dir / f"{source.stem}.png"
    canvas.save(png_path)
    return json_path, png_path


def run_detect(
    model: nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    score: float = 0.5,
    size: int = 384,
    config: DetectConfig = DetectConfig(),
) -> dict[Path, np.ndarray]:
    """Detect faces in every image of ``inputs`` and write its JSON and PNG into ``out_dir``.

    Args:
        model: an EagleEye, pruned or not (:func:`model_files.load_detector`).
        inputs: image files and directories (searched recursively).
        out_dir: where the results go; two images with the same file stem would
            overwrite each other, so that is refused.
        score: keep boxes scoring at least this.
        size: letterbox side the model sees.
        config: the other post-processing settings (its ``score_thresh`` is replaced by ``score``).

    Returns:
        ``{image path: [K, 5] boxes}``.

    Raises:
        ValueError: ``score`` outside [0, 1], no image found, or two images share a stem.
    """
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"--score must be within [0, 1] (a sigmoid probability), got {score}")
    files = image_files(inputs)
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ValueError(
                f"{stems[f.stem]} and {f} would both be written as {f.stem}.json/.png in {out_dir}; "
                "run them into different --out folders"
            )
        stems[f.stem] = f
    config = replace(config, score_thresh=score)
    results: dict[Path, np.ndarray] = {}
    for f in files:
        with Image.open(f) as im:
            image = np.asarray(im.convert("RGB"))
        boxes = detect_image(model, image, size, config)
        boxes = boxes[boxes[:, 4] >= score]
        write_detections(image, boxes, f, Path(out_dir))
        results[f] = boxes
    return results
