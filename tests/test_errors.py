"""Bad input: each case raises a SlimpruneError subclass that names the culprit and the fix,
and leaves the user's model as it was."""

from __future__ import annotations

import re
import warnings

import numpy as np
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
        slimprune.plan(model, 0.5, target="energy")


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
    with pytest.raises(slimprune.ExampleInputError, match="example_inputs must be a tensor, a tuple"):
        slimprune.plan(model, 0.5, example_inputs={X})
    with pytest.raises(slimprune.ExampleInputError, match=r"names \['image'\], which TinyResNet.forward does not take"):
        slimprune.plan(model, 0.5, example_inputs={"image": X})
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
    with pytest.raises(slimprune.PlanMismatchError, match="the fold into 'net.blocks.1.a.0': index 5000 is outside 0..998"):
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


# ------------------------------------------------------------------ TorchScript modules


class _Block(nn.Module):
    """Conv, BatchNorm, ReLU: the part a user scripted."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class _Outer(nn.Module):
    """A stem, a block (eager or scripted) and a head."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 1), block, nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


_XS = torch.randn(1, 3, 8, 8)


def _scripted(kind: str) -> tuple[nn.Module, str]:
    """A model with TorchScript in it, and the words the error must use for where."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated
        if kind == "script":
            return torch.jit.script(_Outer(_Block()).eval()), "the model is a TorchScript module (RecursiveScriptModule"
        if kind == "trace":
            return torch.jit.trace(_Outer(_Block()).eval(), _XS), "the model is a TorchScript module (TopLevelTracedModule"
        return _Outer(torch.jit.script(_Block().eval())).eval(), "submodule 'block' of the model is a TorchScript module"


@pytest.mark.parametrize("kind", ["script", "trace", "nested"])
@pytest.mark.parametrize("entry", ["analyze", "plan", "prune", "SparsityRegularizer", "bn_modules"])
def test_torchscript_modules_are_refused_at_every_entry(kind: str, entry: str) -> None:
    model, where = _scripted(kind)
    calls = {
        "analyze": lambda: slimprune.analyze(model, _XS),
        "plan": lambda: slimprune.plan(model, 0.5, example_inputs=_XS),
        "prune": lambda: slimprune.prune(model, 0.5, example_inputs=_XS),
        "SparsityRegularizer": lambda: slimprune.SparsityRegularizer(model, example_inputs=_XS),
        "bn_modules": lambda: slimprune.SparsityRegularizer(model, bn_modules=["block.bn"]),
    }
    with pytest.raises(slimprune.InvalidArgumentError, match=re.escape(where)) as info:
        calls[entry]()
    assert "eager nn.Modules only" in str(info.value) and "Prune the eager module, then script" in str(info.value)


@pytest.mark.parametrize("entry", [slimprune.apply, slimprune.silence])
def test_plan_of_the_eager_model_is_refused_on_one_with_a_scripted_submodule(entry) -> None:
    torch.manual_seed(0)
    plan = slimprune.plan(_Outer(_Block()).eval(), 0.5, example_inputs=_XS)
    torch.manual_seed(0)
    model, where = _scripted("nested")
    assert plan.fingerprint == slimprune._plan.fingerprint(model)  # same names and shapes
    with pytest.raises(slimprune.InvalidArgumentError, match=re.escape(where) + ".*then script"):
        entry(model, plan)


@pytest.mark.parametrize("not_a_model", [lambda x: x, "torchvision:resnet18", None])
def test_a_model_that_is_not_a_module_is_refused(not_a_model) -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match="model must be a torch.nn.Module, got"):
        slimprune.plan(not_a_model, 0.5)
    with pytest.raises(slimprune.InvalidArgumentError, match="model must be a torch.nn.Module"):
        slimprune.analyze(not_a_model)


# ------------------------------------------------------------------ lists of names


@pytest.mark.parametrize("arg", ["protect", "opaque"])
def test_a_bare_string_for_protect_or_opaque_is_refused_with_the_fix(model, arg: str) -> None:
    with pytest.raises(slimprune.InvalidArgumentError,
                       match=rf"{arg} takes a list .* got the string 'net', which would be read as its characters; "
                             rf"wrap it in a list: {arg}=\['net'\]"):
        slimprune.plan(model, 0.5, **{arg: "net"})


def test_protect_as_a_string_is_refused_in_sparsity_tools_too(model) -> None:
    fix = re.escape("protect=['net.blocks.1']")
    with pytest.raises(slimprune.InvalidArgumentError, match=fix):
        slimprune.SparsityRegularizer(model, protect="net.blocks.1")
    with pytest.raises(slimprune.InvalidArgumentError, match=fix):
        slimprune.sparsity.suggest_threshold(model, 0.3, protect="net.blocks.1")
    with pytest.raises(slimprune.InvalidArgumentError, match=fix):
        slimprune.sparsity.suggest_ratio(model, 0.3, protect="net.blocks.1")
    with pytest.raises(slimprune.InvalidArgumentError, match=fix):
        slimprune.sparsity.gamma_stats(model, protect="net.blocks.1")


@pytest.mark.parametrize("opaque", [[3], [None], [nn.Conv2d(3, 3, 1)]])
def test_opaque_entries_that_are_not_names_or_types_are_refused(model, opaque) -> None:
    for call in (lambda: slimprune.plan(model, 0.5, opaque=opaque), lambda: slimprune.analyze(model, opaque=opaque)):
        with pytest.raises(slimprune.InvalidArgumentError, match=r"opaque entries are module names \(str\) or module types"):
            call()


def test_protect_entries_that_are_not_names_or_types_are_refused(model) -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match=r"protect takes a list .* got 3"):
        slimprune.plan(model, 0.5, protect=3)
    with pytest.raises(slimprune.InvalidArgumentError, match=r"wrap it in a list: protect=\[Linear\]"):
        slimprune.plan(model, 0.5, protect=nn.Linear)


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), np.float32("nan"), True, "0.1"])
def test_threshold_nan_inf_or_not_a_number_is_refused(model, threshold) -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match=r"threshold must be a number >= 0, got .*NaN or inf"):
        slimprune.plan(model, threshold=threshold)
    with pytest.raises(slimprune.InvalidArgumentError, match="threshold must be a number >= 0"):
        slimprune.prune(model, threshold=threshold)


@pytest.mark.parametrize("ratio", [np.float32(0.5), np.float64(0.5), np.float16(0.5), 0.5])
def test_any_real_number_type_is_a_ratio(model, ratio) -> None:
    want = slimprune.plan(model, 0.5, example_inputs=X)
    got = slimprune.plan(model, ratio, example_inputs=X, max_ratio=np.float32(0.9), min_channels=np.int64(1),
                         round_to=np.int32(1))
    assert got.groups == want.groups
    assert slimprune.PruningPlan.from_json(got.to_json()).option("ratio") == 0.5
    t = slimprune.plan(model, threshold=np.float32(1e-3), example_inputs=X)
    assert t.option("threshold") == pytest.approx(1e-3)
    for bad in (np.float32("nan"), np.float64("inf"), np.bool_(True), np.float32(1.0)):  # still numbers in [0, 1)
        with pytest.raises(slimprune.InvalidArgumentError, match=r"ratio must be a number in \[0, 1\)"):
            slimprune.plan(model, bad)


@pytest.mark.parametrize("kw, words", [
    (dict(min_channels=True), "min_channels must be an integer >= 1, got True"),
    (dict(max_ratio="0.5"), "max_ratio must be a number in [0, 1]"),
    (dict(max_ratio=float("nan")), "max_ratio must be a number in [0, 1]"),
    (dict(max_ratio={"net.head": float("nan")}), "max_ratio['net.head'] must be a number in [0, 1]"),
    (dict(seed="x"), "seed must be a non-negative integer (for importance='random'), got 'x'"),
    (dict(seed=1.5), "seed must be a non-negative integer"),
    (dict(seed=-1), "seed must be a non-negative integer"),
])
def test_bad_constraint_and_seed_types_are_refused(model, kw, words) -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match=re.escape(words)):
        slimprune.plan(model, 0.3, importance="random", **kw)


def test_max_ratio_naming_a_missing_module_is_refused(model) -> None:
    with pytest.raises(slimprune.InvalidArgumentError,
                       match=r"max_ratio names module 'no_such_module', which TinyResNet does not have.*named_modules"):
        slimprune.plan(model, 0.3, max_ratio={"no_such_module": 0.5})
    with pytest.raises(slimprune.InvalidArgumentError, match=r"did you mean one of \[.*'net.blocks.1.a'"):
        slimprune.plan(model, 0.3, max_ratio={"net.blocks.1.": 0.5})
    with pytest.raises(slimprune.InvalidArgumentError, match="max_ratio names module"):
        slimprune.sparsity.suggest_ratio(model, 0.3, max_ratio={"no_such_module": 0.5})


def test_importance_callable_returning_nan_is_refused(model) -> None:
    def nan_scores(m: nn.Module, graph: slimprune.ChannelGraph, group: slimprune.ChannelGroup) -> np.ndarray:
        return np.full(len(group), np.nan)

    with pytest.raises(slimprune.InvalidArgumentError,
                       match=r"importance callable nan_scores returned NaN scores for \d+ of the \d+ channels of group 0 "
                             r"\(net\.blocks\..*NaN cannot be ranked"):
        slimprune.plan(model, 0.3, importance=nan_scores)
    with pytest.raises(slimprune.InvalidArgumentError, match="is not a sequence of numbers"):
        slimprune.plan(model, 0.3, importance=lambda m, g, grp: ["high"] * len(grp))


def test_numpy_numbers_are_accepted_by_the_sparsity_tools(model) -> None:
    reg = slimprune.SparsityRegularizer(model, lam=np.float32(1e-4), example_inputs=X)
    assert reg.lam == pytest.approx(1e-4)
    r = slimprune.sparsity.suggest_ratio(model, np.float32(0.2), example_inputs=X)
    assert 0 < r < 1
    for bad in (np.float32("nan"), True):
        with pytest.raises(slimprune.InvalidArgumentError, match="target_params must be a fraction in"):
            slimprune.sparsity.suggest_ratio(model, bad)
        with pytest.raises(slimprune.InvalidArgumentError, match="lam must be a finite number"):
            slimprune.SparsityRegularizer(model, lam=bad)


# ------------------------------------------------------------------ hand-edited plans


def _edited(plan: slimprune.PruningPlan, slice_name: str | None = None, kept: list[int] | None = None,
            group: int | None = None, removed: list[int] | None = None) -> slimprune.PruningPlan:
    d = plan.to_dict()
    for s in d["slices"]:
        if slice_name is not None and f"{s['module']}.{s['param']}[{s['dim']}]" == slice_name:
            s["kept"] = kept
    for g in d["groups"]:
        if g["id"] == group:
            g["removed"] = removed
    return slimprune.PruningPlan.from_dict(d)


@pytest.mark.parametrize("edit, words", [
    (dict(slice_name="net.blocks.1.a.0.weight[0]", kept=[0, 1, 99]), "kept indices of net.blocks.1.a.0.weight[0]: index 99 is outside 0..7"),
    (dict(slice_name="net.blocks.1.a.0.weight[0]", kept=[-1, 0]), "index -1 is outside 0..7"),
    (dict(slice_name="net.blocks.1.a.0.weight[0]", kept=[3, 1, 2]), "not sorted and distinct"),
    (dict(slice_name="net.blocks.1.a.0.weight[0]", kept=[1, 1, 2]), "not sorted and distinct"),
    (dict(slice_name="net.blocks.1.a.0.weight[0]", kept=[]), "keeps 0 of the 8 channels of net.blocks.1.a.0.weight[0]"),
    (dict(group=1, removed=list(range(8))), "group 1 (net.blocks.1.a.0.weight[0]"),
    (dict(group=1, removed=[0, 8]), "group 1's removed positions: index 8 is outside 0..7"),
])
@pytest.mark.parametrize("entry", [slimprune.apply, slimprune.silence])
def test_hand_edited_plan_is_refused_before_anything_changes(model, edit, words, entry) -> None:
    plan = _edited(slimprune.plan(model, 0.3, example_inputs=X), **edit)
    snap = snapshot(model)
    with pytest.raises(slimprune.PlanMismatchError, match=re.escape(words) + ".*edited or corrupted"):
        entry(model, plan)
    assert_unchanged(model, snap)
