"""Tests for slimprune.sparsity: the regulariser's gradient term, masks, AMP, DDP, schedules, search."""

from __future__ import annotations

import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimprune
from slimprune.errors import InfeasiblePlanError, InvalidArgumentError
from slimprune.sparsity import (
    SparsityRegularizer,
    constant,
    default_lambda,
    gamma_stats,
    linear_decay,
    suggest_ratio,
    suggest_threshold,
    warmup,
)
from slimprune.measure import measure
from tests.models import ConvBNAct, TinyResNet, randomize_bn

torch.set_num_threads(1)


class ChainNet(nn.Module):
    """A plain chain conv-BN-ReLU x3 then pool and Linear (no residual add)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(3, 8), ConvBNAct(8, 8), ConvBNAct(8, 8, groups=8), ConvBNAct(8, 6))
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


class BNOutputNet(nn.Module):
    """Two conv-BN blocks; the second BN's output is the model output (a dense-prediction head)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 8)
        self.out = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.stem(x))


class PartialNet(nn.Module):
    """One conv-BN whose first two channels are also returned as an output (so they are kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.bn(self.conv(x)))
        return self.head(y), y[:, :2]


class CostNet(nn.Module):
    """A 3x3 conv-BN at full resolution, then a strided 1x1 conv-BN: channels of very different cost."""

    def __init__(self, a: int = 4, b: int = 2) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(a, b, 1, stride=2, bias=False), nn.BatchNorm2d(b), nn.ReLU())
        self.head = nn.Linear(b, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)).mean((2, 3)))


def bn_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def synthetic_task(n: int = 256, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the argmax of a fixed linear map of their mean colour: learnable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (x.mean((2, 3)) @ torch.randn(3, 10, generator=g)).argmax(1)
    return x, y


def grads_after(model: nn.Module, reg: SparsityRegularizer | None, x: torch.Tensor, use_penalty: bool = False) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss = (out[0] if isinstance(out, tuple) else out).square().mean()
    if use_penalty and reg is not None:
        loss = loss + reg.penalty()
    loss.backward()
    if reg is not None and not use_penalty:
        reg.step()
    return {n: m.weight.grad.clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


# --------------------------------------------------------------------- the gradient term


def test_step_adds_lambda_sign_gamma_to_every_prunable_scale() -> None:
    """step() changes each BN weight gradient by exactly λ·sign(γ) and no other gradient."""
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    with torch.no_grad():
        model.net.blocks[0][1].weight[:3] *= -1  # negative and zero scales too
        model.net.blocks[0][1].weight[3] = 0.0
    x = torch.randn(4, 3, 16, 16)
    reg = SparsityRegularizer(model, lam=0.25)
    scales = {id(m.weight) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    plain = grads_after(model, None, x)
    others = {n: p.grad.clone() for n, p in model.named_parameters() if id(p) not in scales}
    regularised = grads_after(model, reg, x)
    assert set(regularised) == set(reg.layers) and len(reg.layers) == 8
    for name, grad in regularised.items():
        gamma = model.get_submodule(name).weight.detach()
        torch.testing.assert_close(grad - plain[name], 0.25 * torch.sign(gamma), rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        if n in others:
            assert torch.equal(p.grad, others[n]), f"{n} changed"
    assert reg.channels == sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_penalty_gradient_equals_the_step_term() -> None:
    """(loss + penalty()).backward() gives the gradients loss.backward(); step() gives."""
    torch.manual_seed(1)
    model = randomize_bn(TinyResNet())
    x = torch.randn(4, 3, 16, 16)
    reg = SparsityRegularizer(model, lam=0.1)
    by_step = grads_after(model, reg, x)
    by_penalty = grads_after(model, reg, x, use_penalty=True)
    for name in by_step:
        torch.testing.assert_close(by_penalty[name], by_step[name], rtol=1e-5, atol=1e-6)
    gammas = torch.cat([model.get_submodule(n).weight.detach().abs() for n in reg.layers])
    torch.testing.assert_close(reg.penalty().detach(), 0.1 * gammas.sum())


def test_output_tied_batchnorm_is_not_regularised() -> None:
    """A BN feeding the model output directly is protected: its gradient and penalty are untouched."""
    model = BNOutputNet()
    x = torch.randn(2, 3, 16, 16)
    reg = SparsityRegularizer(model, lam=1.0)
    assert reg.layers == ("stem.1",)
    plain = grads_after(model, None, x)
    after = grads_after(model, reg, x)
    assert torch.equal(after["out.1"], plain["out.1"])
    assert not torch.equal(after["stem.1"], plain["stem.1"])
    torch.testing.assert_close(reg.penalty().detach(), model.stem[1].weight.detach().abs().sum())


def test_only_the_channels_in_a_group_are_regularised() -> None:
    """Channels 0-1 of a BN are also a model output: only channels 2-5 get the term."""
    model = PartialNet()
    x = torch.randn(2, 3, 16, 16)
    reg = SparsityRegularizer(model, lam=1.0)
    assert reg.channels == 4
    plain = grads_after(model, None, x)["bn"]
    after = grads_after(model, reg, x)["bn"]
    delta = after - plain
    assert torch.equal(delta[:2], torch.zeros(2))
    torch.testing.assert_close(delta[2:], torch.sign(model.bn.weight.detach()[2:]), rtol=0, atol=1e-6)
    torch.testing.assert_close(reg.penalty().detach(), model.bn.weight.detach()[2:].abs().sum())


def test_protect_and_explicit_bn_modules() -> None:
    """protect= drops a module's channels; bn_modules= regularises exactly the named layers."""
    model = TinyResNet()
    everything = SparsityRegularizer(model)
    spared = SparsityRegularizer(model, protect=["net.blocks.3"])
    # blocks.3.b shares the residual stream with blocks.2: protecting blocks.3 keeps that whole group.
    assert set(everything.layers) - set(spared.layers) == {
        "net.blocks.3.a.1", "net.blocks.3.b.1", "net.blocks.2.b.1", "net.blocks.2.proj.1"
    }
    named = SparsityRegularizer(model, bn_modules=["net.blocks.0.1", model.net.blocks[1]["a"][1]])
    assert named.layers == ("net.blocks.0.1", "net.blocks.1.a.1") and named.channels == 16
    with pytest.raises(InvalidArgumentError, match="net.nope"):
        SparsityRegularizer(model, bn_modules=["net.nope"])
    with pytest.raises(InvalidArgumentError, match="no 1-D weight"):
        SparsityRegularizer(model, bn_modules=["net.blocks.0.0"])
    with pytest.raises(InvalidArgumentError, match="lam"):
        SparsityRegularizer(model, lam=-1.0)


