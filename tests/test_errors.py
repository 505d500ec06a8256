"""Bad input: each case raises a SlimpruneError subclass that names the culprit and the fix,
and leaves the user's model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimprune
from tests.helpers import assert_unchanged, snapshot
from tests.models import TinyResNet, randomize_bn


@pytest.fixture
def model():
    return randomize_bn(TinyResNet()).eval()


X = torch.randn(2, 3, 32, 32)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "half", True])
def test_ratio_outside_zero_one_is_rejected(model, ratio):
    with pytest.raises(slimprune.InvalidArgumentError, match=r"ratio must be a number in \[0, 1\)"):
        slimprune.plan(model, ratio)


def test_both_or_neither_of_ratio_and_threshold_is_rejected(model):
    with pytest.raises(slimprune.InvalidArgumentError, match="exactly one of ratio= .* or threshold="):
        slimprune.plan(model)
    with pytest.raises(slimprune.InvalidArgumentError, match="exactly one of"):
        slimprune.plan(model, 0.5, threshold=1e-3)


def test_negative_threshold_and_unknown_target_are_rejected(model):
    with pytest.raises(slimprune.InvalidArgumentError, match="threshold must be"):
        slimprune.plan(model, threshold=-1.0)
    with pytest.raises(slimprune.InvalidArgumentError, match="target must be one of"):
        slimprune.plan(model, 0.5, target="latency")


def test_unknown_importance_lists_the_valid_names(model):
    with pytest.raises(slimprune.InvalidArgumentError, match="unknown importance 'magnitude'.*'bn_scale'.*'l1'"):
        slimprune.plan(model, 0.5, importance="magnitude")


def test_importance_callable_with_wrong_length_is_rejected(model):
    with pytest.raises(slimprune.InvalidArgumentError, match="returned 1 scores for group"):
        slimprune.plan(model, 0.5, importance=lambda m, g, grp: [1.0])


def test_protect_naming_a_missing_module_suggests_names(model):
    with pytest.raises(slimprune.InvalidArgumentError, match=r"protect names module 'net.blocks.9'.*named_modules"):
        slimprune.plan(model, 0.5, protect=["net.blocks.9"])


def test_untraceable_model_names_the_module_and_the_fix():
    class Branchy(nn.Module):
        """Data-dependent control flow: fx cannot trace it."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y if y.sum() > 0 else -y

    class Outer(nn.Module):
        """Holds the untraceable block under the name 'block'."""

        def __init__(self):
            super().__init__()
            self.stem, self.block = nn.Conv2d(3, 3, 1), Branchy()

        def forward(self, x):
            return self.block(self.stem(x))

    with pytest.raises(slimprune.TraceError, match=r"module block \(Branchy\).*opaque=\['block'\]"):
        slimprune.plan(Outer(), 0.5)
    # and the advice works: marked opaque, the rest of the model plans
    p = slimprune.plan(Outer(), 0.0, opaque=["block"])
    assert p.removed_channels == 0


def test_example_inputs_of_the_wrong_shape_name_the_node(model):
    with pytest.raises(slimprune.ExampleInputError, match=r"failed on the example inputs at node .*example_inputs="):
        slimprune.plan(model, 0.5, example_inputs=torch.randn(2, 5, 32, 32))
    with pytest.raises(slimprune.ExampleInputError, match="example_inputs must be a tensor or a tuple"):
        slimprune.plan(model, 0.5, example_inputs={"x": X})
    with pytest.raises(slimprune.ExampleInputError, match="positional inputs"):
        slimprune.plan(model, 0.5, example_inputs=(X, X))


def test_plan_applied_to_a_different_model_is_rejected(model):
    plan = slimprune.plan(model, 0.5)
    other = TinyResNet(width=12)
    snap = snapshot(other)
    with pytest.raises(slimprune.PlanMismatchError, match="fingerprint.*Make a new plan"):
        slimprune.apply(other, plan)
    assert_unchanged(other, snap)


def test_min_channels_above_every_width_is_infeasible(model):
    with pytest.raises(slimprune.InfeasiblePlanError, match="min_channels=64 is above the width of every"):
        slimprune.plan(model, 0.5, min_channels=64)


def test_ratio_the_constraints_cannot_reach_is_infeasible(model):
    with pytest.raises(slimprune.InfeasiblePlanError, match=r"allow at most .*Lower the ratio or relax"):
        slimprune.plan(model, 0.8, max_ratio=0.5)
    with pytest.raises(slimprune.InfeasiblePlanError, match="target='params' .*cannot be reached.* of the parameters"):
        slimprune.plan(model, 0.99, target="params")
    # The message speaks the user's word for the target, not the solver's internal one (MACs).
    with pytest.raises(slimprune.InfeasiblePlanError, match="target='flops' .*cannot be reached.* of the FLOPs"):
        slimprune.plan(model, 0.99, target="flops")


@pytest.mark.parametrize("kw", [dict(min_channels=0), dict(round_to=0), dict(max_ratio=1.5), dict(max_ratio={"x": -1})])
def test_bad_constraint_values_are_rejected(model, kw):
    with pytest.raises(slimprune.InvalidArgumentError):
        slimprune.plan(model, 0.3, **kw)


def test_failed_inplace_apply_leaves_the_model_untouched(model):
    """A plan that fails half-way (a corrupt fold entry) must not have modified anything."""
    plan = slimprune.plan(model, 0.5)
    snap = snapshot(model)
    broken = slimprune.PruningPlan.from_dict({**plan.to_dict(), "folds": [
        {"module": "net.blocks.1.a.0", "node": "x", "size": 999, "index": [5000], "value": [1.0]}]})
    with pytest.raises(IndexError):
        slimprune.apply(model, broken, inplace=True)
    assert_unchanged(model, snap)


def test_every_error_is_a_slimprune_error():
    for cls in (slimprune.TraceError, slimprune.InvalidArgumentError, slimprune.InfeasiblePlanError,
                slimprune.PlanMismatchError, slimprune.ExampleInputError, slimprune.FileFormatError):
        assert issubclass(cls, slimprune.SlimpruneError)


def test_plan_json_from_the_future_is_rejected(model):
    d = slimprune.plan(model, 0.3).to_dict()
    d["version"] = 99
    with pytest.raises(slimprune.FileFormatError, match="newer than this slimprune"):
        slimprune.PruningPlan.from_dict(d)
    with pytest.raises(slimprune.FileFormatError, match="not valid JSON"):
        slimprune.PruningPlan.from_json("{truncated")
