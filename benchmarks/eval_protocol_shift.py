"""How much the official WIDER FACE protocol moves AP against the former continuous-IoU
evaluator, on a small synthetic example (no data set, no model; seconds on one core).

    PYTHONPATH=. python benchmarks/eval_protocol_shift.py

The former evaluator is taken from git (``git show 11acc6d:examples/eagleeye/evaluate.py``);
the example: 200 images of 1-12 faces 4-60 px tall, predictions jittered by ~15% of the face
size with scores that fall with the jitter, plus false positives; three nested subsets by
face height (>= 4 / 10 / 20 px).
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np

from examples.eagleeye import evaluate as official
from examples.eagleeye.wider import ImageRecord

OLD_COMMIT = "11acc6d"


def former_evaluator() -> types.ModuleType:
    src = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:examples/eagleeye/evaluate.py"], capture_output=True, text=True, check=True
    ).stdout.replace("from .wider import", "from examples.eagleeye.wider import")
    module = types.ModuleType("former_evaluate")
    sys.modules["former_evaluate"] = module
    exec(compile(src, "former_evaluate.py", "exec"), module.__dict__)
    return module


def example(seed: int) -> tuple[list[ImageRecord], dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    records, preds = [], {}
    subsets: dict[str, dict[str, np.ndarray]] = {"easy": {}, "medium": {}, "hard": {}}
    for i in range(200):
        n = int(rng.integers(1, 13))
        h = np.exp(rng.uniform(np.log(4), np.log(60), n)).round()
        w = (h * rng.uniform(0.7, 1.0, n)).round()
        xy = rng.uniform(0, 400, (n, 2)).round()
        name = f"0--A/{i}.jpg"
        records.append(ImageRecord(name, Path(name), np.stack([xy[:, 0], xy[:, 1], w, h], 1), np.zeros((n, 6), np.int32)))
        for s, lo in (("hard", 4), ("medium", 10), ("easy", 20)):
            subsets[s][name] = np.flatnonzero(h >= lo) + 1
        found = rng.random(n) < 0.85
        size = np.stack([w, h, w, h], 1)[found]
        noise = rng.normal(0, 0.15, size.shape) * size
        boxes = np.stack([xy[:, 0], xy[:, 1], xy[:, 0] + w, xy[:, 1] + h], 1)[found] + noise
        score = np.clip(0.9 - np.abs(noise / size).mean(1) * 3 + rng.normal(0, 0.05, len(boxes)), 0.01, 1)
        k = int(rng.integers(0, 4))
        fp_xy = rng.uniform(0, 400, (k, 2))
        fp = np.hstack([fp_xy, fp_xy + rng.uniform(4, 40, (k, 2))])
        preds[name] = np.vstack([np.hstack([boxes, score[:, None]]), np.hstack([fp, rng.uniform(0.01, 0.6, (k, 1))])])
    return records, preds, subsets


def main() -> int:
    former = former_evaluator()
    rows = []
    for seed in range(5):
        records, preds, subsets = example(seed)
        old = former.evaluate(preds, records, subsets).ap
        new = official.evaluate(preds, records, subsets).ap
        rows.append([new[s] - old[s] for s in ("easy", "medium", "hard")])
        print(f"seed {seed}: " + "  ".join(f"{s} {old[s]:.4f} -> {new[s]:.4f}" for s in ("easy", "medium", "hard")))
    d = np.array(rows) * 100
    print("AP change (points), median [min, max] over 5 seeds: " + "  ".join(
        f"{s} {np.median(d[:, j]):+.2f} [{d[:, j].min():+.2f}, {d[:, j].max():+.2f}]"
        for j, s in enumerate(("easy", "medium", "hard"))
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
