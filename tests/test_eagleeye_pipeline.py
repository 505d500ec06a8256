"""The EagleEye network-slimming pipeline, end to end on quick SynthFaces (examples/eagleeye/pipeline.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.eagleeye.__main__ import main
from examples.eagleeye.augment import EvalResize
from examples.eagleeye.detect import predict
from examples.eagleeye.evaluate import box_iou
from examples.eagleeye.model import EagleEye
from examples.eagleeye.pipeline import MODELS, load_pruned
from examples.eagleeye.train import TrainConfig
from examples.eagleeye.wider import WiderFaceDataset, xywh_to_xyxy
from slimprune.measure import count_params

torch.set_num_threads(1)

_FIGURES = ("gamma_hist.png", "channels.png", "pr_curves.png", "ap_vs_pruned.png")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A detection counts as a found face when it scores at least this and overlaps a
# ground-truth face by IoU >= 0.5: well above the 0.01 prior every anchor starts at.
_FOUND_SCORE = 0.3


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`pipeline --quick` once, into a fresh directory with freshly generated data."""
    root = tmp_path_factory.mktemp("pipeline")
    out, data = root / "out", root / "data"
    start = time.perf_counter()
    status = main(["pipeline", "--quick", "--out", str(out), "--data", str(data), "--no-progress", "--round-to", "4"])
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text()) if status == 0 else {}
    return {"status": status, "out": out, "data": data, "report": report, "seconds": seconds}


def test_quick_pipeline_exits_zero(run: dict[str, Any]) -> None:
    """The quick pipeline succeeds. (How long it takes is not a test: a loaded CI machine
    took 130-198 s where a quiet one takes 40-90 s; docs/eagleeye.md quotes the time.)"""
    assert run["status"] == 0


def test_writes_the_report_figures_and_models(run: dict[str, Any]) -> None:
    """report.json/.md, the four PNGs, the plan and both model files are written."""
    out: Path = run["out"]
    for name in ("report.json", "report.md", "plan.json", "pruned.safetensors", "finetuned.safetensors"):
        assert (out / name).is_file(), name
    for name in _FIGURES:
        content = (out / name).read_bytes()
        assert content.startswith(_PNG_MAGIC) and len(content) > 10_000, name
    markdown = (out / "report.md").read_text()
    assert "56.3%" in markdown and "PruneFaceDet" in markdown
    assert all(f"| {run['report']['models'][m]['label']} |" in markdown for m in MODELS)


def test_report_has_every_measurement_of_the_four_models(run: dict[str, Any]) -> None:
    """Each model has params, FLOPs, a positive latency and finite AP on easy/medium/hard."""
    models = run["report"]["models"]
    assert list(models) == list(MODELS)
    for entry in models.values():
        assert entry["params"] > 0 and entry["flops"] > 0 and entry["latency_ms"] > 0
        assert all(0 <= entry["ap"][s] <= 1 for s in ("easy", "medium", "hard"))
    assert run["report"]["sweep"], "the prune-ratio sweep is empty"
    ort = run["report"]["latency_onnxruntime"]["ms"]  # onnxruntime is part of the test install
    assert list(ort) == list(MODELS) and all(v > 0 for v in ort.values())


def test_pruned_model_is_smaller_in_parameters_and_flops(run: dict[str, Any]) -> None:
    """Pruned and fine-tuned models have fewer parameters and FLOPs; the paper's 56.3% is reached."""
    models = run["report"]["models"]
    base = models["baseline"]
    for name in ("pruned", "finetuned"):
        assert models[name]["params"] < base["params"]
        assert models[name]["flops"] < base["flops"]
    assert models["finetuned"]["params_reduction"] >= 0.563


def test_round_to_flag_leaves_every_narrowed_width_a_multiple(run: dict[str, Any]) -> None:
    """--round-to 4 reaches the plan: the report records it and every narrowed layer keeps a multiple of 4."""
    assert run["report"]["config"]["round_to"] == run["report"]["pruning"]["round_to"] == 4
    model = load_pruned(run["out"] / "finetuned.safetensors")
    full = {n: m.num_features for n, m in EagleEye().named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    narrowed = {
        n: m.num_features
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d) and m.num_features != full[n]
    }
    assert narrowed and all(width % 4 == 0 for width in narrowed.values()), narrowed


def test_saved_finetuned_model_loads_with_the_reported_size(run: dict[str, Any]) -> None:
    """finetuned.safetensors rebuilds a model with the parameter count in the report."""
    model = load_pruned(run["out"] / "finetuned.safetensors")
    assert count_params(model) == run["report"]["models"]["finetuned"]["params"]


def test_finetuned_pruned_model_still_detects_faces(run: dict[str, Any]) -> None:
    """On the val split the loaded pruned model finds some face: score >= 0.3 and IoU >= 0.5."""
    model = load_pruned(run["out"] / "finetuned.safetensors")
    dataset = WiderFaceDataset(run["data"], "val", transform=EvalResize(TrainConfig.quick().eval_size))
    predictions = predict(model, dataset, threads=1)
    found = 0
    for record in dataset.records:
        boxes = predictions[record.name]
        confident = boxes[boxes[:, 4] >= _FOUND_SCORE, :4]
        faces = xywh_to_xyxy(record.boxes[record.valid()])
        if len(confident) and len(faces):
            found += int((box_iou(faces, confident) >= 0.5).any(axis=1).sum())
    assert found > 0, "no val face was found with score >= 0.3 by the pruned, fine-tuned model"
    assert run["report"]["models"]["finetuned"]["ap"]["easy"] > 0
