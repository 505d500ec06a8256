"""SynthFaces (examples/eagleeye/synthfaces.py) written in the YOLO format, one class ``face``.

Layout under ``out``::

    images/{train,val}/NAME.jpg   (copies of the SynthFaces images)
    labels/{train,val}/NAME.txt   (one ``0 cx cy w h`` line per valid face, normalised to 0-1)
    data.yaml                     (path, train, val, names)

Faces SynthFaces marks invalid (under 8 px or mostly covered) get no label line, as WIDER
FACE evaluation ignores them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from examples.eagleeye import synthfaces, wider


def _label_lines(record: wider.ImageRecord) -> list[str]:
    if record.hw is None:
        raise ValueError(f"{record.name}: the SynthFaces record has no image size")
    h, w = record.hw
    lines = []
    for (x, y, bw, bh), ok in zip(record.boxes.tolist(), record.valid().tolist()):
        if ok and bw > 0 and bh > 0:
            lines.append(f"0 {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
    return lines


def to_yolo(synth_root: Path, out: Path) -> Path:
    """Write the SynthFaces set at ``synth_root`` under ``out`` in the YOLO format; returns data.yaml."""
    out = Path(out)
    for split in wider.SPLITS:
        images, labels = out / "images" / split, out / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for record in wider.load_split(Path(synth_root), split):
            stem = record.stem
            shutil.copyfile(record.path, images / f"{stem}.jpg")
            (labels / f"{stem}.txt").write_text("".join(line + "\n" for line in _label_lines(record)))
    data = out / "data.yaml"
    data.write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: face\n")
    return data


def write(out: Path, n_train: int = 8, n_val: int = 4, image_size: int = 160, seed: int = 0) -> Path:
    """Generate a small SynthFaces set under ``out/synthfaces`` and write its YOLO copy; returns data.yaml."""
    root = synthfaces.ensure(Path(out) / "synthfaces", seed=seed, n_train=n_train, n_val=n_val, image_size=image_size)
    return to_yolo(root, Path(out) / "yolo")
