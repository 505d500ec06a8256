"""One test per channel rule: a tiny module that exercises it, pruned and checked against
the silenced original, plus the structural fact the rule must establish."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced
from tests.models import randomize_bn


def prune_check(model: nn.Module, x, ratio: float = 0.5, **kw) -> tuple[slimprune.PruningPlan, nn.Module]:
    model = randomize_bn(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, ratio, example_inputs=x, fold_bias=False, **kw)
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    return plan, small


def group_with(plan: slimprune.PruningPlan, member: str) -> slimprune.PruningPlan:
    found = [g for g in plan.groups if member in g.members]
    assert found, f"no group contains {member}"
    return found[0]


def cbr(cin: int, cout: int, k: int = 3, dims: int = 2, **kw) -> nn.Sequential:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    return nn.Sequential(conv(cin, cout, k, padding=k // 2, bias=False, **kw), bn(cout), nn.ReLU())


# ---------------------------------------------------------------------------- layers
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_and_batchnorm_of_every_dimension_prune_exactly(dims):
    """ConvNd -> BatchNormNd -> ReLU -> ConvNd."""
    model = nn.Sequential(cbr(3, 8, dims=dims), cbr(8, 6, dims=dims))
    x = torch.randn(2, 3, *([6] * dims))
    plan, small = prune_check(model, x)
    assert small[0][0].out_channels == small[1][0].in_channels < 8
    assert small[0][1].num_features == small[0][0].out_channels


def test_depthwise_conv_ties_its_input_and_output_channels():
    """Conv -> BN -> depthwise conv (multiplier 2) -> BN -> Conv."""
    model = nn.Sequential(cbr(3, 6), cbr(6, 12, groups=6), cbr(12, 4))
    plan, small = prune_check(model, torch.randn(2, 3, 8, 8))
    g = group_with(plan, "0.0.weight[0]")
    assert "1.0.weight[0]" in g.members  # the depthwise rows live with their inputs
    assert small[1][0].groups == small[1][0].in_channels == small[0][0].out_channels
    assert small[1][0].out_channels == 2 * small[1][0].in_channels


def test_grouped_conv_keeps_groups_equal():
    """Conv -> grouped conv (4 groups) -> Conv: every group keeps the same number of channels."""
    model = nn.Sequential(cbr(3, 8), cbr(8, 12, groups=4), cbr(12, 5))
    plan, small = prune_check(model, torch.randn(2, 3, 8, 8), ratio=0.4)
    conv = small[1][0]
    assert conv.groups == 4 and conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    assert conv.out_channels < 12 or conv.in_channels < 8


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_transpose_prunes_inputs_and_outputs(dims):
    """Conv -> BN -> ConvTransposeNd -> BN -> Conv (a U-Net decoder step)."""
    conv_t = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    model = nn.Sequential(cbr(3, 8, dims=dims), conv_t(8, 6, 2, stride=2), bn(6), nn.ReLU(), cbr(6, 4, dims=dims))
    plan, small = prune_check(model, torch.randn(2, 3, *([4] * dims)))
    assert small[1].in_channels == small[0][0].out_channels < 8
    assert small[1].out_channels == small[2].num_features < 6


def test_linear_after_batchnorm1d_prunes_features():
    """Linear -> BatchNorm1d -> ReLU -> Linear (an MLP)."""
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    plan, small = prune_check(model, torch.randn(4, 10))
    assert small[0].out_features == small[3].in_features == 8
    assert small[3].out_features == 3  # the model output is protected


def test_instance_norm_prunes_per_channel():
    """Conv -> InstanceNorm2d(affine) -> Conv."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.ReLU(), nn.Conv2d(8, 2, 1))
    plan, small = prune_check(model, torch.randn(2, 3, 6, 6))
    assert small[1].num_features == small[0].out_channels < 8


