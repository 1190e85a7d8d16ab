"""Console output: the only module (with ``report.py``) that talks to the terminal.

Status lines and tables go to stdout, errors to stderr; progress bars draw only on a terminal (and are replaced
by a few plain lines otherwise), so logs and pipes stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
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

from adapmtl_cli.engine import StepInfo

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def status(message: str) -> None:
    console.print(f"[dim]•[/dim] {message}")


def success(message: str) -> None:
    console.print(f"[green]✓[/green] {message}")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {message}")


def error(message: str) -> None:
    # markup off: messages quote user paths and values that may contain brackets
    err_console.print(f"Error: {message}", markup=False, highlight=False)


def show(renderable: Any) -> None:
    console.print(renderable)


def plain(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


class TrainingProgress:
    """Adapts the engine's ``on_step`` callback to a rich progress bar (or sparse log lines off a terminal)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.interactive = console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None
        self._eval_tasks: dict[str, Any] = {}
        self._last_line = -1

    def __enter__(self) -> TrainingProgress:
        if self.interactive and not self.quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_step(self, info: StepInfo) -> None:
        sp = f"{info.sparsity:.1%}" if info.sparsity is not None else "-"
        text = f"loss {info.loss:.4f}  sparsity {sp} (target {info.target:.1%})"
        if self._progress is not None:
            if self._task is None:
                self._task = self._progress.add_task("prune", total=info.total_steps, info="")
            self._progress.update(self._task, completed=info.step, info=text)
        elif not self.quiet:
            # Off a terminal: about ten plain lines per run, so logs stay readable.
            tenth = info.step * 10 // info.total_steps
            if tenth != self._last_line:
                self._last_line = tenth
                plain(f"step {info.step}/{info.total_steps}  {text}  {info.seconds:.0f}s")

    def on_eval(self, label: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if label not in self._eval_tasks:
            self._eval_tasks[label] = self._progress.add_task(f"eval {label}", total=total, info="")
        self._progress.update(self._eval_tasks[label], completed=done)


@contextmanager
def spinner(message: str, quiet: bool = False) -> Iterator[None]:
    if quiet or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield
