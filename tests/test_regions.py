"""Models fx cannot trace whole (torchvision detectors) are pruned region by region."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

import slimprune
from tests.helpers import assert_close, outputs
from tests.models import randomize_bn


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    return randomize_bn(m).eval()


@pytest.fixture(scope="module")
def detector_plan(detector):
    return slimprune.plan(detector, 0.5, fold_bias=False)


def test_detector_plan_names_the_regions_it_pruned_and_the_ones_it_could_not(detector_plan):
    paths = [p for p, _ in detector_plan.regions]
    # rpn.head loops over its list of feature maps: traced while running it
    assert {"backbone", "rpn.head", "roi_heads.box_head"} <= set(paths)
    assert dict(detector_plan.regions)["rpn.head"].removed_channels > 0
    assert detector_plan.removed_channels > 0
    assert "fx cannot trace FasterRCNN whole" in detector_plan.notes[0]
    assert any("nothing prunable" in n and "roi_heads.box_predictor" in n for n in detector_plan.notes)


def test_pruned_detector_still_returns_boxes_of_the_right_form(detector, detector_plan):
    small = slimprune.apply(detector, detector_plan)
    assert sum(p.numel() for p in small.parameters()) == detector_plan.params_after < detector_plan.params_before
    with torch.no_grad():
        out = small([torch.rand(3, 240, 200), torch.rand(3, 200, 260)])
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].dim() == 2 and det["boxes"].shape[1] == 4
        assert det["scores"].shape == det["labels"].shape == det["boxes"].shape[:1]


def test_pruned_regions_compute_what_the_silenced_regions_compute(detector, detector_plan):
    small = slimprune.apply(detector, detector_plan)
    ref = slimprune.silence(detector, detector_plan)
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        assert_close(outputs(ref.backbone(x)), outputs(small.backbone(x)), atol=1e-4)
        feats = torch.randn(5, 256, 7, 7)
        assert_close(outputs(ref.roi_heads.box_head(feats)), outputs(small.roi_heads.box_head(feats)), atol=1e-4)


def test_region_plan_survives_json(detector, detector_plan):
    again = slimprune.PruningPlan.from_json(detector_plan.to_json())
    assert again == detector_plan
    assert sum(p.numel() for p in slimprune.apply(detector, again).parameters()) == detector_plan.params_after


class _BranchesOnValues(torch.nn.Module):
    """A root fx cannot trace (it branches on a tensor's value) around a traceable body."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))

    def forward(self, x):
        y = self.body(x)
        return y * 2 if y.mean() > 0 else y


def test_falling_back_to_regions_warns_with_the_trace_error_and_the_regions():
    model = randomize_bn(_BranchesOnValues()).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.warns(slimprune.RegionFallbackWarning, match=r"_BranchesOnValues whole .*\[body\]") as caught:
        plan = slimprune.plan(model, 0.5, example_inputs=x)
    assert [p for p, _ in plan.regions] == ["body"] and plan.removed_channels > 0
    with pytest.warns(slimprune.RegionFallbackWarning) as through_prune:
        slimprune.prune(model, 0.5, example_inputs=x)
    # The warning names the user's line, whichever entry point it came through.
    assert {w.filename for w in [*caught, *through_prune] if w.category is slimprune.RegionFallbackWarning} == {__file__}


def test_a_model_traced_whole_gives_no_region_warning():
    model = randomize_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.RegionFallbackWarning)
        plan = slimprune.plan(model.eval(), 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    assert not plan.regions


def test_protect_covers_a_region_by_its_own_name_or_a_module_above_it(detector):
    plan = slimprune.plan(detector, 0.5, fold_bias=False, protect=["rpn", "roi_heads.box_head"])
    paths = {p for p, _ in plan.regions}
    assert "backbone" in paths
    assert not paths & {"rpn.head", "roi_heads.box_head"}
    assert all(not (s.module.startswith("rpn.") or s.module.startswith("roi_heads.box_head")) for s in plan.slices)


def test_protects_whole_matches_the_region_and_its_ancestors_only():
    from slimprune._options import protects_whole

    assert protects_whole(("",), "rpn.head")
    assert protects_whole(("rpn",), "rpn.head") and protects_whole(("rpn.head",), "rpn.head")
    assert not protects_whole(("rpn.head.conv",), "rpn.head")  # inside the region: planned, module kept
    assert not protects_whole(("rp",), "rpn.head")  # a name prefix is not a module above it
    assert not protects_whole((torch.nn.Conv2d,), "rpn.head")
