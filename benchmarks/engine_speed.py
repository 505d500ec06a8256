"""Wall time of plan + apply, slimprune against Torch-Pruning, measured in the same run.

Each model is measured in its own subprocess (fresh interpreter, time limit) that runs the
two tools in turn, ``--repeats`` times each (slimprune, Torch-Pruning, slimprune, ...), so a
loaded moment of a shared machine falls on both rather than deciding a row. A row reports
each tool's median wall time, the ratio of the medians, the spread of the ratios of the
repeats (each slimprune run against the Torch-Pruning run next to it), and the ratio of the
median CPU times of the process (less disturbed by other jobs than wall time). Both rank channels by L2 magnitude (slimprune:
``importance="l2"``). Torch-Pruning is measured with its standard recipe
(DependencyGraph + MetaPruner, L2 magnitude, ratio 0.5, classifier ignored) when
``torch_pruning`` is importable; it is not a dependency of slimprune.

    python benchmarks/engine_speed.py                 # the full table (several minutes)
    python benchmarks/engine_speed.py --models resnet50 --chains 100
    python benchmarks/engine_speed.py --reuse resnet18 mobilenet_v2   # only the reuse table

The second table (``--reuse``) shows what one analysis saves: the first ``plan(model, 0.5)``
(trace, shapes, graph, scores, solve, probe) against ``plan(analysis, ...)`` on an
analysis made once, both for the same options again (the probe's result is cached) and
for a different ratio each time (0.3 ... 0.7: a new probe each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODELS = ["resnet50", "densenet121", "densenet201", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny",
          "regnet_y_400mf"]
CHAINS = [100, 1000, 5000]
REUSE_MODELS = ["resnet18", "mobilenet_v2"]
REUSE_RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7]


def build(spec: str):
    import torch
    from torch import nn

    if spec.startswith("chain"):
        n = int(spec[5:])
        layers = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
        for _ in range(n):
            layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
        for m in layers:  # variance-preserving init: default init decays activations into
            if isinstance(m, nn.Conv2d):  # denormal floats after ~50 layers, and every forward crawls
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        return nn.Sequential(*layers).eval(), torch.randn(1, 3, 8, 8)
    import torchvision

    return torchvision.models.get_model(spec, weights=None).eval(), torch.randn(1, 3, 224, 224)


def _one_run(tool: str, model, x):
    """One plan + apply by ``tool``: (the pruned model, wall s, CPU s of this process)."""
    import copy

    import torch

    if tool == "slimprune":
        import slimprune

        t0, c0 = time.perf_counter(), time.process_time()
        small = slimprune.prune(model, 0.5, importance="l2", example_inputs=x)
        return small, time.perf_counter() - t0, time.process_time() - c0
    import torch_pruning as tp

    m = copy.deepcopy(model)  # outside the timing: Torch-Pruning prunes in place
    last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1:]
    t0, c0 = time.perf_counter(), time.process_time()
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=last)
    pruner.step()
    return m, time.perf_counter() - t0, time.process_time() - c0


def child(tools: list[str], spec: str, repeats: int, threads: int) -> None:
    """Measure one model with every tool, alternating; print one JSON line per run."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, x = build(spec)
    before = sum(p.numel() for p in model.parameters())
    for i in range(repeats):
        for tool in tools:
            small, wall, cpu = _one_run(tool, model, x)
            print(json.dumps({"tool": tool, "model": spec, "run": i, "wall_s": wall, "cpu_s": cpu,
                              "params": sum(p.numel() for p in small.parameters()), "params_before": before}),
                  flush=True)


def reuse_child(spec: str, repeats: int, threads: int) -> None:
    """Time plan(model) against plan(analysis) for one model; print one JSON line."""
    import torch

    import slimprune

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, x = build(spec)
    slimprune.plan(model, 0.5, importance="l2", example_inputs=x)  # warm-up: imports, first-call caches

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    first = statistics.median(timed(lambda: slimprune.plan(model, 0.5, importance="l2", example_inputs=x)) for _ in range(repeats))
    analyse = statistics.median(timed(lambda: slimprune.analyze(model, x)) for _ in range(repeats))
    analysis = slimprune.analyze(model, x)
    slimprune.plan(analysis, 0.5, importance="l2")
    same = statistics.median(timed(lambda: slimprune.plan(analysis, 0.5, importance="l2")) for _ in range(repeats))
    other = statistics.median(timed(lambda: slimprune.plan(analysis, r, importance="l2")) for r in REUSE_RATIOS)
    assert slimprune.plan(analysis, 0.5, importance="l2").to_dict() == slimprune.plan(model, 0.5, importance="l2", example_inputs=x).to_dict()
    print(json.dumps({"model": spec, "first_s": first, "analyze_s": analyse, "same_s": same, "other_s": other}))


