"""The small one-idea helpers every call site shares: bisection, modes, atomic writes, unwrapping, |γ|."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import slimprune
from slimprune._atomic import atomic_write
from slimprune._bisect import first_true
from slimprune._gamma import unit_gamma_max
from slimprune._modes import kept_modes
from slimprune._parallel import unwrap_parallel


@given(st.integers(-5, 5), st.integers(0, 20), st.integers(-10, 30))
def test_first_true_finds_the_first_index_of_a_monotone_predicate(lo: int, width: int, cut: int) -> None:
    hi = lo + width
    calls: list[int] = []

    def pred(i: int) -> bool:
        calls.append(i)
        return i >= cut

    expected = next((i for i in range(lo, hi) if i >= cut), hi)
    assert first_true(lo, hi, pred) == expected
    assert all(lo <= i < hi for i in calls) and len(calls) <= max(width, 1).bit_length()


def test_kept_modes_restores_a_mixed_mode_model_even_when_the_body_raises() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
    model[1].eval()  # a frozen norm in a training model
    with pytest.raises(RuntimeError), kept_modes(model):
        model.eval()
        raise RuntimeError("boom")
    assert model.training and model[0].training and not model[1].training


def test_atomic_write_leaves_the_old_file_whole_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def chunks():
        yield b"new"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, chunks())
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    atomic_write(path, [b"ne", b"w"])
    assert path.read_bytes() == b"new"


def test_unwrap_parallel_returns_the_wrapped_module() -> None:
    inner = nn.Linear(2, 2)
    assert unwrap_parallel(nn.DataParallel(inner)) is inner and unwrap_parallel(inner) is inner


def test_unit_gamma_max_is_the_largest_scale_magnitude_per_unit() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([-3.0, 0.5, -0.25, 2.0]))
    graph = slimprune.analyze(model, torch.randn(1, 3, 4, 4)).graph
    g = unit_gamma_max(graph, model)
    (s,) = [s for s in graph.slices if s.role == "scale"]
    assert np.array_equal(g[s.units], [3.0, 0.5, 0.25, 2.0])
    others = np.setdiff1d(np.arange(graph.num_units), s.units)
    assert np.all(np.isneginf(g[others]))
