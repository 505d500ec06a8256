"""Models fx cannot trace whole (torchvision detectors): prune their traceable parts.

When the root fails to trace, the model is run once on the example input with hooks that
record every submodule's first positional inputs. Then, from the root down, the largest
submodules that trace *and* run on their recorded inputs become **regions**; each region
is planned on its own, with its inputs and outputs (the region's boundary) kept, so the
untraceable glue between regions always sees the widths it expects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._trace import default_example_inputs, evaluation_mode, normalize_inputs, propagate_shapes, trace_module
from .errors import ExampleInputError, TraceError

__all__ = ["Region", "find_regions"]


@dataclass(frozen=True)
class Region:
    """A traceable submodule and the inputs it received in the recorded run."""

    path: str
    inputs: tuple[Any, ...]


def _record_inputs(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, tuple[Any, ...]]:
    seen: dict[str, tuple[Any, ...]] = {}
    hooks = []
    for name, m in model.named_modules():
        if not name:
            continue

        def hook(mod, args, kwargs, name=name):
            if name not in seen and not kwargs:
                seen[name] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)

        hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with evaluation_mode(model):
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _run_inputs(model: nn.Module, example_inputs: Any) -> tuple[Any, ...]:
    if example_inputs is not None:
        return normalize_inputs(example_inputs)
    errors = []
    for candidate in default_example_inputs(model):
        try:
            with evaluation_mode(model):
                model(*candidate)
            return candidate
        except Exception as exc:  # the model rejects this size: try the next
            errors.append(f"{type(exc).__name__}: {exc}")
    raise ExampleInputError(
        f"{type(model).__name__} runs on none of the default inputs ({errors[:1]}); pass example_inputs="
    )


def find_regions(model: nn.Module, example_inputs: Any = None, opaque: Iterable[str | type] = ()) -> tuple[list[Region], list[str]]:
    """The largest traceable submodules, and a note for every part left unreached."""
    inputs = _run_inputs(model, example_inputs)
    recorded = _record_inputs(model, inputs)
    opaque = list(opaque)
    regions: list[Region] = []
    unreached: list[str] = []

    def visit(path: str, module: nn.Module) -> None:
        if path and path in recorded:
            rel = [o[len(path) + 1:] if isinstance(o, str) and o.startswith(path + ".") else o
                   for o in opaque if not isinstance(o, str) or o.startswith(path + ".")]
            try:
                gm, *_ = trace_module(module, recorded[path], rel)
                propagate_shapes(gm, recorded[path])
                regions.append(Region(path, recorded[path]))
                return
            except (TraceError, ExampleInputError):
                pass
        children = list(module.named_children())
        if path and not children:
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                unreached.append(f"{path} ({type(module).__name__}): " + (
                    "not called with positional tensors" if path not in recorded else "does not trace"))
            return
        for name, child in children:
            visit(f"{path}.{name}" if path else name, child)

    visit("", model)
    return regions, unreached
