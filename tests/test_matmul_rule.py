"""The matmul rule (slimprune/rules/heads.py): attention products prune the channels around them.

Hand-written attention blocks in the patterns of Ultralytics' PSA/C2PSA ``Attention``
(``q.transpose(-2, -1) @ k``, ``v @ attn.transpose(-2, -1)``), a token-major block
(``softmax(q @ k^T * s) @ v``) and a head-batched product: each plans with no barrier,
removes channels, and equals its silenced original. A vector product stays a barrier.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimprune
from slimprune.errors import UnsupportedOpWarning
from tests.helpers import assert_pruned_equals_silenced
from tests.models import randomize_bn

torch.set_num_threads(1)


def conv_bn(c1: int, c2: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c2))


class PSAAttention(nn.Module):
    """Ultralytics' Attention: one qkv conv viewed as heads, q/k/v split, channel-major products."""

    def __init__(self, c: int = 32, heads: int = 2, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, c // heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = conv_bn(c, c + 2 * self.key_dim * heads)
        self.proj = conv_bn(c, c)
        self.pe = conv_bn(c, c, 3, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N = H * W
        q, k, v = self.qkv(x).view(B, self.heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class PSABlock(nn.Module):
    """A C2PSA-style block: conv in, attention and FFN residuals, conv out."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.cv1 = nn.Sequential(conv_bn(3, c, 3), nn.SiLU())
        self.attn = PSAAttention(c)
        self.ffn = nn.Sequential(conv_bn(c, 2 * c), nn.SiLU(), conv_bn(2 * c, c))
        self.head = nn.Sequential(conv_bn(c, 24), nn.SiLU(), nn.Conv2d(24, 5, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        x = x + self.attn(x)
        x = x + self.ffn(x)
        return self.head(x)


class TokenAttention(nn.Module):
    """Token-major attention over a feature map: (B, N, C) tokens, softmax(q k^T s) v."""

    def __init__(self, c: int = 24) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, c, 3), nn.ReLU())
        self.q, self.k, self.v = nn.Linear(c, 16), nn.Linear(c, 16), nn.Linear(c, 20)
        self.out = nn.Linear(20, 10)
        self.scale = 0.25

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)
        attn = torch.softmax(self.q(t) @ self.k(t).transpose(-2, -1) * self.scale, dim=-1)
        return self.out(attn @ self.v(t)).mean(1)


class VectorProduct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.w = nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x).mean((2, 3)) @ self.w


def plan_quietly(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> tuple[slimprune.PruningPlan, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, ratio, example_inputs=x)
    return plan, [w for w in caught if issubclass(w.category, UnsupportedOpWarning)]


@pytest.mark.parametrize("fold_bias", [True, False], ids=["folded-beta", "zeroed-beta"])
def test_psa_attention_prunes_through_its_matmuls_and_equals_silenced(fold_bias: bool) -> None:
    torch.manual_seed(0)
    model = randomize_bn(PSABlock()).eval()
    for bn in (model.ffn[0][1], model.head[0][1]):  # rank the block width (through the attention) lowest
        nn.init.uniform_(bn.weight, 5.0, 10.0)
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=fold_bias)
    assert not [w for w in caught if issubclass(w.category, UnsupportedOpWarning)]
    small = assert_pruned_equals_silenced(model, plan, x)
    # v's channels (through attn @ v, pe and proj) and the block width prune; so do q and k,
    # in pairs (a contracted pair silenced on both sides adds nothing to q^T k)
    assert small.attn.proj[0].in_channels < 32 and small.cv1[0][0].out_channels < 32
    key = 2 * model.attn.key_dim * model.attn.heads
    assert 0 < small.attn.qkv[0].out_channels - small.attn.proj[0].in_channels < key


def test_token_attention_prunes_contracted_channels_in_pairs_and_values() -> None:
    torch.manual_seed(0)
    model = randomize_bn(TokenAttention()).eval()
    x = torch.randn(2, 3, 6, 6)
    plan, barriers = plan_quietly(model, x)
    assert not barriers
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.v.out_features < 20 and small.q.out_features == small.k.out_features < 16


def test_head_batched_matmul_ties_the_heads_of_both_operands() -> None:
    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = conv_bn(3, 8)
            self.b = conv_bn(3, 8)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)  # (B, 8, H, W): 8 "heads" of H x W matrices
            return self.out(torch.relu(a @ b.transpose(-2, -1)))

    torch.manual_seed(0)
    model = randomize_bn(Heads()).eval()
    x = torch.randn(2, 3, 5, 5)
    plan, barriers = plan_quietly(model, x)
    assert not barriers
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.a[0].out_channels == small.b[0].out_channels == small.out.in_channels < 8


def test_matmul_with_a_vector_is_a_barrier_that_warns() -> None:
    torch.manual_seed(0)
    model = randomize_bn(VectorProduct()).eval()
    x = torch.randn(2, 3, 4, 4)
    plan, barriers = plan_quietly(model, x)
    assert barriers and "matmul" in str(barriers[0].message)
    assert plan.params_after == plan.params_before
    assert_pruned_equals_silenced(model, plan, x)