def reuse_table(specs: list[str], repeats: int, timeout: float, threads: int) -> None:
    print(f"# plan(model) vs plan(analysis), median of {repeats} (other ratios: median over "
          f"{REUSE_RATIOS}); {threads} thread(s); 1x3x224x224")
    print("| model | plan(model) (s) | analyze (s) | plan(analysis), same options (s) | ratio | "
          "plan(analysis), another ratio (s) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in specs:
        cmd = [sys.executable, __file__, "--reuse-child", spec, "--repeats", str(repeats), "--threads", str(threads)]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            r = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
        except (subprocess.TimeoutExpired, IndexError):
            print(f"| {spec} | failed | | | | | |", flush=True)
            continue
        print(f"| {spec} | {r['first_s']:.3f} | {r['analyze_s']:.3f} | {r['same_s']:.4f} | "
              f"{r['same_s'] / r['first_s']:.3f} | {r['other_s']:.4f} | {r['other_s'] / r['first_s']:.3f} |", flush=True)


def measure(tools: list[str], spec: str, repeats: int, timeout: float, threads: int) -> dict[str, dict]:
    """Per tool: its runs' wall and CPU times and params, or an error (runs finished before a
    timeout count; a tool with none reports the timeout)."""
    cmd = [sys.executable, __file__, "--child", ",".join(tools), spec, "--repeats", str(repeats),
           "--threads", str(threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * len(tools))
        stdout, err = out.stdout, (out.stderr.strip().splitlines() or ["?"])[-1] if out.returncode else ""
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = f"over {timeout:.0f} s"
    runs = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    res: dict[str, dict] = {}
    for tool in tools:
        mine = [r for r in runs if r["tool"] == tool]
        if not mine:
            res[tool] = {"error": (err or "no output")[:80]}
            continue
        res[tool] = {"wall": [r["wall_s"] for r in mine], "cpu": [r["cpu_s"] for r in mine],
                     "params": mine[-1]["params"], "partial": len(mine) < repeats}
    return res


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def row(spec: str, s: dict, t: dict) -> str:
    """One table row from two tools' runs (see measure)."""

    def cell(r: dict) -> str:
        if "wall" not in r:
            return r.get("error", "n/a")
        return f"{statistics.median(r['wall']):.3f}" + (f" ({len(r['wall'])} runs)" if r["partial"] else "")

    if "wall" in s and "wall" in t:
        ratio = f"{statistics.median(s['wall']) / statistics.median(t['wall']):.2f}"
        each = [a / b for a, b in zip(s["wall"], t["wall"])]
        spread = f"{min(each):.2f}–{max(each):.2f}"
        cpu = f"{statistics.median(s['cpu']) / statistics.median(t['cpu']):.2f}"
        params = f"{s['params']:,} / {t['params']:,}"
    else:
        ratio = spread = cpu = "n/a"
        params = f"{s['params']:,}" if "params" in s else "n/a"
    return f"| {spec} | {cell(s)} | {cell(t)} | {ratio} | {spread} | {cpu} | {params} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--chains", nargs="*", type=int, default=CHAINS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps timings stable on a shared machine)")
    ap.add_argument("--child", nargs=2, metavar=("TOOLS", "MODEL"), help="(internal) comma-separated tools, one model")
    ap.add_argument("--reuse", nargs="*", metavar="MODEL",
                    help="print only the reuse table, for these models (default: resnet18 mobilenet_v2)")
    ap.add_argument("--no-reuse", action="store_true", help="skip the reuse table")
    ap.add_argument("--reuse-child", metavar="MODEL")
    args = ap.parse_args()
    if args.child:
        child(args.child[0].split(","), args.child[1], args.repeats, args.threads)
        return
    if args.reuse_child:
        reuse_child(args.reuse_child, args.repeats, args.threads)
        return
    if args.reuse is not None:
        reuse_table(args.reuse or REUSE_MODELS, args.repeats, args.timeout, args.threads)
        return
    try:
        import torch_pruning  # noqa: F401

        tools = ["slimprune", "torch_pruning"]
    except ImportError:
        tools = ["slimprune"]
    import torch

    print(f"# plan+apply wall time, median of {args.repeats} runs per tool, the tools alternating in one process; "
          f"torch {torch.__version__}, {args.threads} thread(s); ratio 0.5; torchvision models at 1x3x224x224, "
          f"chains at 1x3x8x8; load average before: {_load()}")
    print("| model | slimprune (s) | Torch-Pruning (s) | slimprune / TP | ratio of each run (min–max) | "
          "slimprune / TP, CPU | params after (slimprune / TP) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in list(args.models) + [f"chain{n}" for n in args.chains]:
        res = measure(tools, spec, args.repeats, args.timeout, args.threads)
        print(row(spec, res.get("slimprune", {}), res.get("torch_pruning", {})), flush=True)
    print(f"# load average after: {_load()}")
    if not args.no_reuse:
        print()
        reuse_table(REUSE_MODELS, args.repeats, args.timeout, args.threads)


if __name__ == "__main__":
    main()
