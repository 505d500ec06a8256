"""Train/eval mode: change it for a while, then give every module back its own flag."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["kept_modes"]


def _plain_flag(m: nn.Module) -> bool:
    """Is setting ``m.training`` to the value it holds a no-op? (True unless its class
    overrides ``train`` or ``__setattr__``, which might do more than store the flag.)"""
    cls = type(m)
    return cls.train is nn.Module.train and cls.__setattr__ is nn.Module.__setattr__


@contextlib.contextmanager
def kept_modes(model: nn.Module, eval: bool = False) -> Iterator[nn.Module]:
    """Restore the training flag of ``model`` and of every submodule on exit (even when the
    body raises), so a body may call ``model.eval()``/``.train()`` freely. A model whose
    submodules disagree (a frozen norm in a training model) gets that mix back exactly.

    ``eval``: the body runs in eval mode (``model.eval()``). A flag that already holds its
    value is not set again, on the way in or out, where setting it is a no-op (every module
    of a model in eval mode, in a plan of it: ~1 us a module each way)."""
    flags = [(m, m.training, _plain_flag(m)) for m in model.modules()]
    try:
        if eval and any(flag or not plain for _, flag, plain in flags):
            model.eval()
        yield model
    finally:
        for m, flag, plain in flags:
            if not plain or m.training is not flag:
                m.training = flag
