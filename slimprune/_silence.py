"""Silencing: zero removed channels without changing shapes, and probe what layers see.

``silence(model, plan)`` is the reference every test compares against: a pruned model
must compute exactly what the original computes with its removed channels silenced.
Silencing zeroes, for each removed channel, the producer rows (conv/linear outputs),
the normalisation scale γ, injected parameters (position embeddings, layer scales) and
the normalisation shift β unless it is folded (``keep_shift``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ._copy import copy_model
from ._modes import kept_modes
from ._plan import PruningPlan
from ._trace import GraphRunner, evaluation_mode

__all__ = ["silence", "silenced", "probe_consumers", "ConsumerStats"]

_ZEROED = ("out", "scale", "source")


@dataclass(frozen=True)
class _Zero:
    module: str
    param: str
    dim: int
    index: torch.Tensor


def zero_list(entries: Iterable[tuple[str, str, int, str, Sequence[int]]], keep_shift: bool,
              roles: Sequence[str] = _ZEROED) -> list[_Zero]:
    """Which (module, param, dim, indices) to zero for ``(module, param, dim, role, removed)``."""
    roles = tuple(roles) + (() if keep_shift else ("shift",))
    out = []
    for module, param, dim, role, removed in entries:
        if role in roles and len(removed):
            out.append(_Zero(module, param, dim, torch.as_tensor(list(removed), dtype=torch.long)))
    return out


@contextlib.contextmanager
def silenced(model: nn.Module, zeros: Sequence[_Zero]) -> Iterator[nn.Module]:
    """Temporarily zero entries in place; restores them bit for bit, even on error."""
    saved = []
    try:
        with torch.no_grad():
            for z in zeros:
                owner = model.get_submodule(z.module) if z.module else model
                t = getattr(owner, z.param)
                idx = z.index.to(t.device)
                saved.append((t, z.dim, idx, t.index_select(z.dim, idx)))  # index_select copies
                t.index_fill_(z.dim, idx, 0)
        yield model
    finally:
        with torch.no_grad():
            for t, dim, idx, vals in reversed(saved):
                t.index_copy_(dim, idx, vals)


def silence(model: nn.Module, plan: PruningPlan, keep_shift: bool | None = None) -> nn.Module:
    """A copy of ``model`` with the channels ``plan`` removes silenced (shapes unchanged).

    Args:
        keep_shift: keep the normalisation shift β of removed channels (default: the plan's
            ``fold_bias`` option, so ``apply(model, plan)`` and ``silence(model, plan)``
            compute the same function).

    Raises:
        ModelCopyError: an attribute of a module cannot be deep-copied (a lock, a generator);
            the message names the module's path, class and attribute, as ``apply``'s does.
    """
    plan.check_model(model)
    if keep_shift is None:
        keep_shift = bool(plan.option("fold_bias"))
    out = copy_model(model, caller="silence")
    roles = tuple(plan.option("silence") or _ZEROED)
    zeros = zero_list(((s.module, s.param, s.dim, s.role, s.removed) for s in plan.changed), keep_shift, roles)
    with torch.no_grad():
        for z in zeros:
            owner = out.get_submodule(z.module) if z.module else out
            getattr(owner, z.param).index_fill_(z.dim, z.index, 0)
    return out


@dataclass(frozen=True)
class ConsumerStats:
    """Per input channel of one consumer call: min, max and the value at the centre."""

    node: str
    vmin: np.ndarray
    vmax: np.ndarray
    center: np.ndarray

    def constant(self, rtol: float = 1e-5, atol: float = 1e-6) -> np.ndarray:
        return (self.vmax - self.vmin) <= atol + rtol * np.abs(self.center)


class _Probe(GraphRunner):
    def __init__(self, gm: fx.GraphModule, targets: dict[str, int]) -> None:
        super().__init__(gm)
        self.targets = targets
        self.stats: dict[str, ConsumerStats] = {}

    def run_node(self, n: fx.Node):
        if n.name in self.targets:
            args, _ = self.fetch_args_kwargs_from_env(n)
            x = args[0].detach().float()
            axis = self.targets[n.name]
            flat = x.movedim(axis, 0)
            rest = flat.shape[1:]
            flat = flat.reshape(flat.shape[0], -1)
            centre = [0] + [d // 2 for d in rest[1:]] if len(rest) else []
            ci = int(np.ravel_multi_index(centre, rest)) if len(rest) else 0
            self.stats[n.name] = ConsumerStats(
                n.name,
                flat.amin(1).cpu().numpy().astype(np.float64),
                flat.amax(1).cpu().numpy().astype(np.float64),
                flat[:, ci].cpu().numpy().astype(np.float64),
            )
        return super().run_node(n)


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Eval mode, except that every norm computes batch statistics as it does in training.

    A constant folded into a bias must hold in both modes, and norms are what makes a
    channel's value depend on the mode (running statistics in eval, batch statistics in
    training). Dropout, stochastic depth and other training-only randomness stay off. Running
    statistics and every other buffer are restored bit for bit afterwards.
    """
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with kept_modes(model):
            model.eval()
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.train()
            with torch.no_grad():
                yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def probe_consumers(gm: fx.GraphModule, inputs: tuple, consumers: dict[str, int],
                    batch_stats: bool = False) -> dict[str, ConsumerStats]:
    """Run ``gm`` once (no grad) and summarise each consumer's input per channel.

    In eval mode, or with ``batch_stats`` with the norms computing batch statistics.
    """
    from ._trace import _preserved

    probe = _Probe(gm, consumers)
    # (_preserved: the graph shares the model's buffers, and a graph traced in train mode
    # updates running statistics even in eval mode: training=True is a literal there)
    with batch_statistics(gm) if batch_stats else evaluation_mode(gm), _preserved(gm):
        probe.run(*inputs)
    return probe.stats


def merge_stats(runs: Sequence[dict[str, ConsumerStats]]) -> dict[str, ConsumerStats]:
    """Statistics over several probe runs: a channel is constant only if it is the same constant in all."""
    out: dict[str, ConsumerStats] = {}
    for key in runs[0]:
        if all(key in r for r in runs):
            parts = [r[key] for r in runs]
            out[key] = ConsumerStats(parts[0].node, np.minimum.reduce([p.vmin for p in parts]),
                                     np.maximum.reduce([p.vmax for p in parts]), parts[0].center)
    return out
