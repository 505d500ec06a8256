"""Tracing: ``torch.fx`` symbolic trace with opaque modules, plus shape propagation.

When plain symbolic tracing rejects a model's Python (iterating over a ``chunk`` result,
``len()`` of a list of features, a branch on a shape), the model is traced again
*concretely*: the same fx tracer, but every proxy also carries the value the example input
produces, so Python that needs a value gets it (see :func:`concrete_trace`). Both yield an
ordinary fx graph of the user's own modules, so every rule applies unchanged.

The result of this pass is a :class:`Traced` value: a ``GraphModule`` whose nodes carry
``node.meta["slimprune.shape"]`` (a ``torch.Size``, a nested tuple of them for multi-output
ops, or ``None`` for non-tensor values), and the example inputs that produced them.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.fx as fx
import torch.fx.traceback as _fx_traceback
from torch import nn

from ._augmented import InplaceProxy
from ._meta_shapes import run_on_meta, runs_only_torch, same_shape_function, same_shape_module
from ._mode_source import training_changes_graph
from ._modes import kept_modes
from ._submodules import MODULE_TREE
from .errors import ExampleInputError, TraceError

__all__ = ["Traced", "KeywordInputs", "trace", "trace_module", "symbolic_else_concrete", "concrete_trace",
           "default_example_inputs",
           "normalize_inputs", "call_model"]

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
    # How fx captured forward: "symbolic", or "concrete" (run on the example inputs, see
    # concrete_trace), with the shape-dependent Python decisions fixed at trace time.
    method: str = "symbolic"
    fixed: tuple[str, ...] = ()


LeafPredicate = Callable[[type], bool]
"""``(module class) -> bool``: trace modules of this class as one call (the channel rules'
:func:`~slimprune.rules.has_module_rule`); the tracer takes it as an argument so that it
does not import the rules."""


def no_extra_leaves(cls: type) -> bool:
    """The default leaf predicate: only fx's own leaves (``torch.nn`` modules) and opaque ones."""
    return False


class _Tracer(fx.Tracer):
    """An fx tracer that keeps user-declared opaque modules and ``leaf`` modules whole."""

    def __init__(self, opaque_names: frozenset[str], opaque_types: tuple[type, ...],
                 leaf: LeafPredicate = no_extra_leaves, keywords: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self._opaque_names = opaque_names
        self._opaque_types = opaque_types
        self._leaf = leaf
        self._keywords = keywords

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list[Any]]:
        if self._keywords is not None and is_module:
            return _keyword_args_for_root(self, root_fn, self._keywords)
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        # ``v += w`` is recorded as a write into v (a view's base sees it), not as ``v = v + w``
        return InplaceProxy(node, self)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            self.path_of_module(m)
        except NameError:
            # A module called but not installed in the model (transformers' hub-kernel function
            # wrappers such as ``apply_rotary_pos_emb``, or a module kept in a plain dict): it has
            # no name to call, so its forward is traced through as plain code.
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._opaque_names or isinstance(m, self._opaque_types):
            return True
        if self._leaf(type(m)):
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


class KeywordInputs(tuple):
    """Example inputs given as keywords (``{"input_ids": ids, "attention_mask": mask}``).

    A tuple of the values, in the order given, that also remembers their names: the traced
    graph takes them positionally in that order (one placeholder per name), and the user's
    model is called with them as keywords (:func:`call_model`). Forward arguments not named
    keep their defaults.
    """

    names: tuple[str, ...]

    def __new__(cls, items: dict[str, Any]) -> "KeywordInputs":
        made = super().__new__(cls, tuple(items.values()))
        made.names = tuple(items)
        return made

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self.names, self))

    def __reduce__(self) -> Any:
        return (KeywordInputs, (self.as_dict(),))


def keywords_of(inputs: Any) -> tuple[str, ...] | None:
    """The keyword names of ``inputs`` (a :class:`KeywordInputs`), or None for positional ones."""
    return inputs.names if isinstance(inputs, KeywordInputs) else None


def call_model(model: Any, inputs: tuple[Any, ...]) -> Any:
    """Call the user's model on normalised inputs: keywords by name, others positionally."""
    if isinstance(inputs, KeywordInputs):
        return model(**inputs.as_dict())
    return model(*inputs)


