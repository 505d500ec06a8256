"""Argument checks shared by the public entry points (plan, apply, silence, sparsity, CLI).

Each raises :class:`~slimprune.errors.InvalidArgumentError` with what was wrong, where,
what is allowed and how to fix it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InvalidArgumentError

__all__ = ["check_eager", "is_real", "real_number", "names_list", "check_seed"]


def check_eager(model: Any, what: str = "model") -> None:
    """Refuse anything but an eager ``nn.Module``: TorchScript modules cannot be pruned.

    A module made by ``torch.jit.script`` or ``torch.jit.trace`` (the whole model or one of
    its submodules) runs compiled code torch.fx cannot trace and slimprune cannot rewrite.
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(
            f"{what} must be a torch.nn.Module, got {type(model).__name__}"
            + (" (pass the module, not a function that builds it)" if callable(model) else "")
        )
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            where = f"the {what}" if not name else f"submodule {name!r} of the {what}"
            raise InvalidArgumentError(
                f"{where} is a TorchScript module ({type(m).__name__}, from torch.jit.script or "
                f"torch.jit.trace); slimprune prunes eager nn.Modules only, because compiled TorchScript "
                f"can be neither traced by torch.fx nor rewritten. Prune the eager module, then script: "
                f"torch.jit.script(slimprune.prune(eager_model, ...))"
                + ("" if not name else f" (build {name!r} without torch.jit.script/trace)")
            )


def is_real(value: Any) -> bool:
    """A real number of any type (Python, NumPy, 0-d tensors excluded), not a bool."""
    return (isinstance(value, (numbers.Real, np.floating, np.integer))
            and not isinstance(value, (bool, np.bool_)))


def real_number(name: str, value: Any, allowed: str) -> float:
    """``value`` as a float if it is a finite real number (any numeric type, not bool, NaN or inf)."""
    if not is_real(value) or not math.isfinite(float(value)):
        raise InvalidArgumentError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def names_list(name: str, value: Any, example: str) -> list[Any]:
    """A list of module names/types from ``value``; a bare string is refused (it would be read
    character by character)."""
    if isinstance(value, (str, bytes)):
        raise InvalidArgumentError(
            f"{name} takes a list of module names or types, got the string {value!r}, which would be "
            f"read as its characters; wrap it in a list: {name}=[{value!r}]"
        )
    if isinstance(value, type) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"{name} takes a list of module names or types such as {example}, got {value!r}"
            + (f"; wrap it in a list: {name}=[{value.__name__}]" if isinstance(value, type) else "")
        )
    return list(value)


def check_seed(seed: Any) -> int:
    """A seed NumPy accepts: a non-negative integer (not bool)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative integer (for importance='random'), got {seed!r}")
    return int(seed)
