"""Tests for slimprune.measure: hand-computed parameter and FLOP counts, latency, comparison."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from torch import nn

from slimprune.measure import Comparison, Measurement, compare, count_params, measure


def conv_macs(conv: nn.Conv2d, out_h: int, out_w: int, batch: int = 1) -> int:
    """Multiply-accumulates of a convolution: Cout·H'·W'·(Cin/groups)·kh·kw per sample."""
    kh, kw = conv.kernel_size
    return batch * conv.out_channels * out_h * out_w * (conv.in_channels // conv.groups) * kh * kw


def linear_macs(linear: nn.Linear, batch: int = 1) -> int:
    """Multiply-accumulates of a linear layer: in·out per sample."""
    return batch * linear.in_features * linear.out_features


def render(table: object) -> str:
    """Render a rich renderable to plain text."""
    console = Console(record=True, width=160)
    console.print(table)
    return console.export_text()


class ConvNet(nn.Module):
    """conv 3→8 (3×3, pad 1), BN, ReLU, grouped conv 8→8 (3×3, groups 4, no pad), linear 128→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.grouped = nn.Conv2d(8, 8, 3, groups=4)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.grouped(self.act(self.bn(self.conv(x))))
        return self.fc(x.flatten(1))


class Projection(nn.Module):
    """A non-leaf module that runs a matmul of its own besides its child linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        return y @ y.transpose(-1, -2)


class SharedTwice(nn.Module):
    """One linear layer registered under two names and called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = self.first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class TiedEmbedding(nn.Module):
    """An embedding and an output head that share one 5×3 weight; the head has its own bias."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


class TwoConvs(nn.Module):
    """conv 3→width (3×3, pad 1), BN, ReLU, conv width→4 (3×3, pad 1): the width is what pruning changes."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.bn1(self.conv1(x))))


def test_count_params_counts_a_tied_weight_once() -> None:
    """Embedding 5·3 = 15 and head bias 5; the head's weight is the embedding's and adds nothing."""
    assert count_params(TiedEmbedding()) == 15 + 5


def test_count_params_counts_a_module_registered_twice_once() -> None:
    """Linear(4, 4) has 4·4 + 4 = 20 parameters, however many names it has."""
    assert count_params(SharedTwice()) == 20


def test_flops_of_a_conv_net_match_the_formula_per_layer() -> None:
    """Each layer's FLOPs are 2·MACs from the textbook formula, under its named_modules() name."""
    model = ConvNet()
    result = measure(model, torch.randn(2, 3, 6, 6), latency=False)

    expected_macs = {
        "conv": conv_macs(model.conv, 6, 6, batch=2),
        "grouped": conv_macs(model.grouped, 4, 4, batch=2),
        "fc": linear_macs(model.fc, batch=2),
    }
    layers = {layer.name: layer for layer in result.layers}
    assert {name: layers[name].macs for name in expected_macs} == expected_macs
    assert {name: layers[name].flops for name in expected_macs} == {k: 2 * v for k, v in expected_macs.items()}
    assert result.macs == sum(expected_macs.values())
    assert result.flops == 2 * result.macs


def test_layers_hold_parameters_types_and_channels_and_skip_empty_modules() -> None:
    """BatchNorm is listed with its parameters and zero FLOPs; ReLU owns nothing and is left out."""
    model = ConvNet()
    result = measure(model, torch.randn(1, 3, 6, 6), latency=False)

    rows = [(layer.name, layer.type, layer.params, layer.channels) for layer in result.layers]
    assert rows == [
        ("conv", "Conv2d", 3 * 8 * 9 + 8, 8),
        ("bn", "BatchNorm2d", 2 * 8, 8),
        ("grouped", "Conv2d", 8 * 2 * 9 + 8, 8),
        ("fc", "Linear", 128 * 10 + 10, 10),
    ]
    assert result.params == count_params(model) == sum(layer.params for layer in result.layers)
    assert result.layers[1].flops == 0


