"""The stand-ins the EagleEye pruning tests share: a small pipeline configuration and an
untrained EagleEye shaped like a sparsity-trained one (no data, no training)."""

from __future__ import annotations

from dataclasses import replace

import torch

from examples.eagleeye.config import PipelineConfig
from examples.eagleeye.model import EagleEye
from tests.models import randomize_bn


def small_config(**fields: object) -> PipelineConfig:
    """The default pipeline at a 64 px training size (only pruning and timing are exercised)."""
    config = PipelineConfig.create("unused", **fields)
    return replace(config, sparse=replace(config.sparse, image_size=64))


def zeroed_eagleeye() -> EagleEye:
    """An untrained EagleEye with random BatchNorm scales, a third of those of the later stages
    and heads zeroed as sparsity training would."""
    torch.manual_seed(0)
    model = randomize_bn(EagleEye()).eval()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d) and name.startswith(("stages.2", "stages.3", "heads.3")):
                m.weight[: m.num_features // 3] = 0.0
    return model
