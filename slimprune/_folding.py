"""Constant probing and folding: what a removed channel still outputs, and where it goes.

A removed channel whose γ is zero still outputs the constant act(β). The probe runs the
silenced model (two samples, eval mode and batch statistics) and records, at every
consumer of a removed channel, whether the channel is constant and which constant; the
folds write ``W · const`` into the consumer's bias. Threshold plans use the same probe to
decide which channels may go at all.

A probe result depends only on which channels are silenced (and how) and on the model's
parameters and buffers, so an :class:`~slimprune._analysis.Analysis` keeps a
:class:`ProbeCache` keyed by the former and invalidated when the latter change.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from ._gamma import unit_gamma_max
from ._graph import ChannelGraph
from ._plan import Fold
from ._score_cache import ScoreCache
from .errors import user_stacklevel
from ._silence import merge_stats, probe_consumers, silenced, zero_list
from ._solver import Constraints, apply_rounding, group_caps
from ._zero_proof import zero_at_consumers
from .rules import lookup_rule

__all__ = ["ProbeCache", "probe", "threshold_removed", "folds", "warn_inexact"]


def _parameter_state(model: nn.Module) -> tuple[tuple[int, int, int], ...]:
    """Identity, storage and in-place version of every parameter and buffer: cheap, and it
    changes whenever an optimiser step, ``load_state_dict`` or ``.to()`` changes a value."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


class ProbeCache:
    """Probe results of one model, valid while its parameters and buffers are unchanged.

    Keyed by the silenced units and how they are silenced (whether β is kept, the roles
    zeroed); when any parameter or buffer has changed since the last lookup (an optimiser
    step, ``load_state_dict``), every entry is dropped and the probe runs again.
    """

    def __init__(self, model: nn.Module, size: int = 64, scores: ScoreCache | None = None) -> None:
        self._model = model
        self._size = size
        self._scores = scores  # told about the probe's bit-for-bit restores
        self._entries: OrderedDict[tuple[Any, ...], tuple[dict, list[str]]] = OrderedDict()
        # The state of the parameters when last looked at: taken at the first lookup (the
        # cache is empty until then, so there is nothing an earlier change could invalidate).
        self._state: tuple[tuple[int, int, int], ...] | None = None
        self.hits = 0
        self.misses = 0

    def _check_state(self) -> None:
        state = _parameter_state(self._model)
        if state != self._state:
            self._entries.clear()  # (nothing to clear at the first lookup)
            self._state = state

    def lookup(self, key: tuple[Any, ...]) -> tuple[dict, list[str]] | None:
        self._check_state()
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        return dict(hit[0]), list(hit[1])

    def store(self, key: tuple[Any, ...], stats: dict, notes: list[str]) -> None:
        # Silencing zeroes and restores values in place, which bumps their version counters
        # although the values are restored bit for bit: take the state after the probe.
        # (The state before it is the one the missed lookup just checked.)
        before, self._state = self._state, _parameter_state(self._model)
        if self._scores is not None and before is not None:  # (a lookup, which sets it, comes first)
            self._scores.restored(before, self._state)
        self._entries[key] = (dict(stats), list(notes))
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def probe(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, keep_shift: bool,
          roles: tuple[str, ...], cache: ProbeCache | None = None) -> tuple[dict, list[str]]:
    """Consumer statistics of the model with the ``removed`` units silenced (see :func:`_probe_all`)."""
    key = (np.packbits(removed).tobytes(), int(removed.size), bool(keep_shift), tuple(roles))
    if cache is not None:
        hit = cache.lookup(key)
        if hit is not None:
            return hit
    zeros = zero_list(((s.module, s.param, s.dim, s.role, np.flatnonzero(removed[s.units])) for s in graph.slices),
                      keep_shift=keep_shift, roles=roles)
    with silenced(model, zeros):
        stats, notes = _probe_all(graph, removed)
    if cache is not None:
        cache.store(key, stats, notes)
    return stats, notes


