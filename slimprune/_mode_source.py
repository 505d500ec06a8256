"""Does a module's ``forward`` read ``self.training`` in a way that can change its fx graph?

A model whose traced modules branch on the mode (GoogLeNet's auxiliary heads, a train-only
dropout) is traced in the other mode too and the two graphs' channels are tied. That second
trace is wasted where the flag only travels, as an argument, into a call fx records as one
node whatever the flag's value: a function registered with ``torch.fx.wrap`` (torchvision's
``stochastic_depth``, which :class:`torchvision.ops.StochasticDepth` calls with
``self.training``) or a ``torch.nn.functional`` function (``F.dropout(x, p, self.training)``,
``F.batch_norm(..., self.training, ...)``, dispatched to fx as one call). Then both modes
give the same ops and only that argument's constant differs.

The check reads ``forward``'s source: every read of ``self.training`` must be, directly, an
argument (positional or keyword) of a call whose callee resolves, in ``forward``'s globals,
to such a function. Any other use (a branch, ``and``/``or``, an assignment to a local, a
call of an ordinary Python function, a method of ``self``) counts as changing the graph.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import torch.fx._symbolic_trace as fx_trace
import torch.nn.functional as F

__all__ = ["training_changes_graph"]

# torch.nn.functional functions taking the mode as an argument; each dispatches to fx as
# one call_function node (``handle_torch_function``) before reading it.
_MODE_FUNCTIONS = frozenset({F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                             F.feature_alpha_dropout, F.batch_norm, F.instance_norm, F.rrelu})

_CHANGES: dict[type, bool] = {}


def _forward_tree(cls: type) -> tuple[ast.AST, dict[str, Any]] | None:
    """``cls.forward``'s syntax tree and globals, or None when its source cannot be read."""
    forward = getattr(cls, "forward", None)
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(forward))), getattr(forward, "__globals__", {})
    except (OSError, TypeError, SyntaxError):  # IndentationError is a SyntaxError
        return None


def _resolve(func: ast.expr, scope: dict[str, Any]) -> Any:
    """The object a callee expression (``name`` or ``a.b.c``) names in ``scope``, else None."""
    if isinstance(func, ast.Name):
        return scope.get(func.id)
    if isinstance(func, ast.Attribute):
        base = _resolve(func.value, scope)
        return getattr(base, func.attr, None) if base is not None else None
    return None


def _one_node(func: ast.expr, scope: dict[str, Any], local: set[str]) -> bool:
    """Does fx record a call of ``func`` as one node, whatever its arguments' values?"""
    root = func
    while isinstance(root, ast.Attribute):
        root = root.value
    if not isinstance(root, ast.Name) or root.id in local:
        return False  # a local name may be anything
    if isinstance(func, ast.Name) and (id(scope), func.id) in fx_trace._wrapped_fns_to_patch:
        return True  # torch.fx.wrap("name") in the module that defines forward
    try:
        return _resolve(func, scope) in _MODE_FUNCTIONS
    except TypeError:  # an unhashable object
        return False


def _is_self_training(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "training"
            and isinstance(node.value, ast.Name) and node.value.id == "self")


def _locals(tree: ast.AST) -> set[str]:
    """Names bound inside the function (arguments, assignments, definitions, imports ...)."""
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    names |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
              for a in (*n.posonlyargs, *n.args, *n.kwonlyargs, *filter(None, (n.vararg, n.kwarg)))}
    names |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    names |= {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in n.names}
    return names


def training_changes_graph(cls: type) -> bool:
    """May ``cls.forward`` trace to other ops in train than in eval mode? (cached per class)

    False only when ``forward`` does not mention ``self.training``, or reads it only as a
    direct argument of one-node calls (see the module docstring); True whenever unsure."""
    if cls not in _CHANGES:
        _CHANGES[cls] = _changes(cls)
    return _CHANGES[cls]


def _changes(cls: type) -> bool:
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False  # no source: as before, taken not to branch on the mode
    if "self.training" not in src:
        return False
    parsed = _forward_tree(cls)
    if parsed is None:
        return True
    tree, scope = parsed
    local = _locals(tree)
    reads = [n for n in ast.walk(tree) if _is_self_training(n)]
    passed = {id(a) for call in ast.walk(tree) if isinstance(call, ast.Call) and _one_node(call.func, scope, local)
              for a in (*call.args, *(k.value for k in call.keywords)) if _is_self_training(a)}
    return not reads or any(id(n) not in passed for n in reads)
