"""The rewriter: a physically smaller module from a model and a plan.

Slices every recorded parameter and buffer, folds the constants of removed channels into
the consumers' biases, updates module attributes through each rule's ``resize``, and,
when ``forward`` hard-codes a channel count, rewrites those literals in the traced graph
and gives the pruned module that graph as its ``forward`` (:mod:`slimprune._dropin`: same
class, attributes, module hierarchy and state_dict keys).
"""

from __future__ import annotations

import copy
import json
import operator
import warnings
from collections import defaultdict

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules import module as _module_globals

from ._copy import copy_model
from ._dropin import collapse_children, dropin
from ._edits import apply_edits, encode
from ._plan import PruningPlan
from ._submodules import Submodules
from ._trace import describe_fixed, symbolic_else_concrete
from .errors import PlanMismatchError, ShapeSpecializationWarning, user_stacklevel
from .rules import has_module_rule, lookup_rule
from .rules.heads import resize_heads, snapshot_heads

__all__ = ["apply_plan"]


def _owner(model: nn.Module | Submodules, path: str) -> nn.Module:
    try:
        if isinstance(model, Submodules):
            return model(path)
        return model.get_submodule(path) if path else model
    except AttributeError as exc:
        raise PlanMismatchError(
            f"the plan slices module {path!r}, which this model does not have; make a new plan for it"
        ) from exc


