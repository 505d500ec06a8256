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
    """A SpecNet whose torch.split sizes are literals, so apply() rewrites its forward."""
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


def join_file(path: Path, top: dict[str, Any], data: bytes, *, resign: bool = False) -> None:
    """Write ``top`` (slimprune header decoded) and ``data`` back; ``resign``: recompute the checksum."""
    top = json.loads(json.dumps(top))
    top["__metadata__"]["slimprune.model"] = json.dumps(top["__metadata__"]["slimprune.model"])
    if resign:
        top["__metadata__"]["slimprune.sha256"] = rehash(top, data)
    text = json.dumps(top).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_header(path: Path, fn: Callable[[dict[str, Any]], None], *, resign: bool = True) -> None:
    """Change the slimprune header in place; ``resign`` (default) re-signs the checksum, so what is
    tested is the check of the header's content, not the checksum."""
    top, data = split_file(path)
    fn(top["__metadata__"]["slimprune.model"])
    join_file(path, top, data, resign=resign)


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
        assert isinstance(small, slimprune.Rewritten) and isinstance(loaded, slimprune.Rewritten)
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
    with pytest.raises(FileFormatError, match=rf"format version {io.FORMAT_VERSION + 1} by slimprune 9\.0.*Upgrade"):
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
    join_file(path, top, data, resign=True)
    with pytest.raises(PlanMismatchError, match="net.head.extra"):
        io.load(path, build_fn=TinyResNet)


def rehash(top: dict[str, Any], data: bytes) -> str:
    """The slimprune.sha256 the format defines: the length and bytes of the slimprune header text as
    stored, the length and bytes of the sorted compact tensor table, then the tensors' bytes."""
    import hashlib

    text = top["__metadata__"]["slimprune.model"].encode()
    table = json.dumps({k: v for k, v in top.items() if k != "__metadata__"}, sort_keys=True, separators=(",", ":")).encode()
    parts = (struct.pack("<Q", len(text)), text, struct.pack("<Q", len(table)), table, data)
    return hashlib.sha256(b"".join(parts)).hexdigest()


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
    real = io._pieces

    def flaky(blob: bytes, size: int = 1 << 22):
        pieces = real(blob, size=64)
        yield next(pieces)  # part of the new file is on disk, in the temporary file
        raise OSError("disk full")

    monkeypatch.setattr(io, "_pieces", flaky)
    with pytest.raises(OSError, match="disk full"):
        io.save(small, saved, plan=plan)
    assert saved.read_bytes() == old
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]
    monkeypatch.setattr(io, "_pieces", real)
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


# ------------------------------------------------------ what the header may say (issue 16)


