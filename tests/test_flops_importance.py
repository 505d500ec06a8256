"""importance="flops": each channel scored by the compute it carries, and what that buys a latency plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import slimprune
from slimprune._importance import unit_macs
from tests.helpers import assert_pruned_equals_silenced


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(24, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_channel_scores_the_macs_its_removal_saves_in_the_model_as_measured(which: int) -> None:
    m, x = _net(), torch.randn(1, 3, 12, 12)
    graph = slimprune.analyze(m, example_inputs=x).graph
    scores = unit_macs(graph, m)
    g = graph.groups[which]
    victim = int(g.units[0])

    def only_victim(model, graph, group):  # noqa: ANN001, ANN202
        return np.where(group.units == victim, 0.0, 1.0)

    total = sum(len(gr) for gr in graph.groups)
    p = slimprune.plan(m, 1.0 / total, importance=only_victim, example_inputs=x)
    assert p.removed_channels == 1
    small = slimprune.apply(m, p)
    saved = slimprune.measure.measure(m, x, latency=False).macs - slimprune.measure.measure(small, x, latency=False).macs
    assert scores[victim] == pytest.approx(saved, rel=0, abs=0.5)
    assert np.all(scores[g.units] == scores[victim])  # a group's channels carry the same compute


def test_flops_importance_plans_exact_models_for_every_target(tmp_path) -> None:
    m, x = _net(), torch.randn(1, 3, 12, 12)
    for target in ("channels", "flops"):
        p = slimprune.plan(m, 0.4, importance="flops", target=target, example_inputs=x)
        assert_pruned_equals_silenced(m, p, x)
    # Ranked by compute, the cheap channels go first: at a FLOPs target the plan removes more
    # channels than an L2 plan that reaches the same FLOPs.
    by_flops = slimprune.plan(m, 0.4, importance="flops", target="flops", example_inputs=x)
    by_l2 = slimprune.plan(m, 0.4, importance="l2", target="flops", example_inputs=x)
    assert by_flops.flops_after <= 0.6 * by_flops.flops_before + 1
    assert by_flops.removed_channels >= by_l2.removed_channels


def test_an_unknown_importance_lists_flops_among_the_choices() -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match="'flops'"):
        slimprune.plan(_net(), 0.5, importance="macs", example_inputs=torch.randn(1, 3, 12, 12))