def test_group_norm_keeps_groups_equal_and_is_marked_inexact():
    """Conv -> GroupNorm(2 groups) -> Conv: removal changes group statistics, so the plan says so."""
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 2, 1)))
    x = torch.randn(2, 3, 6, 6)
    plan = slimprune.plan(model, 0.5, example_inputs=x)
    g = group_with(plan, "1.weight[0]")
    assert not g.exact and len(g.removed) > 0
    small = slimprune.apply(model, plan)
    assert small[1].num_channels % 2 == 0 and small[1].num_channels < 8
    assert small(x).shape == (2, 2, 6, 6)
    assert slimprune.plan(model, threshold=10.0, example_inputs=x).removed_channels == 0  # never by threshold


def test_layer_norm_over_channels_is_prunable_but_inexact():
    """Linear -> LayerNorm -> GELU -> Linear (a transformer MLP input)."""
    model = randomize_bn(nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)))
    x = torch.randn(2, 5, 6)
    plan = slimprune.plan(model, 0.5, example_inputs=x)
    assert not group_with(plan, "1.weight[0]").exact
    small = slimprune.apply(model, plan)
    assert small[1].normalized_shape == (4,) and small(x).shape == (2, 5, 3)


def test_prelu_slopes_are_sliced_with_their_channels():
    """Conv -> BN -> PReLU(per channel) -> Conv."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8), nn.Conv2d(8, 2, 1))
    with torch.no_grad():
        model[2].weight.uniform_(-1, 1)
    plan, small = prune_check(model, torch.randn(2, 3, 6, 6))
    assert small[2].num_parameters == small[2].weight.numel() == small[0].out_channels


def test_embedding_dimension_is_prunable():
    """Embedding -> Linear -> ReLU -> Linear."""

    class M(nn.Module):
        """Token embedding followed by an MLP head."""

        def __init__(self):
            super().__init__()
            self.emb, self.fc, self.out = nn.Embedding(10, 8), nn.Linear(8, 6), nn.Linear(6, 2)

        def forward(self, ids):
            return self.out(torch.relu(self.fc(self.emb(ids))))

    plan, small = prune_check(M(), torch.randint(0, 10, (2, 5)), ratio=0.3)
    assert small.emb.embedding_dim == small.fc.in_features


# ---------------------------------------------------------------------------- pointwise
@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU6(), nn.SiLU(), nn.Hardswish(), nn.GELU(), nn.LeakyReLU(0.1),
                                 nn.ELU(), nn.Mish(), nn.Tanh(), nn.Dropout(0.0), nn.Dropout2d(0.0), nn.Identity()])
def test_elementwise_modules_pass_channels_through(act):
    """Conv -> BN -> <activation module> -> Conv."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act, nn.Conv2d(8, 2, 1))
    plan, small = prune_check(model, torch.randn(2, 3, 6, 6))
    assert small[0].out_channels == small[3].in_channels == 4


class Functional(nn.Module):
    """Conv -> BN -> a functional op -> Conv."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.a, self.bn, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.fn(self.bn(self.a(x))))


@pytest.mark.parametrize("fn", [F.relu, torch.relu, torch.sigmoid, lambda t: t.relu(), lambda t: t.clamp(0, 1),
                                F.hardswish, lambda t: F.dropout(t, 0.0), lambda t: t.contiguous(),
                                lambda t: F.max_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2),
                                lambda t: F.adaptive_avg_pool2d(t, 3), lambda t: F.interpolate(t, scale_factor=2),
                                lambda t: F.interpolate(t, size=(5, 5), mode="bilinear", align_corners=False),
                                lambda t: F.pad(t, (1, 1, 1, 1)), lambda t: -t, lambda t: t * 2.0 + 1.0])
def test_functional_and_method_forms_pass_channels_through(fn):
    plan, small = prune_check(Functional(fn), torch.randn(2, 3, 6, 6))
    assert small.a.out_channels == small.b.in_channels == 4


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(2),
                                  nn.Upsample(scale_factor=2)])
def test_pooling_and_upsampling_modules_pass_channels_through(pool):
    """Conv -> BN -> ReLU -> <pool/upsample> -> Conv."""
    model = nn.Sequential(cbr(3, 8), pool, nn.Conv2d(8, 2, 1))
    plan, small = prune_check(model, torch.randn(2, 3, 8, 8))
    assert small[2].in_channels == 4


class Residual(nn.Module):
    """Two conv branches joined by an elementwise op (residual add and friends)."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.stem, self.a, self.b, self.head = cbr(3, 8), cbr(8, 8), cbr(8, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.op(self.a(x), self.b(x)))


