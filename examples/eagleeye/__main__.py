"""Command line for the EagleEye example: one function per subcommand.

    python -m examples.eagleeye train [--quick] [--data DIR] [--out DIR] [--epochs N] ... [--eval]
    python -m examples.eagleeye eval --checkpoint runs/eagleeye/last.pt [--submission DIR]
    python -m examples.eagleeye pipeline [--quick] [--out DIR] [--data DIR] [--target-params 0.563 | --threshold T]

Under torchrun, ``train`` runs DistributedDataParallel:
``torchrun --nproc-per-node 2 -m examples.eagleeye train --device cpu``.

A new subcommand adds a ``cmd_<name>(args) -> int`` function and registers it in
:func:`build_parser` with ``set_defaults(func=cmd_<name>)``; :func:`add_train_arguments`
and :func:`config_from_args` are there to be shared.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .evaluate import EvalResult

__all__ = [
    "main",
    "build_parser",
    "add_train_arguments",
    "config_from_args",
    "cmd_train",
    "cmd_eval",
    "cmd_pipeline",
    "ap_table",
]

console = Console()


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that build a :class:`~examples.eagleeye.train.TrainConfig`."""
    g = parser.add_argument_group("training")
    g.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, 128 px: a smoke run in seconds")
    g.add_argument("--data", help="WIDER FACE layout directory (default: SynthFaces under data/synthfaces)")
    g.add_argument(
        "--no-synthesize", action="store_true", help="fail if --data is missing instead of generating SynthFaces there"
    )
    g.add_argument("--out", help="directory for the checkpoint last.pt (default runs/eagleeye)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="images per step (per process under torchrun)")
    g.add_argument("--image-size", type=int, help="side of the square training crops")
    g.add_argument("--optimizer", choices=("sgd", "adamw"))
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--width-mult", type=float)
    g.add_argument("--activation", choices=("prelu", "relu", "leaky_relu"))
    g.add_argument("--box-loss", choices=("smooth_l1", "giou"))
    g.add_argument("--gamma-init", type=float, help="starting value of every BatchNorm γ")
    g.add_argument("--sparsity", type=float, metavar="λ", help="L1 penalty on BatchNorm γ (network slimming)")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", choices=("cpu", "cuda"))
    g.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    g.add_argument("--workers", type=int, help="DataLoader worker processes")
    g.add_argument("--threads", type=int, help="torch threads (default: cores left after the workers)")
    g.add_argument("--max-images", type=int, help="train on the first N images only")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if it exists")
    g.add_argument("--no-progress", action="store_true", help="no progress bars (epoch summaries only)")


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig the training options describe (defaults, or ``--quick``'s, then flags)."""
    from .train import TrainConfig

    base = TrainConfig.quick() if args.quick else TrainConfig()
    flags: dict[str, Any] = {
        "data_root": args.data,
        "out_dir": args.out,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_epochs": args.warmup_epochs,
        "width_mult": args.width_mult,
        "activation": args.activation,
        "gamma_init": args.gamma_init,
        "sparsity": args.sparsity,
        "seed": args.seed,
        "device": args.device,
        "num_workers": args.workers,
        "threads": args.threads,
        "max_images": args.max_images,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.no_synthesize:
        overrides["synthesize"] = None
    if args.no_amp:
        overrides["amp"] = False
    if args.resume:
        overrides["resume"] = True
    if args.no_progress:
        overrides["progress"] = False
    if args.box_loss is not None:
        overrides["loss"] = replace(base.loss, box_loss=args.box_loss)
    return replace(base, **overrides)


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
    from .train import CheckpointError, prepare_data, train

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


def cmd_eval(args: argparse.Namespace) -> int:
    """``eval``: evaluate a checkpoint on a split and optionally write a WIDER submission."""
    from .detect import evaluate_model
    from .evaluate import write_submission
    from .train import CheckpointError, load_model, prepare_data

    try:
        model, config = load_model(args.checkpoint, map_location=args.device)
    except CheckpointError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
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


def cmd_pipeline(args: argparse.Namespace) -> int:
    """``pipeline``: baseline, sparsity training, pruning, fine-tuning, evaluation and report."""
    from slimprune import SlimpruneError

    from .pipeline import PipelineConfig, run
    from .train import CheckpointError

    train_overrides: dict[str, Any] = {
        "data_root": args.data,
        "epochs": args.epochs,
        "image_size": args.img_size,
        "eval_size": args.eval_size,
        "device": args.device,
        "seed": args.seed,
        "threads": args.threads,
    }
    fields: dict[str, Any] = {"threshold": args.threshold, "latency_threads": args.latency_threads}
    if args.target_params is not None:
        fields["target_params"] = args.target_params
    if args.dead_threshold is not None:
        fields["dead_threshold"] = args.dead_threshold
    if args.target_flops is not None:
        fields["target_flops"] = args.target_flops or None
    if args.round_to is not None:
        fields["round_to"] = args.round_to
    if args.no_progress:
        fields["progress"] = False
    try:
        config = PipelineConfig.create(
            args.out,
            quick=args.quick,
            train_overrides={k: v for k, v in train_overrides.items() if v is not None},
            sparsity=args.sparsity,
            sparsity_cost=args.sparsity_cost,
            finetune_epochs=args.finetune_epochs,
            resume=args.resume,
            **fields,
        )
        run(config, console=console)
    except (CheckpointError, SlimpruneError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="python -m examples.eagleeye", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser("train", help="train EagleEye (optionally with BatchNorm sparsity)")
    add_train_arguments(p_train)
    p_train.add_argument("--eval", action="store_true", help="evaluate on the val split after training")
    p_train.set_defaults(func=cmd_train)

    p_eval = sub.add_parser("eval", help="evaluate a checkpoint with the WIDER FACE protocol")
    p_eval.add_argument("--checkpoint", required=True, help="a last.pt written by train")
    p_eval.add_argument("--data", help="WIDER FACE layout directory (default: the one the checkpoint trained on)")
    p_eval.add_argument("--split", default="val", choices=("train", "val"))
    p_eval.add_argument("--size", type=int, help="letterbox side (default: the training config's eval_size)")
    p_eval.add_argument("--batch-size", type=int, default=16)
    p_eval.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p_eval.add_argument("--threads", type=int, help="torch threads (default: half the cores)")
    p_eval.add_argument("--submission", metavar="DIR", help="also write WIDER FACE submission files here")
    p_eval.add_argument("--no-progress", action="store_true")
    p_eval.set_defaults(func=cmd_eval)

    p_pipe = sub.add_parser(
        "pipeline", help="network slimming end to end: baseline, sparse, pruned, fine-tuned, report"
    )
    p_pipe.add_argument("--out", default="runs/eagleeye", help="output directory (default runs/eagleeye)")
    p_pipe.add_argument("--quick", action="store_true", help="tiny data and few epochs: a smoke run of about a minute")
    p_pipe.add_argument("--data", help="WIDER FACE layout directory (default: SynthFaces under data/)")
    p_pipe.add_argument("--epochs", type=int, help="epochs of the baseline and of the sparse run")
    p_pipe.add_argument("--finetune-epochs", type=int, help="epochs of fine-tuning the pruned model")
    p_pipe.add_argument("--img-size", "--image-size", dest="img_size", type=int, help="side of the training crops")
    p_pipe.add_argument("--eval-size", type=int, help="letterbox side for evaluation and latency")
    how = p_pipe.add_mutually_exclusive_group()
    how.add_argument(
        "--target-params", type=float, metavar="FRACTION", help="least fraction of parameters to remove (default 0.563)"
    )
    how.add_argument("--threshold", type=float, metavar="T", help="remove exactly the channels whose |γ| are all <= T")
    p_pipe.add_argument(
        "--target-flops",
        type=float,
        metavar="FRACTION",
        help="also remove at least this fraction of the FLOPs, by |γ| per FLOP (default 0.78; 0: none)",
    )
    p_pipe.add_argument(
        "--dead-threshold",
        type=float,
        metavar="T",
        help="with --target-params, also remove every channel with |γ| <= T (default 1e-3; 0: stop at the target)",
    )
    p_pipe.add_argument(
        "--round-to",
        type=int,
        metavar="N",
        help="keep every pruned layer's width a multiple of N, the CPU's vector width in floats (default 8; 1: any)",
    )
    p_pipe.add_argument("--sparsity", type=float, metavar="λ", help="L1 weight of the sparse run")
    p_pipe.add_argument(
        "--sparsity-cost",
        choices=("uniform", "flops", "params"),
        help="share λ among channels uniformly or by the FLOPs/params each one costs",
    )
    p_pipe.add_argument("--device", choices=("cpu", "cuda"), help="training and evaluation device (latency: CPU)")
    p_pipe.add_argument("--seed", type=int)
    p_pipe.add_argument("--threads", type=int, help="torch threads for training")
    p_pipe.add_argument("--latency-threads", type=int, default=1, help="torch threads while timing (default 1)")
    p_pipe.add_argument("--resume", action="store_true", help="continue each training stage from its checkpoint")
    p_pipe.add_argument("--no-progress", action="store_true")
    p_pipe.set_defaults(func=cmd_pipeline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
