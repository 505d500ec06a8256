"""Models in a dtype or memory format other than float32 NCHW: pruned ones keep it, and equal
the silenced original."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimprune
from tests.models import TinyResNet, randomize_bn

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _bf16_model() -> nn.Module:
    return randomize_bn(TinyResNet()).eval().to(torch.bfloat16)


@pytest.mark.parametrize("importance", ["bn_scale", "l1", "l2"])
def test_bfloat16_model_prunes_to_the_silenced_model_and_stays_bfloat16(importance: str) -> None:
    model = _bf16_model()
    x = X.to(torch.bfloat16)
    plan = slimprune.plan(model, 0.5, example_inputs=x, importance=importance, fold_bias=False)
    assert plan.removed_channels > 0
    small = slimprune.apply(model, plan)
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16}
    assert sum(p.numel() for p in small.parameters()) == plan.params_after
    with torch.no_grad():
        got, want = small(x), slimprune.silence(model, plan)(x)
    assert got.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits; a smaller conv sums in another order.
    assert torch.allclose(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_bfloat16_tied_scales_threshold_and_sparsity_tools() -> None:
    """Every γ equal (a fresh network): the tiebreak ranks by weight norms, bias rows included;
    then a threshold plan, gamma_stats, a FLOP-weighted regulariser and scale_per_cost."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU()).eval().to(torch.bfloat16)
    x = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    small = slimprune.apply(model, plan)
    assert small[0].weight.dtype == torch.bfloat16 and small[0].out_channels == 4
    with torch.no_grad():
        assert torch.allclose(small(x).float(), slimprune.silence(model, plan)(x).float(), rtol=2e-2, atol=2e-2)

    # and the threshold plan and the sparsity tools on a bfloat16 model
    model = _bf16_model()
    with torch.no_grad():
        bn = model.net.blocks[1].a[1]
        bn.weight[:3] = 0
        bn.bias[:3] = -1.0  # relu(β) = 0: the removed channels are exactly zero
    x = X.to(torch.bfloat16)
    plan = slimprune.plan(model, threshold=1e-3, example_inputs=x)
    assert plan.removed_channels == 3
    small = slimprune.apply(model, plan)
    with torch.no_grad():
        assert torch.allclose(small(x).float(), slimprune.silence(model, plan)(x).float(), rtol=2e-2, atol=2e-2)
        assert torch.allclose(small(x).float(), model(x).float(), rtol=2e-2, atol=2e-2)
    assert slimprune.sparsity.gamma_stats(model, example_inputs=x)["count"] > 0
    reg = slimprune.SparsityRegularizer(model, example_inputs=x, cost="flops")
    assert reg.channels > 0
    imp = slimprune.sparsity.scale_per_cost("flops")
    assert slimprune.plan(model, 0.3, example_inputs=x, importance=imp).removed_channels > 0


def test_importance_callable_may_return_a_bfloat16_tensor() -> None:
    model = _bf16_model()
    x = X.to(torch.bfloat16)

    def by_index(m: nn.Module, graph: slimprune.ChannelGraph, group: slimprune.ChannelGroup) -> torch.Tensor:
        return torch.arange(len(group), dtype=torch.bfloat16)

    plan = slimprune.plan(model, 0.25, example_inputs=x, importance=by_index)
    assert plan.removed_channels > 0


def _kept_layout(model: nn.Module, small: nn.Module, fmt: torch.memory_format) -> None:
    before = dict(model.named_parameters())
    changed = 0
    for name, p in small.named_parameters():
        if p.dim() in (4, 5):
            assert p.is_contiguous(memory_format=fmt), f"{name} lost the channels-last layout"
            changed += p.shape != before[name].shape
    assert changed > 0


def test_channels_last_model_prunes_to_channels_last_weights() -> None:
    model = randomize_bn(TinyResNet()).eval().to(memory_format=torch.channels_last)
    x = X.to(memory_format=torch.channels_last)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    small = slimprune.apply(model, plan)
    _kept_layout(model, small, torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(small(x), slimprune.silence(model, plan)(x), rtol=1e-4, atol=1e-5)
    inplace = slimprune.apply(model, plan, inplace=True)
    for name, p in inplace.named_parameters():
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last), f"{name} (inplace=True)"
    nchw = randomize_bn(TinyResNet()).eval()  # and a model in the default format stays in it
    small = slimprune.apply(nchw, slimprune.plan(nchw, 0.5, example_inputs=X))
    assert all(p.is_contiguous() for p in small.parameters())


def test_channels_last_3d_model_prunes_to_channels_last_3d_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1, bias=False), nn.BatchNorm3d(8), nn.ReLU(),
                          nn.Conv3d(8, 6, 3, padding=1, bias=False), nn.BatchNorm3d(6), nn.ReLU(),
                          nn.Conv3d(6, 4, 3, padding=1))
    model = randomize_bn(model).eval().to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 3, 6, 6, 6).to(memory_format=torch.channels_last_3d)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    small = slimprune.apply(model, plan)
    _kept_layout(model, small, torch.channels_last_3d)
    with torch.no_grad():
        assert torch.allclose(small(x), slimprune.silence(model, plan)(x), rtol=1e-4, atol=1e-5)