def _zero_padded(m: nn.Module) -> bool:
    """A conv whose zero padding makes a folded constant inexact at the border."""
    pad = getattr(m, "padding", 0)
    return (isinstance(m, nn.modules.conv._ConvNd) and getattr(m, "padding_mode", "zeros") == "zeros"
            and (pad == "same" or (isinstance(pad, tuple) and any(pad))))


def _can_fold(m: nn.Module) -> bool:
    """Does this consumer have an exact way to absorb constant input channels?"""
    rule = lookup_rule("call_module", None, m)
    if rule is None or rule.fold is None:
        return False
    if isinstance(m, nn.RNNBase):
        return bool(m.bias)  # folded into bias_ih: without biases there is nowhere to put it
    return not (isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is None)


def threshold_removed(graph: ChannelGraph, model: nn.Module, threshold: float, c: Constraints,
                      scores: np.ndarray, exact_borders: bool = False,
                      cache: ProbeCache | None = None) -> tuple[np.ndarray, list[str]]:
    """Units whose every path passes a scaling factor <= threshold, verified constant by a probe.

    A unit stays unless its value at every consumer is one constant for every input, in eval
    mode and with batch statistics, and the same constant at every call of a consumer module
    called more than once (one bias serves them all). With ``exact_borders``, a unit whose
    constant is non-zero where a zero-padded conv reads it stays too, so folding its constant
    is exact everywhere, borders included. Returns the units and the probe's notes.
    """
    gmax = unit_gamma_max(graph, model)
    in_group = graph.unit_to_group >= 0
    # Compare in the parameters' precision: a γ stored as float32(1e-3) is not above 1e-3.
    cand = in_group & np.isfinite(gmax) & (gmax <= np.float32(threshold))
    for g in graph.groups:
        if not g.exact:
            cand[g.units] = False
    cand[list(c.protected_units)] = False
    if not cand.any():
        return np.zeros(graph.num_units, bool), []
    stats, notes = probe(graph, model, cand, keep_shift=True, roles=("scale",), cache=cache)
    for c_ in graph.consumers:
        st = stats.get((c_.graph, c_.node))
        if st is None:
            continue
        cand[c_.units[~st.constant()]] = False
        consumer = model.get_submodule(c_.module)
        if not _can_fold(consumer) or (exact_borders and _zero_padded(consumer)):
            cand[c_.units[st.center != 0]] = False
    cand[_site_conflicts(graph, stats, cand)] = False
    # Respect per-group caps: the largest-gamma candidates stay when a group would shrink too far.
    caps = group_caps(graph, c)
    removed = np.zeros(graph.num_units, bool)
    for g in graph.groups:
        u = g.units[cand[g.units]]
        if u.size > caps[g.id]:
            u = u[np.lexsort((u, gmax[u]))[: caps[g.id]]]
        removed[u] = True
    return apply_rounding(graph, removed, scores, c.round_to), notes


def _site_conflicts(graph: ChannelGraph, stats: dict, removed: np.ndarray) -> np.ndarray:
    """Removed units whose constants differ between the calls of one consumer module.

    Folding writes one bias per module; a module called at several sites adds it at every
    site, so the fold is exact only where every site sees the same constant (zero included).
    """
    by_module: dict[str, list[tuple[np.ndarray, Any]]] = {}
    for c in graph.consumers:
        st = stats.get((c.graph, c.node))
        if st is not None:
            by_module.setdefault(c.module, []).append((c.units, st))
    bad = np.zeros(graph.num_units, bool)
    for sites in by_module.values():
        if len(sites) < 2:
            continue
        units0, st0 = sites[0]
        for units, st in sites[1:]:
            if units.shape != units0.shape:  # cannot line the calls up: none of them folds
                for u, _ in sites:
                    bad[u[removed[u]]] = True
                break
            differ = np.abs(st.center - st0.center) > 1e-6 + 1e-5 * np.abs(st0.center)
            bad[units[differ & removed[units]]] = True
            bad[units0[differ & removed[units0]]] = True
    return bad


