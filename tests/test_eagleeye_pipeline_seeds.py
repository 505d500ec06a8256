"""The fair baseline, its val-AP curve and `pipeline --seeds N` (examples/eagleeye/pipeline.py, report.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.eagleeye.__main__ import main
from examples.eagleeye.config import PipelineConfig
from examples.eagleeye.report import MODELS, SUBSETS, curve_markdown, mean_std

torch.set_num_threads(1)

_SEEDS = 2
_EPOCHS, _FINETUNE, _EVERY = 6, 6, 3


def test_default_baseline_trains_the_pruned_models_whole_budget() -> None:
    """The baseline gets sparse + fine-tuning epochs (12 + 16 by default, --epochs + --finetune-epochs
    when given); --no-fair-baseline gives it --epochs only."""
    config = PipelineConfig.create("o")
    assert config.baseline.epochs == config.sparse.epochs + config.finetune.epochs == 12 + 16
    given = PipelineConfig.create("o", train_overrides={"epochs": 5}, finetune_epochs=3)
    assert (given.baseline.epochs, given.sparse.epochs, given.finetune.epochs) == (8, 5, 3)
    unfair = PipelineConfig.create("o", fair_baseline=False)
    assert unfair.baseline.epochs == unfair.sparse.epochs == 12


def test_with_seed_moves_every_run_and_changes_only_the_seeds() -> None:
    """with_seed(s) reseeds all three runs and writes under out/seed-<s>; the data stay the same."""
    config = PipelineConfig.create("o", seeds=3)
    one = config.with_seed(7)
    assert one.seeds == 1 and Path(one.out_dir) == Path("o/seed-7")
    for stage, run in (("baseline", one.baseline), ("sparse", one.sparse), ("finetune", one.finetune)):
        assert run.seed == 7 and Path(run.out_dir) == Path("o/seed-7") / stage
        assert run.data_root == getattr(config, stage).data_root


def test_mean_std_is_the_sample_standard_deviation() -> None:
    """Spread is the sample (n - 1) standard deviation; one seed has spread 0."""
    got = mean_std([1.0, 2.0, 4.0])
    assert got["mean"] == pytest.approx(7 / 3) and got["std"] == pytest.approx(statistics.stdev([1, 2, 4]))
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "values": [0.5]}


def test_curve_table_says_when_the_baseline_was_still_rising() -> None:
    """A curve whose last point gained on the one before is flagged; a flat one is called level."""
    rising = {"images": 100, "points": [{"epoch": e, "ap": {s: 0.1 * e for s in SUBSETS}} for e in (1, 2, 3)]}
    flat = {"images": 100, "points": [{"epoch": e, "ap": {s: 0.5 for s in SUBSETS}} for e in (1, 2, 3)]}
    assert "still rising" in "\n".join(curve_markdown([rising]))
    assert "levelled off" in "\n".join(curve_markdown([flat]))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`pipeline --quick --seeds 2` with short runs, into a fresh directory."""
    root = tmp_path_factory.mktemp("seeds")
    out, data = root / "out", root / "data"
    args = [
        "pipeline", "--quick", "--out", str(out), "--data", str(data), "--no-progress", "--round-to", "4",
        "--seeds", str(_SEEDS), "--epochs", str(_EPOCHS), "--finetune-epochs", str(_FINETUNE),
        "--curve-every", str(_EVERY), "--sweep", "0.5",
    ]
    status = main(args)
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    per_seed = [json.loads((out / run).read_text()) for run in report["runs"]]
    return {"out": out, "report": report, "per_seed": per_seed}


def test_seeds_report_is_the_mean_and_spread_of_the_per_seed_reports(seeded: dict[str, Any]) -> None:
    """Every model's AP per subset, params, FLOPs, latency and speed-up are mean ± std of the seeds' reports."""
    report, per_seed = seeded["report"], seeded["per_seed"]
    assert report["seeds"] == [0, 1] and len(per_seed) == _SEEDS
    for name in MODELS:
        for key in ("params", "flops", "latency_ms", "speedup", "params_reduction", "flops_reduction"):
            values = [r["models"][name][key] for r in per_seed]
            assert report["models"][name][key]["mean"] == pytest.approx(statistics.fmean(values)), (name, key)
            assert report["models"][name][key]["std"] == pytest.approx(statistics.stdev(values)), (name, key)
        for s in SUBSETS:
            values = [r["models"][name]["ap"][s] for r in per_seed]
            assert report["models"][name]["ap"][s]["mean"] == pytest.approx(statistics.fmean(values))
            assert report["models"][name]["ap"][s]["std"] == pytest.approx(statistics.stdev(values))
    markdown = (seeded["out"] / "report.md").read_text()
    assert "±" in markdown and "over 2 seeds" in markdown


