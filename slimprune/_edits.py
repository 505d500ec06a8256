"""Rewrites of literal sizes in a traced graph (``torch.split(x, [24, 40], 1)``,
``x.view(n, 64, -1)``, ``x[:, :32]``): a JSON-able description and its application.

An edit is a dict ``{"node": name, "kind": ..., ...}``:

* ``set_arg``: replace positional argument ``index`` with ``value``;
* ``split_sizes``: turn a split/chunk node into ``torch.split(input, sizes, dim)``.

Values are encoded so that they survive JSON: nodes by name, slices, tuples and Ellipsis
as tagged dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from .errors import PlanFormatError, PlanMismatchError, RuleOutputTypeError

__all__ = ["encode", "decode", "apply_edits"]


def encode(value: Any) -> Any:
    """Encode an fx argument structure as JSON-able data."""
    if isinstance(value, fx.Node):
        return {"__node__": value.name}
    if isinstance(value, slice):
        return {"__slice__": [encode(value.start), encode(value.stop), encode(value.step)]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if value is Ellipsis:
        return {"__ellipsis__": True}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise RuleOutputTypeError(
        f"a channel rule asked to record the argument {value!r} (a {type(value).__name__}) as a graph "
        f"edit in a plan; plans hold only None, bool, int, float, str, slices, tuples, lists and fx "
        f"nodes. Fix the rule to record the size as one of those (an int), or mark the module opaque.")


def decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    """Inverse of :func:`encode`, resolving node names in ``nodes``."""
    if isinstance(value, dict):
        if "__node__" in value:
            return nodes[value["__node__"]]
        if "__slice__" in value:
            return slice(*(decode(v, nodes) for v in value["__slice__"]))
        if "__tuple__" in value:
            return tuple(decode(v, nodes) for v in value["__tuple__"])
        if "__ellipsis__" in value:
            return Ellipsis
        raise PlanFormatError(
            f"the plan's graph edits hold {value!r}, an encoded value this version cannot read (it "
            f"reads __node__, __slice__, __tuple__ and __ellipsis__); the plan was written by another "
            f"slimprune version or edited by hand. Make the plan again with this version.")
    if isinstance(value, list):
        return [decode(v, nodes) for v in value]
    return value


def apply_edits(graph: fx.Graph, edits: Sequence[dict[str, Any]]) -> None:
    """Apply recorded edits to ``graph`` in place."""
    nodes = {n.name: n for n in graph.nodes}
    for e in edits:
        node = nodes.get(e["node"])
        if node is None:
            raise PlanMismatchError(
                f"the plan rewrites node {e['node']!r}, which the traced model does not have; "
                f"the model's forward changed since the plan was made. Make a new plan."
            )
        if e["kind"] == "set_arg":
            args = list(node.args)
            if e["index"] == len(args):  # an omitted optional argument, now given
                args.append(None)
            args[e["index"]] = decode(e["value"], nodes)
            node.args = tuple(args)
        elif e["kind"] == "split_sizes":
            src = node.args[0]
            node.op = "call_function"
            node.target = torch.split
            node.args = (src, list(e["sizes"]), e["dim"])
            node.kwargs = {}
        else:
            raise PlanFormatError(
                f"the plan's edit of node {e['node']!r} is of kind {e['kind']!r}; this version applies "
                f"'set_arg' and 'split_sizes' edits only. The plan was written by another slimprune "
                f"version or edited by hand: make the plan again with this version.")
    graph.lint()
