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
  plus ``"__metadata__": {"format": "pt", "slimprune.model": "<JSON text>",
  "slimprune.sha256": "<hex>"}``;
* the tensors' bytes, little-endian, row-major, back to back in header order.

The ``"slimprune.model"`` JSON holds ``format`` (``"slimprune.model"``), ``format_version``
(2), the ``slimprune`` and ``torch`` versions that wrote it, ``build`` (``null`` or
``{"factory": "torchvision:resnet18", "kwargs": {...}}``) and ``plan`` (the plan's
``to_dict()``). ``"slimprune.sha256"`` is the SHA-256 of everything that shapes the loaded
model: the length (8 bytes, little-endian) and UTF-8 bytes of the ``"slimprune.model"``
text exactly as stored, the length and bytes of the tensor table (the header without
``__metadata__``, dumped with sorted keys and no spaces), then the tensors' bytes.
Version 1 files (whose ``weights_sha256`` inside the header covered only the table and
the weights) are refused: save them again.

    >>> plan = slimprune.plan(model, 0.5)
    >>> small = slimprune.apply(model, plan)
    >>> slimprune.io.save(small, "small.safetensors", plan=plan, build="torchvision:resnet18")
    >>> again = slimprune.io.load("small.safetensors")
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import struct
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ._atomic import atomic_write
from ._parallel import unwrap_parallel
from ._plan import PLAN_VERSION, PruningPlan, SliceDecision
from ._version import __version__
from ._prune import _method_source, apply
from .errors import FileFormatError, InvalidArgumentError, PlanMismatchError, SlimpruneError

__all__ = ["FORMAT", "FORMAT_VERSION", "BuildSpec", "ModelFile", "build", "load", "read_header", "save"]

FORMAT = "slimprune.model"
FORMAT_VERSION = 2

_METADATA_KEY = "slimprune.model"
_CHECKSUM_KEY = "slimprune.sha256"
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


def _traced_constant(s: SliceDecision) -> bool:
    """A slice of a tensor fx made while tracing (``_tensor_constant0``) that the plan keeps whole."""
    return re.fullmatch(r"_tensor_constant\d+", s.param) is not None and len(s.kept) == s.size

def _check_pruned(model: nn.Module, plan: PruningPlan) -> None:
    """Every dimension the plan slices has the plan's kept size in ``model``."""
    for s in plan.slices:
        try:
            owner = model.get_submodule(s.module) if s.module else model
        except AttributeError:
            owner = None
        t = getattr(owner, s.param, None) if owner is not None else None
        if t is None and owner is not None and _traced_constant(s):
            continue  # a constant the tracer captured (Detect's anchors), not a parameter: nothing to save
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


def _checked_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state's tensors as the safetensors library writes them: on the CPU, contiguous, and
    each its own copy (the library refuses tensors sharing memory; tied weights are saved twice)."""
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"state_dict entry {key!r} is a {type(t).__name__}; only tensors can be saved")
        if t.dtype not in _DTYPES:
            raise InvalidArgumentError(
                f"state_dict entry {key!r} has dtype {t.dtype}, which the file format cannot hold "
                f"(supported: {', '.join(map(str, _DTYPES))})"
            )
    return {key: t.detach().to("cpu").contiguous().clone() for key, t in state.items()}


def _container(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> tuple[bytes, dict[str, Any], memoryview]:
    """The safetensors file the library writes, its tensor table and its data section."""
    blob = safetensors.torch.save(dict(tensors), metadata=None if metadata is None else dict(metadata))
    (n,) = struct.unpack("<Q", blob[:8])
    table = json.loads(blob[8 : 8 + n])
    table.pop("__metadata__", None)
    return blob, table, memoryview(blob)[8 + n :]


def _pieces(blob: bytes, size: int = 1 << 22) -> Iterator[memoryview]:
    """The file in pieces of ``size`` bytes, for the atomic write."""
    view = memoryview(blob)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def _canonical(table: Mapping[str, Any]) -> bytes:
    return json.dumps(table, sort_keys=True, separators=(",", ":")).encode()


def _digest(header: bytes, table: Mapping[str, Any]) -> Any:
    """The file's SHA-256 so far: the slimprune header's exact bytes and the canonical tensor table,
    each preceded by its length; the caller adds the tensors' bytes."""
    canonical = _canonical(table)
    digest = hashlib.sha256(struct.pack("<Q", len(header)))
    digest.update(header)
    digest.update(struct.pack("<Q", len(canonical)))
    digest.update(canonical)
    return digest


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
    model = unwrap_parallel(model)
    spec = None if build is None else BuildSpec.of(build)
    _check_pruned(model, plan)
    tensors = _checked_state(model.state_dict())
    # The library lays the tensors out; their table and bytes are known once it has, and the
    # checksum that covers them goes into the metadata of the file the library then writes.
    _, table, data = _container(tensors, None)

    header = json.dumps({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "slimprune": _version(),
        "torch": torch.__version__,
        "build": None if spec is None else spec.to_dict(),
        "plan": plan.to_dict(),
    })
    digest = _digest(header.encode("utf-8"), table)
    digest.update(data)
    metadata = {"format": "pt", _METADATA_KEY: header, _CHECKSUM_KEY: digest.hexdigest()}
    blob, final_table, final_data = _container(tensors, metadata)
    if final_table != table or final_data != data:  # the layout does not depend on the metadata
        raise SlimpruneError("the safetensors library laid the tensors out differently when given the "
                             "metadata; nothing was written. Report this with your safetensors version.")
    del data, final_data
    out = Path(path)
    atomic_write(out, _pieces(blob))
    return out


