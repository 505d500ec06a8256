"""Tests for slimprune.io: bit-identical round trips, every bad-file case, atomic saves, build specs."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.fx as fx
from torch import nn

import slimprune
from slimprune import io
from slimprune.errors import FileFormatError, InvalidArgumentError, PlanMismatchError
from tests.helpers import outputs
from tests.models import SpecNet, TinyResNet, randomize_bn

torch.set_num_threads(1)

SPLIT_PROGRAM = [("cba", 8, 3, 1, 1, "relu"), ("split", 4, "split", "relu"), ("cba", 8, 3, 1, 1, "relu")]


def split_net() -> nn.Module:
    """A SpecNet whose torch.split sizes are literals, so apply() returns a GraphModule."""
    return SpecNet(SPLIT_PROGRAM, size=16)


def pruned_tiny(ratio: float = 0.4) -> tuple[nn.Module, slimprune.PruningPlan]:
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet())
    plan = slimprune.plan(model, ratio)
    return slimprune.apply(model, plan), plan


def run_eval(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return outputs(model(x))


def split_file(path: Path) -> tuple[dict[str, Any], bytes]:
    """The safetensors header (with the slimprune header decoded) and the data section."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    top = json.loads(raw[8 : 8 + n])
    top["__metadata__"]["slimprune.model"] = json.loads(top["__metadata__"]["slimprune.model"])
    return top, raw[8 + n :]


