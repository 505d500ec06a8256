"""Pruned-model files: one file holds the plan, the recipe for the original model, and the weights.

A pruned model is saved as what it is: an original architecture, a :class:`PruningPlan`
and the pruned weights. :func:`load` rebuilds the original (``build_fn()`` or the stored
build spec), checks the plan's fingerprint against it, applies the plan and loads the
weights, so no Python object is ever pickled and loading runs no code from the file.

The file is a valid `safetensors <https://huggingface.co/docs/safetensors>`_ file, so any
safetensors reader sees the pruned ``state_dict``:

* 8 bytes: little-endian unsigned length ``N`` of the JSON header;
* ``N`` bytes: the JSON header (padded with spaces to a multiple of 8 bytes), mapping each
  state_dict key to ``{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}``,
  plus ``"__metadata__": {"format": "pt", "slimprune.model": "<JSON text>"}``;
* the tensors' bytes, little-endian, row-major, back to back in header order.

The ``"slimprune.model"`` JSON holds ``format`` (``"slimprune.model"``), ``format_version``,
the ``slimprune`` and ``torch`` versions that wrote it, ``build`` (``null`` or
``{"factory": "torchvision:resnet18", "kwargs": {...}}``), ``plan`` (the plan's
``to_dict()``) and ``weights_sha256``: the SHA-256 of the tensor table (the header without
``__metadata__``, dumped with sorted keys and no spaces) followed by the tensors' bytes.

    >>> plan = slimprune.plan(model, 0.5)
    >>> small = slimprune.apply(model, plan)
    >>> slimprune.io.save(small, "small.safetensors", plan=plan, build="torchvision:resnet18")
    >>> again = slimprune.io.load("small.safetensors")
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import secrets
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._plan import PruningPlan
from ._prune import apply
from .errors import FileFormatError, InvalidArgumentError, PlanMismatchError

__all__ = ["FORMAT", "FORMAT_VERSION", "BuildSpec", "ModelFile", "build", "load", "read_header", "save"]

FORMAT = "slimprune.model"
FORMAT_VERSION = 1

_METADATA_KEY = "slimprune.model"
_MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors readers enforce
_TORCHVISION = "torchvision"

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_BY_NAME = {v: k for k, v in _DTYPES.items()}

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


# --------------------------------------------------------------------------- build specs


def _literal(text: str) -> Any:
    """A kwarg value from a spec: JSON or a Python literal when it parses as one, else the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return text