@pytest.mark.parametrize("op", [torch.add, torch.sub, torch.mul, lambda a, b: a / (b + 1.0), lambda a, b: a + b,
                                lambda a, b: a.add(b), torch.maximum])
def test_elementwise_binary_ops_tie_both_operands(op):
    plan, small = prune_check(Residual(op), torch.randn(2, 3, 6, 6))
    g = group_with(plan, "a.0.weight[0]")
    assert "b.0.weight[0]" in g.members and "head.weight[1]" in g.members


class SE(nn.Module):
    """Squeeze-and-excitation with a Linear gate broadcast by indexing (x * g[:, :, None, None])."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc1, self.fc2, self.head = cbr(3, 8), nn.Linear(8, 4), nn.Linear(4, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return self.head(x * g[:, :, None, None])


def test_se_gate_broadcast_ties_the_gate_to_the_channels_it_scales():
    plan, small = prune_check(SE(), torch.randn(2, 3, 6, 6))
    assert "fc2.weight[0]" in group_with(plan, "conv.0.weight[0]").members
    assert small.fc2.out_features == small.conv[0].out_channels == 4


class SpatialGate(nn.Module):
    """A one-channel spatial gate broadcast over all channels ties nothing."""

    def __init__(self):
        super().__init__()
        self.conv, self.att, self.head = cbr(3, 8), nn.Conv2d(8, 1, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        return self.head(x * torch.sigmoid(self.att(x)))


def test_size_one_broadcast_operand_ties_nothing():
    plan, small = prune_check(SpatialGate(), torch.randn(2, 3, 6, 6))
    assert small.att.out_channels == 1 and small.conv[0].out_channels == 4


class Reduce(nn.Module):
    """Conv -> BN -> mean/sum over spatial dims -> Linear."""

    def __init__(self, how):
        super().__init__()
        self.how, self.conv, self.fc = how, cbr(3, 8), nn.Linear(8, 3)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.mean((2, 3)) if self.how == "mean" else torch.sum(y, dim=[2, 3]) if self.how == "sum"
                       else y.mean(3, keepdim=True).amax(2).flatten(1))


@pytest.mark.parametrize("how", ["mean", "sum", "keepdim"])
def test_spatial_reductions_keep_channels(how):
    plan, small = prune_check(Reduce(how), torch.randn(2, 3, 6, 6))
    assert small.fc.in_features == small.conv[0].out_channels == 4


class ChannelReduce(nn.Module):
    """A mean over the channel axis mixes channels: they are kept (no warning, no pruning)."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = cbr(3, 8), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.head(self.conv(x).mean(1, keepdim=True))


def test_reduction_over_channels_keeps_them():
    model = randomize_bn(ChannelReduce()).eval()
    plan = slimprune.plan(model, 0.0, example_inputs=torch.randn(2, 3, 6, 6))
    assert plan.prunable_channels == 0


# ----------------------------------------------------------------------------- indexing
class Concat(nn.Module):
    """Two branches concatenated along channels, then a conv (an Inception join)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbr(3, 6), cbr(3, 4), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


def test_cat_maps_each_input_to_its_offset():
    plan, small = prune_check(Concat(), torch.randn(2, 3, 6, 6))
    kept = plan.kept("head", "weight", 1)
    a_kept = plan.kept("a.0", "weight", 0)
    b_kept = plan.kept("b.0", "weight", 0)
    assert kept == tuple(a_kept) + tuple(6 + i for i in b_kept)
    assert small.head.in_channels == small.a[0].out_channels + small.b[0].out_channels


class Split(nn.Module):
    """A conv split in two with hard-coded sizes (torch.split(x, [5, 3], 1)), chunk, and a slice."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.stem, self.a, self.b = cbr(3, 8), nn.Conv2d(5 if how == "split" else 4, 2, 1), nn.Conv2d(3 if how == "split" else 4, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        if self.how == "split":
            p, q = torch.split(y, [5, 3], 1)
        elif self.how == "chunk":
            p, q = y.chunk(2, dim=1)
        else:
            p, q = y[:, :4], y[:, 4:]
        return self.a(p) + self.b(q)