def test_each_seed_trains_differently_on_the_same_data(seeded: dict[str, Any]) -> None:
    """The seeds reach the runs (their baselines differ) while the data root is the same."""
    configs = [r["config"] for r in seeded["per_seed"]]
    assert [c["baseline"]["seed"] for c in configs] == [0, 1]
    assert len({c["baseline"]["data_root"] for c in configs}) == 1
    weights = [torch.load(seeded["out"] / f"seed-{s}" / "baseline" / "last.pt", weights_only=True)["model"] for s in (0, 1)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_fair_baseline_curve_is_recorded_every_n_epochs(seeded: dict[str, Any]) -> None:
    """The baseline trains sparse + fine-tuning epochs, evaluated every --curve-every epochs, and the
    last curve point (whole val split in --quick) is the AP the report gives the baseline."""
    for r in seeded["per_seed"]:
        curve = r["baseline_curve"]
        assert curve["fair"] and curve["epochs"] == _EPOCHS + _FINETUNE
        assert [p["epoch"] for p in curve["points"]] == list(range(_EVERY, _EPOCHS + _FINETUNE + 1, _EVERY))
        assert curve["points"][-1]["ap"] == pytest.approx(r["models"]["baseline"]["ap"])
        for m in MODELS:
            change = r["models"][m]["ap_change"]
            assert all(change[s] == pytest.approx(r["models"][m]["ap"][s] - r["models"]["baseline"]["ap"][s])
                       for s in SUBSETS)
    seed_dir = seeded["out"] / "seed-0"
    assert (seed_dir / "baseline_curve.png").read_bytes().startswith(b"\x89PNG")
    assert "val-AP curve" in (seed_dir / "report.md").read_text()


def test_summarize_puts_separate_runs_together_as_seeds_does(seeded: dict[str, Any], tmp_path: Path) -> None:
    """`summarize seed-0 seed-1` (runs made one at a time) writes the report `--seeds 2` wrote: the same
    models, means and spreads and targets; the runs' folders and seeds may differ, nothing else."""
    out = seeded["out"]
    runs = [str(out / f"seed-{s}") for s in (0, 1)]
    assert main(["summarize", *runs, "--out", str(tmp_path / "sum")]) == 0
    summary = json.loads((tmp_path / "sum" / "report.json").read_text())
    report = seeded["report"]
    assert summary["seeds"] == report["seeds"] and summary["models"] == report["models"]
    assert summary["targets"] == report["targets"] and summary["config"] == seeded["per_seed"][0]["config"]
    assert "over 2 seeds" in (tmp_path / "sum" / "report.md").read_text()


def test_summarize_refuses_runs_that_differ_in_more_than_the_seed(seeded: dict[str, Any], tmp_path: Path) -> None:
    """A run made with another option is named with the entry that differs; a seed given twice, a
    folder without report.json and a single run are refused too, and nothing is written."""
    from examples.eagleeye.pipeline import summarize

    out = seeded["out"]
    other = tmp_path / "other"
    other.mkdir()
    changed = json.loads((out / "seed-1" / "report.json").read_text())
    changed["config"]["finetune"]["lr"] = 0.5
    (other / "report.json").write_text(json.dumps(changed))
    target = tmp_path / "sum"
    with pytest.raises(ValueError, match=r"config entry finetune\.lr: 0\.\d+ against 0\.5"):
        summarize([out / "seed-0", other], target)
    with pytest.raises(ValueError, match=r"seeds \[0, 0\]"):
        summarize([out / "seed-0", out / "seed-0"], target)
    with pytest.raises(ValueError, match="report.json does not exist"):
        summarize([out / "seed-0", tmp_path], target)
    with pytest.raises(ValueError, match="at least two runs"):
        summarize([out / "seed-0"], target)
    assert not target.exists()


def test_seeds_onnxruntime_latency_is_the_mean_of_each_seeds_speed_up() -> None:
    """The onnxruntime column of a seeds report: mean ± std of the latencies, and of each seed's
    speed-up against its own baseline (not the ratio of the means); a seed without it is said so."""
    from examples.eagleeye.report import aggregate_onnxruntime

    runs = [{"threads": 1, "ms": {"baseline": 4.0, "finetuned": 1.0}},
            {"threads": 1, "ms": {"baseline": 6.0, "finetuned": 3.0}}]
    got = aggregate_onnxruntime(runs)
    assert got["ms"]["finetuned"]["values"] == [1.0, 3.0] and got["ms"]["baseline"]["mean"] == 5.0
    assert got["speedup"]["finetuned"]["values"] == [4.0, 2.0] and got["speedup"]["baseline"]["values"] == [1.0, 1.0]
    assert got["speedup"]["finetuned"]["mean"] == 3.0  # not 5.0 / 2.0, the ratio of the means
    assert "1 of 2" in aggregate_onnxruntime([runs[0], {"skipped": "onnxruntime not installed"}])["skipped"]
    assert aggregate_onnxruntime([None, None]) is None
