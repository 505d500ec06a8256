"""Every torchvision classification and segmentation model, pruned at ratio 0.5, must run
in eval and train mode, keep its output shapes, and compute exactly what the original
computes with the removed channels silenced.

Models too large or slow for CI are marked ``slow`` (run them with ``pytest -m slow`` or
``benchmarks/zoo.py``).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import slimprune
from tests.helpers import assert_close, run

CLASSIFICATION = torchvision.models.list_models(module=torchvision.models)
SEGMENTATION = torchvision.models.list_models(module=torchvision.models.segmentation)

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
}
SIZE = {"inception_v3": 299, "vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224,
        "maxvit_t": 224, "swin_v2_t": 64}


def calibrated(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random norm affines, then BN running stats set from a batch (so activations stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.momentum = 1.0
        model.train()
        model(x)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def _check(model: nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
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


@pytest.mark.parametrize("name", _params(CLASSIFICATION))
def test_classification_model_prunes_exactly(name):
    model = torchvision.models.get_model(name, weights=None)
    _check(model, SIZE.get(name, 64))


@pytest.mark.parametrize("name", _params(SEGMENTATION))
def test_segmentation_model_prunes_exactly(name):
    kw = {} if name.startswith("lraspp") else {"aux_loss": True}
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kw)
    _check(model, 64)
