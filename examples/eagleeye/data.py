"""Training data: the data root (SynthFaces generated on demand) and the augmented split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import TrainAugment
from .config import TrainConfig
from .wider import WiderFaceDataset

__all__ = ["prepare_data", "AugmentedSplit"]


def prepare_data(config: TrainConfig) -> Path:
    """The data root, generating SynthFaces there first when allowed and needed.

    With ``config.synthesize`` set, a missing root, an empty one or a SynthFaces set made
    with other parameters is (re)generated; any other existing directory (the real WIDER
    FACE, say) is used as it is.
    """
    root = Path(config.data_root)
    if config.synthesize is None:
        return root
    from . import synthfaces

    foreign = root.is_dir() and any(root.iterdir()) and not (root / synthfaces.MANIFEST).is_file()
    if foreign:
        return root
    return Path(synthfaces.ensure(root, **dict(config.synthesize)))


def _item_seed(seed: int, epoch: int, index: int) -> int:
    """An independent 63-bit seed per (run seed, epoch, image)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class AugmentedSplit(Dataset):
    """A WIDER split with :class:`TrainAugment`, reseeded per (seed, epoch, image).

    An item depends on the run seed, the epoch and its index only, so a run draws the same
    augmentations with any number of DataLoader workers. Call :meth:`set_epoch` before each
    epoch, as with a DistributedSampler.
    """

    def __init__(self, base: WiderFaceDataset, size: int, seed: int, max_images: int | None = None) -> None:
        self.base = base
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.length = len(base) if max_images is None else min(len(base), max_images)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s augmentation draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, boxes = self.base.load(i)
        augment = TrainAugment(self.size, seed=_item_seed(self.seed, self.epoch, i), reseed_in_workers=False)
        image, boxes = augment(image, boxes)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
        return tensor, torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)), i
