"""The other-mode trace is skipped only where forward's use of self.training cannot change
the traced ops (slimprune/_mode_source.py), and still made wherever it can."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from torch import nn

import slimprune
from slimprune import _trace
from slimprune._mode_source import training_changes_graph
from tests.helpers import assert_pruned_equals_silenced


def scaled_in_train(x: torch.Tensor, training: bool) -> torch.Tensor:
    """A function fx keeps as one node (wrapped below), whatever ``training`` is."""
    return x * 2 if training else x


fx.wrap("scaled_in_train")


def branchy(x: torch.Tensor, training: bool) -> torch.Tensor:
    """An ordinary function fx traces through: train mode adds an op."""
    return torch.tanh(x) if training else x


class _Base(nn.Module):
    """conv-BN-ReLU, ``middle``, 1x1 conv: ``middle`` is what each case varies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def middle(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.middle(torch.relu(self.bn(self.conv(x)))))


class Dropped(_Base):
    """``F.dropout(y, p, self.training)``: one node in both modes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(torch.relu(self.bn(self.conv(x))), 0.5, self.training))


class KeywordDropped(_Base):
    """``torch.nn.functional.dropout(..., training=self.training)``: a keyword, full path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.dropout(torch.relu(self.bn(self.conv(x))), p=0.5, training=self.training))


class Wrapped(_Base):
    """A ``torch.fx.wrap``-ed function given ``self.training`` (as torchvision's StochasticDepth)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(scaled_in_train(torch.relu(self.bn(self.conv(x))), self.training))


class Branches(_Base):
    """``if self.training:`` adds an op in train mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        if self.training:
            y = torch.tanh(y)
        return self.head(y)


class ThroughPlainFunction(_Base):
    """``self.training`` handed to a function fx traces through, which branches on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(branchy(torch.relu(self.bn(self.conv(x))), self.training))


class ThroughALocal(_Base):
    """The flag copied to a local first: the check does not follow it, so it must assume a branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.training
        return self.head(F.dropout(torch.relu(self.bn(self.conv(x))), 0.5, t))


class ShadowedName(_Base):
    """``F`` rebound inside forward to something that branches: not the functional module."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        class F:  # noqa: N801
            dropout = staticmethod(lambda y, p, training: torch.tanh(y) if training else y)
        return self.head(F.dropout(torch.relu(self.bn(self.conv(x))), 0.5, self.training))


class BranchesInAnExpression(_Base):
    """A ternary on the flag inside a one-node call's argument list: still a branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        return self.head(F.dropout(torch.tanh(y) if self.training else y, 0.5, self.training))


SAME = [Dropped, KeywordDropped, Wrapped, torchvision.ops.StochasticDepth]
DIFFERENT = [Branches, ThroughPlainFunction]
UNSURE = [ThroughALocal, ShadowedName, BranchesInAnExpression]


@pytest.mark.parametrize("cls", SAME, ids=lambda c: c.__name__)
def test_a_flag_only_passed_to_one_node_calls_does_not_change_the_graph(cls) -> None:
    assert not training_changes_graph(cls)


@pytest.mark.parametrize("cls", DIFFERENT + UNSURE, ids=lambda c: c.__name__)
def test_any_other_use_of_the_flag_counts_as_changing_the_graph(cls) -> None:
    assert training_changes_graph(cls)


def _ops(model: nn.Module, train: bool) -> list[tuple[str, str]]:
    model.train(train)
    gm, _ = _trace.symbolic_trace(model)
    model.eval()
    return [(n.op, str(n.target)) for n in gm.graph.nodes]


@pytest.mark.parametrize("cls", [Dropped, KeywordDropped, Wrapped] + DIFFERENT + UNSURE, ids=lambda c: c.__name__)
def test_the_check_says_same_only_where_both_modes_trace_the_same_ops(cls) -> None:
    """Soundness, checked by tracing both modes: 'does not change' implies the same ops."""
    model = cls()
    if not training_changes_graph(cls):
        assert _ops(model, True) == _ops(model, False)
    if cls in DIFFERENT:
        assert _ops(model, True) != _ops(model, False)  # the cases that must be caught do differ


def _count_traces(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = fx.Tracer.trace
    monkeypatch.setattr(fx.Tracer, "trace", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    return calls


def test_efficientnet_b0_is_traced_once_and_plans_as_before(monkeypatch) -> None:
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0().eval()
    x = torch.randn(1, 3, 64, 64)
    calls = _count_traces(monkeypatch)
    plan = slimprune.plan(model, 0.5, importance="l2", example_inputs=x)
    assert len(calls) == 1
    monkeypatch.setattr(_trace, "training_changes_graph", lambda cls: True)  # the old rule: trace both modes
    before = slimprune.plan(model, 0.5, importance="l2", example_inputs=x)
    assert len(calls) == 3
    assert plan.to_dict() == before.to_dict()


@pytest.mark.parametrize("cls", DIFFERENT, ids=lambda c: c.__name__)
def test_a_model_whose_graph_differs_between_modes_is_still_traced_in_both(cls) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, 3, 8, 8)
    traced = _trace.trace(model, x)
    assert traced.other_mode is not None
    plan = slimprune.plan(model, 0.5, example_inputs=x)
    assert plan.removed_channels > 0
    assert_pruned_equals_silenced(model, plan, x)