def _probe_all(graph: ChannelGraph, removed: np.ndarray) -> tuple[dict, list[str]]:
    """Consumer statistics keyed by (graph index, node) for consumers of removed units.

    A folded constant must hold for any input at any batch size, in eval mode and in
    training, so the statistics cover a batch of two different samples (the example's first
    and a redrawn one: a norm computing batch statistics over one sample maps any
    per-sample value to its shift), in eval mode and with the norms computing batch
    statistics. Constants do not depend on the input size, so spatial dims are first cut
    to 32; a model that insists on its example's shapes is probed on the example and a
    redrawn batch of the same shapes instead. Returns the statistics and notes on what could
    not be verified.
    """
    inputs = graph.traced.example_inputs
    attempts = [b for b in (_pair_batch(inputs, shrink=True), _pair_batch(inputs, shrink=False)) if b is not None]
    attempts.append((inputs, _perturbed(inputs)))
    for i, batches in enumerate(attempts):
        versions = _buffer_versions(graph)
        try:
            runs = [_probe_run(graph, b, removed, batch_stats=False) for b in batches]
        except Exception:
            if i == len(attempts) - 1:
                raise
            continue
        notes = []
        try:
            if _mode_matters(graph) or _buffer_versions(graph) != versions:
                runs += [_probe_run(graph, b, removed, batch_stats=True) for b in batches]
        except Exception as exc:  # e.g. a norm over one value per channel at batch 1
            notes.append(f"constants were verified in eval mode only (with batch statistics the model "
                         f"failed: {type(exc).__name__}: {str(exc)[:80]}); check the pruned model in training mode")
        if i == len(attempts) - 1 and inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].shape[:1] == (1,):
            notes.append("constants were verified at batch size 1 only (the model refused a batch of two); "
                         "norms computing batch statistics may make them differ at other batch sizes")
        return merge_stats(runs), notes
    raise AssertionError("unreachable")


def _buffer_versions(graph: ChannelGraph) -> list[int]:
    return [b._version for gm in graph.graphs() for b in gm.buffers()]


def _mode_matters(graph: ChannelGraph) -> bool:
    """Can the probe's batch-statistics run differ from its eval-mode run?

    ``batch_statistics`` differs from ``evaluation_mode`` only in putting norms
    (``_NormBase``: batch and instance norms) in training mode and restoring buffers
    afterwards; every other module stays in eval mode. Without such a norm, the second
    run computes the same function on the same inputs, so it is skipped, unless the first
    run changed a buffer in place (checked by the caller through version counters).
    """
    return any(isinstance(m, nn.modules.batchnorm._NormBase) for gm in graph.graphs() for m in gm.modules())


def _probe_run(graph: ChannelGraph, inputs: tuple, removed: np.ndarray, batch_stats: bool) -> dict:
    out = {}
    for gi, gm in enumerate(graph.graphs()):
        targets = {c.node: c.axis for c in graph.consumers if c.graph == gi and removed[c.units].any()}
        if targets:
            out.update({(gi, k): v for k, v in probe_consumers(gm, inputs, targets, batch_stats).items()})
    return out


def _pair_batch(inputs: tuple, shrink: bool) -> tuple[tuple] | None:
    """One batch of two samples: the example's first and a redrawn one (None if not batched).

    Tensors whose first dim is the example's batch size are batched; with ``shrink``, 4-D
    floating ones have their spatial dims cut to at most 32.
    """
    tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
    if not tensors or tensors[0].dim() == 0:
        return None
    batch = tensors[0].shape[0]
    out = []
    for x, y in zip(inputs, _perturbed(inputs)):
        if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[0] == batch:
            pair = torch.cat([x[:1], y[:1]])
            if shrink and pair.is_floating_point() and pair.dim() == 4 and any(d > 32 for d in pair.shape[2:]):
                pair = torch.nn.functional.adaptive_avg_pool2d(pair, [min(d, 32) for d in pair.shape[2:]])
            out.append(pair)
        else:
            out.append(x)
    return (tuple(out),)


