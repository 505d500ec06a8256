"""Files in format version 2 load whatever tensor layout wrote them: the safetensors library's
(what io.save writes now) and the hand-written one io.save wrote before (widest dtype first,
then by name, Python's json.dumps spacing, space padding)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

from slimprune import io
from tests.test_io import pruned_tiny, run_eval, split_file


def _write_like_the_hand_written_writer(path: Path, state: dict[str, torch.Tensor], header_text: str) -> None:
    """What io.save wrote before it used the safetensors library, byte for byte in layout."""
    order = sorted(state, key=lambda k: (-state[k].element_size(), k))
    table, offset, chunks = {}, 0, []
    names = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64", torch.float16: "F16"}
    for key in order:
        t = state[key].detach().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        table[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        chunks.append(raw)
    data = b"".join(chunks)
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":")).encode()
    head = header_text.encode()
    digest = hashlib.sha256(struct.pack("<Q", len(head)) + head + struct.pack("<Q", len(canonical)) + canonical + data)
    meta = {"format": "pt", "slimprune.model": header_text, "slimprune.sha256": digest.hexdigest()}
    text = json.dumps({"__metadata__": meta, **table}).encode()
    text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_a_file_in_the_hand_written_layout_loads_to_the_same_model(tmp_path: Path) -> None:
    small, plan = pruned_tiny()
    new = io.save(small, tmp_path / "new.safetensors", plan=plan, build="tests.models:TinyResNet")
    top, _ = split_file(new)
    header_text = json.dumps(top["__metadata__"]["slimprune.model"])
    old = tmp_path / "old.safetensors"
    _write_like_the_hand_written_writer(old, small.state_dict(), header_text)
    assert old.read_bytes() != new.read_bytes()  # a different layout of the same content
    info = io.read_header(old)
    assert info.plan == plan and info.format_version == io.FORMAT_VERSION
    x = torch.randn(2, 3, 16, 16)
    for path in (old, new):
        again = io.load(path, trust_build=True)
        assert again.state_dict().keys() == small.state_dict().keys()
        for key, t in small.state_dict().items():
            assert torch.equal(again.state_dict()[key], t), (path.name, key)
        for a, b in zip(run_eval(again, x), run_eval(small, x)):
            assert torch.equal(a, b)


def test_tied_weights_save_as_two_copies(tmp_path: Path) -> None:
    """The safetensors library refuses tensors sharing memory; io.save writes each name's own copy."""
    w = torch.randn(4, 3)
    tensors = io._checked_state({"a": w, "b": w})
    assert torch.equal(tensors["a"], tensors["b"]) and tensors["a"].data_ptr() != tensors["b"].data_ptr()