@dataclass(frozen=True)
class BuildSpec:
    """How to build the original model: ``"torchvision:resnet18?num_classes=10"`` and the like.

    ``factory`` is ``"torchvision:NAME"`` (a model of torchvision's registry) or
    ``"package.module:callable"`` (imported, then called with ``kwargs``). ``kwargs`` hold
    JSON values only, so a spec survives the trip through a file unchanged.
    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or not _FACTORY.fullmatch(self.factory):
            raise InvalidArgumentError(
                f"build spec factory {self.factory!r} is not of the form 'torchvision:NAME' or "
                f"'package.module:callable'"
            )
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise InvalidArgumentError(f"build spec kwargs must be a mapping with string keys, got {self.kwargs!r}")
        try:
            json.dumps(dict(self.kwargs), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"build spec kwargs must be JSON values (numbers, strings, lists...): {exc}") from None

    @classmethod
    def parse(cls, text: str) -> BuildSpec:
        """Read ``"module:factory?key=value&key=value"``; values are JSON or Python literals, else strings.

        Example:
            >>> BuildSpec.parse("torchvision:resnet18?num_classes=10").kwargs
            {'num_classes': 10}
        """
        if not isinstance(text, str):
            raise InvalidArgumentError(f"a build spec is a string like 'torchvision:resnet18', got {text!r}")
        factory, _, query = text.strip().partition("?")
        if not _FACTORY.fullmatch(factory):
            raise InvalidArgumentError(
                f"{text!r} is not a model spec: write 'torchvision:NAME' (e.g. torchvision:resnet50), "
                f"'package.module:factory', optionally followed by ?key=value&key=value"
            )
        kwargs: dict[str, Any] = {}
        for item in filter(None, query.split("&")):
            key, eq, value = item.partition("=")
            if not eq or not key.isidentifier():
                raise InvalidArgumentError(f"{item!r} in model spec {text!r} is not key=value (e.g. num_classes=10)")
            kwargs[key] = _literal(value)
        return cls(factory, kwargs)

    @classmethod
    def of(cls, value: str | BuildSpec | Mapping[str, Any]) -> BuildSpec:
        """A spec from its text, a ``{"factory": ..., "kwargs": ...}`` mapping, or itself."""
        if isinstance(value, BuildSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping) and "factory" in value and set(value) <= {"factory", "kwargs"}:
            return cls(value["factory"], dict(value.get("kwargs") or {}))
        raise InvalidArgumentError(
            f"build must be a spec string ('torchvision:resnet18?num_classes=10'), a mapping "
            f"{{'factory': ..., 'kwargs': {{...}}}} or a BuildSpec, got {value!r}"
        )

    @property
    def from_registry(self) -> bool:
        """True for ``torchvision:NAME``: a registered model builder, not an arbitrary import."""
        return self.factory.partition(":")[0] == _TORCHVISION

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}

    def __str__(self) -> str:
        query = "&".join(f"{k}={json.dumps(v)}" for k, v in self.kwargs.items())
        return self.factory + (f"?{query}" if query else "")


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    try:
        import torchvision
    except ImportError:
        raise InvalidArgumentError(f"'torchvision:{name}' needs torchvision; install it with pip install torchvision") from None
    names = torchvision.models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; it has {len(names)} models, see torchvision.models.list_models()"
        raise InvalidArgumentError(f"torchvision has no model {name!r}{hint}")
    return torchvision.models.get_model_builder(name)


def _import_factory(factory: str) -> Callable[..., Any]:
    module_name, _, attr = factory.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgumentError(f"cannot import {module_name!r} for model spec {factory!r}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidArgumentError(f"{module_name!r} has no attribute {attr!r} (model spec {factory!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidArgumentError(f"{factory!r} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def build(spec: str | BuildSpec | Mapping[str, Any]) -> nn.Module:
    """Build a model from a spec: ``"torchvision:resnet18?num_classes=10"``, ``"pkg.mod:factory"``.

    This imports and calls what the spec names: use it for specs you wrote, not for specs
    read from a file you do not trust (:func:`load` asks before doing that).

    Raises:
        InvalidArgumentError: the spec is malformed, names nothing, its keyword arguments do
            not fit the factory, or the factory does not return an ``nn.Module``.

    Example:
        >>> model = build("torchvision:mobilenet_v3_small?num_classes=10")
    """
    spec = BuildSpec.of(spec)
    name = spec.factory.partition(":")[2]
    factory = _torchvision_builder(name) if spec.from_registry else _import_factory(spec.factory)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none
        signature = None
    if signature is not None:
        try:
            signature.bind(**spec.kwargs)
        except TypeError as exc:
            raise InvalidArgumentError(f"model spec {str(spec)!r}: {exc}; {spec.factory} takes {signature}") from None
    try:
        model = factory(**spec.kwargs)
    except TypeError as exc:  # typically a keyword the builder passes on and the model rejects
        raise InvalidArgumentError(f"building {str(spec)!r} failed: TypeError: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model spec {str(spec)!r} returned a {type(model).__name__}, not an nn.Module")
    return model


# ------------------------------------------------------------------------------- writing


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def _check_pruned(model: nn.Module, plan: PruningPlan) -> None:
    """Every dimension the plan slices has the plan's kept size in ``model``."""
    for s in plan.slices:
        try:
            owner = model.get_submodule(s.module) if s.module else model
        except AttributeError:
            owner = None
        t = getattr(owner, s.param, None) if owner is not None else None
        if not isinstance(t, torch.Tensor):
            raise PlanMismatchError(
                f"the model has no {s.module + '.' if s.module else ''}{s.param}, which the plan prunes; "
                f"save the model slimprune.apply(model, plan) returned, with that plan"
            )
        if t.dim() <= s.dim or t.shape[s.dim] != len(s.kept):
            size = t.shape[s.dim] if t.dim() > s.dim else None
            raise PlanMismatchError(
                f"{s.name} has size {size} but the plan keeps {len(s.kept)} of {s.size}: this model is "
                f"not the result of applying this plan. Save slimprune.apply(model, plan) with the same plan."
            )


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements as little-endian row-major bytes."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _table(state: Mapping[str, torch.Tensor]) -> tuple[list[str], dict[str, Any]]:
    """File order (widest dtype first, so every tensor starts aligned) and the tensor table."""
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"state_dict entry {key!r} is a {type(t).__name__}; only tensors can be saved")
        if t.dtype not in _DTYPES:
            raise InvalidArgumentError(
                f"state_dict entry {key!r} has dtype {t.dtype}, which the file format cannot hold "
                f"(supported: {', '.join(map(str, _DTYPES))})"
            )
    order = sorted(state, key=lambda k: (-state[k].element_size(), k))
    table: dict[str, Any] = {}
    offset = 0
    for key in order:
        t = state[key]
        end = offset + t.numel() * t.element_size()
        table[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, end]}
        offset = end
    return order, table


