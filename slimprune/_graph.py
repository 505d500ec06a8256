"""The channel dependency graph: which channels of which layers live or die together.

``build_channel_graph(traced)`` walks the fx graph once. Every tensor that has a channel
axis carries a :class:`ChannelInfo`: the axis and one integer *label* per channel. Rules
(``slimprune/rules``) pass labels through ops, start fresh labels where a layer creates
channels (conv, linear) and *tie* labels that must be removed together (residual add,
depthwise conv, ...). After the walk a vectorised union-find turns labels into *units*
(one removable channel, possibly spanning many layers), and units whose members are the
same set of parameter slices form a :class:`ChannelGroup` (a residual stage, one conv's
output, ...). Label 0 is the KEEP sentinel: anything tied to it is never removed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ._channels import ChannelInfo as ChannelInfo
from ._channels import SizeOf as SizeOf
from ._signatures import group_units
from ._trace import SHAPE, Traced
from .errors import RuleError, UnsupportedOpWarning, user_stacklevel
from .rules import lookup_rule

__all__ = [
    "KEEP",
    "ChannelInfo",
    "ParamSlice",
    "Consumer",
    "Barrier",
    "ChannelGroup",
    "ChannelGraph",
    "build_channel_graph",
]

KEEP = 0

# Roles of a parameter slice: how silencing treats it.
#   out    producer rows (conv/linear weight dim 0, bias): zeroed by silence
#   in     consumer columns (conv/linear weight dim 1): sliced only
#   scale  per-channel norm weight (BN gamma): zeroed by silence
#   shift  per-channel norm bias (BN beta): zeroed by silence unless it is folded
#   source a parameter injected into the stream (pos embedding, class token, layer scale): zeroed
#   mean   a norm's running mean: zeroed with whole channels (ratio plans), so a removed
#          channel is zero in eval mode as it is with batch statistics (an affine-free norm
#          would otherwise output -mean/std in eval and 0 in training)
#   aux    sliced only (running variances, PReLU slopes, buffers)
ROLES = ("out", "in", "scale", "shift", "source", "mean", "aux")


@dataclass(frozen=True)
class ParamSlice:
    """One dimension of one parameter (or buffer) that is sliced when units are removed."""

    module: str
    param: str
    dim: int
    role: str
    units: np.ndarray  # unit id of each index along ``dim``

    @property
    def name(self) -> str:
        prefix = f"{self.module}." if self.module else ""
        return f"{prefix}{self.param}[{self.dim}]"


@dataclass(frozen=True)
class Consumer:
    """A layer that mixes channels (conv/linear input): where removed constants are folded."""

    node: str
    module: str
    axis: int
    units: np.ndarray
    graph: int = 0  # 0: the traced graph; 1: the other mode's graph (train/eval branches)


@dataclass(frozen=True)
class Barrier:
    """An op slimprune does not understand: channels through it are kept."""

    node: str
    op: str
    where: str
    reason: str

    def describe(self) -> str:
        return f"{self.op} at node {self.node!r} ({self.where or '<root>'}): {self.reason}"


@dataclass(frozen=True)
class ChannelGroup:
    """Units with the same members: removing one removes an index from every member."""

    id: int
    units: np.ndarray  # unit ids in channel order of the first member
    members: tuple[int, ...]  # indices into ChannelGraph.slices
    exact: bool  # False when a member normalises across channels (LayerNorm, GroupNorm)

    def __len__(self) -> int:
        return int(self.units.size)


EditFn = Callable[[Callable[[np.ndarray], np.ndarray]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates one call costs per sample, as the pruned parameter's size times ``factor``.

    ``dim`` None: the parameter's element count (a conv or Linear weight used at ``factor``
    output positions). ``dim`` set: only that axis's kept size, for products whose size
    scales with one channel axis alone (attention's q·kᵀ and weights·v scale with the kept
    embedding width: ``out_proj.weight`` axis 1 times 2·L_q·L_k).
    """

    module: str
    param: str
    dim: int | None
    factor: float


