"""Shape propagation on meta tensors records exactly the shapes a real forward records.

Soundness: on random architectures, torchvision-style blocks and every shortcut, each
node's recorded shape equals the one the real run records; where a shape needs a value
(``nonzero``, ``.item()``) or an input is an integer, the meta run gives up and the real
run answers; the model's tensors are restored either way.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from slimprune import _meta_shapes, _trace
from slimprune._meta_shapes import run_on_meta, same_shape_function, same_shape_module
from slimprune.rules import has_module_rule
from tests.models import SpecNet, TinyResNet
from tests.strategies import programs

SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _shapes(model: nn.Module, inputs: tuple[Any, ...], meta: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    gm, _ = _trace.symbolic_trace(model, (), has_module_rule)
    with monkeypatch.context() as mp:
        if not meta:
            mp.setattr(_trace, "run_on_meta", lambda *a: False)
        _trace.propagate_shapes(gm, inputs)
    return {n.name: n.meta[_trace.SHAPE] for n in gm.graph.nodes}


def _meta_finishes(model: nn.Module, inputs: tuple[Any, ...]) -> bool:
    gm, _ = _trace.symbolic_trace(model, (), has_module_rule)
    with torch.no_grad():
        return run_on_meta(gm, inputs, lambda i: _trace._ShapeRecorder(gm, on_meta=True).run(*i))


@settings(max_examples=25, **SETTINGS)
@given(programs(max_ops=6), st.integers(0, 2**31 - 1))
def test_meta_shapes_equal_real_shapes_on_random_nets(prog, seed) -> None:
    torch.manual_seed(seed)
    model = SpecNet(prog).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.MonkeyPatch.context() as mp:
        assert _shapes(model, (x,), True, mp) == _shapes(model, (x,), False, mp)


class _Blocks(nn.Module):
    """Every shortcut at least once: elementwise modules and functions, BN, LayerNorm, Linear, pooling, broadcasting."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.acts = nn.ModuleList(m() for m in _meta_shapes._SAME_SHAPE_MODULES)
        self.pool = nn.AdaptiveAvgPool2d((None, 2))
        self.mpool = nn.AdaptiveMaxPool2d(1)
        self.ln = nn.LayerNorm(2)
        self.fc = nn.Linear(2, 5)
        self.bn1 = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        for act in self.acts:
            y = act(y)
        y = F.relu(y) + F.silu(y) * 0.5 - torch.sigmoid(y) / 2
        y = F.gelu(y, approximate="tanh") + F.dropout(y, 0.1, False)
        y = y * self.mpool(y)  # broadcasting
        z = self.pool(y)  # (N, 8, H, 2)
        z = F.layer_norm(z, (2,)) + self.ln(z)
        z = self.fc(z)  # (N, 8, H, 5)
        return self.bn1(z.mean(dim=(2, 3)))


def test_meta_shapes_equal_real_shapes_where_every_shortcut_answers(monkeypatch) -> None:
    model, x = _Blocks().eval(), torch.randn(2, 3, 6, 7)
    assert _meta_finishes(model, (x,))
    assert _shapes(model, (x,), True, monkeypatch) == _shapes(model, (x,), False, monkeypatch)
    tiny = TinyResNet().eval()
    assert _shapes(tiny, (torch.randn(1, 3, 32, 32),), True, monkeypatch) == \
        _shapes(tiny, (torch.randn(1, 3, 32, 32),), False, monkeypatch)


class _ValueShaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.nonzero(y > 0)  # the output's shape is a value


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids))


def test_a_shape_that_needs_values_falls_back_to_the_real_run(monkeypatch) -> None:
    torch.manual_seed(0)
    model, x = _ValueShaped().eval(), torch.randn(1, 3, 4, 4)
    assert not _meta_finishes(model, (x,))
    shapes = _shapes(model, (x,), True, monkeypatch)
    assert shapes == _shapes(model, (x,), False, monkeypatch)
    assert shapes["nonzero"] == torch.nonzero(model.conv(x) > 0).shape