class TwoRegions(nn.Module):
    """fx cannot trace it whole (a branch on a value), so plan() prunes its halves as regions."""

    def __init__(self) -> None:
        super().__init__()
        self.front = nn.Sequential(ConvBNAct(3, 8), ConvBNAct(8, 8))
        self.back = nn.Sequential(ConvBNAct(8, 12), ConvBNAct(12, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.front(x)
        if x.mean() > 0:
            x = x * 2
        return self.back(x)


def test_default_on_a_model_planned_by_regions_picks_the_scales_its_regions_can_remove() -> None:
    """Without bn_modules=, a model fx cannot trace whole is analysed region by region as plan()
    does: the regularised layers are those whose channels a threshold plan can remove (what
    bn_modules= had to list), named as in the whole model; protect= and cost= work per region."""
    torch.manual_seed(0)
    model = randomize_bn(TwoRegions()).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(slimprune.TraceError):
        slimprune.analyze(model, x)
    with pytest.warns(slimprune.RegionFallbackWarning):
        plan = slimprune.plan(model, threshold=1e30, example_inputs=x)
    removable = sorted({s.module for s in plan.changed if s.role == "scale"})
    assert removable == ["back.0.1", "front.0.1"]
    reg = SparsityRegularizer(model, lam=0.1, example_inputs=x)
    explicit = SparsityRegularizer(model, lam=0.1, bn_modules=removable)
    assert sorted(reg.layers) == removable and reg.channels == explicit.channels == 20
    for r in (reg, explicit):
        model.zero_grad()
        r.step()
        grads = [model.get_submodule(n).weight.grad.clone() for n in removable]
        if r is reg:
            first = grads
    assert all(torch.equal(a, b) for a, b in zip(first, grads))
    assert SparsityRegularizer(model, example_inputs=x, protect=["back"]).layers == ("front.0.1",)
    assert SparsityRegularizer(model, example_inputs=x, protect=["front.0"]).layers == ("back.0.1",)
    weights = SparsityRegularizer(model, example_inputs=x, cost="flops").channel_weights
    assert weights.keys() == set(removable)
    torch.testing.assert_close(torch.cat(list(weights.values())).mean(), torch.tensor(1.0))
    assert weights["front.0.1"][0] != weights["back.0.1"][0]  # priced in their own regions
    assert gamma_stats(model, example_inputs=x)["count"] == 20
    assert default_lambda(model, x) == 1e-4  # each region is a plain chain


def test_plan_regularises_exactly_the_channels_the_plan_removes() -> None:
    """plan= adds λ·sign(γ) to the scales of the channels the plan removes and changes no other
    gradient entry, also for a model planned region by region; applying the plan afterwards
    removes exactly the channels that were pulled."""
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    x = torch.randn(4, 3, 16, 16)
    plan = slimprune.plan(model, 0.4, example_inputs=x)
    doomed = {f"{s.module}.{s.param}": list(s.removed) for s in plan.slices if s.role == "scale" and s.removed}
    assert doomed and plan.removed_channels > 0
    reg = SparsityRegularizer(model, lam=0.25, plan=plan)
    assert reg.channels == sum(len(c) for c in doomed.values())
    plain = {n: g.clone() for n, g in grads_after(model, None, x).items()}
    others = {n: p.grad.clone() for n, p in model.named_parameters() if n not in doomed}
    regularised = grads_after(model, reg, x)
    for name, grad in regularised.items():
        gamma = model.get_submodule(name).weight.detach()
        expected = torch.zeros_like(gamma)
        at = doomed.get(f"{name}.weight", [])
        expected[at] = 0.25 * torch.sign(gamma[at])
        torch.testing.assert_close(grad - plain[name], expected, rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        if n in others:
            assert torch.equal(p.grad, others[n]), f"{n} changed"
    assert {n: int(w.sum()) for n, w in reg.channel_weights.items() if w.sum()} == {
        n.removesuffix(".weight"): len(c) for n, c in doomed.items()}

    regions = randomize_bn(TwoRegions()).eval()
    y = torch.randn(2, 3, 8, 8)
    with pytest.warns(slimprune.RegionFallbackWarning):
        by_regions = slimprune.plan(regions, 0.5, example_inputs=y)
    pulled = SparsityRegularizer(regions, lam=0.1, plan=by_regions)
    cut = [(f"{path}.{s.module}", len(s.removed)) for path, sub in by_regions.regions for s in sub.slices
           if s.role == "scale" and s.removed]
    assert len(cut) >= 2  # both regions lose channels
    assert sorted(pulled.layers) == sorted(name for name, _ in cut)
    assert pulled.channels == sum(n for _, n in cut)


def test_plan_is_checked_against_the_model_and_excludes_the_other_selections() -> None:
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    x = torch.randn(2, 3, 16, 16)
    plan = slimprune.plan(model, 0.4, example_inputs=x)
    smaller = slimprune.apply(model, plan)
    with pytest.raises(slimprune.PlanMismatchError, match="fingerprint"):
        SparsityRegularizer(smaller, lam=0.1, plan=plan)
    for extra in ({"bn_modules": ["net.blocks.0.1"]}, {"protect": ["net"]}, {"cost": "flops", "example_inputs": x}):
        with pytest.raises(InvalidArgumentError, match="plan= names the channels"):
            SparsityRegularizer(model, lam=0.1, plan=plan, **extra)
    with pytest.raises(InvalidArgumentError, match="plan must be a slimprune.PruningPlan"):
        SparsityRegularizer(model, lam=0.1, plan={"groups": []})


def test_step_creates_a_missing_gradient_and_skips_at_zero_strength() -> None:
    """A scale without a gradient gets λ·sign(γ); a zero multiplier leaves gradients alone."""
    model = TinyResNet()
    reg = SparsityRegularizer(model, lam=0.5, schedule=warmup(2))
    reg.step()  # step 0 of the warm-up: multiplier 0
    assert all(p.grad is None for p in model.parameters())
    reg.step()  # step 1: multiplier 0.5
    torch.testing.assert_close(model.net.blocks[0][1].weight.grad, torch.full((8,), 0.25))
    assert reg.steps_taken == 2


# ------------------------------------------------------------------------------ schedules


def test_schedules() -> None:
    """constant, warmup and linear_decay give the documented multipliers; step= drives them."""
    assert [constant(s) for s in (0, 10, 10**6)] == [1.0, 1.0, 1.0]
    assert [warmup(4)(s) for s in (0, 1, 2, 4, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert [linear_decay(4)(s) for s in (0, 1, 3, 4, 9)] == [1.0, 0.75, 0.25, 0.0, 0.0]
    reg = SparsityRegularizer(ChainNet(), lam=2.0, schedule=lambda step: 0.5 ** step)
    assert [reg.strength(s) for s in (0, 1, 3)] == [2.0, 1.0, 0.25]
    model = ChainNet()
    reg = SparsityRegularizer(model, lam=1.0, schedule=linear_decay(10))
    reg.step(step=5)
    assert reg.steps_taken == 6
    torch.testing.assert_close(model.body[0][1].weight.grad, torch.full((8,), 0.5))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InvalidArgumentError):
            warmup(bad)
    with pytest.raises(InvalidArgumentError, match="callable"):
        SparsityRegularizer(model, schedule=0.5)
    with pytest.raises(InvalidArgumentError, match="schedule returned"):
        SparsityRegularizer(model, schedule=lambda s: -1.0).step()


def test_default_lambda_follows_network_slimming() -> None:
    """1e-4 for plain chains (a depthwise conv is not a residual), 1e-5 when branches are added."""
    import torchvision

    assert default_lambda(ChainNet()) == 1e-4
    assert default_lambda(TinyResNet()) == 1e-5
    assert default_lambda(torchvision.models.mobilenet_v2(num_classes=10)) == 1e-5


# ------------------------------------------------------------------ training end to end


def train(model: nn.Module, lam: float, steps: int = 200) -> float:
    """SGD with momentum and a linearly decaying learning rate on the synthetic task; last loss."""
    x, y = synthetic_task()
    g = torch.Generator().manual_seed(1)
    reg = SparsityRegularizer(model, lam)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    for step in range(steps):
        i = torch.randint(0, x.shape[0], (32,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        reg.step(step)
        opt.step()
        sched.step()
    return loss.item()


def eval_loss(model: nn.Module) -> float:
    x, y = synthetic_task()
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_sparsity_training_drives_scales_to_zero_and_threshold_pruning_keeps_the_loss() -> None:
    """λ=1e-2 for 200 steps: >= 20% of |γ| end below 1e-2 (none without it); pruning there costs < 0.05 loss."""
    torch.manual_seed(0)
    dense = TinyResNet()
    sparse = copy.deepcopy(dense)
    train(dense, 0.0)
    train(sparse, 1e-2)
    frac_dense = gamma_stats(dense)["below"][1e-2] / gamma_stats(dense)["count"]
    stats = gamma_stats(sparse)
    frac_sparse = stats["below"][1e-2] / stats["count"]
    assert frac_dense <= 0.02 and frac_sparse >= 0.2, (frac_dense, frac_sparse)

    plan = slimprune.plan(sparse, threshold=1e-2, example_inputs=torch.randn(2, 3, 16, 16))
    assert plan.removed_channels >= 8 and plan.params_after < 0.8 * plan.params_before
    small = slimprune.apply(sparse, plan)
    before, after = eval_loss(sparse), eval_loss(small)
    assert before < 1.0, "the sparse model did not learn the task"
    assert abs(after - before) < 0.05, (before, after)


def test_gamma_stats_counts_prunable_channels() -> None:
    """Percentiles and counts over the prunable scales only, against numpy on the same values."""
    model = BNOutputNet()
    values = torch.tensor([1e-4, -5e-3, 2e-2, 0.3, -0.5, 1.0, 2.0, 9e-4])
    with torch.no_grad():
        model.stem[1].weight.copy_(values)
        model.out[1].weight.fill_(1e-5)  # protected: must not be counted
    stats = gamma_stats(model, thresholds=(1e-3, 1e-2, 1.0))
    assert stats["count"] == 8
    assert stats["below"] == {1e-3: 2, 1e-2: 3, 1.0: 7}
    expected = np.percentile(values.abs().double().numpy(), [1, 5, 25, 50, 75, 95, 99])
    np.testing.assert_allclose(list(stats["percentiles"].values()), expected, rtol=1e-6)
    assert list(stats["percentiles"]) == [1, 5, 25, 50, 75, 95, 99]


# --------------------------------------------------------------------------------- AMP


def amp_step(lam: float, scaled: bool, call_before_unscale: bool = False) -> torch.Tensor:
    """One SGD step (lr 0.1) of TinyResNet; with scaled=True under bf16 autocast and a GradScaler."""
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    reg = SparsityRegularizer(model, lam)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if scaled:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        scaler.scale(loss).backward()
        if call_before_unscale:
            reg.step()
        scaler.unscale_(opt)
        if not call_before_unscale:
            reg.step()
        scaler.step(opt)
        scaler.update()
    else:
        loss = model(x).square().mean()
        loss.backward()
        reg.step()
        opt.step()
    return torch.cat([m.weight.detach().clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])


def test_amp_grad_scaler_moves_gamma_by_the_fp32_amount() -> None:
    """With a GradScaler the regulariser's share of the γ update equals fp32's: -lr·λ·sign(γ)."""
    lam, lr = 0.05, 0.1
    gamma0 = torch.cat([m.weight.detach() for m in randomize_bn(TinyResNet()).modules() if isinstance(m, nn.BatchNorm2d)])
    expected = -lr * lam * torch.sign(gamma0)
    fp32 = amp_step(lam, False) - amp_step(0.0, False)
    amp = amp_step(lam, True) - amp_step(0.0, True)
    torch.testing.assert_close(fp32, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(amp, expected, rtol=0, atol=1e-6)
    # The documented order matters: before unscale_ the term would be divided by the scale.
    early = amp_step(lam, True, call_before_unscale=True) - amp_step(0.0, True)
    torch.testing.assert_close(early, expected / 2.0**12, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """Train a DDP-wrapped TinyResNet for 3 steps on rank-specific data; save the final γ."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for lam in (0.05, 0.0):
            torch.manual_seed(0)
            model = nn.parallel.DistributedDataParallel(randomize_bn(TinyResNet()))
            reg = SparsityRegularizer(model, lam)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            g = torch.Generator().manual_seed(100 + rank)
            for step in range(3):
                loss = model(torch.randn(4, 3, 16, 16, generator=g)).square().mean()
                opt.zero_grad()
                loss.backward()
                reg.step(step)
                opt.step()
            gammas = torch.cat([m.weight.detach() for m in model.module.modules() if isinstance(m, nn.BatchNorm2d)])
            torch.save({"gamma": gammas, "layers": reg.layers}, os.path.join(out, f"lam{lam}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_ranks_keep_identical_gamma(tmp_path) -> None:
    """Two gloo ranks with different data end with bit-identical γ, and the term did act."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / name, weights_only=True)  # noqa: E731
    r0, r1 = load("lam0.05_rank0.pt"), load("lam0.05_rank1.pt")
    assert torch.equal(r0["gamma"], r1["gamma"])
    assert len(r0["layers"]) == 8
    base = load("lam0.0_rank0.pt")["gamma"]
    assert torch.equal(base, load("lam0.0_rank1.pt")["gamma"])
    # Three steps of lr·λ = 0.005 each, towards zero (|γ| >= 0.5 after randomize_bn never crosses it).
    shift = (r0["gamma"] - base) * torch.sign(base)
    torch.testing.assert_close(shift, torch.full_like(shift, -0.015), rtol=0, atol=2e-3)


# -------------------------------------------------------------------------- the search


def test_suggest_threshold_is_the_smallest_that_reaches_the_target() -> None:
    """plan(threshold=t) removes >= 30% of the parameters; the next smaller |γ| does not."""
    model = randomize_bn(TinyResNet(), seed=3)
    x = torch.randn(2, 3, 16, 16)
    t = suggest_threshold(model, 0.3, x)
    removed = lambda p: 1 - p.params_after / p.params_before  # noqa: E731
    assert removed(slimprune.plan(model, threshold=t, example_inputs=x)) >= 0.3
    gammas = np.concatenate([m.weight.detach().abs().numpy() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert t in gammas
    lower = gammas[gammas < t].max()
    assert removed(slimprune.plan(model, threshold=float(lower), example_inputs=x)) < 0.3
    with pytest.raises(InfeasiblePlanError, match="99.0%"):
        suggest_threshold(model, 0.99, x)
    with pytest.raises(InvalidArgumentError):
        suggest_threshold(model, 1.5, x)


def test_suggest_ratio_is_the_smallest_channel_ratio_that_reaches_the_target() -> None:
    """plan(ratio=r) removes >= 30% of the parameters and r - 1/n does not."""
    model = randomize_bn(TinyResNet(), seed=4)
    x = torch.randn(2, 3, 16, 16)
    r = suggest_ratio(model, 0.3, x)
    plan = slimprune.plan(model, r, example_inputs=x)
    n = plan.prunable_channels
    assert 1 - plan.params_after / plan.params_before >= 0.3
    below = slimprune.plan(model, r - 1 / n, example_inputs=x)
    assert 1 - below.params_after / below.params_before < 0.3
    assert round(r * n) == plan.removed_channels


# ------------------------------------------------------------------ cost-weighted λ


def _saved_by_one_channel(count, x: torch.Tensor) -> tuple[float, float]:
    """What a CostNet saves when layer a, or layer b, is built with one channel fewer."""
    full = count(CostNet(), x)
    return full - count(CostNet(3, 2), x), full - count(CostNet(4, 1), x)


@pytest.mark.parametrize(
    "cost, count",
    [
        ("flops", lambda m, x: measure(m, x, latency=False).flops),
        ("params", lambda m, x: sum(p.numel() for p in m.parameters())),
    ],
)
def test_cost_weights_are_what_removing_the_channel_saves_averaging_one(cost, count) -> None:
    """cost='flops'/'params': each channel's λ multiplier is proportional to the FLOPs/params a
    network one channel narrower saves (measured on such a network), and they average 1."""
    x = torch.zeros(1, 3, 8, 8)
    save_a, save_b = _saved_by_one_channel(count, x)
    mean = (4 * save_a + 2 * save_b) / 6
    weights = SparsityRegularizer(CostNet(), lam=1.0, example_inputs=(x,), cost=cost).channel_weights
    torch.testing.assert_close(weights["a.1"], torch.full((4,), save_a / mean))
    torch.testing.assert_close(weights["b.1"], torch.full((2,), save_b / mean))
    assert float(torch.cat(list(weights.values())).mean()) == pytest.approx(1.0)


def test_flops_cost_scales_the_gradient_term_and_the_penalty() -> None:
    """With cost='flops' step() adds λ·w·sign(γ); penalty() is λ·Σ w·|γ| and has the same gradient."""
    torch.manual_seed(0)
    model = randomize_bn(CostNet())
    with torch.no_grad():
        model.a[1].weight[0] *= -1
    x = torch.randn(2, 3, 8, 8)
    reg = SparsityRegularizer(model, lam=0.5, example_inputs=(x,), cost="flops")
    w = reg.channel_weights
    assert float(w["a.1"][0]) > 20 * float(w["b.1"][0])  # full resolution 3x3 against a strided 1x1
    plain = grads_after(model, None, x)
    by_step = grads_after(model, reg, x)
    by_penalty = grads_after(model, reg, x, use_penalty=True)
    for name in ("a.1", "b.1"):
        gamma = model.get_submodule(name).weight.detach()
        torch.testing.assert_close(by_step[name] - plain[name], 0.5 * w[name] * torch.sign(gamma), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(by_penalty[name], by_step[name], rtol=1e-5, atol=1e-6)
    expected = 0.5 * sum((w[n] * model.get_submodule(n).weight.detach().abs()).sum() for n in ("a.1", "b.1"))
    torch.testing.assert_close(reg.penalty().detach(), expected)


def test_cost_weights_keep_the_mask_of_kept_channels() -> None:
    """Channels left alone (tied to an output) keep weight 0 under a cost too; the rest average 1."""
    reg = SparsityRegularizer(PartialNet(), lam=1.0, example_inputs=(torch.zeros(1, 3, 8, 8),), cost="params")
    w = reg.channel_weights["bn"]
    assert torch.equal(w[:2], torch.zeros(2)) and bool((w[2:] > 0).all())
    torch.testing.assert_close(w[2:].mean(), torch.tensor(1.0))


def test_uniform_cost_is_network_slimming_and_bad_costs_are_refused() -> None:
    """The default weights every channel 1; an unknown cost, or a cost without the graph, is an error."""
    reg = SparsityRegularizer(CostNet(), lam=1.0, example_inputs=(torch.zeros(1, 3, 8, 8),))
    assert all(bool((w == 1).all()) for w in reg.channel_weights.values())
    with pytest.raises(InvalidArgumentError, match="cost='macs'"):
        SparsityRegularizer(CostNet(), lam=1.0, cost="macs")
    with pytest.raises(InvalidArgumentError, match="bn_modules"):
        SparsityRegularizer(CostNet(), lam=1.0, cost="flops", bn_modules=["a.1"])
