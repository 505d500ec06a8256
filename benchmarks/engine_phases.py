"""Where ``slimprune.prune(model, 0.5, importance="l2")`` spends its time, phase by phase.

Wraps the engine's internal passes with timers (CPU time of this process, so other jobs
on a shared machine disturb it less than wall time) and prints, per model, the median over
``--repeats`` calls of each phase in milliseconds. Phases nest: ``trace`` holds
``symbolic`` and ``shapes``; ``folds`` holds ``probe`` (its forwards); ``apply`` holds
``check``, ``tensors`` and ``copy``; ``total`` is the whole call.

    python benchmarks/engine_phases.py                       # the four models of docs/benchmarks.md
    python benchmarks/engine_phases.py --models resnet18 --repeats 9
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

PHASES = ["symbolic", "shapes", "trace", "graph", "importance", "solver", "probe", "folds", "freeze", "plan",
          "check", "tensors", "copy", "apply", "total"]


def _install(acc: dict[str, float]) -> None:
    """Wrap each phase's function where the engine looks it up."""
    from slimprune import _analysis, _folding, _plan, _prune, _rewrite, _trace

    def wrap(module: Any, name: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(module, name)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                acc[label] += time.process_time() - t0

        setattr(module, name, timed)

    for module, name, label in [
        (_trace, "symbolic_trace", "symbolic"), (_trace, "propagate_shapes", "shapes"),
        (_analysis, "trace", "trace"), (_analysis, "build_channel_graph", "graph"),
        (_prune, "unit_scores", "importance"), (_prune, "select_ranked", "solver"),
        (_folding, "_probe_all", "probe"), (_prune, "find_folds", "folds"), (_prune, "make_plan", "freeze"),
        (_prune, "plan", "plan"), (_plan.PruningPlan, "check_model", "check"),
        (_rewrite, "_new_tensors", "tensors"), (_rewrite, "copy_model", "copy"), (_prune, "apply_plan", "apply"),
    ]:
        wrap(module, name, label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["mobilenet_v3_large", "regnet_y_400mf", "resnet50", "convnext_tiny"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch
    import torchvision

    import slimprune

    torch.set_num_threads(1)
    acc: dict[str, float] = collections.defaultdict(float)
    _install(acc)
    print(f"# CPU ms per phase of slimprune.prune(m, 0.5, importance='l2', example_inputs=1x3x224x224), "
          f"median of {args.repeats}; 1 thread")
    print("| model | " + " | ".join(PHASES) + " |")
    print("| --- " * (len(PHASES) + 1) + "|")
    for spec in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(spec, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        slimprune.prune(model, 0.5, importance="l2", example_inputs=x)  # warm-up
        runs = []
        for _ in range(args.repeats):
            acc.clear()
            t0 = time.process_time()
            slimprune.prune(model, 0.5, importance="l2", example_inputs=x)
            acc["total"] = time.process_time() - t0
            runs.append(dict(acc))
        cells = [f"{1000 * statistics.median(r.get(p, 0.0) for r in runs):.0f}" for p in PHASES]
        print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
