"""Tracing leaves the user's model exactly as it was: attributes, and the contents of the
containers a forward fills while it is traced (timm's EfficientViT and EfficientFormer cache
attention biases in a dict in eval mode; an fx proxy left there breaks every later plan)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced, run


class CachedBias(nn.Module):
    """Caches a derived tensor per device in a dict (and logs calls in a list) in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)
        self.bias = nn.Parameter(torch.randn(8))
        self.cache: dict[str, torch.Tensor] = {}
        self.calls: list[str] = []
        self.keys: set[str] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        if self.training:
            b = self.bias[:, None, None]
        else:
            key = str(x.device)
            if key not in self.cache:
                self.cache[key] = self.bias[:, None, None] * 2
                self.calls.append(key)
                self.keys.add(key)
            b = self.cache[key]
        return self.head(y + b)


def test_tracing_leaves_a_forward_cache_dict_and_list_as_they_were():
    torch.manual_seed(0)
    model = CachedBias().eval()
    x = torch.randn(2, 3, 16, 16)
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    assert model.cache == {} and model.calls == [] and model.keys == set()
    again = slimprune.plan(model, 0.5, example_inputs=(x,))  # failed with a proxy left in the cache
    assert again.to_json() == plan.to_json()
    assert plan.removed_channels > 0
    assert_pruned_equals_silenced(model, plan, x)


def test_a_filled_cache_keeps_its_identity_and_entries():
    torch.manual_seed(0)
    model = CachedBias().eval()
    x = torch.randn(2, 3, 16, 16)
    want = run(model, (x,))[0]
    cache, entry = model.cache, model.cache["cpu"]
    slimprune.plan(model, 0.5, example_inputs=(x,))
    assert model.cache is cache and model.cache.keys() == {"cpu"} and model.cache["cpu"] is entry
    assert model.calls == ["cpu"]
    assert torch.equal(run(model, (x,))[0], want)


@pytest.mark.parametrize("name", ["efficientvit_m0", "efficientformer_l1"])
def test_timm_models_caching_attention_biases_plan_twice(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    caches = [m.attention_bias_cache for m in model.modules() if hasattr(m, "attention_bias_cache")]
    assert caches, "the model no longer caches attention biases: this test checks nothing"
    first = slimprune.plan(model, 0.3, example_inputs=(x,), allow_inexact=False)
    # plan runs the model (a real forward may fill the cache with tensors); no proxy stays
    assert all(isinstance(v, torch.Tensor) and not isinstance(v, torch.fx.Proxy) for c in caches for v in c.values())
    second = slimprune.plan(model, 0.3, example_inputs=(x,), allow_inexact=False)
    assert second.to_json() == first.to_json() and first.removed_channels > 0
    small = slimprune.apply(model, second)
    with torch.no_grad():
        assert small(x).shape == model(x).shape == (1, 1000)


class TrainBranchBN(nn.BatchNorm2d):
    """A BatchNorm subclass traced through (it rewrites forward): its train-mode graph holds
    ``F.batch_norm(..., training=True)`` as a literal and counts batches (timm's BatchNormAct2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return torch.relu(torch.nn.functional.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps))


class WithTrainBranchBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = TrainBranchBN(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if self.training:  # a train-only op: the train-mode graph differs (EfficientFormerV2)
            y = torch.nn.functional.dropout(y, 0.0)
        return self.head(y)


def test_shapes_of_the_train_mode_graph_leave_running_statistics_alone():
    torch.manual_seed(0)
    model = WithTrainBranchBN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.weight[:3] = 0
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    slimprune.plan(model, 0.5, example_inputs=(x,))  # its bias-fold probe ran the train graph
    plan = slimprune.plan(model, threshold=1e-12, example_inputs=(x,))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "plan changed the model"
    assert plan.removed_channels == 3  # the functional batch_norm's γ is a scale
    assert_pruned_equals_silenced(model, plan, x, train=True)


class _Records(nn.Module):
    """Assigns to itself when called: a meta run must not leave what it assigned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = x  # (a meta tensor during the shape run)
        return self.conv(x)


@torch.fx.wrap
def _user_scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


class _CallsUserFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _user_scale(self.conv(x)).flatten(1)


def _snapshots_of_the_shape_run(monkeypatch, gm: torch.fx.GraphModule, x: torch.Tensor) -> int:
    from slimprune import _trace

    taken = []
    real = _trace._preserved
    monkeypatch.setattr(_trace, "_preserved", lambda m, values=True: taken.append(values) or real(m, values))
    _trace.propagate_shapes(gm, (x,))
    assert all(n.meta[_trace.SHAPE] is not None for n in gm.graph.nodes if n.op == "call_module")
    return len(taken)


def test_shape_run_skips_the_snapshot_only_for_graphs_of_torch_calls(monkeypatch):
    from slimprune._meta_shapes import runs_only_torch
    from slimprune._trace import symbolic_trace

    x = torch.randn(1, 3, 8, 8)
    torch_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    gm, _ = symbolic_trace(torch_only)
    assert runs_only_torch(gm) and _snapshots_of_the_shape_run(monkeypatch, gm, x) == 0

    hooked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    hooked[1].register_forward_hook(lambda m, i, o: setattr(m, "seen", o))
    opaque = nn.Sequential(nn.Conv2d(3, 4, 1), _Records())
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        globally_hooked, _ = symbolic_trace(torch_only)
        assert not runs_only_torch(globally_hooked)
    finally:
        handle.remove()
    for model, kw in [(hooked, {}), (opaque, {"opaque": ["1"]}), (_CallsUserFunction(), {}),
                      (nn.Sequential(nn.LSTM(8, 8, batch_first=True)), {})]:
        gm, _ = symbolic_trace(model, **kw)
        assert not runs_only_torch(gm), model
    gm, _ = symbolic_trace(opaque, opaque=["1"])
    assert _snapshots_of_the_shape_run(monkeypatch, gm, x) == 1
    assert "last" not in vars(opaque[1]), "the shape run left what a user forward assigned"
    gm, _ = symbolic_trace(hooked)
    assert _snapshots_of_the_shape_run(monkeypatch, gm, x) == 1 and not hasattr(hooked[1], "seen")
