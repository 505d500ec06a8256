"""EagleEye model, anchors, matching, loss and post-processing (examples/eagleeye)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn
from torchvision.ops import box_iou

from examples.eagleeye.anchors import AnchorSpec, decode, encode, generate_anchors, match
from examples.eagleeye.detect import DetectConfig, detect
from examples.eagleeye.loss import LossConfig, detection_loss
from examples.eagleeye.model import STRIDES, EagleEye, _flatten_level, feature_sizes

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> EagleEye:
    torch.manual_seed(0)
    return EagleEye().eval()


def _faces(draw_boxes: list[tuple[float, float, float, float]]) -> torch.Tensor:
    return torch.tensor(draw_boxes, dtype=torch.float32).reshape(-1, 4)


@pytest.mark.parametrize("height,width", [(128, 128), (96, 160), (75, 133)])
def test_traces_with_fx_and_outputs_have_anchor_shapes(model: EagleEye, height: int, width: int) -> None:
    """symbolic_trace works, the traced module computes the same, and A matches the anchors."""
    gm = fx.symbolic_trace(model)
    x = torch.rand(2, 3, height, width)
    logits, deltas = model(x)
    traced_logits, traced_deltas = gm(x)
    num_anchors = generate_anchors(height, width).shape[0]
    assert logits.shape == (2, num_anchors, 1)
    assert deltas.shape == (2, num_anchors, 4)
    assert torch.equal(traced_logits, logits) and torch.equal(traced_deltas, deltas)


def test_every_conv_but_the_prediction_convs_feeds_a_batchnorm(model: EagleEye) -> None:
    """Network slimming needs a γ per channel: each conv's only user is a BatchNorm2d."""
    gm = fx.symbolic_trace(model)
    modules = dict(gm.named_modules())
    prediction = {f"heads.{i}.{name}" for i in range(len(STRIDES)) for name in ("cls", "box")}
    convs = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)]
    assert len(convs) > 40
    for node in convs:
        users = list(node.users)
        if node.target in prediction:
            assert modules[node.target].bias is not None
            continue
        assert len(users) == 1 and isinstance(modules[users[0].target], nn.BatchNorm2d), node.target


def test_spatial_convs_are_depthwise_after_the_first_and_the_stem_downsamples_three_times(model: EagleEye) -> None:
    """Convolution factorisation and successive stride-2 convolutions at the start."""
    spatial = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    first_name, first = spatial[0]
    assert first_name == "stem.0.0" and first.groups == 1
    assert all(m.groups == m.in_channels == m.out_channels for _, m in spatial[1:])
    stem_strides = [m.stride[0] for n, m in spatial if n.startswith("stem.")]
    assert stem_strides == [2, 2, 2]


def test_model_is_lightweight_and_width_mult_scales_it() -> None:
    """Well under a million parameters; width_mult 0.5 roughly quarters them."""
    full = sum(p.numel() for p in EagleEye().parameters())
    half = sum(p.numel() for p in EagleEye(width_mult=0.5).parameters())
    assert 50_000 < full < 1_000_000
    assert 0.2 < half / full < 0.4


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="num_anchors"):
        EagleEye(num_anchors=(2, 2))
    with pytest.raises(ValueError, match="activation"):
        EagleEye(activation="gelu")


def test_flatten_order_matches_anchor_order() -> None:
    """A level's outputs flatten in the order generate_anchors lists anchors (row, column, anchor)."""
    spec = AnchorSpec(strides=(8,), sizes=((16, 24),))
    h, w = feature_sizes(40, 56, spec.strides)[0]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    per_anchor = [
        torch.stack([(xs + 0.5) * 8, (ys + 0.5) * 8, torch.full_like(xs, size, dtype=torch.float32), xs * 0.0])
        for size in (16, 24)
    ]
    level = torch.cat(per_anchor).unsqueeze(0).float()  # [1, 2*4, h, w]
    flat = _flatten_level(level, 4)[0]
    anchors = generate_anchors(40, 56, spec)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.equal(flat[:, :2], centres)
    assert torch.equal(flat[:, 2], anchors[:, 2] - anchors[:, 0])


