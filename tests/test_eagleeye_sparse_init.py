"""Sparsity training that starts from the trained baseline (PipelineConfig.sparse_init, TrainConfig.init).

The sparse run's first step must see exactly the baseline's weights; without the option it must
not; a checkpoint of a run that started the other way is never resumed; and the option reaches
the config, each seed's folder, report.json's config and the command line.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import examples.eagleeye.pipeline as pipeline
from examples.eagleeye.__main__ import build_parser, pipeline_config_from_args
from examples.eagleeye.config import PipelineConfig
from examples.eagleeye.train import CHECKPOINT_NAME, CheckpointError, load_model, train
from tests.test_eagleeye_train import Squares, _config

torch.set_num_threads(1)


def _parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _first_step_parameters(config, **kw) -> dict[str, torch.Tensor]:
    """The parameters the first optimiser step starts from (recorded after the first backward,
    before any step), then the run is cut short."""
    seen: list[dict[str, torch.Tensor]] = []

    class _Stop(Exception):
        pass

    def record(model: nn.Module) -> None:
        seen.append(_parameters(model))
        raise _Stop

    with pytest.raises(_Stop):
        train(config, after_backward=record, **kw)
    return seen[0]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch λ = 0 run's checkpoint."""
    out = tmp_path_factory.mktemp("baseline")
    train(_config(out, epochs=1), dataset=Squares(8))
    return out / CHECKPOINT_NAME


def test_init_starts_the_run_from_the_checkpoints_weights(baseline: Path, tmp_path: Path) -> None:
    """With init the sparse run's first step starts at the baseline's trained weights; without,
    at a fresh model's, which differ (so the comparison can fail)."""
    trained = _parameters(load_model(baseline)[0])
    sparse = _config(tmp_path / "sparse", sparsity=0.01, seed=1)
    from_baseline = _first_step_parameters(replace(sparse, init=str(baseline)), dataset=Squares(8))
    assert _same(from_baseline, trained)
    from_scratch = _first_step_parameters(sparse, dataset=Squares(8))
    assert not _same(from_scratch, trained)


def test_resume_refuses_a_checkpoint_of_a_run_that_started_otherwise(baseline: Path, tmp_path: Path) -> None:
    """A cached from-scratch sparse checkpoint is not continued as a from-baseline run, nor the
    reverse; a checkpoint of the same kind resumes."""
    scratch_dir, init_dir = tmp_path / "scratch", tmp_path / "init"
    scratch = _config(scratch_dir, sparsity=0.01, epochs=1)
    train(scratch, dataset=Squares(8))
    with pytest.raises(CheckpointError, match="from scratch"):
        train(replace(scratch, init=str(baseline), resume=True), dataset=Squares(8))
    from_init = replace(scratch, out_dir=str(init_dir), init=str(baseline))
    done = train(from_init, dataset=Squares(8))
    with pytest.raises(CheckpointError, match="starts from scratch"):
        train(replace(from_init, init=None, resume=True), dataset=Squares(8))
    resumed = train(replace(from_init, resume=True), dataset=Squares(8))  # finished: loads, trains nothing
    assert _same(_parameters(resumed), _parameters(done))


def test_pipeline_config_points_the_sparse_run_at_its_own_baseline(tmp_path: Path) -> None:
    """sparse_init="baseline" sets sparse.init to the baseline's checkpoint, per seed folder too,
    and report.json's config records it; "scratch" leaves init unset; a mismatch is refused."""
    out = tmp_path / "ee"
    config = PipelineConfig.create(str(out), sparse_init="baseline")
    assert config.sparse.init == str(out / "baseline" / CHECKPOINT_NAME)
    assert config.baseline.init is None and config.finetune.init is None
    seeded = config.with_seed(3)
    assert seeded.sparse.init == str(out / "seed-3" / "baseline" / CHECKPOINT_NAME)
    assert seeded.sparse.init == str(Path(seeded.baseline.out_dir) / CHECKPOINT_NAME)
    assert config.to_dict()["sparse_init"] == "baseline"
    assert config.to_dict()["sparse"]["init"] == config.sparse.init
    scratch = PipelineConfig.create(str(out), sparse_init="scratch")
    assert scratch.sparse.init is None and scratch.with_seed(1).sparse.init is None
    assert scratch.to_dict()["sparse_init"] == "scratch"
    with pytest.raises(ValueError, match="sparse_init"):
        replace(scratch, sparse_init="baseline")
    with pytest.raises(ValueError, match="sparse_init"):
        PipelineConfig.create(str(out), sparse_init="imagenet")


def test_sparse_init_flag_reaches_the_config_and_init_is_not_a_pipeline_flag(tmp_path: Path) -> None:
    """`pipeline --sparse-init baseline|scratch` sets the option; --init is the train command's only."""
    parser = build_parser()
    for choice in ("baseline", "scratch"):
        config = pipeline_config_from_args(
            parser.parse_args(["pipeline", "--out", str(tmp_path), "--sparse-init", choice])
        )
        assert config.sparse_init == choice
        assert (config.sparse.init is not None) == (choice == "baseline")
    with pytest.raises(SystemExit):
        parser.parse_args(["pipeline", "--init", "x.pt"])
    assert parser.parse_args(["train", "--init", "x.pt"]).init == "x.pt"


def test_pipelines_sparse_stage_starts_from_the_baseline_it_just_trained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end (`pipeline --quick --sparse-init baseline`, cut after the sparse run's first
    backward): the sparse stage's starting weights are those of the baseline stage's checkpoint."""
    real_train = pipeline.train
    seen: dict[str, dict[str, torch.Tensor]] = {}

    class _Stop(Exception):
        pass

    def spying_train(config, **kw):
        if config.sparsity == 0:
            return real_train(config, **kw)

        def record(model: nn.Module) -> None:
            seen["sparse"] = _parameters(model)
            raise _Stop

        return real_train(config, after_backward=record, **kw)

    monkeypatch.setattr(pipeline, "train", spying_train)
    out = tmp_path / "out"
    args = build_parser().parse_args(
        ["pipeline", "--quick", "--out", str(out), "--data", str(tmp_path / "data"), "--no-progress",
         "--sparse-init", "baseline", "--epochs", "1", "--finetune-epochs", "1", "--curve-every", "0"]
    )
    with pytest.raises(_Stop):
        pipeline.run(pipeline_config_from_args(args))
    trained = _parameters(load_model(out / "baseline" / CHECKPOINT_NAME)[0])
    assert _same(seen["sparse"], trained)


def test_report_states_the_pruned_models_budget_when_it_starts_from_the_baseline() -> None:
    """report.md's sentence on the baseline says that the pruned model came from it and counts
    the baseline's epochs in its budget; a from-scratch run keeps the fair-baseline sentence."""
    from examples.eagleeye.report import _baseline_sentence

    curve = {"fair": True, "epochs": 28, "budget": {"sparse": 12, "finetune": 16}}
    derived = _baseline_sentence({"baseline_curve": {**curve, "sparse_init": "baseline"}})
    assert "derived from the baseline" in derived and "28 epochs plus 12 sparse + 16 fine-tuning" in derived
    scratch = _baseline_sentence({"baseline_curve": {**curve, "sparse_init": "scratch"}})
    assert "derived" not in scratch and "whole budget (12 sparse + 16 fine-tuning)" in scratch