@pytest.mark.parametrize("how", ["split", "chunk", "slice"])
def test_split_chunk_and_slices_map_offsets_and_rewrite_literal_sizes(how):
    plan, small = prune_check(Split(how), torch.randn(2, 3, 6, 6), ratio=0.4)
    assert small.a.in_channels + small.b.in_channels == small.stem[0].out_channels < 8
    assert small.a.in_channels != (5 if how == "split" else 4) or small.b.in_channels != (3 if how == "split" else 4)
    assert isinstance(small, slimprune.Rewritten)  # the literal sizes were rewritten in the graph


class PickChannel(nn.Module):
    """x[:, 2] picks one channel: it is kept and its index is rewritten."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = cbr(3, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y) + y[:, 2:3].mean() + y[:, 5].mean()


def test_integer_index_on_channels_keeps_that_channel():
    model = randomize_bn(PickChannel()).eval()
    x = torch.randn(2, 3, 6, 6)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    kept = plan.kept("conv.0", "weight", 0)
    assert 2 in kept and 5 in kept
    assert_pruned_equals_silenced(model, plan, x)


# ------------------------------------------------------------------------------ reshape
class FlattenHead(nn.Module):
    """Conv -> BN -> flatten/view -> Linear: each channel owns a block of H*W features."""

    def __init__(self, how):
        super().__init__()
        self.how, self.conv, self.fc, self.flat = how, cbr(3, 8), nn.Linear(8 * 3 * 3, 4), nn.Flatten()

    def forward(self, x):
        y = F.max_pool2d(self.conv(x), 2)
        if self.how == "flatten":
            y = torch.flatten(y, 1)
        elif self.how == "view":
            y = y.view(y.size(0), -1)
        elif self.how == "literal":
            y = y.reshape(2, 72)
        else:
            y = self.flat(y)
        return self.fc(y)


@pytest.mark.parametrize("how", ["flatten", "view", "literal", "module"])
def test_flatten_into_linear_maps_channels_to_feature_blocks(how):
    plan, small = prune_check(FlattenHead(how), torch.randn(2, 3, 6, 6))
    kept_c = plan.kept("conv.0", "weight", 0)
    kept_f = plan.kept("fc", "weight", 1)
    assert kept_f == tuple(c * 9 + s for c in kept_c for s in range(9))
    assert small.fc.in_features == 9 * small.conv[0].out_channels


class ViewLiteral(nn.Module):
    """forward hard-codes the width: x.view(n, 8, -1) then back."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = cbr(3, 8), nn.Conv1d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y.view(y.shape[0], 8, -1))


def test_hard_coded_view_width_is_rewritten():
    plan, small = prune_check(ViewLiteral(), torch.randn(2, 3, 6, 6))
    assert isinstance(small, slimprune.Rewritten) and "view(" in small.code and ", 4, -1)" in small.code


class ChannelsLast(nn.Module):
    """Conv -> permute to channel-last -> LayerNorm-free Linear -> permute back -> Conv."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc, self.head = cbr(3, 8), nn.Linear(8, 6), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.conv(x).permute(0, 2, 3, 1)
        y = torch.relu(self.fc(y))
        return self.head(y.transpose(1, 3).transpose(2, 3))


def test_permute_and_transpose_move_the_channel_axis():
    plan, small = prune_check(ChannelsLast(), torch.randn(2, 3, 6, 6))
    assert small.fc.in_features == small.conv[0].out_channels == 4
    assert small.fc.out_features == small.head.in_channels == 3


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: view(n, g, c/g, h, w) -> transpose -> view(n, c, h, w)."""

    def __init__(self, module: bool = False):
        super().__init__()
        self.module = nn.ChannelShuffle(2) if module else None
        self.a, self.b, self.head = cbr(3, 4), cbr(3, 4), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        if self.module is not None:
            y = self.module(y)
        else:
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(y)


