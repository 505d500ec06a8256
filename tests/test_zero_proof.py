"""The probe is skipped only when the graph proves every removed channel reaches its consumers as zero.

Soundness: wherever ``zero_at_consumers`` says so, the real probe measures exact zeros in
every removed channel at every consumer, and the plan equals the plan made with the probe
run; on nets whose norms have non-zero shifts (the probe must run: there are constants to
fold) the proof must fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from slimprune import _folding
from slimprune._importance import unit_scores
from slimprune._options import PlanOptions, protected_units, silence_roles
from slimprune._solver import select_ranked
from slimprune._zero_proof import zero_at_consumers
from slimprune.errors import SlimpruneError
from tests.helpers import assert_pruned_equals_silenced
from tests.models import SpecNet, randomize_bn
from tests.strategies import programs

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
ROLES = silence_roles(False)


def _removed(analysis: slimprune.Analysis, ratio: float) -> np.ndarray:
    g, m = analysis.graph, analysis.model
    cons = PlanOptions(ratio=ratio, importance="l2").constraints(protected_units(g, m, ()))
    return select_ranked(g, unit_scores(g, m, "l2"), ratio, cons, None)


def _probe_sees_only_zeros(analysis: slimprune.Analysis, removed: np.ndarray, keep_shift: bool) -> bool:
    g = analysis.graph
    stats, _ = _folding.probe(g, analysis.model, removed, keep_shift, ROLES)
    for c in g.consumers:
        st_ = stats.get((c.graph, c.node))
        idx = removed[c.units]
        if st_ is not None and idx.any():
            if not ((st_.vmin[idx] == 0).all() and (st_.vmax[idx] == 0).all() and (st_.center[idx] == 0).all()):
                return False
    return True


def _plan(model: nn.Module, x: torch.Tensor, fold_bias: bool) -> dict | str:
    try:
        return slimprune.plan(model, 0.5, example_inputs=x, importance="l2", fold_bias=fold_bias).to_dict()
    except SlimpruneError as exc:
        return type(exc).__name__


@settings(max_examples=12, **SETTINGS)
@given(programs(max_ops=5), st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_proof_holds_only_where_the_probe_measures_zeros_and_leaves_the_plan_unchanged(prog, seed, shifted, fold_bias):
    torch.manual_seed(seed)
    model = SpecNet(prog).eval()
    if shifted:  # non-zero β (a trained net): removed channels carry constants
        randomize_bn(model, seed)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    try:
        analysis = slimprune.analyze(model, x, warn=False)
        removed = _removed(analysis, 0.5)
    except SlimpruneError:
        return
    if zero_at_consumers(analysis.graph, model, removed, fold_bias, ROLES):
        assert _probe_sees_only_zeros(analysis, removed, fold_bias)
    with pytest.MonkeyPatch.context() as mp:
        fast = _plan(model, x, fold_bias)
        mp.setattr(_folding, "zero_at_consumers", lambda *a: False)
        full = _plan(model, x, fold_bias)
    assert fast == full


def _cbr(beta: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(beta)
    return model


def _probe_runs(model: nn.Module, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[slimprune.PruningPlan, int]:
    calls = []
    real = _folding._probe_all
    monkeypatch.setattr(_folding, "_probe_all", lambda *a: calls.append(1) or real(*a))
    return slimprune.plan(model, 0.5, example_inputs=x, importance="l2"), len(calls)


def test_zero_shifts_skip_the_probe_and_the_pruned_net_equals_the_silenced_one(monkeypatch) -> None:
    model, x = _cbr(0.0), torch.randn(2, 3, 8, 8)
    plan, runs = _probe_runs(model, x, monkeypatch)
    assert runs == 0 and plan.changed and not plan.folds
    assert_pruned_equals_silenced(model, plan, x, train=True)


def test_a_non_zero_shift_makes_the_probe_run_and_fold_it(monkeypatch) -> None:
    model, x = _cbr(0.5), torch.randn(2, 3, 8, 8)
    plan, runs = _probe_runs(model, x, monkeypatch)
    assert runs == 1 and plan.folds
    assert_pruned_equals_silenced(model, plan, x, train=True)


def test_an_op_the_proof_does_not_know_makes_the_probe_run(monkeypatch) -> None:
    # sigmoid(0) = 0.5: a removed channel behind it reaches the next conv as a constant.
    model, x = _cbr(0.0), torch.randn(2, 3, 8, 8)
    model[2] = nn.Sigmoid()
    plan, runs = _probe_runs(model, x, monkeypatch)
    assert runs == 1 and plan.folds
    assert_pruned_equals_silenced(model, plan, x, train=True)


def test_fresh_torchvision_net_skips_the_probe_exactly(monkeypatch) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    analysis = slimprune.analyze(model, x, warn=False)
    removed = _removed(analysis, 0.5)
    assert zero_at_consumers(analysis.graph, model, removed, True, ROLES)
    assert _probe_sees_only_zeros(analysis, removed, True)
    plan, runs = _probe_runs(model, x, monkeypatch)
    assert runs == 0
    assert_pruned_equals_silenced(model, plan, x)


# ------------------------------------------------ stochastic depth, LayerNorm over channels, SE gates
class StochasticResidual(nn.Module):
    """conv-BN-ReLU, then a residual branch conv-BN through torchvision's StochasticDepth, then a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.drop = torchvision.ops.StochasticDepth(0.2, "row")
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(self.drop(self.branch(y)) + y)


