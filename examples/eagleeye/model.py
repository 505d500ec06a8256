"""EagleEye, a lightweight multi-scale face detector, reconstructed from its paper.

Zhao, Liang, Zhao, Tang, Wang: *Real-Time Multi-Scale Face Detector on Embedded
Devices*, Sensors 19(9):2158, 2019. The paper names five design strategies but no public
code exists and layer widths are not given in the text we could read, so everything below
is a reconstruction. Each choice is written down here; ``docs/eagleeye.md`` is built from
this docstring.

Design choices
--------------
1. **Convolution factorisation.** Every 3x3 convolution except the very first one is a
   depthwise-separable pair: a depthwise 3x3 convolution (``groups=channels``) followed by a
   pointwise 1x1 convolution, as in MobileNet. The first convolution sees only 3 input
   channels, where factorising saves nothing.
2. **Successive downsampling at the very start.** The first three convolutions all have
   stride 2 (a plain 3x3 conv to 16 channels, then two depthwise-separable convs to 32 and
   64 channels), so the network reaches stride 8 after three layers and spends almost no
   computation at full resolution, in the spirit of FaceBoxes' "rapidly digested"
   convolutional layers.
3. **Context module on every predicting layer.** The paper uses the head-shoulder region
   around a face as context. We give each predicting layer a three-branch module whose
   outputs are concatenated (channels ``C/2 + C/4 + C/4 = C``):

   * branch ``face``: depthwise 3x3, dilation 1, then pointwise to ``C/2``: the face itself;
   * branch ``head``: depthwise 3x3, dilation 2, then pointwise to ``C/4``: a ring around the
     face about twice its size (hair, ears, chin);
   * branch ``shoulder``: depthwise 5x3 (taller than wide), dilation 2, then pointwise to
     ``C/4``: a vertically elongated window that reaches the neck and shoulders below the
     face (and the top of the head above), the head-shoulder context.

   The context module feeds only the prediction convs; the backbone continues from its
   input, as in SSH-style context modules.
4. **Information-preserving activation.** The paper argues that ReLU throws away the
   negative half of every response, which hurts a network this narrow. The text we could
   read does not say which function it adopts, so we chose one that keeps negative
   responses: LeakyReLU with slope 0.1. It is a bijection, so no information is lost, it
   needs no parameters, and it costs what ReLU costs. A per-channel PReLU (He et al. 2015)
   is the other natural reading and is available as ``activation="prelu"``; we did not
   make it the default because its backward pass took a quarter of the whole training
   step on CPU (torch 2.14 profiler, 2 cores), i.e. about 1.4x longer training for the same
   schedule. ``"relu"`` is there for ablations.
5. **Focal loss** is in ``loss.py``; the classification bias is initialised to the prior
   0.01 so that training starts from "background everywhere" (Lin et al. 2017).

Other choices:

* **BatchNorm after every convolution**, including depthwise ones and all context-module
  branches, so every channel has a BatchNorm scale γ for network slimming to act on. The
  prediction convs (1x1, to ``anchors x 1`` logits and ``anchors x 4`` box deltas) are the
  only convolutions without BatchNorm; they keep a bias.
* **Four predicting layers at strides 8, 16, 32 and 64**, with channel widths 64, 96, 128
  and 160 (times ``width_mult``, rounded to a multiple of 8 so that the context split stays
  whole). Each level has two blocks (the first of which downsamples, except at stride 8
  where the stem already did); stride 64 has one.
* **Anchors** (``anchors.py``): ``num_anchors`` square anchors per location, by default two
  per level at sizes (16, 24), (32, 48), (64, 96), (128, 192) pixels: a 1.5x spacing, so a
  face of any size between 11 and 280 pixels has an anchor of similar scale.
* **Input**: RGB floats in [0, 1], any height and width; every stride-2 conv uses padding 1,
  so a side of ``n`` pixels gives ``ceil(n / 2)`` at the next level (``feature_sizes``). The
  stem's BatchNorm absorbs the input scaling, so no mean/std normalisation is applied.
* **Outputs** are two tensors built only with ``permute``/``reshape``/``cat``, so the model
  traces with ``torch.fx.symbolic_trace``: ``cls_logits`` ``[B, A, 1]`` and ``box_deltas``
  ``[B, A, 4]``, where ``A`` runs over levels (stride 8 first), then rows, then columns, then
  anchors at a location: the order ``anchors.generate_anchors`` produces.
* **No residual connections**: the paper does not mention any, and a plain chain keeps every
  channel prunable on its own.

Measured (torch 2.14, ``width_mult=1``; FLOPs from ``torch.utils.flop_counter.FlopCounterMode``,
which counts 2 per multiply-add of convolutions and ignores BatchNorm and activations):

=====================  ==========  =======================================
input                  GFLOPs      note
=====================  ==========  =======================================
192 x 192              0.046       default training crop size
384 x 384              0.183       default evaluation size (SynthFaces)
512 x 512              0.326       the paper's training size
480 x 640 (VGA)        0.382       the size peer detectors quote
=====================  ==========  =======================================

Parameters: 163,144 (166,472 with ``activation="prelu"``), 43 BatchNorm layers with 3,328
channels in all. Trained for 12 epochs on the 1,200 SynthFaces (version 2) training images
at 192 px (250 s to 330 s of training on 2 CPU cores shared with other work, 45-60 images/s
when the cores are free), it reaches AP 0.902 / 0.900 / 0.842 (easy / medium / hard) on
SynthFaces val at 384 px with the pipeline's recipe (SGD, lr 0.05, GIoU box loss, BatchNorm
γ starting at 0.5, seed 0); with the smooth-L1 box loss and γ starting at 1 it reached
0.770 / 0.762 / 0.729, and with AdamW (lr 3e-3, weight decay 0.05, smooth L1)
0.638 / 0.700 / 0.694. Expect a few points of seed-to-seed spread (GIoU, γ = 1: 0.878 at
seed 0, 0.899 at seed 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["EagleEye", "STRIDES", "feature_sizes", "make_activation"]

#: Strides of the four predicting layers, finest first.
STRIDES: tuple[int, ...] = (8, 16, 32, 64)

_STEM_WIDTHS = (16, 32)
_LEVEL_WIDTHS = (64, 96, 128, 160)
_LEVEL_DEPTHS = (2, 2, 2, 1)
_ACTIVATIONS = ("prelu", "relu", "leaky_relu")
_PRIOR = 0.01


def make_activation(name: str, channels: int) -> nn.Module:
    """The activation ``name`` for a layer of ``channels`` channels."""
    if name == "prelu":
        return nn.PReLU(channels, init=0.25)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky_relu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"Unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}.")


def feature_sizes(height: int, width: int, strides: Sequence[int] = STRIDES) -> list[tuple[int, int]]:
    """Feature map sizes of the predicting layers for an input of ``height`` x ``width``.

    Every stride-2 convolution (kernel 3, padding 1) maps a side of ``n`` to ``ceil(n / 2)``.
    """
    sizes = []
    for stride in strides:
        h, w = height, width
        for _ in range(int(math.log2(stride))):
            h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def _round_width(channels: float) -> int:
    """Round a scaled width to a multiple of 8 (at least 8), so ``C/2`` and ``C/4`` are whole."""
    return max(8, int(round(channels / 8)) * 8)


class ConvBNAct(nn.Sequential):
    """Convolution, BatchNorm, activation: the unit every backbone layer is made of."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: str = "leaky_relu",
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        padding = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                (kh, kw),
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            make_activation(activation, out_channels),
        )


