"""A folded constant is exact for every way the pruned model is run (issue 16, items 1, 3, 4, 6).

Each model here was found by an independent fuzzer: the plan applied, and the pruned model
computed something else than the silenced original, in train mode, at another batch size,
at the second call of a shared layer, or crashed on its first forward.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimprune

from .helpers import assert_pruned_equals_silenced, run, snapshot, assert_unchanged


def _affine_free(norm: str, c: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(c, affine=False)
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=True)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_a_channel_removed_before_an_affine_free_norm_is_zero_in_train_mode_as_in_eval(norm: str) -> None:
    """Item 1: the eval-mode constant -mean/std of an affine-free norm is not folded into the
    next layer's bias when training mode would see 0 there (it was: 0.26 max error in train mode)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _affine_free(norm, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model.eval()
    model[1].running_mean.fill_(-1.0)  # what makes the eval-mode constant large
    x = torch.randn(2, 3, 8, 8)
    plan = slimprune.plan(model, 0.5, example_inputs=x, importance="l1")
    assert plan.removed_channels == 4
    for train in (False, True):
        assert_pruned_equals_silenced(model, plan, x, train=train)
    # The silenced reference is the same function in both modes on the removed channels:
    # they contribute nothing, so the plan folds nothing.
    assert not plan.folds


def test_threshold_pruning_keeps_a_constant_that_only_holds_in_eval_mode() -> None:
    """Item 1, network slimming: γ = 0 before an affine-free BatchNorm makes a channel
    constant in eval mode (running statistics) but 0 with batch statistics; it is kept."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8, affine=False),
                          nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    model.eval()
    with torch.no_grad():
        model[1].weight[:3] = 0
        model[1].bias[:3] = 0.5
        model[3].running_mean.fill_(-1.0)
        model[5].weight[:2] = 0  # a channel whose constant holds in both modes
        model[5].bias[:2] = 0.3
    x = torch.randn(4, 3, 8, 8)
    plan = slimprune.plan(model, threshold=1e-6, example_inputs=x)
    removed = {g.members[0]: g.removed for g in plan.groups if g.removed}
    assert removed == {"4.weight[0]": (0, 1)}, removed
    pruned = slimprune.apply(model, plan)
    for train in (False, True):
        a, b = run(pruned, (x,), train), run(model, (x,), train)
        assert torch.allclose(a[0], b[0], atol=1e-5), (train, (a[0] - b[0]).abs().max())


class _BatchStatGate(nn.Module):
    """A gate from pooled features, broadcast back over space, normalised with batch statistics:
    at batch 1 it maps any sample to its shift, at batch 4 it varies per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.fc = nn.Conv2d(8, 1, 1)
        self.bn = nn.BatchNorm2d(1, track_running_stats=False)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        pooled = self.fc(y.mean((2, 3), keepdim=True)).expand(-1, -1, y.shape[2], y.shape[3])
        return self.c2(y * torch.sigmoid(self.bn(pooled)))


@pytest.mark.parametrize("batch", [1, 4])
def test_a_channel_constant_only_at_batch_size_one_is_not_folded(batch: int) -> None:
    """Item 3: the probe used one sample, where batch statistics make the gated channel look
    constant; the pruned model was then off by 0.04 at batch 4 with exact_borders=True."""
    torch.manual_seed(0)
    model = _BatchStatGate().eval()
    with torch.no_grad():
        model.b1.weight[:4] = 0
        model.b1.bias[:4] = 0.3
    x = torch.randn(batch, 3, 8, 8)
    plan = slimprune.plan(model, threshold=1e-6, example_inputs=x, exact_borders=True)
    assert plan.removed_channels == 0
    big = torch.randn(4, 3, 8, 8)
    assert torch.allclose(slimprune.apply(model, plan)(big), model(big), atol=1e-6)


class _TwiceCalled(nn.Module):
    """``h(m(relu(m(y))))``: m's removed input channels hold 0.5 at the first call and 0 at the second."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.b1 = nn.BatchNorm2d(8)
        self.m = nn.Conv2d(8, 8, 1)
        self.h = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        return self.h(self.m(torch.relu(self.m(y))))


def _twice_called() -> _TwiceCalled:
    torch.manual_seed(0)
    model = _TwiceCalled().eval()
    with torch.no_grad():
        model.b1.weight[:3] = 0
        model.b1.bias[:3] = 0.5
        model.m.weight[:3] = 0
        model.m.bias[:3] = -0.2
    return model


def test_threshold_pruning_does_not_fold_into_a_module_whose_calls_see_different_constants() -> None:
    """Item 4: the first call's constant was folded into m's bias, which the second call adds
    too (0.16 max error, no warning)."""
    model = _twice_called()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning is needed: the plan is exact
        plan = slimprune.plan(model, threshold=1e-6, example_inputs=x)
    assert not any(f.module == "m" for f in plan.folds)
    assert torch.allclose(slimprune.apply(model, plan)(x), model(x), atol=1e-6)


def test_ratio_pruning_keeps_channels_one_bias_cannot_serve_at_every_call() -> None:
    """Item 4 in a ratio plan: the channels whose constants differ between the calls stay, the
    rest is chosen again, and the pruned model equals the silenced one in both modes."""
    model = _twice_called()
    with torch.no_grad():
        model.m.weight[:3] = 0
    x = torch.randn(2, 3, 8, 8)
    plan = slimprune.plan(model, 0.5, example_inputs=x, importance="l1")
    assert plan.removed_channels > 0
    for train in (False, True):
        assert_pruned_equals_silenced(model, plan, x, train=train)


class _SharedOnInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU())
        self.shared = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.pre(x)) + self.shared(x)


class _SharedBehindBarrier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.other = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
        self.shared = nn.Conv2d(8, 8, 1)
        self.after = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.fft.fft(self.other(x)).real  # no channel rule: a barrier
        return self.after(self.shared(self.pre(x)) + self.shared(z))


class _TwiceOnInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
        self.tail = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.f(self.f(x)))


@pytest.mark.parametrize("cls", [_SharedOnInput, _SharedBehindBarrier, _TwiceOnInput])
def test_a_module_called_at_several_sites_is_sliced_only_where_every_call_agrees(cls: type[nn.Module]) -> None:
    """Item 6: the shared layer's input channels were tied to a kept tensor at one call and
    sliced for the other; the plan applied and the first forward raised."""
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, 3, 8, 8)
    snap = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fft barrier warns, as it should
        plan = slimprune.plan(model, 0.5, example_inputs=x)
    for train in (False, True):
        assert_pruned_equals_silenced(model, plan, x, train=train)
    assert_unchanged(model, snap)
    shared = "shared" if hasattr(model, "shared") else "f"
    kept_in = [s for s in plan.slices if s.module == f"{shared}.0" or s.module == shared]
    assert all(len(s.kept) == s.size for s in kept_in if s.role == "in"), "the shared layer's inputs were sliced"