class ChannelsLastNorm(nn.Module):
    """ConvNeXt's pattern: conv, permute to channels-last, LayerNorm over channels, Linear, GELU,
    permute back, then ConvNeXt's own LayerNorm2d (F.layer_norm between torch.permute calls)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.convnext import LayerNorm2d

        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.norm2d = LayerNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.permute(self.conv(x), (0, 2, 3, 1))
        y = torch.nn.functional.gelu(self.fc(self.norm(y)))
        return self.head(self.norm2d(torch.permute(y, (0, 3, 1, 2))))


class Excited(nn.Module):
    """conv-BN-ReLU gated by torchvision's SqueezeExcitation (sigmoid(0) = 0.5 where its input is zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.se = torchvision.ops.SqueezeExcitation(8, 4)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.se(self.stem(x)))


def _shift_all(model: nn.Module, beta: float) -> nn.Module:
    """Every norm's β set to ``beta`` (a trained net's removed channels then carry constants)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.bias.fill_(beta)
    return model


def _proof_and_probe(model: nn.Module, x: torch.Tensor) -> tuple[bool, bool]:
    analysis = slimprune.analyze(model, x, warn=False)
    removed = _removed(analysis, 0.5)
    assert removed.any()
    return (zero_at_consumers(analysis.graph, model, removed, True, ROLES),
            _probe_sees_only_zeros(analysis, removed, True))


@pytest.mark.parametrize("make", [StochasticResidual, ChannelsLastNorm, Excited], ids=lambda f: f.__name__)
def test_the_proof_covers_the_pattern_and_agrees_with_the_probe(make, monkeypatch) -> None:
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(2, 3, 8, 8)
    assert _proof_and_probe(model, x) == (True, True)
    plan, runs = _probe_runs(model, x, monkeypatch)
    assert runs == 0
    monkeypatch.setattr(_folding, "zero_at_consumers", lambda *a: False)
    assert slimprune.plan(model, 0.5, example_inputs=x, importance="l2").to_dict() == plan.to_dict()


@pytest.mark.parametrize("make", [StochasticResidual, ChannelsLastNorm, Excited], ids=lambda f: f.__name__)
def test_the_proof_refuses_the_pattern_where_removed_channels_carry_constants(make) -> None:
    """The same nets with non-zero β: the probe measures non-zero constants, so the proof must say no."""
    torch.manual_seed(0)
    model, x = _shift_all(make().eval(), 0.3), torch.randn(2, 3, 8, 8)
    assert _proof_and_probe(model, x) == (False, False)


def test_a_layer_norm_without_epsilon_is_not_proved() -> None:
    """eps = 0: x̂ of a constant channel set is 0/0, so 0·x̂ need not be 0; the proof refuses."""
    torch.manual_seed(0)
    model, x = ChannelsLastNorm().eval(), torch.randn(2, 3, 8, 8)
    model.norm.eps = 0.0
    model.norm2d.eps = 0.0
    analysis = slimprune.analyze(model, x, warn=False)
    assert not zero_at_consumers(analysis.graph, model, _removed(analysis, 0.5), True, ROLES)


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_fresh_efficientnet_and_convnext_skip_the_probe_exactly(name, monkeypatch) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    assert _proof_and_probe(model, x) == (True, True)
    plan, runs = _probe_runs(model, x, monkeypatch)
    assert runs == 0 and plan.removed_channels > 0
