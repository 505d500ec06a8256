"""Latency as the pruning target against FLOPs as the target, measured (issue 13).

For each model (random weights, batch 1, one CPU thread, ``--size`` px input):

1. profile its cost table (:func:`slimprune.latency.profile`, cached under
   ``benchmarks/results/latency_cache/``) to find the first feasible target (0.5, else 0.4, ...),
   then make ``plan(..., target, target="latency")`` as a user would, without a table: it
   profiles again and refines its table at the widths it chose;
2. at the FLOPs that plan keeps, make a ``target="flops"`` plan and a Torch-Pruning
   (MetaPruner, L2 magnitude, classifier/detector heads ignored) model, its ``pruning_ratio``
   bisected to the same FLOPs (within 2%);
3. time the deployed form (BatchNorm folded, channels-last; :func:`slimprune.latency.deployed`)
   of the original and of the three pruned models in ``--rounds`` interleaved rounds,
   so a load change on the (shared) machine hits all of them alike; report medians and the
   spread (min-max over the rounds' medians).

``--importance flops`` makes the latency plan keep the most compute its budget allows (the
FLOPs plan and Torch-Pruning stay as they are, at the latency plan's FLOPs).

Columns: measured latency ratio of the latency plan (goal 0.5 +- 10%), its predicted ratio and
the prediction's error against the measured latency, FLOPs and params kept, latency
efficiency (speed-up / FLOP reduction), and the FLOPs plan's and Torch-Pruning's latency at
the same FLOPs.

    python benchmarks/latency.py --models mobilenet_v2 resnet50 --size 160 --rounds 5
    python benchmarks/latency.py --quick            # mobilenet_v2 and resnet18 at 128 px
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import slimprune  # noqa: E402
from slimprune.latency import deployed, profile, time_ms  # noqa: E402

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "eagleeye")
CPU = torch.device("cpu")
TARGETS = (0.5, 0.4, 0.3, 0.2)  # fraction of latency removed: 0.5 first, then the next one above the floor


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "eagleeye":
        from examples.eagleeye.model import EagleEye

        return EagleEye().eval()
    import torchvision

    return getattr(torchvision.models, name)(weights=None).eval()


def heads(model: nn.Module) -> list[nn.Module]:
    """Layers Torch-Pruning must not prune (slimprune keeps model outputs by itself)."""
    out = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    out += [m for n, m in model.named_modules() if n.startswith("heads") and n.endswith((".cls", ".box"))]
    return out


def flops(model: nn.Module, x: torch.Tensor) -> int:
    return slimprune.measure.measure(model, x, latency=False).flops


def params(model: nn.Module) -> int:
    return slimprune.measure.count_params(model)


def torch_pruning_at(model: nn.Module, x: torch.Tensor, goal_flops: float) -> tuple[nn.Module, float]:
    """Torch-Pruning's model whose FLOPs are within 2% of ``goal_flops`` (bisect pruning_ratio)."""
    import torch_pruning as tp

    lo, hi, best = 0.0, 0.95, None
    for _ in range(8):
        r = (lo + hi) / 2
        small = copy.deepcopy(model)
        tp.pruner.MetaPruner(small, (x,), importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=r,
                             ignored_layers=heads(small)).step()
        f = flops(small, x)
        if best is None or abs(f - goal_flops) < abs(best[1] - goal_flops):
            best = (small, f, r)
        if abs(f - goal_flops) <= 0.02 * goal_flops:
            break
        lo, hi = (r, hi) if f > goal_flops else (lo, r)
    assert best is not None
    return best[0], best[2]


