"""The worked example of docs/workflow.md: sparsity training, threshold pruning, fine-tuning, save/load.

Run from the repository root (about 30 s on one CPU thread):

    python docs/workflow_example.py

It prints every number docs/workflow.md quotes and writes docs/img/gamma_histogram.png and
docs/img/channels.png. tests/test_docs.py runs it and fails when a number the page quotes drifts.

Everything is seeded and computed in float64. In float32 the result depended on the machine:
300 steps of SGD amplify the last-bit differences between CPU kernels (AVX-512, AVX2, plain),
and the same seeds gave 71.5%, 63.9% and 63.3% sparse accuracy on one machine under the three
`ATEN_CPU_CAPABILITY` settings. In float64 all three print the same numbers.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.models

import slimprune  # noqa: E402
from slimprune import io  # noqa: E402
from slimprune.measure import compare  # noqa: E402
from slimprune.plots import plot_channels, plot_gamma_histogram  # noqa: E402
from slimprune.sparsity import SparsityRegularizer, default_lambda, gamma_stats, suggest_threshold, warmup  # noqa: E402
from tests.models import TinyResNet  # noqa: E402

STEPS = 300
FINETUNE_STEPS = 200
LAMBDA = 2e-2  # far above network slimming's 1e-5 for ResNets: 300 steps instead of 160 epochs
THRESHOLD = 1e-2
IMG = ROOT / "docs" / "img"


def synthetic_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images whose class (of 10) is the argmax of a fixed linear map of their mean colour."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(1234))
    return x, (x.mean((2, 3)) @ w).argmax(1)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
          reg: SparsityRegularizer | None = None) -> None:
    """SGD with momentum 0.9 and a linearly decaying learning rate, batches of 32."""
    g = torch.Generator().manual_seed(7)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    model.train()
    for step in range(steps):
        i = torch.randint(0, x.shape[0], (32,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        if reg is not None:
            reg.step(step)
        opt.step()
        sched.step()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy in eval mode."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def main(img_dir: Path = IMG) -> dict[str, float]:
    """Run the example, print what the page quotes, and return those numbers by name."""
    torch.set_num_threads(1)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return _run(Path(img_dir))
    finally:
        torch.set_default_dtype(previous_dtype)


def _run(img_dir: Path) -> dict[str, float]:
    console = Console(width=100)
    r: dict[str, float] = {}
    x, y = synthetic_task(1024, seed=0)
    xv, yv = synthetic_task(512, seed=1)

    torch.manual_seed(0)
    start = TinyResNet(width=16)
    print(f"default_lambda(TinyResNet) = {default_lambda(start):g} (residual network)")

    dense = copy.deepcopy(start)
    train(dense, x, y, STEPS, lr=0.1)
    sparse = copy.deepcopy(start)
    reg = SparsityRegularizer(sparse, LAMBDA, schedule=warmup(50))
    print(repr(reg))
    train(sparse, x, y, STEPS, lr=0.1, reg=reg)

    for key, name, model in (("dense", "dense (lambda=0)", dense), ("sparse", f"sparse (lambda={LAMBDA:g})", sparse)):
        stats = gamma_stats(model)
        pct = ", ".join(f"p{k}={v:.3g}" for k, v in stats["percentiles"].items())
        below = ", ".join(f"<= {k:g}: {v}" for k, v in stats["below"].items())
        loss, acc = evaluate(model, xv, yv)
        r[f"{key}_loss"], r[f"{key}_acc"] = loss, acc
        r.update({f"{key}_p{k}": v for k, v in stats["percentiles"].items()})
        r.update({f"{key}_below_{k:g}": v for k, v in stats["below"].items()})
        print(f"{name}: val loss {loss:.3f}, acc {acc:.1%}; |gamma| over {stats['count']} channels: {pct}; {below}")

    plan = slimprune.plan(sparse, threshold=THRESHOLD, example_inputs=x[:2])
    print(plan)
    r["removed_channels"] = plan.removed_channels
    r["params_before"], r["params_after"] = plan.params_before, plan.params_after
    r["flops_before"], r["flops_after"] = plan.flops_before, plan.flops_after
    small = slimprune.apply(sparse, plan)
    for key, name, model in (
        ("pruned", "pruned, before fine-tuning", small),
        ("silenced", "silenced (removed gammas zeroed, shapes kept)", slimprune.silence(sparse, plan)),
        ("unfolded", "pruned with fold_bias=False (beta dropped too)",
         slimprune.apply(sparse, slimprune.plan(sparse, threshold=THRESHOLD, example_inputs=x[:2], fold_bias=False))),
    ):
        r[f"{key}_loss"], r[f"{key}_acc"] = evaluate(model, xv, yv)
        print(f"{name}: val loss {r[key + '_loss']:.3f}, acc {r[key + '_acc']:.1%}")
    r["suggested_threshold"] = suggest_threshold(sparse, 0.5, x[:2])
    print(f"suggest_threshold(sparse, 0.5) = {r['suggested_threshold']:.3g}")

    train(small, x, y, FINETUNE_STEPS, lr=0.05)
    r["finetuned_loss"], r["finetuned_acc"] = evaluate(small, xv, yv)
    print(f"pruned, after {FINETUNE_STEPS} fine-tuning steps: val loss {r['finetuned_loss']:.3f}, "
          f"acc {r['finetuned_acc']:.1%}")

    console.print(compare(sparse, small, xv[:1], latency=False).table())

    print(plot_gamma_histogram(dense, sparse, threshold=THRESHOLD, path=img_dir / "gamma_histogram.png"))
    print(plot_channels(sparse, small, img_dir / "channels.png"))

    with tempfile.TemporaryDirectory() as tmp:
        path = io.save(small, Path(tmp) / "tiny.safetensors", plan=plan, build="tests.models:TinyResNet?width=16")
        again = io.load(path, trust_build=True)
        same = torch.equal(again(xv), small.eval()(xv))
        r["file_bytes"], r["reload_identical"] = path.stat().st_size, float(same)
        print(f"saved {path.stat().st_size:,} bytes; reloaded outputs bit-identical: {same}")
    return r


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-dir", type=Path, default=IMG, help="where the two figures go (default docs/img)")
    main(parser.parse_args().img_dir)
