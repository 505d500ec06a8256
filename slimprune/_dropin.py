"""Drop-in pruned modules: the original class, with a rewritten ``forward``.

When the rewriter must change a literal inside ``forward`` (a split size, a view shape),
the pruned module keeps its own class and every instance attribute (Ultralytics reads
``m.f``, ``m.i``, ``m.type``, ``m.np``; user code reads its own flags): its class becomes a
subclass of the original whose ``forward`` is the code fx generated from the edited graph.
Such a module survives ``copy.deepcopy``, ``pickle`` and ``torch.save``/``torch.load``
(``weights_only=False``): it pickles as (original class, generated source, the names that
source uses, instance state) and :func:`_rebuild` makes the subclass again on loading.
"""

from __future__ import annotations

import pickle
import types
from typing import Any

import torch.fx as fx
from torch import nn
from torch.fx.graph_module import _forward_from_src

from .errors import SlimpruneError

__all__ = ["Rewritten", "collapse_children", "dropin"]


class Rewritten:
    """Marker base of a pruned module whose ``forward`` was rewritten by slimprune.

    ``isinstance(m, slimprune.Rewritten)`` tells whether ``m.forward`` is generated code;
    ``m.code`` is that code. The module is still an instance of its original class.
    """

    _slimprune_src: str
    _slimprune_globals: dict[str, Any]

    @property
    def code(self) -> str:
        """The Python source of the rewritten ``forward``."""
        return self._slimprune_src


# One subclass per (original class, source): deepcopies and reloads share the class.
_CLASSES: dict[tuple[type, str], type] = {}


class _ModuleRef:
    """A Python module named in generated code (``torch``), pickled by its name."""

    def __init__(self, name: str) -> None:
        self.name = name


def _portable(globals_: dict[str, Any]) -> dict[str, Any]:
    return {k: _ModuleRef(v.__name__) if isinstance(v, types.ModuleType) else v for k, v in globals_.items()}


def _resolve(globals_: dict[str, Any]) -> dict[str, Any]:
    import importlib

    return {k: importlib.import_module(v.name) if isinstance(v, _ModuleRef) else v for k, v in globals_.items()}


def _subclass(base: type, src: str, globals_: dict[str, Any]) -> type:
    key = (base, src)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    forward = _forward_from_src(src, dict(globals_))
    try:
        cls = type(base.__name__, (base, Rewritten), {
            "forward": forward,
            "__reduce_ex__": _reduce_ex,
            "_slimprune_src": src,
            "_slimprune_globals": globals_,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
        })
    except TypeError as exc:
        raise SlimpruneError(
            f"cannot make a pruned {base.__qualname__} whose forward is rewritten: its class cannot be "
            f"subclassed ({exc}); protect= this module so its channels are kept"
        ) from exc
    _CLASSES[key] = cls
    return cls


def _reduce_ex(self: nn.Module, protocol: int) -> tuple[Any, ...]:
    cls = type(self)
    base = cls.__mro__[1]
    globals_ = _portable(cls._slimprune_globals)  # type: ignore[attr-defined]
    for name, value in globals_.items():
        try:
            pickle.dumps(value, protocol=protocol)
        except Exception as exc:  # noqa: BLE001 - reported as what cannot be carried
            raise SlimpruneError(
                f"cannot pickle the pruned {base.__qualname__}: its rewritten forward calls {name!r} "
                f"({type(value).__name__}), which pickle cannot save ({type(exc).__name__}: {exc}); "
                f"save the weights with slimprune.save(model, path, plan=plan) instead"
            ) from exc
    return _rebuild, (base, cls._slimprune_src, globals_), self.__getstate__()  # type: ignore[attr-defined]


def _rebuild(base: type, src: str, globals_: dict[str, Any]) -> nn.Module:
    """Unpickling: an empty instance of the rewritten subclass (pickle then restores its state)."""
    cls = _subclass(base, src, _resolve(globals_))
    return cls.__new__(cls)