def run_model(name: str, size: int, rounds: int, min_run_time: float, cache: Path,
              importance: str = "bn_scale") -> dict[str, Any]:
    x = torch.randn(1, 3, size, size)
    model = build(name)
    t0 = time.perf_counter()
    analysis = slimprune.analyze(model, example_inputs=x)
    table = profile(model, x, analysis.graph, threads=1, cache=cache / f"{name}_{size}.json", progress=False)
    profile_s = time.perf_counter() - t0
    target, p_lat = None, None
    for target in TARGETS:  # 0.5 first; a budget under the floor of what cannot be pruned is refused
        try:
            slimprune.plan(analysis, target, target="latency", latency_table=table, importance=importance)
            break
        except slimprune.InfeasiblePlanError as exc:
            print(f"{name}: latency target {target} infeasible: {str(exc)[:300]}", file=sys.stderr)
    else:
        raise SystemExit(f"{name}: no latency target in {TARGETS} is feasible")
    # The plan as a user makes it: without a table, so it profiles and refines its own.
    t0 = time.perf_counter()
    p_lat = slimprune.plan(analysis, target, target="latency", importance=importance)
    plan_s = time.perf_counter() - t0
    lat = slimprune.apply(model, p_lat)
    kept_flops = p_lat.flops_after / p_lat.flops_before
    p_flops = slimprune.plan(analysis, 1.0 - kept_flops, target="flops")
    flo = slimprune.apply(model, p_flops)
    tpm, tp_ratio = torch_pruning_at(model, x, flops(lat, x))
    nets = {"original": model, "latency": lat, "flops": flo, "torch_pruning": tpm}
    dep = {k: deployed(m, CPU) for k, m in nets.items()}
    xc = x.contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {k: [] for k in nets}
    for _ in range(rounds):  # interleaved: each round times every model once
        for k, m in dep.items():
            def call(m: nn.Module = m) -> None:
                with torch.no_grad():
                    m(xc)
            times[k].append(time_ms(call, CPU, 1, min_run_time))
    med = {k: float(np.median(v)) for k, v in times.items()}
    f = {k: flops(m, x) for k, m in nets.items()}
    speedup = med["original"] / med["latency"]
    return {
        "model": name, "importance": importance, "target": target, "size": size, "rounds": rounds, "profile_s": round(profile_s, 1), "plan_s": round(plan_s, 1),
        "ms": {k: round(v, 3) for k, v in med.items()},
        "ms_spread": {k: [round(min(v), 3), round(max(v), 3)] for k, v in times.items()},
        "latency_ratio": round(med["latency"] / med["original"], 3),
        "predicted_ms": [round(p_lat.latency_before_ms or 0, 3), round(p_lat.latency_after_ms or 0, 3)],
        "prediction_error_before": round((p_lat.latency_before_ms or 0) / med["original"] - 1, 3),
        "prediction_error_after": round((p_lat.latency_after_ms or 0) / med["latency"] - 1, 3),
        "flops": f, "params": {k: params(m) for k, m in nets.items()},
        "flops_kept": round(f["latency"] / f["original"], 3),
        "params_kept": round(params(lat) / params(model), 3),
        "efficiency": round(speedup / (f["original"] / f["latency"]), 3),
        "latency_vs_flops_plan": round(med["flops"] / med["latency"] - 1, 3),
        "tp_ratio": round(tp_ratio, 4),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | px | target | latency kept (measured) | predicted kept | prediction error (orig / pruned) | FLOPs kept "
            "| params kept | efficiency | ms original | ms latency plan | ms FLOPs plan | ms Torch-Pruning "
            "| latency plan faster than FLOPs plan |\n|" + "---|" * 14)
    lines = [head]
    for r in rows:
        ms, sp = r["ms"], r["ms_spread"]

        def cell(k: str) -> str:
            return f"{ms[k]:.2f} ({sp[k][0]:.2f}–{sp[k][1]:.2f})"
        pb, pa = r["predicted_ms"]
        lines.append(
            f"| {r['model']}{'' if r.get('importance', 'bn_scale') == 'bn_scale' else ' (importance=' + r['importance'] + ')'} | {r['size']} | {r['target']} | {r['latency_ratio']:.3f} | {pa / pb:.3f} | "
            f"{100 * r['prediction_error_before']:+.1f}% / {100 * r['prediction_error_after']:+.1f}% | "
            f"{r['flops_kept']:.3f} | {r['params_kept']:.3f} | {r['efficiency']:.2f} | {cell('original')} | "
            f"{cell('latency')} | {cell('flops')} | {cell('torch_pruning')} | {100 * r['latency_vs_flops_plan']:+.1f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.3)
    ap.add_argument("--importance", default="bn_scale",
                    help="importance of the latency plan (the FLOPs plan keeps the default); 'flops' keeps the most "
                         "compute within the latency budget")
    ap.add_argument("--quick", action="store_true", help="mobilenet_v2 and resnet18 at 128 px, 3 rounds")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency.json"))
    args = ap.parse_args()
    if args.quick:
        args.models, args.size, args.rounds = ["mobilenet_v2", "resnet18"], 128, 3
    torch.set_num_threads(1)
    cache = ROOT / "benchmarks" / "results" / "latency_cache"
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        rows.append(run_model(name, args.size, args.rounds, args.min_run_time, cache, args.importance))
        print(json.dumps(rows[-1]), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
