"""Fading out the next round's channels (PipelineConfig.fade, policy.fade_hook).

The hook must add exactly λ·sign(γ) to the gradients of the BatchNorm scales the next round's
plan removes and touch no other gradient; in training it must drive those γ towards zero
while the kept channels' γ stay where training puts them; and the option must be validated and
reach report.json's config and the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import slimprune

from examples.eagleeye.__main__ import build_parser, pipeline_config_from_args
from examples.eagleeye.model import EagleEye
from examples.eagleeye.policy import analyze, fade_hook, next_step_plan
from examples.eagleeye.train import train
from tests.eagleeye_models import small_config, zeroed_eagleeye
from tests.test_eagleeye_train import Squares, _config

torch.set_num_threads(1)


def _doomed(plan) -> dict[str, list[int]]:
    """BatchNorm weight name -> the channels ``plan`` removes."""
    return {f"{s.module}.{s.param}": sorted(s.removed) for s in plan.slices if s.role == "scale" and s.removed}


def _flops(analysis) -> int:
    return slimprune.plan(analysis, threshold=0.0).flops_before


def test_fade_hook_adds_lambda_sign_gamma_to_the_removed_scales_only() -> None:
    model = zeroed_eagleeye().train()
    config = small_config()
    analysis = analyze(model, config.sparse)
    plan = next_step_plan(analysis, _flops(analysis), 0.5, 8)
    doomed = _doomed(plan)
    assert doomed  # the plan removes something
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cls, box = model(x)
    (cls.square().mean() + box.square().mean()).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    lam = 0.25
    fade_hook(plan, lam)(model)
    params = dict(model.named_parameters())
    for name, p in params.items():
        expected = before[name].clone()
        if name in doomed:
            at = torch.tensor(doomed[name])
            expected[at] = expected[at] + lam * torch.sign(p.detach()[at])
        assert torch.equal(p.grad, expected), name
    changed = {n for n, p in params.items() if not torch.equal(p.grad, before[n])}
    assert changed == {n for n, c in doomed.items() if torch.sign(params[n].detach()[c]).abs().sum() > 0}


def test_fading_drives_the_next_rounds_gammas_towards_zero(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EagleEye()
    config = small_config()
    analysis = analyze(model.eval(), config.sparse)
    plan = next_step_plan(analysis, _flops(analysis), 0.5, 8)
    doomed = _doomed(plan)
    start = {n: m.weight.detach().abs().clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    trained = train(_config(tmp_path, epochs=2, lr=0.05), model=model, after_backward=fade_hook(plan, 1.0),
                    dataset=Squares(16))
    faded, kept = [], []
    for name, m in trained.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            ratio = m.weight.detach().abs() / start[name]
            mask = torch.zeros(m.num_features, dtype=torch.bool)
            mask[doomed.get(f"{name}.weight", [])] = True
            faded.append(ratio[mask])
            kept.append(ratio[~mask])
    faded, kept = torch.cat(faded), torch.cat(kept)
    assert faded.numel() > 0 and kept.numel() > 0
    assert faded.max() < 0.25 and kept.min() > 0.75, (faded.max(), kept.min())  # doomed γ fell, kept ones did not


def test_fade_option_is_validated_and_reaches_the_config_and_command_line() -> None:
    with pytest.raises(ValueError, match="fade=-0.1"):
        small_config(fade=-0.1)
    assert small_config().fade == 0.1 and small_config(fade=0.02).to_dict()["fade"] == 0.02
    args = build_parser().parse_args(["pipeline", "--out", "unused", "--fade", "0.03"])
    assert pipeline_config_from_args(args).fade == 0.03