def _canonical(table: Mapping[str, Any]) -> bytes:
    return json.dumps(table, sort_keys=True, separators=(",", ":")).encode()


def _atomic_write(path: Path, chunks: Iterator[bytes]) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    plan: PruningPlan,
    build: str | BuildSpec | Mapping[str, Any] | None = None,
) -> Path:
    """Write a pruned model, its plan and (optionally) how to build the original, to one file.

    The write is atomic: the file appears complete or not at all, and a failed save leaves
    an existing file at ``path`` untouched.

    Args:
        model: the pruned model, as :func:`slimprune.apply` returned it (a DDP wrapper is
            looked through).
        path: where to write; parent folders are created. ``.safetensors`` is a good suffix.
        plan: the plan that pruned it.
        build: how :func:`load` rebuilds the *original* model when no ``build_fn`` is given:
            ``"torchvision:resnet18?num_classes=10"``, ``"package.module:factory"``, a
            ``{"factory": ..., "kwargs": {...}}`` mapping or a :class:`BuildSpec`.

    Returns:
        The path written.

    Raises:
        PlanMismatchError: ``model`` does not have the shapes ``plan`` produces.
        InvalidArgumentError: a bad ``plan`` or ``build``, or a state_dict entry the format
            cannot hold.

    Example:
        >>> save(slimprune.apply(model, plan), "small.safetensors", plan=plan, build="torchvision:resnet18")
    """
    if not isinstance(plan, PruningPlan):
        raise InvalidArgumentError(f"plan must be the PruningPlan that pruned the model, got {type(plan).__name__}")
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be an nn.Module, got {type(model).__name__}")
    model = _unwrap(model)
    spec = None if build is None else BuildSpec.of(build)
    _check_pruned(model, plan)
    state = model.state_dict()
    order, table = _table(state)

    digest = hashlib.sha256(_canonical(table))
    for key in order:
        digest.update(_tensor_bytes(state[key]))
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "slimprune": _version(),
        "torch": torch.__version__,
        "build": None if spec is None else spec.to_dict(),
        "plan": plan.to_dict(),
        "weights_sha256": digest.hexdigest(),
    }
    text = json.dumps({"__metadata__": {"format": "pt", _METADATA_KEY: json.dumps(header)}, **table}).encode()
    text += b" " * (-(8 + len(text)) % 8)

    def chunks() -> Iterator[bytes]:
        yield struct.pack("<Q", len(text))
        yield text
        for key in order:
            yield _tensor_bytes(state[key])

    out = Path(path)
    _atomic_write(out, chunks())
    return out


