"""Tracing: ``torch.fx`` symbolic trace with opaque modules, plus shape propagation.

The result of this pass is a :class:`Traced` value: a ``GraphModule`` whose nodes carry
``node.meta["slimprune.shape"]`` (a ``torch.Size``, a nested tuple of them for multi-output
ops, or ``None`` for non-tensor values), and the example inputs that produced them.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .errors import ExampleInputError, TraceError

__all__ = ["Traced", "trace", "default_example_inputs", "normalize_inputs"]

SHAPE = "slimprune.shape"

# Spatial sizes tried, in order, when no example input is given: small first, because the
# planning forward only needs shapes and cheap passes keep plan() fast.
_DEFAULT_SIZES = (64, 128, 224, 299, 32, 512)


@dataclass(frozen=True)
class Traced:
    """A traced model: the fx graph with shapes on every node, and the inputs used."""

    gm: fx.GraphModule
    example_inputs: tuple[Any, ...]
    opaque: tuple[str, ...]
    # The graph of the other mode (train vs eval) when forward branches on self.training
    # (GoogLeNet's and Inception's auxiliary heads): its channels are tied to the main graph's.
    other_mode: fx.GraphModule | None = None


class _Tracer(fx.Tracer):
    """An fx tracer that keeps user-declared opaque modules and rule-carrying modules whole."""

    def __init__(self, opaque_names: frozenset[str], opaque_types: tuple[type, ...]) -> None:
        super().__init__()
        self._opaque_names = opaque_names
        self._opaque_types = opaque_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from .rules import has_module_rule

        if module_qualified_name in self._opaque_names or isinstance(m, self._opaque_types):
            return True
        if has_module_rule(type(m)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def split_opaque(model: nn.Module, opaque: Iterable[str | type]) -> tuple[frozenset[str], tuple[type, ...]]:
    """Split ``opaque`` into module names and module types, checking that names exist."""
    names: set[str] = set()
    types: list[type] = []
    known = {name for name, _ in model.named_modules()}
    for item in opaque:
        if isinstance(item, type):
            types.append(item)
        elif isinstance(item, str):
            if item not in known:
                raise TraceError(
                    f"opaque module {item!r} does not exist in {type(model).__name__}; "
                    f"names look like {sorted(known - {''})[:5]}. Fix the name or drop it."
                )
            names.add(item)
        else:
            raise TypeError(f"opaque entries must be module names or types, got {item!r}")
    return frozenset(names), tuple(types)


def normalize_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """Accept a tensor or a tuple/list of positional inputs; return a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise ExampleInputError(
        f"example_inputs must be a tensor or a tuple of positional inputs, got "
        f"{type(example_inputs).__name__}. Pass e.g. example_inputs=torch.randn(1, 3, 224, 224)."
    )


def _failing_module(tracer: _Tracer) -> str | None:
    """``path (Type)`` of the module fx was inside when it failed; None for the root."""
    stack = list(getattr(tracer, "module_stack", {}).values())
    stack = [v for v in stack if isinstance(v, tuple) and v[0]]
    if not stack:
        return None
    path, typ = stack[-1]
    return f"{path} ({getattr(typ, '__name__', typ)})"


def symbolic_trace(model: nn.Module, opaque: Iterable[str | type] = ()) -> tuple[fx.GraphModule, tuple[str, ...]]:
    """Trace ``model`` with fx; raise :class:`TraceError` naming the module that failed."""
    names, types = split_opaque(model, opaque)
    tracer = _Tracer(names, types)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; all mean "cannot trace"
        where = _failing_module(tracer)
        if where is None:
            place, fix = f"in {type(model).__name__}.forward itself", "rewrite that part of forward"
        else:
            path = where.split(" ")[0]
            place = f"in module {where}"
            fix = f"mark that module opaque (opaque=[{path!r}]; its channels are then kept as they are)"
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: the failure is {place}: "
            f"{type(exc).__name__}: {exc}. Fix: {fix}, remove data-dependent Python control "
            f"flow there, or prune a traceable submodule instead."
        ) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    return gm, tuple(sorted(names))


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode under no_grad and restore every module's training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (tuple, list)):
        return tuple(_shape_of(v) for v in value)
    return None


