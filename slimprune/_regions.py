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

from ._trace import call_model, default_example_inputs, evaluation_mode, normalize_inputs, propagate_shapes, trace_module
from .errors import ExampleInputError, TraceError
from .rules import has_module_rule

__all__ = ["Region", "find_regions"]


@dataclass(frozen=True)
class Region:
    """A traceable submodule and the inputs it received in the recorded run."""

    path: str
    inputs: tuple[Any, ...]


def _record_inputs(model: nn.Module, inputs: tuple[Any, ...], wanted: set[str]) -> dict[str, tuple[Any, ...]]:
    """The first positional inputs each ``wanted`` submodule receives in one run of ``model``."""
    seen: dict[str, tuple[Any, ...]] = {}
    hooks = []
    for name, m in model.named_modules():
        if name not in wanted:
            continue

        def hook(mod, args, kwargs, name=name):
            if name not in seen and not kwargs:
                seen[name] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)

        hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with evaluation_mode(model):
            call_model(model, inputs)
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
    opaque = list(opaque)
    regions: list[Region] = []
    unreached: list[str] = []

    def join(path: str, name: str) -> str:
        return f"{path}.{name}" if path else name

    # Level by level, so only one level's inputs are held at a time (not every activation).
    level = [(join("", name), child) for name, child in model.named_children()]
    while level:
        recorded = _record_inputs(model, inputs, {path for path, _ in level})
        deeper = []
        for path, module in level:
            if path in recorded and _traces(module, path, recorded[path], opaque):
                regions.append(Region(path, recorded[path]))
                continue
            children = list(module.named_children())
            if not children:
                if any(p.requires_grad for p in module.parameters(recurse=False)):
                    unreached.append(f"{path} ({type(module).__name__}): " + (
                        "not called with positional tensors" if path not in recorded else "does not trace"))
                continue
            deeper += [(join(path, name), child) for name, child in children]
        level = deeper
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    regions.sort(key=lambda r: order[r.path])
    unreached.sort(key=lambda u: order.get(u.split(" ")[0], 0))
    return regions, unreached


def _traces(module: nn.Module, path: str, inputs: tuple[Any, ...], opaque: list[str | type]) -> bool:
    rel = [o[len(path) + 1:] if isinstance(o, str) and o.startswith(path + ".") else o
           for o in opaque if not isinstance(o, str) or o.startswith(path + ".")]
    try:
        gm, *_ = trace_module(module, inputs, rel, has_module_rule)
        propagate_shapes(gm, inputs)
    except (TraceError, ExampleInputError):
        return False
    return True