@dataclass(frozen=True)
class ChannelGraph:
    """The result of :func:`build_channel_graph`; read-only."""

    traced: Traced
    slices: tuple[ParamSlice, ...]
    groups: tuple[ChannelGroup, ...]
    consumers: tuple[Consumer, ...]
    barriers: tuple[Barrier, ...]
    edits: tuple[tuple[str, EditFn], ...]
    other_edits: tuple[tuple[str, EditFn], ...]
    costs: tuple[Cost, ...]  # what each call multiplies, per sample
    num_units: int
    root: np.ndarray = field(repr=False)  # unit id of every raw label
    unit_to_group: np.ndarray = field(repr=False)
    # Units along the channel axis of every node of the traced graph that carries one
    # (what :mod:`._zero_proof` follows); empty for graphs built without it.
    node_units: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    # Built with keep_outputs=False: (where in the returned structure, its channels' units) of
    # every returned tensor with channels, so a plan can say which outputs got narrower.
    returned: tuple[tuple[str, np.ndarray], ...] = field(default=(), repr=False)

    def kept_fn(self, removed: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """``kept(labels)``: which raw labels survive when the units in ``removed`` go."""
        return lambda labels: ~removed[self.root[np.asarray(labels, dtype=np.int64)]]

    @property
    def gm(self) -> fx.GraphModule:
        return self.traced.gm

    def graphs(self) -> list[fx.GraphModule]:
        """The traced graph, then the other mode's graph when forward depends on the mode."""
        return [self.traced.gm] + ([self.traced.other_mode] if self.traced.other_mode is not None else [])

    def group_of(self, module: str) -> list[ChannelGroup]:
        """Groups that have a member in ``module``."""
        ids = {i for i, s in enumerate(self.slices) if s.module == module}
        return [g for g in self.groups if ids & set(g.members)]

    def to_networkx(self) -> nx.Graph:
        """A bipartite graph: group nodes ``("group", id)`` linked to slice nodes (names)."""
        g = nx.Graph()
        for s in self.slices:
            g.add_node(s.name, kind="slice", role=s.role, size=int(s.units.size))
        for grp in self.groups:
            g.add_node(("group", grp.id), kind="group", size=len(grp), exact=grp.exact)
            for m in grp.members:
                g.add_edge(("group", grp.id), self.slices[m].name)
        return g

    def clusters(self) -> list[set[str]]:
        """Layers coupled through shared channels, as connected components (networkx)."""
        comps = nx.connected_components(self.to_networkx())
        return [{n for n in c if isinstance(n, str)} for c in comps]


_METADATA_ATTRIBUTES = frozenset({"dtype", "device", "is_cuda", "requires_grad", "ndim", "layout"})
_METADATA_METHODS = frozenset({"dim", "get_device", "numel", "nelement"})


def _metadata_only(node: fx.Node) -> bool:
    """Is a parameter read only for its dtype or device (``self.conv.weight.device`` in
    timm's EdgeNeXt positional encoding)? Then none of its channels is used there, and it
    must not become a slice of its own (whose free channels would be removed from it)."""
    import builtins

    def metadata(user: fx.Node) -> bool:
        if user.op == "call_function" and user.target is builtins.getattr:
            return len(user.args) > 1 and user.args[1] in _METADATA_ATTRIBUTES
        return user.op == "call_method" and user.target in _METADATA_METHODS and user.args[0] is node

    # (a read nothing uses, ``self.proj.weight`` whose dtype a concrete trace answered, counts too)
    return all(metadata(u) for u in node.users)


def _iter_nodes(value: Any) -> Iterator[fx.Node]:
    if isinstance(value, fx.Node):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _iter_nodes(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _iter_nodes(v)
    elif isinstance(value, slice):
        yield from _iter_nodes((value.start, value.stop, value.step))


def _iter_infos(value: Any) -> Iterator[ChannelInfo]:
    if isinstance(value, ChannelInfo):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _iter_infos(v)


def _returned(values: dict[fx.Node, Any], value: Any, where: str) -> list[tuple[str, np.ndarray]]:
    """(where, labels) of every labelled tensor in a returned structure: ``output["logits"]``,
    ``output[0]``; a node holding several (a namedtuple, split outputs) counts its parts."""
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in _returned(values, v, f"{where}[{k!r}]")]
    if isinstance(value, (tuple, list)):
        return [r for i, v in enumerate(value) for r in _returned(values, v, f"{where}[{i}]")]
    if not isinstance(value, fx.Node):
        return []
    info = values.get(value)
    if isinstance(info, ChannelInfo):
        return [(where, info.labels)]
    parts = list(_iter_infos(info))
    return [(f"{where}[{i}]", p.labels) for i, p in enumerate(parts)] if len(parts) > 1 else \
        [(where, p.labels) for p in parts]


def describe_target(node: fx.Node) -> str:
    """``call_function torch.roll`` style description of a node's operation."""
    t = node.target
    if node.op == "call_function":
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__name__", repr(t))
        if mod in ("_operator", "operator"):
            mod = "operator"
        elif mod.startswith("torch"):
            mod = "torch.nn.functional" if "functional" in mod else "torch"
        return f"call_function {mod + '.' if mod else ''}{name}"
    if node.op == "call_method":
        return f"call_method Tensor.{t}"
    return f"{node.op} {t}"


class _Builder:
    """The context rules see while the graph is walked (their ``ctx`` argument)."""

    def __init__(self, traced: Traced, keep_outputs: bool = True) -> None:
        self.traced = traced
        self.keep_outputs = keep_outputs  # the widths the model returns are the user's
        self.gm = traced.gm
        self.modules = dict(self.gm.named_modules())
        self.next_id = 1
        self.ties: list[tuple[np.ndarray, np.ndarray]] = []
        self.slices: dict[tuple[str, str, int], list[Any]] = {}
        self.consumers: list[tuple[str, str, int, np.ndarray]] = []
        self.barriers: list[Barrier] = []
        self.edits: list[tuple[str, EditFn]] = []
        self.inexact: list[np.ndarray] = []
        self.costs: list[tuple[str, int]] = []
        self.values: dict[fx.Node, Any] = {}
        self.batched: set[fx.Node] = set()
        self.sized: set[fx.Node] = set()  # nodes whose rule took sizes as sizes (sizes_from)
        self.current_node: fx.Node | None = None
        self.graph_index = 0
        self.other_edits: list[tuple[str, EditFn]] = []
        self.current: fx.GraphModule = traced.gm
        # Every (module, name) each parameter tensor is sliced under (tied weights: several)
        self.tensor_names: dict[int, dict[tuple[str, str], None]] = {}
        # Which parameter slices each call of a module registered: a module called at several
        # sites has one set of weights, so a slice only some calls could label is kept.
        self.site_keys: dict[str, list[frozenset[tuple[str, str, int]]]] = {}
        self._seen: set[tuple[str, str, int]] | None = None
        self.pieces: list[np.ndarray] = []
        self.node_labels: dict[str, np.ndarray] = {}  # the traced graph's nodes with a channel axis
        self.returned: list[tuple[str, np.ndarray]] = []  # (keep_outputs=False) the returned channels

    # ----------------------------------------------------------------- reading the graph
    def arg(self, node: fx.Node, index: int, name: str | None = None, default: Any = None) -> Any:
        """Positional argument ``index`` or keyword ``name`` of ``node``."""
        if index < len(node.args):
            return node.args[index]
        if name is not None and name in node.kwargs:
            return node.kwargs[name]
        return default

    def info(self, value: Any) -> Any:
        """The ChannelInfo (or tuple of them) of an argument; None for anything unlabelled."""
        if isinstance(value, fx.Node):
            return self.values.get(value)
        return None

    def input(self, node: fx.Node, index: int = 0, name: str | None = None) -> ChannelInfo | None:
        v = self.info(self.arg(node, index, name))
        return v if isinstance(v, ChannelInfo) else None

    def shape(self, value: Any) -> Any:
        """``torch.Size`` of a node's output (or a nested tuple of them); None if not a tensor."""
        if isinstance(value, fx.Node):
            return value.meta.get(SHAPE)
        if isinstance(value, torch.Tensor):
            return value.shape
        return None

    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def where(self, node: fx.Node) -> str:
        """The module path an op belongs to (its own path for call_module)."""
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            last = list(stack.values())[-1]
            return str(last[0] if isinstance(last, tuple) else last)
        return ""

    def is_batched(self, node: Any) -> bool:
        """True if the tensor depends on a model input (its axis 0 is a batch axis)."""
        return isinstance(node, fx.Node) and node in self.batched

    # ------------------------------------------------------------------ making labels
    @staticmethod
    def info_of(axis: int, labels: np.ndarray) -> ChannelInfo:
        """A ChannelInfo for an output whose channels sit on ``axis``."""
        return ChannelInfo(int(axis), np.asarray(labels, dtype=np.int64))

    def fresh(self, n: int) -> np.ndarray:
        """``n`` new labels (new channels)."""
        out = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        return out

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Labels at the same positions of ``a`` and ``b`` live or die together."""
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
        self.ties.append((a.ravel().copy(), b.ravel().copy()))

    def keep(self, labels: np.ndarray) -> None:
        """These labels are never removed."""
        labels = np.asarray(labels, dtype=np.int64).ravel()
        self.tie(labels, np.zeros_like(labels))

    def keep_all(self, value: Any) -> None:
        """Keep every label reachable from an argument structure."""
        for n in _iter_nodes(value):
            for info in _iter_infos(self.values.get(n)):
                self.keep(info.labels)

    def param(self, node: fx.Node, name: str, dim: int, labels: np.ndarray, role: str) -> None:
        """Record that ``module.name`` is sliced along ``dim`` by ``labels``."""
        self.slice_of(str(node.target), name, dim, labels, role)

    def slice_of(self, module: str, name: str, dim: int, labels: np.ndarray, role: str) -> None:
        if role not in ROLES:
            raise RuleError(
                f"a channel rule sliced {module or 'the model'}.{name} (dim {dim}) with role {role!r}; "
                f"the roles are {', '.join(ROLES)}. Fix the rule's ctx.param(...) call to pass one of them.")
        key = (module, name, dim)
        labels = np.asarray(labels, dtype=np.int64)
        # One tensor under two names (tied weights): see join_tied_tensors
        owner = self.submodule(module)
        tensor = getattr(owner, name, None)
        if isinstance(tensor, torch.Tensor):
            self.tensor_names.setdefault(id(tensor), {})[(module, name)] = None
        if self._seen is not None:
            self._seen.add(key)
        if key in self.slices:  # a shared module or parameter: every use must agree
            self.tie(self.slices[key][0], labels)
        else:
            self.slices[key] = [labels, role]

    def consumer(self, node: fx.Node, labels: np.ndarray, axis: int) -> None:
        """Mark ``node`` as mixing the channels ``labels`` of its input (fold target)."""
        self.consumers.append((node.name, str(node.target), axis, np.asarray(labels, dtype=np.int64), self.graph_index))

    def piece(self, labels: np.ndarray) -> None:
        """These labels are a part of a tensor's channels (a split piece, a slice) that becomes
        a tensor of its own: it keeps ``min_channels`` too, like a group.

        Its channels may have the same members as the rest of the tensor (a piece that reaches
        only pooling, padding or interpolation before a concat), so the group's minimum alone
        could leave it with none: ``max_pool2d`` and others refuse a tensor of 0 channels.
        """
        self.pieces.append(np.asarray(labels, dtype=np.int64).ravel())

    def inexact_units(self, labels: np.ndarray) -> None:
        """Removing these labels changes the other channels too (cross-channel norms)."""
        self.inexact.append(np.asarray(labels, dtype=np.int64).ravel())

    def cost(self, node: fx.Node, positions: int) -> None:
        """The module's weight is used ``positions`` times per sample (MACs = numel × positions)."""
        self.cost_of(str(node.target), "weight", positions)

    def cost_of(self, module: str, param: str, factor: float, dim: int | None = None) -> None:
        """Per sample, a call costs ``factor`` times the pruned size of ``module.param``
        (its element count, or with ``dim`` the kept size of that axis alone) in MACs."""
        self.costs.append(Cost(module, param, dim, float(factor)))

    def edit(self, node: fx.Node, fn: EditFn) -> None:
        """Register a rewrite of literal arguments of ``node``, computed once units are chosen."""
        (self.edits if self.graph_index == 0 else self.other_edits).append((node.name, fn))

    def barrier(self, node: fx.Node, reason: str, report: bool = False) -> None:
        """Keep every channel entering ``node``; its output carries no labels.

        Only ops that activations flow through are reported: parameters used by an op
        without a rule (a relative-position table, say) are simply kept. ``report=True``
        reports it anyway (a tensor made from literal sizes that keeps heads whole).
        """
        self.keep_all((node.args, node.kwargs))
        if report or node in self.batched:
            self.barriers.append(Barrier(node.name, describe_target(node), self.where(node), reason))
        return None

    def sizes_rewritten(self, node: fx.Node) -> None:
        """This node's size arguments are replaced by literals after pruning (split sizes),
        so sizes computed from channel counts in them are harmless."""
        self.sized.add(node)

    def sizes_from(self, values: list[Any], info: ChannelInfo | None, axis: int | None) -> None:
        """Sizes computed from another tensor's channel count must match this one's channels."""
        self.sized.add(self.current_node)
        for k, src in enumerate(self.size_infos(values)):
            if not isinstance(src, SizeOf) or not src.single or src.derived or src.dims[0] is None:
                continue  # (a derived size follows the kept width wherever it is a size)
            labels = src.dims[0]
            if info is not None and axis == k and info.labels.size == labels.size:
                self.tie(labels, info.labels)
            else:
                self.keep(labels)

    def size_infos(self, values: list[Any]) -> list[Any]:
        """What each size of a shape argument was read from; one argument that is a whole
        shape (``x.view(y.shape)``, ``x.view(output_shape)``) stands for one size per axis."""
        infos = [self.values.get(v) if isinstance(v, fx.Node) else None for v in values]
        if len(infos) == 1 and isinstance(infos[0], SizeOf) and not infos[0].single and not infos[0].derived:
            return [SizeOf((d,), single=True) for d in infos[0].dims]
        return infos

    def passthrough(self, node: fx.Node, index: int = 0, name: str | None = "input") -> ChannelInfo | None:
        """Output channels are input channels (activations, pooling, dropout, ...)."""
        x = self.input(node, index, name)
        if x is None:
            return None
        out = self.shape(node)
        inp = self.shape(self.arg(node, index, name))
        if not isinstance(out, torch.Size) or inp is None or len(out) != len(inp) or out[x.axis] != inp[x.axis]:
            return self.barrier(node, f"the op changes the channel axis {x.axis} ({inp} -> {out})")
        return x

    def submodule(self, path: str) -> nn.Module:
        """The module at ``path`` in the graph being walked (the table of the main graph's
        modules answers most lookups without get_submodule's walk)."""
        if not path:
            return self.current
        m = self.modules.get(path) if self.current is self.gm else None
        return m if m is not None else self.current.get_submodule(path)

    # ------------------------------------------------------------------------ walking
    def _get_attr(self, node: fx.Node) -> ChannelInfo | None:
        obj: Any = self.current
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, torch.Tensor) or obj.dim() == 0 or _metadata_only(node):
            return None
        big = [d for d in range(obj.dim()) if obj.shape[d] > 1]
        if not big:
            return None
        module, _, name = str(node.target).rpartition(".")
        owner = self.submodule(module)
        if name in dict(owner.named_parameters(recurse=False)):
            role = "source"
        elif name in dict(owner.named_buffers(recurse=False)):
            role = "aux"
        else:  # a constant fx created; it cannot be sliced
            return None
        axis = big[-1]
        labels = self.fresh(obj.shape[axis])
        self.slice_of(module, name, axis, labels, role)
        return ChannelInfo(axis, labels)

    def _check(self, node: fx.Node, value: Any) -> Any:
        """Reject rule output that does not match the traced shapes (a rule bug)."""
        if isinstance(value, SizeOf):
            return value
        shape = self.shape(node)
        if isinstance(value, ChannelInfo):
            if not isinstance(shape, torch.Size) or value.axis >= len(shape) or shape[value.axis] != value.labels.size:
                raise RuleError(self._bad_output(node, f"{value.labels.size} labels on axis {value.axis}", shape))
            return value
        if isinstance(value, tuple):
            if not isinstance(shape, tuple) or len(shape) != len(value):
                raise RuleError(self._bad_output(node, f"{len(value)} outputs", shape))
            for v, s in zip(value, shape):
                if isinstance(v, ChannelInfo) and (not isinstance(s, torch.Size) or s[v.axis] != v.labels.size):
                    raise RuleError(self._bad_output(node, f"{v.labels.size} labels on axis {v.axis}", s))
            return value
        return None

    @staticmethod
    def _bad_output(node: fx.Node, got: str, shape: Any) -> str:
        return (f"the channel rule for {describe_target(node)} (node {node.name}) returned {got}, but the "
                f"traced output has shape {shape}; a rule must return one label per channel along an "
                f"existing axis (or one per output of a tuple). Fix the rule, or mark the module opaque.")

    def walk(self, gm: fx.GraphModule, index: int = 0) -> None:
        self.current, self.graph_index = gm, index
        self.modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            self.current_node = node
            if node.op == "placeholder":
                self.batched.add(node)
                self.values[node] = None
                continue
            # (all_input_nodes: the nodes in args and kwargs, each once, which fx keeps on the node)
            if any(a in self.batched for a in node.all_input_nodes):
                self.batched.add(node)
            if node.op == "get_attr":
                self.values[node] = self._get_attr(node)
                continue
            if node.op == "output":
                if self.keep_outputs:
                    self.keep_all(node.args)
                elif index == 0:
                    self.returned += _returned(self.values, node.args[0] if node.args else None, "output")
                continue
            module = self.modules.get(node.target) if node.op == "call_module" else None
            rule = lookup_rule(node.op, node.target, module)
            if rule is None and isinstance(node.target, type) and issubclass(node.target, tuple):
                # A namedtuple of outputs (GoogLeNetOutputs): its fields keep their channels.
                self.values[node] = tuple(self.info(a) for a in node.args)
                continue
            if rule is None:
                labelled = any(
                    any(True for _ in _iter_infos(self.values.get(n))) for n in node.all_input_nodes
                )
                value = self.barrier(node, "no channel rule") if labelled else None
            else:
                n_ties, n_slices = len(self.ties), len(self.slices)
                self._seen = set()
                try:
                    value = self._check(node, rule.propagate(self, node))
                except Exception as exc:  # a rule that cannot handle this call: keep its channels
                    del self.ties[n_ties:]
                    for key in list(self.slices)[n_slices:]:
                        del self.slices[key]
                    self._seen = set()
                    value = self.barrier(node, f"its rule failed: {type(exc).__name__}: {exc}")
            if node.op == "call_module":
                self.site_keys.setdefault(str(node.target), []).append(frozenset(self._seen or ()))
            self._seen = None
            self.values[node] = self._sizes_used(node, value)
            if index == 0 and isinstance(self.values[node], ChannelInfo):
                self.node_labels[node.name] = self.values[node].labels

    def keep_partly_sliced(self) -> None:
        """A module called at several sites keeps every slice that not all of its calls label.

        One call's input may carry no channel labels (the model input, or a tensor behind a
        barrier) while another's does: slicing the weights for the second call would break
        the first, so those channels are kept.
        """
        for module, sites in self.site_keys.items():
            if len(sites) < 2:
                continue
            every = frozenset.intersection(*sites)
            for key in frozenset.union(*sites) - every:
                if key in self.slices:
                    self.keep(self.slices[key][0])

    def join_tied_tensors(self) -> None:
        """One tensor under several names (tied input/output embeddings) is sliced once.

        A dim every name slices has its labels tied across the names (one set of kept
        channels, so the tensor stays one tensor after pruning); a dim only some names slice
        (the vocabulary rows a tied ``lm_head`` outputs) is kept whole.
        """
        for names in self.tensor_names.values():
            if len(names) < 2:
                continue
            dims: dict[int, list[np.ndarray]] = {}
            for (m, n, d), (labels, _) in self.slices.items():
                if (m, n) in names:
                    dims.setdefault(d, []).append(labels)
            for group in dims.values():
                if len(group) == len(names):
                    for other in group[1:]:
                        self.tie(group[0], other)
                else:
                    for labels in group:
                        self.keep(labels)

    def _sizes_used(self, node: fx.Node, value: Any) -> Any:
        """Channel counts read from a tensor and used as *data* keep their channels.

        ``x.shape[1]`` follows the pruned width at run time. As a reshape size that is what
        is wanted (``sizes_from``); Python arithmetic on it yields a derived size that may
        again feed a reshape; but any other op computing a tensor from it (``y * c ** -0.5``,
        ``torch.tensor(c)``, a slice ``x[:, :c // 2]``) would see a different number after
        pruning, so those channels stay.
        """
        if isinstance(value, SizeOf) or node in self.sized:
            return value
        if not any(isinstance(self.values.get(n), SizeOf) for n in node.all_input_nodes):
            return value  # no size among the inputs (most nodes): nothing below applies
        used = [lab for n in _iter_nodes((node.args, node.kwargs))
                if isinstance(self.values.get(n), SizeOf) for lab in self.values[n].labels()]
        if not used:
            return value
        shape = self.shape(node)
        plain = shape is None or (type(shape) is tuple and all(s is None for s in shape))
        if plain and value is None:  # Python arithmetic on sizes (or on tuples of them)
            return SizeOf(tuple(used), derived=True)
        for lab in used:
            self.keep(lab)
        if node in self.batched:
            self.barriers.append(Barrier(node.name, describe_target(node), self.where(node),
                                         "it uses a channel count read from a tensor's shape as a value"))
        return value