def test_integer_inputs_are_never_run_on_meta(monkeypatch) -> None:
    model = _Embed().eval()
    assert not _meta_finishes(model, (torch.tensor([[1, 2, 3]]),))
    with pytest.raises(slimprune.ExampleInputError, match="failed on the example inputs"):
        _shapes(model, (torch.tensor([[1, 2, 30]]),), True, monkeypatch)  # id 30 >= 10: the real run raises


def test_a_shape_error_on_meta_still_raises_the_real_runs_error(monkeypatch) -> None:
    with pytest.raises(slimprune.ExampleInputError, match="failed on the example inputs"):
        _shapes(TinyResNet().eval(), (torch.randn(1, 5, 32, 32),), True, monkeypatch)  # 5 channels, conv wants 3


def test_the_models_tensors_are_restored_after_a_meta_run_whether_it_finished_or_not() -> None:
    for model, x in [(TinyResNet().eval(), torch.randn(1, 3, 32, 32)), (_ValueShaped().eval(), torch.randn(1, 3, 4, 4))]:
        gm, _ = _trace.symbolic_trace(model, (), has_module_rule)
        before = {k: (v, v.clone()) for k, v in list(gm.state_dict(keep_vars=True).items())}
        run_on_meta(gm, (x,), lambda i: _trace._ShapeRecorder(gm, on_meta=True).run(*i))
        after = gm.state_dict(keep_vars=True)
        assert after.keys() == before.keys()
        for k, (obj, value) in before.items():
            assert after[k] is obj and not obj.is_meta and torch.equal(obj, value)


@pytest.mark.parametrize("cls", _meta_shapes._SAME_SHAPE_MODULES)
def test_each_same_shape_module_shortcut_matches_the_module(cls: type) -> None:
    m, x = cls().eval(), torch.randn(2, 3, 4, 5)
    known = same_shape_module(m, (x.to("meta"),), {})
    assert known is not None and known.shape == m(x).shape and known.dtype == m(x).dtype


def test_shortcuts_decline_what_they_cannot_answer() -> None:
    meta = torch.empty(2, 3, 4, 4, device="meta")
    assert same_shape_module(nn.BatchNorm2d(5), (meta,), {}) is None  # wrong channel count: run it, it raises
    assert same_shape_module(nn.BatchNorm1d(3), (meta,), {}) is None  # wrong rank
    assert same_shape_module(nn.Linear(3, 2), (meta,), {}) is None  # last dim 4 != 3
    assert same_shape_module(nn.ReLU(), (torch.randn(2, 3),), {}) is None  # not meta
    assert same_shape_function(torch.add, (meta, meta), {"alpha": 2}) is None  # not an operator call
    import operator
    assert same_shape_function(operator.add, (meta, torch.empty(3, device="meta", dtype=torch.float64)), {}) is None
    assert same_shape_function(operator.add, (meta, torch.randn(4)), {}) is None  # a CPU tensor
    with pytest.raises(RuntimeError):  # not broadcastable: raises as the real op does
        same_shape_function(operator.mul, (meta, torch.empty(3, 3, device="meta")), {})


def test_plans_with_meta_shapes_equal_plans_with_real_shapes(monkeypatch) -> None:
    model, x = TinyResNet().eval(), torch.randn(1, 3, 32, 32)
    fast = slimprune.plan(model, 0.5, importance="l2", example_inputs=x).to_dict()
    monkeypatch.setattr(_trace, "run_on_meta", lambda *a: False)
    assert slimprune.plan(model, 0.5, importance="l2", example_inputs=x).to_dict() == fast


def test_a_cpu_tensor_made_in_forward_gives_the_real_shapes(monkeypatch) -> None:
    class WithConstant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + torch.ones(3, 1, 1)  # made on the CPU in forward, mixed with a meta tensor

    x = torch.randn(1, 3, 2, 2)
    assert _shapes(WithConstant(), (x,), True, monkeypatch) == _shapes(WithConstant(), (x,), False, monkeypatch)


@settings(max_examples=60, **SETTINGS)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.integers(1, 3),
       st.integers(1, 2), st.integers(1, 9), st.sampled_from(["ints", "same", "valid"]), st.booleans(), st.booleans())