class SeparableConv(nn.Sequential):
    """Depthwise conv + BN + act, then pointwise 1x1 conv + BN + act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int = 1,
        dilation: int = 1,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=in_channels,
            activation=activation,
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, activation=activation)


class ContextModule(nn.Module):
    """Three receptive fields (face, head, head-shoulder) concatenated back to ``channels``."""

    def __init__(self, channels: int, activation: str = "leaky_relu") -> None:
        super().__init__()
        quarter = channels // 4
        self.face = SeparableConv(channels, channels - 2 * quarter, 3, activation=activation)
        self.head = SeparableConv(channels, quarter, 3, dilation=2, activation=activation)
        self.shoulder = SeparableConv(channels, quarter, (5, 3), dilation=2, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.face(x), self.head(x), self.shoulder(x)], dim=1)


class PredictionHead(nn.Module):
    """Context module, then 1x1 prediction convs (no BatchNorm) for logits and box deltas."""

    def __init__(self, channels: int, num_anchors: int, activation: str = "leaky_relu") -> None:
        super().__init__()
        self.context = ContextModule(channels, activation)
        self.cls = nn.Conv2d(channels, num_anchors, 1)
        self.box = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.context(x)
        return self.cls(x), self.box(x)


def _flatten_level(x: Tensor, values: int) -> Tensor:
    """``[B, a*values, H, W]`` -> ``[B, H*W*a, values]`` (rows, then columns, then anchors)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, values)


