"""A reshape to a whole shape read from another tensor (``a.view(b.shape)``, GPT-2's
``output_shape = (-1,) + input_shape[1:] + (h.size(-1),)``) follows that tensor's pruned width
at run time: the channels it lands on are tied to the channels it was read from, so both
keep the same count and the reshape stays valid (and exact)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced

Shape = Callable[[torch.Tensor, torch.Tensor], object]

SHAPES: dict[str, Shape] = {
    "b.shape": lambda x, b: b.shape,
    "b.size()": lambda x, b: b.size(),
    "tuples joined with +": lambda x, b: (-1,) + x.shape[1:-1] + (b.size(-1),),
    "a shape slice joined with +": lambda x, b: b.shape[:-1] + (b.size(-1),),
}


class ViewAs(nn.Module):
    """``a`` reshaped to a shape read from ``b``; ``b`` also goes its own way."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.shape = shape
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)
        self.out_a, self.out_b = nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), torch.relu(self.b(x))
        return self.out_a(torch.relu(a).view(self.shape(x, b))) + self.out_b(b)


@pytest.mark.parametrize("how", list(SHAPES))
def test_a_reshape_to_another_tensors_shape_ties_the_widths_it_reads(how: str) -> None:
    torch.manual_seed(0)
    model = ViewAs(SHAPES[how]).eval()
    x = torch.randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        # b protected: a's width is read from b's, so a keeps its channels too (tied)
        protected = slimprune.plan(model, ratio=0.5, example_inputs=x, protect=["b"])
        free = slimprune.plan(model, ratio=0.5, example_inputs=x)
    small = assert_pruned_equals_silenced(model, protected, x)
    assert small.a.out_features == small.b.out_features == 8
    small = assert_pruned_equals_silenced(model, free, x)
    assert small.a.out_features == small.b.out_features < 8  # one group: pruned together
    assert free.kept("a", "weight", 0) == free.kept("b", "weight", 0)


def test_a_derived_size_in_a_joined_tuple_still_keeps_its_channels() -> None:
    """``(-1, b.size(-1) // 2, 2)``: a size computed from a width is no axis's width; the
    reshape keeps the channels whole rather than tying them."""

    class Halves(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), self.b(x)
            shape = (-1,) + x.shape[1:-1] + (b.size(-1) // 2, 2)
            return self.out(a.view(shape).flatten(-2) + b)

    torch.manual_seed(0)
    model = Halves().eval()
    x = torch.randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, ratio=0.5, example_inputs=x)
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.a.out_features == small.b.out_features == 8


def test_an_expand_to_another_tensors_shape_keeps_the_width_it_reads_when_nothing_lands_on_it() -> None:
    """``s.expand(b.shape)`` of a one-channel ``s``: the expanded width is ``b``'s at run time,
    and it meets ``a``'s channels, so neither may shrink on its own."""

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 3)
            self.out_b = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.a(x), torch.relu(self.b(x))
            s = torch.sigmoid(x.sum(-1, keepdim=True))
            return self.out(a * s.expand(b.shape)) + self.out_b(b)

    torch.manual_seed(0)
    model = Gate().eval()
    x = torch.randn(2, 5, 4)
    plan = slimprune.plan(model, ratio=0.5, example_inputs=x, protect=["a"])
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.a.out_features == small.b.out_features == 8


