"""Stage 3 and the latency measurement of the EagleEye pipeline, on an untrained EagleEye (no data needed)."""

from __future__ import annotations

import copy

import pytest
import torch

import slimprune
from examples.eagleeye.model import EagleEye
from examples.eagleeye.config import PipelineConfig
from examples.eagleeye.latency import FORMS, LAYOUTS, deployed, time_models
from examples.eagleeye.policy import analyze, example_batch, plan_fraction, prunable_gamma_stats, prune_plan
from slimprune.sparsity import gamma_stats, scale_per_cost
from tests.eagleeye_models import small_config, zeroed_eagleeye

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sparse() -> EagleEye:
    return zeroed_eagleeye()


def _prune_plan(model: EagleEye, config: PipelineConfig) -> slimprune.PruningPlan:
    """Stage 3's plan of ``model``, on its one analysis."""
    return prune_plan(analyze(model, config.sparse), config)


def _removed(plan: slimprune.PruningPlan) -> tuple[float, float]:
    return 1 - plan.params_after / plan.params_before, 1 - plan.flops_after / plan.flops_before


def test_prune_plan_meets_both_targets_ranking_by_gamma_per_flop(sparse: EagleEye) -> None:
    """With a FLOPs target the zeroed channels are not enough, so the plan ranks by |γ| per FLOP
    and removes at least the asked fractions of the FLOPs and of the parameters."""
    zeroed = _prune_plan(sparse, small_config(target_flops=None, target_params=0.1))
    assert _removed(zeroed)[1] < 0.5
    plan = _prune_plan(sparse, small_config(target_flops=0.5, target_params=0.3))
    params, flops = _removed(plan)
    assert flops >= 0.5 and params >= 0.3
    assert plan.option("target") == "flops" and plan.option("importance") == "scale_per_flops"


def _pruned_widths(model: EagleEye, plan: slimprune.PruningPlan) -> dict[str, tuple[int, int]]:
    """(width before, width after) of every BatchNorm the plan narrowed."""
    small = slimprune.apply(copy.deepcopy(model), plan)
    before = {n: m.num_features for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    after = {n: m.num_features for n, m in small.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    return {n: (before[n], after[n]) for n in before if after[n] != before[n]}


def test_round_to_keeps_every_pruned_width_a_multiple_and_both_targets(sparse: EagleEye) -> None:
    """round_to=8 (the default) leaves each narrowed layer a multiple of 8 channels and still meets
    the targets; round_to=1 on the same model and targets leaves widths that are not."""
    rounded = _prune_plan(sparse, small_config(target_flops=0.5, target_params=0.3))
    assert rounded.option("round_to") == 8
    params, flops = _removed(rounded)
    assert flops >= 0.5 and params >= 0.3
    widths = _pruned_widths(sparse, rounded)
    assert widths and all(after % 8 == 0 for _, after in widths.values()), widths
    free = _pruned_widths(sparse, _prune_plan(sparse, small_config(target_flops=0.5, target_params=0.3, round_to=1)))
    assert any(after % 8 for _, after in free.values())
    with pytest.raises(ValueError, match="round_to=0"):
        small_config(round_to=0)


def test_gamma_per_flop_reaches_a_flops_target_with_fewer_channels_than_gamma(sparse: EagleEye) -> None:
    """Ranking by |γ| per FLOP spends the removals on expensive channels: fewer go for the same FLOPs."""
    example = (torch.rand(1, 3, 64, 64),)
    by_gamma = slimprune.plan(copy.deepcopy(sparse), 0.5, target="flops", example_inputs=example)
    per_flop = slimprune.plan(
        copy.deepcopy(sparse), 0.5, target="flops", importance=scale_per_cost("flops"), example_inputs=example
    )
    assert _removed(per_flop)[1] >= 0.5 and _removed(by_gamma)[1] >= 0.5
    assert per_flop.removed_channels < by_gamma.removed_channels


@pytest.mark.parametrize("layout", LAYOUTS)
def test_folded_model_computes_what_the_eager_model_does(sparse: EagleEye, layout: str) -> None:
    """The timed deployed form (BatchNorm folded, either layout) of a pruned model gives the same outputs."""
    plan = _prune_plan(sparse, small_config(target_flops=0.5, target_params=0.3))
    pruned = slimprune.apply(copy.deepcopy(sparse), plan).eval()
    x = torch.rand(1, 3, 96, 96)
    folded = deployed(pruned, "folded", layout)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        for got, want in zip(folded(x), pruned(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_timing_reports_every_setting_and_the_faster_folded_layout(sparse: EagleEye) -> None:
    """Every model gets a median per (form, layout); the one the targets use is the faster folded one."""
    models = {"a": sparse, "b": EagleEye(width_mult=0.5).eval()}
    timings = time_models(models, 64, threads=1, repeats=4, rounds=2)
    assert set(timings) == {"a", "b"}
    for t in timings.values():
        assert set(t.by_setting) == {f"{f}/{lay}" for f in FORMS for lay in LAYOUTS}
        assert all(v > 0 for v in t.by_setting.values())
        assert t.median_ms == min(t.by_setting[f"folded/{lay}"] for lay in LAYOUTS)
        assert t.median_ms == t.by_setting[f"folded/{t.layout}"] and t.repeats == 4


def test_stage_three_and_the_sweep_plan_on_one_analysis_without_tracing_again(
    sparse: EagleEye, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After analyze(), stage 3 (its FLOPs tries included), sweep plans and the |γ| statistics
    trace nothing, and give the plans a fresh trace of the model gives."""
    config = small_config(target_flops=0.5, target_params=0.3)
    analysis = analyze(sparse, config.sparse)
    traces = []
    original = torch.fx.Tracer.trace
    monkeypatch.setattr(torch.fx.Tracer, "trace", lambda self, *a, **k: traces.append(1) or original(self, *a, **k))
    plan = prune_plan(analysis, config)
    swept = [plan_fraction(analysis, f) for f in (0.2, 0.563)]
    prunable_gamma_stats(analysis, (1e-3,))
    assert traces == []
    assert plan.to_json() == _prune_plan(copy.deepcopy(sparse), config).to_json()
    assert traces, "the counter sees the trace of a fresh analysis"
    for f, p in zip((0.2, 0.563), swept):
        assert _removed(p)[0] >= f
        fresh = slimprune.plan(copy.deepcopy(sparse), f, target="params", example_inputs=example_batch(config.sparse))
        assert p.to_json() == fresh.to_json()


def test_gamma_statistics_from_the_analysis_equal_slimprunes(sparse: EagleEye) -> None:
    """prunable_gamma_stats(analysis) is what slimprune.sparsity.gamma_stats computes by tracing again."""
    config = small_config()
    thresholds = (1e-3, 1e-2, 1e-1)
    ours = prunable_gamma_stats(analyze(sparse, config.sparse), thresholds)
    theirs = gamma_stats(sparse, thresholds, example_inputs=example_batch(config.sparse))
    assert ours["count"] == theirs["count"] > 0 and ours["below"] == theirs["below"]
    assert ours["below"][1e-3] > 0  # the zeroed third is counted
    assert ours["percentiles"] == pytest.approx(theirs["percentiles"])
