"""The score cache of an Analysis: repeated plans reuse the weight norms, and any change to a
weight (in place, by load_state_dict, by new storage) makes them be read again."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from slimprune._importance import unit_scores
from slimprune._score_cache import ScoreCache
from tests.models import TinyResNet, randomize_bn

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _model() -> nn.Module:
    """TinyResNet with random BN statistics, in eval mode."""
    torch.manual_seed(0)
    return randomize_bn(TinyResNet()).eval()


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_a_repeated_l2_plan_reads_no_weight_again() -> None:
    model = _model()
    analysis = slimprune.analyze(model, X)
    first = slimprune.plan(analysis, 0.5, importance="l2")
    misses = analysis.scores.misses
    assert misses > 0 and analysis.scores.hits == 0
    again = slimprune.plan(analysis, 0.5, importance="l2")
    assert analysis.scores.misses == misses and analysis.scores.hits >= misses
    assert again.to_dict() == first.to_dict()


def test_the_probes_bit_for_bit_restore_keeps_the_scores() -> None:
    """A plan at another ratio runs the probe, which zeroes and restores weights (new versions,
    same values): the next plan still reads every norm from the cache."""
    model = _model()
    analysis = slimprune.analyze(model, X)
    slimprune.plan(analysis, 0.5, importance="l2")
    probed = analysis.probes.misses
    slimprune.plan(analysis, 0.3, importance="l2")
    assert analysis.probes.misses > probed  # the probe did run (and silenced weights)
    misses = analysis.scores.misses
    got = slimprune.plan(analysis, 0.7, importance="l2")
    assert analysis.scores.misses == misses
    assert got.to_dict() == slimprune.plan(model, 0.7, importance="l2", example_inputs=X).to_dict()


def test_an_in_place_change_to_a_weight_is_seen() -> None:
    """Mutate a weight in place after planning: the scores differ and the plan equals a fresh plan."""
    model = _model()
    analysis = slimprune.analyze(model, X)
    before_scores = unit_scores(analysis.graph, model, "l2", cache=analysis.scores)
    before = slimprune.plan(analysis, 0.5, importance="l2")
    with torch.no_grad():  # the first conv's last filters become the weakest of their group
        w = _convs(model)[0].weight
        w[w.shape[0] // 2:].mul_(1e-3)
    after_scores = unit_scores(analysis.graph, model, "l2", cache=analysis.scores)
    fresh_scores = unit_scores(analysis.graph, model, "l2")
    assert not np.array_equal(np.nan_to_num(after_scores), np.nan_to_num(before_scores))
    np.testing.assert_array_equal(after_scores, fresh_scores)
    got = slimprune.plan(analysis, 0.5, importance="l2")
    assert got.to_dict() == slimprune.plan(model, 0.5, importance="l2", example_inputs=X).to_dict()
    assert got.to_dict() != before.to_dict()


def test_load_state_dict_and_new_storage_are_seen() -> None:
    model, other = _model(), randomize_bn(TinyResNet(), seed=1).eval()
    analysis = slimprune.analyze(model, X)
    slimprune.plan(analysis, 0.5, importance="l1")
    model.load_state_dict(other.state_dict())  # copies in place: versions move
    got = slimprune.plan(analysis, 0.5, importance="l1")
    assert got.to_dict() == slimprune.plan(model, 0.5, importance="l1", example_inputs=X).to_dict()
    conv = _convs(model)[1]
    conv.weight.data = torch.randn_like(conv.weight)  # same Parameter object, new storage
    misses = analysis.scores.misses
    got = slimprune.plan(analysis, 0.5, importance="l1")
    assert analysis.scores.misses > misses
    assert got.to_dict() == slimprune.plan(model, 0.5, importance="l1", example_inputs=X).to_dict()


def test_restored_moves_only_the_entries_of_tensors_restored_in_place() -> None:
    a, b = torch.ones(3), torch.ones(3)
    cache = ScoreCache()
    calls: list[int] = []

    def compute(t: torch.Tensor) -> np.ndarray:
        calls.append(1)
        return t.numpy().copy()

    cache.get(("a",), a, compute)
    cache.get(("b",), b, compute)
    stamps = [(id(t), t.data_ptr(), t._version) for t in (a, b)]
    a.mul_(1.0)
    b.mul_(1.0)
    after = [(id(t), t.data_ptr(), t._version) for t in (a, b)]
    cache.restored(stamps[:1], after[:1])  # only a was restored bit for bit
    cache.get(("a",), a, compute)
    assert len(calls) == 2  # a from the cache
    cache.get(("b",), b, compute)
    assert len(calls) == 3  # b read again


def test_a_cached_array_cannot_be_written() -> None:
    cache = ScoreCache()
    v = cache.get(("k",), torch.ones(2), lambda t: t.numpy().copy())
    assert not v.flags.writeable


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["mul", "add", "probe", "data"]),
                          st.floats(0.1, 3.0)), max_size=6))
def test_cached_scores_always_equal_fresh_scores(steps) -> None:
    """Any sequence of weight changes and probing plans: the cached scores are the fresh ones."""
    model = _model()
    analysis = slimprune.analyze(model, X)
    convs = _convs(model)
    for i, op, x in steps:
        w = convs[i % len(convs)].weight
        with torch.no_grad():
            if op == "mul":
                w[0].mul_(x)
            elif op == "add":
                w.add_(x - 1.0)
            elif op == "data":
                w.data = w.detach().clone() * x
        if op == "probe":
            slimprune.plan(analysis, x / 3.0 * 0.9, importance="l2")
        for importance in ("l1", "l2"):
            np.testing.assert_array_equal(unit_scores(analysis.graph, model, importance, cache=analysis.scores),
                                          unit_scores(analysis.graph, model, importance))
