"""What the example shows on the console: progress bars, stage rules, the summary table."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from .report import MODELS, SUBSETS, human

__all__ = ["training_progress", "Stages", "bar", "summary_table"]


@contextmanager
def training_progress(enabled: bool, console: Console) -> Iterator[Progress | None]:
    """The training loop's progress bars (loss, images per second, time left); None when disabled."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:6.1f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield progress


class Stages:
    """Rule, timer and summary line around each stage of the run."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.index = 0
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        self.index += 1
        self.console.rule(f"[bold]stage {self.index}/{self.total}: {name}[/bold] - {what}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.console.print(f"[green]✓[/green] {name} done in {self.seconds[name]:.1f} s")


@contextmanager
def bar(enabled: bool, console: Console, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar; yields a function that advances it by one."""
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def summary_table(report: Mapping[str, Any]) -> Table:
    """The four models' size, speed and AP as a rich table (printed at the end of a run)."""
    table = Table(title=f"EagleEye pruning pipeline ({report['eval_size']} px, CPU latency at batch 1)")
    for column in ("model", "params", "FLOPs", "latency", "speed-up", "easy", "medium", "hard"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in MODELS:
        m = report["models"][name]
        table.add_row(
            m["label"],
            f"{m['params']:,}",
            human(m["flops"]),
            f"{m['latency_ms']:.2f} ms",
            f"{m['speedup']:.2f}x",
            *(f"{m['ap'][s]:.3f}" for s in SUBSETS),
        )
    return table