def _version() -> str:
    from . import __version__

    return __version__


# ------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ModelFile:
    """What a saved file says about itself (see :func:`read_header`)."""

    path: Path
    format_version: int
    slimprune_version: str
    torch_version: str
    build: BuildSpec | None
    plan: PruningPlan
    weights_sha256: str
    tensors: int
    weight_bytes: int


def _fail(path: Path, why: str) -> FileFormatError:
    return FileFormatError(f"{path}: {why}")


def _parse(path: Path) -> tuple[ModelFile, dict[str, Any], bytearray]:
    """Read and check the whole file: structure, version, tensor table and weights hash."""
    if sys.byteorder != "little":
        raise FileFormatError("slimprune model files are little-endian; this machine is big-endian")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such model file: {path}") from None
    if len(raw) < 8:
        raise _fail(path, f"only {len(raw)} bytes long: truncated, or not a slimprune model file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER:
        raise _fail(path, f"declares a {n}-byte header: not a slimprune model file, or corrupted")
    if 8 + n > len(raw):
        raise _fail(path, f"truncated: the header needs {n} bytes, {len(raw) - 8} follow")
    try:
        top = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"the header is not valid JSON ({exc}): corrupted, or not a slimprune model file") from None
    meta = top.pop("__metadata__", None) if isinstance(top, dict) else None
    if not isinstance(meta, dict) or _METADATA_KEY not in meta:
        raise _fail(path, "not a slimprune model file (no slimprune header; a plain safetensors file?)")
    try:
        header = json.loads(meta[_METADATA_KEY])
    except (TypeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"the slimprune header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, f"the slimprune header does not say format {FORMAT!r}")
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(path, f"format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise _fail(
            path,
            f"written in format version {version} by slimprune {header.get('slimprune', '?')}; this "
            f"slimprune ({_version()}) reads versions up to {FORMAT_VERSION}. Upgrade slimprune to load it.",
        )
    data = bytearray(raw[8 + n :])
    del raw
    weight_bytes = _check_table(path, top, len(data))
    digest = hashlib.sha256(_canonical(top))
    digest.update(data)
    expected = header.get("weights_sha256")
    if digest.hexdigest() != expected:
        raise _fail(path, "the weights do not match their SHA-256 checksum: the file is corrupted or was modified")
    try:
        plan = PruningPlan.from_dict(header.get("plan"))
    except FileFormatError as exc:
        raise _fail(path, str(exc)) from None
    build_spec = header.get("build")
    try:
        spec = None if build_spec is None else BuildSpec.of(build_spec)
    except InvalidArgumentError as exc:
        raise _fail(path, f"the stored build spec is malformed: {exc}") from None
    info = ModelFile(
        path=path,
        format_version=version,
        slimprune_version=str(header.get("slimprune", "?")),
        torch_version=str(header.get("torch", "?")),
        build=spec,
        plan=plan,
        weights_sha256=str(expected),
        tensors=len(top),
        weight_bytes=weight_bytes,
    )
    return info, top, data


def _check_table(path: Path, table: Mapping[str, Any], available: int) -> int:
    """Entries are well formed, back to back from 0, and the data holds exactly them."""
    spans = []
    for key, entry in table.items():
        ok = isinstance(entry, dict) and entry.get("dtype") in _BY_NAME
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        if not ok:
            raise _fail(path, f"tensor table entry {key!r} is malformed: {entry!r}")
        size = math.prod(shape) * _BY_NAME[entry["dtype"]].itemsize
        if offsets[1] - offsets[0] != size:
            raise _fail(path, f"tensor {key!r} spans {offsets[1] - offsets[0]} bytes but its shape needs {size}")
        spans.append((offsets[0], offsets[1], key))
    end = 0
    for begin, stop, key in sorted(spans):
        if begin != end:
            raise _fail(path, f"tensor {key!r} starts at byte {begin}, expected {end}: the tensor table is corrupted")
        end = stop
    if end > available:
        raise _fail(path, f"truncated: the weights need {end} bytes, only {available} are there")
    if end < available:
        raise _fail(path, f"{available - end} unexpected bytes after the weights: corrupted")
    return end


def read_header(path: str | os.PathLike[str]) -> ModelFile:
    """Read and verify a file written by :func:`save`, without building the model.

    Checks the structure, the format version and the weights' SHA-256.

    Raises:
        FileFormatError: truncated, tampered with, malformed, not a slimprune model file,
            or written in a newer format version.
        FileNotFoundError: no file at ``path``.

    Example:
        >>> info = read_header("small.safetensors")
        >>> print(info.build, info.plan.params_after)
    """
    return _parse(Path(path))[0]


def _tensors(table: Mapping[str, Any], data: bytearray) -> dict[str, torch.Tensor]:
    out = {}
    for key, entry in table.items():
        dtype = _BY_NAME[entry["dtype"]]
        shape = entry["shape"]
        begin, end = entry["data_offsets"]
        if end == begin:
            out[key] = torch.empty(shape, dtype=dtype)
        else:
            out[key] = torch.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin).reshape(shape)
    return out


