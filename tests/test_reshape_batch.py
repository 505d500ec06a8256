"""Reshapes that merge the channels into the batch axis (MobileViT's ``unfolding``:
``(B, C, H, W) -> (B * C * H/p, p, W/p, p)``) are followed as the trace of one sample would
follow them, so the plan does not depend on the traced batch; one whose first output axis
does not hold whole samples stays a barrier with a warning."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced
from tests.models import randomize_bn


class PatchMixer(nn.Module):
    """MobileViT's block in miniature: unfold into patches through the batch axis, a residual
    Linear over the channels, fold back with ``b * c * (h // p)`` read before the Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))
        b, c, hh, ww = h.shape
        p = 2
        t = h.reshape(b * c * (hh // p), p, ww // p, p).transpose(1, 2)
        t = t.reshape(b, c, (hh // p) * (ww // p), p * p).transpose(1, 3).reshape(b * p * p, -1, c)
        t = self.mix(t) + t  # (the Linear's labels first: the fold-back reshapes a tensor c was not read from)
        f = t.contiguous().view(b, p * p, -1, c).transpose(1, 3)
        f = f.reshape(b * c * (hh // p), ww // p, p, p).transpose(1, 2).reshape(b, c, hh, ww)
        return self.head(f)


class SplitSamples(nn.Module):
    """A literal reshape of (2, 6, 4, 4) into (3, 64): its first axis cuts through samples."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x).reshape(3, 64) * 2.0
        return self.head(y.reshape(2, 6, 4, 4))


def plan_with_barriers(model: nn.Module, x: torch.Tensor) -> tuple[slimprune.PruningPlan, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
    return plan, [str(w.message) for w in caught if issubclass(w.category, slimprune.UnsupportedOpWarning)]


def patch_mixer() -> PatchMixer:
    torch.manual_seed(0)
    return randomize_bn(PatchMixer()).eval()


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_channels_merged_into_the_batch_axis_are_pruned_exactly_whatever_the_traced_batch(batch: int) -> None:
    """Traced on 1, 2 or 3 samples: no barrier, the stem/Linear width shrinks, the pruned
    model equals the silenced original (on the traced batch and on another one)."""
    model = patch_mixer()
    x = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
    plan, barriers = plan_with_barriers(model, x)
    assert not barriers, barriers
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.stem.out_channels == small.mix.in_features == small.mix.out_features == small.head.in_channels < 8
    other = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    assert_pruned_equals_silenced(model, plan, other)


def test_the_plan_of_a_batch_merging_reshape_does_not_depend_on_the_traced_batch() -> None:
    model = patch_mixer()
    plans = [plan_with_barriers(model, torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)))[0]
             for n in (1, 2, 3)]
    assert plans[0].slices == plans[1].slices == plans[2].slices
    assert plans[0].params_after == plans[1].params_after == plans[2].params_after


def test_a_batch_merging_reshape_that_cuts_through_samples_stays_a_barrier_with_its_channels_kept() -> None:
    """(2, 6, 4, 4) -> (3, 64) mixes the channels of two samples in each row: no layout of the
    kept channels is the same for every batch, so the engine keeps them and says so."""
    torch.manual_seed(0)
    model = SplitSamples().eval()
    x = torch.randn(2, 3, 4, 4)
    plan, barriers = plan_with_barriers(model, x)
    assert len(barriers) == 1 and "merges the batch axis with the channels" in barriers[0]
    assert "does not hold whole samples" in barriers[0]
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.stem.out_channels == small.head.in_channels == 6