@pytest.mark.parametrize(
    "conv, size, out_size",
    [
        (nn.Conv2d(4, 6, 3), 7, 5),
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), 7, 4),
        (nn.Conv2d(4, 8, 3, groups=4, padding=1), 5, 5),
        (nn.Conv2d(6, 6, 3, groups=6, dilation=2, padding=2), 6, 6),
        (nn.Conv2d(4, 2, 1, bias=False), 3, 3),
    ],
    ids=["plain", "strided", "grouped", "depthwise-dilated", "pointwise"],
)
def test_conv_flops_match_the_formula(conv: nn.Conv2d, size: int, out_size: int) -> None:
    """FLOPs = 2·Cout·H'·W'·Cin/groups·k·k for strided, grouped, depthwise and dilated convolutions."""
    result = measure(conv, torch.randn(1, conv.in_channels, size, size), latency=False)
    assert result.flops == 2 * conv_macs(conv, out_size, out_size)


def test_own_flops_of_a_non_leaf_module_are_kept_apart_from_its_child() -> None:
    """Projection's own matmul (3·6·3 MACs) is listed under its name, the linear's under "proj"."""
    result = measure(Projection(), torch.randn(3, 6), latency=False)

    flops = {layer.name: layer.flops for layer in result.layers}
    assert flops == {"": 2 * 3 * 6 * 3, "proj": 2 * 3 * 6 * 6}
    assert result.flops == sum(flops.values())


def test_a_module_called_twice_is_counted_twice_under_its_first_name() -> None:
    """Two calls of Linear(4, 4) on a batch of 5 cost 2·(5·4·4) MACs, all listed as "first"."""
    result = measure(SharedTwice(), torch.randn(5, 4), latency=False)
    assert [(layer.name, layer.macs) for layer in result.layers] == [("first", 2 * 5 * 4 * 4)]


def test_latency_states_threads_batch_and_positive_times() -> None:
    """The latency record says where and how it was timed, and its times are positive."""
    result = measure(ConvNet(), torch.randn(3, 3, 6, 6), threads=1, min_run_time=0.05)

    latency = result.latency
    assert latency is not None
    assert (latency.device, latency.threads, latency.batch) == ("cpu", 1, 3)
    assert latency.median_ms > 0
    assert latency.iqr_ms >= 0
    assert latency.repeats >= 1


def test_default_threads_are_torch_s_current_setting() -> None:
    """Without threads=, the record states torch.get_num_threads()."""
    result = measure(nn.Linear(4, 4), torch.randn(1, 4), min_run_time=0.01)
    assert result.latency is not None
    assert result.latency.threads == torch.get_num_threads()


def test_measure_restores_every_training_flag_and_leaves_the_model_unchanged() -> None:
    """A training model with one submodule in eval mode comes back exactly as it went in."""
    model = ConvNet().train()
    model.act.eval()
    flags = {name: module.training for name, module in model.named_modules()}
    state = {key: value.clone() for key, value in model.state_dict().items()}

    # A large input shifts BatchNorm's running statistics if the model ran in training mode.
    measure(model, 10 + 5 * torch.randn(2, 3, 6, 6), min_run_time=0.02)

    assert {name: module.training for name, module in model.named_modules()} == flags
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[key], value) for key, value in state.items())


