"""examples/yolo/slimming.py --quick: sparsity training with Ultralytics' trainer, threshold
pruning, fine-tuning and Ultralytics' val, end to end and offline (sockets refused)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
pytest.importorskip("ultralytics")  # the optional `yolo` extra (included in `test`)

from examples.yolo import slimming  # noqa: E402


def test_quick_slimming_run_prunes_finetunes_and_reports_every_stage(tmp_path: Path, monkeypatch) -> None:
    tried: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        tried.append(args[:2])
        raise OSError("test_yolo_example: network access refused")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    result = slimming.run(slimming.QUICK, tmp_path)
    assert not tried, f"the example tried the network: {tried}"
    assert json.loads((tmp_path / "result.json").read_text()) == result
    sparse, pruned, tuned = result["sparse"], result["pruned"], result["finetuned"]
    assert result["channels_removed"] > 0, "the sparsity step must push some γ below the quick threshold"
    assert pruned["params"] < sparse["params"] and pruned["flops"] < sparse["flops"]
    assert tuned["params"] <= pruned["params"]  # fine-tuning trains the pruned model (fuse may fold BN)
    for stage in (sparse, pruned, tuned):
        assert 0.0 <= stage["mAP50-95"] <= stage["mAP50"] <= 1.0 and stage["latency_ms"] > 0
    # the interleaved re-timing reads the run's checkpoints, rebuilds the pruned model from the
    # sparse one with the run's threshold (same parameter count) and times every stage
    from examples.yolo import timing

    models = timing.stage_models(tmp_path, None)
    assert list(models) == ["sparse", "pruned", "finetuned"]
    assert sum(p.numel() for p in models["pruned"].parameters()) == pruned["params"]
    again = timing.run(tmp_path, None, rounds=2, min_run_time=0.02)
    assert json.loads((tmp_path / "timing.json").read_text()) == again
    assert {n: t["rounds"] for n, t in again["latency"].items()} == {"sparse": 2, "pruned": 2, "finetuned": 2}
    assert all(0 < t["min_ms"] <= t["median_ms"] <= t["max_ms"] for t in again["latency"].values())


def test_interleaved_timing_rotates_the_order_each_round_and_times_every_call(monkeypatch) -> None:
    """Each round times every call once, starting one further along; a call that sleeps 3 ms
    more reads at least 3 ms slower."""
    import time

    from examples.yolo import timing

    order: list[str] = []

    def fake_time_ms(fn, device, threads, min_run_time) -> float:  # records the order, then times for real
        if abs(min_run_time - 0.1) < 1e-9:  # the warm-up call
            return 0.0
        order.append(fn.__name__)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def fast() -> None:
        pass

    def slow() -> None:
        time.sleep(0.003)

    def third() -> None:
        pass

    monkeypatch.setattr(timing, "time_ms", fake_time_ms)
    result = timing.interleaved({"a": fast, "b": slow, "c": third}, rounds=3, min_run_time=0.01)
    assert order == ["fast", "slow", "third", "slow", "third", "fast", "third", "fast", "slow"]
    assert all(r["rounds"] == 3 for r in result.values())
    assert result["b"]["min_ms"] >= 3.0 > result["a"]["median_ms"]
