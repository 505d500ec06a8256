"""Rules must hold for every way an op can be written: writes into views of a tensor,
every tensor operand of an elementwise op, and split pieces that must not go empty.

Each model is checked with the threshold oracle (the removed channels have γ = β = 0, so
the pruned model must equal the *unpruned* one) and against ``silence`` with ratio plans,
in eval and train mode, at the example's batch size and another one.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import slimprune
from tests.helpers import assert_close, assert_pruned_equals_silenced, run
from tests.models import randomize_bn

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
X3 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))  # another batch size


def zero_channels(bn: nn.BatchNorm2d, channels: list[int]) -> None:
    """γ = β = 0: those channels are 0 everywhere, so pruning them must change nothing."""
    with torch.no_grad():
        bn.weight[channels] = 0.0
        bn.bias[channels] = 0.0


def assert_threshold_pruning_changes_nothing(model: nn.Module, removed: dict[str, tuple[int, ...]]) -> nn.Module:
    """Threshold pruning removes exactly ``removed`` (BN name -> channels) and the pruned
    model equals the unpruned one, eval and train, on the example and another batch size."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, threshold=0.0, example_inputs=X)
    for bn, channels in removed.items():
        kept = plan.kept(bn, "weight", 0)
        assert kept is not None and set(range(model.get_submodule(bn).num_features)) - set(kept) == set(channels)
    small = slimprune.apply(model, plan)
    for x in (X, X3):
        assert_close(run(model, (x,)), run(small, (x,)))
        assert_close(run(copy.deepcopy(model), (x,), True), run(copy.deepcopy(small), (x,), True))
    assert_pruned_equals_silenced(model, plan, X3, train=True)
    return small


# ----------------------------------------------------------------- writes into views
AUGMENTED: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def _iadd(v, w):
    v += w
    return v


def _isub(v, w):
    v -= w
    return v


def _imul(v, w):
    v *= w
    return v


def _idiv(v, w):
    v /= w.abs() + 1
    return v


def _ipow(v, w):
    v **= 2
    return v


AUGMENTED = {"+=": _iadd, "-=": _isub, "*=": _imul, "/=": _idiv, "**=": _ipow}


class ViewWrite(nn.Module):
    """A slice of y written in place (``v = y[:, 0:4]; v op= w``), then y read by a conv.

    ``concrete``: forward iterates a chunk result, so fx needs the concrete tracer."""

    def __init__(self, write: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], concrete: bool) -> None:
        super().__init__()
        self.write, self.concrete = write, concrete
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(3, 4, 1, bias=False)
        self.b3 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        v = list(y.chunk(2, 1))[0] if self.concrete else y[:, 0:4]
        self.write(v, self.b3(self.c3(x)))
        return self.c2(y)


@pytest.mark.parametrize("concrete", [False, True], ids=["symbolic", "concrete"])
@pytest.mark.parametrize("op", list(AUGMENTED))
def test_augmented_assignment_into_a_view_still_writes_into_its_base_after_pruning(op, concrete):
    """fx used to record ``v += w`` as ``v = v + w``: the rewritten graph lost the write into y."""
    torch.manual_seed(0)
    model = randomize_bn(ViewWrite(AUGMENTED[op], concrete)).eval()
    zero_channels(model.b1, [1, 6])
    zero_channels(model.b3, [1])  # channel 1 of v meets channel 1 of w: both silent, both go
    removed = {"b1": (1, 6), "b3": (1,)} if op != "**=" else {"b1": (1, 6)}  # (**= 2 reads no w)
    small = assert_threshold_pruning_changes_nothing(model, removed)
    assert isinstance(small, slimprune.Rewritten)  # the slice's literal bounds were rewritten


@pytest.mark.parametrize("concrete", [False, True], ids=["symbolic", "concrete"])
def test_ratio_plans_of_a_model_writing_into_a_view_equal_the_silenced_original(concrete):
    torch.manual_seed(0)
    model = randomize_bn(ViewWrite(_iadd, concrete)).eval()
    plan = slimprune.plan(model, 0.4, example_inputs=X)
    small = assert_pruned_equals_silenced(model, plan, X3, train=True)
    assert isinstance(small, slimprune.Rewritten)