def _version() -> str:
    return __version__


# ------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ModelFile:
    """What a saved file says about itself (see :func:`read_header`).

    ``weights_sha256`` is the file's checksum; since format version 2 it covers the slimprune
    header (plan, build spec, format fields) as well as the tensor table and the weights.
    """

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


def _json(text: str | bytes) -> Any:
    """``json.loads`` whose every failure (bad syntax or UTF-8, too deep, a 5000-digit number) is a ValueError."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(str(exc) or type(exc).__name__) from None


def _check_version(path: Path, header: Mapping[str, Any]) -> int:
    """The header's ``format_version``: this version, or a refusal that says which one is readable."""
    version = header.get("format_version")
    writer = str(header.get("slimprune", "?"))[:40]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(
            path,
            f"format_version {version!r} is not a format version (a positive integer; this slimprune reads "
            f"version {FORMAT_VERSION}): the file is corrupted or was not written by slimprune.io.save",
        )
    if version > FORMAT_VERSION:
        raise _fail(
            path,
            f"written in format version {version} by slimprune {writer}; this slimprune ({_version()}) "
            f"reads version {FORMAT_VERSION}. Upgrade slimprune to load it.",
        )
    if version < FORMAT_VERSION:
        raise _fail(
            path,
            f"written in format version {version} by slimprune {writer}, whose checksum does not cover the "
            f"plan and the build spec, so a modified header cannot be told from a genuine one; this "
            f"slimprune ({_version()}) reads version {FORMAT_VERSION} only. Re-save it: load it with the "
            f"slimprune that wrote it, then save the pruned model and its plan with this one "
            f"(slimprune.io.save(model, path, plan=plan)).",
        )
    return version


