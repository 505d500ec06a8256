"""The submodule table answers as get_submodule does, and prune fingerprints the model once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimprune
from slimprune import _analysis, _compose, _freeze, _plan
from slimprune._submodules import Submodules
from tests.models import TinyResNet


def test_the_table_gives_what_get_submodule_gives_for_every_path() -> None:
    shared = nn.Conv2d(4, 4, 1)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(shared, nn.ReLU()), shared)  # one module, two paths
    subs = Submodules(model)
    paths = ["", "0", "1", "1.0", "1.1", "2"]
    for path in paths:
        assert subs(path) is model.get_submodule(path)
    assert subs("1.0") is subs("2") is shared


def test_a_missing_path_raises_as_get_submodule_does() -> None:
    subs = Submodules(nn.Sequential(nn.Conv2d(3, 4, 1)))
    with pytest.raises(AttributeError):
        subs("0.nothing")


def test_prune_fingerprints_the_model_once_and_apply_checks_a_given_plan(monkeypatch) -> None:
    torch.manual_seed(0)
    model, x = TinyResNet().eval(), torch.randn(2, 3, 16, 16)
    calls: list[int] = []
    real = _plan.fingerprint
    for module in (_plan, _analysis, _freeze, _compose):
        monkeypatch.setattr(module, "fingerprint", lambda m: calls.append(1) or real(m))
    small = slimprune.prune(model, 0.5, example_inputs=x)
    assert len(calls) == 1
    plan = slimprune.plan(model, 0.5, example_inputs=x)
    calls.clear()
    torch.testing.assert_close(slimprune.apply(model, plan)(x), small(x))
    assert len(calls) == 1  # apply with a plan from elsewhere still checks it against the model
    with pytest.raises(slimprune.PlanMismatchError, match="fingerprint"):
        slimprune.apply(TinyResNet(width=4).eval(), plan)