def _union_find(n: int, ties: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Root (smallest label) of every label 0..n-1 after all ties; vectorised hook-and-jump."""
    parent = np.arange(n, dtype=np.int64)
    if not ties:
        return parent
    a = np.concatenate([t[0] for t in ties])
    b = np.concatenate([t[1] for t in ties])
    keep = a != b
    a, b = a[keep], b[keep]
    while a.size:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        a, b, pa, pb = a[differ], b[differ], pa[differ], pb[differ]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping until every label points at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


def _first_positions(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct value of every array, once per array: ``(value, array index, first
    position of the value in that array)``, what ``np.unique(a, return_index=True)`` gives
    for each array, in one sort (ordered by value, then array; values are >= 0)."""
    if not arrays:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    values = np.concatenate(arrays).astype(np.int64, copy=False)
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    if not values.size:
        return values, values, values
    which = np.repeat(np.arange(len(arrays), dtype=np.int64), sizes)
    # one key per (value, array), in that order; a stable sort keeps the first occurrence first
    key = values * len(arrays) + which
    order = np.argsort(key, kind="stable")
    key = key[order]
    first = order[np.r_[True, key[1:] != key[:-1]]]
    starts = np.cumsum(sizes) - sizes
    return values[first], which[first], first - starts[which[first]]


def _warn_barriers(barriers: Iterable[Barrier]) -> None:
    barriers = list(barriers)
    if not barriers:
        return
    seen: dict[str, Barrier] = {}
    for b in barriers:
        seen.setdefault(f"{b.op}|{b.where}|{b.reason}", b)
    lines = "\n".join(f"  - {b.describe()}" for b in seen.values())
    warnings.warn(
        f"slimprune: channels through {len(seen)} op(s) without a usable channel rule are kept "
        f"(barriers):\n{lines}\nRegister a rule with @slimprune.register_rule(<op>) or mark the "
        f"module opaque to silence this warning.",
        UnsupportedOpWarning,
        stacklevel=user_stacklevel(),
    )


def build_channel_graph(traced: Traced, warn: bool = True, keep_outputs: bool = True) -> ChannelGraph:
    """Build the channel dependency graph of a traced model.

    Args:
        traced: the output of :func:`slimprune._trace.trace` (shapes on every node).
        warn: emit one :class:`UnsupportedOpWarning` listing every barrier.
        keep_outputs: keep every channel of the tensors the model returns (their widths are
            the user's); False lets them go (``plan(prune_outputs=True)``).
    """
    b = _Builder(traced, keep_outputs)
    b.walk(traced.gm, 0)
    if traced.other_mode is not None:
        b.walk(traced.other_mode, 1)
    b.keep_partly_sliced()
    b.join_tied_tensors()
    root = _union_find(b.next_id, b.ties)
    keep_root = root[KEEP]

    slices: list[ParamSlice] = []
    for (module, name, dim), (labels, role) in b.slices.items():
        units = root[labels]
        units.setflags(write=False)
        slices.append(ParamSlice(module, name, dim, role, units))

    inexact = np.unique(root[np.concatenate(b.inexact)]) if b.inexact else np.zeros(0, np.int64)

    # A unit needs a member that silencing can zero (a producer row, a norm scale, an
    # injected parameter); otherwise nothing makes it vanish (the coordinate features of a
    # relative-position buffer, say) and it is kept.
    silenceable = np.zeros(b.next_id, dtype=bool)
    for s in slices:
        if s.role in ("out", "scale", "source"):
            silenceable[s.units] = True

    # Units and their signatures (the set of slices they appear in): one (unit, slice, first
    # position) per unit a slice holds, for units that are not kept and can be silenced.
    pair_u, pair_s, pair_p = _first_positions([s.units for s in slices])
    sel = (pair_u != keep_root) & silenceable[pair_u]
    pairs_u, pairs_s, first_pos = [pair_u[sel]], [pair_s[sel]], [pair_p[sel]]
    unit_to_group = np.full(b.next_id, -1, dtype=np.int64)
    groups: list[ChannelGroup] = []
    # A piece of a tensor (split, slice) whose units could all go splits its units off into
    # groups of their own, so that min_channels holds for the piece (see _Builder.piece);
    # a piece holding a kept unit is never empty.
    grouped = np.zeros(b.next_id, dtype=bool)
    grouped[pairs_u[0]] = True
    seen_pieces: set[bytes] = set()
    for labels in b.pieces:
        units = np.unique(root[labels])
        key = units.tobytes()
        if not units.size or key in seen_pieces or not grouped[units].all():
            continue
        seen_pieces.add(key)
        pairs_u.append(units)
        pairs_s.append(np.full(units.size, len(slices) + len(seen_pieces) - 1, dtype=np.int64))
        first_pos.append(np.zeros(units.size, dtype=np.int64))  # (a unit's first pair is a slice's)
    inexact_mask = np.zeros(b.next_id, dtype=bool)
    inexact_mask[inexact] = True
    found = group_units(np.concatenate(pairs_u), np.concatenate(pairs_s), np.concatenate(first_pos))
    for gid, (sig, units) in enumerate(found):
        units.setflags(write=False)
        unit_to_group[units] = gid
        exact = not inexact_mask[units].any()
        groups.append(ChannelGroup(gid, units, tuple(m for m in sig if m < len(slices)), exact))

    consumers = tuple(Consumer(n, m, ax, root[lab], gi) for n, m, ax, lab, gi in b.consumers)
    graph = ChannelGraph(
        traced=traced,
        slices=tuple(slices),
        groups=tuple(groups),
        consumers=consumers,
        barriers=tuple(b.barriers),
        edits=tuple(b.edits),
        other_edits=tuple(b.other_edits),
        costs=tuple(b.costs),
        num_units=b.next_id,
        root=root,
        unit_to_group=unit_to_group,
        node_units={name: root[labels] for name, labels in b.node_labels.items()},
        returned=tuple((where, root[labels]) for where, labels in b.returned),
    )
    if warn:
        _warn_barriers(graph.barriers)
    return graph


# Used by rules that need to normalise ``dim`` arguments.
def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim

