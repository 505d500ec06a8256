"""Tiny models shared by the tests, each with a one-line docstring.

``SpecNet`` builds a network from a *program* (a list of op tuples); the hypothesis
strategy in ``tests/strategies.py`` draws programs, so the property tests cover arbitrary
DAGs of convs, residual adds, concats, splits, depthwise/grouped convs, SE gates,
FPN-style up-and-merge paths, channel shuffles, literal reshapes, several outputs, in-place
writes into views, elementwise ops with a tensor second operand, and split pieces through
parameter-free ops.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
    "leaky": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer random (non-trivial) affine parameters and running stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def calibrated(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random norm affines, then BN running statistics set from one train-mode forward of ``x``
    (so activations of a random-init model stay O(1)); returned in eval mode.

    Where :func:`randomize_bn` draws the statistics, this measures them: the zoo tests and
    benchmarks (torchvision, timm) use it on models deep enough to blow random statistics up.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            w, b = getattr(m, "weight", None), getattr(m, "bias", None)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)) and w is not None:
                w.copy_(torch.rand(w.shape, generator=g) + 0.5)
                if b is not None:
                    b.copy_(torch.rand(b.shape, generator=g) - 0.5)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.momentum = 1.0
        model.train()
        model(x)
        for m in bns:
            m.momentum = 0.1
    return model.eval()


class ConvBNAct(nn.Sequential):
    """Conv, BatchNorm, activation."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: str = "relu",
                 padding_mode: str = "zeros") -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False, padding_mode=padding_mode),
            nn.BatchNorm2d(cout),
            ACTS[act](),
        )


