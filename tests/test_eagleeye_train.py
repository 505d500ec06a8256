"""EagleEye training loop: one step learns, exact resume, DDP, checkpoints, CLI (examples/eagleeye)."""

from __future__ import annotations

import copy
import os
import re
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from examples.eagleeye.__main__ import main
from examples.eagleeye.anchors import generate_anchors
from examples.eagleeye.loss import detection_loss, distillation_loss
from examples.eagleeye.model import EagleEye
from examples.eagleeye.train import (
    CHECKPOINT_NAME,
    CheckpointError,
    TrainConfig,
    build_model,
    load_checkpoint,
    sparsity_hook,
    train,
)

torch.set_num_threads(1)


class Squares(Dataset):
    """Deterministic 64x64 images, each with one or two bright squares as the 'faces'."""

    def __init__(self, n: int = 16, size: int = 64) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, self.size, self.size, generator=g) * 0.3
        boxes = []
        for _ in range(1 + i % 2):
            side = int(torch.randint(10, 28, (1,), generator=g))
            x, y = (int(v) for v in torch.randint(0, self.size - side, (2,), generator=g))
            image[:, y : y + side, x : x + side] += 0.6
            boxes.append([x, y, x + side, y + side])
        return image, torch.tensor(boxes, dtype=torch.float32), i


def _config(out_dir: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = dict(
        out_dir=str(out_dir), image_size=64, epochs=2, batch_size=4, num_workers=0, threads=1, progress=False
    )
    values.update(overrides)
    return TrainConfig(**values)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"tensors differ: {different[:5]}"


def test_one_training_step_lowers_the_loss_on_a_fixed_batch() -> None:
    """A single SGD step on a batch lowers that batch's loss."""
    torch.manual_seed(0)
    model = EagleEye().train()
    data = Squares(4)
    images = torch.stack([data[i][0] for i in range(4)])
    targets = [data[i][1] for i in range(4)]
    anchors = generate_anchors(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0)
    before = detection_loss(*model(images), anchors, targets).total
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = detection_loss(*model(images), anchors, targets).total
    assert float(after.detach()) < 0.95 * float(before.detach())


class _Killed(Exception):
    """Raised by the test callback to simulate the process dying mid-epoch."""


def test_resume_after_a_kill_mid_epoch_gives_bit_identical_weights(tmp_path: Path) -> None:
    """Killed in epoch 2 (after epoch 1's checkpoint), then resumed: same weights as a straight run."""
    straight = train(_config(tmp_path / "straight"), dataset=Squares())

    steps = 0

    def die_in_epoch_two(model: nn.Module) -> None:
        nonlocal steps
        steps += 1
        if steps == 6:  # 4 steps per epoch: the 2nd step of epoch 2
            raise _Killed

    killed_cfg = _config(tmp_path / "killed")
    with pytest.raises(_Killed):
        train(killed_cfg, dataset=Squares(), after_backward=die_in_epoch_two)
    assert load_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)["epoch"] == 1
    torch.manual_seed(12345)  # the dead run's leftover RNG state must not matter
    resumed = train(replace(killed_cfg, resume=True), dataset=Squares())
    _assert_same_state(straight, resumed)
    final = load_checkpoint(tmp_path / "killed" / CHECKPOINT_NAME)
    assert final["epoch"] == 2 and len(final["history"]) == 2


def test_after_backward_sees_gradients_before_each_step(tmp_path: Path) -> None:
    """The callback runs once per step, with gradients present and weights not yet updated."""
    seen: list[bool] = []
    snapshot: dict[str, torch.Tensor] = {}

    def check(model: nn.Module) -> None:
        weight = model.stem[0][0].weight
        seen.append(weight.grad is not None)
        if "w" in snapshot:
            assert not torch.equal(snapshot["w"], weight)  # the previous step did update
        snapshot["w"] = weight.detach().clone()

    train(_config(tmp_path, epochs=1), dataset=Squares(), after_backward=check)
    assert seen == [True] * 4


def test_sparsity_penalty_adds_lambda_sign_gamma_to_batchnorm_gradients() -> None:
    """--sparsity λ adds λ·sign(γ) to every BatchNorm weight gradient and to nothing else."""
    model = EagleEye()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        bns[0].weight[:3] = torch.tensor([-2.0, 0.0, 0.5])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    hook = sparsity_hook(model, 1e-3, torch.zeros(1, 3, 64, 64))
    hook(model)
    assert bns[0].weight.grad[:3].tolist() == pytest.approx([-1e-3, 0.0, 1e-3])
    assert all(bool((bn.weight.grad.abs() == 1e-3).all()) for bn in bns[1:])
    others = [p for n, p in model.named_parameters() if not any(p is bn.weight for bn in bns)]
    assert all(float(p.grad.abs().sum()) == 0 for p in others)


