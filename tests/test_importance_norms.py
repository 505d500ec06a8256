"""The per-index weight norms of the L1/L2 scores are bit for bit what the all-torch code gave.

``slimprune._importance._per_index`` squares and widens torch's ``vector_norm`` in NumPy;
these tests hold it to the computation it replaced (``_torch_per_index``, kept here as it
was) on every dtype, layout, rank and reduced dim, comparing the float64 bit patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from slimprune._importance import _per_index

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _torch_per_index(t: torch.Tensor, dim: int, p: int) -> np.ndarray:
    """The computation before NumPy took over its elementwise tail (commit 77e90ea)."""
    t = t.detach()
    others = [d for d in range(t.dim()) if d != dim]
    if not others:
        v = t.abs() if p == 1 else t * t
    else:
        v = torch.linalg.vector_norm(t.float(), ord=p, dim=others)
        v = v if p == 1 else v * v
    return v.detach().to(device="cpu", dtype=torch.float64).numpy()


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.uint64)


@st.composite
def tensors(draw):
    """A tensor of 1-4 dims, of any float dtype and magnitude (zeros, tiny, huge, negative),
    contiguous or a permuted / channels-last / strided view, with one dim to keep."""
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank)))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([0.0, 1e-20, 1e-3, 1.0, 7.5, 1e4, 1e18]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    layout = draw(st.sampled_from(["contiguous", "permuted", "channels_last", "strided", "parameter"]))
    if layout == "permuted" and rank >= 2:
        t = t.transpose(0, rank - 1)
    elif layout == "channels_last" and rank == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        t = torch.cat([t, t], dim=0)[::2]
    elif layout == "parameter":
        t = nn.Parameter(t)  # requires grad: the scores read parameters as they are
    dim = draw(st.integers(0, t.dim() - 1))
    return t, dim


@settings(max_examples=400, deadline=None, derandomize=True)
@given(tensors(), st.sampled_from([1, 2]))
def test_per_index_norms_equal_the_torch_computation_bit_for_bit(case, p):
    t, dim = case
    got, want = _per_index(t, dim, p), _torch_per_index(t, dim, p)
    assert got.dtype == np.float64 and got.shape == want.shape
    np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [1, 2])
def test_per_index_norms_of_a_conv_weight_in_every_dtype_and_dim(dtype, p):
    t = (torch.randn(24, 12, 3, 3, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    for dim in range(4):
        np.testing.assert_array_equal(_bits(_per_index(t, dim, p)), _bits(_torch_per_index(t, dim, p)))


def test_l2_and_gamma_scores_of_a_resnet_are_unchanged_by_the_numpy_tail(monkeypatch):
    """The scores of a whole model (every slice, both roles) match the all-torch ones exactly."""
    import torchvision

    from slimprune import _importance

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    analysis = slimprune.analyze(model, torch.randn(1, 3, 32, 32), warn=False)
    fast = {name: _importance.unit_scores(analysis.graph, model, name) for name in ("l1", "l2", "bn_scale")}
    monkeypatch.setattr(_importance, "_per_index", _torch_per_index)
    for name, got in fast.items():
        want = _importance.unit_scores(analysis.graph, model, name)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(_bits(got[~np.isnan(got)]), _bits(want[~np.isnan(want)]))