def _perturbed(inputs: tuple) -> tuple:
    """A second, different batch of the same shapes (floating tensors redrawn, others kept)."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            noise = torch.randn(x.shape, generator=g, dtype=torch.float32).to(dtype=x.dtype, device=x.device)
            out.append(noise * (x.std() if x.numel() > 1 else 1.0) + x.mean())
        else:
            out.append(x)
    return tuple(out)


def _silenced_under_another_name(graph: ChannelGraph, model: nn.Module, module: str,
                                 roles: tuple[str, ...], keep_shift: bool) -> bool:
    """Is ``module``'s weight, along its input dim, one tensor with a slice that silencing
    zeroes under another name? A tied ``lm_head`` (GPT-2's, ``wte``'s weight) reads the
    hidden width through the embedding's columns, which silencing zeroes: the constants the
    removed channels hold reach nothing in the silenced model, so folding them into a bias
    would make the pruned model differ from it (and give the head a bias it never had)."""
    def tensor(name: str, param: str) -> object:
        return getattr(model.get_submodule(name) if name else model, param, None)

    zeroed = tuple(roles) + (() if keep_shift else ("shift",))
    ins = [s for s in graph.slices if s.module == module and s.role == "in"]
    for s in ins:
        t = tensor(s.module, s.param)
        if any(o.role in zeroed and o.dim == s.dim and o.module != module and tensor(o.module, o.param) is t
               for o in graph.slices):
            return True
    return False


def folds(graph: ChannelGraph, model: nn.Module, removed: np.ndarray, keep_shift: bool,
          roles: tuple[str, ...], cache: ProbeCache | None = None) -> tuple[list[Fold], list[str], np.ndarray]:
    """Constants that removed channels hold at each consumer, measured on the silenced model.

    Also returns the removed units whose constants differ between the calls of a consumer
    module called at several sites: no single bias is exact for them.
    """
    none = np.zeros(graph.num_units, bool)
    if not any(removed[c.units].any() for c in graph.consumers):
        return [], [], none
    if zero_at_consumers(graph, model, removed, keep_shift, roles):
        return [], [], none  # the probe could only measure zeros: nothing to fold or warn about
    stats, notes = probe(graph, model, removed, keep_shift=keep_shift, roles=roles, cache=cache)
    conflicts = _site_conflicts(graph, stats, removed)
    found: dict[str, Fold] = {}
    for c in graph.consumers:
        if (c.graph, c.node) not in stats:
            continue
        st = stats[(c.graph, c.node)]
        idx = np.flatnonzero(removed[c.units])
        vals = st.center[idx]
        if not st.constant()[idx].all():
            notes.append(f"{c.module}: some removed input channels are not constant, so folding them is approximate")
        nz = np.abs(vals) > 0
        if not nz.any() or c.module in found:
            continue  # calls of one module agree (or conflicts says otherwise): one fold serves all
        if _silenced_under_another_name(graph, model, c.module, roles, keep_shift):
            continue  # its own weight is zero at those inputs in the silenced model: they add nothing
        m = model.get_submodule(c.module)
        if not _can_fold(m):
            notes.append(f"{c.module}: removed input channels hold non-zero constants but {type(m).__name__} "
                         f"cannot fold them, so the pruned model differs from the silenced one there")
            continue
        found[c.module] = Fold(c.module, c.node, int(c.units.size), tuple(int(i) for i in idx[nz]),
                               tuple(float(v) for v in vals[nz]))
        if _zero_padded(m):
            notes.append(f"{c.module}: folded constants are exact in the interior; zero padding makes border outputs differ")
    if conflicts.any():
        notes.append("a module called at several sites sees different constants in removed channels at "
                     "different calls, so no single folded bias is exact")
    return list(found.values()), notes, conflicts


def warn_inexact(notes: list[str]) -> None:
    """One warning listing the plan's notes that mean the pruned model is not the silenced one."""
    serious = [n for n in notes if "approximate" in n or "cannot fold" in n or "several sites" in n
               or "verified" in n]
    if serious:
        warnings.warn("slimprune: the pruned model will not equal the silenced original exactly:\n  - "
                      + "\n  - ".join(dict.fromkeys(serious)), stacklevel=user_stacklevel())


