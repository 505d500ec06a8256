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
