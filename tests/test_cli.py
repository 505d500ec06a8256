"""Tests for the slimprune command: every subcommand on real models through ``python -m slimprune``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimprune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def slimprune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m slimprune ARGS`` with the repository importable (for tests.models specs)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "slimprune", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The whole of stderr, which must be exactly one 'slimprune: error:' line."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("slimprune: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def pruned_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """prune tests.models:TinyResNet --ratio 0.4 --json: the file and the JSON document."""
    out = tmp_path_factory.mktemp("cli") / "tiny.safetensors"
    proc = slimprune("prune", "tests.models:TinyResNet?width=8", "--ratio", "0.4", "--input-size", "3,16,16",
                     "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_prune_json_and_file(pruned_file: tuple[Path, dict]) -> None:
    """stdout is one JSON document whose numbers agree with each other and with the file."""
    path, doc = pruned_file
    assert path.is_file() and doc["out"] == str(path) and doc["bytes"] == path.stat().st_size
    plan, cmp = doc["plan"], doc["comparison"]
    assert plan["removed_channels"] == int(0.4 * plan["prunable_channels"]) == 25
    assert cmp["original"]["params"] == plan["params_before"] and cmp["pruned"]["params"] == plan["params_after"]
    assert cmp["params_ratio"] == pytest.approx(plan["params_after"] / plan["params_before"])
    assert cmp["original"]["input_shapes"] == [[1, 3, 16, 16]] and cmp["pruned"]["latency"] is None


def test_measure_a_saved_file(pruned_file: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    """measure FILE needs --trust-build for an import spec, then reports the pruned model's numbers."""
    path, doc = pruned_file
    assert main(["measure", str(path)]) == 2
    assert "--trust-build" in capsys.readouterr().err
    proc = slimprune("measure", str(path), "--trust-build", "--json")
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)
    assert measured["measurement"]["params"] == doc["plan"]["params_after"]
    assert measured["file"]["build"] == "tests.models:TinyResNet?width=8"
    assert measured["measurement"]["flops"] == doc["comparison"]["pruned"]["flops"]


def test_prune_outputs_flag_lets_the_returned_width_go(pruned_file: tuple[Path, dict], tmp_path: Path) -> None:
    """--prune-outputs is plan(prune_outputs=True): the logits' channels may go too, so more is removed."""
    _, kept = pruned_file
    proc = slimprune("prune", "tests.models:TinyResNet?width=8", "--ratio", "0.4", "--input-size", "3,16,16",
                     "--out", str(tmp_path / "free.safetensors"), "--prune-outputs", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["plan"]["options"]["prune_outputs"] is True and kept["plan"]["options"]["prune_outputs"] is False
    assert doc["plan"]["prunable_channels"] > kept["plan"]["prunable_channels"]


def test_inspect_a_spec_as_json() -> None:
    """inspect lists the five channel groups of TinyResNet with their members."""
    proc = slimprune("inspect", "tests.models:TinyResNet", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [g["channels"] for g in doc["groups"]] == [8, 8, 16, 16, 16]
    assert doc["prunable_channels"] == 64 and doc["barriers"] == [] and doc["file"] is None
    stream = doc["groups"][3]["members"]
    assert {"slice": "net.blocks.2.proj.1.weight[0]", "role": "scale"} in stream
    assert {"slice": "net.head.weight[1]", "role": "in"} in stream


def test_prune_torchvision_human_output(tmp_path: Path) -> None:
    """A torchvision model by name: the before/after table on stdout, nothing but progress elsewhere."""
    out = tmp_path / "r18.safetensors"
    proc = slimprune("prune", "torchvision:resnet18?num_classes=10", "--ratio", "0.5", "--target", "params",
                     "--input-size", "3,32,32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Original vs pruned" in proc.stdout and "params" in proc.stdout and str(out) in proc.stdout
    assert "Traceback" not in proc.stderr
    proc = slimprune("inspect", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "file: format 2" in proc.stdout and "build: torchvision:resnet18" in proc.stdout


def test_bad_model_spec_exits_2_with_one_line() -> None:
    """An unknown torchvision name: exit 2, one line that suggests the right name."""
    proc = slimprune("inspect", "torchvision:resnet1")
    assert proc.returncode == 2
    assert "did you mean resnet18" in one_error_line(proc)
    assert proc.stdout == ""


def test_failure_exits_1_and_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt file is exit 1 with one line; --debug adds the traceback."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    assert main(["measure", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimprune: error: ") and "not valid JSON" in lines[0]
    proc = slimprune("measure", str(bad), "--debug")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "FileFormatError" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("slimprune: error: ")


# Argument errors are decided before any model is built, so they run in-process.
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["prune", "torchvision:resnet18", "--ratio", "0.5"], "--out"),
        (["prune", "torchvision:resnet18", "--ratio", "0.5", "--threshold", "0.1", "--out", "x"], "not allowed with"),
        (["measure", "torchvision:resnet18", "--input-size", "3,x"], "comma-separated"),
        (["measure", "torchvision:resnet18", "--threads", "0"], "positive integer"),
        (["measure", "no_such_file.safetensors"], "neither an existing file nor a model spec"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors: exit code 2 and one line on stderr naming the problem."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimprune: error: ") and fragment in lines[0], captured.err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints usage on stdout and returns 0."""
    assert main(["prune", "--help"]) == 0
    assert "--threshold" in capsys.readouterr().out


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run main(argv) in-process; it must exit 2 with one error line and no stdout. Returns the line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("slimprune: error: "), captured.err
    return lines[0]


def test_prune_out_naming_a_directory_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _usage_error(["prune", "tests.models:TinyResNet", "--ratio", "0.3", "--out", str(tmp_path)], capsys)
    assert f"--out '{tmp_path}' is a directory" in line and "pruned.safetensors" in line
    assert list(tmp_path.iterdir()) == []


def test_model_spec_with_a_bad_constructor_argument_is_a_usage_error(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["prune", "tests.models:TinyResNet?width=-4", "--ratio", "0.3", "--out", str(tmp_path / "x")],
                 ["measure", "tests.models:TinyResNet?width=-4"], ["inspect", "tests.models:TinyResNet?width=-4"]):
        line = _usage_error(argv, capsys)
        assert "building model spec 'tests.models:TinyResNet?width=-4' failed: RuntimeError" in line
        assert "negative dimension" in line and "width=-4" in line


@pytest.mark.parametrize("command", ["measure", "prune", "inspect"])
def test_input_size_the_model_rejects_exits_2_in_every_command(command: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--ratio", "0.3", "--out", str(tmp_path / "x.safetensors")] if command == "prune" else []
    line = _usage_error([command, "tests.models:TinyResNet", "--input-size", "5,32,32", *extra], capsys)
    assert "5 channels" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_existing_directory_with_a_colon_is_a_path_not_a_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a:b").mkdir()
    monkeypatch.chdir(tmp_path)
    for command in ("inspect", "measure"):
        line = _usage_error([command, "a:b"], capsys)
        assert "MODEL 'a:b' is a directory, not a model file" in line and "cannot import" not in line


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_prune_threshold_nan_or_inf_exits_2_and_writes_nothing(value: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.safetensors"
    line = _usage_error(["prune", "tests.models:TinyResNet", "--threshold", value, "--out", str(out)], capsys)
    assert f"threshold must be a number >= 0, got {float(value)!r}" in line
    assert not out.exists()
