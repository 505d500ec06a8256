"""timm models prune exactly: a CI-sized subset of its architecture families (tiny
variants, small inputs), in eval and train mode, against the silenced original; its fused
norm layers are prunable and their γ visible to sparsity training; and the bugs timm found
(a parameter read for its device, fused norms as barriers) stay fixed."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced
from tests.models import calibrated


class FourierPosition(nn.Module):
    """EdgeNeXt's positional encoding: features from arange/cumsum (no channels of the
    input) projected by a conv whose weight is also read for its device and dtype."""

    def __init__(self, hidden: int = 8, dim: int = 6) -> None:
        super().__init__()
        self.proj = nn.Conv2d(2 * hidden, dim, 1)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device, dtype = self.proj.weight.device, self.proj.weight.dtype
        n, _, h, w = x.shape
        y = torch.ones((n, h, w), device=device).cumsum(1)
        t = torch.arange(2 * self.hidden, device=device).to(dtype) + 1.0
        pos = (y[..., None] / t).sin().permute(0, 3, 1, 2)
        return self.proj(pos.to(dtype))


class WithPosition(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pos = FourierPosition()
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(y + self.pos(y))


def test_a_parameter_read_for_its_device_is_not_sliced():
    torch.manual_seed(0)
    model = calibrated(WithPosition(), torch.randn(2, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    assert plan.removed_channels > 0
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert small.pos.proj.in_channels == 16  # fed from arange/cumsum: nothing to remove there


class ScaledByShape(nn.Module):
    """A parameter read directly in a forward that fx alone cannot trace (a branch on a
    shape): the concrete tracer recursed into fx's patched ``Module.__getattr__`` there
    (timm's RmsNormAct2d in mobilenetv5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(8) + 0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[-1] > 4:
            y = y * self.scale.to(y.dtype)[:, None, None]
        return self.head(torch.relu(y))


def test_a_parameter_read_in_a_concretely_traced_forward():
    torch.manual_seed(0)
    model = ScaledByShape().eval()
    x = torch.randn(2, 3, 8, 8)
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    assert plan.removed_channels > 0
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.scale.shape == (8 - plan.removed_channels,)


class SwinV2Ops(nn.Module):
    """The ops timm's SwinV2, XCiT and others use around their channels: roll along space,
    ``new_zeros(x.shape)``, ``addcmul``, ``norm`` over space and ``F.normalize`` along space
    (all per channel), then ``F.normalize`` over the channels (mixes them) when asked."""

    def __init__(self, normalize_channels: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)
        self.normalize_channels = normalize_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.roll(y, shifts=(1, 2), dims=(2, 3)) + y.new_zeros(y.shape)
        y = torch.addcmul(y, y, y, value=0.5)
        y = y / (y.norm(2, dim=(2, 3), keepdim=True) + 1)
        y = F.normalize(y, dim=-1)
        if self.normalize_channels:
            y = F.normalize(y, dim=1)
        return self.head(y)


def test_roll_new_zeros_addcmul_norm_and_normalize_along_space_prune_exactly():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(SwinV2Ops(normalize_channels=False), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.5, example_inputs=(x,), allow_inexact=False)
    assert plan.removed_channels == 4
    assert_pruned_equals_silenced(model, plan, x, train=True)


def test_normalize_over_the_channels_is_inexact():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(SwinV2Ops(normalize_channels=True), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        assert slimprune.plan(model, 0.5, example_inputs=(x,), allow_inexact=False).removed_channels == 0
        assert slimprune.plan(model, 0.5, example_inputs=(x,)).removed_channels == 4


def test_roll_along_the_channels_keeps_them():
    class RollChannels(SwinV2Ops):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.roll(torch.relu(self.bn(self.conv(x))), 1, 1))

    x = torch.randn(2, 3, 8, 8)
    model = calibrated(RollChannels(False), x)
    with pytest.warns(slimprune.UnsupportedOpWarning, match="a roll along the channel axis"):
        assert slimprune.plan(model, 0.5, example_inputs=(x,)).removed_channels == 0


# ------------------------------------------------------------------ real timm models
timm = pytest.importorskip("timm")

# (model, input size, barrier-free, least fraction of parameters removed): a CI-sized
# subset of timm's families, tiny variants. Cross-channel norms (GroupNorm, LayerNorm) keep
# their groups whole under allow_inexact=False, so those models lose little.
FAMILIES = [
    ("test_resnet", 64, True, 0.5),             # resnet: BatchNorm2d, residuals
    ("test_efficientnet", 64, True, 0.5),       # efficientnet: BatchNormAct2d, SE, depthwise
    ("test_efficientnet_gn", 64, True, 0.005),  # GroupNormAct
    ("test_efficientnet_ln", 64, True, 0.005),  # LayerNormAct2d
    ("test_convnext", 64, True, 0.2),           # convnext: LayerNorm2d, channels-last LayerNorm
    ("test_byobnet", 64, True, 0.5),            # byobnet: BatchNormAct2d in ConvNormAct
    ("test_mambaout", 64, True, 0.3),           # mambaout
    ("mobilenetv3_small_050", 64, True, 0.5),   # mobilenetv3: hard-swish, SE, timm Linear head
    ("regnetx_002", 64, True, 0.4),             # regnet: grouped convs
    ("starnet_s050", 64, True, 0.5),            # starnet: star op, timm Linear head
    ("fastvit_t8", 64, True, 0.5),              # fastvit: reparameterisable branches
    ("edgenext_xx_small", 64, True, 0.2),       # edgenext: positional encoding, channel attention
    ("test_vit", 160, True, 0.1),               # vision_transformer: whole heads (unbind, head resizer)
]


def _model(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    return calibrated(timm.create_model(name, pretrained=False), x), x


@pytest.mark.parametrize("name,size,clean,least", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_timm_family_prunes_exactly_in_eval_and_train_mode(name, size, clean, least):
    model, x = _model(name, size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, 0.5, example_inputs=(x,), fold_bias=False, allow_inexact=False)
    barriers = [w for w in caught if issubclass(w.category, slimprune.UnsupportedOpWarning)]
    if clean:
        assert not barriers, str(barriers[0].message)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "plan changed the model"
    assert plan.params_after <= (1 - least) * plan.params_before
    assert_pruned_equals_silenced(model, plan, x, train=True)


def _norms(model: nn.Module, cls: type) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m) is cls}


def test_fused_batchnorm_act_is_pruned_resized_and_its_gamma_regularised():
    from timm.layers import BatchNormAct2d

    model, x = _model("test_efficientnet", 64)
    norms = _norms(model, BatchNormAct2d)
    assert norms, "test_efficientnet has no BatchNormAct2d: this test checks nothing"
    reg = slimprune.SparsityRegularizer(model, example_inputs=(x,))
    assert set(norms) <= set(reg.layers) | {n for n, m in norms.items() if m.num_features == 1}
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    small = slimprune.apply(model, plan)
    pruned = _norms(small, BatchNormAct2d)
    assert pruned.keys() == norms.keys()  # the class (and its forward) stays
    assert sum(m.num_features for m in pruned.values()) < 0.7 * sum(m.num_features for m in norms.values())
    assert all(m.num_features == m.weight.shape[0] == m.running_mean.shape[0] for m in pruned.values())


def test_network_slimming_removes_zeroed_batchnorm_act_channels_exactly():
    from timm.layers import BatchNormAct2d

    model, x = _model("test_efficientnet", 64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in _norms(model, BatchNormAct2d).values():
            k = torch.rand(m.weight.shape, generator=g) < 0.4
            m.weight[k] = 0
            m.bias[k] = 0
        want = model.eval()(x)
    plan = slimprune.plan(model, threshold=1e-12, example_inputs=(x,), exact_borders=True)
    assert plan.removed_channels > 0
    small = slimprune.apply(model, plan)
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,layer", [("test_efficientnet_gn", "GroupNormAct"),
                                        ("test_efficientnet_ln", "LayerNormAct2d"),
                                        ("test_convnext", "LayerNorm2d")])
