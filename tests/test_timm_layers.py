"""timm's weight-standardised convs (NFNet's ScaledStdConv2d, BiT's StdConv2d and their
``Same`` variants) and TResNet's BlurPool2d have rules (slimprune/rules/timm_layers.py):
output channels prune exactly, input channels of a standardised conv are kept (the
standardisation reads all of them) except in a depthwise one, and the real timm models that
had them as barriers now prune exactly with none."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced
from tests.models import calibrated

timm = pytest.importorskip("timm")
from timm.layers import BlurPool2d, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame  # noqa: E402


def _plan(model: nn.Module, x: torch.Tensor) -> slimprune.PruningPlan:
    """A ratio-0.5 exact plan; a barrier warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        return slimprune.plan(model, 0.5, example_inputs=(x,), fold_bias=False, allow_inexact=False)


class StandardisedNet(nn.Module):
    """Every standardised conv timm has, a BlurPool2d, and plain layers where the chain can
    shrink: a ScaledStdConv2d stem into a depthwise ScaledStdConv2dSame and a blur (one
    prunable space, ending at a plain 1x1 conv), a StdConv2dSame and a grouped StdConv2d
    whose inputs are kept, and the grouped conv's outputs into a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ScaledStdConv2d(3, 8, 3, gamma=1.7)
        self.dw = ScaledStdConv2dSame(8, 8, 3, groups=8)
        self.blur = BlurPool2d(8, filt_size=3, stride=2)
        self.mix = nn.Conv2d(8, 12, 1)
        self.std = StdConv2dSame(12, 12, 3)
        self.grouped = StdConv2d(12, 10, 3, groups=2, bias=True)
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blur(torch.relu(self.dw(torch.nn.functional.silu(self.stem(x)))))
        y = torch.relu(self.std(torch.relu(self.mix(y))))
        return self.head(self.grouped(y).mean((2, 3)))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "gain", None), nn.Parameter):
                m.gain.uniform_(0.5, 1.5)
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_()
    return model.eval()


def test_standardised_convs_prune_their_outputs_and_keep_their_inputs_exactly() -> None:
    """Outputs shrink (weight rows, bias, gain), inputs of a non-depthwise standardised conv
    stay whole, a depthwise one and the blur shrink with their channels; no barrier; exact in
    eval and train mode; ``scale`` (1/sqrt(fan-in)) is unchanged."""
    model = _randomised(StandardisedNet())
    x = torch.randn(2, 3, 16, 16)
    plan = _plan(model, x)
    assert not plan.barriers
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert plan.params_after < plan.params_before
    assert small.stem.out_channels < 8 and small.stem.gain.shape == (small.stem.out_channels, 1, 1, 1)
    n = small.stem.out_channels
    assert (small.dw.in_channels, small.dw.out_channels, small.dw.groups) == (n, n, n)
    assert small.blur.channels == n and small.blur.filt.shape == (n, 1, 3, 3) and small.mix.in_channels == n
    assert small.mix.out_channels == 12 and small.std.in_channels == 12 and small.grouped.in_channels == 12
    assert small.std.out_channels == 12  # it feeds the grouped conv's kept inputs
    assert small.grouped.out_channels < 10 and small.grouped.out_channels % 2 == 0
    assert small.stem.scale == model.stem.scale and small.dw.scale == model.dw.scale


def test_removing_a_standardised_convs_input_channel_would_change_its_output() -> None:
    """Why the inputs are kept: with an input channel silenced (zero), the layer with that
    weight column deleted computes something else, as the row statistics change."""
    torch.manual_seed(0)
    conv = _randomised(nn.Sequential(ScaledStdConv2d(4, 3, 3)))[0]
    x = torch.randn(1, 4, 6, 6)
    x[:, 1] = 0
    smaller = ScaledStdConv2d(3, 3, 3)
    with torch.no_grad():
        smaller.weight.copy_(conv.weight[:, [0, 2, 3]])
        smaller.bias.copy_(conv.bias)
        smaller.gain.copy_(conv.gain)
        smaller.scale = conv.scale
        assert not torch.allclose(conv(x), smaller(x[:, [0, 2, 3]]), atol=1e-3)


def test_blur_pool_without_a_channel_count_passes_channels_through_exactly() -> None:
    """``BlurPool2d(channels=None)`` expands one filter to any width: nothing to slice."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), BlurPool2d(None), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 12, 12)
    plan = _plan(model, x)
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert small[0].out_channels < 8 and small[3].in_channels == small[0].out_channels


@pytest.mark.parametrize("name", ["nf_regnet_b0", "test_nfnet"])
def test_nfnet_prunes_exactly_without_barriers(name: str) -> None:
    """NF-RegNet (54 ScaledStdConv2d barriers before these rules) and timm's test NFNet:
    no barrier, exact in eval and train mode, and more removed than the 21% of nf_regnet_b0's
    parameters the barrier-bound plan took (benchmarks/results/timm_zoo.csv)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = calibrated(timm.create_model(name, pretrained=False), x)
    plan = _plan(model, x)
    assert not plan.barriers
    assert plan.params_after < 0.75 * plan.params_before
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    convs = [m for m in small.modules() if isinstance(m, ScaledStdConv2d)]
    assert any(m.out_channels < o.out_channels for m, o in
               zip(convs, [m for m in model.modules() if isinstance(m, ScaledStdConv2d)]))


def test_tresnet_prunes_through_blur_pool_exactly() -> None:
    """TResNet-M (3 BlurPool2d barriers before): none, its blur filters sliced with their
    channels, exact in eval and train mode (float64: train-mode BN of random weights at 64 px
    leaves float32 4e-5 apart even without pruning)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    model = calibrated(timm.create_model("tresnet_m", pretrained=False).double(), x)
    plan = _plan(model, x)
    assert not plan.barriers
    assert plan.params_after < 0.35 * plan.params_before  # 0.351 with the barriers
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    blurs = [m for m in small.modules() if isinstance(m, BlurPool2d)]
    assert len(blurs) == 3 and all(m.filt.shape[0] == m.channels for m in blurs)
    assert sum(m.channels for m in blurs) < 128 + 256 + 512


def test_a_pruned_standardised_net_saves_and_loads_computing_the_same(tmp_path) -> None:
    """The sliced ``gain`` and the blur's (non-persistent) filter survive ``save``/``load``."""
    model = _randomised(StandardisedNet())
    x = torch.randn(2, 3, 16, 16)
    plan = _plan(model, x)
    small = slimprune.apply(model, plan)
    slimprune.save(small, tmp_path / "net.slim", plan=plan)
    back = slimprune.load(tmp_path / "net.slim", lambda: _randomised(StandardisedNet())).eval()
    assert back.blur.channels == small.blur.channels and back.stem.gain.shape == small.stem.gain.shape
    torch.testing.assert_close(back(x), small(x))
