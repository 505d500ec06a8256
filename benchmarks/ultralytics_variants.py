"""Ultralytics YOLO models at ratio 0.5: params/FLOPs removed, barriers, exactness.

Each model is built from the yaml Ultralytics ships (random weights, no download), planned at
ratio 0.5 with a 1x3xSxS input, applied, and compared with its silenced original (max |diff|
of the first output). Barriers are the UnsupportedOpWarning messages the plan emits.

    PYTHONPATH=. python benchmarks/ultralytics_variants.py [--size 160] [--models yolov8n yolo11n ...]

Prints a markdown table (docs/ultralytics.md) and writes benchmarks/results/ultralytics.csv.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import torch  # noqa: E402

import slimprune  # noqa: E402
from slimprune.errors import UnsupportedOpWarning  # noqa: E402

MODELS = ["yolov8n", "yolov8n-seg", "yolov8n-pose", "yolov8n-cls", "yolo11n", "yolov10n", "yolo12n", "yolov5nu"]


def first(out: object) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out  # type: ignore[return-value]


def measure(name: str, size: int) -> dict[str, object]:
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO(f"{name}.yaml", verbose=False).model.eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
        small = slimprune.apply(model, plan)
    seconds = time.perf_counter() - t
    # one warning lists the barrier ops of a plan ("  - call_function ... at node 'x' (where): why");
    # a model planned by regions may repeat it: count each node once
    lines = {ln.strip() for w in caught if issubclass(w.category, UnsupportedOpWarning)
             for ln in str(w.message).splitlines() if ln.startswith("  - ")}
    barriers = sorted(lines)
    n_barriers = len(lines)
    with torch.no_grad():
        got = first(small.eval()(x))
        want = first(slimprune.silence(model, plan).eval()(x))
    return {
        "model": name,
        "params_before": plan.params_before,
        "params_removed_pct": round(100 * (1 - plan.params_after / plan.params_before), 1),
        "flops_before": plan.flops_before,
        "flops_removed_pct": round(100 * (1 - plan.flops_after / plan.flops_before), 1),
        "barrier_ops": n_barriers,
        "max_abs_diff": float((got - want).abs().max()),
        "output_scale": float(want.abs().max()),
        "plan_apply_s": round(seconds, 1),
        "barrier_kinds": "; ".join(barriers)[:300],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ultralytics.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure(m, args.size) for m in args.models]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"| model (at {args.size} px) | params | params removed | FLOPs removed | barrier ops | max abs diff vs silenced (output scale) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['params_before']:,} | {r['params_removed_pct']}% | {r['flops_removed_pct']}% | "
              f"{r['barrier_ops']} | {r['max_abs_diff']:.1e} ({r['output_scale']:.3g}) |")
        if r["barrier_kinds"]:
            print(f"<!-- {r['model']}: {r['barrier_kinds']} -->")


if __name__ == "__main__":
    main()