def test_anchor_grid_matches_strides_and_sizes() -> None:
    """Anchors are centred on cells at (j + 0.5) * stride, with the spec's sizes, finest first."""
    anchors = generate_anchors(64, 64)
    counts = [h * w * 2 for h, w in feature_sizes(64, 64)]
    assert anchors.shape[0] == sum(counts) == 2 * (64 + 16 + 4 + 1)
    first = anchors[:2]
    assert first.tolist() == [[-4.0, -4.0, 12.0, 12.0], [-8.0, -8.0, 16.0, 16.0]]
    last = anchors[-1]
    assert last.tolist() == [32 - 96.0, 32 - 96.0, 32 + 96.0, 32 + 96.0]


box_strategy = st.tuples(
    st.floats(0, 200), st.floats(0, 200), st.floats(4, 180), st.floats(4, 180)
).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy, min_size=1, max_size=12))
def test_encode_decode_round_trip(boxes: list[tuple[float, float, float, float]]) -> None:
    """decode(encode(b, a), a) == b for any box and anchor."""
    anchors = generate_anchors(256, 256)
    gt = _faces(boxes)
    picks = torch.arange(len(boxes)) * 97 % anchors.shape[0]
    restored = decode(encode(gt, anchors[picks]), anchors[picks])
    torch.testing.assert_close(restored, gt, atol=1e-3, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy, min_size=1, max_size=30))
def test_matching_gives_every_face_its_own_positive_anchor(boxes: list[tuple[float, float, float, float]]) -> None:
    """Every face (even tiny or crowded ones) ends up the target of at least one positive anchor."""
    anchors = generate_anchors(256, 256)
    gt = _faces(boxes)
    result = match(anchors, gt)
    assigned = set(result.matched[result.labels == 1].tolist())
    assert assigned == set(range(len(boxes)))


def test_matching_thresholds_and_the_forced_anchor_of_two_faces_sharing_a_best_anchor() -> None:
    """IoU >= pos_iou is positive, < neg_iou negative; two identical tiny faces get two anchors."""
    anchors = generate_anchors(128, 128)
    gt = torch.tensor([[30.0, 30.0, 36.0, 36.0], [30.0, 30.0, 36.0, 36.0], [40.0, 40.0, 104.0, 104.0]])
    result = match(anchors, gt, pos_iou=0.5, neg_iou=0.4)
    iou = box_iou(gt, anchors).max(dim=0).values
    assert bool((result.labels[iou >= 0.5] == 1).all())
    assert set(result.matched[result.labels == 1].tolist()) == {0, 1, 2}
    forced = (result.labels == 1) & (iou < 0.5)
    assert int(forced.sum()) >= 2  # both tiny faces are far below the threshold
    assert int((result.labels[(iou < 0.4) & ~forced] != 0).sum()) == 0


def test_empty_image_gives_only_negatives_and_a_finite_loss(model: EagleEye) -> None:
    x = torch.rand(2, 3, 64, 64)
    logits, deltas = model(x)
    anchors = generate_anchors(64, 64)
    terms = detection_loss(logits, deltas, anchors, [torch.zeros(0, 4), torch.tensor([[8.0, 8.0, 40.0, 40.0]])])
    assert torch.isfinite(terms.total) and terms.num_pos >= 1
    assert bool((match(anchors, torch.zeros(0, 4)).labels == 0).all())


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_perfect_predictions_have_near_zero_box_loss_and_detect_recovers_the_faces(box_loss: str) -> None:
    """Deltas equal to the encoded targets and confident logits on positives: boxes come back exactly."""
    anchors = generate_anchors(128, 128)
    gt = torch.tensor([[10.0, 12.0, 42.0, 50.0], [70.0, 60.0, 120.0, 118.0]])
    result = match(anchors, gt)
    positive = result.labels == 1
    deltas = encode(gt[result.matched], anchors).unsqueeze(0)
    logits = torch.where(positive, 12.0, -12.0).reshape(1, -1, 1)
    terms = detection_loss(logits, deltas, anchors, [gt], LossConfig(box_loss=box_loss))
    assert float(terms.box) < 1e-4
    found = detect(logits, deltas, anchors, (128, 128), DetectConfig(nms_iou=0.4))[0]
    assert found.shape == (2, 5)
    torch.testing.assert_close(found[:, :4].sort(dim=0).values, gt.sort(dim=0).values, atol=1e-3, rtol=0)
