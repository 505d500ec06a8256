"""The EagleEye report's onnxruntime column: every model exported and timed, or a stated reason."""

from __future__ import annotations

import copy

import torch

import slimprune
from examples.eagleeye.latency import time_onnxruntime
from examples.eagleeye.model import EagleEye
from examples.eagleeye.report import onnxruntime_markdown


def test_every_model_is_timed_by_onnxruntime_and_the_report_gives_speedups_against_the_baseline() -> None:
    torch.manual_seed(0)
    baseline = EagleEye().eval()
    x = torch.randn(1, 3, 64, 64)
    small = slimprune.prune(copy.deepcopy(baseline), 0.5, example_inputs=x)
    models = {"baseline": baseline, "finetuned": small}
    ort = time_onnxruntime(models, 64, threads=1, rounds=2, min_run_time=0.2)
    assert set(ort["ms"]) == {"baseline", "finetuned"} and all(v > 0 for v in ort["ms"].values())
    lines = onnxruntime_markdown(ort)
    rows = [line for line in lines if line.startswith("| ") and "ms)" not in line and "---" not in line]
    assert len(rows) == 2
    speedup = float(rows[1].split("|")[3].strip().rstrip("x"))
    assert speedup == round(ort["ms"]["baseline"] / ort["ms"]["finetuned"], 2)


def test_without_onnxruntime_the_report_says_why_instead_of_failing(monkeypatch) -> None:
    from slimprune.latency import BackendError

    def missing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise BackendError("the onnxruntime latency backend needs onnxruntime, which is not installed here")

    monkeypatch.setattr("slimprune.latency.onnxruntime_session", missing)
    ort = time_onnxruntime({"baseline": EagleEye().eval()}, 64, threads=1, rounds=1)
    assert "not installed" in ort["skipped"]
    assert any("not measured" in line and "not installed" in line for line in onnxruntime_markdown(ort))
