"""How fast can a channel-pruned EagleEye get on one CPU thread? The latency floor, measured.

Builds the EagleEye baseline and pruned copies of it at the widths that several plans give
(FLOPs targets ranked by |γ| per FLOP, widths rounded to 8 or 16, and the narrowest
model: every prunable channel group at ``round_to`` channels), then times them all with the
example's own code (``examples.eagleeye.latency.time_models``: batch 1, BatchNorm folded,
both memory layouts, every model interleaved, the faster layout kept) and under onnxruntime
(``time_onnxruntime``), and prints which operations take the time in the narrowest model
(``torch.profiler`` on whole forward passes, so no per-node interpreter overhead).

Only widths matter for latency, so the weights are random unless ``--sparse`` names a
sparsity-trained checkpoint (``runs/.../sparse/last.pt``) whose |γ| then rank the channels.

    PYTHONPATH=. python benchmarks/eagleeye_floor.py --flops 0.66 0.70 0.786 --repeats 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slimprune  # noqa: E402
from examples.eagleeye.checkpoints import load_model  # noqa: E402
from examples.eagleeye.latency import deployed, time_models, time_onnxruntime  # noqa: E402
from examples.eagleeye.model import EagleEye  # noqa: E402
from examples.eagleeye.policy import apply_plan, plan_fraction, removed_flops, removed_params  # noqa: E402


def _random_gamma(model: torch.nn.Module) -> None:
    """Give every BatchNorm γ a random positive value (so that a |γ| ranking is not all ties)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.05)


