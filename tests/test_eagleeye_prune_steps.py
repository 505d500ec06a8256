"""Pruning in rounds (PipelineConfig.prune_steps): the policy's round plans and the one plan of
the sparse model they add up to, on an untrained EagleEye (no data, no training)."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

import slimprune
from examples.eagleeye.config import PipelineConfig
from examples.eagleeye.model import EagleEye
from examples.eagleeye.policy import (
    analyze,
    apply_plan,
    combined_plan,
    first_step_plan,
    layer_caps,
    next_step_plan,
    original_widths,
    prune_plan,
    removed_flops,
    step_epochs,
    step_goals,
)
from tests.eagleeye_models import small_config, zeroed_eagleeye

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sparse() -> EagleEye:
    return zeroed_eagleeye()


def _widths(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.num_features for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def _rounds(sparse: EagleEye, config: PipelineConfig, after_round=None):
    """The pipeline's rounds without the fine-tuning (``after_round(model)`` stands in for it)."""
    first = first_step_plan(analyze(sparse, config.sparse), config)
    goals = step_goals(removed_flops(first), config.target_flops, config.prune_steps)
    plans, model = [first], apply_plan(sparse, first)
    widths = original_widths(sparse)
    for k in range(1, config.prune_steps):
        if after_round is not None:
            after_round(model)
        plan = next_step_plan(analyze(model, config.sparse), first.flops_before, goals[k], config.round_to,
                              layer_caps(model, widths, config.max_ratio))
        plans.append(plan)
        model = apply_plan(model, plan)
    return plans, model


def test_step_goals_and_epochs() -> None:
    assert step_goals(0.4, 0.66, 1) == [0.4]
    assert step_goals(0.4, 0.66, 2) == [0.4, 0.66]
    assert step_goals(0.4, 0.7, 4) == pytest.approx([0.4, 0.5, 0.6, 0.7])
    assert step_goals(0.7, 0.66, 3) == [0.7, 0.7, 0.7]  # the first round already met the target
    assert step_goals(0.4, None, 2) == [0.4, 0.4]
    assert step_epochs(16, 2) == [8, 8] and step_epochs(16, 3) == [5, 5, 6] and step_epochs(16, 1) == [16]


@pytest.mark.parametrize("steps", [2, 3])
def test_rounds_meet_the_flops_target_and_add_up_to_one_plan(sparse: EagleEye, steps: int) -> None:
    """N rounds remove at least target_flops of the original FLOPs, every narrowed width a
    multiple of 8, the rounds' FLOPs rising; the combined plan of the sparse model removes the
    same and its pruned model has the rounds' shapes exactly (their weights load strictly) and,
    without fine-tuning in between, computes what the rounds' model computes."""
    config = small_config(target_flops=0.5, target_params=0.3, prune_steps=steps)
    one_shot = prune_plan(analyze(sparse, config.sparse), replace(config, prune_steps=1))
    plans, model = _rounds(sparse, config)
    first = plans[0]
    assert removed_flops(first) < 0.5  # round 1 removes only the zeroed (and target_params) channels
    cut = [1 - p.flops_after / first.flops_before for p in plans]
    assert cut == sorted(cut) and cut[-1] >= 0.5
    assert all(w % 8 == 0 for n, w in _widths(model).items() if w != _widths(sparse)[n])
    plan = combined_plan(sparse, config.sparse, plans)
    assert removed_flops(plan) == pytest.approx(cut[-1]) and removed_flops(one_shot) >= 0.5
    assert plan.flops_after == plans[-1].flops_after and plan.params_after == plans[-1].params_after
    rebuilt = apply_plan(sparse, plan)
    assert _widths(rebuilt) == _widths(model)
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), apply_plan(sparse, plan)(x)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_max_ratio_keeps_every_layer_its_share_of_the_original_width_through_the_rounds(
    sparse: EagleEye,
) -> None:
    """Without a cap the rounds take some layer below half its channels; with max_ratio=0.5 every
    layer keeps at least half of its unpruned width after all rounds (the cap counts against
    the original width, not the width a round starts from) and the FLOPs target is still met."""
    config = small_config(target_flops=0.5, target_params=0.3, prune_steps=3, round_to=1, max_ratio=1.0)
    original = _widths(sparse)
    _, free = _rounds(sparse, config)
    assert min(w / original[n] for n, w in _widths(free).items()) < 0.5
    plans, capped = _rounds(sparse, replace(config, max_ratio=0.5))
    assert all(w >= math.ceil(0.5 * original[n]) for n, w in _widths(capped).items()), _widths(capped)
    assert 1 - plans[-1].flops_after / plans[0].flops_before >= 0.5


