"""The ``slimprune`` command: inspect, prune and measure models from the shell.

    slimprune inspect torchvision:resnet18
    slimprune prune torchvision:resnet18?num_classes=10 --ratio 0.5 --out small.safetensors
    slimprune measure small.safetensors --latency --json

MODEL is a spec (``torchvision:NAME[?key=value&...]`` or ``package.module:factory``) or a
file written by :func:`slimprune.io.save`. Every subcommand is a thin layer over the public
API (:func:`slimprune.analyze`, :func:`slimprune.plan`, :func:`slimprune.apply`,
:mod:`slimprune.measure`, :mod:`slimprune.io`). ``--json`` prints exactly one JSON document
on stdout; progress and errors go to stderr. Exit codes: 0 success, 2 usage error (bad
arguments, a model spec that names nothing), 1 any other failure; the error is one line on
stderr, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from rich.tree import Tree
from torch import nn

from . import io
from ._version import __version__
from ._prune import analyze, apply, plan
from .errors import ExampleInputError, InvalidArgumentError, SlimpruneError

__all__ = ["main"]

_EPILOG = "MODEL: torchvision:NAME[?key=value&...], package.module:factory[?...], or a file written by slimprune.io.save"
_MEMBERS_SHOWN = 12


class _UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports errors as exceptions, so main() prints one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _input_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if not size or any(v < 1 for v in size):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive sizes such as 3,224,224")
    return size


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _parser() -> _Parser:
    parser = _Parser(prog="slimprune", description="Structural channel pruning for PyTorch.", epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"slimprune {__version__}")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # The same options after the subcommand; SUPPRESS keeps a value given before it.
    shared = _Parser(add_help=False)
    shared.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout")
    shared.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    model_opts = _Parser(add_help=False)
    model_opts.add_argument("model", metavar="MODEL", help="a model spec or a saved file")
    model_opts.add_argument("--input-size", type=_input_size, metavar="C,H,W",
                            help="input shape without the batch axis (default: what tracing found, or the file's)")
    model_opts.add_argument("--trust-build", action="store_true",
                            help="let a saved file's package.module:factory spec be imported and called, "
                                 "and a torchvision build it names download the weights it asks for")

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("inspect", parents=[shared, model_opts], epilog=_EPILOG,
                       help="show channel groups, barriers and prunable channels")
    p.set_defaults(run=_inspect)

    p = sub.add_parser("prune", parents=[shared, model_opts], epilog=_EPILOG,
                       help="prune a model, show before/after numbers and save it")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, metavar="R", help="fraction of prunable channels (or of --target) to remove")
    how.add_argument("--threshold", type=float, metavar="T", help="remove channels whose |BN gamma| is at most T")
    p.add_argument("--target", choices=("channels", "params", "flops"), default="channels", help="what --ratio counts")
    p.add_argument("--protect", action="append", default=[], metavar="MODULE", help="never prune this module (repeatable)")
    p.add_argument("--min-channels", type=int, default=1, metavar="N", help="channels every group keeps")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="kept channel counts are multiples of N")
    p.add_argument("--prune-outputs", action="store_true",
                   help="also remove channels of the tensors the model returns (its outputs get narrower)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to save the pruned model")
    p.add_argument("--latency", action="store_true", help="also time both models (about 2 s)")
    p.add_argument("--threads", type=_positive, metavar="N", help="CPU threads while timing (default: torch's)")
    p.set_defaults(run=_prune)

    p = sub.add_parser("measure", parents=[shared, model_opts], epilog=_EPILOG,
                       help="parameters, FLOPs per layer and latency of a model or saved file")
    p.add_argument("--latency", action="store_true", help="also time the forward pass (about 1 s)")
    p.add_argument("--threads", type=_positive, metavar="N", help="CPU threads while timing (default: torch's)")
    p.add_argument("--layers", action="store_true", help="show the per-layer table")
    p.set_defaults(run=_measure)
    return parser


# ------------------------------------------------------------------------------ helpers


class _Out:
    """Where results (stdout) and progress (stderr) go."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.stdout = Console(highlight=False)
        self.stderr = Console(stderr=True, highlight=False)

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        with self.stderr.status(message):
            yield

    def emit(self, document: dict[str, Any], *renderables: Any) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(document, indent=2) + "\n")
        else:
            for r in renderables:
                self.stdout.print(r)