class Widths(nn.Module):
    """forward reads its width from an attribute, so the plan's edit names it ("attr")."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)
        self.width = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)).view(-1, self.width))


@pytest.fixture()
def widths_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = randomize_bn(Widths())
    plan = slimprune.plan(model, 0.5, example_inputs=torch.randn(2, 3, 8, 8))
    assert any("attr" in json.loads(e) for e in plan.edits)
    return io.save(slimprune.apply(model, plan), tmp_path / "w.safetensors", plan=plan)


def test_attribute_edit_round_trip(widths_file: Path) -> None:
    """The attribute a genuine plan rewrites passes the checks and is rewritten on load."""
    loaded = io.load(widths_file, build_fn=Widths)
    assert loaded.width == 4 and not isinstance(loaded, slimprune.Rewritten)
    loaded(torch.randn(1, 3, 8, 8))


def never(*args: Any, **kwargs: Any) -> nn.Module:
    raise AssertionError("load() built a model from a file it should have refused")


def test_any_header_edit_fails_the_checksum(saved: Path) -> None:
    """Issue 16 item 5: the checksum covers the plan, the build spec and the format fields, not only
    the weights; an edited header is refused before anything is built."""
    edits: list[Callable[[dict[str, Any]], None]] = [
        lambda h: h["plan"]["slices"][0].update(kept=[0]),
        lambda h: h["plan"]["folds"].append({"module": "net.head", "node": "x", "size": 1, "index": [0], "value": [1.0]}),
        lambda h: h["plan"]["edits"].append({"node": "x", "kind": "set_arg", "index": 0, "value": 1}),
        lambda h: h["plan"].update(input_shapes=[[1, 3, 8, 8]]),
        lambda h: h.update(build={"factory": "tests.models:TinyResNet", "kwargs": {"width": 8}}),
        lambda h: h.update(torch="0.0"),
    ]
    original = saved.read_bytes()
    for edit in edits:
        saved.write_bytes(original)
        edit_header(saved, edit, resign=False)
        with pytest.raises(FileFormatError, match="SHA-256"):
            io.load(saved, build_fn=never)
        with pytest.raises(FileFormatError, match="SHA-256"):
            io.read_header(saved)


def test_attribute_edits_cannot_set_arbitrary_attributes(widths_file: Path) -> None:
    """Issue 16 item 5: a (re-signed) plan edit with "attr" may only rewrite the sizes the engine names:
    BatchNorm.eps = 1000 is refused, as a float, as an int, or by a made-up edit."""
    original = widths_file.read_bytes()

    def point_at_eps(old: Any) -> Callable[[dict[str, Any]], None]:
        def edit(h: dict[str, Any]) -> None:
            for e in h["plan"]["edits"]:
                if "attr" in e:
                    e.update(attr=["bn", "eps"], old=old, new=1000)
        return edit

    widths_file.write_bytes(original)
    edit_header(widths_file, point_at_eps(1e-5))
    with pytest.raises(FileFormatError, match=r"plan\.edits\[\d+\]\.old must be a size"):
        io.load(widths_file, build_fn=Widths)
    widths_file.write_bytes(original)
    edit_header(widths_file, point_at_eps(1))
    with pytest.raises(PlanMismatchError, match=r"sets bn\.eps = 1000"):
        io.load(widths_file, build_fn=Widths)
    widths_file.write_bytes(original)
    edit_header(widths_file, lambda h: h["plan"]["edits"].append(
        {"node": "x", "kind": "set_arg", "index": 0, "value": 0, "attr": ["bn", "momentum"], "old": 0, "new": 1000}))
    with pytest.raises(PlanMismatchError, match=r"sets bn\.momentum"):
        io.load(widths_file, build_fn=Widths)


def _slice0(h: dict[str, Any]) -> dict[str, Any]:
    return h["plan"]["slices"][0]


MALFORMED: dict[str, tuple[Callable[[dict[str, Any]], None], type[Exception], str]] = {
    "format_version -5": (lambda h: h.update(format_version=-5), FileFormatError, r"format_version -5 .*reads version 2"),
    "format_version 1": (lambda h: h.update(format_version=1), FileFormatError, r"format version 1 .*Re-save"),
    "kept index 99": (lambda h: _slice0(h).update(kept=[0, 99]), FileFormatError, r"slices\[0\]\.kept must be sorted, distinct indices in \[0, \d+\)"),
    "kept unsorted": (lambda h: _slice0(h).update(kept=[1, 0]), FileFormatError, r"slices\[0\]\.kept"),
    "kept duplicate": (lambda h: _slice0(h).update(kept=[0, 0]), FileFormatError, r"slices\[0\]\.kept"),
    "kept nothing": (lambda h: _slice0(h).update(kept=[]), FileFormatError, r"slices\[0\]\.kept must be at least one"),
    "kept a string": (lambda h: _slice0(h).update(kept="01"), FileFormatError, r"slices\[0\]\.kept must be a list"),
    "negative dim": (lambda h: _slice0(h).update(dim=-1), FileFormatError, r"slices\[0\]\.dim must be an integer >= 0"),
    "fingerprint a number": (lambda h: h["plan"].update(fingerprint=5), FileFormatError, r"plan\.fingerprint must be 16 hex"),
    "plan version -5": (lambda h: h["plan"].update(version=-5), FileFormatError, r"plan\.version must be an integer >= 1"),
    "negative input shape": (lambda h: h["plan"].update(input_shapes=[[-1, 3]]), FileFormatError, r"input_shapes\[0\]"),
    "huge input shape": (lambda h: h["plan"].update(input_shapes=[[1 << 20, 1 << 20]]), FileFormatError, r"at most"),
    "options a list": (lambda h: h["plan"].update(options=[]), FileFormatError, r"plan\.options must be a JSON object"),
    "group index": (lambda h: h["plan"]["groups"][0].update(removed=[10**6]), FileFormatError, r"groups\[0\]\.removed"),
    "fold index": (lambda h: h["plan"]["folds"].append(
        {"module": "net.head", "node": "x", "size": 4, "index": [7], "value": [1.0]}), FileFormatError, r"folds\[\d+\]\.index must be sorted"),
    "fold NaN": (lambda h: h["plan"]["folds"].append(
        {"module": "net.head", "node": "x", "size": 4, "index": [1], "value": [float("nan")]}), FileFormatError, r"folds\[\d+\]\.value must be finite numbers"),
    "edit kind": (lambda h: h["plan"]["edits"].append({"node": "x", "kind": "exec", "code": "1"}), FileFormatError, r"edits\[0\]\.kind must be one of"),
    "edit value tag": (lambda h: h["plan"]["edits"].append(
        {"node": "x", "kind": "set_arg", "index": 0, "value": {"__bogus__": 1}}), FileFormatError, r"edits\[0\]\.value"),
    "edit index past the args": (lambda h: h["plan"]["edits"].append(
        {"node": "x", "kind": "set_arg", "index": 5, "value": 1}), PlanMismatchError, r"does not fit"),
    "edit node reference": (lambda h: h["plan"]["edits"].append(
        {"node": "x", "kind": "set_arg", "index": 0, "value": {"__node__": "nope"}}), PlanMismatchError, r"does not fit"),
    "build kwargs a list": (lambda h: h.update(build={"factory": "tests.models:TinyResNet", "kwargs": [1, 2]}), FileFormatError, r"build spec"),
    "build a string": (lambda h: h.update(build="torchvision:resnet18"), FileFormatError, r"build spec"),
    "torch version a number": (lambda h: h.update(torch=5), FileFormatError, r"'torch' version must be a string"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_header_fields_are_named_errors(saved: Path, case: str) -> None:
    """Issue 16 items 5 and 13: each field of a (re-signed) header is checked: a named FileFormatError,
    or PlanMismatchError where the plan does not fit the rebuilt model; never IndexError/KeyError/
    ValueError/TypeError, never a wrong model."""
    edit, error, match = MALFORMED[case]
    edit_header(saved, edit)
    with pytest.raises(error, match=match):
        io.load(saved, build_fn=TinyResNet)


def test_deeply_nested_header_is_a_format_error(saved: Path) -> None:
    """JSON nested past the parser's recursion limit is malformed JSON, not a RecursionError."""
    edit_header(saved, lambda h: h["plan"].update(options={"x": "@"}))
    raw = saved.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    deep = "[" * 100_000 + "]" * 100_000
    top = json.loads(raw[8 : 8 + n])
    top["__metadata__"]["slimprune.model"] = top["__metadata__"]["slimprune.model"].replace('"@"', deep)
    write_raw(saved, top, raw[8 + n :])
    with pytest.raises(FileFormatError, match="not valid JSON"):
        io.load(saved, build_fn=never)


