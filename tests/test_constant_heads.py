"""A tensor made inside an attention module and sized by its head count (T5's zero position
bias, ``torch.zeros((1, self.n_heads, q, k))``) is pruned with the heads only when its values
are defined: zeros/ones/full and their ``Tensor.new_*`` forms are; ``torch.empty``'s are not."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import slimprune
from slimprune.rules.heads import register_head_resizer
from tests.helpers import assert_pruned_equals_silenced

Make = Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor]

# how the attention module makes its per-head bias, from its input h and the shape (1, heads, n, n)
DEFINED: dict[str, Make] = {
    "torch.zeros": lambda h, s: torch.zeros(s),
    "torch.ones": lambda h, s: torch.ones(s) * 0.25,
    "torch.full": lambda h, s: torch.full(s, -0.5),
    "torch.zeros unpacked": lambda h, s: torch.zeros(*s),
    "Tensor.new_zeros": lambda h, s: h.new_zeros(s),
    "Tensor.new_zeros unpacked": lambda h, s: h.new_zeros(*s),
    "Tensor.new_ones": lambda h, s: h.new_ones(s) * 0.25,
    "Tensor.new_ones unpacked": lambda h, s: h.new_ones(*s) * 0.25,
    "Tensor.new_full": lambda h, s: h.new_full(s, -0.5),
}
UNDEFINED: dict[str, Make] = {
    "torch.empty": lambda h, s: torch.empty(s),
    "torch.empty unpacked": lambda h, s: torch.empty(*s),
    "Tensor.new_empty": lambda h, s: h.new_empty(s),
}


class BiasedAttention(nn.Module):
    """Attention adding a per-head bias it makes itself, sized by ``self.n_heads`` (as T5's
    cross-attention does), through the scores (eager) or sdpa's ``attn_mask``."""

    def __init__(self, make: Make, sdpa: bool) -> None:
        super().__init__()
        self.make, self.sdpa, self.n_heads, self.head_dim = make, sdpa, 4, 8
        self.q, self.k, self.v = (nn.Linear(16, 32) for _ in range(3))
        self.o = nn.Linear(32, 16)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        bias = self.make(h, (1, self.n_heads, n, n))
        if self.sdpa:
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5 + bias
            y = torch.matmul(torch.softmax(scores, -1), v)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


def _resize(m: BiasedAttention, orig: BiasedAttention) -> None:
    m.n_heads = m.q.out_features // m.head_dim


register_head_resizer(BiasedAttention, _resize)


class Block(nn.Module):
    def __init__(self, make: Make, sdpa: bool) -> None:
        super().__init__()
        self.inp, self.attn, self.out = nn.Linear(6, 16), BiasedAttention(make, sdpa), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.attn(self.inp(x)))


def _plan(model: nn.Module, x: torch.Tensor) -> tuple[slimprune.PruningPlan, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, ratio=0.5, example_inputs=x, protect=["inp"])
    return plan, [str(w.message) for w in caught if issubclass(w.category, slimprune.UnsupportedOpWarning)]


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul", "sdpa"])
@pytest.mark.parametrize("how", list(DEFINED))
def test_a_defined_constant_per_head_bias_loses_the_pruned_heads_exactly(how: str, sdpa: bool) -> None:
    torch.manual_seed(0)
    model = Block(DEFINED[how], sdpa).eval()
    x = torch.randn(2, 5, 6)
    plan, barriers = _plan(model, x)
    assert not barriers, barriers
    small = assert_pruned_equals_silenced(model, plan, x)
    heads = small.attn.q.out_features // 8
    assert 1 <= heads < 4 and small.attn.n_heads == heads  # whole heads went, the count followed
    assert small.attn.k.out_features == small.attn.v.out_features == small.attn.o.in_features == heads * 8
    assert type(small) is Block and not isinstance(small, slimprune.Rewritten)  # its own forward made the bias


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul", "sdpa"])
@pytest.mark.parametrize("how", list(UNDEFINED))
def test_an_uninitialised_per_head_bias_keeps_every_head_with_a_warning_naming_the_module(how: str, sdpa: bool) -> None:
    """``torch.empty`` is whatever memory held: no constant one can slice and call equal, so the
    heads it meets stay whole, and the user is told where (its values are the model's problem,
    a stale head count would be ours)."""
    torch.manual_seed(0)
    model = Block(UNDEFINED[how], sdpa).eval()
    x = torch.randn(2, 5, 6)
    plan, barriers = _plan(model, x)
    assert any("(attn)" in b and "uninitialised memory" in b for b in barriers), barriers
    small = slimprune.apply(model, plan)
    assert small.attn.q.out_features == small.attn.o.in_features == 32 and small.attn.n_heads == 4
    assert small(x).shape == (2, 5, 3)
