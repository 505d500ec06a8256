"""The torchvision zoo through slimprune (and Torch-Pruning when installed), one model per
subprocess with a time and memory guard, written to a CSV and summarised as a table.

For each model: prune at ratio 0.5 (random init, BN statistics calibrated on a batch),
run eval and train mode, compare with the silenced original (slimprune) and record
params/FLOPs before and after, seconds and peak memory (RSS growth over the loaded model).

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


def _size(name: str) -> int:
    if name.startswith(("vit_", "maxvit")):
        return 224
    return 96 if name == "inception_v3" else 64


def _build(name: str):
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models.segmentation):
        kw = {} if name.startswith("lraspp") else {"aux_loss": True}
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kw)
    return torchvision.models.get_model(name, weights=None)


def child(tool: str, name: str) -> dict:
    import copy
    import warnings

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, ".")
    from tests.helpers import outputs
    from tests.test_zoo import calibrated

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    size = _size(name)
    x = torch.randn(2, 3, size, size)
    model = calibrated(_build(name), x)
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

        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False, allow_inexact=False)
        small = slimprune.apply(model, plan)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
        with torch.no_grad():
            want = outputs(slimprune.silence(model, plan).eval()(x))
            got = outputs(small.eval()(x))
        scale = max(float(t.abs().max()) for t in want)
        row["exact"] = all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
                           for a, b in zip(want, got))
    else:
        import torch_pruning as tp

        small = copy.deepcopy(model)
        heads = [m for m in small.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
        heads += [m for n, m in small.named_modules() if n.endswith(("classifier.4", "aux_classifier.4"))]
        pruner = tp.pruner.MetaPruner(small, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=heads)
        pruner.step()
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0
        row["exact"] = "not checked"
    with torch.no_grad():
        small.eval()(x)
        copy.deepcopy(small).train()(x)  # train mode too (aux heads, batch statistics)
    row.update(ok=True, params_after=sum(p.numel() for p in small.parameters()), flops_after=flops(small),
               seconds=round(seconds, 3),
               peak_mb=round(peak, 1))
    return row


def run_one(tool: str, name: str, timeout: float, mem_gb: float) -> dict:
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({int(mem_gb * 2**30)}, {int(mem_gb * 2**30)}))"
    code = f"{limit}; import sys, json; sys.argv=['zoo']; sys.path.insert(0, 'benchmarks'); import zoo; print(json.dumps(zoo.child({tool!r}, {name!r})))"
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "model": name, "ok": False, "error": f"over {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        err = (p.stderr.strip().splitlines() or ["killed (memory guard?)"])[-1]
        return {"tool": tool, "model": name, "ok": False, "error": err[:160]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--tools", nargs="*", default=["slimprune", "torch_pruning"])
    ap.add_argument("--max-params", type=float, default=300e6)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--mem-gb", type=float, default=12)
    ap.add_argument("--out", default="zoo.csv")
    args = ap.parse_args()
    import torch
    import torchvision

    names = args.models or (torchvision.models.list_models(module=torchvision.models)
                            + torchvision.models.list_models(module=torchvision.models.segmentation))
    tools = [t for t in args.tools if t == "slimprune" or _importable(t)]
    rows = []
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        w.writeheader()
        for name in names:
            n = sum(p.numel() for p in _build(name).parameters())
            if n > args.max_params:
                continue
            for tool in tools:
                r = run_one(tool, name, args.timeout, args.mem_gb)
                rows.append(r)
                w.writerow(r)
                f.flush()
                print(json.dumps(r), flush=True)
    print(f"\n# torch {torch.__version__}, torchvision {torchvision.__version__}, ratio 0.5")
    print("| tool | models | ran (eval+train) | exact | slowest (s) | largest peak memory / weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    for tool in tools:
        rs = [r for r in rows if r["tool"] == tool]
        ok = [r for r in rs if r.get("ok")]
        exact = sum(1 for r in ok if r.get("exact") is True)
        slow = max(ok, key=lambda r: r["seconds"], default=None)
        mem = max(ok, key=lambda r: r["peak_mb"] / max(r["weights_mb"], 1e-9), default=None)
        print(f"| {tool} | {len(rs)} | {len(ok)} | {exact if tool == 'slimprune' else 'not checked'} | "
              f"{slow['model'] + ' ' + str(slow['seconds']) if slow else '-'} | "
              f"{mem['model'] + ' ' + str(round(mem['peak_mb'] / max(mem['weights_mb'], 1e-9), 2)) + 'x' if mem else '-'} |")


def _importable(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
