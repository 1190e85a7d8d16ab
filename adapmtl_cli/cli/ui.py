"""Console output: the only module that talks to the terminal (``report/terminal.py`` builds what it shows).

Status lines and tables go to stdout, errors to stderr; progress bars draw only on a terminal (and are replaced
by a few plain lines otherwise), so logs and pipes stay clean. While a command runs, stdout belongs to us alone:
whatever user code prints (a model's ``forward``, a factory, a dataset plug-in) goes to stderr
(:func:`own_stdout`), so ``--json``, ``--log-format jsonl`` and ``--format csv`` stay machine-readable.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from adapmtl_cli.config import RunReport
from adapmtl_cli.train.events import StepInfo  # the event record only: no torch, no training loop

PHASE_LABELS = {"scenes": "generating scenes", "dense": "dense training", "export": "export"}

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


_stdout: list[TextIO] = []
"""The real stdout while :func:`own_stdout` holds it (``sys.stdout`` is then stderr for everyone else)."""


def _real_stdout() -> TextIO:
    """Where our machine-readable output goes: the stdout :func:`own_stdout` holds, else ``sys.stdout``."""
    return _stdout[-1] if _stdout else sys.stdout


@contextmanager
def own_stdout() -> Iterator[None]:
    """Keep stdout for this module's output; anything else printed meanwhile goes to stderr.

    User code runs inside our commands (factories, ``forward``, dataset plug-ins) and may ``print``; on stdout
    that would corrupt a JSON document or a JSON-lines stream. Nested use keeps the outermost stdout.
    """
    real = _real_stdout()
    _stdout.append(real)
    console.file = real
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _stdout.pop()
        console.file = _stdout[-1] if _stdout else None  # type: ignore[assignment]  # None: follow sys.stdout


def status(message: str) -> None:
    console.print(f"[dim]•[/dim] {escape(message)}")


def success(message: str, *, stderr: bool = False) -> None:
    """A ✓ line; ``stderr=True`` keeps stdout clean when it carries JSON or CSV."""
    (err_console if stderr else console).print(f"[green]✓[/green] {escape(message)}")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def error(message: str) -> None:
    # markup off: messages quote user paths and values that may contain brackets
    err_console.print(f"Error: {message}", markup=False, highlight=False)


def show(renderable: Any) -> None:
    """Print a table or a report: on a terminal as rich draws it, elsewhere complete and plain.

    Off a terminal (a pipe, a file, a CI log) rich would cut tables at 80 columns; the renderable is drawn at its
    own natural width instead, with no colour codes, so every number reaches the file.
    """
    if console.is_terminal:
        console.print(renderable)
    else:
        from adapmtl_cli.report.terminal import plain_text

        plain(plain_text(renderable))


def plain(text: str) -> None:
    out = _real_stdout()
    out.write(text if text.endswith("\n") else text + "\n")
    out.flush()


def _pct(v: float | None) -> str:
    return f"{v:.1%}" if v is not None else "-"


def _eta(info: StepInfo) -> float | None:
    done = info.step
    if done <= 0 or info.seconds <= 0:
        return None
    return info.seconds / done * (info.total_steps - done)


def step_summary(info: StepInfo, groups: dict[str, float], groups_step: int | None = None) -> tuple[str, str]:
    """Two lines about a step: the loss (total, per task with its weight) and the sparsity (overall, per group).

    The overall sparsity is the step's own; the per-component figures are measured every ``--log-every`` steps,
    so when they come from an earlier step (``groups_step``) the line says which.
    """
    parts = [f"{t} {v:.4f}×{info.task_weights.get(t, 1.0):.2f}" for t, v in info.task_losses.items()]
    loss = f"loss {info.loss:.4f}" + (f" = {' + '.join(parts)}" if parts else "")
    sparsity = f"sparsity {_pct(info.sparsity)} (target {info.target:.1%})"
    if groups:
        stale = groups_step is not None and groups_step != info.step
        sparsity += f"  at step {groups_step}:" if stale else ""
        sparsity += "  " + "  ".join(f"{g} {v:.1%}" for g, v in groups.items())
    return loss, sparsity


class _LiveProgress(Progress):
    """A progress bar with the latest loss and sparsity lines drawn under it."""

    def __init__(self, *columns: Any, details: Callable[[], RenderableType], **kwargs: Any) -> None:
        self._details = details  # before super(): rich draws once while constructing
        super().__init__(*columns, **kwargs)

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        yield self._details()


class TrainingProgress:
    """Turns the engine's callbacks into the live view, plain log lines, JSON lines or TensorBoard scalars.

    - ``log_format="text"`` on a terminal: a progress bar (steps, elapsed, ETA) with the total and per-task loss,
      task weights, overall and per-component sparsity under it; off a terminal, about ten plain lines per run.
    - ``log_format="jsonl"``: every stdout line is one JSON object: ``status``, ``step`` (each logged step, the
      fields of ``metrics.jsonl`` plus ``total_steps`` and ``eta_seconds``), ``eval`` and finally ``done``.
    - ``quiet``: none of that, and no status lines either (errors, warnings and a command's last line print).
    - ``tensorboard``: the logged scalars also go to that folder.
    """

    def __init__(self, quiet: bool = False, *, log_format: str = "text", tensorboard: str | Path | None = None) -> None:
        self.quiet = quiet
        self.log_format = log_format
        self.interactive = console.is_terminal and log_format == "text"
        self.tensorboard = tensorboard
        self._tb: Any = None
        self._progress: Progress | None = None
        self._task: Any = None
        self._eval_tasks: dict[str, Any] = {}
        self._phase_tasks: dict[str, Any] = {}
        self._phase_started: dict[str, float] = {}
        self._phase_lines: dict[str, int] = {}
        self._last_line = -1
        self._info: StepInfo | None = None
        self._groups: dict[str, float] = {}
        self._groups_step: int | None = None

    def __enter__(self) -> TrainingProgress:
        if self.tensorboard is not None:
            from adapmtl_cli.train.events import TensorBoardLog

            self._tb = TensorBoardLog(Path(self.tensorboard))
        if self.interactive and not self.quiet:
            self._progress = _LiveProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                details=self._details,
                console=console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()

    def _details(self) -> RenderableType:
        if self._info is None:
            return Text("")
        loss, sparsity = step_summary(self._info, self._groups, self._groups_step)
        return Text(f"  {loss}\n  {sparsity}", style="dim")

    def _json(self, event: str, **fields: Any) -> None:
        if not self.quiet:
            plain(json.dumps({"event": event, **fields}, allow_nan=False, default=str))

    def status(self, message: str) -> None:
        """A ``•`` line (a ``status`` object in ``jsonl``); nothing under ``quiet``."""
        if self.quiet:
            return
        if self.log_format == "jsonl":
            self._json("status", message=message)
        else:
            status(message)

    def on_step(self, info: StepInfo) -> None:
        self._info = info
        logged = bool(info.group_sparsity)
        if logged:
            self._groups = dict(info.group_sparsity)
            self._groups_step = info.step
            if self._tb is not None:
                self._tb.log(info)
        if self.quiet:
            return
        if self.log_format == "jsonl":
            if logged:
                eta = _eta(info)
                record = {k: v for k, v in info.record().items() if k != "step"}
                self._json("step", step=info.step, total_steps=info.total_steps, eta_seconds=eta, **_finite(record))
            return
        if self._progress is not None:
            if self._task is None:
                self._task = self._progress.add_task("prune", total=info.total_steps)
            self._progress.update(self._task, completed=info.step)
            return
        # Off a terminal: about ten plain lines per run, so logs stay readable.
        tenth = info.step * 10 // info.total_steps
        if tenth != self._last_line:
            self._last_line = tenth
            loss, sparsity = step_summary(info, self._groups, self._groups_step)
            eta = _eta(info)
            tail = f"{info.seconds:.0f} s" + (f", ETA {eta:.0f} s" if eta is not None else "")
            plain(f"step {info.step}/{info.total_steps}  {loss}  {sparsity}  {tail}")

    def on_eval(self, label: str, done: int, total: int) -> None:
        if self.log_format == "jsonl":
            if done == total:
                self._json("eval", split=label, batches=total)
            return
        if self._progress is None:
            return
        if label not in self._eval_tasks:
            self._eval_tasks[label] = self._progress.add_task(f"eval {label}", total=total)
        self._progress.update(self._eval_tasks[label], completed=done)

    def on_progress(self, phase: str, done: int, total: int) -> None:
        """Progress of a phase that is not the pruning loop (``demo``: scenes, dense training, export).

        A phase reports ``done = 0`` when it starts. On a terminal a bar per phase (a phase of one unit shows its
        elapsed time); off a terminal about ten plain lines per phase of several units, with elapsed time and ETA.
        """
        if self.quiet or self.log_format != "text":
            return
        label = PHASE_LABELS.get(phase, phase)
        if self._progress is not None:
            if phase not in self._phase_tasks:
                self._phase_tasks[phase] = self._progress.add_task(label, total=total)
            self._progress.update(self._phase_tasks[phase], completed=done)
            return
        now = time.perf_counter()
        started = self._phase_started.setdefault(phase, now)  # a phase starts with done = 0
        if total <= 1 or done <= 0:
            return
        tenth = done * 10 // total
        if self._phase_lines.get(phase) == tenth:
            return
        self._phase_lines[phase] = tenth
        seconds = now - started
        plain(f"{label} {done}/{total}  {seconds:.0f} s, ETA {seconds / done * (total - done):.0f} s")

    def finished(self, report: RunReport, run: str | Path) -> None:
        """The last JSON line of a run (``jsonl`` only): where it went and its whole report."""
        if self.log_format == "jsonl":
            self._json("done", run=str(run), report=_finite(report.model_dump(mode="json")))


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so every line is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@contextmanager
def spinner(message: str, quiet: bool = False) -> Iterator[None]:
    if quiet or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield
