"""Interleaved CPU latency of the network-slimming stages, all under the same conditions.

Each stage used to be timed once, right after it was produced, by :func:`slimprune.measure`
(one ``blocked_autorange`` of 1 s): the dense baseline and the slimming run in two processes at
different times, on a machine whose cores other jobs shared. A stage timed while another job
ran read up to 2.7x slow (docs/ultralytics.md). Here every model is loaded into one process
and timed in rounds, the order rotated each round, with the same input, one thread, eval mode
under ``torch.no_grad``, float32; a stage's latency is the median of its round medians and
its spread the range of those. Optionally also the deployed form (BatchNorm folded,
channels-last: :func:`slimprune.latency.deployed`) of each.

    PYTHONPATH=. python -m examples.yolo.timing runs/slim runs/dense [--rounds 7] [--deployed]

``runs/slim`` and ``runs/dense`` are the ``--out`` folders of the slimming run and of the
``--dense`` run: their checkpoints (``runs/*/weights/best.pt``) and ``result.json`` are read;
the pruned, not fine-tuned model is rebuilt from the sparse checkpoint with the run's
threshold (and checked against the run's parameter count). Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import slimprune  # noqa: E402
from slimprune.latency import deployed, time_ms  # noqa: E402

STAGES = ("dense", "sparse", "pruned", "finetuned")


def checkpoint(path: Path) -> nn.Module:
    """The model a ``best.pt`` holds (the EMA's weights), in float32 and eval mode, unfused."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float().eval()


def stage_models(slim: Path, dense: Path | None) -> dict[str, nn.Module]:
    """Every stage's model, from the two runs' folders (the pruned one rebuilt, not trained)."""
    result = json.loads((slim / "result.json").read_text())
    imgsz = int(result["config"]["imgsz"])
    models: dict[str, nn.Module] = {}
    if dense is not None:
        models["dense"] = checkpoint(dense / "runs" / "dense" / "weights" / "best.pt")
    models["sparse"] = sparse = checkpoint(slim / "runs" / "sparse" / "weights" / "best.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(sparse, threshold=result["threshold"], example_inputs=torch.rand(1, 3, imgsz, imgsz))
    models["pruned"] = slimprune.apply(sparse, plan).eval()
    models["finetuned"] = checkpoint(slim / "runs" / "finetune" / "weights" / "best.pt")
    for name in ("pruned", "finetuned"):
        params = sum(p.numel() for p in models[name].parameters())
        if params != result[name]["params"]:
            raise SystemExit(f"{name}: {params:,} parameters, but the run recorded {result[name]['params']:,}; "
                             f"these folders are not one run's")
    return models


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, min_run_time: float) -> dict[str, dict[str, float]]:
    """Each call timed once per round (``min_run_time`` seconds of torch.utils.benchmark), the
    order rotated by one each round; per call the median of its round medians and their range."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu = torch.device("cpu")
    for fn in calls.values():  # warm-up, outside the rounds
        time_ms(fn, cpu, 1, 0.1)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n].append(time_ms(calls[n], cpu, 1, min_run_time))
    return {n: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "rounds": len(t)}
            for n, t in times.items()}


def run(slim: Path, dense: Path | None, rounds: int = 7, min_run_time: float = 0.5,
        with_deployed: bool = False) -> dict[str, Any]:
    """Time every stage interleaved (see the module docstring); the result is also written to
    ``slim/timing.json``."""
    torch.set_num_threads(1)
    result = json.loads((slim / "result.json").read_text())
    imgsz = int(result["config"]["imgsz"])
    x = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    models = stage_models(slim, dense)
    calls: dict[str, Callable[[], Any]] = {}
    for name, model in models.items():
        calls[name] = lambda m=model: m(x)
        if with_deployed:
            fast = deployed(model, torch.device("cpu"))
            xc = x.contiguous(memory_format=torch.channels_last)
            calls[f"{name} (deployed)"] = lambda m=fast: m(xc)
    with torch.no_grad():
        timing = interleaved(calls, rounds, min_run_time)
    out = {"rounds": rounds, "min_run_time_s": min_run_time, "threads": 1, "imgsz": imgsz,
           "torch_threads": torch.get_num_threads(), "latency": timing}
    (slim / "timing.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slim", type=Path, help="the slimming run's --out folder")
    ap.add_argument("dense", type=Path, nargs="?", help="the --dense run's --out folder (optional)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-run-time", type=float, default=0.5, help="seconds per model per round")
    ap.add_argument("--deployed", action="store_true", help="also time each model's deployed form (BN folded)")
    args = ap.parse_args(argv)
    out = run(args.slim, args.dense, args.rounds, args.min_run_time, args.deployed)
    print(f"| model | CPU latency (ms, 1 thread, median of {out['rounds']} interleaved rounds) | range over rounds |")
    print("| --- | --- | --- |")
    for name, t in out["latency"].items():
        print(f"| {name} | {t['median_ms']:.2f} | {t['min_ms']:.2f}–{t['max_ms']:.2f} |")


if __name__ == "__main__":
    main()
