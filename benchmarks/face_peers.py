"""EagleEye, pruned EagleEye and OpenCV's Haar cascade through the same WIDER FACE evaluator.

    python benchmarks/face_peers.py --run runs/eagleeye [--data data/synthfaces] [--markdown]

The Haar cascade is the one detector that ships inside a wheel we may use offline
(``haarcascade_frontalface_default.xml`` in opencv-python-headless < 5). It gives no
probability, so its score is the number of raw detections merged into each box
(``detectMultiScale2``'s ``numDetections``), the usual confidence proxy for Viola-Jones.
SynthFaces faces go down to 6 px while the cascade's window is 24 px, so the image is
upscaled by ``--haar-upscale`` first (default 2; boxes are mapped back).

Every detector runs image by image on one CPU thread, and "ms / image" is the wall time of
the whole loop (reading the image, pre-processing, the detector, post-processing) divided
by the number of images. EagleEye's models come from a pipeline output directory:
``baseline/last.pt`` and ``finetuned.safetensors``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

# Run as a script (python benchmarks/face_peers.py), Python puts benchmarks/ first on the
# path, not the repository root that holds the examples package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.eagleeye.augment import EvalResize  # noqa: E402
from examples.eagleeye.detect import predict  # noqa: E402
from examples.eagleeye.evaluate import EvalResult, evaluate  # noqa: E402
from examples.eagleeye.pipeline import load_pruned  # noqa: E402
from examples.eagleeye.train import load_model  # noqa: E402
from examples.eagleeye.wider import WiderFaceDataset, load_split, load_subsets  # noqa: E402
from slimprune.measure import count_params  # noqa: E402

_SUBSETS = ("easy", "medium", "hard")


def haar_predictions(
    root: Path, upscale: float = 2.0, scale_factor: float = 1.1, min_neighbors: int = 1
) -> tuple[dict[str, np.ndarray], float]:
    """Haar-cascade detections ``{name: [K, 5]}`` for the val split, and seconds per image."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if cascade.empty():
        raise RuntimeError(
            "OpenCV's haarcascade_frontalface_default.xml did not load; opencv-python-headless<5 ships it."
        )
    records = load_split(root, "val")
    predictions: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    for record in records:
        grey = cv2.imread(str(record.path), cv2.IMREAD_GRAYSCALE)
        if upscale != 1:
            grey = cv2.resize(grey, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_LINEAR)
        grey = cv2.equalizeHist(grey)
        boxes, counts = cascade.detectMultiScale2(grey, scaleFactor=scale_factor, minNeighbors=min_neighbors)
        found = np.zeros((len(boxes), 5), np.float32)
        if len(boxes):
            xywh = np.asarray(boxes, np.float32) / upscale
            found[:, :2] = xywh[:, :2]
            found[:, 2:4] = xywh[:, :2] + xywh[:, 2:4]
            found[:, 4] = np.asarray(counts, np.float32).reshape(-1)
        predictions[record.name] = found
    return predictions, (time.perf_counter() - start) / max(1, len(records))


def model_predictions(model: torch.nn.Module, root: Path, size: int) -> tuple[dict[str, np.ndarray], float]:
    """A detector's predictions on the val split, one image at a time, and seconds per image."""
    dataset = WiderFaceDataset(root, "val", transform=EvalResize(size))
    start = time.perf_counter()
    predictions = predict(model, dataset, batch_size=1, threads=1)
    return predictions, (time.perf_counter() - start) / max(1, len(dataset))


def benchmark(run_dir: Path, root: Path, size: int, upscale: float) -> list[dict[str, object]]:
    """Rows of the comparison table: name, parameters, AP per subset, ms per image."""
    records = load_split(root, "val", skip_degenerate=False)  # every box, as the official evaluation
    subsets = load_subsets(root)

    def score(predictions: dict[str, np.ndarray]) -> EvalResult:
        return evaluate(predictions, records, subsets)

    rows: list[dict[str, object]] = []
    detectors: list[tuple[str, Callable[[], tuple[dict[str, np.ndarray], float]], int | None]] = [
        (f"OpenCV Haar cascade (x{upscale:g} upscale)", lambda: haar_predictions(root, upscale), None)
    ]
    baseline, _ = load_model(run_dir / "baseline" / "last.pt")
    pruned = load_pruned(run_dir / "finetuned.safetensors")
    detectors.append((f"EagleEye ({size} px)", lambda: model_predictions(baseline, root, size), count_params(baseline)))
    detectors.append(
        (
            f"EagleEye pruned + fine-tuned ({size} px)",
            lambda: model_predictions(pruned, root, size),
            count_params(pruned),
        )
    )
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for name, run, params in detectors:
            predictions, seconds = run()
            result = score(predictions)
            rows.append({"detector": name, "params": params, "ap": dict(result.ap), "ms_per_image": 1000 * seconds})
    finally:
        cv2.setNumThreads(previous)
    return rows


def markdown(rows: Sequence[dict[str, object]], images: int) -> str:
    """The table as Markdown, for docs/eagleeye.md."""
    lines = [
        "| detector | params | AP easy | AP medium | AP hard | ms / image (1 thread) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ap = row["ap"]
        params = "-" if row["params"] is None else f"{row['params']:,}"
        lines.append(
            f"| {row['detector']} | {params} | "
            + " | ".join(f"{ap[s]:.3f}" for s in _SUBSETS)  # type: ignore[index]
            + f" | {row['ms_per_image']:.1f} |"
        )
    lines.append(f"\n{images} SynthFaces val images.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every detector on the val split and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/eagleeye", help="a pipeline output directory")
    parser.add_argument("--data", default="data/synthfaces", help="WIDER FACE layout directory with a val split")
    parser.add_argument("--size", type=int, default=384, help="EagleEye's letterbox side")
    parser.add_argument("--haar-upscale", type=float, default=2.0, help="upscale images this much for the cascade")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    console = Console()
    run_dir, root = Path(args.run), Path(args.data)
    for needed in (run_dir / "baseline" / "last.pt", run_dir / "finetuned.safetensors"):
        if not needed.is_file():
            console.print(
                f"[red]error:[/red] {needed} is missing; run "
                f"`python -m examples.eagleeye pipeline --out {run_dir}` first."
            )
            return 2
    torch.set_num_threads(1)
    rows = benchmark(run_dir, root, args.size, args.haar_upscale)
    images = len(load_split(root, "val"))
    table = Table(title=f"Face detectors on {root} (val, {images} images), one CPU thread")
    for column in ("detector", "params", "AP easy", "AP medium", "AP hard", "ms / image"):
        table.add_column(column, justify="left" if column == "detector" else "right")
    for row in rows:
        ap = row["ap"]
        table.add_row(
            str(row["detector"]),
            "-" if row["params"] is None else f"{row['params']:,}",
            *(f"{ap[s]:.3f}" for s in _SUBSETS),  # type: ignore[index]
            f"{row['ms_per_image']:.1f}",
        )
    console.print(table)
    if args.markdown:
        print(markdown(rows, images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