def test_the_model_runs_in_eval_mode_without_autograd() -> None:
    """Every forward call measure makes, counting and timing alike, sees eval mode and no_grad."""

    class Recorder(nn.Linear):
        """Linear layer that records the training flag and grad mode of each call."""

        def __init__(self) -> None:
            super().__init__(4, 4)
            self.calls: list[tuple[bool, bool]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls.append((self.training, torch.is_grad_enabled()))
            return super().forward(x)

    model = Recorder().train()
    measure(model, torch.randn(1, 4), min_run_time=0.01)
    assert len(model.calls) > 1
    assert set(model.calls) == {(False, False)}


def test_tuple_inputs_are_passed_positionally_and_their_shapes_recorded() -> None:
    """A tuple is unpacked into forward(); non-tensor entries get a None shape."""

    class Scaled(nn.Module):
        """Linear layer whose output is multiplied by a Python number."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
            return self.fc(x) * scale

    result = measure(Scaled(), (torch.randn(7, 4), 2.0), latency=False)
    assert result.input_shapes == ((7, 4), None)
    assert result.macs == 7 * 4 * 2


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ({"x": torch.randn(1, 4)}, ValueError, r"names \['x'\], which Linear.forward does not take"),
        (3, TypeError, "got int"),
        ((), ValueError, "empty"),
        ((1.0, 2.0), TypeError, "no tensor"),
    ],
    ids=["dict", "int", "empty-tuple", "no-tensor"],
)
def test_wrong_example_inputs_are_refused_with_a_fix(bad: object, error: type[Exception], words: str) -> None:
    """Each wrong kind of example_inputs raises before the model runs, saying what to pass."""
    with pytest.raises(error, match=words):
        measure(nn.Linear(4, 4), bad, latency=False)


def test_keyword_inputs_are_measured_as_the_positional_call() -> None:
    """A dict of keyword inputs calls model(**inputs): the same FLOPs and shapes as positionally."""
    x = torch.randn(2, 4)
    by_name = measure(nn.Linear(4, 3), {"input": x}, latency=False)
    by_position = measure(nn.Linear(4, 3), x, latency=False)
    assert by_name.flops == by_position.flops == 2 * 2 * 4 * 3
    assert by_name.input_shapes == ((2, 4),)


def test_cuda_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking for CUDA on a machine without it names the problem and the alternative."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"CUDA is not available.*device='cpu'"):
        measure(nn.Linear(4, 4), torch.randn(1, 4), device="cuda")


@pytest.mark.parametrize("device", ["meta", "not-a-device"])
def test_devices_other_than_cpu_and_cuda_are_refused(device: str) -> None:
    """Only CPU and CUDA can be timed; anything else is a ValueError naming the choices."""
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        measure(nn.Linear(4, 4), torch.randn(1, 4), device=device)


@pytest.mark.parametrize("kw", [{"threads": 0}, {"min_run_time": 0.0}])
def test_non_positive_settings_are_refused(kw: dict[str, float]) -> None:
    """threads and min_run_time must be positive."""
    with pytest.raises(ValueError, match="positive"):
        measure(nn.Linear(4, 4), torch.randn(1, 4), **kw)


def test_a_failing_model_reports_the_input_shapes() -> None:
    """When forward() fails, the error carries a note with the shapes it was given."""
    with pytest.raises(RuntimeError) as info:
        measure(nn.Linear(4, 4), torch.randn(2, 5), latency=False)
    assert "[(2, 5)]" in "\n".join(info.value.__notes__)


def test_measurement_round_trips_through_json() -> None:
    """to_dict() holds only JSON types: dumping and loading gives the same dict back."""
    result = measure(ConvNet(), torch.randn(1, 3, 6, 6), min_run_time=0.02)
    as_dict = result.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["layers"][0]["name"] == "conv"
    assert as_dict["latency"]["batch"] == 1
    assert as_dict["input_shapes"] == [[1, 3, 6, 6]]


def test_measurement_table_lists_layers_and_total() -> None:
    """The rich table has a row per layer, the total and the input shape."""
    result = measure(ConvNet(), torch.randn(1, 3, 6, 6), latency=False)
    text = render(result.table())
    for word in ("conv", "bn", "grouped", "fc", "total", "1×3×6×6", "latency not measured"):
        assert word in text


def test_compare_a_model_with_a_physically_narrower_copy() -> None:
    """Pruning conv1 from 8 to 5 channels gives exactly the hand-computed parameter and FLOP ratios."""
    wide, narrow = TwoConvs(8), TwoConvs(5)
    result = compare(wide, narrow, torch.randn(1, 3, 8, 8), latency=False)

    def params(width: int) -> int:
        return (3 * width * 9 + width) + 2 * width + (width * 4 * 9 + 4)

    def macs(width: int) -> int:
        return 8 * 8 * (width * 3 * 9 + 4 * width * 9)

    assert isinstance(result, Comparison)
    assert (result.original.params, result.pruned.params) == (params(8), params(5))
    assert (result.original.macs, result.pruned.macs) == (macs(8), macs(5))
    assert result.params_ratio == pytest.approx(params(5) / params(8))
    assert result.params_ratio < 1
    assert result.flops_ratio == pytest.approx(5 / 8)
    assert result.speedup is None


def test_compare_with_latency_reports_a_speedup() -> None:
    """With latency on, speedup is original median / pruned median."""
    result = compare(TwoConvs(8), TwoConvs(5), torch.randn(1, 3, 8, 8), threads=1, min_run_time=0.02)
    assert result.original.latency is not None and result.pruned.latency is not None
    expected = result.original.latency.median_ms / result.pruned.latency.median_ms
    assert result.speedup == pytest.approx(expected)
    assert json.loads(json.dumps(result.to_dict()))["speedup"] == pytest.approx(expected)
    assert "speed-up" in render(result.table())


def test_comparison_tables_render_the_rows_and_the_per_layer_change() -> None:
    """The summary table has params/MACs/FLOPs/latency rows; the layer table shows 8 → 5 channels."""
    result = compare(TwoConvs(8), TwoConvs(5), torch.randn(1, 3, 8, 8), latency=False)

    summary = render(result.table())
    for word in ("params", "MACs", "FLOPs", "latency", "original", "pruned", "change", "-37.5%"):
        assert word in summary

    layers = render(result.layer_table())
    assert "conv1" in layers and "8 → 5" in layers and "bn1" in layers


def test_layer_table_shows_layers_missing_on_one_side() -> None:
    """A layer only the original has is shown with a dash on the pruned side."""
    original = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    pruned = nn.Sequential(nn.Linear(4, 2))
    result = compare(original, pruned, torch.randn(1, 4), latency=False)
    assert "2 → —" in render(result.layer_table())


def test_measurement_is_frozen() -> None:
    """Measurements are values: assigning a field fails."""
    result = measure(nn.Linear(4, 4), torch.randn(1, 4), latency=False)
    assert isinstance(result, Measurement)
    with pytest.raises(AttributeError):
        result.params = 0  # type: ignore[misc]


class _CrossAttention(nn.Module):
    def __init__(self, batch_first: bool, embed: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=batch_first)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.attn(x, context, context, need_weights=False)[0]


class _Sdpa(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return nn.functional.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("batch_first", [True, False], ids=["fused-inference-kernel", "composite-path"])
def test_multihead_attention_flops_count_projections_and_both_attention_products(batch_first: bool) -> None:
    """nn.MultiheadAttention over 5 queries and 7 keys/values of width 8, batch 2: the q, k, v
    and output projections plus q·kᵀ and weights·v. batch_first takes the fused inference
    kernel (which torch's counter alone counts as zero), sequence-first the composite path
    (linear layers and the CPU attention kernel); both must count the same."""
    b, lq, lk, e = 2, 5, 7, 8
    x, context = torch.randn(b, lq, e), torch.randn(b, lk, e)
    if not batch_first:
        x, context = x.transpose(0, 1), context.transpose(0, 1)
    result = measure(_CrossAttention(batch_first), (x, context), latency=False)
    assert result.macs == b * ((lq + 2 * lk) * e * e + 2 * lq * lk * e + lq * e * e)


def test_scaled_dot_product_attention_on_the_cpu_is_counted() -> None:
    """F.scaled_dot_product_attention with q [2, 3, 5, 4] and k, v [2, 3, 6, 4] (shapes the
    CPU's fused kernel takes; torch's counter has no formula for it): 2·3·5·6·(4 + 4) MACs.
    With v of another width (the composite path), 2·3·5·6·(4 + 7)."""
    fused = (torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4))
    assert measure(_Sdpa(), fused, latency=False).macs == 2 * 3 * 5 * 6 * (4 + 4)
    composite = (torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 7))
    assert measure(_Sdpa(), composite, latency=False).macs == 2 * 3 * 5 * 6 * (4 + 7)
