"""Every timm architecture family through slimprune and Torch-Pruning, one model per
subprocess with a time and memory guard, written to a CSV and summarised as a table.

A family is a module of ``timm.models`` (``timm.list_modules()``); its model is the
variant with the fewest parameters whose default input is at most 224 px (where a family
has none: at most 320 px, run at that default size; test_* configs left out), up to 100M
parameters, built with random weights (``pretrained=False``; nothing is downloaded). Norm
affines are randomised and BN statistics calibrated on a batch (``tests.models.calibrated``,
as in benchmarks/zoo.py). At ratio 0.5 (``fold_bias=False, allow_inexact=False``):

* slimprune: planned, applied, ran (eval and train mode), exact against the silenced
  original (float32 at rtol 1e-4 / atol 1e-5 of the output scale; where float32 differs,
  again in float64, since random-init models can blow activations up to 1e6 and beyond),
  parameters removed, the number of barrier ops;
* Torch-Pruning 1.6.1 (``MetaPruner``, L2 magnitude, classifier ignored): ran in eval and
  train mode with the output shape unchanged, parameters removed.

    python benchmarks/timm_zoo.py --budget 1800 --out benchmarks/results/timm_zoo.csv
    python benchmarks/timm_zoo.py --models resnet18 convnext_atto --tools slimprune
    python benchmarks/timm_zoo.py --resume --out benchmarks/results/timm_zoo.csv   # only what it lacks
    python benchmarks/timm_zoo.py --summarize benchmarks/results/timm_zoo.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time


def _sibling(name: str):
    """``benchmarks/<name>.py``, loaded by its path (the folder is not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"_bench_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_in_child = _sibling("zoo").run_in_child

FIELDS = ["family", "tool", "model", "input", "planned", "applied", "ran", "exact", "params_before",
          "params_after", "removed", "barriers", "seconds", "error"]


def families(max_params: float = 100e6, max_input: int = 224, fallback_input: int = 320) -> dict[str, str]:
    """family (timm module) -> its smallest model with a default input of at most
    ``max_input`` px, or, in a family with none (inception, xception, edgenext, fastvit,
    mobilevit, ...), its smallest with at most ``fallback_input`` px; parameters counted on the
    meta device (no weights)."""
    import warnings

    import timm
    import torch

    warnings.simplefilter("ignore")
    out: dict[str, str] = {}
    for module in timm.list_modules():
        best: dict[bool, tuple[int, str]] = {}
        for name in timm.list_models(module=module):
            if name.startswith("test_"):
                continue
            try:
                cfg = timm.get_pretrained_cfg(name)
                size = max((cfg.input_size if cfg is not None else (3, 224, 224))[1:])
                if size > fallback_input:
                    continue
                with torch.device("meta"):
                    n = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
            except Exception:  # a config that does not build here: not a candidate
                continue
            small = size <= max_input
            if n <= max_params and (small not in best or n < best[small][0]):
                best[small] = (n, name)
        choice = best.get(True) or best.get(False)
        if choice is not None:
            out[module] = choice[1]
    return out


def _close(ref, small, x) -> bool:
    import torch

    sys.path.insert(0, ".")
    from tests.helpers import outputs

    with torch.no_grad():
        want, got = outputs(ref.eval()(x)), outputs(small.eval()(x))
    scale = max(float(t.abs().max()) for t in want)
    return len(want) == len(got) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(scale, 1.0)) for a, b in zip(want, got))


def child(tool: str, name: str) -> dict:
    import copy
    import warnings

    import timm
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    sys.path.insert(0, ".")
    from tests.models import calibrated  # the zoo tests' norm randomisation, shared

    model = timm.create_model(name, pretrained=False)
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn(2, *size)
    model = calibrated(model, x)
    row: dict = {"tool": tool, "model": name, "input": "x".join(map(str, size)),
                 "params_before": sum(p.numel() for p in model.parameters())}
    try:
        _child_body(tool, model, x, row)
    except Exception as exc:  # record how far it got
        row["ran"] = False
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
    return row


def _child_body(tool: str, model, x, row: dict) -> None:
    import copy
    import warnings

    import torch

    t0 = time.perf_counter()
    if tool == "slimprune":
        import slimprune

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = slimprune.plan(model, 0.5, example_inputs=(x,), fold_bias=False, allow_inexact=False)
        row["planned"] = True
        row["barriers"] = len(plan.barriers)
        small = slimprune.apply(model, plan)
        row["applied"] = True
        ref = slimprune.silence(model, plan)
        exact = _close(ref, small, x)
        if not exact:  # float32 round-off of exploding random-init activations, or a real difference?
            exact = "float64" if _close(copy.deepcopy(ref).double(), copy.deepcopy(small).double(), x.double()) else False
        row["exact"] = exact
        del caught
    else:
        import torch_pruning as tp

        small = copy.deepcopy(model)
        head = small.get_classifier() if hasattr(small, "get_classifier") else None
        ignored = [m for m in ([head] if isinstance(head, torch.nn.Module) else []) if any(True for _ in m.parameters())]
        pruner = tp.pruner.MetaPruner(small, (x,), importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=ignored)
        row["planned"] = True
        pruner.step()
        row["applied"] = True
        row["exact"] = "not checked"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    with torch.no_grad():
        want = model.eval()(x)
        got = small.eval()(x)
        copy.deepcopy(small).train()(x)
    if isinstance(want, torch.Tensor) and got.shape != want.shape:
        raise RuntimeError(f"output shape changed: {tuple(want.shape)} -> {tuple(got.shape)}")
    row["ran"] = True
    row["params_after"] = sum(p.numel() for p in small.parameters())
    row["removed"] = round(1 - row["params_after"] / row["params_before"], 4)