def load(
    path: str | os.PathLike[str],
    build_fn: Callable[[], nn.Module] | None = None,
    *,
    trust_build: bool = False,
) -> nn.Module:
    """Rebuild a pruned model from a file written by :func:`save`.

    Verifies the whole file first (structure, version, SHA-256), then builds the original
    architecture, checks it against the plan's fingerprint, applies the plan and loads the
    weights strictly. Any failure raises before a model is returned; the global RNG state
    is left as it was (building the original draws random initial weights).

    Args:
        path: the file.
        build_fn: a callable returning the *original* (unpruned) model, freshly built.
            When None, the file's build spec is used: ``torchvision:NAME`` specs always,
            ``package.module:factory`` specs only with ``trust_build=True``, since those
            import and call what the file names.
        trust_build: allow the file's ``package.module:factory`` spec to be imported and called.

    Returns:
        The pruned model in eval mode (a ``GraphModule`` when the plan rewrote literals in
        ``forward``), on the CPU.

    Raises:
        FileFormatError: truncated, tampered with, malformed, or from a newer format.
        PlanMismatchError: the rebuilt model is not the architecture the plan was made for,
            or the weights do not fit it.
        InvalidArgumentError: no ``build_fn`` and no usable build spec.

    Example:
        >>> small = load("small.safetensors")
        >>> small = load("small.safetensors", build_fn=lambda: MyNet(width=32))
    """
    info, table, data = _parse(Path(path))
    if build_fn is None:
        if info.build is None:
            raise InvalidArgumentError(
                f"{info.path} stores no build spec; pass build_fn=, a callable returning the original "
                f"{info.plan.model} (or save with build='package.module:factory')"
            )
        if not info.build.from_registry and not trust_build:
            raise InvalidArgumentError(
                f"{info.path} would be rebuilt by importing and calling {str(info.build)!r}, a name the file "
                f"chose; loading runs no code a file names unless told to. Pass build_fn= (the factory), "
                f"or trust_build=True (CLI: --trust-build) if you trust this file."
            )
    with torch.random.fork_rng(devices=[]):
        original = build_fn() if build_fn is not None else build(info.build)
    if not isinstance(original, nn.Module):
        raise InvalidArgumentError(f"build_fn returned a {type(original).__name__}, not an nn.Module")
    info.plan.check_model(original)
    pruned = apply(original, info.plan, inplace=True)
    try:
        pruned.load_state_dict(_tensors(table, data), strict=True)
    except RuntimeError as exc:
        raise PlanMismatchError(
            f"{info.path}: the weights do not fit the model the plan rebuilds ({str(exc).strip()}); "
            f"the factory's architecture changed in a way the plan's fingerprint cannot see"
        ) from None
    return pruned.eval()
