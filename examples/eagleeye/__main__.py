"""Command line for the EagleEye example: one function per subcommand.

    python -m examples.eagleeye train [--quick] [--data DIR] [--out DIR] [--epochs N] ... [--eval]
    python -m examples.eagleeye eval --model runs/eagleeye/finetuned.safetensors [--submission DIR]
    python -m examples.eagleeye detect photos/ --model runs/eagleeye/finetuned.safetensors --out faces/ [--score 0.5]
    python -m examples.eagleeye export --onnx eagleeye.onnx --model runs/eagleeye/finetuned.safetensors
    python -m examples.eagleeye pipeline [--quick] [--out DIR] [--data DIR] [--target-params 0.563 | --threshold T]
    python -m examples.eagleeye summarize runs/a/seed-0 runs/b/seed-1 runs/c/seed-2 --out runs/three-seeds

Under torchrun, ``train`` runs DistributedDataParallel:
``torchrun --nproc-per-node 2 -m examples.eagleeye train --device cpu``.

A new subcommand adds a ``cmd_<name>(args) -> int`` function and registers it in
:func:`build_parser` with ``set_defaults(func=cmd_<name>)``; :func:`add_train_arguments`
and :func:`config_from_args` are there to be shared. The training and pipeline options are
built from the config dataclasses' fields (:mod:`examples.eagleeye.flags`): a new field
declared with ``flags.option(..., help=...)`` gets its flag without any change here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .config import PipelineConfig, TrainConfig
from .evaluate import EvalResult
from .flags import add_fields, given, replace_nested

__all__ = [
    "main",
    "build_parser",
    "add_train_arguments",
    "config_from_args",
    "add_pipeline_arguments",
    "pipeline_config_from_args",
    "cmd_train",
    "cmd_eval",
    "cmd_detect",
    "cmd_export",
    "cmd_pipeline",
    "ap_table",
]

console = Console()


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that build a :class:`~examples.eagleeye.config.TrainConfig`: one per field."""
    g = parser.add_argument_group("training")
    g.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, 128 px: a smoke run in seconds")
    add_fields(g, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the training options describe (defaults, or ``--quick``'s, then flags)."""
    base = TrainConfig.quick() if args.quick else TrainConfig()
    return replace_nested(base, given(args, TrainConfig))


# The pipeline's training options apply to all three runs, except these (PipelineConfig.create).
# The pipeline's --out (one folder per stage), --no-progress, and where each run starts (--sparse-init).
_PIPELINE_OWN = ("out_dir", "progress", "init")
_PIPELINE_HELP = {
    "epochs": "epochs of the baseline and of the sparse run",
    "sparsity": "L1 weight of the sparse run",
    "sparsity_cost": "share the sparse run's λ among channels uniformly or by the FLOPs/params each one costs",
    "distill": "weight of distillation from the baseline in the fine-tuning run (0: none; default 1 in the pipeline, 0 in train)",
    "resume": "continue each training stage from its checkpoint",
}


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that build a :class:`~examples.eagleeye.config.PipelineConfig`: one per field,
    and the training options (one per :class:`TrainConfig` field) shared by its three runs."""
    g = parser.add_argument_group("pipeline")
    g.add_argument("--quick", action="store_true", help="tiny data and few epochs: a smoke run of about a minute")
    g.add_argument("--finetune-epochs", type=int, help="epochs of fine-tuning the pruned model (default 16)")
    add_fields(g, PipelineConfig, skip=("baseline", "sparse", "finetune"))
    t = parser.add_argument_group(
        "training (all three runs; --epochs: baseline and sparse; --sparsity, --sparsity-cost: the sparse run; "
        "--distill: the fine-tuning run)"
    )
    add_fields(t, TrainConfig, skip=_PIPELINE_OWN, extra_flags={"image_size": ("--img-size",)}, help_overrides=_PIPELINE_HELP)


def pipeline_config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """The PipelineConfig the pipeline options describe (:meth:`PipelineConfig.create` with the flags given)."""
    fields = given(args, PipelineConfig)
    # --out and --no-progress are the pipeline's own (they share the dests of TrainConfig's);
    # nested fields (loss, anchors) change the default run's.
    default = TrainConfig()
    training = {
        k: replace_nested(getattr(default, k), v) if isinstance(v, Mapping) else v
        for k, v in given(args, TrainConfig).items()
        if k not in _PIPELINE_OWN
    }
    out_dir = fields.pop("out_dir", "runs/eagleeye")
    return PipelineConfig.create(
        out_dir,
        quick=args.quick,
        train_overrides=training,
        sparsity=training.pop("sparsity", None),
        sparsity_cost=training.pop("sparsity_cost", None),
        finetune_epochs=args.finetune_epochs,
        resume=training.pop("resume", False),
        **fields,
    )


def ap_table(result: EvalResult, title: str = "WIDER FACE AP") -> Table:
    """A rich table of AP per subset."""
    table = Table(title=title)
    table.add_column("subset")
    table.add_column("AP", justify="right")
    for subset, ap in result.ap.items():
        table.add_row(subset, f"{ap:.4f}")
    return table


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args: argparse.Namespace) -> int:
    """``train``: train EagleEye; with ``--eval``, evaluate it on the val split afterwards."""
    from .detect import evaluate_model
    from .checkpoints import CheckpointError
    from .data import prepare_data
    from .train import train

    config = config_from_args(args)
    try:
        model = train(config, console=console)
    except CheckpointError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    if _is_main_process():
        console.print(f"Checkpoint: {Path(config.out_dir) / 'last.pt'}")
        if args.eval:
            result, _ = evaluate_model(
                model, prepare_data(config), "val", config.eval_size, device=config.device, progress=config.progress
            )
            console.print(f"Evaluated on {config.data_root} (val) at {config.eval_size} px:")
            console.print(ap_table(result))
    return 0


def _load(args: argparse.Namespace) -> tuple[object, TrainConfig | None] | None:
    """The detector ``--model`` names (None after printing why it cannot be loaded)."""
    from slimprune import SlimpruneError

    from .checkpoints import CheckpointError
    from .model_files import load_detector

    try:
        return load_detector(args.model, architecture=args.architecture, map_location=getattr(args, "device", "cpu"))
    except (CheckpointError, SlimpruneError, ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {e}")
        return None


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval``: evaluate a detector (checkpoint or pruned model file) on a split; optionally write a WIDER submission."""
    from .detect import evaluate_model
    from .evaluate import write_submission
    from .data import prepare_data

    loaded = _load(args)
    if loaded is None:
        return 2
    model, config = loaded
    if config is None:  # a .safetensors file holds no training config: the defaults, or --data
        config = TrainConfig()
    if args.data is not None:
        config = replace(config, data_root=args.data, synthesize=None)
    root = prepare_data(config)
    size = args.size or config.eval_size
    result, predictions = evaluate_model(
        model.to(args.device),
        root,
        args.split,
        size,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    console.print(f"Evaluated on {root} ({args.split}) at {size} px:")
    console.print(ap_table(result))
    if args.submission:
        write_submission(predictions, Path(args.submission))
        console.print(f"Submission written to {args.submission}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """``detect``: faces in image files; a JSON of boxes and an annotated PNG per image."""
    import torch

    from .infer import run_detect

    loaded = _load(args)
    if loaded is None:
        return 2
    model, config = loaded
    size = args.size or (config or TrainConfig()).eval_size
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // 2))
    try:
        results = run_detect(model, args.images, args.out, score=args.score, size=size)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    faces = sum(len(b) for b in results.values())
    console.print(f"{faces} face(s) in {len(results)} image(s) at score >= {args.score}; JSON and PNG in {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``export``: the detector as ONNX with dynamic batch and image size."""
    from .export import export_onnx

    loaded = _load(args)
    if loaded is None:
        return 2
    model, config = loaded
    size = args.size or (config or TrainConfig()).eval_size
    try:
        path = export_onnx(model, args.onnx, sample_size=size, dynamo=args.dynamo)
    except Exception as e:  # the exporters raise many types; the message is what matters
        console.print(f"[red]error:[/red] ONNX export of {args.model} failed ({type(e).__name__}: {e})")
        return 2
    console.print(f"ONNX model written to {path} (input 'images' [N, 3, H, W] in [0, 1]; outputs cls_logits, box_deltas)")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """``pipeline``: baseline, sparsity training, pruning, fine-tuning, evaluation and report."""
    from slimprune import SlimpruneError

    from .checkpoints import CheckpointError
    from .pipeline import run

    try:
        config = pipeline_config_from_args(args)
        run(config, console=console)
    except (CheckpointError, SlimpruneError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    """``summarize``: the mean ± standard deviation report of single-seed runs made separately."""
    from .pipeline import summarize

    try:
        summarize(args.runs, args.out, console=console)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` (with ``--checkpoint`` as its old name) and ``--architecture``."""
    parser.add_argument(
        "--model", "--checkpoint", dest="model", required=True, metavar="PATH",
        help="a pruned model file (pruned.safetensors, finetuned.safetensors) or a training checkpoint (last.pt)",
    )
    parser.add_argument(
        "--architecture", metavar="PATH",
        help="for a checkpoint of a pruned model: the pruned .safetensors that gives its shape "
        "(default: the pipeline's, beside the checkpoint's folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m examples.eagleeye", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser("train", help="train EagleEye (optionally with BatchNorm sparsity)")
    add_train_arguments(p_train)
    p_train.add_argument("--eval", action="store_true", help="evaluate on the val split after training")
    p_train.set_defaults(func=cmd_train)

    p_eval = sub.add_parser("eval", help="evaluate a detector with the official WIDER FACE protocol")
    _add_model_arguments(p_eval)
    p_eval.add_argument("--data", help="WIDER FACE layout directory (default: the checkpoint's, or SynthFaces' default)")
    p_eval.add_argument("--split", default="val", choices=("train", "val"))
    p_eval.add_argument("--size", type=int, help="letterbox side (default: the training config's eval_size)")
    p_eval.add_argument("--batch-size", type=int, default=16)
    p_eval.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p_eval.add_argument("--threads", type=int, help="torch threads (default: half the cores)")
    p_eval.add_argument("--submission", metavar="DIR", help="also write WIDER FACE submission files here")
    p_eval.add_argument("--no-progress", action="store_true")
    p_eval.set_defaults(func=cmd_eval)

    p_detect = sub.add_parser("detect", help="detect faces in image files: JSON boxes and annotated PNGs")
    p_detect.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    _add_model_arguments(p_detect)
    p_detect.add_argument("--out", required=True, metavar="DIR", help="where <stem>.json and <stem>.png go")
    p_detect.add_argument("--score", type=float, default=0.5, help="keep faces scoring at least this (default 0.5)")
    p_detect.add_argument("--size", type=int, help="letterbox side (default: the training config's eval_size)")
    p_detect.add_argument("--threads", type=int, help="torch threads (default: half the cores)")
    p_detect.set_defaults(func=cmd_detect)

    p_export = sub.add_parser("export", help="export a detector as ONNX with dynamic image size")
    p_export.add_argument("--onnx", required=True, metavar="PATH", help="the .onnx file to write")
    _add_model_arguments(p_export)
    p_export.add_argument("--size", type=int, help="side of the sample input traced (default: eval_size)")
    p_export.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (slower)")
    p_export.set_defaults(func=cmd_export)

    p_pipe = sub.add_parser(
        "pipeline", help="network slimming end to end: baseline, sparse, pruned, fine-tuned, report"
    )
    add_pipeline_arguments(p_pipe)
    p_pipe.set_defaults(func=cmd_pipeline)

    p_sum = sub.add_parser(
        "summarize", help="mean ± std report of pipeline runs made separately, one seed each (as --seeds N writes)"
    )
    p_sum.add_argument("runs", nargs="+", metavar="RUN", help="folders of finished single-seed pipeline runs")
    p_sum.add_argument("--out", required=True, metavar="DIR", help="where report.json and report.md go")
    p_sum.set_defaults(func=cmd_summarize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
