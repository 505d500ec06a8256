"""The one "trace symbolically, else concretely" helper (slimprune._trace.symbolic_else_concrete)
that trace, trace_module (regions) and the rewriter's re-trace all go through."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from slimprune._trace import symbolic_else_concrete
from slimprune.errors import TraceError


class Plain(nn.Module):
    """fx traces this symbolically."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BranchOnSize(Plain):
    """``if`` on a size: symbolic tracing fails, a concrete trace fixes the decision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[-1] > 2:
            return y * 2
        return y


class Untraceable(Plain):
    """``if`` on data: neither trace can record it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if bool(y.sum() > 0) else -y


def _symbolic(gm: Any, names: Any) -> tuple[str, Any]:
    return "symbolic", gm


def _concrete(gm: Any, names: Any, fixed: Any, inputs: Any) -> tuple[str, Any]:
    return "concrete", (gm, fixed, inputs[0].shape)


def test_a_symbolic_trace_is_taken_and_no_inputs_are_built_for_it() -> None:
    def candidates() -> list:
        raise AssertionError("inputs were built although the symbolic trace succeeded")

    kind, _ = symbolic_else_concrete(Plain(), candidates, _symbolic, _concrete)
    assert kind == "symbolic"


def test_the_first_candidate_that_traces_concretely_is_taken() -> None:
    def reject_small(gm: Any, names: Any, fixed: Any, inputs: Any) -> tuple[str, Any]:
        if inputs[0].shape[-1] < 4:
            raise TraceError("too small")
        return _concrete(gm, names, fixed, inputs)

    model = BranchOnSize()
    shapes = [(1, 3, 2, 2), (1, 3, 4, 4), (1, 3, 8, 8)]
    kind, (gm, fixed, shape) = symbolic_else_concrete(
        model, lambda: [(torch.randn(s),) for s in shapes], _symbolic, reject_small)
    assert kind == "concrete" and shape == (1, 3, 4, 4) and fixed  # the size decision is reported
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(gm(x), model(x))  # the branch taken at 4x4 (y * 2) is the one recorded


@pytest.mark.parametrize("candidates", [None, lambda: []], ids=["none", "empty"])
def test_without_candidates_the_symbolic_error_is_raised(candidates: Any) -> None:
    with pytest.raises(TraceError) as info:
        symbolic_else_concrete(BranchOnSize(), candidates, _symbolic, _concrete)
    assert "failed too" not in str(info.value)


def test_when_both_fail_the_error_names_both_attempts() -> None:
    with pytest.raises(TraceError, match="failed too"):
        symbolic_else_concrete(Untraceable(), lambda: [(torch.randn(1, 3, 4, 4),)], _symbolic, _concrete)