def normalize_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """Accept a tensor, a tuple/list of positional inputs, or a dict of keyword inputs."""
    if isinstance(example_inputs, KeywordInputs):
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    if isinstance(example_inputs, dict):
        bad = [k for k in example_inputs if not isinstance(k, str) or not k.isidentifier()]
        if bad or not example_inputs:
            raise ExampleInputError(
                f"example_inputs as a dict maps forward's keyword names to values, got "
                f"{'no entries' if not bad else f'keys {bad!r}'}. Pass e.g. "
                f"example_inputs={{'input_ids': ids, 'attention_mask': mask}}."
            )
        return KeywordInputs(example_inputs)
    raise ExampleInputError(
        f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs, "
        f"got {type(example_inputs).__name__}. Pass e.g. example_inputs=torch.randn(1, 3, 224, 224) "
        f"or example_inputs={{'input_ids': ids}}."
    )


def check_keywords(model: nn.Module, inputs: Any) -> None:
    """Refuse keyword inputs that ``model.forward`` does not take (before any tracing)."""
    names = keywords_of(inputs)
    if names is None:
        return
    params = inspect.signature(inspect.unwrap(type(model).forward)).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [n for n in names if n not in params or params[n].kind is inspect.Parameter.VAR_POSITIONAL]
    if unknown and not takes_any:
        raise ExampleInputError(
            f"example_inputs names {unknown}, which {type(model).__name__}.forward does not take; it takes "
            f"{[n for n in params if n != 'self']}. Fix the keys of the example_inputs dict."
        )


def _keyword_root(root_fn: Callable[..., Any], names: tuple[str, ...]) -> Callable[..., Any]:
    """A root function for fx taking ``names`` positionally and calling forward by keyword."""

    def call(self: nn.Module, *values: Any) -> Any:
        return root_fn(self, **dict(zip(names, values)))

    return call


def _keyword_args_for_root(tracer: fx.Tracer, root_fn: Callable[..., Any],
                           names: tuple[str, ...]) -> tuple[Callable[..., Any], list[Any]]:
    """Placeholders for keyword inputs: one per name, in the order given, so the graph is
    called positionally with the inputs' values (forward's other arguments keep their
    defaults, and ``**kwargs`` stays empty, as when the user calls the model so)."""
    placeholders = [tracer.create_proxy("placeholder", n, (), {}) for n in names]
    return _keyword_root(root_fn, names), [tracer.root, *placeholders]


def _failing_module(tracer: _Tracer) -> str | None:
    """``path (Type)`` of the module fx was inside when it failed; None for the root."""
    stack = list(getattr(tracer, "module_stack", {}).values())
    stack = [v for v in stack if isinstance(v, tuple) and v[0]]
    if not stack:
        return None
    path, typ = stack[-1]
    return f"{path} ({getattr(typ, '__name__', typ)})"


_CONTAINERS = (dict, list, set)


@contextlib.contextmanager
def _preserved(model: nn.Module, values: bool = True) -> Iterator[None]:
    """Undo what tracing a forward does to the model, so the user's model comes back as it
    was: attributes it assigns (torchvision's AnchorGenerator caches ``self.cell_anchors``,
    which would keep proxies), the contents of containers it fills (timm's EfficientViT and
    EfficientFormer cache attention biases in a dict attribute in eval mode), and buffers a
    concrete run updates (BatchNorm statistics in train mode; ``values=False`` skips copying
    them, for a run that cannot reach them: the meta run, which swaps every buffer out)."""
    saved = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
    # Containers keep their identity (other code may hold them); their contents are restored.
    # (The module tree's own dicts are restored with each module, just above.)
    containers: dict[int, tuple[Any, Any]] = {}
    for _, attrs, _, _, _ in saved:
        for key, value in attrs.items():
            if type(value) in _CONTAINERS and key not in MODULE_TREE and id(value) not in containers:
                containers[id(value)] = (value, value.copy())
    kept = [(b, b.detach().clone()) for b in model.buffers()] if values else []
    try:
        yield
    finally:
        for m, attrs, params, buffers, modules in saved:
            vars(m).clear()
            vars(m).update(attrs)
            for live, old in ((m._parameters, params), (m._buffers, buffers), (m._modules, modules)):
                live.clear()
                live.update(old)
        for live, old in containers.values():
            live.clear()
            live.update(old) if not isinstance(live, list) else live.extend(old)
        with torch.no_grad():
            for b, v in kept:
                b.copy_(v)


