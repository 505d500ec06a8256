"""The one assertion every engine test goes through: pruned equals silenced original."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import slimprune


def outputs(value: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, tuple/list, dict, namedtuple), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in outputs(value[k])]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in outputs(v)]
    return []


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == snap.keys(), "the input model's state_dict keys changed"
    for k, v in snap.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), f"the input model's {k} changed"


def run(model: nn.Module, inputs: tuple | dict[str, Any], train: bool = False) -> list[torch.Tensor]:
    was = model.training
    model.train(train)
    try:
        with torch.no_grad():
            return outputs(model(**inputs) if isinstance(inputs, dict) else model(*inputs))
    finally:
        model.train(was)


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert len(a) == len(b), f"{len(a)} outputs vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"output {i}: shape {tuple(x.shape)} vs {tuple(y.shape)}"
        assert torch.allclose(x, y, rtol=rtol, atol=atol), f"output {i}: max abs diff {(x - y).abs().max().item():.3g}"


def assert_pruned_equals_silenced(model: nn.Module, plan: slimprune.PruningPlan, inputs: Any,
                                  train: bool = False, rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
    """Apply ``plan`` and check the result against ``silence(model, plan)``.

    Checks: outputs equal (eval mode, and train mode when asked, on copies), the parameter
    count equals the plan's prediction, and the input model is unchanged. Returns the
    pruned model.
    """
    inputs = inputs if isinstance(inputs, (tuple, dict)) else (inputs,)
    snap = snapshot(model)
    small = slimprune.apply(model, plan)
    assert_unchanged(model, snap)
    ref = slimprune.silence(model, plan)
    assert_close(run(ref, inputs), run(small, inputs), rtol, atol)
    if train:
        import copy

        assert_close(run(copy.deepcopy(ref), inputs, True), run(copy.deepcopy(small), inputs, True), rtol, atol)
    n_params = sum(p.numel() for p in small.parameters())
    assert n_params == plan.params_after, f"{n_params} parameters, the plan predicted {plan.params_after}"
    return small