def test_the_conv_shortcut_gives_the_convs_own_output_shape(n, groups, kernel, pad, stride, dilation, size, padding,
                                                            bias, batched) -> None:
    """Conv1d/2d/3d from the size formula: the real conv's shape wherever it runs, and no answer
    where the real conv raises (the kernel does not fit), so the meta run raises as it would."""
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n]
    padding_arg = pad if padding == "ints" else padding
    stride = 1 if padding == "same" else stride
    conv = cls(2 * groups, 3 * groups, kernel, stride=stride, padding=padding_arg, dilation=dilation,
               groups=groups, bias=bias)
    x = torch.randn(*((2,) if batched else ()), 2 * groups, *([size] * n))
    known = same_shape_module(conv, (x.to("meta"),), {})
    try:
        real = conv(x)
    except RuntimeError:
        assert known is None
        return
    assert known is not None and known.shape == real.shape and known.dtype == real.dtype


def test_the_conv_shortcut_declines_what_it_cannot_answer() -> None:
    meta = torch.empty(2, 3, 8, 8, device="meta")
    assert same_shape_module(nn.Conv2d(4, 4, 3), (meta,), {}) is None  # 3 channels, not 4: the real one raises
    assert same_shape_module(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (meta,), {}) is None
    assert same_shape_module(nn.Conv2d(3, 4, 3).double(), (meta,), {}) is None  # dtypes differ
    last = torch.empty(2, 3, 8, 8, device="meta").to(memory_format=torch.channels_last)
    assert same_shape_module(nn.Conv2d(3, 4, 3), (last,), {}) is None  # the output layout follows the input's


def test_shapes_are_the_same_when_fx_preserves_node_metadata(monkeypatch) -> None:
    # The recorder skips Interpreter.run_node's per-node metadata context, which acts only
    # inside fx.traceback.preserve_node_meta(); there it runs the full run_node.
    import torch.fx.traceback as fx_traceback

    model, x = TinyResNet().eval(), torch.randn(2, 3, 16, 16)
    gm, _ = _trace.symbolic_trace(model, (), has_module_rule)
    _trace.propagate_shapes(gm, (x,))
    fast = {n.name: n.meta[_trace.SHAPE] for n in gm.graph.nodes}
    calls: list[str] = []
    real = fx.Interpreter.run_node
    monkeypatch.setattr(fx.Interpreter, "run_node", lambda self, n: calls.append(n.name) or real(self, n))
    _trace.propagate_shapes(gm, (x,))
    assert not calls
    with fx_traceback.preserve_node_meta():
        _trace.propagate_shapes(gm, (x,))
    assert calls == [n.name for n in gm.graph.nodes]
    assert {n.name: n.meta[_trace.SHAPE] for n in gm.graph.nodes} == fast


def test_the_meta_stand_ins_are_plain_contiguous_tensors_of_each_tensors_shape_and_dtype() -> None:
    """What ``torch.empty(shape, dtype, device="meta")`` made, whatever the original's layout,
    grad or dtype; shared tensors get one stand-in."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).to(memory_format=torch.channels_last)
    model[1].register_buffer("fp16", torch.randn(2, 5).half().t())
    model.shared = model[0].weight  # a plain attribute holding a parameter
    def tensors() -> dict[tuple[int, str], torch.Tensor]:
        return {(i, k): v for i, m in enumerate(model.modules()) for k, v in (*m._parameters.items(), *m._buffers.items())}

    originals = tensors()
    with _meta_shapes._meta_state(model):
        for key, t in tensors().items():
            want = torch.empty(tuple(originals[key].shape), dtype=originals[key].dtype, device="meta")
            assert type(t) is torch.Tensor and t.is_meta and not t.requires_grad, key
            assert (t.shape, t.stride(), t.dtype) == (want.shape, want.stride(), want.dtype), key
        assert model.shared is model[0]._parameters["weight"]
    assert all(t is originals[key] for key, t in tensors().items()) and model.shared is model[0].weight