class _ShapeRecorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            raise ExampleInputError(
                f"the model failed on the example inputs at node {n.name!r} ({n.format_node()}): "
                f"{type(exc).__name__}: {exc}. Pass example_inputs= with a shape this model accepts."
            ) from exc
        n.meta[SHAPE] = _shape_of(result)
        return result


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
    """Run ``gm`` once on ``example_inputs`` and store each node's output shape in its meta."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    required = [n for n in placeholders if not n.args]
    if len(example_inputs) < len(required) or len(example_inputs) > len(placeholders):
        raise ExampleInputError(
            f"{type(gm).__name__}.forward takes {len(required)} to {len(placeholders)} positional "
            f"inputs ({', '.join(n.name for n in placeholders)}), but {len(example_inputs)} example "
            f"inputs were given. Pass example_inputs=(x, ...) with one entry per forward argument."
        )
    with evaluation_mode(gm):
        _ShapeRecorder(gm).run(*example_inputs)


def _first_layer(model: nn.Module) -> nn.Module | None:
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            return m
    return None


def default_example_inputs(model: nn.Module, sizes: Sequence[int] = _DEFAULT_SIZES) -> Iterator[tuple[torch.Tensor]]:
    """Yield candidate inputs built from the first layer (batch 2), smallest spatial size first."""
    first = _first_layer(model)
    if first is None:
        raise ExampleInputError(
            f"cannot build a default input for {type(model).__name__}: it has no Conv or Linear "
            f"layer to read the input width from. Pass example_inputs=."
        )
    param = next(first.parameters())
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    if isinstance(first, nn.Linear):
        yield (torch.randn(2, first.in_features, dtype=dtype, device=param.device),)
        return
    assert isinstance(first, nn.modules.conv._ConvNd)
    dims = len(first.kernel_size)
    in_ch = first.in_channels if not isinstance(first, nn.modules.conv._ConvTransposeNd) else first.in_channels
    for s in sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, in_ch, *([s] * dims), generator=gen, dtype=dtype)
        yield (x.to(param.device),)


_MODE_SOURCE: dict[type, bool] = {}


def _reads_training(cls: type) -> bool:
    """Does this class's forward branch on ``self.training``? (cached per class)"""
    if cls not in _MODE_SOURCE:
        try:
            src = inspect.getsource(cls.forward)
        except (OSError, TypeError):
            src = ""
        _MODE_SOURCE[cls] = "self.training" in src
    return _MODE_SOURCE[cls]


def _other_mode_graph(model: nn.Module, opaque: Iterable[str | type], gm: fx.GraphModule) -> fx.GraphModule | None:
    """Trace the other mode too when some traced module's forward depends on the mode."""
    if not any(
        _reads_training(type(m)) for m in model.modules() if not type(m).__module__.startswith("torch.nn")
    ):
        return None
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.train(not model.training)
        other, _ = symbolic_trace(model, opaque)
    finally:
        for m, flag in flags:
            m.training = flag
    def structure(g: fx.GraphModule) -> list[tuple[str, str]]:
        return [(n.op, str(n.target)) for n in g.graph.nodes]

    # Graphs that differ only in a constant (stochastic_depth(x, p, mode, training=True))
    # have the same channels; only a different set of ops (an auxiliary head) matters.
    return None if structure(other) == structure(gm) else other


def trace(model: nn.Module, example_inputs: Any = None, opaque: Iterable[str | type] = ()) -> Traced:
    """Trace ``model`` and propagate shapes.

    Args:
        model: the model to trace (not modified).
        example_inputs: a tensor or a tuple of positional inputs; built from the first layer
            when omitted.
        opaque: module names or types fx must not trace into (their channels are kept).

    Raises:
        TraceError: fx cannot trace the model.
        ExampleInputError: the example inputs do not fit, or no default input works.
    """
    gm, opaque_names = symbolic_trace(model, opaque)
    other = _other_mode_graph(model, opaque, gm)
    if example_inputs is not None:
        inputs = normalize_inputs(example_inputs)
        propagate_shapes(gm, inputs)
        if other is not None:
            propagate_shapes(other, inputs)
        return Traced(gm, inputs, opaque_names, other)
    errors: list[str] = []
    for candidate in default_example_inputs(model):
        try:
            propagate_shapes(gm, candidate)
            if other is not None:
                propagate_shapes(other, candidate)
        except ExampleInputError as exc:
            errors.append(f"{tuple(candidate[0].shape)}: {exc.__cause__}")
            continue
        return Traced(gm, candidate, opaque_names, other)
    raise ExampleInputError(
        f"no default input fits {type(model).__name__} (tried "
        + "; ".join(errors[:3])
        + "). Pass example_inputs= (a tensor or a tuple of positional inputs)."
    )
