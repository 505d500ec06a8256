"""Hand-written architectures from real detectors and segmenters, each pruned exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced
from tests.models import randomize_bn


def cbs(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    """Conv-BN-SiLU, the YOLO building block."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    """YOLO bottleneck with a residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = cbs(c, c, 3), cbs(c, c, 3)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """Ultralytics-style C2f: chunk in two, chain bottlenecks on one half, concat everything."""

    def __init__(self, cin: int, cout: int, n: int = 2):
        super().__init__()
        self.c = cout // 2
        self.cv1 = cbs(cin, 2 * self.c)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = cbs((2 + n) * self.c, cout)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        ys = [a, b]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained max-pools concatenated."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cv1, self.cv2 = cbs(cin, cin // 2), cbs(cin // 2 * 4, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat([x, y1, y2, self.pool(y2)], 1))


class TinyYOLO(nn.Module):
    """Backbone of C2f blocks, an SPPF, and a detection head at two strides."""

    def __init__(self):
        super().__init__()
        self.stem, self.c1, self.down, self.c2, self.sppf = cbs(3, 8, 3, 2), C2f(8, 16), cbs(16, 24, 3, 2), C2f(24, 24), SPPF(24, 24)
        self.head_p3, self.head_p4 = nn.Conv2d(16, 3 * 6, 1), nn.Conv2d(24, 3 * 6, 1)

    def forward(self, x):
        p3 = self.c1(self.stem(x))
        p4 = self.sppf(self.c2(self.down(p3)))
        n = x.shape[0]
        return torch.cat([self.head_p3(p3).view(n, 18, -1), self.head_p4(p4).view(n, 18, -1)], 2)


class UNet(nn.Module):
    """Two-level U-Net: strided encoders, ConvTranspose decoders, skip concatenations."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2, self.e3 = cbs(3, 8, 3), cbs(8, 16, 3, 2), cbs(16, 32, 3, 2)
        self.up2 = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU())
        self.d2 = cbs(32, 16, 3)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, 2), nn.BatchNorm2d(8), nn.ReLU())
        self.d1 = cbs(16, 8, 3)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s1 = self.e1(x)
        s2 = self.e2(s1)
        y = self.up2(self.e3(s2))
        y = self.d2(torch.cat([y, s2], 1))
        y = self.up1(y)
        return self.out(self.d1(torch.cat([s1, y], 1)))


class Dense(nn.Module):
    """DenseNet-style block: every layer sees the concatenation of all before it."""

    def __init__(self, growth: int = 4, layers: int = 4):
        super().__init__()
        self.stem = cbs(3, 8, 3)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + i * growth), nn.ReLU(), nn.Conv2d(8 + i * growth, growth, 3, padding=1, bias=False))
            for i in range(layers))
        self.head = nn.Linear(8 + layers * growth, 5)

    def forward(self, x):
        feats = self.stem(x)
        for layer in self.layers:
            feats = torch.cat([feats, layer(feats)], 1)
        return self.head(F.adaptive_avg_pool2d(feats, 1).flatten(1))


class InceptionHead(nn.Module):
    """Inception-style branches concatenated, then flattened straight into a Linear."""

    def __init__(self):
        super().__init__()
        self.b1, self.b3, self.b5 = cbs(3, 4, 1), cbs(3, 6, 3), cbs(3, 2, 5)
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbs(3, 3, 1))
        self.fc = nn.Linear(15 * 4 * 4, 7)

    def forward(self, x):
        y = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)
        return self.fc(torch.flatten(F.max_pool2d(y, 2), 1))


@pytest.mark.parametrize("make, size", [(TinyYOLO, 32), (UNet, 16), (Dense, 8), (InceptionHead, 8)],
                         ids=["yolo-c2f-sppf", "unet", "densenet", "inception-flatten-linear"])
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_real_world_block_prunes_exactly(make, size, ratio):
    torch.manual_seed(0)
    model = randomize_bn(make()).eval()
    x = torch.randn(2, 3, size, size)
    plan = slimprune.plan(model, ratio, example_inputs=x, fold_bias=False)
    assert plan.removed_channels > 0 and not plan.barriers
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_c2f_halves_are_pruned_independently_and_the_chunk_becomes_a_split():
    torch.manual_seed(0)
    model = randomize_bn(TinyYOLO()).eval()
    x = torch.randn(2, 3, 32, 32)
    plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)
    kept = plan.kept("c1.cv1.0", "weight", 0)
    halves = [sum(1 for i in kept if i < 8), sum(1 for i in kept if i >= 8)]
    assert sum(halves) < 16
    small = slimprune.apply(model, plan)
    # chunk(2) of the pruned tensor would cut it in equal halves; it became a split with the kept
    # sizes, of the output of c1.cv1 (nothing edited inside it: called as a module)
    code = small.code.replace("torch.split", "torch.functional.split")
    assert "c1_cv1 = self.c1.cv1(" in code and f"torch.functional.split(c1_cv1, {halves}, 1)" in code