class EagleEye(nn.Module):
    """EagleEye face detector (see the module docstring for every design choice).

    Args:
        num_anchors: anchors per location, one int for every level or one per level.
        width_mult: multiplies every channel width (rounded to a multiple of 8).
        activation: ``"leaky_relu"`` (default; slope 0.1, information-preserving),
            ``"prelu"`` (per-channel learned slope) or ``"relu"``.

    Returns (from ``forward``):
        ``(cls_logits [B, A, 1], box_deltas [B, A, 4])`` for an image batch ``[B, 3, H, W]``.

    Example:
        >>> model = EagleEye()
        >>> logits, deltas = model(torch.zeros(1, 3, 256, 256))
        >>> logits.shape, deltas.shape
        (torch.Size([1, 2720, 1]), torch.Size([1, 2720, 4]))
    """

    strides: tuple[int, ...] = STRIDES

    def __init__(
        self,
        num_anchors: int | Sequence[int] = 2,
        width_mult: float = 1.0,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        if isinstance(num_anchors, int):
            num_anchors = (num_anchors,) * len(STRIDES)
        if len(num_anchors) != len(STRIDES) or min(num_anchors) < 1:
            raise ValueError(
                f"num_anchors={tuple(num_anchors)!r} must be one positive int or "
                f"{len(STRIDES)} of them (one per stride {STRIDES})."
            )
        if width_mult <= 0:
            raise ValueError(f"width_mult={width_mult} must be positive.")
        make_activation(activation, 1)  # fail early on an unknown name
        self.num_anchors: tuple[int, ...] = tuple(int(a) for a in num_anchors)
        self.width_mult = float(width_mult)
        self.activation = activation

        stem = [_round_width(c * width_mult) for c in _STEM_WIDTHS]
        widths = [_round_width(c * width_mult) for c in _LEVEL_WIDTHS]
        self.widths: tuple[int, ...] = tuple(widths)

        # Three stride-2 convolutions in a row: stride 8 after the third layer.
        self.stem = nn.Sequential(
            ConvBNAct(3, stem[0], 3, stride=2, activation=activation),
            SeparableConv(stem[0], stem[1], 3, stride=2, activation=activation),
            SeparableConv(stem[1], widths[0], 3, stride=2, activation=activation),
        )
        stages = []
        in_channels = widths[0]
        for level, (width, depth) in enumerate(zip(widths, _LEVEL_DEPTHS)):
            blocks = []
            for i in range(depth):
                stride = 2 if (i == 0 and level > 0) else 1
                blocks.append(SeparableConv(in_channels, width, 3, stride=stride, activation=activation))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(
            PredictionHead(w, a, activation) for w, a in zip(widths, self.num_anchors)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming init for convs, γ=1/β=0 for BN, and the focal-loss prior on the logits."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for head in self.heads:
            nn.init.normal_(head.cls.weight, std=0.01)
            nn.init.constant_(head.cls.bias, -math.log((1 - _PRIOR) / _PRIOR))
            nn.init.normal_(head.box.weight, std=0.01)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(images)
        logits, deltas = [], []
        for stage, head in zip(self.stages, self.heads):
            x = stage(x)
            cls, box = head(x)
            logits.append(_flatten_level(cls, 1))
            deltas.append(_flatten_level(box, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)
