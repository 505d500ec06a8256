"""Ultralytics models at ratio 0.5: params/FLOPs removed, barriers, exactness, and the workflow.

Each model is built from the yaml Ultralytics ships (random weights, seed 0, no download; for
the detection heads the class prior is lifted as the tests do, so that boxes come out), planned
at ratio 0.5 with a 1x3xSxS input, applied, and compared with its silenced original (max |diff|
of the first output). Barriers are the UnsupportedOpWarning messages the plan emits. Then the
issue's other columns, per model:

- threshold oracle: γ and β of 40% of the channels of every BatchNorm2d zeroed (seed 0), a
  ``threshold=1e-12`` plan applied; the pruned model must equal the zeroed original (for
  RT-DETR: how many of its 300 rows do, and the max |diff| in float64);
- deepcopy + forward: ``copy.deepcopy`` of the pruned model gives the same output;
- predict: ``YOLO.predict`` (``RTDETR.predict``) of a rectangular image with the pruned model
  equals it with the silenced model (rows matched one to one; conf 0.01, max_det 20; RT-DETR
  conf 0, its 300 queries);
- save: ``slimprune.save`` then ``slimprune.load`` rebuilds a model with the same output.

    PYTHONPATH=. python benchmarks/ultralytics_variants.py [--size 160] [--models yolov8n rtdetr-l ...]

Prints two markdown tables (docs/ultralytics.md) and writes benchmarks/results/ultralytics.csv.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import torch  # noqa: E402

import slimprune  # noqa: E402
from slimprune.errors import UnsupportedOpWarning  # noqa: E402

MODELS = ["yolov8n", "yolov8n-seg", "yolov8n-pose", "yolov8n-cls", "yolo11n", "yolov10n", "yolo12n", "yolov5nu", "rtdetr-l"]


def first(out: object) -> torch.Tensor:
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out  # type: ignore[return-value]


def wrapper(name: str) -> object:
    """A fresh ``YOLO`` (or ``RTDETR``) built from ``name``'s yaml."""
    from ultralytics import RTDETR, YOLO

    return RTDETR(f"{name}.yaml") if name.startswith("rtdetr") else YOLO(f"{name}.yaml", verbose=False)


def build(name: str) -> torch.nn.Module:
    """``name`` from its yaml (seed 0), eval mode, the Detect class prior lifted (as the tests do)."""
    torch.manual_seed(0)
    model = wrapper(name).model.eval()
    last = model.model[-1]
    for branch in getattr(last, "cv3", []) if not name.endswith("-cls") else []:
        conv = branch[-1] if isinstance(branch[-1], torch.nn.Conv2d) else branch[-1][-1]
        torch.nn.init.zeros_(conv.bias)
    return model


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return first(model.eval()(x))


def oracle(name: str, x: torch.Tensor) -> dict[str, object]:
    """Network-slimming oracle: 40% of every BatchNorm2d's channels silenced (γ = β = 0),
    pruned at threshold 1e-12; the pruned model against the zeroed original."""
    model = build(name)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                idx = torch.randperm(m.num_features, generator=g)[: int(0.4 * m.num_features)]
                m.weight[idx] = 0.0
                m.bias[idx] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, threshold=1e-12, example_inputs=x)
        small = slimprune.apply(model, plan)
    got, want = run(small, x), run(model, x)
    row: dict[str, object] = {"oracle_params_removed_pct": round(100 * (1 - plan.params_after / plan.params_before), 1),
                              "oracle_max_abs_diff": float((got - want).abs().max()),
                              "oracle_scale": float(want.abs().max())}
    if name.startswith("rtdetr"):  # (1, 300, 6): 300 queries after two top-k selections
        row["oracle_rows_equal"] = int(((got - want).abs().amax(-1) <= 1e-4 * (1 + want.abs().amax(-1))).sum())
        row["oracle_rows"] = int(got.shape[1])
        row["oracle_float64_max_abs_diff"] = float((run(small.double(), x.double()) - run(model.double(), x.double())).abs().max())
    return row


