"""Real-world forward code plain fx rejects is traced while running it, and pruned exactly.

Ultralytics' C2f iterates a ``chunk`` result, FPN heads loop over a list of features,
code branches on shapes: fx alone raises on each, slimprune traces them concretely
(every proxy carries the value the example input gives it) and maps the graph onto the
user's own modules, so every rule applies.
"""

from __future__ import annotations

import operator
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from slimprune._trace import concrete_trace, symbolic_trace
from tests.helpers import assert_pruned_equals_silenced, assert_unchanged, run, snapshot
from tests.models import SpecNet, randomize_bn
from tests.strategies import programs
from tests import test_architectures as architectures
from tests.test_architectures import SPPF, cbs


class C2f(architectures.C2f):
    """Ultralytics' C2f exactly as it is written there: list(chunk) and a generator extend."""

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class YOLOv8ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbs(3, 16, 3, 2)
        self.c2f = C2f(16, 32)
        self.down = cbs(32, 32, 3, 2)
        self.sppf = SPPF(32, 32)
        self.head = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        return self.head(self.sppf(self.down(self.c2f(self.stem(x)))))


class MultiScaleHead(nn.Module):
    """Takes a list of feature maps (the form FPN necks and RPN heads have): loops over it,
    zips it with its convs, checks len()."""

    def __init__(self):
        super().__init__()
        self.lateral = nn.ModuleList([cbs(c, 8) for c in (8, 12, 16)])
        self.out = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, feats):
        assert len(feats) == len(self.lateral)
        outs = [lat(f) for f, lat in zip(feats, self.lateral)]
        top = outs[-1]
        for o in reversed(outs[:-1]):
            top = o + F.interpolate(top, size=o.shape[-2:], mode="nearest")
        return self.out(top)


class ShapeBranch(nn.Module):
    """Branches on a spatial size and computes a pooling size with int() arithmetic."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbs(3, 12, 3), cbs(12, 10, 3)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        x = self.a(x)
        if x.shape[-1] > 16:  # big inputs are pooled first
            x = F.max_pool2d(x, 2)
        x = self.b(x)
        k = int(x.shape[-1] / 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.avg_pool2d(x, k), 1), 1))


class DataBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = cbs(8, 8, 3)

    def forward(self, x):
        if x.mean() > 0:  # depends on the values: no trace can hold for every input
            return self.conv(x)
        return x


class WithDataBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.mid, self.tail = cbs(3, 8, 3), DataBranch(), nn.Sequential(cbs(8, 12, 3), cbs(12, 4, 1))

    def forward(self, x):
        return self.tail(self.mid(self.stem(x)))


class Caching(nn.Module):
    """Assigns a module attribute and iterates a split in forward (tracing must undo the cache)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbs(3, 8, 3), cbs(8, 6, 3)
        self.last_size = None

    def forward(self, x, scale=None):
        self.last_size = x.shape[-1]
        x = self.a(x)
        parts = [p * 2 for p in torch.split(x, [3, 5], 1)]
        if scale is not None:
            parts = [p * scale for p in parts]
        return self.b(torch.cat(parts, 1))


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(cls()).eval()


def _image(size: int) -> tuple:
    return (torch.randn(2, 3, size, size),)