class SpecNet(nn.Module):
    """A network interpreted from a program of op tuples (see tests/strategies.py)."""

    def __init__(self, program: list[tuple[Any, ...]], cin: int = 3, size: int = 16, classes: int = 5,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        self.program = [tuple(op) for op in program]
        self.blocks = nn.ModuleList()
        pm = padding_mode
        c, h = cin, size
        for op in self.program:
            kind = op[0]
            if kind == "cba":
                _, cout, k, stride, groups, act = op
                self.blocks.append(ConvBNAct(c, cout, k, stride, groups, act, pm))
                c, h = cout, (h + 2 * (k // 2) - k) // stride + 1
            elif kind == "res":
                _, cout, stride, act = op
                blk = nn.ModuleDict({
                    "a": ConvBNAct(c, cout, 3, stride, 1, act, pm),
                    "b": nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False, padding_mode=pm), nn.BatchNorm2d(cout)),
                    "act": ACTS[act](),
                })
                if stride != 1 or cout != c:
                    blk["proj"] = nn.Sequential(nn.Conv2d(c, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                self.blocks.append(blk)
                c, h = cout, (h - 1) // stride + 1
            elif kind == "cat":
                _, c1, c2, act = op
                self.blocks.append(nn.ModuleList([ConvBNAct(c, c1, 1, 1, 1, act, pm), ConvBNAct(c, c2, 3, 1, 1, act, pm)]))
                c = c1 + c2
            elif kind == "split":
                _, first, mode, act = op
                self.blocks.append(ConvBNAct(first, first, 3, 1, 1, act, pm))
            elif kind == "se":
                _, hidden, mode = op
                if mode == "conv":
                    self.blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, hidden, 1), nn.ReLU(),
                                                     nn.Conv2d(hidden, c, 1), nn.Sigmoid()))
                else:
                    self.blocks.append(nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, c), nn.Sigmoid()))
            elif kind == "fpn":
                _, cmid, mode, act = op
                self.blocks.append(nn.ModuleDict({
                    "down": ConvBNAct(c, cmid, 3, 2, 1, act, pm),
                    "lat": ConvBNAct(c, cmid, 1, 1, 1, "identity", pm),
                    "up": nn.Upsample(scale_factor=2, mode="nearest"),
                }))
                c = cmid if mode == "add" else c + cmid
            elif kind == "dw":
                _, mult, act = op
                self.blocks.append(ConvBNAct(c, c * mult, 3, 1, c, act, pm))
                c = c * mult
            elif kind == "write":  # v = x[:, :k]; v op= f(x): a write into a view of x
                _, k, how = op
                self.blocks.append(ConvBNAct(c, k, 1, 1, 1, "identity", pm))
            elif kind == "operand":  # x = clamp(x, min=f(x)) and others: a tensor second operand
                self.blocks.append(ConvBNAct(c, c, 1, 1, 1, "identity", pm))
            elif kind == "piece":  # a split piece through an op without parameters, then a concat
                self.blocks.append(nn.Identity())
            elif kind in ("shuffle", "view", "out", "pool"):
                self.blocks.append(nn.Identity() if kind != "out" else nn.Conv2d(c, 2, 1))
                if kind == "pool":
                    h = h // 2
            else:
                raise ValueError(f"unknown op {kind!r}")
        self.out_channels, self.out_size = c, h
        self.flatten_head = h <= 4
        self.head = nn.Linear(c * h * h if self.flatten_head else c, classes)

    def forward(self, x: torch.Tensor):
        outs = []
        for op, blk in zip(self.program, self.blocks):
            kind = op[0]
            if kind == "cba":
                x = blk(x)
            elif kind == "res":
                y = blk["b"](blk["a"](x))
                s = blk["proj"](x) if "proj" in blk else x
                x = blk["act"](y + s)
            elif kind == "cat":
                x = torch.cat([blk[0](x), blk[1](x)], 1)
            elif kind == "split":
                _, first, mode, _ = op
                if mode == "chunk":
                    a, b = x.chunk(2, 1)
                else:
                    a, b = torch.split(x, [first, x.shape[1] - first], 1)
                x = torch.cat([b, blk(a)], 1)
            elif kind == "se":
                if op[2] == "conv":
                    x = x * blk(x)
                else:
                    x = x * blk(x.mean((2, 3)))[:, :, None, None]
            elif kind == "fpn":
                y = blk["up"](blk["down"](x))
                x = blk["lat"](x) + y if op[2] == "add" else torch.cat([x, y], 1)
            elif kind == "dw":
                x = blk(x)
            elif kind == "shuffle":
                n, c, h, w = x.shape
                x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            elif kind == "view":
                n = x.shape[0]
                c, h = op[1], op[2]
                x = x.view(n, c, h * h).view(n, c, h, h)
            elif kind == "pool":
                x = F.max_pool2d(x, 2)
            elif kind == "write":
                _, k, how = op
                v = x[:, :k]
                if how == "+=":
                    v += blk(x)
                elif how == "*=":
                    v *= torch.sigmoid(blk(x))
                elif how == "add_":
                    v.add_(blk(x))
                else:  # "clamp_"
                    v.clamp_(max=0.5)
            elif kind == "operand":
                y = blk(x)
                if op[1] == "clamp":
                    x = torch.clamp(x, min=y)
                elif op[1] == "pow":
                    x = x.abs().pow(torch.sigmoid(y) + 0.5)
                else:  # "maximum"
                    x = torch.maximum(x, y)
            elif kind == "piece":
                _, first, how = op
                a, b = torch.split(x, [first, x.shape[1] - first], 1)
                if how == "maxpool":
                    a = F.max_pool2d(a, 3, 1, 1)
                elif how == "avgpool":
                    a = F.avg_pool2d(a, 3, 1, 1)
                elif how == "reflect":
                    a = F.pad(a, (1, 1, 1, 1), mode="reflect")[..., 1:-1, 1:-1]
                else:  # "bilinear"
                    a = F.interpolate(a, scale_factor=2, mode="bilinear")[..., ::2, ::2]
                x = torch.cat([b, a], 1)
            elif kind == "out":
                outs.append(blk(x))
        if self.flatten_head:
            logits = self.head(x.flatten(1))
        else:
            logits = self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return (logits, *outs)


class TinyResNet(nn.Module):
    """A CIFAR-sized ResNet: stem, two residual stages with projection, pool, Linear."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.net = SpecNet([("cba", width, 3, 1, 1, "relu"), ("res", width, 1, "relu"), ("res", 2 * width, 2, "relu"),
                            ("res", 2 * width, 1, "relu")], size=32, classes=classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]
