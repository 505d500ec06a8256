"""The threshold/fold probe skips its batch-statistics run only where it cannot matter.

Without a norm that computes batch statistics in training (``_NormBase``), that run is the
eval-mode run again, so skipping it must leave every plan unchanged; with such a norm the
run must still happen.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from slimprune import _folding
from slimprune.errors import SlimpruneError
from tests.helpers import assert_pruned_equals_silenced
from tests.models import SpecNet, randomize_bn
from tests.strategies import programs

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _without_norms(model: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by an Identity: nothing depends on the mode."""
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(m, child_name, nn.Identity())
    return model


def _build(prog, seed: int, no_norm: bool):
    torch.manual_seed(seed)
    model = SpecNet(prog)
    model = randomize_bn(_without_norms(model) if no_norm else model, seed).eval()
    return model, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _plan(model, x) -> dict | str:
    """The plan as a dict, or the name of the error planning raised."""
    try:
        return slimprune.plan(model, 0.4, example_inputs=x, importance="l2").to_dict()
    except SlimpruneError as exc:
        return type(exc).__name__


def _plans(model, x, monkeypatch) -> tuple[dict | str, dict | str, list[bool]]:
    """The plan as made, the plan with the batch-statistics run forced, and the modes probed."""
    modes: list[bool] = []
    real_run = _folding._probe_run

    def spy(graph, inputs, removed, batch_stats):
        modes.append(batch_stats)
        return real_run(graph, inputs, removed, batch_stats)

    monkeypatch.setattr(_folding, "_probe_run", spy)
    fast = _plan(model, x)
    modes_fast = list(modes)
    with monkeypatch.context() as m:
        m.setattr(_folding, "_mode_matters", lambda graph: True)
        full = _plan(model, x)
    return fast, full, modes_fast


@settings(max_examples=10, **SETTINGS)
@given(programs(max_ops=5), st.integers(0, 2**31 - 1), st.booleans())
def test_skipping_the_batch_statistics_run_leaves_the_plan_unchanged(prog, seed, no_norm):
    model, x = _build(prog, seed, no_norm)
    with pytest.MonkeyPatch.context() as mp:
        fast, full, modes = _plans(model, x, mp)
    assert fast == full
    if modes:  # the plan probed: the batch-statistics run happens exactly when a norm has one
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert (True in modes) == has_bn


def test_norm_free_net_pruned_without_the_second_run_equals_the_silenced_original() -> None:
    prog = [("cba", 8, 3, 1, 1, "relu"), ("res", 8, 1, "relu"), ("res", 16, 2, "relu")]
    model, x = _build(prog, 0, no_norm=True)
    plan = slimprune.plan(model, 0.5, example_inputs=x, importance="l2")
    assert plan.changed
    assert_pruned_equals_silenced(model, plan, (x,))