try:  # a GraphModule that generates its Python code on first use, not on construction
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModuleClass
except ImportError:  # an older torch: generated at once
    _GraphModuleClass = fx.GraphModule


def _graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """The traced GraphModule. Planning only interprets its graph node by node, so the code
    generation and ``compile`` of a forward (~10 ms for a few hundred nodes) wait until
    something calls it or reads its code."""
    return _GraphModuleClass(root, graph, name)


def symbolic_trace(model: nn.Module, opaque: Iterable[str | type] = (),
                   leaf: LeafPredicate = no_extra_leaves,
                   keywords: tuple[str, ...] | None = None) -> tuple[fx.GraphModule, tuple[str, ...]]:
    """Trace ``model`` with fx; raise :class:`TraceError` naming the module that failed.

    ``keywords``: forward is called with these keyword arguments (see :class:`KeywordInputs`)."""
    names, types = split_opaque(model, opaque)
    tracer = _Tracer(names, types, leaf, keywords)
    try:
        with _preserved(model):  # the GraphModule copies fx's constants before they are undone
            graph = tracer.trace(model)
            gm = _graph_module(tracer.root, graph, type(model).__name__)
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
    return gm, tuple(sorted(names))


# Tensor attributes a concrete trace answers with the example's value: they are fixed by the
# model's parameters (``torch.finfo(x.dtype)`` in transformers' masks), never by input sizes.
_CONSTANT_ATTRIBUTES = frozenset({"dtype", "device", "is_cuda", "layout"})


class _Valued:
    """Proxy behaviour that needs a value: answered from the value the tracer computed."""

    tracer: "_ConcreteTracer"

    def __getattr__(self, k: str) -> "_ValuedAttribute":
        if k.startswith("__") and k.endswith("__"):
            # protocol probes (torch.tensor([h, w]) asks for __cuda_array_interface__) are
            # not tensor attributes: answer as a plain object does
            raise AttributeError(k)
        if k in _CONSTANT_ATTRIBUTES:
            value = self.tracer.value(self)  # type: ignore[arg-type]
            if isinstance(value, torch.Tensor):  # dtype and device do not vary with the input
                return getattr(value, k)
        return _ValuedAttribute(self, k)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        return self.tracer.iter(self)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.tracer.length(self)  # type: ignore[arg-type]

    def __index__(self) -> int:
        return self.tracer.number(self, int)  # type: ignore[arg-type]

    def __int__(self) -> int:
        return self.tracer.number(self, int)  # type: ignore[arg-type]

    def __float__(self) -> float:
        return self.tracer.number(self, float)  # type: ignore[arg-type]


class _ValuedProxy(_Valued, InplaceProxy):
    pass


class _ValuedAttribute(_Valued, fx.proxy.Attribute):
    @property
    def node(self) -> fx.Node:  # type: ignore[override]
        if self._node is None:  # created on first use, as fx does; keep its value too
            made = self.tracer.create_proxy("call_function", getattr, (self.root, self.attr), {})
            self._node, self._value = made.node, made._value
        return self._node


def _rebuild(container: Any, items: list[Any]) -> Any:
    if isinstance(container, list):
        return items
    if hasattr(container, "_fields"):  # a namedtuple
        return type(container)(*items)
    try:
        return type(container)(items)
    except TypeError:
        return tuple(items)