def _frame(node: fx.Node, depth: int) -> str | None:
    """The call of a module, ``depth`` levels below the rewritten one, whose forward made
    ``node`` (None: ``node`` is that level's own code). ``path@key``: the key tells two calls
    of one module apart."""
    if node.op in ("placeholder", "output"):
        return None
    stack = node.meta.get("nn_module_stack")
    if not stack or len(stack) <= depth:
        return None
    key, value = list(stack.items())[depth]
    path = value[0] if isinstance(value, tuple) and value and isinstance(value[0], str) else key
    return f"{path}@{key}"


def collapse_children(graph: fx.Graph, root: nn.Module, keep: set[str]) -> None:
    """Call each submodule again instead of its inlined code, where nothing in it was edited.

    A trace inlines the forwards of the children (and theirs); code that changes a submodule
    later (Ultralytics' ``fuse()`` merges a Conv's BatchNorm into its conv, deletes ``bn`` and
    swaps its ``forward``) needs it called as a module. A run of consecutive nodes made by one
    call of a child, with one input and one output and no node named in ``keep`` (the edited
    ones), becomes one ``call_module``; in a child that was edited (or whose run cannot be one
    call), the same is done for its own children, and so on down.
    """
    _collapse(graph, root, keep, list(graph.nodes), 0)
    graph.lint()


def _collapse(graph: fx.Graph, root: nn.Module, keep: set[str], nodes: list[fx.Node], depth: int) -> None:
    runs: list[tuple[str, list[fx.Node]]] = []
    last: str | None = None
    for n in nodes:
        frame = _frame(n, depth)
        if frame is not None and frame == last:
            runs[-1][1].append(n)
        elif frame is not None:
            runs.append((frame, [n]))
        last = frame
    for frame, run in runs:
        if any(n.name in keep for n in run) or not _call_instead(graph, root, frame.split("@")[0], run):
            _collapse(graph, root, keep, run, depth + 1)


def _call_instead(graph: fx.Graph, root: nn.Module, path: str, run: list[fx.Node]) -> bool:
    """Replace ``run`` (one call of the module at ``path``) by a call of that module, if it has
    one input and one output; True if it did."""
    members = set(run)
    try:
        child = root.get_submodule(path)
        if graph.owning_module is not None:  # (the traced module holds only what its graph reads)
            graph.owning_module.get_submodule(path)
    except AttributeError:
        return False
    inputs = list(dict.fromkeys(a for n in run for a in n.all_input_nodes if a not in members))
    outputs = [n for n in run if any(u not in members for u in n.users)]
    if len(inputs) != 1 or len(outputs) != 1 or not isinstance(child, nn.Module) or inputs[0].op == "get_attr":
        return False
    with graph.inserting_before(run[0]):
        call = graph.call_module(path, (inputs[0],))
    call.meta = dict(outputs[0].meta)
    call.meta.pop("nn_module_stack", None)
    outputs[0].replace_all_uses_with(call)
    for n in reversed(run):
        graph.erase_node(n)
    return True


def dropin(target: nn.Module, graph: fx.Graph) -> nn.Module:
    """Give ``target`` the edited ``graph`` as its forward, keeping its class and attributes.

    ``target`` (the pruned copy) must hold every module, parameter, buffer and constant the
    graph reads; its class becomes a subclass of its class. Returns ``target``.
    """
    base = type(target)
    if isinstance(target, Rewritten):
        base = base.__mro__[1]  # pruning a pruned model again: rewrite from the original class
    code = graph.python_code(root_module="self")
    info = getattr(graph._codegen, "pytree_info", None)  # code that flattens its inputs reads the specs
    if info is not None:
        target._in_spec, target._out_spec = info.in_spec, info.out_spec  # type: ignore[assignment]
    cls = _subclass(base, code.src, code.globals)
    try:
        target.__class__ = cls
    except TypeError as exc:
        raise SlimpruneError(
            f"cannot make a pruned {base.__qualname__} whose forward is rewritten: its instances cannot "
            f"change class ({exc}); protect= this module so its channels are kept"
        ) from exc
    return target
