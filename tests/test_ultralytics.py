"""Pruned Ultralytics YOLO models work where Ultralytics puts them (random weights, no network).

Models are built from the yaml files the package ships; nothing is downloaded: YOLO_OFFLINE
is set before Ultralytics is imported and its settings sync is off (docs/ultralytics.md).
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("YOLO_OFFLINE", "1")  # no online checks (pip update, hub, DNS probe)
os.environ.setdefault("YOLO_AUTOINSTALL", "False")  # a missing requirement is an error, never a pip install
ultralytics = pytest.importorskip("ultralytics")  # the optional `yolo` extra (included in `test`)
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils import SETTINGS  # noqa: E402

import slimprune  # noqa: E402
from tests.helpers import outputs  # noqa: E402
from examples.yolo import data as yolo_data  # noqa: E402
from examples.yolo.workflow import exportable, trainer_for  # noqa: E402
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


def test_sparsity_regularizer_default_on_yolov8n_equals_the_explicit_bn_list() -> None:
    """fx cannot trace a DetectionModel whole; without bn_modules= the regulariser analyses
    it by regions as plan() does and picks exactly the BatchNorms the example used to list
    (those a threshold plan can shrink), in train mode (as a trainer holds it), leaving the
    model as it was."""
    from examples.yolo.slimming import prunable_bns

    model = build().train()
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = slimprune.SparsityRegularizer(model, 1e-2, example_inputs=x)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    names = prunable_bns(model, IMGSZ)
    explicit = slimprune.SparsityRegularizer(model, 1e-2, bn_modules=names)
    assert len(names) > 30 and sorted(reg.layers) == names
    assert reg.channels == explicit.channels == sum(model.get_submodule(n).num_features for n in names)
    assert slimprune.sparsity.default_lambda(model, x) == 1e-5  # C2f's residual adds, found by regions


def as_yolo(model: nn.Module) -> YOLO:
    """A YOLO wrapping a copy of ``model``, with the ``args``/``task`` a YOLO gives the model it builds."""
    y = YOLO("yolov8n.yaml", verbose=False)
    own = y.model
    y.model = copy.deepcopy(model)
    for name in ("args", "task"):
        if not hasattr(y.model, name):
            setattr(y.model, name, getattr(own, name))
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


# ------------------------------------------------------------------ the Ultralytics workflow
# val, train and export on each pruned one-class detector and a tiny SynthFaces set in YOLO
# format, with every socket refused and recorded: nothing may try the network.

DETECTORS = ["yolov8n", "yolov5nu", "yolo11n", "yolov10n", "yolo12n"]
# yolov10n-e2e: yolov10n run with nms=False, i.e. through its NMS-free one-to-one head and the
# head's top-k (Ultralytics 8.4 runs YOLOv10 through NMS on the one-to-many head by default)
WORKFLOW = [*DETECTORS, "yolov10n-e2e"]
SIZE = 128  # the workflow tests' image size: the smallest that keeps every stride-32 map 4x4


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple]]:
    tried: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        tried.append(args[:2])
        raise OSError("test_ultralytics: network access refused")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(*a))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # check_det_dataset fetches Arial.ttf (for plot labels) into the settings directory when it is
    # not there; any local TTF does: docs/ultralytics.md
    import matplotlib
    import ultralytics.data.utils as data_utils

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    monkeypatch.setattr(data_utils, "check_font", lambda font="Arial.ttf": dejavu)
    yield tried
    assert not tried, f"Ultralytics tried the network: {tried}"


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-class data set (its data.yaml): 8 training and 4 validation images."""
    return yolo_data.write(tmp_path_factory.mktemp("synthfaces"), n_train=8, n_val=4, image_size=IMGSZ)


def calibrated(model: nn.Module) -> nn.Module:
    """``model`` (in place, returned in eval mode) with BatchNorm statistics measured on two
    random batches. With the initial statistics (mean 0, variance 1) random weights shrink the
    activations to ~0 through the backbone: every anchor then scores the class prior and gets
    the same box, and NMS or top-k pick among exact ties, which proves nothing."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average of the two batches
    model.train()
    with torch.no_grad():
        for seed in (10, 11):
            model(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)))
    for m in norms:
        m.momentum = 0.03  # Ultralytics' value (initialize_weights)
    return model.eval()


@pytest.fixture(scope="module")
def detector() -> Callable[[str], tuple[nn.Module, nn.Module, slimprune.PruningPlan]]:
    """``detector(name)``: a one-class ``name`` (BatchNorms calibrated), its pruned copy and the plan;
    each model planned once per module."""
    cache: dict[str, tuple[nn.Module, nn.Module, slimprune.PruningPlan]] = {}

    def get(name: str) -> tuple[nn.Module, nn.Module, slimprune.PruningPlan]:
        name = name.removesuffix("-e2e")
        if name not in cache:
            torch.manual_seed(0)
            model = calibrated(DetectionModel(f"{name}.yaml", nc=1, verbose=False))
            x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = slimprune.plan(model, 0.5, example_inputs=x)
                cache[name] = model, slimprune.apply(model, plan), plan
        return cache[name]

    return get


def offline(tmp_path: Path, name: str) -> dict:
    return dict(imgsz=SIZE, batch=4, workers=0, plots=False, device="cpu", verbose=False,
                project=str(tmp_path / "runs"), name=name, exist_ok=True)


def test_yolo_data_labels_are_synthfaces_boxes_normalised(faces) -> None:
    root = faces.parent
    labels = sorted((root / "labels" / "train").glob("*.txt"))
    images = sorted((root / "images" / "train").glob("*.jpg"))
    assert [p.stem for p in labels] == [p.stem for p in images] and len(images) == 8
    rows = np.array([[float(v) for v in line.split()] for p in labels for line in p.read_text().splitlines()])
    assert len(rows) >= 8 and (rows[:, 0] == 0).all()
    assert ((rows[:, 1:] > 0) & (rows[:, 1:] <= 1)).all()
    assert (rows[:, 1:3] - rows[:, 3:5] / 2 >= -1e-6).all() and (rows[:, 1:3] + rows[:, 3:5] / 2 <= 1 + 1e-6).all()


def validated(model: nn.Module, data: Path, **kwargs: object) -> tuple[dict, list[torch.Tensor]]:
    """``YOLO.val`` of ``model``: its metrics and its predictions on every batch of 4 images (the
    forwards it runs besides those, e.g. a warm-up on zeros, are left out)."""
    yolo = as_yolo(model)
    seen: list[torch.Tensor] = []
    yolo.model.register_forward_hook(lambda m, i, out: seen.append(outputs(out)[0].detach().clone())
                                     if i[0].shape[0] == 4 else None)
    return yolo.val(data=str(data), **kwargs).results_dict, seen


@pytest.mark.parametrize("name", WORKFLOW)
def test_val_of_pruned_detector_equals_val_of_silenced(name: str, faces, detector, no_network, tmp_path: Path) -> None:
    """``val`` runs the pruned model (fused by Ultralytics' AutoBackend) on every batch and scores
    it as the silenced original: same predictions, same metrics. yolov10n-e2e validates through
    the one-to-one head (``nms=False``)."""
    model, small, plan = detector(name)
    e2e = {"nms": False} if name.endswith("-e2e") else {}
    got, got_out = validated(small, faces, **offline(tmp_path, "pruned"), **e2e)
    want, want_out = validated(slimprune.silence(model, plan), faces, **offline(tmp_path, "silenced"), **e2e)
    assert set(got) >= {"metrics/mAP50(B)", "metrics/mAP50-95(B)", "fitness"}
    assert got == pytest.approx(want, abs=1e-6)
    assert len(got_out) == len(want_out) == 1  # 4 images, batch 4
    assert got_out[0].shape[:2] == ((4, 300) if e2e else (4, 5))
    scores = got_out[0][..., 4] if e2e else got_out[0][:, 4]
    assert scores.std() > 1e-3, "calibrated() should leave no ties among the scores"
    if e2e:  # the head's top-k sorts by score: two detections whose scores tie to ~1e-7 may swap
        # places (seen: 2 of 300 rows of one image when this test runs alone), so compare the
        # score column in place and the rows matched one to one (matched, below)
        torch.testing.assert_close(got_out[0][..., 4], want_out[0][..., 4], rtol=1e-4, atol=1e-6)
        for a, b in zip(got_out[0], want_out[0]):
            torch.testing.assert_close(a, matched(a, b), rtol=1e-4, atol=1e-3)
    else:
        torch.testing.assert_close(got_out[0], want_out[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", DETECTORS)
def test_train_fine_tunes_the_pruned_detector_and_its_checkpoint_reloads_intact(
        name: str, faces, detector, no_network, tmp_path: Path) -> None:
    """One epoch of ``train`` updates the pruned model itself; ModelEMA's deep copy and the
    reloaded ``best.pt`` (which pickles the EMA module, in float16) keep every module's class and
    Ultralytics attributes, and the checkpoint holds the EMA's weights."""
    _, small, plan = detector(name)
    pruned = as_yolo(small).model.train()
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    yolo = as_yolo(pruned)
    yolo.model = pruned
    yolo.train(data=str(faces), trainer=trainer_for(yolo, pruned), epochs=1, amp=False, **offline(tmp_path, "ft"))
    trainer = yolo.trainer
    assert trainer.model is pruned, "the trainer must train the pruned model, not rebuild one from the yaml"
    assert sum(p.numel() for p in pruned.parameters()) == plan.params_after
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items() if v.is_floating_point())
    ema = trainer.ema.ema  # ModelEMA deep-copies the model
    best = yolo.model  # reloaded from best.pt
    assert best is not pruned and best is not ema
    for m in (ema, best):
        assert [type(b) for b in m.model] == [type(a) for a in small.model]
        assert [(b.f, b.i, b.type) for b in m.model] == [(a.f, a.i, a.type) for a in small.model]
    assert any(isinstance(m, slimprune.Rewritten) for m in best.model) == any(
        isinstance(m, slimprune.Rewritten) for m in small.model)
    weights = ema.state_dict()
    for k, v in best.state_dict().items():
        assert torch.equal(v, weights[k].half().float() if v.is_floating_point() else weights[k]), k
    x = torch.rand(1, 3, SIZE, SIZE)
    assert head(best, x).shape == head(small, x).shape


@pytest.mark.parametrize("name", WORKFLOW)
def test_export_onnx_of_pruned_detector_equals_the_torch_model(name: str, detector, no_network, tmp_path: Path) -> None:
    """``export(format="onnx")`` (which fuses the BatchNorms and, through ``exportable``, calls the
    rewritten forwards) run under ONNX Runtime gives the pruned torch model's output; for
    yolov10n-e2e (``nms=False``) the one-to-one head's 300 detections, with its top-k in the graph."""
    import onnxruntime as ort  # the `test` extra

    _, small, _ = detector(name)
    e2e = name.endswith("-e2e")
    yolo = as_yolo(small)
    yolo.model = exportable(yolo.model)  # the exporter swaps C2f.forward for forward_split
    yolo.model.pt_path = str(tmp_path / "pruned.pt")  # export writes pruned.onnx beside it
    path = yolo.export(format="onnx", imgsz=SIZE, simplify=False, device="cpu", **({"nms": False} if e2e else {}))
    assert Path(path) == tmp_path / "pruned.onnx"
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    reference = copy.deepcopy(small)
    reference.end2end = e2e
    want = head(reference, x)
    assert want.shape == ((1, 300, 6) if e2e else (1, 5, 336))
    got = torch.from_numpy(got)
    if e2e:  # rows of near-equal score (1e-8 apart) come out of the head's top-k in either order
        torch.testing.assert_close(got[..., 4], want[..., 4], rtol=1e-4, atol=1e-6)
        match = (got[0, :, None] - want[0, None]).abs().amax(-1).argmin(1)
        assert match.unique().numel() == match.numel(), "each exported detection is one of the torch model's"
        want = want[:, match]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def gap_threshold(scores: torch.Tensor, low: int, high: int) -> float:
    """The middle of the widest gap between neighbouring sorted ``scores`` from rank ``low`` to
    ``high``: a confidence cut that float32 rounding (~1e-6) cannot move a detection across."""
    s = scores.sort(descending=True).values[low:high + 1]
    i = int((s[:-1] - s[1:]).argmax())
    assert s[i] - s[i + 1] > 1e-4, "calibrated() should spread the scores"
    return float(s[i] + s[i + 1]) / 2