def build(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    if args.sparse:
        model, _ = load_model(args.sparse)
    else:
        torch.manual_seed(0)
        model = EagleEye().eval()
        _random_gamma(model)
    model = model.eval()
    analysis = slimprune.analyze(model, example_inputs=(torch.rand(2, 3, 192, 192),))
    models = {"baseline": model}
    for round_to in args.round_to:
        for f in args.flops:
            try:
                p = plan_fraction(analysis, f, target="flops", round_to=round_to)
            except slimprune.InfeasiblePlanError as e:
                print(f"flops {f} round_to {round_to}: infeasible ({e})")
                continue
            name = f"flops{f:g}/r{round_to}"
            models[name] = apply_plan(model, p)
            print(f"{name}: params -{removed_params(p):.1%}, FLOPs -{removed_flops(p):.1%}")
        groups = analysis.graph.groups
        most = sum(len(g) - min(len(g), round_to) for g in groups) / sum(len(g) for g in groups)
        p = slimprune.plan(analysis, most, min_channels=round_to, round_to=round_to)
        name = f"narrowest/r{round_to}"
        models[name] = apply_plan(model, p)
        print(f"{name}: params -{removed_params(p):.1%}, FLOPs -{removed_flops(p):.1%}")
    return models


def cpu_times(models: dict[str, torch.nn.Module], size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and thread-CPU milliseconds of one folded forward pass per model and layout, interleaved.

    The thread's CPU time (``time.thread_time``) leaves out the time other processes hold the
    core, so on a shared machine it is closer to what a quiet one would measure than the wall
    time (caches still suffer from the sharing)."""
    import statistics

    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    runs = []
    for name, model in models.items():
        for layout in ("contiguous", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            runs.append((name, layout, deployed(model, "folded", layout), x.contiguous(memory_format=fmt)))
    wall: dict[tuple[str, str], list[float]] = {(n, lay): [] for n, lay, _, _ in runs}
    cpu: dict[tuple[str, str], list[float]] = {(n, lay): [] for n, lay, _, _ in runs}
    with torch.inference_mode():
        for _, _, m, inp in runs:
            for _ in range(3):
                m(inp)
        for i in range(repeats):
            shift = i % len(runs)
            for name, layout, m, inp in runs[shift:] + runs[:shift]:
                w, c = time.perf_counter(), time.thread_time()
                m(inp)
                cpu[(name, layout)].append((time.thread_time() - c) * 1e3)
                wall[(name, layout)].append((time.perf_counter() - w) * 1e3)
    out = {}
    for name in models:
        best = min(("contiguous", "channels_last"), key=lambda lay: statistics.median(cpu[(name, lay)]))
        out[name] = {"layout": best, "cpu_ms": statistics.median(cpu[(name, best)]),
                     "wall_ms": statistics.median(wall[(name, best)])}
    return out


def torchscript(model: torch.nn.Module, layout: str, x: torch.Tensor, how: str) -> torch.nn.Module:
    """The BatchNorm-folded model as TorchScript, frozen and optimised for inference.

    ``how`` is ``"trace"`` (``torch.jit.trace`` of the fx-folded module on ``x``) or ``"script"``
    (``torch.jit.script`` of the unfolded module: ``freeze`` folds its BatchNorm); then ``torch.jit.freeze`` (weights become constants, so the
    graph passes can fold them) and ``torch.jit.optimize_for_inference`` (conv/add/relu
    fusion and, on CPU, oneDNN-friendly rewrites)."""
    with torch.no_grad():
        if how == "trace":
            jit = torch.jit.trace(deployed(model, "folded", layout), x)
        else:  # fx's folded GraphModule does not script (its annotations); freeze folds BatchNorm itself
            jit = torch.jit.script(deployed(model, "eager", layout))
        return torch.jit.optimize_for_inference(torch.jit.freeze(jit.eval()))


def runtime_times(models: dict[str, torch.nn.Module], size: int, repeats: int, forms: list[str]) -> dict:
    """Thread-CPU and wall milliseconds (medians) of one batch-1 pass of every model in every deployed form,
    every (model, form, layout) interleaved pass by pass in a rotating order.

    Forms: ``folded`` (eager PyTorch, BatchNorm folded: what the targets use), ``trace``/``script``
    (TorchScript of it, frozen, ``optimize_for_inference``), ``ort`` (the folded model exported to
    ONNX and run by onnxruntime's CPU provider with one intra-op thread, which runs on the calling
    thread, so ``time.thread_time`` counts it). PyTorch forms are timed in NCHW and NHWC and the
    faster kept; onnxruntime takes NCHW."""
    import statistics

    from slimprune.latency import BackendError, onnxruntime_session

    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    runs = []  # (key, callable)
    for name, model in models.items():
        for form in forms:
            if form == "ort":
                try:
                    sess, feed = onnxruntime_session(model, x, threads=1)
                except BackendError as e:
                    print(f"{name}: onnxruntime skipped ({e})")
                    continue
                runs.append(((name, form, "contiguous"), lambda s=sess, f=feed: s.run(None, f)))
                continue
            for layout in ("contiguous", "channels_last"):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                inp = x.contiguous(memory_format=fmt)
                try:
                    m = deployed(model, "folded", layout) if form == "folded" else torchscript(model, layout, inp, form)
                except Exception as e:  # noqa: BLE001  (a form that does not build is reported, not fatal)
                    print(f"{name}: {form} skipped ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})")
                    continue
                runs.append(((name, form, layout), lambda m=m, inp=inp: m(inp)))
    wall: dict[tuple[str, str, str], list[float]] = {k: [] for k, _ in runs}
    cpu: dict[tuple[str, str, str], list[float]] = {k: [] for k, _ in runs}
    with torch.inference_mode():
        for _, call in runs:
            for _ in range(5):  # TorchScript's profiling executor optimises on the first calls
                call()
        for i in range(repeats):
            shift = i % len(runs)
            for key, call in runs[shift:] + runs[:shift]:
                w, c = time.perf_counter(), time.thread_time()
                call()
                cpu[key].append((time.thread_time() - c) * 1e3)
                wall[key].append((time.perf_counter() - w) * 1e3)
    out: dict[tuple[str, str], dict[str, float | str]] = {}
    for name, form, layout in cpu:
        med_c, med_w = statistics.median(cpu[(name, form, layout)]), statistics.median(wall[(name, form, layout)])
        best = out.get((name, form))
        if best is None or med_c < best["cpu_ms"]:
            out[(name, form)] = {"layout": layout, "cpu_ms": med_c, "wall_ms": med_w}
    return out


def op_costs(size: int, repeats: int) -> None:
    """Thread-CPU milliseconds of single operations the narrowest model is made of, in both layouts:
    the stem's first convolution (3 input channels at full resolution) and the per-call cost of
    the small convolutions and activations."""
    import statistics

    s2, s8 = size // 2, size // 8
    cases = [
        ("stem conv 3->16, stride 2", torch.nn.Conv2d(3, 16, 3, 2, 1), (3, size, size)),
        ("stem conv 3->8, stride 2", torch.nn.Conv2d(3, 8, 3, 2, 1), (3, size, size)),
        ("depthwise 3x3, 8 ch", torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8), (8, s8, s8)),
        ("depthwise 3x3, 64 ch", torch.nn.Conv2d(64, 64, 3, 1, 1, groups=64), (64, s8, s8)),
        ("depthwise 3x3, 8 ch, 6x6", torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8), (8, 6, 6)),
        ("pointwise 8->8", torch.nn.Conv2d(8, 8, 1), (8, s8, s8)),
        ("pointwise 64->64", torch.nn.Conv2d(64, 64, 1), (64, s8, s8)),
        ("pointwise 8->8, 6x6", torch.nn.Conv2d(8, 8, 1), (8, 6, 6)),
        ("leaky_relu 8 ch", torch.nn.LeakyReLU(0.1, inplace=True), (8, s8, s8)),
        ("leaky_relu 8 ch at 1/2 size", torch.nn.LeakyReLU(0.1, inplace=True), (8, s2, s2)),
    ]
    print(f"\n| operation | input | NCHW CPU (ms) | NHWC CPU (ms) |\n| --- | --- | --- | --- |")
    with torch.inference_mode():
        for label, module, shape in cases:
            row = []
            for fmt in (torch.contiguous_format, torch.channels_last):
                m = module.eval().to(memory_format=fmt)
                x = torch.rand(1, *shape).contiguous(memory_format=fmt)
                for _ in range(5):
                    m(x)
                t = []
                for _ in range(repeats):
                    c = time.thread_time()
                    m(x)
                    t.append((time.thread_time() - c) * 1e3)
                row.append(statistics.median(t))
            print(f"| {label} | {'x'.join(map(str, shape))} | {row[0]:.3f} | {row[1]:.3f} |")


def profile(model: torch.nn.Module, size: int, layout: str, top: int) -> None:
    """Self CPU time per operator of whole deployed forward passes (torch.profiler)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    m = deployed(model, "folded", layout)
    x = torch.rand(1, 3, size, size).contiguous(memory_format=fmt)
    passes = 50
    with torch.inference_mode():
        for _ in range(5):
            m(x)
        with tprofile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(passes):
                m(x)
    events = prof.key_averages(group_by_input_shape=True)
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    total = sum(e.self_cpu_time_total for e in events) / passes / 1e3
    print(f"  profiler self-CPU total {total:.2f} ms/pass ({layout}); slowest operators:")
    for e in rows:
        print(f"  {e.self_cpu_time_total / passes / 1e3:7.3f} ms  x{e.count // passes:<3d} {e.key:32s} {str(e.input_shapes)[:90]}")
    by_op: dict[str, float] = {}
    for e in events:
        by_op[e.key] = by_op.get(e.key, 0.0) + e.self_cpu_time_total / passes / 1e3
    print("  by operator: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sparse", help="a sparsity-trained checkpoint whose |γ| rank the channels (default: random)")
    ap.add_argument("--flops", type=float, nargs="*", default=[0.66, 0.70, 0.786])
    ap.add_argument("--round-to", type=int, nargs="*", default=[8, 16])
    ap.add_argument("--size", type=int, default=384, help="the report's latency size")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="only the thread-CPU-time table (robust to other processes on the core), then the profiles")
    ap.add_argument("--ops", action="store_true", help="only time single operations (thread CPU time)")
    ap.add_argument("--runtimes", nargs="*", choices=("folded", "trace", "script", "ort"),
                    help="only the table of deployed forms (eager folded, TorchScript traced/scripted + frozen + "
                         "optimize_for_inference, onnxruntime), all interleaved; thread CPU and wall time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.ops:
        op_costs(args.size, args.repeats)
        return
    models = build(args)
    if args.runtimes is not None:
        forms = args.runtimes or ["folded", "trace", "script", "ort"]
        started = time.perf_counter()
        table = runtime_times(models, args.size, args.repeats, forms)
        base = table[("baseline", "folded")] if ("baseline", "folded") in table else None
        print(f"\ntimed in {time.perf_counter() - started:.0f} s; batch 1, {args.size} px, 1 thread, "
              f"{args.repeats} passes of every (model, form, layout) interleaved; speed-ups against the "
              "eager folded baseline (and, in brackets, against the baseline in the same form)")
        print("| model | form | layout | thread CPU (ms) | speed-up (CPU) | wall (ms) | speed-up (wall) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for (name, form), t in table.items():
            same = table.get(("baseline", form))
            cells = []
            for unit in ("cpu_ms", "wall_ms"):
                ref = f"{base[unit] / t[unit]:.2f}x" if base else "-"
                cells.append(f"{t[unit]:.2f} | {ref} ({same[unit] / t[unit]:.2f}x)")
            print(f"| {name} | {form} | {t['layout']} | " + " | ".join(cells) + " |")
        return
    if args.cpu_time:
        table = cpu_times(models, args.size, args.repeats)
        base = table["baseline"]
        print(f"\nbatch 1, {args.size} px, 1 thread, BatchNorm folded, {args.repeats} interleaved passes, faster layout")
        print("| model | layout | thread CPU (ms) | speed-up (CPU) | wall (ms) | speed-up (wall) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, t in table.items():
            print(f"| {name} | {t['layout']} | {t['cpu_ms']:.2f} | {base['cpu_ms'] / t['cpu_ms']:.2f}x | "
                  f"{t['wall_ms']:.2f} | {base['wall_ms'] / t['wall_ms']:.2f}x |")
        for name in ("baseline", *[n for n in models if n.startswith("narrowest")]):
            print(f"\n{name}:")
            profile(models[name], args.size, table[name]["layout"], args.top)
        return
    started = time.perf_counter()
    timings = time_models(models, args.size, 1, args.repeats, args.rounds)
    base = timings["baseline"].median_ms
    onnx = {} if args.no_onnx else time_onnxruntime(models, args.size, 1, args.rounds, min_run_time=1.0).get("ms", {})
    print(f"\ntimed in {time.perf_counter() - started:.0f} s; batch 1, {args.size} px, 1 thread, {args.repeats} passes")
    print("| model | folded (ms) | layout | speed-up | eager NCHW / NHWC (ms) | onnxruntime (ms) | ort speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t in timings.items():
        ort = onnx.get(name)
        ort_txt = f"{ort:.2f} | {onnx['baseline'] / ort:.2f}x" if ort else "- | -"
        print(f"| {name} | {t.median_ms:.2f} | {t.layout} | {base / t.median_ms:.2f}x | "
              f"{t.by_setting['eager/contiguous']:.2f} / {t.by_setting['eager/channels_last']:.2f} | {ort_txt} |")
    for name in ("baseline", *[n for n in models if n.startswith("narrowest")]):
        print(f"\n{name}:")
        profile(models[name], args.size, timings[name].layout, args.top)


if __name__ == "__main__":
    main()
