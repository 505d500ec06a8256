"""Train/eval mode: change it for a while, then give every module back its own flag."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["kept_modes"]


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the training flag of ``model`` and of every submodule on exit (even when the
    body raises), so a body may call ``model.eval()``/``.train()`` freely. A model whose
    submodules disagree (a frozen norm in a training model) gets that mix back exactly."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