def run_one(tool: str, name: str, timeout: float, mem_gb: float) -> dict:
    return run_in_child("timm_zoo", tool, name, timeout, mem_gb, failed="ran", error_chars=200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="model names instead of one per family")
    ap.add_argument("--tools", nargs="*", default=["slimprune", "torch_pruning"])
    ap.add_argument("--max-params", type=float, default=100e6)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per model and tool")
    ap.add_argument("--mem-gb", type=float, default=8)
    ap.add_argument("--budget", type=float, default=float("inf"), help="stop starting models after this many seconds")
    ap.add_argument("--families", default="benchmarks/results/timm_families.json",
                    help="cache of the family -> model choice (made on first use)")
    ap.add_argument("--out", default="benchmarks/results/timm_zoo.csv")
    ap.add_argument("--summarize", metavar="CSV", help="only print the tables for a CSV written earlier")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in --out and run only the (family, tool) pairs it lacks")
    args = ap.parse_args()
    if args.summarize:
        with open(args.summarize, newline="") as f:
            rows = list(csv.DictReader(f))
        summarize(rows, list(dict.fromkeys(r["tool"] for r in rows)))
        return
    if args.models:
        chosen = {name: name for name in args.models}
    elif os.path.exists(args.families):
        with open(args.families) as f:
            chosen = json.load(f)
    else:
        chosen = families(args.max_params)
        os.makedirs(os.path.dirname(args.families) or ".", exist_ok=True)
        with open(args.families, "w") as f:
            json.dump(chosen, f, indent=1, sort_keys=True)
    tools = [t for t in args.tools if t == "slimprune" or _importable(t)]
    start, rows = time.monotonic(), []
    if args.resume and os.path.exists(args.out):
        with open(args.out, newline="") as f:
            rows = list(csv.DictReader(f))
    done = {(r["family"], r["tool"]) for r in rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        f.flush()
        for family, name in sorted(chosen.items()):
            if all((family, tool) in done for tool in tools):
                continue
            if time.monotonic() - start > args.budget:
                print(f"# time budget of {args.budget:.0f} s spent: stopped before {family}", flush=True)
                break
            for tool in tools:
                if (family, tool) in done:
                    continue
                r = run_one(tool, name, args.timeout, args.mem_gb)
                r["family"] = family
                rows.append(r)
                w.writerow(r)
                f.flush()
                print(json.dumps(r), flush=True)
    summarize(rows, tools)


def summarize(rows: list[dict], tools: list[str]) -> None:
    """Counts per tool, then one line per family."""
    def truth(v) -> bool:
        return v is True or v in ("True", "float64")

    print("| tool | families | planned | applied | ran (eval+train) | exact | removed ≥ 10% of params |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for tool in tools:
        rs = [r for r in rows if r["tool"] == tool]
        ran = [r for r in rs if truth(r.get("ran"))]
        exact = sum(1 for r in ran if truth(r.get("exact"))) if tool == "slimprune" else "not checked"
        big = sum(1 for r in ran if float(r.get("removed") or 0) >= 0.10)
        print(f"| {tool} | {len(rs)} | {sum(truth(r.get('planned')) for r in rs)} | "
              f"{sum(truth(r.get('applied')) for r in rs)} | {len(ran)} | {exact} | {big} |")
    print("\n| family | model | " + " | ".join(tools) + " |")
    print("| --- | --- |" + " --- |" * len(tools))
    for family in dict.fromkeys(r["family"] for r in rows):
        cells, name = [], ""
        for tool in tools:
            r = next((r for r in rows if r["family"] == family and r["tool"] == tool), None)
            if r is None:
                cells.append("-")
                continue
            name = r["model"]
            if not truth(r.get("ran")):
                cells.append("fails: " + str(r.get("error", ""))[:80].replace("|", "/"))
                continue
            cell = f"-{100 * float(r['removed']):.0f}% params"
            if tool == "slimprune":
                cell += {"True": ", exact", "float64": ", exact (float64)"}.get(str(r.get("exact")), ", **not exact**")
                if int(r.get("barriers") or 0):
                    cell += f", {r['barriers']} barriers"
            cells.append(cell)
        print(f"| {family} | {name} | " + " | ".join(cells) + " |")


def _importable(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
