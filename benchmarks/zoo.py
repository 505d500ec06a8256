"""The torchvision zoo through slimprune (and Torch-Pruning when installed), one model per
subprocess with a time and memory guard, written to a CSV and summarised as a table.

For each classification, segmentation, detection and video model: prune at ratio 0.5
(random init, BN statistics calibrated on a batch), run eval and train mode (detectors:
with targets, losses must be finite), compare with the silenced original (slimprune;
detectors region by region) and record params/FLOPs before and after, seconds and peak
memory (RSS growth over the loaded model). Models and inputs come from tests/test_zoo.py.

    python benchmarks/zoo.py --out zoo.csv                 # every model up to 300M parameters
    python benchmarks/zoo.py --models resnet50 swin_t --tools slimprune
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time

FIELDS = ["tool", "model", "ok", "exact", "params_before", "params_after", "flops_before", "flops_after",
          "seconds", "peak_mb", "weights_mb", "error"]


def _heads(model):
    """Layers Torch-Pruning must not prune: classifier outputs and detection predictors."""
    import torch

    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features in (1000, 400)]
    heads += [m for n, m in model.named_modules() if n.endswith(("classifier.4", "aux_classifier.4"))]
    heads += [m for n, m in model.named_modules()
              if any(k in n for k in ("predictor", "cls_logits", "bbox_pred", "bbox_reg", "bbox_ctrness",
                                      "classification_head", "regression_head"))
              and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return heads


def child(tool: str, name: str) -> dict:
    import copy
    import warnings

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, ".")
    from tests.helpers import assert_close, outputs
    from tests.models import calibrated
    from tests.test_zoo import (DETECTION, assert_regions_match, build, calibrated_detector, detection_targets,
                                example_input)

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    x = example_input(name)
    detector = name in DETECTION
    model = calibrated_detector(build(name)) if detector else calibrated(build(name), x)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def flops(m):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m.eval()(x)
        return fc.get_total_flops()

    row = {"tool": tool, "model": name, "weights_mb": round(weights_mb, 1),
           "params_before": sum(p.numel() for p in model.parameters()), "flops_before": flops(model)}
    t0 = time.perf_counter()
    if tool == "slimprune":
        import slimprune

        plan = slimprune.plan(model, 0.5, example_inputs=(x,), fold_bias=False, allow_inexact=False)
        small = slimprune.apply(model, plan)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
        ref = slimprune.silence(model, plan)
        try:
            if plan.regions:
                assert_regions_match(ref, small, plan, (x,))
            else:
                with torch.no_grad():
                    want, got = outputs(ref.eval()(x)), outputs(small.eval()(x))
                scale = max(float(t.abs().max()) for t in want)
                assert_close(want, got, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
            row["exact"] = True
        except AssertionError:
            row["exact"] = False
    else:
        import torch_pruning as tp

        small = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(small, (x,), importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=_heads(small))
        pruner.step()
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
        row["exact"] = "not checked"
    with torch.no_grad():
        small.eval()(x)
        if detector:  # train mode: the losses, from targets
            losses = copy.deepcopy(small).train()(x, detection_targets(name, x))
            if not all(torch.isfinite(v) for v in losses.values()):
                raise RuntimeError("train-mode losses are not finite")
        else:
            copy.deepcopy(small).train()(x)  # train mode too (aux heads, batch statistics)
    row.update(ok=True, params_after=sum(p.numel() for p in small.parameters()), flops_after=flops(small),
               seconds=round(seconds, 3),
               peak_mb=round(peak, 1))
    return row


def run_in_child(script: str, tool: str, name: str, timeout: float, mem_gb: float, *,
                 failed: str = "ok", error_chars: int = 160) -> dict:
    """``benchmarks/<script>.py``'s ``child(tool, name)`` in a fresh interpreter, under an
    address-space limit of ``mem_gb`` and a wall-clock ``timeout``: its JSON row, or a row
    with ``failed`` set to False and the error (the last stderr line) when it did not finish."""
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({int(mem_gb * 2**30)}, {int(mem_gb * 2**30)}))"
    code = (f"{limit}; import sys, json; sys.argv=[{script!r}]; sys.path.insert(0, 'benchmarks'); import {script}; "
            f"print(json.dumps({script}.child({tool!r}, {name!r})))")
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "model": name, failed: False, "error": f"over {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["killed (memory guard?)"])[-1]
        return {"tool": tool, "model": name, failed: False, "error": err[:error_chars]}
    return json.loads(lines[-1])


def run_one(tool: str, name: str, timeout: float, mem_gb: float) -> dict:
    return run_in_child("zoo", tool, name, timeout, mem_gb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--tools", nargs="*", default=["slimprune", "torch_pruning"])
    ap.add_argument("--max-params", type=float, default=300e6)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--mem-gb", type=float, default=12)
    ap.add_argument("--out", default="zoo.csv")
    ap.add_argument("--summarize", metavar="CSV", help="only print the tables for a CSV written earlier")
    args = ap.parse_args()
    if args.summarize:
        sys.path.insert(0, ".")
        with open(args.summarize, newline="") as f:
            rows = list(csv.DictReader(f))
        summarize(rows, list(dict.fromkeys(r["tool"] for r in rows)))
        return
    import torch
    import torchvision

    sys.path.insert(0, ".")
    from tests.test_zoo import CLASSIFICATION, DETECTION, SEGMENTATION, VIDEO, build

    names = args.models or CLASSIFICATION + SEGMENTATION + DETECTION + VIDEO
    tools = [t for t in args.tools if t == "slimprune" or _importable(t)]
    rows = []
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        w.writeheader()
        for name in names:
            n = sum(p.numel() for p in build(name).parameters())
            if n > args.max_params:
                continue
            for tool in tools:
                r = run_one(tool, name, args.timeout, args.mem_gb)
                rows.append(r)
                w.writerow(r)
                f.flush()
                print(json.dumps(r), flush=True)
    print(f"\n# torch {torch.__version__}, torchvision {torchvision.__version__}, ratio 0.5")
    summarize(rows, tools)


def _family(name: str) -> str:
    from tests.test_zoo import DETECTION, SEGMENTATION, VIDEO

    return "detection" if name in DETECTION else "segmentation" if name in SEGMENTATION else \
        "video" if name in VIDEO else "classification"


def summarize(rows: list[dict], tools: list[str]) -> None:
    """Markdown tables: per tool and family, then every model one of the tools failed on."""
    def truth(v) -> bool:
        return v is True or v == "True"

    print("| tool | family | models | ran (eval+train) | exact | slowest (s) | largest peak memory / weights |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for tool in tools:
        for fam in ("classification", "segmentation", "detection", "video", "all"):
            rs = [r for r in rows if r["tool"] == tool and (fam == "all" or _family(r["model"]) == fam)]
            if not rs:
                continue
            ok = [r for r in rs if truth(r.get("ok"))]
            exact = sum(1 for r in ok if truth(r.get("exact")))
            slow = max(ok, key=lambda r: float(r["seconds"]), default=None)
            mem = max(ok, key=lambda r: float(r["peak_mb"]) / max(float(r["weights_mb"]), 1e-9), default=None)
            ratio = f"{float(mem['peak_mb']) / max(float(mem['weights_mb']), 1e-9):.2f}x" if mem else "-"
            print(f"| {tool} | {'**all**' if fam == 'all' else fam} | {len(rs)} | {len(ok)} | "
                  f"{exact if tool == 'slimprune' else 'not checked'} | "
                  f"{slow['model'] + ' ' + str(slow['seconds']) if slow else '-'} | "
                  f"{mem['model'] + ' ' + ratio if mem else '-'} |")
    failed = sorted({r["model"] for r in rows if not truth(r.get("ok")) or r.get("exact") in (False, "False")})
    if failed:
        print("\n| model | " + " | ".join(tools) + " |")
        print("| --- |" + " --- |" * len(tools))
        for name in failed:
            cells = []
            for tool in tools:
                r = next((r for r in rows if r["tool"] == tool and r["model"] == name), None)
                if r is None:
                    cells.append("-")
                elif not truth(r.get("ok")):
                    cells.append("fails: " + str(r.get("error", ""))[:90].replace("|", "/"))
                elif r.get("exact") in (False, "False"):
                    cells.append("runs, **not exact**")
                else:
                    cells.append("ok" + (", exact" if truth(r.get("exact")) else ""))
            print(f"| {name} | " + " | ".join(cells) + " |")


def _importable(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