class _CarriedWidth(nn.Module):
    """Hugging Face's attention tail (MobileViT, ...): heads merged back by a view whose last
    size is a Python int carried in a tuple, ``x.size()[:-2] + (self.all_head_size,)``."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.head_size = 4, 8
        self.all_head_size = 32
        self.q = nn.Linear(16, 32)
        self.out = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.q(x).view(*x.shape[:-1], -1, self.head_size).transpose(1, 2)
        y = torch.relu(y).permute(0, 2, 1, 3).contiguous()
        y = y.view(*(y.size()[:-2] + (self.all_head_size,)))
        return self.out(y)


def test_a_carried_int_size_on_the_channel_axis_is_rewritten_with_the_attribute_it_came_from() -> None:
    torch.manual_seed(0)
    m, x = _CarriedWidth().eval(), torch.randn(2, 5, 16)
    plan = slimprune.plan(m, 0.5, example_inputs=x)
    carried = [e for e in map(json.loads, plan.edits) if e.get("attr") == ["", "all_head_size"]]
    assert len(carried) == 1 and carried[0]["old"] == 32  # the join's literal, named by its attribute
    small = assert_pruned_equals_silenced(m, plan, x)
    assert small.q.out_features == small.out.in_features == small.all_head_size < 32
    assert not isinstance(small, slimprune.Rewritten)  # its own forward reads the updated attribute


class _CarriedHeads(nn.Module):
    """Multi-head attention merging its heads as MobileViT does, ``size()[:-2] + (self.all_head_size,)``,
    with a head resizer (registered in the test): whole heads go with the carried literal."""

    def __init__(self, heads: int, head_size: int) -> None:
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, head_size
        self.all_head_size = heads * head_size
        self.query, self.key, self.value = (nn.Linear(12, self.all_head_size) for _ in range(3))
        self.out = nn.Linear(self.all_head_size, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.attention_head_size)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.query, self.key, self.value))
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / self.attention_head_size ** 0.5, dim=-1)
        y = torch.matmul(w, v).permute(0, 2, 1, 3).contiguous()
        return self.out(y.view(*(y.size()[:-2] + (self.all_head_size,))))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.integers(2, 6), st.sampled_from([2, 4, 8]), st.floats(0.1, 0.7), st.integers(0, 1000))
def test_heads_merged_by_a_carried_literal_go_whole_and_the_attributes_follow(heads: int, head_size: int,
                                                                              ratio: float, seed: int) -> None:
    from slimprune.rules import hf
    from slimprune.rules.heads import _RESIZERS, register_head_resizer

    register_head_resizer(_CarriedHeads, hf._resize_bert)
    try:
        torch.manual_seed(seed)
        m, x = _CarriedHeads(heads, head_size).eval(), torch.randn(2, 5, 12)
        plan = slimprune.plan(m, ratio, example_inputs=x, importance="random", seed=seed)
        small = assert_pruned_equals_silenced(m, plan, x)
    finally:
        _RESIZERS.pop(_CarriedHeads, None)
    width = small.query.out_features
    assert width % head_size == 0 and small.attention_head_size == head_size  # whole heads only
    if int(ratio * heads) >= 1:  # (the heads are the model's only prunable units)
        assert width < heads * head_size
    assert small.all_head_size == width == small.num_attention_heads * head_size == small.out.in_features
    assert small.key.out_features == small.value.out_features == width
    assert not isinstance(small, slimprune.Rewritten)


class _CarriedTwice(nn.Module):
    """One joined shape, ``y.size()[:-2] + (self.all_head_size,)``, read by the views of two
    tensors whose channels are not tied: one literal cannot follow both, so both keep it."""

    def __init__(self) -> None:
        super().__init__()
        self.head_size, self.all_head_size = 8, 32
        self.q, self.k = nn.Linear(16, 32), nn.Linear(16, 32)
        self.out_q, self.out_k = nn.Linear(32, 16), nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.q(x).view(*x.shape[:-1], -1, self.head_size))
        z = torch.sigmoid(self.k(x).view(*x.shape[:-1], -1, self.head_size))
        shape = y.size()[:-2] + (self.all_head_size,)
        return self.out_q(y.view(*shape)) + self.out_k(z.view(*shape))


def test_a_carried_int_size_two_views_read_keeps_those_channels_and_the_model_runs() -> None:
    torch.manual_seed(0)
    m, x = _CarriedTwice().eval(), torch.randn(2, 5, 16)
    plan = slimprune.plan(m, 0.5, example_inputs=x)
    small = assert_pruned_equals_silenced(m, plan, x)
    assert small.q.out_features == small.k.out_features == small.all_head_size == 32  # the carried 32 stays 32


def test_hugging_face_mobilevit_prunes_exactly_and_runs() -> None:
    import transformers
    torch.manual_seed(0)
    config = transformers.MobileViTConfig(image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=4,
                                          neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 48])
    m = transformers.MobileViTModel(config).eval()
    x = {"pixel_values": torch.randn(1, 3, 64, 64)}
    plan = slimprune.plan(m, 0.5, example_inputs=x, allow_inexact=False)
    small = slimprune.apply(m, plan)
    before, after = (sum(p.numel() for p in mod.parameters()) for mod in (m, small))
    assert after < 0.6 * before  # main removed 58% and the pruned model failed in its forward
    assert_pruned_equals_silenced(m, plan, x)
