"""Swin (v1, v2) and MaxViT attention lose whole heads, exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d

import slimprune
from tests.helpers import assert_pruned_equals_silenced


class Around(nn.Module):
    """Linear in, attention, Linear out: the attention's width is free to shrink."""

    def __init__(self, attn: nn.Module, width: int):
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(5, width), attn, nn.Linear(width, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.attn(h))


def _swin(v2: bool) -> nn.Module:
    cls = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
    return cls(24, [4, 4], [2, 2], num_heads=6)


CASES = {
    "swin": (lambda: Around(_swin(False), 24), (2, 8, 8, 5), "num_heads"),
    "swin_v2": (lambda: Around(_swin(True), 24), (2, 8, 8, 5), "num_heads"),
    "swin3d": (lambda: Around(ShiftedWindowAttention3d(24, [2, 4, 4], [1, 2, 2], num_heads=6), 24),
               (2, 4, 8, 8, 5), "num_heads"),
    "maxvit": (lambda: Around(RelativePositionalMultiHeadAttention(24, 4, 16), 24), (2, 3, 16, 5), "n_heads"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_attention_loses_whole_heads_exactly(case, ratio):
    make, shape, heads_attr = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    for p in model.attn.parameters():  # non-trivial per-head tables and scales
        nn.init.normal_(p, std=0.3) if p.dim() > 1 else nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randn(*shape)
    plan = slimprune.plan(model, ratio, example_inputs=x, fold_bias=False)
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    before, after = getattr(model.attn, heads_attr), getattr(small.attn, heads_attr)
    assert 0 < after < before
    kept = plan.kept("inp", "weight", 0)
    assert len(kept) == after * 4, "residual channels leave in whole heads (head_dim 4)"
    if case in ("swin", "swin3d"):
        assert small.attn.relative_position_bias_table.shape[1] == after
    if case == "swin_v2":
        assert small.attn.logit_scale.shape[0] == after and small.attn.cpb_mlp[-1].weight.shape[0] == after
    if case == "maxvit":
        assert small.attn.relative_position_bias_table.shape[1] == after
        assert small.attn.scale_factor == model.attn.scale_factor  # the constant scale stays


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_swin_loses_heads_in_every_stage_with_no_barrier(name):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    plan = slimprune.plan(model, 0.5, example_inputs=x)  # LayerNorm groups too (inexact, allowed)
    assert not plan.barriers  # patch merging joins the stages
    small = slimprune.apply(model, plan)
    stages = [1, 3, 5, 7]
    for i in stages:
        for blk, orig in zip(small.features[i], model.features[i]):
            assert blk.attn.num_heads < orig.attn.num_heads
    assert small(x).shape == small.train()(x).shape == (2, 1000)


class _CrossBlock(nn.Module):
    """Linear -> MultiheadAttention over a longer context -> Linear (queries 5, keys 9)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.ctx = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        c = self.ctx(context)
        return self.out(self.attn(self.inp(x), c, c, need_weights=False)[0])


@pytest.mark.parametrize("target", ["channels", "flops"])
def test_predicted_flops_of_attention_models_equal_the_measured_ones(target):
    """A plan's FLOPs before and after, for a small ViT and for cross-attention with more keys
    than queries, equal what slimprune.measure counts on the original and the pruned model:
    the q/k/v projections and both attention products are predicted, not only out_proj."""
    from torchvision.models import VisionTransformer

    from slimprune.measure import measure

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10)
    cases = [(vit.eval(), (torch.rand(1, 3, 32, 32),)), (_CrossBlock().eval(), (torch.rand(2, 5, 6), torch.rand(2, 9, 6)))]
    for model, inputs in cases:
        batch = inputs[0].shape[0]  # a plan counts FLOPs per sample
        plan = slimprune.plan(model, 0.3, target=target, example_inputs=inputs)
        assert plan.flops_before * batch == measure(model, inputs, latency=False).flops
        pruned = slimprune.apply(model, plan)
        assert plan.flops_after < plan.flops_before
        assert plan.flops_after * batch == measure(pruned, inputs, latency=False).flops


WINDOWED_SHAPES = {
    "swin": [(1, 8, 8, 5), (1, 7, 9, 5)],  # whole windows; padded to whole windows
    "swin_v2": [(1, 8, 8, 5), (1, 7, 9, 5)],
    "swin3d": [(1, 4, 8, 8, 5), (1, 1, 6, 9, 5)],  # windows shrunk to a 1-frame clip, then padded
    "maxvit": [(1, 3, 16, 5)],
}


@pytest.mark.parametrize("case", list(WINDOWED_SHAPES))
def test_predicted_flops_of_windowed_attention_equal_the_measured_ones(case):
    """Swin v1/v2/3d and MaxViT attention: a plan's FLOPs before and after (qkv and output
    Linears at the padded positions, both attention products per window, Swin v2's
    position-bias MLP) equal slimprune.measure's count on the original and the pruned model."""
    from slimprune.measure import measure

    make = CASES[case][0]
    for shape in WINDOWED_SHAPES[case]:
        torch.manual_seed(0)
        model, x = make().eval(), torch.rand(*shape)
        plan = slimprune.plan(model, 0.3, example_inputs=(x,))
        assert plan.flops_before == measure(model, (x,), latency=False).flops, shape
        pruned = slimprune.apply(model, plan)
        assert plan.flops_after < plan.flops_before
        assert plan.flops_after == measure(pruned, (x,), latency=False).flops, shape