# --------------------------------------------------------- builds the file chooses (issue 16)


@pytest.fixture()
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way torchvision and torch.hub fetch weights raises, so a download attempt fails the test."""
    import urllib.request

    import torch.hub
    import torchvision.models._api

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"load() tried to download: {args[:1]}")

    for owner, name in ((torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                        (torchvision.models._api, "load_state_dict_from_url"), (urllib.request, "urlopen")):
        monkeypatch.setattr(owner, name, refuse)


DOWNLOADING = {
    "weights": {"weights": "IMAGENET1K_V1"},
    "weights DEFAULT": {"weights": "DEFAULT"},
    "pretrained": {"pretrained": True},
}


@pytest.mark.parametrize("case", list(DOWNLOADING))
def test_file_chosen_torchvision_build_downloads_nothing(saved: Path, no_downloads: None, case: str) -> None:
    """Issue 16 item 14: a file naming torchvision:resnet18 with pretrained weights is refused before
    any download (and before building anything)."""
    edit_header(saved, lambda h: h.update(build={"factory": "torchvision:resnet18", "kwargs": DOWNLOADING[case]}))
    with pytest.raises(InvalidArgumentError, match="download pretrained weights.*build_fn=.*trust_build=True"):
        io.load(saved)


def test_file_chosen_build_with_a_downloading_default_or_odd_values(saved: Path, no_downloads: None) -> None:
    """A builder whose default downloads a backbone (fcn_resnet50), or kwargs that are not plain
    values, are refused too."""
    edit_header(saved, lambda h: h.update(build={"factory": "torchvision:fcn_resnet50", "kwargs": {}}))
    with pytest.raises(InvalidArgumentError, match="leaves weights_backbone at its default"):
        io.load(saved)
    edit_header(saved, lambda h: h.update(build={"factory": "torchvision:resnet18", "kwargs": {"norm_layer": {"x": 1}}}))
    with pytest.raises(InvalidArgumentError, match="only plain values"):
        io.load(saved)


def test_file_chosen_build_is_checked_on_the_meta_device_first(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 item 14: a file naming a model its plan does not fit (here a 51M-parameter ResNet-18)
    is refused after building it on the meta device only, before any weights are allocated."""
    devices = []
    real = io.build

    def spy(spec: Any) -> nn.Module:
        devices.append(torch.empty(0).device.type)
        return real(spec)

    monkeypatch.setattr(io, "build", spy)
    edit_header(saved, lambda h: h.update(build={"factory": "torchvision:resnet18", "kwargs": {"num_classes": 100_000}}))
    with pytest.raises(PlanMismatchError, match="fingerprint"):
        io.load(saved)
    assert devices == ["meta"]


def test_torchvision_file_loads_offline(tmp_path: Path, no_downloads: None) -> None:
    """A genuine torchvision file (weights=None spelled out) still loads without build_fn or trust,
    after the meta-device check, to bit-identical weights."""
    torch.manual_seed(0)
    model = randomize_bn(__import__("torchvision").models.resnet18(num_classes=10))
    plan = slimprune.plan(model, 0.3, example_inputs=torch.randn(1, 3, 32, 32))
    small = slimprune.apply(model, plan)
    path = io.save(small, tmp_path / "r.safetensors", plan=plan, build="torchvision:resnet18?num_classes=10&weights=None")
    loaded = io.load(path)
    for key, t in small.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[key]), key