def _memory_format(t: torch.Tensor) -> torch.memory_format | None:
    """The channels-last format ``t`` is laid out in, if the user chose one (None: the default).

    ``index_select`` returns a standard contiguous tensor, so a pruned parameter is put back
    in the layout of the original (``model.to(memory_format=torch.channels_last)``).
    """
    if t.is_contiguous():  # includes tensors that are both (1x1 kernels, one input channel)
        return None
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _index(kept: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``torch.as_tensor(kept, dtype=torch.long, device=device)``, through NumPy: torch converts
    a tuple of Python ints one element at a time (~40 us for a few hundred, ~10 here)."""
    index = torch.from_numpy(np.fromiter(kept, dtype=np.int64, count=len(kept)))
    return index if device.type == "cpu" else index.to(device)


def _new_tensors(model: nn.Module, plan: PruningPlan,
                 subs: Submodules | None = None) -> dict[tuple[str, str], torch.Tensor]:
    """Sliced copies of every changed parameter/buffer, with folded biases (nothing is mutated)."""
    subs = subs or Submodules(model)
    by_key: dict[tuple[str, str], list] = defaultdict(list)
    for s in plan.changed:
        by_key[(s.module, s.param)].append(s)
    out: dict[tuple[str, str], torch.Tensor] = {}
    # A group's kept channels slice every member (a conv's rows, its norm's four vectors, the
    # next conv's columns): one index tensor per kept tuple and device serves them all.
    indexes: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
    for (module, param), decisions in by_key.items():
        t = getattr(_owner(subs, module), param).detach()
        layout = _memory_format(t)
        for s in sorted(decisions, key=lambda d: d.dim):
            if t.shape[s.dim] != s.size:
                raise PlanMismatchError(f"{s.name} has size {t.shape[s.dim]}, the plan expects {s.size}")
            key = (s.kept, t.device)
            index = indexes.get(key)
            if index is None:
                index = indexes[key] = _index(s.kept, t.device)
            t = t.index_select(s.dim, index)
        # index_select allocates: t is a fresh tensor already (a changed slice always selects),
        # so only a channels-last original needs another copy, into its layout.
        out[(module, param)] = t if layout is None else t.contiguous(memory_format=layout)

    _share_tied(subs, out)
    deltas: dict[tuple[str, str], torch.Tensor] = {}
    for f in plan.folds:
        m = _owner(subs, f.module)
        rule = lookup_rule("call_module", None, m)
        if rule is None or rule.fold is None:
            continue
        consts = torch.zeros(f.size, dtype=torch.float64)
        consts[list(f.index)] = torch.tensor(f.value, dtype=torch.float64)
        with torch.no_grad():
            d = rule.fold(m, consts.to(next(m.parameters()).device))
        # a fold gives the change of the module's one bias, or of several by name (an LSTM's per direction)
        named = d.items() if isinstance(d, dict) else [("in_proj_bias" if isinstance(m, nn.MultiheadAttention)
                                                        else "bias", d)]
        for name, delta in named:
            key = (f.module, name)
            deltas[key] = deltas[key] + delta if key in deltas else delta
    for (module, name), d in deltas.items():
        m = _owner(subs, module)
        kept = _kept_outputs(m, plan, module) if name in ("bias", "in_proj_bias") else plan.kept(module, name, 0)
        if kept is not None:
            d = d[list(kept)]
        bias = getattr(m, name)
        base = out.get((module, name))
        if base is None:
            if bias is not None:
                base = bias.detach() if kept is None else bias.detach()[list(kept)]
            else:
                base = torch.zeros(d.shape, dtype=d.dtype, device=d.device)
        out[(module, name)] = (base + d.to(base.dtype)).clone()
    return out


def _share_tied(model: Submodules, out: dict[tuple[str, str], torch.Tensor]) -> None:
    """Names of one original tensor (tied embeddings) get one sliced tensor, so they stay tied."""
    first: dict[int, tuple[str, str]] = {}
    for key in list(out):
        original = getattr(_owner(model, key[0]), key[1])
        seen = first.setdefault(id(original), key)
        if seen != key:
            if out[seen].shape != out[key].shape or not torch.equal(out[seen], out[key]):
                raise PlanMismatchError(f"{key[0]}.{key[1]} is the same tensor as {seen[0]}.{seen[1]}, "
                                        "but the plan slices them differently; re-plan on this model")
            out[key] = out[seen]


def _has_path(root: nn.Module, path: str) -> bool:
    try:
        operator.attrgetter(path)(root)
    except AttributeError:
        return False
    return True


def _retrace(model: nn.Module, plan: PruningPlan) -> tuple[fx.GraphModule, tuple[str, ...]]:
    """The graph the plan was made on: symbolic, or concrete on inputs of the plan's shapes.

    Returns the GraphModule and the shape-dependent decisions a concrete trace fixed.
    """
    def inputs() -> list[tuple[torch.Tensor, ...]]:
        if not plan.input_shapes:
            return []  # no shapes to run it on: the symbolic error stands
        p = next(model.parameters(), None)
        dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.float32
        gen = torch.Generator().manual_seed(0)
        return [tuple(torch.randn(s, generator=gen, dtype=dtype).to(p.device if p is not None else "cpu")
                      for s in plan.input_shapes)]

    return symbolic_else_concrete(model, inputs, lambda gm, _: (gm, ()), lambda gm, _, fixed, __: (gm, fixed),
                                  plan.opaque, has_module_rule)


def _attributes_took_effect(target: nn.Module, plan: PruningPlan, edits: list[dict]) -> bool:
    """Re-trace the pruned model: does every edited literal now read the new value?"""
    try:
        gm, _ = _retrace(target, plan)
    except Exception:
        return False
    nodes = {n.name: n for n in gm.graph.nodes}
    for e in edits:
        node = nodes.get(e["node"])
        index, value = e.get("index", 1), e.get("value", e.get("new"))  # (a split size has no index)
        if node is None or index >= len(node.args) or encode(node.args[index]) != value:
            return False
    return True


def _kept_outputs(m: nn.Module, plan: PruningPlan, module: str) -> tuple[int, ...] | None:
    """Output channels of a consumer that stay (None: all of them)."""
    if isinstance(m, nn.MultiheadAttention):
        return plan.kept(module, "in_proj_weight", 0)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        per = plan.kept(module, "weight", 1)
        if per is None:
            return None
        co = m.weight.shape[1]
        return tuple(g * co + q for g in range(m.groups) for q in per)
    if isinstance(getattr(m, "bias", None), torch.Tensor):
        # the bias is one entry per output, whichever weight dim holds the outputs
        # (transformers' Conv1D stores its weight (in, out))
        return plan.kept(module, "bias", 0)
    return plan.kept(module, "weight", 0)


def _plain_parameter_assignment(m: nn.Module) -> bool:
    """Does ``setattr(m, name, parameter)``, for a name that holds a parameter already, only
    store it in ``m._parameters``? (nn.Module's ``__setattr__`` and ``register_parameter``,
    and no global parameter registration hook.)"""
    cls = type(m)
    return (cls.__setattr__ is nn.Module.__setattr__ and cls.register_parameter is nn.Module.register_parameter
            and not _module_globals._global_parameter_registration_hooks)


def _assign(model: nn.Module, tensors: dict[tuple[str, str], torch.Tensor], originals: dict[str, nn.Module]) -> None:
    made: dict[int, nn.Parameter] = {}  # one Parameter per tensor: tied names stay tied
    subs = Submodules(model)  # setting parameters leaves the module tree as it is
    for (module, param), t in tensors.items():
        m = _owner(subs, module)
        if param in m._buffers:
            m._buffers[param] = t
        else:
            # requires_grad comes from the original parameter (the copy may hold a plain tensor)
            old = getattr(originals[module], param, None)
            req = old.requires_grad if isinstance(old, nn.Parameter) else True
            if id(t) not in made:
                made[id(t)] = nn.Parameter(t, requires_grad=req)
            if param in m._parameters and _plain_parameter_assignment(m):
                m._parameters[param] = made[id(t)]  # what setattr ends in, less its checks
            else:
                setattr(m, param, made[id(t)])
    # A name the graph never read that held the same original tensor (T5's ``shared``, whose
    # weight encoder.embed_tokens and lm_head use) got the new tensor from the copy's memo:
    # it gets the same new Parameter, so the tie survives and no plain tensor is left there.
    unread: list[nn.Module] = []
    for m in model.modules():
        for name, value in list(m._parameters.items()):
            if value is not None and id(value) in made and value is not made[id(value)]:
                m._parameters[name] = made[id(value)]
                unread.append(m)
    for module, orig in originals.items():
        m = _owner(subs, module)
        rule = lookup_rule("call_module", None, m)
        if rule is not None and rule.resize is not None:
            rule.resize(m, orig)
    for m in unread:  # (their sizes, embedding_dim, follow the new weight too)
        rule = lookup_rule("call_module", None, m)
        if rule is not None and rule.resize is not None:
            rule.resize(m, copy.copy(m))


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_owner(model, parent), name, new)


def _joined(*paths: str) -> str:
    return ".".join(p for p in paths if p)


def apply_plan(model: nn.Module, plan: PruningPlan, inplace: bool = False,
               where: str = "", fresh: bool = False) -> nn.Module:
    """Return the pruned model (see :func:`slimprune.apply`). ``fresh``: the plan was made from this very model in
    this call (``prune``), so it passes ``plan.check_model`` by construction (the model was
    checked eager and fingerprinted by ``plan``, and the plan's indices come from its graph):
    the check is skipped.
    ``where``: the path of ``model`` in the user's model (a region's), for errors."""
    if not fresh:
        plan.check_model(model)
    if plan.regions:
        # Every region is pruned from the original first, so a failure changes nothing.
        pruned = [(path, apply_plan(_owner(model, path), sub, where=_joined(where, path)))
                  for path, sub in plan.regions]
        target = model if inplace else copy_model(model, where=where)
        for path, new in pruned:
            _set_submodule(target, path, new)
        return target
    subs = Submodules(model)
    tensors = _new_tensors(model, plan, subs)
    modules = {module for module, _ in tensors}
    # Snapshots keep the original attributes (groups, widths) that resize rules read.
    originals = {name: copy.copy(_owner(subs, name)) for name in modules}
    head_modules = snapshot_heads(model) if tensors else {}  # attention modules counting heads
    edits = [json.loads(e) for e in plan.edits]
    graph = None
    traced: fx.GraphModule | None = None  # the re-traced model, when the graph is rewritten
    fixed: tuple[str, ...] = ()
    # Literals that came from a module attribute (self.hidden_dim) are fixed by updating the
    # attribute; only the others need a rewritten graph.
    if edits and not all("attr" in e for e in edits):
        traced, fixed = _retrace(model, plan)
        graph = traced.graph
        apply_edits(graph, edits)
    if inplace:
        target = model
    else:
        memo: dict[int, object] = {}
        for (module, param), t in tensors.items():
            old = getattr(_owner(subs, module), param, None)
            if isinstance(old, torch.Tensor):
                memo[id(old)] = t  # replaced below: skip copying the old tensor
        target = copy_model(model, memo, where=where)
    _assign(target, tensors, originals)
    resize_heads(target, head_modules)
    changed = []
    for e in edits:
        if "attr" in e:
            owner, name = _owner(target, e["attr"][0]), e["attr"][1]
            changed.append((owner, name, getattr(owner, name)))
            setattr(owner, name, tuple(e["new"]) if isinstance(e["new"], list) else e["new"])
    # An attribute of a module whose class has a head resizer (GPT-2's split_size) is known to
    # be what its forward reads; any other is checked by tracing the pruned model again.
    unknown = [e for e in edits if "attr" in e and e["attr"][0] not in head_modules]
    if graph is None and unknown and not _attributes_took_effect(target, plan, unknown):
        # The literal only happened to equal that attribute: undo, and rewrite the graph.
        for owner, name, old in changed:
            setattr(owner, name, old)
        traced, fixed = _retrace(model, plan)
        graph = traced.graph
        apply_edits(graph, edits)
    if graph is None:
        return target
    if fixed:
        warnings.warn(
            f"the pruned {type(model).__name__}'s forward replays the graph as traced on inputs of "
            f"shape {list(plan.input_shapes)}: Python decisions on shapes were fixed there "
            f"({describe_fixed(fixed)}). Run it on inputs of those shapes, or "
            f"make the plan with example_inputs= of the shape you will use.",
            ShapeSpecializationWarning, stacklevel=user_stacklevel(),
        )
    for node in graph.nodes:  # constants fx made while tracing live on the traced module only
        if node.op == "get_attr" and traced is not None and not _has_path(target, str(node.target)):
            owner_path, _, name = str(node.target).rpartition(".")
            setattr(_owner(target, owner_path), name, operator.attrgetter(str(node.target))(traced))
    # The pruned module keeps its class and attributes; only its forward is the edited graph,
    # calling its children as modules again where nothing inside them was edited.
    collapse_children(graph, target, {str(e["node"]) for e in edits if "node" in e})
    return dropin(target, graph)
