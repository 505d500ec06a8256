"""A usable detector: ``eval``/``detect``/``export`` load the pipeline's pruned model files
and training checkpoints of pruned models; ``detect`` writes JSON boxes and annotated PNGs;
the ONNX export has a dynamic image size and onnxruntime computes what PyTorch computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import slimprune
import slimprune.io
from examples.eagleeye.__main__ import main
from examples.eagleeye.checkpoints import FORMAT, CheckpointError, rng_state, save_checkpoint
from examples.eagleeye.config import TrainConfig
from examples.eagleeye.detect import DetectConfig
from examples.eagleeye.infer import detect_image, run_detect
from examples.eagleeye.model_files import build_spec, load_detector
from examples.eagleeye.optim import build_model

CONFIG = TrainConfig(width_mult=0.25, eval_size=96, image_size=64)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A random EagleEye pruned by half its parameters, saved as the pipeline saves it, and a
    training checkpoint of the pruned model in the pipeline's ``finetune/`` folder."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    model = build_model(CONFIG).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.05, 1.0)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    plan = slimprune.plan(model, 0.5, target="params", example_inputs=(torch.rand(1, 3, 64, 64),))
    pruned = slimprune.apply(model, plan).eval()
    slimprune.io.save(pruned, out / "pruned.safetensors", plan=plan, build=build_spec(CONFIG))
    # The fine-tuning stage's checkpoint: the pruned model's (changed) weights.
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(0.01)
    payload = {
        "format": FORMAT, "model": pruned.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {},
        "epoch": 1, "rng": rng_state(torch.device("cpu")), "config": CONFIG.to_dict(),
    }
    save_checkpoint(out / "finetune" / "last.pt", payload)
    return {"out": out, "pruned": pruned, "original_params": sum(p.numel() for p in model.parameters())}


def outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


def test_pruned_model_file_loads_and_computes_what_was_saved(files: dict) -> None:
    """load_detector on pruned.safetensors: a smaller model, no training config."""
    model, config = load_detector(files["out"] / "pruned.safetensors")
    assert config is None
    assert sum(p.numel() for p in model.parameters()) < 0.6 * files["original_params"]
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(outputs(model, x), outputs(slimprune.io.load(
        files["out"] / "pruned.safetensors", build_fn=lambda: build_model(CONFIG)), x))


def test_checkpoint_of_a_pruned_model_is_rebuilt_from_the_pipeline_plan(files: dict) -> None:
    """finetune/last.pt (weights that fit no unpruned EagleEye) loads through ../pruned.safetensors,
    with the checkpoint's weights (not the file's) and its training config."""
    model, config = load_detector(files["out"] / "finetune" / "last.pt")
    assert config == CONFIG
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(outputs(model, x), outputs(files["pruned"], x))


def test_checkpoint_of_a_pruned_model_without_its_plan_is_an_error_naming_the_way_out(files: dict, tmp_path: Path) -> None:
    lone = tmp_path / "last.pt"
    lone.write_bytes((files["out"] / "finetune" / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match="--architecture"):
        load_detector(lone)
    model, _ = load_detector(lone, architecture=files["out"] / "pruned.safetensors")
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(outputs(model, x), outputs(files["pruned"], x))


def test_detect_image_maps_boxes_to_original_pixels(files: dict) -> None:
    """Boxes of a non-square image lie inside it, sorted by score, at or above the threshold."""
    model, _ = load_detector(files["out"] / "pruned.safetensors")
    image = np.random.default_rng(0).integers(0, 255, (50, 130, 3), dtype=np.uint8)
    boxes = detect_image(model, image, 96, DetectConfig(score_thresh=0.0))
    assert boxes.shape[1] == 5 and len(boxes) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 130).all() and (boxes[:, 3] <= 50).all()
    assert (np.diff(boxes[:, 4]) <= 0).all()


def test_detect_command_writes_json_and_annotated_png(files: dict, tmp_path: Path) -> None:
    """``detect DIR --model pruned.safetensors --out OUT --score 0``: one JSON and one PNG per image,
    the JSON's boxes are run_detect's and the PNG differs from the input where a box is drawn."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name, hw in (("a.jpg", (60, 80)), ("b.png", (90, 70))):
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "out"
    model_path = files["out"] / "pruned.safetensors"
    assert main(["detect", str(images), "--model", str(model_path), "--out", str(out), "--score", "0.0", "--threads", "1", "--size", "96"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    record = json.loads((out / "b.json").read_text())
    assert (record["width"], record["height"]) == (70, 90)
    model, _ = load_detector(model_path)
    expected = run_detect(model, [images / "b.png"], tmp_path / "again", score=0.0, size=CONFIG.eval_size)
    assert len(record["faces"]) == len(expected[images / "b.png"]) > 0
    np.testing.assert_allclose([f["box"] for f in record["faces"]], expected[images / "b.png"][:, :4], atol=0.01)
    drawn = np.asarray(Image.open(out / "b.png").convert("RGB"))
    assert drawn.shape == (90, 70, 3)
    assert (drawn != np.asarray(Image.open(images / "b.png").convert("RGB"))).any()
    # A score threshold above every box keeps none, and an impossible one is refused.
    assert main(["detect", str(images / "a.jpg"), "--model", str(model_path), "--out", str(out), "--score", "1.0"]) == 0
    assert json.loads((out / "a.json").read_text())["faces"] == []
    assert main(["detect", str(images), "--model", str(model_path), "--out", str(out), "--score", "2"]) == 2


def test_detect_command_reports_a_missing_image(files: dict, tmp_path: Path) -> None:
    code = main(["detect", str(tmp_path / "nope.jpg"), "--model", str(files["out"] / "pruned.safetensors"), "--out", str(tmp_path)])
    assert code == 2


def test_onnx_export_has_dynamic_size_and_matches_torch(files: dict, tmp_path: Path) -> None:
    """``export --onnx`` on the pruned checkpoint: onnxruntime equals PyTorch on two image sizes
    (and a batch of two) to float32 rounding."""
    import onnxruntime as ort
    path = tmp_path / "eagleeye.onnx"
    assert main(["export", "--onnx", str(path), "--model", str(files["out"] / "finetune" / "last.pt"), "--size", "64"]) == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model, _ = load_detector(files["out"] / "finetune" / "last.pt")
    for shape in ((1, 3, 64, 64), (2, 3, 96, 160)):
        x = torch.rand(*shape)
        got = session.run(None, {"images": x.numpy()})
        want = outputs(model, x)
        assert got[0].shape == tuple(want[0].shape)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)


def test_failed_export_leaves_an_existing_file_untouched(files: dict, tmp_path: Path) -> None:
    path = tmp_path / "keep.onnx"
    path.write_bytes(b"previous")
    assert main(["export", "--onnx", str(path), "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert path.read_bytes() == b"previous"


def test_eval_command_takes_the_pruned_model_file(files: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``eval --model pruned.safetensors --data DIR``: evaluated, AP per subset printed, a
    submission written for every val image; the same through the pruned checkpoint."""
    from examples.eagleeye import synthfaces
    from examples.eagleeye.config import QUICK_SYNTH

    data = synthfaces.ensure(tmp_path / "data", **dict(QUICK_SYNTH))
    sub = tmp_path / "sub"
    for model in (files["out"] / "pruned.safetensors", files["out"] / "finetune" / "last.pt"):
        args = ["eval", "--model", str(model), "--data", str(data), "--size", "96", "--threads", "1", "--no-progress"]
        assert main([*args, "--submission", str(sub)]) == 0
        printed = capsys.readouterr().out
        assert "easy" in printed and "hard" in printed
    assert len(list(sub.glob("*/*.txt"))) == len(list((data / "WIDER_val" / "images").glob("*/*.jpg"))) > 0