def _parse(path: Path) -> tuple[ModelFile, dict[str, Any], bytearray]:
    """Read and check the whole file: structure, version, tensor table, checksum, then the header's content."""
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
        top = _json(raw[8 : 8 + n])
    except ValueError as exc:
        raise _fail(path, f"the header is not valid JSON ({exc}): corrupted, or not a slimprune model file") from None
    meta = top.pop("__metadata__", None) if isinstance(top, dict) else None
    if not isinstance(meta, dict) or _METADATA_KEY not in meta:
        raise _fail(path, "not a slimprune model file (no slimprune header; a plain safetensors file?)")
    text = meta[_METADATA_KEY]
    try:
        if not isinstance(text, str):
            raise ValueError(f"it is a {type(text).__name__}, not a JSON string")
        header = _json(text)
        header_bytes = text.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise _fail(path, f"the slimprune header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _fail(path, f"the slimprune header does not say format {FORMAT!r}")
    version = _check_version(path, header)
    data = bytearray(raw[8 + n :])
    del raw
    weight_bytes = _check_table(path, top, len(data))
    digest = _digest(header_bytes, top)
    digest.update(data)
    expected = meta.get(_CHECKSUM_KEY)
    if digest.hexdigest() != expected:
        raise _fail(
            path,
            "the file does not match its SHA-256 checksum: its weights, tensor table or slimprune header "
            "(plan, build spec) were modified or corrupted. Save the pruned model again with slimprune.io.save.",
        )
    try:
        plan, spec = _check_header(header)
    except FileFormatError as exc:
        raise _fail(
            path,
            f"{exc}. The checksum matches, so the file was written this way: by a broken or hostile "
            f"writer, not by slimprune.io.save; save the pruned model again with slimprune.io.save",
        ) from None
    info = ModelFile(
        path=path,
        format_version=version,
        slimprune_version=header["slimprune"],
        torch_version=header["torch"],
        build=spec,
        plan=plan,
        weights_sha256=digest.hexdigest(),
        tensors=len(top),
        weight_bytes=weight_bytes,
    )
    return info, top, data


# ------------------------------------------------------------------------ header checks
#
# A header that passes the checksum was still written by someone: everything in it that
# shapes the loaded model is checked against what slimprune.io.save writes, so a bad header
# is a FileFormatError here, never an IndexError (or worse, a wrong model) later.

_MAX_DEPTH = 16  # nesting of encoded edit values and of region plans
_MAX_INPUT_ELEMENTS = 1 << 28  # the inputs a re-trace draws (1 GiB of float32 per input)
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_EDIT_KINDS = ("set_arg", "split_sizes")
_EDIT_TAGS = ("__node__", "__slice__", "__tuple__", "__ellipsis__")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(where: str, allowed: str, value: Any) -> FileFormatError:
    return FileFormatError(f"{where} must be {allowed}, got {_short(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, where: str, low: int = 0) -> int:
    if not _is_int(value) or value < low:
        raise _bad(where, f"an integer >= {low}", value)
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, "a string", value)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(where, "a list", value)
    return value


def _dict(value: Any, where: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(where, "a JSON object", value)
    missing = [k for k in required if k not in value]
    if missing:
        raise FileFormatError(f"{where} lacks {', '.join(map(repr, missing))}")
    return value


def _strings(value: Any, where: str) -> None:
    for i, item in enumerate(_list(value, where)):
        _text(item, f"{where}[{i}]")


def _indices(value: Any, where: str, size: int) -> None:
    """Sorted, distinct positions in ``range(size)``."""
    items = _list(value, where)
    if not all(_is_int(i) for i in items) or any(b <= a for a, b in zip(items, items[1:])) or (
        items and (items[0] < 0 or items[-1] >= size)
    ):
        raise _bad(where, f"sorted, distinct indices in [0, {size})", value)


def _check_encoded(value: Any, where: str, depth: int = 0) -> None:
    """An fx argument as slimprune._edits.encode writes it."""
    if depth > _MAX_DEPTH:
        raise FileFormatError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(where, "a finite number", value)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_encoded(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _EDIT_TAGS:
        tag, inner = next(iter(value.items()))
        if tag == "__node__":
            _text(inner, f"{where}.__node__")
        elif tag == "__ellipsis__":
            if inner is not True:
                raise _bad(f"{where}.__ellipsis__", "true", inner)
        else:
            items = _list(inner, f"{where}.{tag}")
            if tag == "__slice__" and len(items) != 3:
                raise _bad(f"{where}.__slice__", "[start, stop, step]", inner)
            for i, item in enumerate(items):
                _check_encoded(item, f"{where}.{tag}[{i}]", depth + 1)
        return
    raise _bad(where, f"a number, string, null, list or one of the tagged values {', '.join(_EDIT_TAGS)}", value)


def _size_value(value: Any, where: str) -> None:
    """What an attribute edit writes: a size, or a shape tuple (a JSON list) of sizes."""
    if _is_int(value) and value >= 0:
        return
    if isinstance(value, list) and value and all(_is_int(v) and v >= 0 for v in value):
        return
    raise _bad(where, "a size (an integer >= 0) or a list of sizes", value)


def _check_edit(e: Any, where: str) -> None:
    """A graph edit as slimprune's rules write it (see slimprune._edits), optionally with "attr"."""
    e = _dict(e, where, ("node", "kind"))
    _text(e["node"], f"{where}.node")
    if e["kind"] == "set_arg":
        _dict(e, where, ("index", "value"))
        _int(e["index"], f"{where}.index")
        _check_encoded(e["value"], f"{where}.value")
    elif e["kind"] == "split_sizes":
        _dict(e, where, ("sizes", "dim"))
        sizes = _list(e["sizes"], f"{where}.sizes")
        if not sizes or not all(_is_int(v) and v >= 0 for v in sizes):
            raise _bad(f"{where}.sizes", "a non-empty list of sizes (integers >= 0)", sizes)
        if not _is_int(e["dim"]):
            raise _bad(f"{where}.dim", "an integer", e["dim"])
    else:
        raise _bad(f"{where}.kind", f"one of {', '.join(map(repr, _EDIT_KINDS))}", e["kind"])
    for key in ("old", "new"):
        if key in e:
            _check_encoded(e[key], f"{where}.{key}")
    if "attr" in e:
        # The engine names a module attribute only for a literal that equals it: a size or a
        # shape tuple the module's own methods read (slimprune._prune._attribute_of).
        attr = e["attr"]
        if not (isinstance(attr, list) and len(attr) == 2 and all(isinstance(a, str) for a in attr)
                and attr[1].isidentifier() and not attr[1].startswith("_")):
            raise _bad(f"{where}.attr", "[module path, public attribute name]", attr)
        _dict(e, where, ("old", "new"))
        _size_value(e["old"], f"{where}.old")
        _size_value(e["new"], f"{where}.new")
        if isinstance(e["old"], list) != isinstance(e["new"], list):
            raise _bad(f"{where}.new", f"of the same kind as old ({_short(e['old'])})", e["new"])


def _check_plan(d: Any, where: str = "plan", depth: int = 0) -> None:
    """The plan dict has the fields, types and index ranges PruningPlan.to_dict writes."""
    if depth > _MAX_DEPTH:
        raise FileFormatError(f"{where} nests regions more than {_MAX_DEPTH} levels deep")
    fields = ("format", "version", "model", "fingerprint", "input_shapes", "options", "groups", "slices",
              "folds", "edits", "opaque", "params_before", "params_after", "flops_before", "flops_after")
    d = _dict(d, where, fields)
    if d["format"] != "slimprune.plan":
        raise _bad(f"{where}.format", "'slimprune.plan'", d["format"])
    version = _int(d["version"], f"{where}.version", 1)
    if version > PLAN_VERSION:
        raise FileFormatError(
            f"{where}.version {version} is newer than this slimprune understands ({PLAN_VERSION}); "
            f"upgrade slimprune to read it"
        )
    _text(d["model"], f"{where}.model")
    if not isinstance(d["fingerprint"], str) or not _FINGERPRINT.fullmatch(d["fingerprint"]):
        raise _bad(f"{where}.fingerprint", "16 hexadecimal digits (slimprune._plan.fingerprint)", d["fingerprint"])
    for i, shape in enumerate(_list(d["input_shapes"], f"{where}.input_shapes")):
        w = f"{where}.input_shapes[{i}]"
        if not isinstance(shape, list) or not all(_is_int(v) and v >= 0 for v in shape):
            raise _bad(w, "a list of sizes (integers >= 0)", shape)
        if math.prod(shape) > _MAX_INPUT_ELEMENTS:
            raise _bad(w, f"an input shape of at most {_MAX_INPUT_ELEMENTS:,} elements", shape)
    if not isinstance(d["options"], dict):
        raise _bad(f"{where}.options", "a JSON object", d["options"])
    for i, g in enumerate(_list(d["groups"], f"{where}.groups")):
        w = f"{where}.groups[{i}]"
        g = _dict(g, w, ("id", "members", "size", "removed", "exact"))
        _int(g["id"], f"{w}.id")
        _strings(g["members"], f"{w}.members")
        _indices(g["removed"], f"{w}.removed", _int(g["size"], f"{w}.size"))
        for key in ("exact", "protected"):
            if not isinstance(g.get(key, False), bool):
                raise _bad(f"{w}.{key}", "true or false", g[key])
    seen: set[tuple[str, str, int]] = set()
    for i, s in enumerate(_list(d["slices"], f"{where}.slices")):
        w = f"{where}.slices[{i}]"
        s = _dict(s, w, ("module", "param", "dim", "role", "size", "kept"))
        key = (_text(s["module"], f"{w}.module"), _text(s["param"], f"{w}.param"), _int(s["dim"], f"{w}.dim"))
        if not key[1].isidentifier():
            raise _bad(f"{w}.param", "a parameter or buffer name", key[1])
        if key in seen:
            raise FileFormatError(f"{w} slices {key[0]}.{key[1]}[{key[2]}] a second time")
        seen.add(key)
        _text(s["role"], f"{w}.role")
        size = _int(s["size"], f"{w}.size", 1)
        _indices(s["kept"], f"{w}.kept", size)
        if not s["kept"]:
            raise _bad(f"{w}.kept", "at least one index (slimprune keeps min_channels >= 1)", s["kept"])
    for i, f in enumerate(_list(d["folds"], f"{where}.folds")):
        w = f"{where}.folds[{i}]"
        f = _dict(f, w, ("module", "node", "size", "index", "value"))
        _text(f["module"], f"{w}.module")
        _text(f["node"], f"{w}.node")
        _indices(f["index"], f"{w}.index", _int(f["size"], f"{w}.size", 1))
        values = _list(f["value"], f"{w}.value")
        if len(values) != len(f["index"]) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise _bad(f"{w}.value", f"finite numbers, one per index ({len(f['index'])})", values)
    for i, e in enumerate(_list(d["edits"], f"{where}.edits")):
        _check_edit(e, f"{where}.edits[{i}]")
    for key in ("opaque", "barriers", "notes"):
        if key in d or key == "opaque":
            _strings(d[key], f"{where}.{key}")
    for key in ("params_before", "params_after", "flops_before", "flops_after"):
        _int(d[key], f"{where}.{key}")
    for i, r in enumerate(_list(d.get("regions", []), f"{where}.regions")):
        w = f"{where}.regions[{i}]"
        r = _dict(r, w, ("path", "plan"))
        _text(r["path"], f"{w}.path")
        _check_plan(r["plan"], f"{w}.plan", depth + 1)


def _check_header(header: Mapping[str, Any]) -> tuple[PruningPlan, BuildSpec | None]:
    """The plan and build spec of a header whose checksum matched, each checked field by field."""
    for key in ("slimprune", "torch"):
        _text(header.get(key), f"the header's {key!r} version")
    _check_plan(header.get("plan"))
    plan = PruningPlan.from_dict(header["plan"])
    build_spec = header.get("build")
    if build_spec is None:
        return plan, None
    if not (isinstance(build_spec, dict) and set(build_spec) == {"factory", "kwargs"}
            and isinstance(build_spec["factory"], str) and isinstance(build_spec["kwargs"], dict)):
        raise _bad("the build spec", "null or {'factory': 'module:name', 'kwargs': {...}}", build_spec)
    try:
        return plan, BuildSpec(build_spec["factory"], build_spec["kwargs"])
    except InvalidArgumentError as exc:
        raise FileFormatError(f"the build spec is malformed: {exc}") from None


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

    Checks the structure, the format version, the SHA-256 (of the slimprune header, the tensor
    table and the weights) and every field of the plan and the build spec.

    Raises:
        FileFormatError: truncated, tampered with, malformed, not a slimprune model file,
            or written in another format version.
        FileNotFoundError: no file at ``path``.

    Example:
        >>> info = read_header("small.safetensors")
        >>> print(info.build, info.plan.params_after)
    """
    return _parse(Path(path))[0]


def _tensors(table: Mapping[str, Any], data: bytearray) -> dict[str, torch.Tensor]:
    """The tensors of a checked file, decoded by the safetensors library (the table is the file's
    own, so files of every layout written in this format version read alike)."""
    text = json.dumps(dict(table), separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return safetensors.torch.load(struct.pack("<Q", len(text)) + text + bytes(data))


# ------------------------------------------------------------------ rebuilding, checked

_DOWNLOADS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


def _plain(value: Any, depth: int = 0) -> bool:
    """None, a bool, an int, a finite float, a string, or a list of those: nothing that is or names code."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (list, tuple)) and depth < 4 and all(_plain(v, depth + 1) for v in value)


def _check_file_build(info: ModelFile, spec: BuildSpec) -> None:
    """A torchvision spec the file chose builds an architecture and nothing more: no downloads, plain values."""
    fix = (f"Pass build_fn= (a callable returning the original {info.plan.model}), or trust_build=True "
           f"(CLI: --trust-build) if you trust this file")
    for key, value in spec.kwargs.items():
        if not _plain(value):
            raise InvalidArgumentError(
                f"{info.path}: its build spec {str(spec)!r} passes {key}={_short(value)}; a build the file "
                f"chose takes only plain values (None, booleans, numbers, strings and lists of them). {fix}."
            )
        if key in _DOWNLOADS and value is not None and value is not False:
            raise InvalidArgumentError(
                f"{info.path}: its build spec {str(spec)!r} passes {key}={value!r}, which makes torchvision "
                f"download pretrained weights (the file's own weights replace them anyway); loading downloads "
                f"nothing a file names unless told to. {fix}."
            )
    builder = _torchvision_builder(spec.factory.partition(":")[2])
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        parameters = {}
    for key in _DOWNLOADS:
        param = parameters.get(key)
        if param is not None and key not in spec.kwargs and not any(param.default is v for v in (None, False, param.empty)):
            raise InvalidArgumentError(
                f"{info.path}: its build spec {str(spec)!r} leaves {key} at its default {param.default!s}, so "
                f"torchvision would download pretrained weights to build it; loading downloads nothing a file "
                f"names unless told to. Save with {key}=None in the spec, or: {fix}."
            )


def _key(module: str, name: str) -> str:
    return f"{module}.{name}" if module else name


def _submodule(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        raise PlanMismatchError(
            f"the plan {what} module {path!r}, which the rebuilt {type(model).__name__} does not have: the plan "
            f"was made for another architecture (pass the build_fn that built the original)"
        ) from None


def _check_fits(model: nn.Module, plan: PruningPlan, table: Mapping[str, Any] | None) -> None:
    """``plan`` fits ``model`` (the rebuilt original, possibly on the meta device), and the pruned shapes
    it gives are the tensor table's. Raises PlanMismatchError, before anything is modified."""
    plan.check_model(model)
    kept: dict[int, dict[int, int]] = {}  # id(tensor) -> {dim: kept size}
    for s in plan.slices:
        t = getattr(_submodule(model, s.module, "slices"), s.param, None)
        if not isinstance(t, torch.Tensor) or t.dim() <= s.dim or t.shape[s.dim] != s.size:
            got = "no such tensor" if not isinstance(t, torch.Tensor) else f"shape {tuple(t.shape)}"
            raise PlanMismatchError(
                f"the plan slices {s.name} of size {s.size}, but the rebuilt {type(model).__name__} has {got} "
                f"there: the plan does not fit this model (pass the build_fn that built the original)"
            )
        kept.setdefault(id(t), {})[s.dim] = len(s.kept)
    for path, sub in plan.regions:
        _check_fits(_submodule(model, path, "prunes the region"), sub, None)
    for text in plan.edits:
        e = json.loads(text)
        if "attr" not in e:
            continue
        path, name = e["attr"]
        owner = _submodule(model, path, "sets an attribute of")
        old = tuple(e["old"]) if isinstance(e["old"], list) else e["old"]
        current = vars(owner).get(name, inspect.Parameter.empty)
        if type(current) is not type(old) or current != old or f"self.{name}" not in _method_source(type(owner)):
            raise PlanMismatchError(
                f"the plan sets {_key(path, name)} = {_short(e['new'])}, but that is not a size the "
                f"{type(owner).__name__}'s own methods read with the value {_short(e['old'])} (the only "
                f"attributes slimprune rewrites): the plan was not made for this model"
            )
    if table is None:
        return
    state = model.state_dict(keep_vars=True)
    for key, t in state.items():
        shape = list(t.shape)
        for dim, size in kept.get(id(t), {}).items():
            shape[dim] = size
        entry = table.get(key)
        if entry is None or entry["shape"] != shape:
            got = "no such tensor" if entry is None else f"shape {entry['shape']}"
            extra = sorted(set(table) - set(state))
            others = f" (it has {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}, which the model lacks)" if extra else ""
            raise PlanMismatchError(
                f"applying the plan to the rebuilt {type(model).__name__} gives {key} the shape {shape}, but the "
                f"file has {got}{others}: the weights do not fit the model the plan rebuilds"
            )


def _build_on_meta(spec: BuildSpec) -> nn.Module | None:
    """The spec's model with every tensor on the meta device (no memory, no initialisation), or None
    for builders that compute on their weights while initialising (torchvision's RegNets)."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return build(spec)
    except InvalidArgumentError:
        raise
    except Exception:  # noqa: BLE001 - then the real build is checked instead
        return None


def load(
    path: str | os.PathLike[str],
    build_fn: Callable[[], nn.Module] | None = None,
    *,
    trust_build: bool = False,
) -> nn.Module:
    """Rebuild a pruned model from a file written by :func:`save`.

    Verifies the whole file first (structure, version, SHA-256 of header and weights, every
    field of the plan), then builds the original architecture, checks it against the plan
    (fingerprint, sliced sizes, attributes the plan rewrites, the pruned shapes against the
    tensor table), applies the plan and loads the weights strictly. Any failure raises before
    a model is returned; the global RNG state is left as it was (building the original draws
    random initial weights).

    A ``torchvision:NAME`` spec from the file is first built on the meta device (no memory,
    no weights) and checked there, so a file cannot make :func:`load` allocate a model its
    plan does not fit; builders that cannot run on the meta device (RegNets) are checked
    after the real build.

    Args:
        path: the file.
        build_fn: a callable returning the *original* (unpruned) model, freshly built.
            When None, the file's build spec is used: ``torchvision:NAME`` specs with plain
            keyword values (None, booleans, numbers, strings, lists of them) and without
            pretrained weights to download (``weights``, ``weights_backbone``, ``pretrained``);
            ``package.module:factory`` specs only with ``trust_build=True``, since those
            import and call what the file names.
        trust_build: do what the file's build spec says: import and call its
            ``package.module:factory``, or let torchvision download the pretrained weights
            it names (which the file's weights then replace).

    Returns:
        The pruned model in eval mode (a :class:`slimprune.Rewritten` when the plan rewrote literals in
        ``forward``), on the CPU.

    Raises:
        FileFormatError: truncated, tampered with, malformed, or from another format version.
        PlanMismatchError: the rebuilt model is not the architecture the plan was made for,
            or the plan or the weights do not fit it.
        InvalidArgumentError: no ``build_fn`` and no usable build spec, or a build spec that
            would download weights or run code the file chose, without ``trust_build``.

    Example:
        >>> small = load("small.safetensors")
        >>> small = load("small.safetensors", build_fn=lambda: MyNet(width=32))
    """
    info, table, data = _parse(Path(path))
    spec = info.build
    if build_fn is None:
        if spec is None:
            raise InvalidArgumentError(
                f"{info.path} stores no build spec; pass build_fn=, a callable returning the original "
                f"{info.plan.model} (or save with build='package.module:factory')"
            )
        if not spec.from_registry and not trust_build:
            raise InvalidArgumentError(
                f"{info.path} would be rebuilt by importing and calling {str(spec)!r}, a name the file "
                f"chose; loading runs no code a file names unless told to. Pass build_fn= (the factory), "
                f"or trust_build=True (CLI: --trust-build) if you trust this file."
            )
        if spec.from_registry and not trust_build:
            _check_file_build(info, spec)
    with torch.random.fork_rng(devices=[]):
        if build_fn is None and spec is not None and spec.from_registry:
            # Check the architecture before allocating it: a file cannot make us build a model of its
            # choosing that its plan and weights do not fit.
            shadow = _build_on_meta(spec)
            if shadow is not None:
                _check_fits(shadow, info.plan, table)
                del shadow
        original = build_fn() if build_fn is not None else build(spec)  # type: ignore[arg-type]
    if not isinstance(original, nn.Module):
        raise InvalidArgumentError(f"build_fn returned a {type(original).__name__}, not an nn.Module")
    _check_fits(original, info.plan, table)
    try:
        pruned = apply(original, info.plan, inplace=True)
    except SlimpruneError:
        raise
    except (IndexError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise PlanMismatchError(
            f"{info.path}: the plan does not fit the rebuilt {type(original).__name__} "
            f"({type(exc).__name__}: {exc}); pass the build_fn that built the original model"
        ) from exc
    try:
        pruned.load_state_dict(_tensors(table, data), strict=True)
    except RuntimeError as exc:
        raise PlanMismatchError(
            f"{info.path}: the weights do not fit the model the plan rebuilds ({str(exc).strip()}); "
            f"the factory's architecture changed in a way the plan's fingerprint cannot see"
        ) from None
    return pruned.eval()
