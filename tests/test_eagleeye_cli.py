"""The EagleEye command line is built from the config dataclasses (examples/eagleeye/flags.py).

Every config field has a flag, parsing no flag gives the default config, and a flag reaches
its field; the documented spellings still parse.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from examples.eagleeye.__main__ import build_parser, config_from_args, pipeline_config_from_args
from examples.eagleeye.anchors import AnchorSpec
from examples.eagleeye.config import PipelineConfig, TrainConfig
from examples.eagleeye.flags import flag_fields
from examples.eagleeye.loss import LossConfig

# The pipeline's --out and --no-progress set these of every run (one folder per stage), and
# --sparse-init where the sparse run starts (TrainConfig.init).
_PIPELINE_OWN = {"out_dir", "progress", "init"}
_STAGES = {"baseline", "sparse", "finetune"}


def _sub(command: str) -> argparse.ArgumentParser:
    """The subcommand's parser."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def test_every_train_config_field_has_a_train_flag() -> None:
    """Each TrainConfig field, nested LossConfig and AnchorSpec fields included, is set by one flag."""
    dests = _dests(_sub("train"))
    wanted = {dest for dest, _, _ in flag_fields(TrainConfig)}
    assert {f"loss.{f.name}" for f in dataclasses.fields(LossConfig)} <= wanted
    assert {f"anchors.{f.name}" for f in dataclasses.fields(AnchorSpec)} <= wanted
    assert wanted - dests == set()


def test_every_pipeline_config_field_has_a_pipeline_flag() -> None:
    """Each PipelineConfig field has a flag, and its three runs every TrainConfig field but the three
    the pipeline sets itself."""
    dests = _dests(_sub("pipeline"))
    own = {f.name for f in dataclasses.fields(PipelineConfig)} - _STAGES
    assert own - dests == set()
    training = {dest for dest, _, _ in flag_fields(TrainConfig) if dest not in _PIPELINE_OWN}
    assert training - dests == set()


@pytest.mark.parametrize("quick", [False, True], ids=["default", "quick"])
def test_parsing_no_flag_gives_the_default_configs(quick: bool) -> None:
    """`train` and `pipeline` with no option (or only --quick) describe exactly the default configs."""
    extra = ["--quick"] if quick else []
    parser = build_parser()
    train = config_from_args(parser.parse_args(["train", *extra]))
    assert train == (TrainConfig.quick() if quick else TrainConfig())
    pipeline = pipeline_config_from_args(parser.parse_args(["pipeline", *extra]))
    assert pipeline == PipelineConfig.create("runs/eagleeye", quick=quick)


def test_train_flags_reach_their_fields_nested_ones_included() -> None:
    """Scalar, optional, boolean, switch, nested and tuple flags each set their own field."""
    args = build_parser().parse_args(
        "train --lr 0.1 --grad-clip none --no-amp --resume --no-synthesize --workers 3 --box-loss smooth_l1 "
        "--focal-gamma 1.5 --anchor-strides 8 16 --anchor-sizes 16,24 32 --sparsity 0.01 --max-images 5".split()
    )
    config = config_from_args(args)
    assert config == dataclasses.replace(
        TrainConfig(),
        lr=0.1,
        grad_clip=None,
        amp=False,
        resume=True,
        synthesize=None,
        num_workers=3,
        loss=dataclasses.replace(TrainConfig().loss, box_loss="smooth_l1", gamma=1.5),
        anchors=AnchorSpec((8, 16), ((16.0, 24.0), (32.0,))),
        sparsity=0.01,
        max_images=5,
    )


def test_documented_pipeline_flags_build_the_config_they_did() -> None:
    """The spellings docs/eagleeye.md gives mean what PipelineConfig.create made of them before."""
    args = build_parser().parse_args(
        "pipeline --out o --quick --data d --epochs 3 --finetune-epochs 2 --img-size 96 --eval-size 128 "
        "--target-params 0.5 --target-flops 0 --dead-threshold 0 --round-to 4 --sparsity 0.01 "
        "--sparsity-cost flops --device cpu --seed 1 --threads 1 --latency-threads 2 --resume --no-progress".split()
    )
    want = PipelineConfig.create(
        "o",
        quick=True,
        train_overrides={"data_root": "d", "epochs": 3, "image_size": 96, "eval_size": 128, "device": "cpu",
                         "seed": 1, "threads": 1},
        sparsity=0.01,
        sparsity_cost="flops",
        finetune_epochs=2,
        resume=True,
        target_params=0.5,
        target_flops=None,
        dead_threshold=0.0,
        round_to=4,
        latency_threads=2,
        progress=False,
    )
    assert pipeline_config_from_args(args) == want
    assert want.sparse.sparsity == 0.01 and want.baseline.sparsity == 0.0 and want.finetune.epochs == 2


def test_target_params_and_threshold_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    """`--target-params` and `--threshold` cannot both be given; a bad value names the flag."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pipeline", "--target-params", "0.5", "--threshold", "0.01"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--lr", "fast"])
    assert "--lr" in capsys.readouterr().err


def test_pipeline_training_flags_reach_all_three_runs_nested_ones_included() -> None:
    """A shared training flag (nested or not) changes the baseline, sparse and fine-tuning runs alike,
    and the stage folders stay under --out."""
    args = build_parser().parse_args("pipeline --out o --box-loss smooth_l1 --lr 0.2 --no-sweep-baseline".split())
    config = pipeline_config_from_args(args)
    for run in (config.baseline, config.sparse, config.finetune):
        assert run.loss == dataclasses.replace(TrainConfig().loss, box_loss="smooth_l1") and run.lr == 0.2
    assert [config.baseline.out_dir, config.finetune.out_dir] == ["o/baseline", "o/finetune"]
    assert config.sweep_baseline is False


def test_pipeline_distill_flag_reaches_the_fine_tuning_run_only() -> None:
    """--distill weighs distillation from the baseline, which only the fine-tuning run has as a
    teacher: the baseline and sparse runs keep distill 0 (train() refuses distill without a teacher)."""
    config = pipeline_config_from_args(build_parser().parse_args("pipeline --out o --distill 1.5".split()))
    assert config.finetune.distill == 1.5
    assert config.baseline.distill == config.sparse.distill == 0.0
    python_api = PipelineConfig.create("o", train_overrides={"distill": 2.0, "lr": 0.2})
    assert python_api.finetune.distill == 2.0 and python_api.sparse.distill == 0.0
    assert python_api.baseline.lr == python_api.finetune.lr == 0.2
