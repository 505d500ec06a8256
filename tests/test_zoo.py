"""Every torchvision classification, segmentation, detection and video model, pruned at
ratio 0.5, must run in eval and train mode, keep its output shapes, and compute exactly what
the original computes with the removed channels silenced (detectors: region by region, on
the inputs each region receives; their box outputs must keep their form).

Models too large or slow for CI are marked ``slow`` (run them with ``pytest -m slow`` or
``benchmarks/zoo.py``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import slimprune
from slimprune._regions import _record_inputs
from tests.helpers import assert_close, outputs, run
from tests.models import calibrated

CLASSIFICATION = torchvision.models.list_models(module=torchvision.models)
SEGMENTATION = torchvision.models.list_models(module=torchvision.models.segmentation)
DETECTION = torchvision.models.list_models(module=torchvision.models.detection)
VIDEO = torchvision.models.list_models(module=torchvision.models.video)

# Over ~30M parameters or over ~20 s here: benchmark territory.
SLOW = {
    "convnext_base", "convnext_large", "convnext_small", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_l", "efficientnet_v2_m", "maxvit_t", "regnet_x_16gf", "regnet_x_32gf", "regnet_x_8gf",
    "regnet_y_128gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_8gf", "resnet101", "resnet152",
    "resnext101_32x8d", "resnext101_64x4d", "swin_b", "swin_s", "swin_v2_b", "swin_v2_s", "vgg11", "vgg11_bn",
    "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16",
    "vit_l_32", "wide_resnet101_2", "wide_resnet50_2", "densenet161", "densenet169", "densenet201",
    "efficientnet_b3", "efficientnet_b4", "regnet_y_3_2gf", "alexnet", "inception_v3",
    "deeplabv3_resnet101", "fcn_resnet101", "deeplabv3_resnet50", "fcn_resnet50",
    # detection: every one but the two mobile detectors; video: all but the smallest
    *(d for d in DETECTION if d not in ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")),
    *(v for v in VIDEO if v != "r2plus1d_18"),
}
SIZE = {"inception_v3": 299, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224,
        "maxvit_t": 224, "swin_v2_t": 64}
# Video clips (frames, side): MViT's position embeddings fix 16x224; S3D pools (2, 7, 7) at stride 32.
CLIP = {"mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224), "s3d": (16, 224)}


def build(name: str) -> nn.Module:
    """A torchvision model with random weights (detectors at 320 px, the mobile one's size)."""
    if name in SEGMENTATION:
        kw = {} if name.startswith("lraspp") else {"aux_loss": True}
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kw)
    if name in DETECTION:
        kw = {} if name.startswith("ssd") else {"min_size": 320, "max_size": 320}
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, **kw)
    return torchvision.models.get_model(name, weights=None)


def example_input(name: str, seed: int = 1) -> Any:
    """The model's input: a batch of 2 (images, clips), or a list of 2 images for detectors."""
    g = torch.Generator().manual_seed(seed)
    if name in DETECTION:
        return [torch.rand(3, 320, 288, generator=g), torch.rand(3, 256, 320, generator=g)]
    if name in VIDEO:
        frames, side = CLIP.get(name, (8, 64))
        return torch.randn(2, 3, frames, side, side, generator=g)
    size = SIZE.get(name, 64)
    return torch.randn(2, 3, size, size, generator=g)


