"""Latency as a pruning target: cost tables, their cache, the budgeted solver, one real profile."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced
from slimprune._latency_solver import latency_floor, next_width, select_latency
from slimprune.errors import InfeasiblePlanError
from slimprune.latency import (BackendError, CostTable, LatencyDeviceError, LayerCost, OpCost, StaleCacheError, TableKey, check_device,
                               grid_widths, load_table, onnxruntime_session, profile, refine, save_table, stair_width,
                               table_key)

KEY = TableKey("cpu", torch.__version__, 1, "abc", 8, 5)


def _layer(name: str, out_g: int | None, in_g: int | None, c_out: int, c_in: int, ms: float, stair: int = 8) -> LayerCost:
    ow = grid_widths(c_out, stair, 4) if out_g is not None else ()
    iw = grid_widths(c_in, stair, 4) if in_g is not None else ()
    return LayerCost(name, out_g, in_g, c_out, c_in, ms, ow, tuple(ms * w / c_out for w in ow),
                     iw, tuple(ms * w / c_in for w in iw))


def _chain_table(widths: list[int], ms: list[float], rest: float) -> CostTable:
    """Layer i maps group i-1 (or the input) to group i."""
    layers = [_layer(f"l{i}", i, i - 1 if i else None, w, widths[i - 1] if i else 3, t)
              for i, (w, t) in enumerate(zip(widths, ms))]
    return CostTable(KEY, tuple(layers), rest, 8, {i: w for i, w in enumerate(widths)})


def _groups(widths: list[int]) -> tuple[list[np.ndarray], int]:
    units, start = [], 0
    for w in widths:
        units.append(np.arange(start, start + w))
        start += w
    return units, start


def test_stair_width_rounds_up_to_the_kernel_block_and_never_past_the_layer() -> None:
    assert stair_width(17, 8, 64) == 24
    assert stair_width(16, 8, 64) == 16
    assert stair_width(60, 8, 62) == 62
    assert stair_width(0, 8, 64) == 0


def test_next_width_steps_to_the_staircase_so_17_channels_become_16() -> None:
    assert next_width(17, 1, 8, 1) == 16
    assert next_width(16, 1, 8, 1) == 8
    assert next_width(8, 3, 8, 1) == 3
    assert next_width(3, 3, 8, 1) is None
    assert next_width(64, 1, 8, 3) == 48  # multiples of lcm(8, 3) = 24


def test_a_layer_costs_the_same_at_17_and_24_channels_and_less_at_16() -> None:
    layer = _layer("c", 0, None, 64, 3, 1.0)
    assert layer.ms(17, 3, 8) == pytest.approx(layer.ms(24, 3, 8))
    assert layer.ms(16, 3, 8) < layer.ms(17, 3, 8)
    assert layer.ms(64, 3, 8) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 70), min_size=1, max_size=5), st.data())
def test_solver_meets_any_budget_the_floor_allows_with_a_valid_removal(widths: list[int], data: st.DataObject) -> None:
    ms = data.draw(st.lists(st.floats(0.01, 5.0), min_size=len(widths), max_size=len(widths)))
    rest = data.draw(st.floats(0.0, 2.0))
    caps = [data.draw(st.integers(0, w - 1)) for w in widths]
    round_to = data.draw(st.sampled_from([1, 2, 8]))
    table = _chain_table(widths, ms, rest)
    units, n = _groups(widths)
    scores = np.asarray(data.draw(st.lists(st.floats(0, 10), min_size=n, max_size=n)))
    floor, _ = latency_floor(table, dict(enumerate(widths)), dict(enumerate(caps)), round_to)
    full = table.full()
    budget = floor + data.draw(st.floats(0.0, 1.0)) * (full - floor)
    removed = select_latency(units, list(range(len(widths))), scores, caps, table, budget, round_to=round_to)
    kept = {g: int((~removed[u]).sum()) for g, u in enumerate(units)}
    assert table.predict(kept) <= budget * (1 + 1e-9) + 1e-12
    for g, u in enumerate(units):
        lost = widths[g] - kept[g]
        assert lost <= caps[g]
        assert kept[g] >= 1
        assert kept[g] % round_to == 0 or kept[g] == widths[g] or lost == caps[g] or kept[g] == widths[g] - caps[g] \
            or kept[g] == -(-(widths[g] - caps[g]) // round_to) * round_to
        # Within a group the removed units are its lowest-scoring ones.
        if 0 < lost < widths[g]:
            assert scores[u][removed[u]].max() <= scores[u][~removed[u]].min()


def test_solver_keeps_the_cheaper_staircase_width_not_one_channel_above_it() -> None:
    table = _chain_table([64], [1.0], 0.0)
    units, n = _groups([64])
    removed = select_latency(units, [0], np.arange(n, dtype=float), [63], table, 0.3)
    kept = int((~removed).sum())
    assert kept % 8 == 0 and table.predict({0: kept}) <= 0.3


def test_budget_below_the_floor_raises_naming_the_floor_and_the_layers_that_set_it() -> None:
    table = CostTable(KEY, (_layer("stem", None, None, 32, 3, 2.0), _layer("body", 0, None, 64, 32, 1.0)), 0.5, 8, {0: 64})
    units, n = _groups([64])
    with pytest.raises(InfeasiblePlanError, match=r"floor of 2\.625 ms.*stem \(2 ms\)") as e:
        select_latency(units, [0], np.ones(n), [63], table, 1.0)
    assert "2.5 ms are in no prunable channel group" in str(e.value)  # rest 0.5 + the stem 2.0


def test_cost_table_round_trips_through_its_cache_file_and_refuses_a_stale_one(tmp_path) -> None:
    table = _chain_table([16, 32], [1.0, 2.0], 0.25)
    path = tmp_path / "table.json"
    save_table(table, path)
    again = load_table(path, KEY)
    assert again == table and again.predict({0: 8, 1: 16}) == pytest.approx(table.predict({0: 8, 1: 16}))
    with pytest.raises(StaleCacheError, match=r"threads 1 there, 2 now"):
        load_table(path, dataclasses.replace(KEY, threads=2))
    with pytest.raises(StaleCacheError, match=r"torch '0\.1' there"):
        other = dataclasses.replace(table, key=dataclasses.replace(KEY, torch="0.1"))
        save_table(other, path)
        load_table(path, KEY)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(), nn.Conv2d(48, 10, 1)).eval()


def test_table_key_follows_device_threads_and_input_shapes() -> None:
    m = _net()
    a = table_key(m, torch.randn(1, 3, 16, 16), "cpu", 1)
    assert a == table_key(m, torch.randn(1, 3, 16, 16), "cpu", 1)
    assert a != table_key(m, torch.randn(2, 3, 16, 16), "cpu", 1)
    assert a != table_key(m, torch.randn(1, 3, 16, 16), "cpu", 2)
    assert a.torch == torch.__version__ and a.device == "cpu"


def test_unavailable_device_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        assert check_device("cuda").type == "cuda"
    else:
        with pytest.raises(LatencyDeviceError, match="no CUDA device"):
            check_device("cuda")
    with pytest.raises(LatencyDeviceError, match="'cpu' or 'cuda'"):
        check_device("meta")
    with pytest.raises(LatencyDeviceError):
        slimprune.plan(_net(), 0.5, target="latency", example_inputs=torch.randn(1, 3, 8, 8), device="nonsense")


def test_real_profile_of_a_small_net_fills_a_usable_table_and_plans_within_budget(tmp_path) -> None:
    torch.set_num_threads(1)
    m, x = _net(), torch.randn(1, 3, 16, 16)
    graph = slimprune.analyze(m, example_inputs=x).graph
    cache = tmp_path / "t.json"
    table = profile(m, x, graph, threads=1, points=3, min_run_time=0.01, cache=cache, progress=False)
    assert [l.module for l in table.layers] == ["0", "3", "6"]
    assert all(l.full_ms > 0 for l in table.layers)
    assert table.layers[0].out_group is not None and table.layers[1].in_group == table.layers[0].out_group
    assert all(len(l.out_widths) == len(l.out_ms) >= 2 for l in table.layers[:2])
    # Monotone enough to use: narrowing every group never predicts a slower model.
    half = {g.id: len(g) // 2 for g in graph.groups}
    assert table.predict(half) <= table.full()
    assert load_table(cache, table.key) == table  # written, and reused under the same key
    before = m.state_dict()
    widths = {g.id: len(g) for g in graph.groups}
    floor, _ = latency_floor(table, widths, {g: w - 1 for g, w in widths.items()}, table.stair)
    ratio = 0.5 * (1.0 - floor / table.full())  # halfway to the floor: feasible whatever the timings were
    p = slimprune.plan(m, ratio, target="latency", example_inputs=x, latency_table=table, round_to="auto")
    small = slimprune.apply(m, p)
    kept = {0: small[0].out_channels, 1: small[3].out_channels}
    assert table.predict(kept) <= (1.0 - ratio) * table.full() * (1 + 1e-9)
    assert all(k % 8 == 0 or k == widths[g] for g, k in kept.items())  # round_to="auto": staircase widths
    assert any("predicted latency" in n for n in p.notes)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_round_to_auto_and_latency_tables_are_refused_where_they_mean_nothing() -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(slimprune.InvalidArgumentError, match="round_to='auto'.*target='latency'"):
        slimprune.plan(_net(), 0.5, example_inputs=x, round_to="auto")
    with pytest.raises(slimprune.InvalidArgumentError, match="latency_table must be a slimprune.latency.CostTable"):
        slimprune.plan(_net(), 0.5, target="latency", example_inputs=x, latency_table={"not": "a table"})


def test_onnxruntime_backend_times_a_tiny_conv_net_and_computes_what_torch_computes() -> None:
    torch.set_num_threads(1)
    m, x = _net().eval(), torch.randn(1, 3, 16, 16)
    sess, feed = onnxruntime_session(m, x, threads=1)
    (out,) = sess.run(None, feed)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), m(x), rtol=1e-4, atol=1e-5)
    result = slimprune.measure.measure(m, x, backend="onnxruntime", threads=1, min_run_time=0.05)
    assert result.latency is not None and result.latency.backend == "onnxruntime" and result.latency.median_ms > 0
    assert result.latency.threads == 1 and result.latency.repeats >= 5
    assert "latency (onnxruntime)" in result.table().caption
    both = slimprune.measure.compare(m, m, x, backend="onnxruntime", threads=1, min_run_time=0.05)
    assert both.speedup is not None and both.speedup > 0 and "onnxruntime" in both.table().caption
    assert slimprune.measure.measure(m, x, min_run_time=0.05).latency.backend == "torch"


def test_onnxruntime_backend_names_the_operator_it_cannot_export_and_refuses_what_it_cannot_run(monkeypatch) -> None:
    class Histogram(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.histc(x)

    with pytest.raises(BackendError, match="aten::histc.*backend='torch'"):
        slimprune.measure.measure(Histogram(), torch.randn(8), backend="onnxruntime", min_run_time=0.05)
    with pytest.raises(slimprune.InvalidArgumentError, match="backend='tvm'.*'torch', 'onnxruntime'"):
        slimprune.measure.measure(_net(), torch.randn(1, 3, 8, 8), backend="tvm")
    with pytest.raises(slimprune.InvalidArgumentError, match="CPU only.*device='cpu'"):
        slimprune.measure.measure(_net(), torch.randn(1, 3, 8, 8), backend="onnxruntime", device="cuda")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(BackendError, match=r"needs onnxruntime.*slimprune\[onnx\]"):
        slimprune.measure.measure(_net(), torch.randn(1, 3, 8, 8), backend="onnxruntime")


def test_cuda_latency_without_cuda_names_the_device_and_the_fix() -> None:
    x = torch.randn(1, 3, 8, 8)
    if torch.cuda.is_available():  # the same calls time with CUDA events there
        assert check_device("cuda:0").type == "cuda"
        return
    with pytest.raises(LatencyDeviceError, match=r"device='cuda:0'.*no CUDA device.*device='cpu'"):
        slimprune.plan(_net(), 0.3, target="latency", example_inputs=x, device="cuda:0")
    with pytest.raises(LatencyDeviceError, match=r"device='cuda'.*no CUDA device.*device='cpu'"):
        profile(_net(), x, slimprune.analyze(_net(), example_inputs=x).graph, device="cuda")
    with pytest.raises(slimprune.InvalidArgumentError, match=r"device='cuda'.*CUDA is not available.*device='cpu'"):
        slimprune.measure.measure(_net(), x, device="cuda")


def test_latency_plan_of_an_analysis_equals_the_plan_of_the_model_and_prints_its_prediction() -> None:
    torch.set_num_threads(1)
    m, x = _net(), torch.randn(1, 3, 16, 16)
    analysis = slimprune.analyze(m, example_inputs=x)
    table = profile(m, x, analysis.graph, threads=1, points=3, min_run_time=0.01, progress=False)
    widths = {g.id: len(g) for g in analysis.graph.groups}
    floor, _ = latency_floor(table, widths, {g: w - 1 for g, w in widths.items()}, table.stair)
    ratio = 0.5 * (1.0 - floor / table.full())
    from_analysis = slimprune.plan(analysis, ratio, target="latency", latency_table=table)
    from_model = slimprune.plan(m, ratio, target="latency", example_inputs=x, latency_table=table)
    assert from_analysis.slices == from_model.slices
    p = from_analysis
    assert p.latency_before_ms == pytest.approx(table.full())
    assert p.latency_after_ms is not None and p.latency_after_ms <= (1.0 - ratio) * table.full() * (1 + 1e-9)
    assert f"latency:  {table.full():.3f} ms -> {p.latency_after_ms:.3f} ms" in str(p)
    again = slimprune.PruningPlan.from_json(p.to_json())
    assert (again.latency_before_ms, again.latency_after_ms) == (p.latency_before_ms, p.latency_after_ms)
    assert slimprune.plan(m, 0.3, example_inputs=x).latency_before_ms is None  # only latency plans predict it
    assert_pruned_equals_silenced(m, p, x)  # exact: the pruned net computes what the silenced original computes


def test_an_op_costs_its_call_overhead_plus_its_kept_fraction_of_the_rest() -> None:
    op = OpCost("relu", 1.0, groups=(0, 1), counts=(32, 32), fixed=0)
    widths = {0: 32, 1: 64}
    assert op.ms({}, widths, 0.1) == pytest.approx(1.0)
    # group 0 halved: a quarter of the op's channels gone; group 1's 32 channels lie in a group of 64
    assert op.ms({0: 16}, widths, 0.1) == pytest.approx(0.1 + 0.9 * 0.75)
    assert op.ms({0: 0, 1: 0}, widths, 0.1) == pytest.approx(0.1)
    assert OpCost("size", 0.05).ms({0: 1}, widths, 0.1) == pytest.approx(0.05)  # no channels: fixed


def test_the_solver_counts_what_narrowing_saves_in_the_ops_on_a_group() -> None:
    # Group 0's only layer is cheap; an op on its channels is what costs: the solver must see it.
    layer = _layer("conv", 0, None, 64, 3, 0.1)
    op = OpCost("act", 2.0, groups=(0,), counts=(64,))
    table = CostTable(KEY, (layer,), 0.0, 8, {0: 64}, (op,), 0.0)
    units, n = _groups([64])
    removed = select_latency(units, [0], np.arange(n, dtype=float), [63], table, 0.5 * table.full())
    kept = int((~removed).sum())
    assert table.predict({0: kept}) <= 0.5 * table.full() and kept <= 40
    assert table.fixed_ms() == 0.0


def test_a_layer_narrowed_on_both_sides_costs_at_least_its_floor() -> None:
    lc = dataclasses.replace(_layer("conv", 0, 1, 64, 64, 1.0), floor_ms=0.1)
    assert lc.ms(64, 64, 8) == pytest.approx(1.0)
    assert lc.ms(32, 64, 8) == pytest.approx(0.5)  # one side full: the measured curve
    assert lc.ms(64, 16, 8) == pytest.approx(0.25)
    assert lc.ms(8, 8, 8) >= 0.1 and lc.ms(32, 32, 8) == pytest.approx(0.1 + 0.4 * 0.4 / 0.9)
    assert lc.ms(32, 32, 8) > 0.5 * 0.5  # the product of the two curves would say 0.25
    assert dataclasses.replace(lc, floor_ms=0.0).ms(32, 32, 8) == pytest.approx(0.25)  # unmeasured: the product


def test_profile_times_the_ops_on_their_groups_and_leaves_out_folded_batchnorms(tmp_path) -> None:
    torch.set_num_threads(1)
    m, x = _net(), torch.randn(1, 3, 16, 16)
    graph = slimprune.analyze(m, example_inputs=x).graph
    table = profile(m, x, graph, threads=1, points=3, min_run_time=0.01, progress=False)
    by_module = {s.module: graph.unit_to_group[s.units[0]] for s in graph.slices if s.param == "weight" and s.dim == 0}
    kinds = {n.name: type(graph.gm.get_submodule(n.target)).__name__ for n in graph.gm.graph.nodes if n.op == "call_module"}
    assert sorted(kinds[o.node] for o in table.ops) == ["ReLU", "ReLU"]  # the BatchNorms fold into the convs
    relus = [o for o in table.ops if o.groups]
    assert {o.groups for o in relus} == {(int(by_module["0"]),), (int(by_module["3"]),)}
    assert all(o.full_ms > 0 and o.fixed == 0 for o in table.ops)
    assert table.op_overhead_ms > 0 and table.scale > 0 and table.rest_ms >= 0
    assert table.full() == pytest.approx(table.rest_ms + table.scale * (
        sum(l.full_ms for l in table.layers) + sum(o.full_ms for o in table.ops)))
    assert all(l.floor_ms > 0 for l in table.layers if l.out_widths and l.in_widths)
    path = tmp_path / "t.json"
    save_table(table, path)
    assert load_table(path, table.key) == table


def test_measure_times_the_deployed_form_a_latency_plan_predicts_and_leaves_the_model_alone() -> None:
    m, x = _net(), torch.randn(1, 3, 16, 16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    result = slimprune.measure.measure(m, x, min_run_time=0.05, threads=1, deployed=True)
    assert result.latency is not None and result.latency.deployed and result.latency.median_ms > 0
    assert "latency (torch, deployed form)" in result.table().caption
    assert not slimprune.measure.measure(m, x, min_run_time=0.05, threads=1).latency.deployed
    assert isinstance(m[1], nn.BatchNorm2d) and m[0].weight.is_contiguous()  # not folded, not channels-last
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_refine_times_each_layer_at_the_chosen_widths_and_the_prediction_uses_those_times() -> None:
    torch.set_num_threads(1)
    m, x = _net(), torch.randn(1, 3, 16, 16)
    graph = slimprune.analyze(m, example_inputs=x).graph
    table = profile(m, x, graph, threads=1, points=2, min_run_time=0.01, progress=False)
    kept = {g.id: 13 for g in graph.groups}  # off every grid point
    fine = refine(table, m, x, kept, min_run_time=0.01)
    assert [l.module for l in fine.layers] == [l.module for l in table.layers]
    for before, after in zip(table.layers, fine.layers):
        ko = 13 if before.out_group is not None else before.out_width
        ki = 13 if before.in_group is not None else before.in_width
        assert len(after.points) == 1 and after.point(ko, ki) is not None and after.point(ko, ki) > 0
        assert after.ms(ko, ki, fine.stair) == after.point(ko, ki)
        assert after.ms(before.out_width, before.in_width, fine.stair) == before.full_ms  # full widths as profiled
    assert refine(fine, m, x, kept, min_run_time=0.01) == fine  # nothing new to time
    assert fine.full() == pytest.approx(table.full())


def test_a_latency_plan_that_profiles_its_own_table_is_exact_and_carries_measured_latencies() -> None:
    torch.set_num_threads(1)
    m, x = _net(), torch.randn(1, 3, 16, 16)
    p = slimprune.plan(m, 0.2, target="latency", example_inputs=x)
    assert p.latency_before_ms is not None and p.latency_after_ms is not None
    assert 0 < p.latency_after_ms and 0 < p.latency_before_ms
    assert "measured latency" in p.notes[-1] and "the cost table predicted" in p.notes[-1]
    assert_pruned_equals_silenced(m, p, x)


@dataclasses.dataclass(frozen=True)
class _FakePlan:
    latency_before_ms: float
    latency_after_ms: float
    notes: tuple[str, ...] = ("predicted latency ...",)


class _FakeDevice:
    """Models whose forward records their true kept fraction, and a ``time_ms`` that times
    the last model run by ``ms(kept)``; ``install`` patches slimprune.latency to use them."""

    def __init__(self, ms: Callable[[float], float]) -> None:
        self.ran: list[float] = []
        self.ms = ms

    def model(self, kept: float) -> nn.Module:
        device = self

        class Timed(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                device.ran.append(kept)
                return x
        return Timed()

    def install(self, monkeypatch) -> None:
        from slimprune import latency as lat

        def fake_time(fn, dev, threads, min_run_time):
            fn()
            return self.ms(self.ran[-1])

        monkeypatch.setattr(lat, "deployed", lambda m, dev: m)
        monkeypatch.setattr(lat, "time_ms", fake_time)

    def calibrated(self, plan_graph, apply_fn):
        from slimprune import _latency_calibration as cal

        analysis = type("A", (), {"model": self.model(1.0), "example_inputs": torch.zeros(1)})()
        options = type("O", (), {"device": "cpu", "ratio": 0.5})()
        return cal.calibrated(analysis, options, plan_graph, apply_fn)


def test_calibration_rescales_the_budget_until_the_measured_fraction_is_the_one_asked_for(monkeypatch) -> None:
    """A fake device that runs every candidate at 0.7x what the table predicts: the second
    candidate, planned with the budget scaled by measured / predicted, lands on the goal."""
    device = _FakeDevice(lambda kept: 4.0 * kept)
    device.install(monkeypatch)
    calls: list[float] = []

    def plan_graph(analysis, options, state):
        calls.append(state.calibration)
        return _FakePlan(10.0, 10.0 * min(1.0, 0.5 / state.calibration)), []

    def apply_fn(model, plan):
        return device.model(0.7 * plan.latency_after_ms / plan.latency_before_ms)

    p, _ = device.calibrated(plan_graph, apply_fn)
    assert calls == [1.0, pytest.approx(0.7)]  # the second round asks the table for 0.5 / 0.7
    assert p.latency_before_ms == pytest.approx(4.0) and p.latency_after_ms == pytest.approx(2.0)
    assert "measured latency 4.000 ms -> 2.000 ms (50.0% kept" in p.notes[-1] and "2 candidate(s)" in p.notes[-1]


def test_calibration_times_the_candidate_beside_the_original_so_a_load_swing_cancels(monkeypatch) -> None:
    """A fake device whose load triples and halves between timing pairs (the same within a pair):
    the measured fraction is still the candidate's true 0.5, so the first candidate is taken."""
    loads = iter([1.0, 1.0, 3.0, 3.0, 0.5, 0.5, 2.0, 2.0] * 4)  # one load per (original, candidate) pair
    device = _FakeDevice(lambda kept: 4.0 * kept * next(loads))
    device.install(monkeypatch)
    calls: list[float] = []

    def plan_graph(analysis, options, state):
        calls.append(state.calibration)
        return _FakePlan(10.0, 5.0), []

    p, _ = device.calibrated(plan_graph, lambda model, plan: device.model(0.5))
    assert calls == [1.0]  # on target at once: no re-plan although the load moved 6x
    assert p.latency_after_ms / p.latency_before_ms == pytest.approx(0.5)