def join_file(path: Path, top: dict[str, Any], data: bytes) -> None:
    top = json.loads(json.dumps(top))
    top["__metadata__"]["slimprune.model"] = json.dumps(top["__metadata__"]["slimprune.model"])
    text = json.dumps(top).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_header(path: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    """Change the slimprune header in place (the weights and their hash stay valid)."""
    top, data = split_file(path)
    fn(top["__metadata__"]["slimprune.model"])
    join_file(path, top, data)


# ------------------------------------------------------------------------- round trips

CASES = {
    "tiny_resnet": (lambda: randomize_bn(TinyResNet()), "tests.models:TinyResNet?width=8", 0.4, (2, 3, 16, 16)),
    "mobilenet_v3_small": (
        lambda: randomize_bn(__import__("torchvision").models.mobilenet_v3_small(num_classes=10)),
        "torchvision:mobilenet_v3_small?num_classes=10",
        0.3,
        (1, 3, 64, 64),
    ),
    "split_graphmodule": (lambda: randomize_bn(split_net()), None, 0.5, (2, 3, 16, 16)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_bit_identical(name: str, tmp_path: Path) -> None:
    """load(save(apply(m, plan))) has the same state_dict and bit-identical outputs."""
    make, spec, ratio, shape = CASES[name]
    torch.manual_seed(0)
    model = make()
    plan = slimprune.plan(model, ratio)
    small = slimprune.apply(model, plan)
    path = io.save(small, tmp_path / "m.safetensors", plan=plan, build=spec)
    if spec is None:
        loaded = io.load(path, build_fn=split_net)
        assert isinstance(small, fx.GraphModule) and isinstance(loaded, fx.GraphModule)
    else:
        loaded = io.load(path, trust_build=True)
    assert not loaded.training
    before, after = small.state_dict(), loaded.state_dict()
    assert list(before) == list(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    for a, b in zip(run_eval(small, x), run_eval(loaded, x), strict=True):
        assert torch.equal(a, b)
    info = io.read_header(path)
    assert info.plan == plan and info.format_version == io.FORMAT_VERSION
    assert info.torch_version == torch.__version__ and info.tensors == len(before)
    assert (info.build is None) == (spec is None)


def test_file_is_plain_safetensors(tmp_path: Path) -> None:
    """The safetensors library reads the pruned state_dict and the slimprune header from the file."""
    st = pytest.importorskip("safetensors.torch")
    from safetensors import safe_open

    small, plan = pruned_tiny()
    path = io.save(small, tmp_path / "m.safetensors", plan=plan)
    tensors = st.load_file(str(path))
    state = small.state_dict()
    assert tensors.keys() == state.keys()
    for key, t in state.items():
        assert torch.equal(tensors[key], t), key
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["slimprune.model"])
    assert header["format"] == "slimprune.model" and header["plan"]["fingerprint"] == plan.fingerprint


def test_load_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    """Building the original draws random weights, but the caller's RNG stream is not advanced."""
    small, plan = pruned_tiny()
    path = io.save(small, tmp_path / "m.safetensors", plan=plan)
    state = torch.get_rng_state()
    io.load(path, build_fn=TinyResNet)
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------- bad files


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    small, plan = pruned_tiny()
    return io.save(small, tmp_path / "m.safetensors", plan=plan, build="tests.models:TinyResNet")


def test_truncated_files(saved: Path) -> None:
    """Cut in the weights, in the header, or to a few bytes: FileFormatError that says truncated."""
    raw = saved.read_bytes()
    for cut in (len(raw) - 10, 100, 5):
        saved.write_bytes(raw[:cut])
        with pytest.raises(FileFormatError, match="truncated"):
            io.load(saved, build_fn=TinyResNet)


def test_tampered_weights_fail_the_hash(saved: Path) -> None:
    """One flipped bit in the weights, or two tensor names swapped in the table: checksum error."""
    raw = bytearray(saved.read_bytes())
    raw[-3] ^= 0x01
    saved.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="SHA-256"):
        io.read_header(saved)
    raw[-3] ^= 0x01
    saved.write_bytes(bytes(raw))
    top, data = split_file(saved)
    a, b = "net.blocks.1.a.1.running_mean", "net.blocks.1.a.1.running_var"
    top[a], top[b] = top[b], top[a]
    join_file(saved, top, data)
    with pytest.raises(FileFormatError, match="SHA-256"):
        io.load(saved, build_fn=TinyResNet)


def test_future_format_version(saved: Path) -> None:
    """A file from a newer format version is refused with an upgrade hint."""
    edit_header(saved, lambda h: h.update(format_version=io.FORMAT_VERSION + 1, slimprune="9.0"))
    with pytest.raises(FileFormatError, match=r"format version 2 by slimprune 9\.0.*Upgrade"):
        io.load(saved, build_fn=TinyResNet)


def test_future_plan_version(saved: Path) -> None:
    """The embedded plan's own version is checked too."""
    edit_header(saved, lambda h: h["plan"].update(version=99))
    with pytest.raises(FileFormatError, match="newer"):
        io.load(saved, build_fn=TinyResNet)


def test_malformed_headers(saved: Path) -> None:
    """Bad JSON in either header, a plain safetensors file, a broken table entry: FileFormatError."""
    raw = saved.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    saved.write_bytes(raw[:8] + b"{" + b"x" * (n - 1) + raw[8 + n :])
    with pytest.raises(FileFormatError, match="not valid JSON"):
        io.load(saved, build_fn=TinyResNet)

    top, data = split_file_raw(raw)
    top["__metadata__"]["slimprune.model"] = "{not json"
    write_raw(saved, top, data)
    with pytest.raises(FileFormatError, match="slimprune header is not valid JSON"):
        io.load(saved, build_fn=TinyResNet)

    top, data = split_file_raw(raw)
    del top["__metadata__"]
    write_raw(saved, top, data)
    with pytest.raises(FileFormatError, match="not a slimprune model file"):
        io.load(saved, build_fn=TinyResNet)

    top, data = split_file_raw(raw)
    top["net.head.weight"]["dtype"] = "Q99"
    write_raw(saved, top, data)
    with pytest.raises(FileFormatError, match="net.head.weight"):
        io.load(saved, build_fn=TinyResNet)

    saved.write_bytes(b"PK\x03\x04 this is a zip, not ours")
    with pytest.raises(FileFormatError):
        io.read_header(saved)


def split_file_raw(raw: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw(path: Path, top: dict[str, Any], data: bytes) -> None:
    text = json.dumps(top).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_architecture_that_does_not_match_the_plan(saved: Path) -> None:
    """A build_fn (or stored spec) giving another architecture: PlanMismatchError, nothing returned."""
    with pytest.raises(PlanMismatchError, match="fingerprint"):
        io.load(saved, build_fn=lambda: TinyResNet(width=16))
    edit_header(saved, lambda h: h.update(build={"factory": "tests.models:TinyResNet", "kwargs": {"classes": 5}}))
    with pytest.raises(PlanMismatchError, match="fingerprint"):
        io.load(saved, trust_build=True)


def test_weights_that_do_not_fit_the_rebuilt_model(tmp_path: Path) -> None:
    """A file whose tensor table names a key the pruned model lacks fails the strict load."""
    small, plan = pruned_tiny()
    path = io.save(small, tmp_path / "m.safetensors", plan=plan)
    top, data = split_file(path)
    top["net.head.extra"] = top.pop("net.head.bias")
    top["__metadata__"]["slimprune.model"]["weights_sha256"] = rehash(top, data)
    join_file(path, top, data)
    with pytest.raises(PlanMismatchError, match="net.head.extra"):
        io.load(path, build_fn=TinyResNet)


def rehash(top: dict[str, Any], data: bytes) -> str:
    """The weights_sha256 the format defines: sorted compact tensor table, then the bytes."""
    import hashlib

    table = {k: v for k, v in top.items() if k != "__metadata__"}
    return hashlib.sha256(json.dumps(table, sort_keys=True, separators=(",", ":")).encode() + data).hexdigest()


def test_build_spec_permissions(saved: Path) -> None:
    """An import spec from a file needs trust_build or a build_fn; no spec needs a build_fn."""
    with pytest.raises(InvalidArgumentError, match="trust_build=True"):
        io.load(saved)
    assert isinstance(io.load(saved, trust_build=True), TinyResNet)
    edit_header(saved, lambda h: h.update(build=None))
    with pytest.raises(InvalidArgumentError, match="stores no build spec"):
        io.load(saved, trust_build=True)


# ------------------------------------------------------------------------------- saving


def test_saving_a_model_the_plan_did_not_produce(tmp_path: Path) -> None:
    """Saving the unpruned original with its plan is refused before anything is written."""
    model = randomize_bn(TinyResNet())
    plan = slimprune.plan(model, 0.4)
    with pytest.raises(PlanMismatchError, match="not the result of applying this plan"):
        io.save(model, tmp_path / "m.safetensors", plan=plan)
    assert not any(tmp_path.iterdir())


def test_failed_save_leaves_the_old_file(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error half-way through writing the weights leaves the previous file byte for byte, no temp files."""
    old = saved.read_bytes()
    small, plan = pruned_tiny(0.2)
    real = io._tensor_bytes
    calls = []

    def flaky(t: torch.Tensor) -> bytes:
        calls.append(1)
        if len(calls) > len(small.state_dict()) + 5:  # past the hashing pass, inside the write
            raise OSError("disk full")
        return real(t)

    monkeypatch.setattr(io, "_tensor_bytes", flaky)
    with pytest.raises(OSError, match="disk full"):
        io.save(small, saved, plan=plan)
    assert saved.read_bytes() == old
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    monkeypatch.setattr(io, "_tensor_bytes", real)
    io.save(small, saved, plan=plan)
    assert io.read_header(saved).plan == plan


# ---------------------------------------------------------------------------- build specs


def test_build_spec_parsing() -> None:
    """Specs parse kwargs as JSON or Python literals and print back the same way."""
    spec = io.BuildSpec.parse("torchvision:resnet18?num_classes=10&width=0.5&zero_init_residual=True&name=abc")
    assert spec.factory == "torchvision:resnet18" and spec.from_registry
    assert dict(spec.kwargs) == {"num_classes": 10, "width": 0.5, "zero_init_residual": True, "name": "abc"}
    assert io.BuildSpec.parse(str(spec)) == spec
    assert io.BuildSpec.of({"factory": "a.b:c", "kwargs": {"x": [1, 2]}}) == io.BuildSpec("a.b:c", {"x": [1, 2]})
    for bad in ("resnet18", "torchvision:", "a b:c", "tests.models:TinyResNet?width", "x:y?1=2"):
        with pytest.raises(InvalidArgumentError):
            io.BuildSpec.parse(bad)
    with pytest.raises(InvalidArgumentError, match="JSON"):
        io.BuildSpec("a:b", {"x": object()})


def test_build_errors_teach() -> None:
    """Unknown names and bad kwargs say what is wrong and what is there."""
    with pytest.raises(InvalidArgumentError, match="did you mean resnet18"):
        io.build("torchvision:resnet1")
    with pytest.raises(InvalidArgumentError, match="cannot import 'no_such_pkg"):
        io.build("no_such_pkg.mod:f")
    with pytest.raises(InvalidArgumentError, match="no attribute 'Nope'"):
        io.build("tests.models:Nope")
    with pytest.raises(InvalidArgumentError, match="unexpected keyword argument 'depth'"):
        io.build("tests.models:TinyResNet?depth=3")
    with pytest.raises(InvalidArgumentError, match="not an nn.Module"):
        io.build("tests.helpers:outputs?value=1")
    assert isinstance(io.build("tests.models:TinyResNet?width=4"), TinyResNet)