def test_cross_channel_norms_are_prunable_inexactly_and_resized(name, layer):
    import timm.layers

    cls = getattr(timm.layers, layer)
    model, x = _model(name, 64)
    norms = _norms(model, cls)
    assert norms, f"{name} has no {layer}: this test checks nothing"
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))  # allow_inexact=True (the default)
    assert any(not g.exact for g in plan.groups if g.removed)
    small = slimprune.apply(model, plan)
    pruned = _norms(small, cls)
    width = (lambda m: m.num_channels) if layer == "GroupNormAct" else (lambda m: m.normalized_shape[0])
    assert sum(map(width, pruned.values())) < sum(map(width, norms.values()))
    assert all(width(m) == m.weight.shape[0] for m in pruned.values())
    with torch.no_grad():
        assert small.eval()(x).shape == model(x).shape
        small.train()(x)


class ForeignHeadSize(nn.Module):
    """A projection's output reshaped with a head size computed from its *input's* width
    (SwinV2-CR's and VOLO's ``qkv.view(B, N, 3, heads, C // heads)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.qkv = nn.Conv2d(8, 12, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        y = self.qkv(x).view(b, 3, c // 2, h, w).sum(1)
        return self.head(y) + x.mean(1, keepdim=True)


def test_a_head_size_computed_from_another_tensors_width_keeps_both():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(ForeignHeadSize(), x)
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert small.stem[0].out_channels == 8 and small.qkv.out_channels == 12


# ------------------------------------------------------------------ LeViT
# levit_128s lost 0.7% of its parameters with 46 barriers. The product rule refused none of
# its matmuls: the barriers were the 46 `Tensor.reshape_as` of timm's LinearNorm
# (`bn(x.flatten(0, 1)).reshape_as(x)`, every qkv, proj, mlp and q), which had no rule.


def test_levit_prunes_through_linear_norm_and_attention_exactly():
    model, x = _model("levit_128s", 224)
    attn = model.stages[0].blocks[0].attn
    heads, key, per = attn.num_heads, attn.key_dim, 2 * attn.key_dim + attn.val_dim
    with torch.no_grad():  # rank this block's q/k channels lowest, so the plan removes some
        attn.qkv.bn.weight.view(heads, per)[:, :2 * key] *= 1e-3
        scale = float(model(x).abs().max())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, 0.5, example_inputs=(x,), fold_bias=False, allow_inexact=False)
    barriers = [str(w.message) for w in caught if issubclass(w.category, slimprune.UnsupportedOpWarning)]
    assert not barriers, barriers[0]
    assert plan.params_after < 0.7 * plan.params_before
    # float32 rounding of a differently ordered sum at an output scale of ~1e2: 1e-5 of it
    small = assert_pruned_equals_silenced(model, plan, x, train=True, atol=1e-5 * scale)
    pruned = small.stages[0].blocks[0].attn
    values = pruned.proj.ln.linear.in_features  # v's channels, through attn @ v and proj
    assert values < attn.val_attn_dim
    qk = pruned.qkv.linear.out_features - values  # q/k channels, removed in contracted pairs
    assert 0 < qk < 2 * key * heads and qk % (2 * heads) == 0


class ReshapeAsInput(nn.Module):
    """``y.reshape_as(x)`` onto a tensor whose width never shrinks (the model's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(11, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x).flatten(2).reshape_as(x), self.b(x)], 1))


def test_reshape_as_a_tensor_without_those_channels_keeps_them():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    model = calibrated(ReshapeAsInput(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert small.a[0].out_channels == 3 and small.b[0].out_channels < 8
