"""plan, apply, prune and analyze pause the cyclic garbage collector and give it back as found."""

from __future__ import annotations

import gc

import pytest
import torch

import slimprune
from tests.models import TinyResNet


def _scores_recording_gc(seen: list[bool]):
    def importance(model, graph, group):  # noqa: ANN001, ANN202
        seen.append(gc.isenabled())
        return torch.arange(len(group), dtype=torch.float32)

    return importance


def test_the_collector_is_paused_while_planning_and_enabled_again_after() -> None:
    model, x = TinyResNet().eval(), torch.randn(1, 3, 16, 16)
    seen: list[bool] = []
    assert gc.isenabled()
    slimprune.prune(model, 0.5, importance=_scores_recording_gc(seen), example_inputs=x)
    assert seen and not any(seen)
    assert gc.isenabled()
    analysis = slimprune.analyze(model, x)
    assert gc.isenabled()
    slimprune.plan(analysis, 0.3, importance=_scores_recording_gc(seen))
    assert gc.isenabled() and not any(seen)


def test_a_collector_the_caller_disabled_stays_disabled() -> None:
    model, x = TinyResNet().eval(), torch.randn(1, 3, 16, 16)
    gc.disable()
    try:
        slimprune.prune(model, 0.5, example_inputs=x)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_is_enabled_again_when_planning_raises() -> None:
    model, x = TinyResNet().eval(), torch.randn(1, 3, 16, 16)
    with pytest.raises(slimprune.InvalidArgumentError):
        slimprune.plan(model, 0.5, importance="no such criterion", example_inputs=x)
    assert gc.isenabled()
    with pytest.raises(slimprune.PlanMismatchError):
        slimprune.apply(TinyResNet(width=4).eval(), slimprune.plan(model, 0.5, example_inputs=x))
    assert gc.isenabled()
