"""Pruned Ultralytics YOLO models work where Ultralytics puts them (random weights, no network).

Models are built from the yaml files the package ships; nothing is downloaded: YOLO_OFFLINE
is set before Ultralytics is imported and its settings sync is off (docs/ultralytics.md).
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")
ultralytics = pytest.importorskip("ultralytics")  # the optional `yolo` extra (included in `test`)
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import SETTINGS  # noqa: E402

import slimprune  # noqa: E402
from slimprune.measure import _count_flops  # noqa: E402

torch.set_num_threads(1)
SETTINGS.update(sync=False)
IMGSZ = 160


def build() -> DetectionModel:
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    for branch in model.model[-1].cv3:  # Detect's class prior (~1e-5) leaves random weights no box
        nn.init.zeros_(branch[-1].bias)
    return model


@pytest.fixture(scope="module")
def yolov8n() -> tuple[nn.Module, nn.Module, slimprune.PruningPlan, torch.Tensor]:
    model = build()
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
        small = slimprune.apply(model, plan)
    return model, small, plan, x


def head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)[0]


def test_pruned_yolov8n_equals_its_silenced_original(yolov8n) -> None:
    model, small, plan, x = yolov8n
    assert plan.params_after < 0.6 * plan.params_before
    torch.testing.assert_close(head(small, x), head(slimprune.silence(model, plan), x), rtol=1e-4, atol=1e-3)


def test_pruned_yolov8n_modules_keep_class_and_ultralytics_attributes(yolov8n) -> None:
    model, small, _, _ = yolov8n
    rewritten = [i for i, m in enumerate(small.model) if isinstance(m, slimprune.Rewritten)]
    assert rewritten, "C2f's chunk sizes are literals: some blocks must have a rewritten forward"
    for a, b in zip(model.model, small.model):
        assert type(b).__mro__[1 if isinstance(b, slimprune.Rewritten) else 0] is type(a)
        assert (b.f, b.i, b.type, b.np) == (a.f, a.i, a.type, a.np) or b.np < a.np  # np counts parameters
        assert (b.f, b.i, b.type) == (a.f, a.i, a.type)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_pruned_yolov8n_survives_round_trip(yolov8n, how: str) -> None:
    _, small, _, x = yolov8n
    if how == "deepcopy":
        again = copy.deepcopy(small)
    elif how == "pickle":
        again = pickle.loads(pickle.dumps(small))
    else:
        buf = io.BytesIO()
        torch.save(small, buf)
        buf.seek(0)
        again = torch.load(buf, weights_only=False)
    assert torch.equal(head(again, x), head(small, x))
    assert [type(m) for m in again.model] == [type(m) for m in small.model]


def test_save_accepts_detect_anchor_constant_and_load_rebuilds(yolov8n, tmp_path: Path) -> None:
    model, small, plan, x = yolov8n
    assert any(s.param.startswith("_tensor_constant") for _, sub in plan.regions for s in sub.slices)
    path = slimprune.save(small, tmp_path / "y8.safetensors", plan=plan)
    loaded = slimprune.load(path, build_fn=build)
    torch.testing.assert_close(head(loaded, x), head(small, x), rtol=1e-5, atol=1e-4)


def test_region_plan_reports_whole_model_params_and_flops(yolov8n) -> None:
    model, small, plan, x = yolov8n
    with torch.no_grad():
        assert plan.flops_before == _count_flops(model.eval(), (x,))[0]
        assert plan.flops_after == _count_flops(small.eval(), (x,))[0]
    assert plan.params_before == sum(p.numel() for p in model.parameters())
    assert plan.params_after == sum(p.numel() for p in small.parameters())
    assert "whole model's" in plan.notes[0]


def as_yolo(model: nn.Module) -> YOLO:
    y = YOLO("yolov8n.yaml", verbose=False)
    y.model = copy.deepcopy(model)
    return y


@pytest.mark.parametrize("hw", [(IMGSZ, IMGSZ), (96, IMGSZ)], ids=["square", "rectangular"])
def test_predict_with_pruned_yolov8n_equals_silenced(yolov8n, hw: tuple[int, int]) -> None:
    model, small, plan, _ = yolov8n
    image = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    kwargs = dict(imgsz=IMGSZ, verbose=False, conf=0.01, max_det=50)
    got = as_yolo(small).predict(image, **kwargs)[0].boxes.data
    want = as_yolo(slimprune.silence(model, plan)).predict(image, **kwargs)[0].boxes.data
    assert got.shape == want.shape and got.shape[0] > 0
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-2)