def _open(args: argparse.Namespace, out: _Out) -> tuple[nn.Module, io.ModelFile | None, io.BuildSpec | None]:
    """The model MODEL names: a loaded file, or a spec built."""
    path = Path(args.model)
    if path.is_file():
        with out.step(f"Loading {path}"):
            info = io.read_header(path)
            return io.load(path, trust_build=args.trust_build), info, None
    if path.exists():  # a path that exists is a path, even with a ':' in its name
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise _UsageError(
            f"MODEL {args.model!r} is {kind}, not a model file written by slimprune.io.save; "
            f"give the file itself (e.g. {str(path / 'model.safetensors')!r}) or a model spec such as torchvision:resnet50"
        )
    if ":" not in args.model:
        raise _UsageError(
            f"MODEL {args.model!r} is neither an existing file nor a model spec such as "
            f"torchvision:resnet50 or package.module:factory"
        )
    spec = io.BuildSpec.parse(args.model)
    with out.step(f"Building {spec}"):
        try:
            model = io.build(spec)
        except SlimpruneError:
            raise
        except Exception as exc:  # the factory refused the arguments the spec gave it
            message = f"building model spec {str(spec)!r} failed: {type(exc).__name__}: {_one_line(exc)}"
            if spec.kwargs:
                raise _UsageError(f"{message}; check the arguments after '?' "
                                  f"({', '.join(f'{k}={v!r}' for k, v in spec.kwargs.items())})") from exc
            raise RuntimeError(message) from exc
    return model.eval(), None, spec


def _check_input_size(args: argparse.Namespace, model: nn.Module, x: torch.Tensor | None) -> None:
    """A model that fails on the --input-size the user gave is a usage error (exit 2)."""
    if x is None or not args.input_size:
        return
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        size = ",".join(map(str, args.input_size))
        raise _UsageError(
            f"--input-size {size} does not fit MODEL {args.model!r}: it fails on an input of shape "
            f"{list(x.shape)} ({type(exc).__name__}: {_one_line(exc)[:200]}); pass the C,H,W the model takes"
        ) from exc


def _example(args: argparse.Namespace, shape: Sequence[int] | None) -> torch.Tensor | None:
    """One batch-1 input of --input-size, else of ``shape`` (batch axis replaced), else None."""
    size = args.input_size if args.input_size else (tuple(shape[1:]) if shape else None)
    if size is None:
        return None
    return torch.randn((1, *size), generator=torch.Generator().manual_seed(0))


def _shape_of(model: nn.Module, info: io.ModelFile | None, out: _Out) -> tuple[int, ...]:
    """The input shape to use when --input-size is absent: the file's, or what tracing found."""
    if info is not None and info.plan.input_shapes:
        return info.plan.input_shapes[0]
    with out.step("Tracing to find an input shape"):
        inputs = analyze(model, warn=False).graph.traced.example_inputs
    return tuple(inputs[0].shape)


def _file_doc(info: io.ModelFile | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "path": str(info.path),
        "format_version": info.format_version,
        "slimprune": info.slimprune_version,
        "torch": info.torch_version,
        "build": None if info.build is None else str(info.build),
        "weights_sha256": info.weights_sha256,
        "plan": _plan_doc(info.plan),
    }


def _plan_doc(p: Any) -> dict[str, Any]:
    return {
        "model": p.model,
        "removed_channels": p.removed_channels,
        "prunable_channels": p.prunable_channels,
        "params_before": p.params_before,
        "params_after": p.params_after,
        "flops_before": p.flops_before,
        "flops_after": p.flops_after,
        "options": dict(p.options),
        "notes": list(p.notes),
    }


def _pct(after: int, before: int) -> str:
    return f"{100 * (after / before - 1):+.1f}%" if before else "—"


# ---------------------------------------------------------------------------- commands


def _inspect(args: argparse.Namespace, out: _Out) -> int:
    model, info, _ = _open(args, out)
    x = _example(args, None)
    with out.step("Tracing and building the channel graph"):
        graph = analyze(model, x, warn=False).graph
    modules = dict(model.named_modules())
    groups = []
    for g in graph.groups:
        members = [graph.slices[i] for i in g.members]
        groups.append({
            "id": g.id,
            "channels": len(g),
            "exact": g.exact,
            "members": [{"slice": s.name, "role": s.role} for s in members],
        })
    prunable = sum(len(g) for g in graph.groups)
    doc = {
        "model": type(model).__name__,
        "source": args.model,
        "input_shape": list(graph.traced.example_inputs[0].shape) if graph.traced.example_inputs else None,
        "prunable_channels": prunable,
        "groups": groups,
        "barriers": [b.describe() for b in graph.barriers],
        "file": _file_doc(info),
    }

    tree = Tree(f"[bold]{type(model).__name__}[/] ({args.model}): {prunable:,} prunable channels in {len(groups)} groups, "
                f"{len(graph.barriers)} barriers")
    if info is not None:
        p = info.plan
        f = tree.add(f"file: format {info.format_version}, written by slimprune {info.slimprune_version} / torch {info.torch_version}")
        f.add(f"build: {info.build if info.build is not None else '— (load needs build_fn)'}")
        f.add(f"plan: {p.removed_channels:,} of {p.prunable_channels:,} channels removed; params "
              f"{p.params_before:,} → {p.params_after:,} ({_pct(p.params_after, p.params_before)})")
    branch = tree.add("channel groups")
    for g, entry in zip(graph.groups, groups):
        node = branch.add(f"group {g.id}: {len(g)} channels{'' if g.exact else ' (inexact: cross-channel norm)'}")
        by_module: dict[str, list[str]] = {}
        for s in (graph.slices[i] for i in g.members):
            by_module.setdefault(s.module, []).append(f"{s.role} {s.param}[{s.dim}]")
        for k, (name, roles) in enumerate(by_module.items()):
            if k == _MEMBERS_SHOWN:
                node.add(f"… and {len(by_module) - k} more modules")
                break
            kind = type(modules[name]).__name__ if name in modules else "?"
            node.add(f"{name or '(root)'} [dim]{kind}[/]: {', '.join(roles)}")
    if graph.barriers:
        bar = tree.add("barriers (channels kept)")
        for b in graph.barriers:
            bar.add(b.describe())
    out.emit(doc, tree)
    return 0