def detection_targets(name: str, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """One box per image (with a mask or keypoints where the model needs them): train mode."""
    targets = []
    for img in images:
        h, w = img.shape[-2:]
        t = {"boxes": torch.tensor([[20.0, 30.0, 0.6 * w, 0.7 * h]]), "labels": torch.tensor([1])}
        if name.startswith("maskrcnn"):
            t["masks"] = torch.zeros(1, h, w, dtype=torch.uint8)
            t["masks"][0, 30:int(0.7 * h), 20:int(0.6 * w)] = 1
        if name.startswith("keypointrcnn"):
            t["keypoints"] = torch.cat([torch.rand(1, 17, 2) * torch.tensor([0.5 * w, 0.5 * h]) + 25,
                                        torch.ones(1, 17, 1)], 2)
        targets.append(t)
    return targets


def _check(model: nn.Module, x: torch.Tensor) -> None:
    model = calibrated(model, x)
    original_shapes = [t.shape for t in run(model, (x,))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False, allow_inexact=False)
    assert plan.removed_channels > 0 and plan.params_after < plan.params_before
    small = slimprune.apply(model, plan)
    ref = slimprune.silence(model, plan)
    got = run(small, (x,))
    assert [t.shape for t in got] == original_shapes
    want = run(ref, (x,))
    scale = max(t.abs().max().item() for t in want)
    assert_close(want, got, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
    # train mode: batch statistics, dropout off (p is set to 0 on copies), aux heads included
    ref_t, small_t = copy.deepcopy(ref), copy.deepcopy(small)
    for m in list(ref_t.modules()) + list(small_t.modules()):
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    torch.manual_seed(0)
    want_t = run(ref_t, (x,), train=True)
    torch.manual_seed(0)
    got_t = run(small_t, (x,), train=True)
    scale = max(t.abs().max().item() for t in want_t)
    # batch statistics over two samples amplify float rounding (pruned convs sum fewer
    # terms) through deep nets: resnet152 reaches 8e-5 of the output scale
    assert_close(want_t, got_t, rtol=1e-3, atol=1e-3 * max(scale, 1.0))
    assert sum(p.numel() for p in small.parameters()) == plan.params_after
    if any(not g.exact for g in slimprune.analyze(model, x, warn=False).groups):
        # channels under LayerNorm/GroupNorm: prunable too, not exactly; the model must still run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", slimprune.UnsupportedOpWarning)
            loose = slimprune.prune(model, 0.5, example_inputs=x)
        assert [t.shape for t in run(loose, (x,))] == original_shapes
        assert [t.shape for t in run(copy.deepcopy(loose), (x,), train=True)] == [t.shape for t in want_t]


def _params(name: str) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in name]


@pytest.mark.parametrize("name", _params(CLASSIFICATION + SEGMENTATION + VIDEO))
def test_model_prunes_exactly(name):
    _check(build(name), example_input(name))


def calibrated_detector(model: nn.Module) -> nn.Module:
    """Random norm affines and BN statistics from a batch, through the backbone (the detector
    itself wants targets in train mode; the heads keep their initial statistics)."""
    calibrated(model.backbone, torch.randn(2, 3, 320, 320, generator=torch.Generator().manual_seed(0)))
    return model.eval()


def check_detector(name: str, model: nn.Module) -> slimprune.PruningPlan:
    images = example_input(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.5, example_inputs=(images,), fold_bias=False, allow_inexact=False)
    assert plan.regions and plan.removed_channels > 0 and plan.params_after < plan.params_before
    small = slimprune.apply(model, plan)
    assert sum(p.numel() for p in small.parameters()) == plan.params_after
    ref = slimprune.silence(model, plan)
    assert_regions_match(ref, small, plan, (images,))
    with torch.no_grad():
        dets = small.eval()(images)
    assert len(dets) == len(images)
    for det in dets:
        assert det["boxes"].dim() == 2 and det["boxes"].shape[1] == 4
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]
    losses = copy.deepcopy(small).train()(images, detection_targets(name, images))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    return plan


def assert_regions_match(ref: nn.Module, small: nn.Module, plan: slimprune.PruningPlan, inputs: tuple) -> None:
    """Every pruned region, fed what it receives inside the silenced model, computes the same."""
    received = _record_inputs(ref, inputs, {path for path, _ in plan.regions})
    for path, _ in plan.regions:
        with torch.no_grad():
            want = outputs(ref.get_submodule(path).eval()(*received[path]))
            got = outputs(small.get_submodule(path).eval()(*received[path]))
        scale = max((t.abs().max().item() for t in want if t.numel()), default=1.0)
        assert_close(want, got, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("name", _params(DETECTION))
def test_detector_prunes_region_by_region_exactly(name):
    torch.manual_seed(0)
    check_detector(name, calibrated_detector(build(name)))
