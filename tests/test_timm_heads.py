"""timm's attention prunes by whole heads: the packed qkv's ``unbind`` has a rule, and each
timm attention class whose forward slimprune has read gets a head resizer (num_heads, and
widths such as attn_dim; head_dim and scale never change). Real timm models, no weights."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced
from tests.models import calibrated


# ------------------------------------------------------------------ unbind (no timm)
class Packed(nn.Module):
    """``qkv.reshape(B, N, 3, C).unbind(2)``: three tensors with the same channels."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(6, 3 * 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 8).unbind(2)
        return self.out(torch.relu(q) * k + v)


class ByChannel(nn.Module):
    """``y.unbind(1)`` of a [B, C] tensor: one tensor per channel, each used by position."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = torch.relu(self.fc(x)).unbind(1)
        return self.head(x) * (a - 2 * b + c)[:, None]


def test_unbind_off_the_channel_axis_gives_every_piece_the_channels():
    torch.manual_seed(0)
    model, x = Packed().eval(), torch.randn(2, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.qkv.out_features == 3 * small.out.in_features < 24  # q, k and v rows go together


def test_unbind_along_the_channel_axis_keeps_those_channels():
    torch.manual_seed(0)
    model, x = ByChannel().eval(), torch.randn(2, 5)
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.fc.out_features == 3


# ------------------------------------------------------------------ real timm models
timm = pytest.importorskip("timm")


def _heads(model: nn.Module, cls: type) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m) is cls}


def _no_barriers(model: nn.Module, x: torch.Tensor) -> slimprune.PruningPlan:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, 0.5, example_inputs=(x,), fold_bias=False, allow_inexact=False)
    barriers = [str(w.message) for w in caught if issubclass(w.category, slimprune.UnsupportedOpWarning)]
    assert not barriers, barriers[0]
    assert not plan.barriers, plan.barriers[0]
    return plan


def _model(name: str, size: int, sized: bool = True, **kw) -> tuple[nn.Module, torch.Tensor]:
    """``sized``: the model takes ``img_size`` (ViTs' position tables are built for it)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    kw = {"img_size": size, **kw} if sized else kw
    return calibrated(timm.create_model(name, pretrained=False, **kw), x), x


# (model, image size, keyword arguments): timm.layers.Attention, packed qkv, fused (sdpa) and not
VITS = [
    ("vit_tiny_patch16_224", 32, {}),
    ("deit_tiny_patch16_224", 32, {}),
    ("vit_tiny_patch16_224", 32, {"qkv_bias": False, "depth": 3}),
]


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
@pytest.mark.parametrize("name,size,kw", VITS, ids=["vit", "deit", "vit_no_qkv_bias"])
def test_timm_attention_loses_whole_heads_exactly_without_barriers(name, size, kw, fused):
    from timm.layers.attention import Attention

    model, x = _model(name, size, **kw)
    for m in _heads(model, Attention).values():
        m.fused_attn = fused
    before = {n: (m.num_heads, m.head_dim, m.attn_dim, m.scale) for n, m in _heads(model, Attention).items()}
    assert before, f"{name} has no timm Attention: this test checks nothing"
    plan = _no_barriers(model, x)
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    after = _heads(small, Attention)
    assert after.keys() == before.keys()  # the class (and its forward) stays
    for n, m in after.items():
        heads, head_dim, _, scale = before[n]
        assert m.head_dim == head_dim and m.scale == scale  # never changes
        assert m.qkv.out_features == 3 * m.num_heads * head_dim == 3 * m.attn_dim
        assert m.proj.in_features == m.attn_dim and 1 <= m.num_heads <= heads
    assert sum(m.num_heads for m in after.values()) < sum(b[0] for b in before.values())
    assert small.blocks[0].norm1.normalized_shape == model.blocks[0].norm1.normalized_shape  # residual whole


def test_a_pruned_timm_vit_survives_deepcopy_and_pickle():
    from timm.layers.attention import Attention

    model, x = _model("vit_tiny_patch16_224", 32)
    small = slimprune.apply(model, _no_barriers(model, x)).eval()
    with torch.no_grad():
        want = small(x)
        for other in (copy.deepcopy(small), pickle.loads(pickle.dumps(small))):
            assert torch.equal(other.eval()(x), want)
            assert [m.num_heads for m in _heads(other, Attention).values()] == \
                   [m.num_heads for m in _heads(small, Attention).values()]


def test_timm_heads_tied_to_the_residual_width_go_with_its_channels():
    """PVT-v2 reshapes the attention output to the input's width C (``reshape(B, N, C)``):
    a head goes only with the head_dim residual channels it lines up with. The residual
    stream passes LayerNorms, so exactly (allow_inexact=False) every head stays, without a
    barrier; allow_inexact=True removes heads with their residual channels."""
    from timm.models.pvt_v2 import Attention

    model, x = _model("pvt_v2_b0", 64, sized=False)
    before = {n: (m.num_heads, m.q.out_features) for n, m in _heads(model, Attention).items()}
    assert before, "pvt_v2_b0 has no pvt_v2 Attention: this test checks nothing"
    small = assert_pruned_equals_silenced(model, _no_barriers(model, x), x, train=True)
    assert {n: (m.num_heads, m.q.out_features) for n, m in _heads(small, Attention).items()} == before
    plan = slimprune.plan(model, 0.5, example_inputs=(x,), allow_inexact=True)
    small = slimprune.apply(model, plan)
    after = _heads(small, Attention)
    for n, m in after.items():
        heads, width = before[n]
        assert m.q.out_features == m.q.in_features == m.proj.out_features  # heads are residual channels
        assert m.num_heads * (width // heads) == m.q.out_features == m.kv.out_features // 2
    assert sum(m.num_heads for m in after.values()) < sum(h for h, _ in before.values())
    with torch.no_grad():
        assert small.eval()(x).shape == model.eval()(x).shape
        small.train()(x)


class OwnAttention(nn.Module):
    """timm's Attention forward on a subclass that overrides it: no resizer is inherited."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = OwnAttention()
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(self.inp(x)))


def test_an_attention_class_without_a_resizer_keeps_its_heads_and_says_so():
    torch.manual_seed(0)
    model, x = Wrapped().eval(), torch.randn(2, 5, 8)
    with pytest.warns(slimprune.UnsupportedOpWarning, match=r"attn \(OwnAttention\) reads self.num_heads"):
        plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.attn.qkv.out_features == 48 and small.attn.num_heads == 4


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "matmul"])
def test_a_one_head_timm_attention_keeps_its_head_and_prunes_inside_it_where_exact(fused):
    """One head: its heads axis carries no labels. sdpa's default scale reads q's width, so
    q/k (and v, tied to them by the packed reshape) stay, without a barrier; the unfused path
    multiplies by the constant ``self.scale``, so channels inside the head go in q/k pairs."""
    from timm.layers.attention import Attention

    model, x = _model("vit_tiny_patch16_224", 32, num_heads=1, depth=2)
    for m in _heads(model, Attention).values():
        m.fused_attn = fused
    small = assert_pruned_equals_silenced(model, _no_barriers(model, x), x, train=True)
    pruned = list(_heads(small, Attention).values())
    assert all(m.num_heads == 1 and m.scale == model.blocks[0].attn.scale for m in pruned)
    widths = [m.qkv.out_features for m in pruned]
    assert all(w == 3 * 192 for w in widths) if fused else all(w < 3 * 192 for w in widths)


# (model, image size, keyword arguments): heads tied to the residual stream (reshape(B, N, C)),
# each family with what made it a barrier before: BEiT's and SwinV2's F.linear with a
# concatenated q/k/v bias, EVA's rotary table (a constant labelled on head_dim, times q),
# SwinV2's per-head logit scale and position-bias MLP gathered by an index buffer
RESIDUAL_TIED = [
    ("beit_base_patch16_224", 32, {"depth": 2, "embed_dim": 64, "num_heads": 4}, "timm.models.beit.Attention", True),
    # (eva02_*_patch14_224 are built without a classifier, num_classes=0: see the test below)
    ("eva02_tiny_patch14_224", 28, {"depth": 2, "num_classes": 10}, "timm.models.eva.EvaAttention", True),
    ("swinv2_tiny_window8_256", 64, {"depths": (1, 1, 1, 1), "window_size": 4, "drop_path_rate": 0.0},
     "timm.models.swin_transformer_v2.WindowAttention", True),
    ("vit_srelpos_small_patch16_224", 32, {"depth": 2}, "timm.models.vision_transformer_relpos.RelPosAttention",
     True),
]


@pytest.mark.parametrize("name,size,kw,cls,inexact_heads", RESIDUAL_TIED, ids=[r[0].split("_")[0] for r in RESIDUAL_TIED])
def test_residual_tied_timm_attention_prunes_exactly_without_barriers(name, size, kw, cls, inexact_heads):
    import importlib

    module, _, qualname = cls.rpartition(".")
    attention = getattr(importlib.import_module(module), qualname)
    model, x = _model(name, size, **kw)
    before = {n: m.num_heads for n, m in _heads(model, attention).items()}
    assert before, f"{name} has no {qualname}: this test checks nothing"
    plan = _no_barriers(model, x)
    assert plan.params_after < plan.params_before
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert {n: m.num_heads for n, m in _heads(small, attention).items()} == before  # LayerNorm-coupled
    inexact = slimprune.apply(model, slimprune.plan(model, 0.5, example_inputs=(x,), allow_inexact=True))
    after = _heads(inexact, attention)
    assert (sum(m.num_heads for m in after.values()) < sum(before.values())) == inexact_heads
    for m in after.values():
        qkv = m.qkv.weight.shape[0] if getattr(m, "qkv", None) is not None else 3 * m.q_proj.weight.shape[0]
        assert qkv == 3 * m.num_heads * (m.proj.in_features // m.num_heads)
    with torch.no_grad():
        assert inexact.eval()(x).shape == model.eval()(x).shape
        inexact.train()(x)


def test_eva_without_a_classifier_keeps_its_heads_because_the_residual_stream_is_its_output() -> None:
    """timm builds eva02_tiny_patch14_224 with num_classes=0: the pooled residual stream is what
    the model returns, so its width is the user's and stays, and the heads tied to it stay too;
    ``prune_outputs=True`` lets the returned width go, and the heads with it."""
    from timm.models.eva import EvaAttention

    model, x = _model("eva02_tiny_patch14_224", 28, depth=2)
    assert model.num_classes == 0
    before = sum(m.num_heads for m in _heads(model, EvaAttention).values())
    kept = slimprune.apply(model, slimprune.plan(model, 0.5, example_inputs=(x,), allow_inexact=True))
    assert sum(m.num_heads for m in _heads(kept, EvaAttention).values()) == before
    with torch.no_grad():
        assert kept.eval()(x).shape == model.eval()(x).shape
    freed = slimprune.apply(model, slimprune.plan(model, 0.5, example_inputs=(x,), allow_inexact=True,
                                                  prune_outputs=True))
    assert sum(m.num_heads for m in _heads(freed, EvaAttention).values()) < before


# (model, image size, keyword arguments, attention class, its per-head table): heads that go
# with their columns of a per-head position table gathered by an index buffer
TABLED = [
    ("tiny_vit_5m_224", 64, {"depths": (1, 1, 1, 1), "sized": False}, "timm.models.tiny_vit.Attention",
     "attention_biases", 0),
    ("coatnet_pico_rw_224", 64, {}, "timm.models.maxxvit.Attention2d", "rel_pos.relative_position_bias_table", 1),
]


@pytest.mark.parametrize("name,size,kw,cls,table,dim", TABLED, ids=[r[0].split("_")[0] for r in TABLED])
def test_timm_heads_go_with_their_position_table_columns(name, size, kw, cls, table, dim):
    import importlib

    module, _, qualname = cls.rpartition(".")
    attention = getattr(importlib.import_module(module), qualname)
    model, x = _model(name, size, **kw)
    before = {n: m.num_heads for n, m in _heads(model, attention).items()}
    assert before, f"{name} has no {qualname}: this test checks nothing"
    small = assert_pruned_equals_silenced(model, _no_barriers(model, x), x, train=True)
    after = _heads(small, attention)
    assert sum(m.num_heads for m in after.values()) < sum(before.values())
    for m in after.values():
        assert m.get_parameter(table).shape[dim] == m.num_heads
    with torch.no_grad():
        assert torch.equal(pickle.loads(pickle.dumps(small)).eval()(x), small.eval()(x))