def predicted(result: object) -> torch.Tensor:
    """What a prediction holds, as one tensor of rows: probabilities, or boxes (with mask
    areas or keypoints)."""
    if getattr(result, "probs", None) is not None:
        return result.probs.data[None]
    rows = [result.boxes.data]
    if result.masks is not None:
        rows.append(result.masks.data.flatten(1).sum(1, keepdim=True))
    if result.keypoints is not None:
        rows.append(result.keypoints.data.flatten(1))
    return torch.cat(rows, 1)


def same_rows(got: torch.Tensor, want: torch.Tensor) -> tuple[int, float]:
    """How many of ``want``'s rows ``got`` has (matched one to one), and the max |diff| after matching."""
    if got.shape != want.shape or got.shape[0] == 0:
        return 0, float("inf")
    match = (got[:, None] - want[None]).abs().amax(-1).argmin(1)
    if match.unique().numel() != match.numel():
        return int(match.unique().numel()), float("inf")
    return int(got.shape[0]), float((got - want[match]).abs().max())


def workflow(name: str, model: torch.nn.Module, small: torch.nn.Module, plan: slimprune.PruningPlan,
             x: torch.Tensor) -> dict[str, object]:
    """deepcopy + forward, predict against the silenced model, slimprune.save/load."""
    want = run(small, x)
    row: dict[str, object] = {"deepcopy_equal": bool(torch.equal(run(copy.deepcopy(small), x), want))}
    size = x.shape[-1]
    image = np.random.default_rng(0).integers(0, 255, (size * 3 // 4 // 32 * 32, size, 3), dtype=np.uint8)
    rtdetr = name.startswith("rtdetr")
    kwargs = dict(imgsz=size, verbose=False, device="cpu", conf=0.0 if rtdetr else 0.01, max_det=300 if rtdetr else 20)
    out = []
    for m in (small, slimprune.silence(model, plan)):
        y = wrapper(name)
        own = y.model
        y.model = copy.deepcopy(m)
        for attr in ("args", "task"):
            if not hasattr(y.model, attr):
                setattr(y.model, attr, getattr(own, attr))
        out.append(predicted(y.predict(image, **kwargs)[0]))
    n, diff = same_rows(*out)
    row.update(predict_rows=int(out[1].shape[0]), predict_rows_matched=n, predict_max_abs_diff=diff,
               predict_scale=float(out[1].abs().max()) if out[1].numel() else 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = slimprune.save(small, Path(tmp) / f"{name}.safetensors", plan=plan)
        loaded = slimprune.load(path, build_fn=lambda: build(name))
        row["save_load_max_abs_diff"] = float((run(loaded, x) - want).abs().max())
    return row


def measure(name: str, size: int) -> dict[str, object]:
    model = build(name)
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
    got = run(small, x)
    want = run(slimprune.silence(model, plan), x)
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
        **oracle(name, x),
        **workflow(name, model, small, plan, x),
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
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    print(f"| model (at {args.size} px) | params | params removed | FLOPs removed | barrier ops | max abs diff vs silenced (output scale) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['params_before']:,} | {r['params_removed_pct']}% | {r['flops_removed_pct']}% | "
              f"{r['barrier_ops']} | {r['max_abs_diff']:.1e} ({r['output_scale']:.3g}) |")
        if r["barrier_kinds"]:
            print(f"<!-- {r['model']}: {r['barrier_kinds']} -->")
    print()
    print(f"| model (at {args.size} px) | threshold oracle: max abs diff (scale), params removed | ratio 0.5: params / FLOPs removed "
          f"| barriers | deepcopy + forward | predict vs silenced: rows matched, max abs diff | slimprune.save/load: max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        o = f"{r['oracle_max_abs_diff']:.1e} ({r['oracle_scale']:.3g}), {r['oracle_params_removed_pct']}%"
        if "oracle_rows" in r:
            o += f"; {r['oracle_rows_equal']}/{r['oracle_rows']} rows equal, float64 {r['oracle_float64_max_abs_diff']:.1e}"
        print(f"| {r['model']} | {o} | {r['params_removed_pct']}% / {r['flops_removed_pct']}% | {r['barrier_ops']} | "
              f"{'equal' if r['deepcopy_equal'] else 'DIFFERS'} | {r['predict_rows_matched']}/{r['predict_rows']}, "
              f"{r['predict_max_abs_diff']:.1e} ({r['predict_scale']:.3g}) | {r['save_load_max_abs_diff']:.1e} |")


if __name__ == "__main__":
    main()