def _features(size: int) -> tuple:
    return ([torch.randn(2, c, size // 2**i, size // 2**i) for i, c in enumerate((8, 12, 16))],)


@pytest.mark.parametrize("cls, x", [(YOLOv8ish, _image(32)), (MultiScaleHead, _features(16)),
                                    (ShapeBranch, _image(32)), (Caching, _image(16))],
                         ids=["ultralytics-c2f", "loop-over-feature-list", "shape-branch", "caching-split"])
def test_code_fx_rejects_is_traced_concretely_and_pruned_exactly(cls, x):
    model = _model(cls)
    with pytest.raises(slimprune.TraceError):
        symbolic_trace(model)  # plain fx cannot: the point of this test
    before = snapshot(model)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    assert plan.removed_channels > 0 and plan.params_after < plan.params_before and not plan.barriers
    assert not plan.regions, "the whole model was traced, not pieces of it"
    assert any("traced while running it" in n for n in plan.notes)
    assert_pruned_equals_silenced(model, plan, x, train=True)
    assert_unchanged(model, before)


def test_ultralytics_c2f_halves_are_pruned_independently():
    model = _model(YOLOv8ish)
    x = torch.randn(2, 3, 32, 32)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    kept = plan.kept("c2f.cv1.0", "weight", 0)
    halves = [sum(1 for i in kept if i < 16), sum(1 for i in kept if i >= 16)]
    assert halves[0] != halves[1], "this seed must cut the halves unequally to test the split rewrite"
    small = slimprune.apply(model, plan)
    assert isinstance(small, slimprune.Rewritten)  # chunk(2) became a split with the kept sizes
    assert f"split(c2f_cv1, {halves}, 1)" in small.code  # (c2f.cv1, not edited inside, is called as a module)
    # no Python decision depended on the input size, so the graph holds for other sizes
    y = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = slimprune.silence(model, plan)(y)
        assert torch.allclose(small(y), ref, atol=1e-5)


def test_shape_decisions_are_fixed_reported_and_the_users_forward_still_runs_other_sizes():
    model = _model(ShapeBranch)
    plan = slimprune.plan(model, 0.5, example_inputs=torch.randn(2, 3, 32, 32), fold_bias=False)
    note = next(n for n in plan.notes if "traced while running it" in n)
    assert "is True" in note and "= 8" in note  # the branch taken and the int() computed
    small = slimprune.apply(model, plan)
    assert type(small) is ShapeBranch  # no literal needed rewriting: the user's own forward runs
    for size in (12, 40):  # the other branch, another pooling size
        y = torch.randn(1, 3, size, size)
        assert_pruned_equals_silenced(model, plan, y)


def test_a_graph_replaying_fixed_shape_decisions_warns():
    class ChunkAndBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbs(3, 8, 3), cbs(4, 6, 3)

        def forward(self, x):
            u, v = list(self.a(x).chunk(2, 1))
            if x.shape[-1] >= 16:
                u = F.max_pool2d(u, 2)
                v = F.max_pool2d(v, 2)
            return self.b(u) + self.b(v)

    model = _model(ChunkAndBranch)
    x = torch.randn(2, 3, 16, 16)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    if not plan.edits:
        pytest.fail("the two halves must be cut unequally for this test: change the seed")
    with pytest.warns(slimprune.ShapeSpecializationWarning, match=r"\[\(2, 3, 16, 16\)\]"):
        assert_pruned_equals_silenced(model, plan, x)


def test_data_dependent_branch_is_refused_by_name_and_pruned_around():
    model = _model(WithDataBranch)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(slimprune.TraceError, match=r"a branch at node 'gt' in mid \(DataBranch\)\): this is "
                                                   r"data-dependent control flow"):
        slimprune.analyze(model, x)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    assert {p for p, _ in plan.regions} == {"tail"}
    idle = next(n for n in plan.notes if "nothing prunable" in n)
    assert "stem" in idle and "mid.conv" in idle  # traced, but every channel is on their boundary
    small = slimprune.apply(model, plan)
    assert sum(p.numel() for p in small.parameters()) == plan.params_after < plan.params_before
    with torch.no_grad():
        assert small(x).shape == model(x).shape


def test_tracing_undoes_what_forward_did_to_the_model():
    model = _model(Caching).train()
    model.last_size = "untouched"
    before = snapshot(model)  # BN running statistics included: a train-mode run would move them
    slimprune.plan(model, 0.5, example_inputs=torch.randn(2, 3, 16, 16))
    assert model.last_size == "untouched"
    assert_unchanged(model, before)
    assert model.training


def test_defaulted_none_argument_is_seen_as_none():
    model = _model(Caching)
    graph = slimprune.analyze(model, torch.randn(2, 3, 16, 16))
    nodes = list(graph.traced.gm.graph.nodes)
    assert [n.target for n in nodes if n.op == "placeholder"] == ["x", "scale"]  # the signature is kept
    muls = [n for n in nodes if n.target is operator.mul]
    assert [n.args[1] for n in muls] == [2, 2]  # `p * 2` twice, no `p * scale`: scale was None


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(programs(), st.integers(0, 2**31 - 1))
def test_concrete_trace_records_the_graph_symbolic_tracing_records(prog, seed):
    torch.manual_seed(seed)
    model = randomize_bn(SpecNet(prog), seed).eval()
    x = torch.randn(2, 3, 16, 16)
    symbolic, _ = symbolic_trace(model)
    concrete, _, fixed = concrete_trace(model, (x,))
    assert [n.format_node() for n in concrete.graph.nodes] == [n.format_node() for n in symbolic.graph.nodes]
    assert fixed == ()
    want, got = run(model, (x,)), run(concrete, (x,))
    assert len(want) == len(got) and all(torch.equal(a, b) for a, b in zip(want, got))


class NormByWidth(nn.Module):
    """Divides by sqrt(width) built with torch.tensor (RAFT's correlation does this)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbs(3, 8, 3), cbs(8, 6, 3), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.b(self.a(x))
        return self.head(y / torch.sqrt(torch.tensor(y.shape[1], dtype=torch.float32)))


def test_torch_tensor_of_a_traced_width_is_recorded_and_that_width_kept():
    model = _model(NormByWidth)
    x = torch.randn(2, 3, 16, 16)
    with pytest.warns(slimprune.UnsupportedOpWarning, match="channel count read from a tensor's shape as a value"):
        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    graph = slimprune.analyze(model, x, warn=False).traced.gm.graph
    assert any(n.target is torch.tensor for n in graph.nodes)  # a node, not a frozen 6
    assert plan.kept("b.0", "weight", 0) == tuple(range(6)) and plan.removed_channels == 4
    assert_pruned_equals_silenced(model, plan, x, train=True)


def test_raft_optical_flow_traces_whole_and_prunes_exactly():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.optical_flow.raft_small(weights=None).eval()
    x = (torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    assert not plan.regions and plan.params_after < plan.params_before / 2
    with pytest.warns(slimprune.ShapeSpecializationWarning):
        assert_pruned_equals_silenced(model, plan, x)


_GLOBAL_ACT = nn.Hardswish()  # a module instance called from forward but installed in no model


class CallsUninstalledModules(nn.Module):
    """Calls modules it does not own: a global one (transformers' hub-kernel wrappers are these)
    and one hidden in a plain dict, around prunable convs, on both tracing paths."""

    def __init__(self, shape_branch: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 4, 1)
        self.__dict__["_hidden"] = {"act": nn.SiLU()}
        self.shape_branch = shape_branch

    def forward(self, x):
        y = _GLOBAL_ACT(self.a(x))
        if self.shape_branch and y.shape[-1] > 4:  # fx alone rejects this: the concrete tracer runs
            y = y * 2
        return self.c(self._hidden["act"](self.bn(self.b(y))))


@pytest.mark.parametrize("shape_branch", [False, True], ids=["symbolic", "concrete"])
def test_modules_called_but_not_installed_are_traced_through_and_pruned_exactly(shape_branch: bool) -> None:
    model = randomize_bn(CallsUninstalledModules(shape_branch)).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no barrier: the uninstalled modules are plain code
        plan = slimprune.plan(model, 0.5, example_inputs=x)
    assert {g.members[0].split(".")[0] for g in plan.groups if g.removed} >= {"a", "b"}
    assert_pruned_equals_silenced(model, plan, x)
