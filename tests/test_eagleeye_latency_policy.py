"""Pruning EagleEye for latency and finding its latency floor (examples/eagleeye/policy.py, latency.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import slimprune
from examples.eagleeye.config import PipelineConfig
from examples.eagleeye.latency import floor_summary, layer_times
from examples.eagleeye.model import EagleEye
from examples.eagleeye.policy import analyze, analyze_for_latency, latency_plan, prune_plan
from examples.eagleeye.report import floor_markdown

torch.set_num_threads(1)

_SIZE = 64


@pytest.fixture(scope="module")
def sparse() -> EagleEye:
    """A full-width EagleEye whose BatchNorm γ are spread over (0, 1), a third of them near zero."""
    torch.manual_seed(0)
    model = EagleEye().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            g = torch.rand(m.num_features)
            g[torch.rand(m.num_features) < 0.33] = 1e-5
            m.weight.data = g
            m.running_var.data = torch.rand(m.num_features) + 0.5
            m.running_mean.data = torch.randn(m.num_features) * 0.1
    return model


def test_latency_plan_uses_slimprunes_latency_solver_and_caches_the_table(sparse: EagleEye, tmp_path: Path) -> None:
    """latency_plan makes a target="latency" plan on a batch-1 analysis at the eval size that removes
    channels (the zeroed ones cost no |γ|), keeping widths multiples of round_to, and writes the
    profiled cost table where it is asked to."""
    cache = tmp_path / "table.json"
    at_size = analyze_for_latency(sparse, _SIZE)
    plan = latency_plan(at_size, 0.02, threads=1, round_to=8, cache=cache, points=2, min_run_time=0.002)
    assert plan.option("target") == "latency" and plan.removed_channels > 0
    assert plan.flops_after < plan.flops_before
    assert cache.is_file()
    small = slimprune.apply(sparse, plan)
    full = {n: m.num_features for n, m in sparse.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    widths = [m.num_features for n, m in small.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d) and m.num_features != full[n]]
    assert widths and all(w % 8 == 0 for w in widths)


@pytest.mark.slow
def test_target_latency_reaches_stage_three(sparse: EagleEye, tmp_path: Path) -> None:
    """PipelineConfig.target_latency makes stage 3 plan for latency (profiles every layer: about a minute)."""
    config = PipelineConfig.create(
        "o", target_latency=0.02, round_to=8, train_overrides={"eval_size": _SIZE, "image_size": _SIZE}
    )
    plan = prune_plan(analyze(sparse, config.sparse), config, latency_cache=tmp_path / "table.json")
    assert plan.option("target") == "latency" and plan.removed_channels > 0


def test_layer_times_cover_every_operation_and_name_the_stem(sparse: EagleEye) -> None:
    """Every conv of the folded model is timed with a positive time, the stem convs are of kind
    "stem", and the summary's kinds add up to its total."""
    layers = layer_times(sparse, _SIZE, threads=1, repeats=2)
    convs = [t for t in layers if t.kind in ("stem", "depthwise", "pointwise", "conv")]
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in sparse.modules())
    assert len(convs) == n_convs and all(t.ms > 0 for t in convs)
    assert {t.name for t in layers if t.kind == "stem"} >= {"stem.0.0", "stem.1.depthwise.0", "stem.2.pointwise.0"}
    summary = floor_summary(layers, top=5)
    assert sum(summary["by_kind_ms"].values()) == pytest.approx(summary["total_ms"])
    assert len(summary["slowest"]) == 5
    assert summary["slowest"][0]["ms"] == max(t.ms for t in layers)
    assert "stem" in "\n".join(floor_markdown({"baseline": summary, "finetuned": summary}))