def test_layer_caps_are_the_share_of_the_current_width_that_may_still_go() -> None:
    model = EagleEye().eval()
    widths = original_widths(model)
    assert layer_caps(model, widths, 1.0) == 1.0
    caps = layer_caps(model, widths, 0.75)
    assert set(caps) == set(widths) and all(caps[n] == (w - math.ceil(0.25 * w)) / w for n, w in widths.items())
    half = apply_plan(model, slimprune.plan(analyze(model, small_config().sparse), 0.5, max_ratio=0.5))
    later = layer_caps(half, widths, 0.5)
    for name, m in half.named_modules():
        if name in later:  # a layer already at half its width may lose nothing more
            keep = math.ceil(0.5 * widths[name])
            assert later[name] == pytest.approx(max(0, m.num_features - keep) / m.num_features)
    assert min(later.values()) == 0.0


def test_max_ratio_option_is_validated_and_reaches_the_config_and_command_line() -> None:
    from examples.eagleeye.__main__ import build_parser, pipeline_config_from_args

    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=f"max_ratio={bad}"):
            small_config(max_ratio=bad)
    assert small_config().max_ratio == 0.5 and small_config(max_ratio=0.7).to_dict()["max_ratio"] == 0.7
    args = build_parser().parse_args(["pipeline", "--out", "unused", "--max-ratio", "0.8"])
    assert pipeline_config_from_args(args).max_ratio == 0.8


def test_combined_plan_follows_channels_through_a_changed_model(sparse: EagleEye) -> None:
    """When the model changes between rounds (as fine-tuning changes it), round 2 ranks the changed
    model's |γ|; the combined plan still names the channels by their place in the sparse model,
    so its pruned model keeps exactly the sparse model's channels the rounds kept."""
    config = small_config(target_flops=0.5, target_params=0.3, prune_steps=2)

    def shuffle_gammas(model: torch.nn.Module) -> None:
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.01)

    plans, model = _rounds(copy.deepcopy(sparse), config, after_round=shuffle_gammas)
    plan = combined_plan(sparse, config.sparse, plans)
    rebuilt = apply_plan(sparse, plan)
    assert _widths(rebuilt) == _widths(model)
    # The shuffle changed only γ: every BatchNorm's running statistics are still the sparse
    # model's at the channels kept, in both models, only if the same channels were kept.
    narrowed = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            other = rebuilt.get_submodule(name)
            torch.testing.assert_close(m.running_mean, other.running_mean, rtol=0, atol=0)
            torch.testing.assert_close(m.running_var, other.running_var, rtol=0, atol=0)
            narrowed += m.num_features < sparse.get_submodule(name).num_features
    assert narrowed > 0
    rebuilt.load_state_dict(model.state_dict())


def test_combined_plan_keeps_channels_a_round_kept_whose_gamma_is_exactly_zero(sparse: EagleEye) -> None:
    """A channel whose γ is exactly 0 but that the rounds kept (a width rounded up to 8) stays in
    the combined plan: here every kept channel of the sparse model has γ = 0, and the combined
    plan still has the rounds' widths and channels (read back from running means set to the
    channel numbers)."""
    config = small_config(target_flops=0.5, target_params=0.3, prune_steps=2)
    numbered = copy.deepcopy(sparse)
    with torch.no_grad():
        for m in numbered.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.arange(m.num_features, dtype=m.running_mean.dtype))
    plans, model = _rounds(numbered, config)
    zeroed = copy.deepcopy(numbered)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                zeroed.get_submodule(name).weight[m.running_mean.long()] = 0.0
    rebuilt = apply_plan(numbered, combined_plan(zeroed, config.sparse, plans))
    assert _widths(rebuilt) == _widths(model) != _widths(sparse)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.testing.assert_close(rebuilt.get_submodule(name).running_mean, m.running_mean, rtol=0, atol=0)


def test_prune_steps_default_and_rounds() -> None:
    """The default prunes in 3 rounds, fading each next round's channels out with λ = 0.1
    (docs/eagleeye.md: over 3 seeds -2.0 / -1.5 / -1.4 AP points, -3.1 / -2.8 / -2.4 without fading);
    rounds step the FLOPs target only, and never outnumber the epochs."""
    with pytest.raises(ValueError, match="prune_steps=0"):
        small_config(prune_steps=0)
    default = PipelineConfig.create("unused")
    assert default.prune_steps == 3 and default.prune_rounds == 3 and default.to_dict()["prune_steps"] == 3
    assert default.fade == 0.1
    assert PipelineConfig.create("unused", quick=True).prune_rounds == 1
    assert small_config(prune_steps=1).prune_rounds == 1
    assert small_config(threshold=1e-3).prune_rounds == 1
    assert small_config(target_latency=0.3).prune_rounds == 1
    assert small_config(target_flops=None).prune_rounds == 1
    assert small_config(prune_steps=3, finetune_epochs=2).prune_rounds == 2