@pytest.mark.parametrize("module", [False, True])
def test_channel_shuffle_maps_channels_through_the_permutation(module):
    plan, small = prune_check(Shuffle(module), torch.randn(2, 3, 6, 6))
    # position j of branch a and branch b travel together through the shuffle
    assert plan.kept("a.0", "weight", 0) == plan.kept("b.0", "weight", 0)
    assert small.head.in_channels == 2 * small.a[0].out_channels


class PixelShuffle(nn.Module):
    """Conv (C*4 channels) -> pixel_shuffle(2) -> Conv; and pixel_unshuffle back."""

    def __init__(self):
        super().__init__()
        self.up, self.mid, self.head = cbr(3, 16), cbr(4, 6), nn.Conv2d(24, 2, 1)

    def forward(self, x):
        y = self.mid(F.pixel_shuffle(self.up(x), 2))
        return self.head(F.pixel_unshuffle(y, 2))


def test_pixel_shuffle_removes_whole_blocks_of_r_squared_channels():
    plan, small = prune_check(PixelShuffle(), torch.randn(2, 3, 4, 4))
    assert small.up[0].out_channels % 4 == 0
    assert small.mid[0].in_channels * 4 == small.up[0].out_channels
    assert small.head.in_channels == 4 * small.mid[0].out_channels


class ShapeQueries(nn.Module):
    """forward reads x.shape / x.size() / x.dim(): no data flows, so no barrier."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = cbr(3, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        n, c = y.shape[0], y.size(1)
        y = y.view(n, c, -1).view(y.shape)  # the channel count as a size: follows the pruned width
        return self.head(y).view(n, 2, -1).mean(-1) * (y.dim() - 3)


def test_size_and_shape_queries_are_not_barriers():
    plan, small = prune_check(ShapeQueries(), torch.randn(2, 3, 6, 6))
    assert small.conv[0].out_channels == 4


class ScaledByWidth(nn.Module):
    """Scales by 1/sqrt(width) read from the shape: pruning that width would change the scale."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbr(3, 8), cbr(8, 6), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        y = self.b(self.a(x))
        return self.head(y * y.shape[1] ** -0.5)


def test_a_channel_count_used_as_a_value_keeps_its_channels_and_says_so():
    torch.manual_seed(0)
    model = randomize_bn(ScaledByWidth()).eval()
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(slimprune.UnsupportedOpWarning, match="channel count read from a tensor's shape as a value"):
        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    assert plan.kept("b.0", "weight", 0) == tuple(range(6))  # the width the scale reads stays
    assert plan.removed_channels == 4  # a's channels still go
    assert_pruned_equals_silenced(model, plan, x, train=True)


# ------------------------------------------------------------------- barriers and custom rules
class Rolled(nn.Module):
    """torch.roll along channels cannot be pruned through: it is a barrier, the rest still prunes."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = cbr(3, 8), cbr(8, 6), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.b(torch.roll(self.a(x), 1, dims=1)))


def test_unknown_op_is_a_barrier_with_one_warning_naming_it():
    model = randomize_bn(Rolled()).eval()
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(slimprune.UnsupportedOpWarning, match=r"torch\.roll.*'roll'") as rec:
        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    assert len([w for w in rec if issubclass(w.category, slimprune.UnsupportedOpWarning)]) == 1
    assert plan.kept("a.0", "weight", 0) == tuple(range(8))  # through the barrier: kept
    assert len(plan.kept("b.0", "weight", 0)) < 6  # elsewhere: pruned
    assert_pruned_equals_silenced(model, plan, x)


class Scale(nn.Module):
    """A custom per-channel scale layer (a leaf once it has a rule)."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class WithScale(nn.Module):
    """Conv -> BN -> custom Scale -> Conv."""

    def __init__(self):
        super().__init__()
        self.conv, self.scale, self.head = cbr(3, 8), Scale(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.scale(self.conv(x)))