INPLACE_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
    "add_": lambda v, w: v.add_(w),
    "mul_": lambda v, w: v.mul_(w),
    "clamp_": lambda v, w: v.clamp_(max=0.3),
    "relu(inplace)": lambda v, w: F.relu(v.sub_(0.2), inplace=True),
}


@pytest.mark.parametrize("method", list(INPLACE_METHODS))
def test_in_place_tensor_methods_on_a_view_write_into_its_base_after_pruning(method):
    """(fx records these as in-place calls already; this guards that it stays so.)"""
    torch.manual_seed(0)
    model = randomize_bn(ViewWrite(INPLACE_METHODS[method], False)).eval()
    zero_channels(model.b1, [1, 6])
    zero_channels(model.b3, [1])
    removed = {"b1": (1, 6), "b3": (1,)} if method in ("add_", "mul_") else {"b1": (1, 6)}
    assert isinstance(assert_threshold_pruning_changes_nothing(model, removed), slimprune.Rewritten)


class SizeArithmetic(nn.Module):
    """``h //= 2`` on a size read from a shape: Python rebinds h, the old value stays usable."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b1(self.c1(x))
        h = x.shape[2]
        h0 = h
        h //= 2
        z = self.c2(y[:, :4])
        return z.reshape(z.shape[0], 4, h, -1)[..., :h0]


def test_augmented_assignment_on_a_traced_size_keeps_python_semantics():
    model = randomize_bn(SizeArithmetic()).eval()
    zero_channels(model.b1, [0, 5])
    assert_threshold_pruning_changes_nothing(model, {"b1": (0, 5)})


# --------------------------------------------------- every tensor operand of an elementwise op
OPERAND_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "torch.clamp(a, min=b)": lambda a, b: torch.clamp(a, min=b),
    "torch.clamp(a, b, b + 1)": lambda a, b: torch.clamp(a, b, b + 1),
    "a.clamp(max=b)": lambda a, b: a.clamp(max=b),
    "a.clamp_min(b)": lambda a, b: a.clamp_min(b),
    "a.pow(b)": lambda a, b: a.abs().pow(b),
    "a ** b": lambda a, b: a.abs() ** b,
    "torch.pow(a, b)": lambda a, b: torch.pow(a.abs(), b),
    "torch.maximum(a, b)": lambda a, b: torch.maximum(a, b),
    "torch.where(a > b, a, b)": lambda a, b: torch.where(a > b, a, b),
    "torch.lerp(a, b, sigmoid(b))": lambda a, b: torch.lerp(a, b, torch.sigmoid(b)),
    "torch.addcmul(a, b, b)": lambda a, b: torch.addcmul(a, b, b, value=0.5),
    "torch.mul(a, other=b)": lambda a, b: torch.mul(a, other=b),
}


class TwoOperands(nn.Module):
    """Two conv branches a and b combined by one elementwise op, then a conv."""

    def __init__(self, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], b_channels: int = 6) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6))
        self.b = nn.Sequential(nn.Conv2d(3, b_channels, 1, bias=False), nn.BatchNorm2d(b_channels))
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.op(self.a(x), self.b(x)))


@pytest.mark.parametrize("op", list(OPERAND_OPS))
def test_every_tensor_operand_of_an_elementwise_op_is_tied_to_the_others(op):
    """clamp/pow with a tensor bound or exponent used to prune a and b independently."""
    torch.manual_seed(0)
    model = randomize_bn(TwoOperands(OPERAND_OPS[op])).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.4, example_inputs=X, fold_bias=False)
    assert any("a.0.weight[0]" in g.members and "b.0.weight[0]" in g.members for g in plan.groups)
    assert_pruned_equals_silenced(model, plan, X3, train=True)
    # threshold oracle: a channel silenced in both operands goes, and nothing changes
    model = randomize_bn(TwoOperands(OPERAND_OPS[op])).eval()
    zero_channels(model.a[1], [2])
    zero_channels(model.b[1], [2])
    if op not in ("a.pow(b)", "a ** b", "torch.pow(a, b)"):  # (0 ** 0 = 1: a constant, folded)
        assert_threshold_pruning_changes_nothing(model, {"a.1": (2,), "b.1": (2,)})


def test_a_size_one_tensor_exponent_ties_nothing():
    """``a.abs() ** (1 + sigmoid(b))`` with b of one channel: a prunes alone, b stays."""
    torch.manual_seed(0)
    model = randomize_bn(TwoOperands(lambda a, b: a.abs() ** (1 + torch.sigmoid(b)), b_channels=1)).eval()
    plan = slimprune.plan(model, 0.4, example_inputs=X, fold_bias=False)
    assert plan.kept("a.1", "weight", 0) != tuple(range(6))
    assert plan.kept("b.1", "weight", 0) in (None, (0,))  # its one channel stays
    assert_pruned_equals_silenced(model, plan, X3, train=True)


# ------------------------------------------------------ split pieces never go empty
PARAMETER_FREE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max_pool2d": lambda a: F.max_pool2d(a, 3, 1, 1),
    "avg_pool2d": lambda a: F.avg_pool2d(a, 3, 1, 1),
    "reflect pad": lambda a: F.pad(a, (1, 1, 1, 1), mode="reflect")[..., 1:-1, 1:-1],
    "replicate pad": lambda a: F.pad(a, (1, 1, 1, 1), mode="replicate")[..., 1:-1, 1:-1],
    "bilinear interpolate": lambda a: F.interpolate(a, scale_factor=2, mode="bilinear")[..., ::2, ::2],
}


class PieceThroughParameterFreeOps(nn.Module):
    """y cut in two (chunk, split or slices); piece a passes an op without parameters, and
    both pieces meet again in a concat: their channels have the same members."""

    def __init__(self, cut: str, op: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.cut, self.op = cut, op
        self.c1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        if self.cut == "chunk":
            a, b = y.chunk(2, 1)
        elif self.cut == "split":
            a, b = torch.split(y, [2, 2], 1)
        else:
            a, b = y[:, :2], y[:, 2:]
        return self.c2(torch.cat([b, self.op(a)], 1))


@pytest.mark.parametrize("cut", ["chunk", "split", "slice"])
@pytest.mark.parametrize("op", list(PARAMETER_FREE))
def test_a_piece_whose_channels_are_all_silent_keeps_one_so_the_op_after_it_still_runs(cut, op):
    """Both channels of piece a have γ = β = 0: one must stay (a [B, 0, H, W] tensor made
    max_pool2d, reflect/replicate pad and bilinear interpolate raise)."""
    torch.manual_seed(0)
    model = randomize_bn(PieceThroughParameterFreeOps(cut, PARAMETER_FREE[op])).eval()
    zero_channels(model.b1, [0, 1])
    plan = slimprune.plan(model, threshold=0.0, example_inputs=X)
    kept = plan.kept("b1", "weight", 0)
    assert kept is not None and len(set(kept) & {0, 1}) == 1 and {2, 3} <= set(kept)
    small = slimprune.apply(model, plan)
    for x in (X, X3):
        assert_close(run(model, (x,)), run(small, (x,)))
        assert_close(run(copy.deepcopy(model), (x,), True), run(copy.deepcopy(small), (x,), True))


@pytest.mark.parametrize("cut", ["chunk", "split", "slice"])
def test_ratio_plans_keep_a_channel_in_every_piece(cut):
    torch.manual_seed(0)
    model = randomize_bn(PieceThroughParameterFreeOps(cut, PARAMETER_FREE["max_pool2d"])).eval()
    plan = slimprune.plan(model, 0.5, example_inputs=X, importance="l1")
    kept = plan.kept("b1", "weight", 0)
    assert kept is not None and len(set(kept) & {0, 1}) == 1 and len(set(kept) & {2, 3}) == 1
    assert_pruned_equals_silenced(model, plan, X3, train=True)
    with pytest.raises(slimprune.InfeasiblePlanError):  # (one group of 4 could lose 3)
        slimprune.plan(model, 0.75, example_inputs=X)