@pytest.fixture(scope="module")
def stepped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`pipeline --quick --prune-steps 2 --target-flops 0.6 --fade 0.05` once."""
    import json

    from examples.eagleeye.__main__ import main

    root = tmp_path_factory.mktemp("steps")
    out, data = root / "out", root / "data"
    args = ["pipeline", "--quick", "--out", str(out), "--data", str(data), "--no-progress", "--prune-steps", "2",
            "--target-flops", "0.6", "--fade", "0.05"]
    status = main(args)
    report = json.loads((out / "report.json").read_text()) if status == 0 else {}
    return {"status": status, "out": out, "report": report}


def test_pipeline_in_two_rounds_meets_the_target_and_saves_the_rounds_model(stepped: dict) -> None:
    """The quick pipeline in two rounds: the fine-tuning epochs split between them, round 1 below the
    FLOPs target and round 2 at it, the report's fine-tuned model as small as the last round left
    it, and finetuned.safetensors holding exactly the last round's weights."""
    from examples.eagleeye.checkpoints import load_checkpoint
    from examples.eagleeye.model_files import load_pruned
    from slimprune.measure import count_params

    assert stepped["status"] == 0
    report, out = stepped["report"], stepped["out"]
    pruning = report["pruning"]
    assert pruning["mode"] == "steps" and pruning["prune_steps"] == 2
    steps = pruning["steps"]
    assert [s["round"] for s in steps] == [1, 2]
    assert sum(s["epochs"] for s in steps) == report["config"]["finetune"]["epochs"]
    assert steps[0]["flops_reduction"] < 0.6 <= steps[1]["flops_reduction"]
    assert pruning["flops_reduction"] == pytest.approx(steps[1]["flops_reduction"])
    assert report["models"]["finetuned"]["flops_reduction"] >= 0.6
    assert (out / "finetune" / "round-1" / "last.pt").is_file() and (out / "plan-round-2.json").is_file()
    model = load_pruned(out / "finetuned.safetensors")
    assert count_params(model) == report["models"]["finetuned"]["params"]
    last = load_checkpoint(out / "finetune" / "last.pt", "cpu")["model"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, last[name], rtol=0, atol=0)
    assert report["config"]["fade"] == 0.05


def test_every_rounds_checkpoint_loads_as_a_detector(stepped: dict) -> None:
    """load_detector rebuilds round 1's checkpoint (a model narrower than the sparse one and wider
    than the final one) from the finetuned.safetensors beside it, and the last round's from the one
    above; each with exactly its checkpoint's weights."""
    from examples.eagleeye.checkpoints import load_checkpoint
    from examples.eagleeye.model_files import load_detector
    from slimprune.measure import count_params

    out = stepped["out"]
    sizes = []
    for checkpoint in (out / "finetune" / "round-1" / "last.pt", out / "finetune" / "last.pt"):
        model, config = load_detector(checkpoint)
        assert config is not None
        weights = load_checkpoint(checkpoint, "cpu")["model"]
        assert model.state_dict().keys() == weights.keys()
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)
        sizes.append(count_params(model))
    assert sizes[0] > sizes[1] == stepped["report"]["models"]["finetuned"]["params"]
    assert sizes[0] < stepped["report"]["models"]["sparse"]["params"]


def test_with_fade_the_next_round_removes_exactly_the_channels_faded(stepped: dict) -> None:
    """With --fade, round 2's plan is the one made at round 1's start (on the model round 1 pruned,
    before its fine-tuning): the channels faded out are the ones removed, and their γ went down."""
    import slimprune
    from examples.eagleeye.model_files import load_detector

    out = stepped["out"]
    from examples.eagleeye.config import TrainConfig

    config = stepped["report"]["config"]
    sparse, _ = load_detector(out / "sparse" / "last.pt")
    first = slimprune.PruningPlan.from_json((out / "plan-round-1.json").read_text())
    second = slimprune.PruningPlan.from_json((out / "plan-round-2.json").read_text())
    start = apply_plan(sparse, first)
    goal = step_goals(removed_flops(first), config["target_flops"], 2)[1]
    planned = next_step_plan(
        analyze(start, TrainConfig.from_dict(config["sparse"])), first.flops_before, goal, config["round_to"],
        layer_caps(start, original_widths(sparse), config["max_ratio"]),
    )

    def removed(plan) -> dict:
        return {(s.module, s.param): s.removed for s in plan.slices if s.removed}

    assert removed(second) == removed(planned) and removed(second)
    faded, _ = load_detector(out / "finetune" / "round-1" / "last.pt")
    for (module, param), channels in removed(second).items():
        if param == "weight" and isinstance(start.get_submodule(module), torch.nn.BatchNorm2d):
            before = start.get_submodule(module).weight.detach()[list(channels)].abs()
            after = faded.get_submodule(module).weight.detach()[list(channels)].abs()
            assert after.sum() < before.sum()