def test_register_rule_makes_a_custom_module_prunable():
    def resize(m, orig):
        pass  # nothing besides the sliced weight describes the width

    @slimprune.register_rule(Scale, resize=resize)
    def scale_rule(ctx, node):
        x = ctx.input(node, 0)
        if x is not None:
            ctx.param(node, "weight", 0, x.labels, "aux")
        return x

    try:
        plan, small = prune_check(WithScale(), torch.randn(2, 3, 6, 6))
        assert small.scale.weight.numel() == small.conv[0].out_channels == 4
    finally:
        from slimprune.rules._registry import _MODULE_RULES

        _MODULE_RULES.pop(Scale, None)


def test_custom_module_traced_through_prunes_its_parameter_as_a_source():
    """Without a rule, fx traces into Scale: its parameter is sliced with the channels."""
    plan, small = prune_check(WithScale(), torch.randn(2, 3, 6, 6))
    assert small.scale.weight.numel() == 4


# --------------------------------------------------------------- regressions from review
class UpStep(nn.Module):
    """Conv -> BN -> ReLU -> ConvTranspose2d(k=3, s=2): constants cannot be folded into it."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.up = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 4, 3, stride=2)

    def forward(self, x):
        return self.up(F.relu(self.bn(self.a(x))))


def test_constants_into_a_transposed_conv_warn_and_threshold_keeps_those_channels():
    m = UpStep().eval()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([0.0] * 4 + [1.0] * 4))
        m.bn.bias.fill_(0.3)  # relu(0.3): a non-zero constant
    x = torch.randn(2, 3, 4, 4)
    plan = slimprune.plan(m, threshold=1e-3, example_inputs=x)
    assert plan.removed_channels == 0  # removing them would change the output
    with pytest.warns(UserWarning, match="ConvTranspose2d cannot fold"):
        slimprune.plan(m, 0.5, example_inputs=x)


class Attn(nn.Module):
    """Sigmoid features into self-attention: removed channels hold 0.5, folded into in_proj_bias."""

    def __init__(self):
        super().__init__()
        self.l, self.att, self.o = nn.Linear(4, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 2)

    def forward(self, x):
        y = torch.sigmoid(self.l(x))
        return self.o(self.att(y, y, y)[0])


def test_multihead_attention_folds_constants_into_in_proj_bias_and_drops_whole_heads():
    torch.manual_seed(0)
    m, x = Attn().eval(), torch.randn(5, 2, 4)
    plan = slimprune.plan(m, 0.5, example_inputs=x, fold_bias=False)
    assert plan.folds and plan.folds[0].module == "att"
    small = assert_pruned_equals_silenced(m, plan, x)
    assert small.att.num_heads == 1 and small.att.head_dim == 4 and small.att.embed_dim == 4


class Tied(nn.Module):
    """Two Linear layers sharing one weight tensor."""

    def __init__(self):
        super().__init__()
        self.l0, self.f1, self.f2, self.bn = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.BatchNorm1d(8)
        self.f2.weight = self.f1.weight

    def forward(self, x):
        return self.f2(F.relu(self.bn(self.f1(self.l0(x)))))


def test_tied_parameters_whose_dims_meet_the_output_are_kept_whole_and_stay_tied():
    """f1's rows are tied to f2's rows (the model output), and f1's columns to f2's columns
    (f1's own rows): every channel of the shared weight is kept, with no barrier."""
    m, x = randomize_bn(Tied()).eval(), torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(m, 0.5, example_inputs=x, fold_bias=False)
    small = assert_pruned_equals_silenced(m, plan, x)
    assert small.f1.weight is small.f2.weight and small.f1.weight.shape == (8, 8)


class TiedInside(nn.Module):
    """One square weight used twice inside the network: it can shrink, as one tensor."""

    def __init__(self):
        super().__init__()
        self.l0, self.f1, self.f2, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.f2.weight = self.f1.weight

    def forward(self, x):
        return self.out(F.relu(self.f2(F.relu(self.f1(F.relu(self.l0(x)))))))


def test_tied_parameters_are_sliced_once_and_stay_one_tensor():
    torch.manual_seed(0)
    m, x = TiedInside().eval(), torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(m, 0.5, example_inputs=x)
    small = assert_pruned_equals_silenced(m, plan, x)
    assert small.f1.weight is small.f2.weight and small.f1.weight.shape[0] == small.f1.weight.shape[1] < 8
    assert m.f1.weight is m.f2.weight and m.f1.weight.shape == (8, 8)  # the original is untouched


class SqueezeHead(nn.Module):
    """Global pool, squeeze() with no dim, Linear."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.a(x))), 1).squeeze())


def test_squeeze_without_dim_survives_pruning_down_to_one_channel():
    plan, small = prune_check(SqueezeHead(), torch.randn(2, 3, 6, 6), ratio=0.75)
    assert small.fc.in_features == 1


class Temperature(nn.Module):
    """A hard-coded view(-1, 8) next to an unrelated attribute that also equals 8."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.c = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.Linear(8, 2)
        self.temperature = 8

    def forward(self, x):
        return self.c(F.relu(self.bn(self.a(x))).mean((2, 3)).view(-1, 8)) / self.temperature


def test_literal_equal_to_an_unrelated_attribute_is_rewritten_in_the_graph():
    plan, small = prune_check(Temperature(), torch.randn(2, 3, 4, 4))
    assert small.temperature == 8 and isinstance(small, slimprune.Rewritten)


def test_std_with_unbiased_flag_is_not_read_as_keepdim():
    """y.std(1, True): the third argument is `unbiased`."""

    class M(nn.Module):
        """Conv -> BN -> std over H (unbiased) -> per-channel Linear over W."""

        def __init__(self):
            super().__init__()
            self.a, self.bn, self.l = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            return self.l(self.bn(self.a(x)).permute(0, 2, 1, 3).std(1, True))

    m, x = randomize_bn(M()).eval(), torch.randn(2, 3, 5, 4)
    plan = slimprune.plan(m, 0.5, example_inputs=x, fold_bias=False)
    assert plan.kept("l", "weight", 1) in (None, (0, 1, 2, 3))  # W is not a channel axis
    assert_pruned_equals_silenced(m, plan, x)


@pytest.mark.parametrize("inplace", [False, True])
def test_pruned_parameters_keep_requires_grad_so_fine_tuning_trains_them(inplace):
    model = randomize_bn(nn.Sequential(cbr(3, 8), nn.Conv2d(8, 2, 1))).eval()
    model[0][1].bias.requires_grad_(False)  # a frozen parameter stays frozen
    x = torch.randn(2, 3, 6, 6)
    small = slimprune.apply(model, slimprune.plan(model, 0.5, example_inputs=x), inplace=inplace)
    assert small[0][0].weight.requires_grad and small[1].weight.requires_grad
    assert not small[0][1].bias.requires_grad
    small(x).sum().backward()
    assert small[0][0].weight.grad is not None


class WindowPartition(nn.Module):
    """MaxViT's partition with sizes read at run time; at the last stage H == P, so H // P is 1."""

    def __init__(self, p: int = 4):
        super().__init__()
        self.p, self.conv, self.head = p, nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12)), nn.Linear(12, 3)

    def forward(self, x):
        x = self.conv(x)
        B, C, H, W = x.shape
        P = self.p
        x = x.reshape(B, C, H // P, P, W // P, P).permute(0, 2, 4, 3, 5, 1)
        return self.head(x)


def test_run_time_window_partition_with_a_size_one_axis_is_not_a_barrier():
    torch.manual_seed(0)
    model = randomize_bn(WindowPartition()).eval()
    x = torch.randn(2, 3, 4, 4)  # H // P == 1
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    assert not plan.barriers and plan.removed_channels == 6
    assert_pruned_equals_silenced(model, plan, x, train=True)
