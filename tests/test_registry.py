"""register_rule warns before it replaces a rule, and refuses bad targets before registering any."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import slimprune
from slimprune.rules import lookup_rule
from slimprune.rules._registry import _MODULE_RULES


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1)


def _first(ctx, node):  # pragma: no cover - never traced here
    return ctx.passthrough(node)


def _second(ctx, node):  # pragma: no cover - never traced here
    return ctx.passthrough(node)


@pytest.fixture
def scale_cls():
    yield _Scale
    _MODULE_RULES.pop(_Scale, None)


def test_registering_a_target_again_warns_naming_both_rules(scale_cls) -> None:
    slimprune.register_rule(scale_cls)(_first)
    with pytest.warns(slimprune.RuleReplacedWarning, match=r"_Scale.*replaces the rule .*_first with .*_second.*replace=True"):
        slimprune.register_rule(scale_cls)(_second)
    assert lookup_rule("call_module", None, scale_cls()).propagate is _second


def test_replace_true_replaces_silently(scale_cls) -> None:
    slimprune.register_rule(scale_cls)(_first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slimprune.register_rule(scale_cls, replace=True)(_second)
    assert lookup_rule("call_module", None, scale_cls()).propagate is _second


def test_the_same_rule_twice_is_not_a_replacement(scale_cls) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slimprune.register_rule(scale_cls, scale_cls)(_first)
        slimprune.register_rule(scale_cls)(_first)


def test_built_in_rules_register_without_replacing_each_other() -> None:
    code = "import warnings; warnings.simplefilter('error'); import slimprune"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_bad_target_registers_nothing(scale_cls) -> None:
    with pytest.raises(TypeError, match="nn.Module classes"):
        slimprune.register_rule(scale_cls, 3)(_first)
    assert scale_cls not in _MODULE_RULES
