"""slimprune.analyze returns an Analysis that plan() reuses: same plans, no second trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn

import slimprune
from slimprune._folding import ProbeCache
from slimprune._options import PlanOptions
from slimprune._solver import reach_at_least
from slimprune.errors import InfeasiblePlanError
from tests.models import TinyResNet, randomize_bn
from tests.test_concrete_trace import WithDataBranch

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _sparse_model() -> nn.Module:
    """TinyResNet with random BN and a third of its γ near zero (so threshold plans remove something)."""
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[: m.num_features // 3] = 1e-5
    return model


OPTION_SETS = [
    dict(ratio=0.5),
    dict(ratio=0.3, importance="l1", round_to=2),
    dict(ratio=0.4, target="params"),
    dict(ratio=0.4, target="flops", min_channels=2),
    dict(ratio=0.5, max_ratio={"net.blocks.1.a.0": 0.25}, protect=["net.head"]),
    dict(ratio=0.5, fold_bias=False, allow_inexact=False),
    dict(threshold=1e-3),
    dict(threshold=1e-3, exact_borders=True),
    dict(ratio=0.5, prune_outputs=True),  # (the analysis builds its other graph from the same trace)
]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return _sparse_model()


@pytest.fixture(scope="module")
def analysis(model: nn.Module) -> slimprune.Analysis:
    return slimprune.analyze(model, X)


def _split(options: dict) -> tuple[float | None, dict]:
    rest = dict(options)
    return rest.pop("ratio", None), rest


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_plan_of_the_analysis_equals_plan_of_the_model(model, analysis, options) -> None:
    ratio, rest = _split(options)
    want = slimprune.plan(model, ratio, example_inputs=X, **rest)
    got = slimprune.plan(analysis, ratio, **rest)
    assert got.to_dict() == want.to_dict()
    assert want.removed_channels > 0  # the comparison is not between two empty plans


def test_planning_on_an_analysis_never_traces(model, monkeypatch) -> None:
    analysis = slimprune.analyze(model, X)
    calls = []
    original = fx.Tracer.trace
    monkeypatch.setattr(fx.Tracer, "trace", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    for options in OPTION_SETS:
        ratio, rest = _split(options)
        slimprune.plan(analysis, ratio, **rest)
    assert calls == []
    slimprune.plan(model, 0.5, example_inputs=X)  # the counter does see a trace
    assert calls


def test_a_repeated_plan_reuses_the_probe(model) -> None:
    analysis = slimprune.analyze(model, X)
    first = slimprune.plan(analysis, threshold=1e-3)
    misses = analysis.probes.misses
    again = slimprune.plan(analysis, threshold=1e-3)
    assert analysis.probes.misses == misses and analysis.probes.hits > 0
    assert again.to_dict() == first.to_dict()


def test_a_stale_analysis_probes_again_after_the_weights_change() -> None:
    """Weights changed in place after analysing: the plan equals a fresh plan of the changed model."""
    model = _sparse_model()
    analysis = slimprune.analyze(model, X)
    before = slimprune.plan(analysis, threshold=1e-3)
    with torch.no_grad():  # make a previously removable channel's γ large, and shift every β
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        norms[0].weight[0] = 1.0
        for m in norms:
            m.bias.add_(0.5)
    misses = analysis.probes.misses
    got = slimprune.plan(analysis, threshold=1e-3)
    assert analysis.probes.misses > misses  # probed again, not served from the cache
    assert got.to_dict() == slimprune.plan(model, threshold=1e-3, example_inputs=X).to_dict()
    assert got.to_dict() != before.to_dict()


def test_probe_cache_drops_its_entries_when_a_parameter_changes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    cache = ProbeCache(model)
    cache.store(("k",), {"a": 1}, ["note"])
    assert cache.lookup(("k",)) == ({"a": 1}, ["note"])
    with torch.no_grad():
        model[1].bias.add_(1.0)
    assert cache.lookup(("k",)) is None
    cache.store(("k",), {"a": 2}, [])
    model.load_state_dict(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).state_dict())
    assert cache.lookup(("k",)) is None


def test_an_analysis_of_a_model_whose_structure_changed_is_refused() -> None:
    model = _sparse_model()
    analysis = slimprune.analyze(model, X)
    slimprune.apply(model, slimprune.plan(analysis, 0.5), inplace=True)
    with pytest.raises(slimprune.InvalidArgumentError, match=r"shapes or dtypes have changed since .* analyse it again"):
        slimprune.plan(analysis, 0.5)


def test_an_analysis_made_in_eval_mode_is_refused_in_train_mode() -> None:
    model = _sparse_model()
    analysis = slimprune.analyze(model, X)
    model.train()
    with pytest.raises(slimprune.InvalidArgumentError, match=r"analysed in eval mode and is now in train mode"):
        slimprune.plan(analysis, 0.5)


def test_tracing_options_with_an_analysis_are_refused(analysis) -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match=r"pass them to slimprune.analyze\(model"):
        slimprune.plan(analysis, 0.5, example_inputs=X)
    with pytest.raises(slimprune.InvalidArgumentError, match=r"pass them to slimprune.analyze\(model"):
        slimprune.plan(analysis, 0.5, opaque=["net.head"])


def test_the_analysis_reads_through_to_its_channel_graph(analysis) -> None:
    graph = analysis.graph
    assert isinstance(graph, slimprune.ChannelGraph)
    for name in ("groups", "slices", "traced", "consumers", "barriers", "num_units", "gm"):
        assert getattr(analysis, name) is getattr(graph, name)
    assert analysis.clusters() == graph.clusters()
    with pytest.raises(AttributeError, match="no attribute 'grups'"):
        analysis.grups


def test_a_model_planned_by_regions_is_analysed_by_regions() -> None:
    torch.manual_seed(0)
    model = randomize_bn(WithDataBranch()).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(slimprune.TraceError):
        slimprune.analyze(model, x)
    analysis = slimprune.analyze(model, x, regions=True)
    assert analysis.by_regions and [r.path for r in analysis.regions] == ["stem", "mid.conv", "tail"]
    with pytest.raises(AttributeError, match="planned region by region"):
        analysis.groups
    want = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    assert slimprune.plan(analysis, 0.5, fold_bias=False).to_dict() == want.to_dict()
    assert slimprune.plan(analysis, 0.3).to_dict() == slimprune.plan(model, 0.3, example_inputs=x).to_dict()


def test_prune_outputs_frees_the_returned_width_and_is_refused_for_a_model_planned_by_regions() -> None:
    model = _sparse_model()
    kept, free = (slimprune.plan(model, 0.5, example_inputs=X, prune_outputs=p) for p in (False, True))
    with torch.no_grad():
        width = model(X).shape[1]
        assert slimprune.apply(model, kept)(X).shape[1] == width
        assert slimprune.apply(model, free)(X).shape[1] < width  # the returned channels went too
    torch.manual_seed(0)
    regional = randomize_bn(WithDataBranch()).eval()
    with pytest.raises(slimprune.InvalidArgumentError, match="planned region by region"):
        slimprune.plan(regional, 0.5, example_inputs=torch.randn(2, 3, 16, 16), prune_outputs=True)


def test_sparsity_searches_trace_once(model, monkeypatch) -> None:
    calls = []
    original = fx.Tracer.trace
    monkeypatch.setattr(fx.Tracer, "trace", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    slimprune.sparsity.suggest_ratio(model, 0.3, example_inputs=X)
    assert len(calls) == 1
    calls.clear()
    slimprune.sparsity.suggest_threshold(model, 0.05, example_inputs=X)
    assert len(calls) == 1


# ------------------------------------------------------------------ options


def test_plan_options_are_normalised_on_construction() -> None:
    o = PlanOptions(ratio=np.float32(0.5), protect=["net.head"], opaque=[nn.Linear], min_channels=np.int64(2),
                    max_ratio={"a": np.float32(0.5)})
    assert (o.ratio, o.protect, o.opaque, o.min_channels, o.max_ratio) == (0.5, ("net.head",), (nn.Linear,), 2, {"a": 0.5})
    assert type(o.ratio) is float and type(o.min_channels) is int
    with pytest.raises(AttributeError):
        o.ratio = 0.3  # frozen


@pytest.mark.parametrize("kw, words", [
    (dict(), "give exactly one of ratio="),
    (dict(ratio=1.0), "ratio must be a number in [0, 1)"),
    (dict(ratio=0.5, target="macs"), "target must be one of"),
    (dict(ratio=0.5, round_to=0), "round_to must be an integer >= 1"),
    (dict(ratio=0.5, protect="fc"), "wrap it in a list: protect=['fc']"),
    (dict(ratio=0.5, prune_outputs="yes"), "prune_outputs must be True or False"),
])
def test_plan_options_refuse_what_plan_refuses(kw, words) -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match=__import__("re").escape(words)):
        PlanOptions(**kw)


# ------------------------------------------------------------------ solver


def test_reach_at_least_asks_for_more_until_the_fraction_holds() -> None:
    """The achieved fraction lags the goal by 0.05: the loop raises the goal by the shortfall."""
    goals = []

    def attempt(goal: float) -> float:
        goals.append(goal)
        return goal

    got = reach_at_least(0.5, 0.5, attempt, lambda c: c - 0.05, lambda got: f"only {got}")
    assert got - 0.05 >= 0.5 - 1e-12 and goals == [pytest.approx(0.55)]


def test_reach_at_least_raises_when_the_constraints_stop_it() -> None:
    def attempt(goal: float) -> float:
        raise InfeasiblePlanError("no more")

    with pytest.raises(InfeasiblePlanError, match="only 0.45"):
        reach_at_least(0.5, 0.5, attempt, lambda c: c - 0.05, lambda got: f"only {got:.2f}")
