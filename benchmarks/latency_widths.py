"""What uniform narrowing buys on the CPU: torchvision's own width multipliers, FLOPs against latency.

A reference for the latency benchmark (benchmarks/latency.py, issue 13): the architecture's
designers' own narrower variants (every layer scaled alike, the classifier's 1280 inputs of
mobilenet_v2 kept), timed in the deployed form (BatchNorm folded, channels-last), one thread,
batch 1, in ``--rounds`` interleaved rounds. Efficiency is speed-up / FLOP reduction, the
figure issue 13 asks a latency plan to reach.

    python benchmarks/latency_widths.py --arch mobilenet_v2 --size 224 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slimprune  # noqa: E402
from slimprune.latency import deployed_call, time_ms  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="mobilenet_v2", help="a torchvision builder taking width_mult (mobilenet_v2, mnasnet...)")
    ap.add_argument("--widths", type=float, nargs="*", default=[1.0, 0.75, 0.5, 0.35])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=1.0)
    args = ap.parse_args()
    import torchvision

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, cpu = torch.randn(1, 3, args.size, args.size), torch.device("cpu")
    build = getattr(torchvision.models, args.arch)
    models = {w: build(width_mult=w).eval() for w in args.widths}
    flops = {w: slimprune.measure.measure(m, x, latency=False).flops for w, m in models.items()}
    params = {w: slimprune.measure.count_params(m) for w, m in models.items()}
    calls = {w: deployed_call(m, (x,), cpu) for w, m in models.items()}
    times: dict[float, list[float]] = {w: [] for w in models}
    for _ in range(args.rounds):  # interleaved: a load change hits every width alike
        for w, call in calls.items():
            times[w].append(time_ms(call, cpu, 1, args.min_run_time))
    ref = args.widths[0]
    base_ms, base_flops = statistics.median(times[ref]), flops[ref]
    print(f"| width_mult | params | GFLOPs | FLOPs kept | ms (median of {args.rounds}; min-max) | latency kept | efficiency |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for w in models:
        ms = statistics.median(times[w])
        fk, lk = flops[w] / base_flops, ms / base_ms
        print(f"| {w} | {params[w]:,} | {flops[w] / 1e9:.3f} | {fk:.3f} | {ms:.2f} ({min(times[w]):.2f}–{max(times[w]):.2f}) "
              f"| {lk:.3f} | {fk / lk:.2f} |")


if __name__ == "__main__":
    main()