class _ConcreteTracer(_Tracer):
    """An fx tracer that also runs the model on real inputs, op by op, alongside the graph.

    Every proxy also carries the value the example inputs produce, so Python that fx alone
    cannot follow gets an answer: iterating a ``chunk``/``split`` result or a list of
    features, ``len()``, ``int(x.shape[1] / 2)``, ``if x.shape[-1] > 32``. Decisions on tensor
    *values* (data-dependent control flow) are refused: they would bake one input's answer
    into the graph.
    """

    def __init__(self, opaque_names: frozenset[str], opaque_types: tuple[type, ...], inputs: tuple[Any, ...],
                 leaf: LeafPredicate = no_extra_leaves) -> None:
        super().__init__(opaque_names, opaque_types, leaf, keywords_of(inputs))
        self._inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
        self._placeholders = 0
        self._computing = False
        self._defaulted: set[fx.Node] = set()
        self.fixed: list[str] = []  # shape-dependent decisions taken from the example inputs

    # -- values ----------------------------------------------------------------------
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValuedProxy(node, self)

    def holds_tensor(self, proxy: fx.Proxy) -> bool:
        """Is the proxy's value a tensor (``v += w`` writes in place; see _augmented.py)?"""
        return isinstance(vars(proxy).get("_value"), torch.Tensor)

    def value(self, a: Any) -> Any:
        if isinstance(a, fx.Proxy):
            node = a.node  # (materialises an attribute's node, and its value)
            if "_value" not in vars(a):
                raise TraceError(f"concrete tracing has no value for node {node.name!r} ({node.format_node()}); "
                                 f"a proxy from another trace may be cached in a module")
            return vars(a)["_value"]
        if isinstance(a, (tuple, list)):
            return _rebuild(a, [self.value(v) for v in a])
        if isinstance(a, dict):
            return {k: self.value(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(self.value(a.start), self.value(a.stop), self.value(a.step))
        return a

    def _run(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kind == "placeholder":
            i = self._placeholders
            self._placeholders += 1
            if i < len(self._inputs):
                return self._inputs[i]
            return args[0] if args else None  # a defaulted forward argument
        self._computing = True  # (a parameter read while computing is the real one, not a proxy)
        try:
            if kind == "get_attr":
                return operator.attrgetter(str(target))(self.root)
            with torch.no_grad():  # values are only looked at; no autograd graph to keep
                return self._call(kind, target, args, kwargs)
        finally:
            self._computing = False

    def _call(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kind == "call_function":
            return target(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_module":
            return fx._symbolic_trace._orig_module_call(self.root.get_submodule(target), *args, **kwargs)
        raise TraceError(f"concrete tracing met a node of unknown kind {kind!r}")

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     name: str | None = None, type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        concrete_args, concrete_kwargs = self.value(args), self.value(kwargs)
        try:
            value = self._run(kind, target, concrete_args, concrete_kwargs)
        except TraceError:
            raise
        except Exception as exc:
            raise TraceError(f"running {kind} {getattr(target, '__name__', target)!s} on the example inputs "
                             f"failed: {type(exc).__name__}: {exc}") from exc
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        # The value lives on the proxy: it is freed when forward drops the proxy, as in a real run.
        proxy._value = value
        if kind == "placeholder" and self._placeholders > len(self._inputs):
            self._defaulted.add(proxy.node)
        return proxy

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list[Any]]:
        fn, args = super().create_args_for_root(root_fn, is_module, concrete_args)
        if self._keywords is not None and is_module:
            # a keyword input that is no tensor (use_cache=False) is a constant of the trace
            return fn, [a if not isinstance(a, fx.Proxy) or self.holds_tensor(a) else self.value(a) for a in args]
        if fn is not root_fn:  # pytree-flattened inputs: leave them alone
            return fn, args
        # A forward argument the example inputs leave at its default (targets=None) is that
        # constant, not a proxy: `if targets is not None` must see None.
        return fn, [self.value(a) if isinstance(a, fx.Proxy) and a.node in self._defaulted else a for a in args]

    # While computing a value, module calls and parameter reads are the real ones.
    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._computing:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    # -- Python that needs a value ---------------------------------------------------
    def _where(self, obj: fx.Proxy) -> str:
        module = _failing_module(self)
        return f"node {obj.node.name!r}" + (f" in {module}" if module else "")

    def _python(self, obj: fx.Proxy, what: str) -> Any:
        v = self.value(obj)
        if isinstance(v, torch.Tensor):
            raise TraceError(
                f"forward uses the value of a tensor in Python ({what} at {self._where(obj)}): this is "
                f"data-dependent control flow, which no trace can capture for every input. Mark that "
                f"module opaque, or compute it with tensor ops (torch.where) instead of Python."
            )
        return v

    def to_bool(self, obj: fx.Proxy) -> bool:
        answer = bool(self._python(obj, "a branch"))
        self.fixed.append(f"{obj.node.name} is {answer}")
        return answer

    def number(self, obj: fx.Proxy, kind: type) -> Any:
        v = kind(self._python(obj, f"{kind.__name__}()"))
        self.fixed.append(f"{obj.node.name} = {v}")
        return v

    def length(self, obj: fx.Proxy) -> int:
        v = self.value(obj)
        if isinstance(v, torch.Tensor):
            self.fixed.append(f"len({obj.node.name}) = {len(v)}")
        return len(v)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        v = self.value(obj)
        if isinstance(v, dict):
            return iter(list(v))
        n = self.length(obj)
        return iter([obj[i] for i in range(n)])  # type: ignore[index]

    def keys(self, obj: fx.Proxy) -> Any:
        return list(self.value(obj).keys())


@contextlib.contextmanager
def _recording_tensor(tracer: _ConcreteTracer) -> Iterator[None]:
    """``torch.tensor(c)`` of a traced size becomes a graph node (fx cannot see into it: it
    takes Python data, not tensors) instead of failing or freezing ``c``."""
    original = torch.tensor

    def has_proxy(data: Any) -> bool:
        if isinstance(data, (list, tuple)):
            return any(has_proxy(d) for d in data)
        return isinstance(data, fx.Proxy)

    def tensor(data: Any, *args: Any, **kwargs: Any) -> Any:
        if has_proxy(data):
            return tracer.create_proxy("call_function", original, (data, *args), kwargs)
        return original(data, *args, **kwargs)

    torch.tensor = tensor  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.tensor = original  # type: ignore[assignment]


def describe_fixed(fixed: Sequence[str], limit: int = 3) -> str:
    """The first shape decisions a concrete trace fixed, for notes and warnings."""
    return "; ".join(fixed[:limit]) + (" ..." if len(fixed) > limit else "")


def concrete_trace(model: nn.Module, inputs: tuple[Any, ...],
                   opaque: Iterable[str | type] = (),
                   leaf: LeafPredicate = no_extra_leaves) -> tuple[fx.GraphModule, tuple[str, ...], tuple[str, ...]]:
    """Trace ``model`` with fx while running it on ``inputs`` (see :class:`_ConcreteTracer`).

    Returns the GraphModule, the opaque module names, and the shape-dependent Python
    decisions fixed at trace time (empty when the graph holds for every input size).
    """
    names, types = split_opaque(model, opaque)
    tracer = _ConcreteTracer(names, types, inputs, leaf)
    try:
        with _preserved(model), _recording_tensor(tracer):
            graph = tracer.trace(model)
            gm = _graph_module(tracer.root, graph, type(model).__name__)
    except Exception as exc:
        where = _failing_module(tracer)
        raise TraceError(
            f"tracing {type(model).__name__} while running it failed"
            + (f" in module {where}" if where else "") + f": {type(exc).__name__}: {exc}"
        ) from exc
    return gm, tuple(sorted(names)), tuple(tracer.fixed)


R = TypeVar("R")


def symbolic_else_concrete(
    model: nn.Module,
    candidates: Callable[[], Iterable[tuple[Any, ...]]] | None,
    symbolic: Callable[[fx.GraphModule, tuple[str, ...]], R],
    concrete: Callable[[fx.GraphModule, tuple[str, ...], tuple[str, ...], tuple[Any, ...]], R],
    opaque: Iterable[str | type] = (),
    leaf: LeafPredicate = no_extra_leaves,
    keywords: tuple[str, ...] | None = None,
) -> R:
    """Trace symbolically, else concretely: the one place slimprune falls back.

    A symbolic fx trace first; its result goes to ``symbolic(gm, opaque_names)``. When fx
    rejects forward's Python, a concrete trace (:func:`concrete_trace`) on each input tuple of
    ``candidates()`` in turn (built only then), whose result goes to ``concrete(gm,
    opaque_names, fixed, inputs)``; a candidate whose trace or ``concrete`` raises
    :class:`TraceError` or :class:`ExampleInputError` gives way to the next. Returns what the
    callback returned. ``keywords``: as for :func:`symbolic_trace`.

    Raises:
        TraceError: the symbolic one (cause kept), when there are no candidates
            (``candidates`` None, empty, or raising ExampleInputError), or with the first
            concrete attempt's reason added, when every candidate fails.
    """
    opaque = list(opaque)
    try:
        gm, names = symbolic_trace(model, opaque, leaf, keywords)
    except TraceError as exc:
        symbolic_error = exc
    else:
        return symbolic(gm, names)
    try:
        tries = list(candidates()) if candidates is not None else []
    except ExampleInputError:
        tries = []
    if not tries:
        raise symbolic_error from symbolic_error.__cause__
    failures: list[str] = []
    for inputs in tries:
        try:
            gm, names, fixed = concrete_trace(model, inputs, opaque, leaf)
            return concrete(gm, names, fixed, inputs)
        except (TraceError, ExampleInputError) as exc:
            failures.append(str(exc))
    raise TraceError(
        f"{symbolic_error} (Tracing while running it on the example inputs failed too: {failures[0][:400]})"
    ) from symbolic_error.__cause__


def trace_module(model: nn.Module, inputs: tuple[Any, ...], opaque: Iterable[str | type] = (),
                 leaf: LeafPredicate = no_extra_leaves) -> tuple[fx.GraphModule, tuple[str, ...], tuple[str, ...], str]:
    """Symbolic trace, or a concrete one on ``inputs`` when fx alone cannot follow forward.

    Returns ``(gm, opaque_names, fixed, method)``. Raises the symbolic :class:`TraceError`
    (with the concrete attempt's reason added) when both fail.
    """
    check_keywords(model, inputs)
    return symbolic_else_concrete(
        model, lambda: [inputs],
        lambda gm, names: (gm, names, (), "symbolic"),
        lambda gm, names, fixed, _: (gm, names, fixed, "concrete"),
        opaque, leaf, keywords_of(inputs))


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode under no_grad and restore every module's training flag afterwards."""
    with kept_modes(model, eval=True), torch.no_grad():
        yield


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (tuple, list)):
        return tuple(_shape_of(v) for v in value)
    return None


def _mutable(value: Any) -> Any:
    if isinstance(value, list):  # fx's immutable_list too
        return [_mutable(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields") and type(value) is tuple:
        return tuple(_mutable(v) for v in value)
    if isinstance(value, dict):
        return {k: _mutable(v) for k, v in value.items()}
    return value


class GraphRunner(fx.Interpreter):
    """An fx Interpreter that hands ops plain lists, as the model's own code would.

    fx keeps node arguments immutable, and the generated code passes fresh list literals;
    an Interpreter passes the immutable ones, which breaks functions that modify a list
    argument in place (torchvision's video Swin ``_get_window_and_shift_size``).
    """

    def fetch_args_kwargs_from_env(self, n: fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super().fetch_args_kwargs_from_env(n)
        return _mutable(args), _mutable(kwargs)


class _ShapeRecorder(GraphRunner):
    def __init__(self, gm: fx.GraphModule, on_meta: bool = False, fixed_tree: bool = False) -> None:
        super().__init__(gm)
        self.on_meta = on_meta  # answer the ops whose meta output is known without running them
        # fixed_tree: nothing the run calls can replace a module (see runs_only_torch), so a
        # module is looked up in the Interpreter's table of them instead of path by path.
        self.fixed_tree = fixed_tree

    def fetch_attr(self, target: str) -> Any:
        if self.fixed_tree:
            m = self.submodules.get(target)
            if m is not None:
                return m
        return super().fetch_attr(target)

    def call_module(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        known = same_shape_module(self.fetch_attr(target), args, kwargs) if self.on_meta else None
        return known if known is not None else super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        known = same_shape_function(target, args, kwargs) if self.on_meta else None
        return known if known is not None else super().call_function(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        try:
            if _fx_traceback.should_preserve_node_meta:
                result = super().run_node(n)
            else:
                # What Interpreter.run_node does, less its per-node context manager, which only
                # acts while fx preserves node metadata (export tracing): ~5 us a node.
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                result = getattr(self, n.op)(n.target, args, kwargs)
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
    # The graph shares the model's buffers; a graph traced in train mode updates running
    # statistics even in eval mode (F.batch_norm(..., training=True) is a literal there).
    with evaluation_mode(gm):
        # Shapes without arithmetic where no shape needs a value (see _meta_shapes); the meta
        # run holds every buffer swapped out, so only the real run needs them copied back.
        # A graph of torch calls alone cannot assign to a module: nothing to snapshot then.
        only_torch = runs_only_torch(gm)
        with contextlib.nullcontext() if only_torch else _preserved(gm, values=False):
            on_meta = run_on_meta(gm, example_inputs, lambda inputs: _ShapeRecorder(
                gm, on_meta=True, fixed_tree=only_torch).run(*inputs))
        if not on_meta:
            with _preserved(gm):
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


def _other_mode_graph(model: nn.Module, gm: fx.GraphModule,
                      retrace: Callable[[], fx.GraphModule]) -> fx.GraphModule | None:
    """Trace the other mode too (``retrace`` in the flipped mode) when some traced module's
    forward may trace to other ops in the other mode (:func:`training_changes_graph`)."""
    if not any(
        training_changes_graph(type(m)) for m in model.modules() if not type(m).__module__.startswith("torch.nn")
    ):
        return None
    with kept_modes(model):
        model.train(not model.training)
        other = retrace()

    def structure(g: fx.GraphModule) -> list[tuple[str, str]]:
        return [(n.op, str(n.target)) for n in g.graph.nodes]

    # Graphs that differ only in a constant (stochastic_depth(x, p, mode, training=True))
    # have the same channels; only a different set of ops (an auxiliary head) matters.
    return None if structure(other) == structure(gm) else other


def trace(model: nn.Module, example_inputs: Any = None, opaque: Iterable[str | type] = (),
          leaf: LeafPredicate = no_extra_leaves) -> Traced:
    """Trace ``model`` and propagate shapes.

    Symbolic fx tracing first; when fx rejects forward's Python, a concrete trace on the
    example inputs (:func:`concrete_trace`).

    Args:
        model: the model to trace (not modified).
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs
            (``{"input_ids": ids}``); built from the first layer when omitted.
        opaque: module names or types fx must not trace into (their channels are kept).
        leaf: module classes traced as one call (those with a channel rule).

    Raises:
        TraceError: neither kind of trace can capture the model.
        ExampleInputError: the example inputs do not fit, or no default input works.
    """
    if example_inputs is not None:
        example_inputs = normalize_inputs(example_inputs)
        check_keywords(model, example_inputs)
    keywords = keywords_of(example_inputs)
    opaque = list(opaque)

    def symbolic(gm: fx.GraphModule, opaque_names: tuple[str, ...]) -> Traced:
        other = _other_mode_graph(model, gm, lambda: symbolic_trace(model, opaque, leaf, keywords)[0])
        return _with_shapes(model, gm, other, example_inputs, opaque_names)

    def concrete(gm: fx.GraphModule, names: tuple[str, ...], fixed: tuple[str, ...], inputs: tuple[Any, ...]) -> Traced:
        fixed_other: list[str] = []

        def retrace() -> fx.GraphModule:
            g, _, f = concrete_trace(model, inputs, opaque, leaf)
            fixed_other.extend(f)
            return g

        other = _other_mode_graph(model, gm, retrace)
        propagate_shapes(gm, inputs)
        if other is not None:
            propagate_shapes(other, inputs)
        return Traced(gm, inputs, names, other, "concrete", tuple(dict.fromkeys(fixed + tuple(fixed_other))))

    def candidates() -> Iterable[tuple[Any, ...]]:
        return [example_inputs] if example_inputs is not None else default_example_inputs(model)

    return symbolic_else_concrete(model, candidates, symbolic, concrete, opaque, leaf, keywords)


def _with_shapes(model: nn.Module, gm: fx.GraphModule, other: fx.GraphModule | None, example_inputs: Any,
                 opaque_names: tuple[str, ...]) -> Traced:
    """A symbolic trace with shapes from ``example_inputs``, or from the first default input that fits."""
    if example_inputs is not None:
        propagate_shapes(gm, example_inputs)
        if other is not None:
            propagate_shapes(other, example_inputs)
        return Traced(gm, example_inputs, opaque_names, other)
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