def _prune(args: argparse.Namespace, out: _Out) -> int:
    if Path(args.model).is_file():
        raise _UsageError(
            f"prune takes a model spec, not a saved file ({args.model}): prune the original model "
            f"again with a larger ratio instead"
        )
    out_path = Path(args.out)
    if out_path.is_dir():
        raise _UsageError(
            f"--out {args.out!r} is a directory; give a file path such as {str(out_path / 'pruned.safetensors')!r}"
        )
    model, _, spec = _open(args, out)
    x = _example(args, None)
    with out.step("Tracing and building the channel graph"):
        analysis = analyze(model, x, regions=True)
    with out.step("Planning"):
        p = plan(analysis, args.ratio, threshold=args.threshold, target=args.target, protect=args.protect,
                 min_channels=args.min_channels, round_to=args.round_to, prune_outputs=args.prune_outputs)
    with out.step("Applying the plan"):
        small = apply(model, p)
    x = x if x is not None else _example(args, p.input_shapes[0])
    from .measure import compare  # imported late: see main()
    with out.step("Measuring both models" + (" (latency takes a few seconds)" if args.latency else "")):
        result = compare(model, small, x, latency=args.latency, threads=args.threads)
    with out.step(f"Saving {args.out}"):
        path = io.save(small, args.out, plan=p, build=spec)
    doc = {"model": args.model, "out": str(path), "bytes": path.stat().st_size, "plan": _plan_doc(p),
           "comparison": result.to_dict()}
    summary = (f"removed {p.removed_channels:,} of {p.prunable_channels:,} prunable channels; "
               f"saved {path} ({path.stat().st_size:,} bytes)")
    notes = [f"[yellow]note:[/] {n}" for n in p.notes]
    out.emit(doc, result.table(), summary, *notes)
    return 0


def _measure(args: argparse.Namespace, out: _Out) -> int:
    model, info, _ = _open(args, out)
    x = _example(args, _shape_of(model, info, out) if not args.input_size else None)
    _check_input_size(args, model, x)
    from .measure import measure  # imported late: see main()
    with out.step("Measuring" + (" (latency takes a second)" if args.latency else "")):
        m = measure(model, x, latency=args.latency, threads=args.threads)
    doc = {"model": args.model, "file": _file_doc(info), "measurement": m.to_dict()}
    table = Table(title=f"{type(model).__name__}: {args.model}", caption=f"input {'×'.join(map(str, x.shape))}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("params", f"{m.params:,}")
    table.add_row("MACs", f"{m.macs:,}")
    table.add_row("FLOPs", f"{m.flops:,}")
    if m.latency is not None:
        lat = m.latency
        table.add_row("latency", f"{lat.median_ms:.3g} ms (IQR {lat.iqr_ms:.2g}, {lat.threads} threads, {lat.device})")
    shown: list[Any] = [m.table()] if args.layers else []
    shown.append(table)
    if info is not None:
        p = info.plan
        size = "×".join(map(str, p.input_shapes[0][1:])) if p.input_shapes else "?"
        shown.append(f"pruned from {p.model}: params {p.params_before:,} → {p.params_after:,} "
                     f"({_pct(p.params_after, p.params_before)}), FLOPs per sample at {size} "
                     f"{p.flops_before:,} → {p.flops_after:,} ({_pct(p.flops_after, p.flops_before)})")
    out.emit(doc, *shown)
    return 0


# --------------------------------------------------------------------------------- main


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``slimprune`` command with ``argv`` (``sys.argv[1:]`` when None); return the exit code."""
    # A CUDA build of torch on a machine without CUDA logs a warning when torch.utils.benchmark
    # is imported; it says nothing about pruning and would break the one-line error promise.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    parser = _parser()
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        return args.run(args, _Out(args.json))
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    except (_UsageError, InvalidArgumentError, ExampleInputError) as exc:
        error, code, message = exc, 2, _one_line(exc)
    except KeyboardInterrupt as exc:
        error, code, message = exc, 130, "interrupted"
    except Exception as exc:
        error, code = exc, 1
        message = _one_line(exc) if isinstance(exc, SlimpruneError) else f"{type(exc).__name__}: {_one_line(exc)}"
    if getattr(args, "debug", False):
        traceback.print_exception(error)
    elif code == 1:
        message += " (run with --debug for the traceback)"
    sys.stderr.write(f"slimprune: error: {message}\n")
    return code