def matched(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """``want``'s rows in the order of ``got``'s (each got row's nearest want row, one to one)."""
    assert got.shape == want.shape and got.shape[0] > 0
    match = (got[:, None] - want[None]).abs().amax(-1).argmin(1)
    assert match.unique().numel() == match.numel(), "each pruned detection is one of the silenced model's"
    return want[match]


@pytest.mark.parametrize("nms", [None, False], ids=["default-nms", "e2e-nms-False"])
@pytest.mark.parametrize("hw", [(SIZE, SIZE), (96, SIZE)], ids=["square", "rectangular"])
def test_predict_with_pruned_yolov10n_equals_silenced_on_both_heads(
        hw: tuple[int, int], nms: bool | None, detector, no_network) -> None:
    """``YOLO.predict`` with the pruned yolov10n (one class, BatchNorms calibrated) on a square
    and a rectangular (letterboxed to 96 x 128) image gives the silenced model's boxes, scores
    and classes: with Ultralytics' default (``nms=None``: NMS on the one-to-many head) and with
    ``nms=False`` (the NMS-free one-to-one head, its top-k inside the model). The confidence
    cut is put in a wide gap of the silenced model's scores; rows whose scores tie to ~1e-6 may
    come out of the top-k in either order, so rows are matched one to one."""
    model, small, plan = detector("yolov10n")
    image = np.random.default_rng(3).integers(0, 255, (*hw, 3), dtype=np.uint8)
    kwargs = dict(imgsz=SIZE, verbose=False, max_det=300, device="cpu", **({} if nms is None else {"nms": nms}))
    silenced = as_yolo(slimprune.silence(model, plan))
    every = silenced.predict(image, conf=0.0, **kwargs)[0].boxes.data
    assert every.shape[0] >= 30  # after NMS (default) or the one-to-one head's top 300 of 336 anchors
    conf = gap_threshold(every[:, 4], 10, every.shape[0] - 10)
    want = silenced.predict(image, conf=conf, **kwargs)[0].boxes.data
    got = as_yolo(small).predict(image, conf=conf, **kwargs)[0].boxes.data
    assert 10 <= got.shape[0] == want.shape[0] < every.shape[0]
    torch.testing.assert_close(got[:, 4], want[:, 4], rtol=1e-4, atol=1e-6)  # same scores, in place
    torch.testing.assert_close(got, matched(got, want), rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ unusual and uncopyable attributes
from ultralytics.nn.modules.block import C2f  # noqa: E402


class UnusualC2f(C2f):
    """A C2f (its forward is rewritten when pruned) with a slot and a read-only property."""

    __slots__ = ("slot_flag",)

    @property
    def width(self) -> int:
        return self.cv1.conv.out_channels


def double(t: torch.Tensor) -> torch.Tensor:
    return 2 * t


@pytest.fixture(scope="module")
def unusual() -> tuple[nn.Module, slimprune.PruningPlan, torch.Tensor]:
    """yolov8n whose model.2 is an UnusualC2f holding a slot value, a lambda, a plain function
    and a tensor that is neither parameter nor buffer, with its plan."""
    model = build()
    old = model.model[2]
    new = UnusualC2f.__new__(UnusualC2f)
    new.__setstate__(dict(old.__dict__))
    new.slot_flag, new.fn, new.double, new.scale = "kept", lambda t: t + 1, double, torch.arange(3.0)
    model.model[2] = new
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
    return model, plan, x


def test_unusual_attributes_survive_pruning_and_round_trips_as_they_survive_them_unpruned(unusual) -> None:
    """apply carries every attribute: a ``__slots__`` value, a lambda, a function, a plain tensor;
    a property reads the pruned sizes. deepcopy and pickle then treat them as they treat the
    unpruned model's: ``nn.Module.__getstate__`` leaves slots out (both lose the slot value) and
    pickle refuses the lambda (in both, with the same error)."""
    model, plan, x = unusual
    small = slimprune.apply(model, plan)
    m = small.model[2]
    assert isinstance(m, slimprune.Rewritten) and isinstance(m, UnusualC2f)
    assert (m.slot_flag, m.fn(1), m.double(3)) == ("kept", 2, 6) and torch.equal(m.scale, model.model[2].scale)
    assert m.scale is not model.model[2].scale
    assert m.width == m.cv1.conv.out_channels < model.model[2].width
    want = head(small, x)
    again = copy.deepcopy(small)
    assert torch.equal(head(again, x), want) and again.model[2].fn(1) == 2 and type(again.model[2]) is type(m)
    assert hasattr(again.model[2], "slot_flag") == hasattr(copy.deepcopy(model).model[2], "slot_flag")
    with pytest.raises(Exception) as unpruned:
        pickle.dumps(model)
    with pytest.raises(type(unpruned.value), match="lambda"):
        pickle.dumps(small)
    del m.fn
    loaded = pickle.loads(pickle.dumps(small))
    assert torch.equal(head(loaded, x), want) and loaded.model[2].double(3) == 6
    assert torch.equal(loaded.model[2].scale, m.scale) and type(loaded.model[2]) is type(m)


@pytest.mark.parametrize("value", [threading.Lock(), (i for i in range(3))], ids=["lock", "generator"])
def test_an_attribute_deepcopy_cannot_copy_is_an_error_naming_module_and_attribute(unusual, value) -> None:
    """The pruned model is a copy; a module attribute that cannot be deep-copied (a lock, a
    generator; Ultralytics' ModelEMA could not copy it either) is a ModelCopyError naming the
    module's path, class and attribute, the user's model is left as it was, and the fix the
    message gives (delete it, apply, set it again) works."""
    model, plan, x = unusual
    target = model.model[4]  # another C2f, rewritten when pruned
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    target.handle = value
    try:
        with pytest.raises(slimprune.ModelCopyError, match=r"attribute 'handle' of model\.4 \(C2f\)") as caught:
            slimprune.apply(model, plan)
        assert isinstance(caught.value, TypeError) and "delete 'handle' before apply" in str(caught.value)
        assert target.handle is value and model.model[4] is target
        assert [type(m) for m in model.modules()] == classes
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    finally:
        del target.handle
    small = slimprune.apply(model, plan)
    small.model[4].handle = value
    assert isinstance(small.model[4], slimprune.Rewritten) and small.model[4].handle is value


# ------------------------------------------------------------------ other task heads
VARIANTS = {"seg": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml", "cls": "yolov8n-cls.yaml"}


def predicted(result: object, task: str) -> list[torch.Tensor]:
    if task == "cls":
        return [result.probs.data]
    out = [result.boxes.data]
    if task == "seg":
        out.append(result.masks.data)
    if task == "pose":
        out.append(result.keypoints.data)
    return out


@pytest.mark.parametrize("task", list(VARIANTS))
def test_yolov8n_task_variant_prunes_exactly_round_trips_saves_and_predicts_as_silenced(task: str, tmp_path: Path) -> None:
    def build_variant() -> nn.Module:
        torch.manual_seed(0)
        return YOLO(VARIANTS[task], verbose=False).model.eval()

    torch.manual_seed(0)
    yolo = YOLO(VARIANTS[task], verbose=False)
    model = yolo.model.eval()
    if task != "cls":
        for branch in model.model[-1].cv3:  # random weights: lift the class prior so boxes come out
            nn.init.zeros_(branch[-1].bias)
    size = 64 if task == "cls" else IMGSZ
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
        small = slimprune.apply(model, plan)
    assert plan.params_after < 0.65 * plan.params_before
    silenced = slimprune.silence(model, plan)
    with torch.no_grad():
        got, want = small.eval()(x), silenced.eval()(x)
    got, want = (got[0], want[0]) if isinstance(got, (tuple, list)) else (got, want)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)

    def first(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return outputs(m.eval()(x))[0]

    mine = first(small)
    assert torch.equal(first(copy.deepcopy(small)), mine) and torch.equal(first(pickle.loads(pickle.dumps(small))), mine)
    path = slimprune.save(small, tmp_path / f"{task}.safetensors", plan=plan)
    loaded = slimprune.load(path, build_fn=build_variant)  # (the Detect prior tweak is in the saved weights)
    torch.testing.assert_close(first(loaded), mine, rtol=1e-5, atol=1e-4)
    image = np.random.default_rng(0).integers(0, 255, (96, size, 3), dtype=np.uint8)
    kwargs = dict(imgsz=size, verbose=False, conf=0.01, max_det=20)
    yolo.model = small
    a = predicted(yolo.predict(image, **kwargs)[0], task)
    yolo.model, yolo.predictor = silenced, None
    b = predicted(yolo.predict(image, **kwargs)[0], task)
    assert a[0].numel() > 0
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-2)


# ------------------------------------------------------------------ attention blocks
# C2PSA (YOLO11), PSA (YOLOv10) and A2C2f area attention (YOLO12) prune through their matmuls
# (slimprune/rules/heads.py); before that rule each was a barrier (1, 1 and 4 matmul ops at
# 160 px, benchmarks/ultralytics_variants.py).


@pytest.mark.parametrize("name", ["yolov5nu", "yolo11n", "yolov10n", "yolo12n"])
def test_yolo_variant_prunes_exactly_round_trips_predicts_as_silenced_and_saves(name: str, tmp_path: Path) -> None:
    """The issue's table, per model: no barrier, exact; deepcopy, pickle and torch.save give
    the same outputs; ``predict`` (which fuses every Conv's BatchNorm first) gives the silenced
    model's boxes; ``slimprune.save``/``load`` rebuilds it. yolo11n/yolov10n/yolo12n's predict
    used to fail (``'Conv' object has no attribute 'bn'``: the rewritten C2PSA/PSA/A2C2f
    forward inlined their Convs)."""
    from slimprune.errors import UnsupportedOpWarning
    from tests.helpers import assert_pruned_equals_silenced

    def build_variant() -> nn.Module:
        torch.manual_seed(0)
        return YOLO(f"{name}.yaml", verbose=False).model.eval()

    yolo = YOLO(f"{name}.yaml", verbose=False)
    torch.manual_seed(0)
    yolo.model = model = build_variant()
    for branch in model.model[-1].cv3:  # random weights: lift the class prior so boxes come out
        nn.init.zeros_(branch[-1].bias if isinstance(branch[-1], nn.Conv2d) else branch[-1][-1].bias)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
    barriers = [str(w.message) for w in caught if issubclass(w.category, UnsupportedOpWarning)]
    assert not barriers, barriers
    assert plan.params_after < 0.6 * plan.params_before
    small = assert_pruned_equals_silenced(model, plan, x, rtol=1e-4, atol=1e-3)
    want = head(small, x)
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    for again in (copy.deepcopy(small), pickle.loads(pickle.dumps(small)), torch.load(buf, weights_only=False)):
        assert torch.equal(head(again, x), want)
    path = slimprune.save(small, tmp_path / f"{name}.safetensors", plan=plan)
    torch.testing.assert_close(head(slimprune.load(path, build_fn=build_variant), x), want, rtol=1e-5, atol=1e-4)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    kwargs = dict(imgsz=128, verbose=False, conf=0.01, max_det=20)
    yolo.model = copy.deepcopy(small)
    got = yolo.predict(image, **kwargs)[0].boxes.data
    yolo.model, yolo.predictor = slimprune.silence(model, plan), None
    expected = yolo.predict(image, **kwargs)[0].boxes.data
    assert got.shape[0] > 0
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-2)


def test_pruned_rtdetr_round_trips_and_save_load_rebuilds_it(tmp_path: Path) -> None:
    """rtdetr-l (the smallest RT-DETR yaml Ultralytics ships), pruned at ratio 0.5 at 128 px:
    deepcopy, pickle and torch.save round trips give identical outputs and module classes, and
    ``slimprune.save``/``load`` rebuilds it from the yaml with the same weights."""
    from ultralytics.nn.tasks import RTDETRDetectionModel

    def build_rtdetr() -> nn.Module:
        torch.manual_seed(0)
        return RTDETRDetectionModel("rtdetr-l.yaml", verbose=False).eval()

    model = build_rtdetr()
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
        small = slimprune.apply(model, plan)
    assert plan.params_after < 0.6 * plan.params_before
    want = head(small, x)
    assert want.shape == (1, 300, 6)  # 300 queries: box, score, class
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    for again in (copy.deepcopy(small), pickle.loads(pickle.dumps(small)), torch.load(buf, weights_only=False)):
        assert torch.equal(head(again, x), want)
        assert [type(m) for m in again.modules()] == [type(m) for m in small.modules()]
    path = slimprune.save(small, tmp_path / "rtdetr.safetensors", plan=plan)
    loaded = slimprune.load(path, build_fn=build_rtdetr)
    assert sum(p.numel() for p in loaded.parameters()) == plan.params_after
    assert torch.equal(head(loaded, x), want)


@pytest.mark.slow  # rtdetr-l: about 30 s on one loaded core at 160 px
def test_rtdetr_pruned_equals_silenced_in_float64_and_float32_differs_only_by_topk_order() -> None:
    """RT-DETR's two top-k selections (300 queries of the encoder's anchors, then 300 of the
    300 × 80 final scores) reorder scores that random weights make near-equal (neighbours
    ~1e-6 apart) when float32 rounding differs. In float64 nothing rounds that far and the
    pruned model equals its silenced original on every query; in float32 the encoder scores
    feeding the first top-k agree to 1e-5 of their scale and select the same query set, and the
    300 final rows are the silenced model's, permuted only among equal scores."""
    from ultralytics import RTDETR

    torch.manual_seed(0)
    model = RTDETR("rtdetr-l.yaml").model.eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
    small, silenced = slimprune.apply(model, plan).eval(), slimprune.silence(model, plan).eval()
    scores: dict[str, torch.Tensor] = {}
    for tag, m in (("small", small), ("silenced", silenced)):
        head = dict(m.named_modules())["model.28.enc_score_head"]
        head.register_forward_hook(lambda mod, i, o, tag=tag: scores.__setitem__(tag, o.detach().clone()))
    with torch.no_grad():
        got32, want32 = small(x)[0][0], silenced(x)[0][0]
        # float32: the final rows are sorted by score, and rows swap places only between scores
        # equal to float32 rounding (in place the score column agrees); as a set they are the
        # silenced model's, matched one to one (8 of 300 rows moved at this size and seed)
        torch.testing.assert_close(got32[:, 4], want32[:, 4], rtol=0, atol=1e-6)
        assert torch.equal(want32[:, 4], want32[:, 4].sort(descending=True).values)
        torch.testing.assert_close(got32, matched(got32, want32), rtol=1e-5, atol=1e-5)
        a, b = scores["small"], scores["silenced"]
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
        k = 300
        assert set(a.max(-1).values.topk(k, dim=1).indices.flatten().tolist()) == set(
            b.max(-1).values.topk(k, dim=1).indices.flatten().tolist())
        got, want = small.double()(x.double())[0], silenced.double()(x.double())[0]
    assert got.shape == want.shape == (1, 300, 6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ RT-DETR in the workflow
# rtdetr-l takes ~25 s to plan on one core; these tests use the same architecture, real
# Ultralytics classes (HGStem/HGBlock backbone, AIFI, RepC3, RTDETRDecoder), written from the
# shipped rtdetr-l.yaml with a quarter of the channels, at most 2 repeats, a 2-layer 64-wide
# decoder (still 300 queries) and one class.


def tiny_rtdetr_yaml(path: Path) -> Path:
    """``rtdetr-l.yaml`` shrunk: every channel count >= 32 divided by 4, repeats capped at 2,
    decoder ``[nc=1, hd=64, nq=300, ndp=4, nh=4, ndl=2, d_ffn=128]``; written to ``path``."""
    from ultralytics.utils import ROOT, YAML

    cfg = YAML.load(ROOT / "cfg" / "models" / "rt-detr" / "rtdetr-l.yaml")

    def shrink(layer: list) -> list:
        f, n, m, args = layer
        if m == "RTDETRDecoder":
            return [f, n, m, [1, 64, 300, 4, 4, 2, 128]]
        return [f, min(n, 2), m, [a // 4 if type(a) is int and a >= 32 else a for a in args]]

    YAML.save(path, {"nc": 1, "backbone": [shrink(layer) for layer in cfg["backbone"]],
                     "head": [shrink(layer) for layer in cfg["head"]]})
    return path


@pytest.fixture(scope="module")
def rtdetr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module, nn.Module, slimprune.PruningPlan]:
    """The tiny RT-DETR's yaml, the model (BatchNorms calibrated, the decoder left in eval mode:
    its training forward needs targets), its pruned copy at ratio 0.5 and the plan."""
    from ultralytics.nn.tasks import RTDETRDetectionModel

    path = tiny_rtdetr_yaml(tmp_path_factory.mktemp("rtdetr") / "rtdetr-tiny.yaml")
    torch.manual_seed(0)
    model = RTDETRDetectionModel(str(path), verbose=False).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for seed in (10, 11):
            model(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)))
    for m in norms:
        m.momentum = 0.03
        m.eval()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
        small = slimprune.apply(model, plan)
    return path, model, small, plan


def as_rtdetr(model: nn.Module, path: Path) -> object:
    """An ``RTDETR`` wrapping a copy of ``model``, with the ``args``/``task`` it gives the model it builds."""
    from ultralytics import RTDETR

    r = RTDETR(str(path))
    own = r.model
    r.model = copy.deepcopy(model)
    for name in ("args", "task"):
        if not hasattr(r.model, name):
            setattr(r.model, name, getattr(own, name))
    return r


def test_tiny_rtdetr_pruned_equals_silenced_on_all_300_queries(rtdetr) -> None:
    """With spread scores (calibrated BatchNorms) both top-k selections of the pruned RT-DETR
    pick the silenced model's queries in its order: every one of the 300 rows is equal in float32."""
    _, model, small, plan = rtdetr
    assert plan.params_after < 0.65 * plan.params_before
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    got, want = head(small, x), head(slimprune.silence(model, plan), x)
    assert got.shape == (1, 300, 6) and want[..., 4].std() > 1e-2
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hw", [(SIZE, SIZE), (96, SIZE)], ids=["square", "rectangular"])
def test_predict_with_pruned_rtdetr_equals_silenced(rtdetr, hw: tuple[int, int], no_network) -> None:
    """``RTDETR.predict`` (its AutoBackend fuses the BatchNorms; a rectangular image is
    stretched to the square input RT-DETR needs) gives the silenced model's 300 detections.
    The decoder's final top-k sorts them by score; the fused convs round differently, so two
    detections whose scores tie to ~1e-6 may swap places (rows 240 and 241 on the square image,
    scores 0.3096447 and 0.3096446):
    the scores agree in place, every detection is one of the silenced model's, and few move."""
    path, model, small, plan = rtdetr
    image = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    kwargs = dict(imgsz=SIZE, conf=0.0, verbose=False, device="cpu")
    got = as_rtdetr(small, path).predict(image, **kwargs)[0].boxes.data
    want = as_rtdetr(slimprune.silence(model, plan), path).predict(image, **kwargs)[0].boxes.data
    assert got.shape == want.shape == (300, 6)
    torch.testing.assert_close(got[:, 4], want[:, 4], rtol=1e-4, atol=1e-6)  # a swap is a tie in score
    same = matched(got, want)
    torch.testing.assert_close(got, same, rtol=1e-4, atol=1e-3)
    assert ((same - want).abs().amax(-1) > 1e-3).sum() <= 10


def test_val_of_pruned_rtdetr_equals_val_of_silenced(rtdetr, faces, no_network, tmp_path: Path) -> None:
    """``RTDETR.val``: the predictions the validator computes on the 4 images and the metrics
    equal the silenced model's."""
    path, model, small, plan = rtdetr
    results = []
    for tag, m in (("pruned", small), ("silenced", slimprune.silence(model, plan))):
        r = as_rtdetr(m, path)
        seen: list[torch.Tensor] = []
        r.model.register_forward_hook(lambda mod, i, out, seen=seen: seen.append(outputs(out)[0].detach().clone())
                                      if i[0].shape[0] == 4 else None)
        results.append((r.val(data=str(faces), **offline(tmp_path, tag)).results_dict, seen))
    (got, got_out), (want, want_out) = results
    assert set(got) >= {"metrics/mAP50(B)", "metrics/mAP50-95(B)", "fitness"}
    assert got == pytest.approx(want, abs=1e-6)
    assert len(got_out) == len(want_out) == 1 and got_out[0].shape == (4, 300, 6)
    torch.testing.assert_close(got_out[0], want_out[0], rtol=1e-4, atol=1e-4)


def test_train_fine_tunes_the_pruned_rtdetr_and_its_checkpoint_reloads_intact(
        rtdetr, faces, no_network, tmp_path: Path) -> None:
    """One epoch of ``RTDETR.train`` (RTDETRTrainer, through ``trainer_for``) updates the pruned
    model itself (decoder denoising included); the EMA copy and the reloaded ``best.pt`` have
    the pruned model's module classes and parameter count and the EMA's weights (in float16)."""
    path, _, small, plan = rtdetr
    pruned = as_rtdetr(small, path).model.train()
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    r = as_rtdetr(pruned, path)
    r.model = pruned
    r.train(data=str(faces), trainer=trainer_for(r, pruned), epochs=1, amp=False, **offline(tmp_path, "ft"))
    trainer = r.trainer
    assert trainer.model is pruned and type(trainer).__mro__[1].__name__ == "RTDETRTrainer"
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items() if v.is_floating_point())
    ema, best = trainer.ema.ema, r.model
    assert best is not pruned and best is not ema
    classes = [type(m) for m in small.model.modules()]  # (training adds the loss module as .criterion)
    for m in (ema, best):
        assert [type(b) for b in m.model.modules()] == classes
        assert sum(p.numel() for p in m.parameters()) == plan.params_after
    weights = ema.state_dict()
    for k, v in best.state_dict().items():
        assert torch.equal(v, weights[k].half().float() if v.is_floating_point() else weights[k]), k
    x = torch.rand(1, 3, SIZE, SIZE)
    assert head(best, x).shape == (1, 300, 6)


@pytest.mark.parametrize("name", ["yolov8n", "yolov8n-seg", "yolov8n-pose", "yolov8n-cls",
                                  "yolo11n", "yolov10n", "yolo12n", "yolov5nu"])
def test_threshold_oracle_prunes_zeroed_channels_and_equals_the_zeroed_original(name: str) -> None:
    """Network-slimming oracle (the nine-model table's first column): with γ and β of 40% of
    every BatchNorm2d's channels zeroed, a ``threshold=1e-12`` plan removes channels and the
    pruned model computes exactly what the zeroed (unpruned) model does."""
    torch.manual_seed(0)
    model = YOLO(f"{name}.yaml", verbose=False).model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                idx = torch.randperm(m.num_features, generator=g)[: int(0.4 * m.num_features)]
                m.weight[idx] = 0.0
                m.bias[idx] = 0.0
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, threshold=1e-12, example_inputs=x)
        small = slimprune.apply(model, plan)
    assert plan.params_after < 0.85 * plan.params_before
    with torch.no_grad():
        got, want = outputs(small.eval()(x)), outputs(model(x))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