def test_training_with_sparsity_shrinks_batchnorm_scales(tmp_path: Path) -> None:
    """TrainConfig(sparsity=λ) wires the penalty in: mean |γ| ends lower than without it."""

    def mean_gamma(model: nn.Module) -> float:
        gammas = [m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        return float(torch.cat(gammas).mean())

    plain = train(_config(tmp_path / "plain", epochs=1), dataset=Squares(8))
    sparse = train(_config(tmp_path / "sparse", epochs=1, sparsity=0.05), dataset=Squares(8))
    assert mean_gamma(sparse) < mean_gamma(plain) - 1e-4


def test_gamma_init_starts_every_batchnorm_scale_there_and_leaves_the_rest_as_seeded() -> None:
    """TrainConfig(gamma_init=0.5) sets every BatchNorm γ to 0.5; every other tensor is the γ = 1 model's."""
    torch.manual_seed(0)
    plain = build_model(TrainConfig())
    torch.manual_seed(0)
    half = build_model(TrainConfig(gamma_init=0.5))
    bn_weights = {f"{n}.weight" for n, m in half.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(bn_weights) > 40
    for name, value in half.state_dict().items():
        if name in bn_weights:
            assert bool((value == 0.5).all()), name
        else:
            assert torch.equal(value, plain.state_dict()[name]), name
    with pytest.raises(ValueError, match="gamma_init=0"):
        TrainConfig(gamma_init=0.0)


def test_distillation_loss_is_zero_at_the_teacher_and_training_with_it_moves_towards_the_teacher(tmp_path: Path) -> None:
    """distillation_loss(student = teacher) is 0; fine-tuning with distill > 0 ends closer to the
    teacher's outputs than the same fine-tuning without it; distill without a teacher is refused."""
    anchors = generate_anchors(64, 64)
    images = torch.stack([Squares(4)[i][0] for i in range(4)])
    torch.manual_seed(1)
    teacher = train(_config(tmp_path / "teacher", epochs=3), dataset=Squares(8))
    with torch.no_grad():
        t_cls, t_box = teacher(images)
    assert float(distillation_loss(t_cls, t_box, t_cls, t_box, anchors, 1)) == pytest.approx(0.0, abs=1e-6)

    def gap(model: nn.Module) -> float:
        with torch.no_grad():
            cls, box = model.eval()(images)
        return float(distillation_loss(cls, box, t_cls, t_box, anchors, 1))

    torch.manual_seed(2)
    start = EagleEye()
    plain = train(_config(tmp_path / "plain", epochs=1), model=copy.deepcopy(start), dataset=Squares(8))
    taught = train(
        _config(tmp_path / "taught", epochs=1, distill=5.0), model=copy.deepcopy(start), dataset=Squares(8), teacher=teacher
    )
    assert gap(taught) < gap(plain)
    with pytest.raises(ValueError, match="distill=1.0 needs a teacher"):
        train(_config(tmp_path / "none", distill=1.0), dataset=Squares(8))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
        lambda p: p.write_bytes(b"not a checkpoint at all"),
        lambda p: torch.save({"model": {}}, p),
    ],
    ids=["truncated", "garbage", "foreign"],
)
def test_corrupt_checkpoint_raises_a_clear_error(tmp_path: Path, damage) -> None:
    """Resuming from a damaged checkpoint fails with CheckpointError naming the file."""
    cfg = _config(tmp_path, epochs=1)
    train(cfg, dataset=Squares(8))
    path = tmp_path / CHECKPOINT_NAME
    damage(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        train(replace(cfg, resume=True), dataset=Squares(8))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    model = train(_config(Path(out_dir), epochs=1), dataset=Squares(24))
    torch.save(model.state_dict(), Path(out_dir) / f"rank{rank}.pt")


def test_two_process_gloo_ddp_ends_with_identical_weights_on_both_ranks(tmp_path: Path) -> None:
    """2-rank DDP on CPU: parameters and BatchNorm statistics agree bit for bit, and they trained."""
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    torch.manual_seed(0)
    initial = EagleEye(activation=TrainConfig().activation).state_dict()
    assert not torch.equal(initial["stem.0.0.weight"], rank0["stem.0.0.weight"])
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["epoch"] == 1


def test_quick_cli_trains_evaluates_and_writes_a_submission(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`train --quick --eval` then `eval --submission` run end to end on quick SynthFaces."""
    data, out, sub = tmp_path / "data", tmp_path / "run", tmp_path / "sub"
    args = ["train", "--quick", "--data", str(data), "--out", str(out), "--eval", "--no-progress", "--gamma-init", "0.25"]
    assert main(args) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["config"]["gamma_init"] == 0.25
    assert main(["eval", "--checkpoint", str(out / CHECKPOINT_NAME), "--submission", str(sub), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("easy") >= 2 and "hard" in printed
    files = list(sub.glob("*/*.txt"))
    assert len(files) == 16
    (out / CHECKPOINT_NAME).write_bytes(b"\x00" * 10)
    assert main(["eval", "--checkpoint", str(out / CHECKPOINT_NAME), "--no-progress"]) == 2
