"""The ``adapmtl`` command line: the Typer app, its root options, error handling and entry point.

The commands live in the module of their job (``prune_commands``, ``data_commands``, ``output_commands``,
``demo_command``); each parses, calls one library function and renders, and no logic lives in them. This module
registers them, in the order ``--help`` lists them, each wrapped in the one error handler.

Exit codes: 0 success, 2 an input the user can fix (``Error: ...`` on one line), 130 interrupted (state saved),
1 a bug (traceback kept). ``--debug`` shows the traceback for every error.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from adapmtl_cli import __version__
from adapmtl_cli.cli import data_commands, demo_command, output_commands, prune_commands
from adapmtl_cli.errors import AdapmtlError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="adapmtl",
    help=(
        "Prune an already-trained PyTorch multitask model with AdapMTL: learnable soft thresholds per component "
        "(backbone, each head), fine-tuned with every task's loss on the same scale (`--weighting adaptive` for "
        "AdapMTL's robustness-driven weights), to the exact sparsity you ask for.\n\n"
        "Start with `adapmtl demo`; then `adapmtl inspect`, `adapmtl prune`, `adapmtl report`, `adapmtl export`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Generate and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adapmtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


INTERRUPTED = "interrupted; the last saved state is kept (continue with --resume)"
"""What Ctrl-C prints when the job did not say what it kept (a job says so as the ``KeyboardInterrupt``'s text)."""


def _reports_error(exc: BaseException) -> bool:
    """Whether this process prints ``exc``: under torchrun, one rank prints what every rank raised.

    Only the distributed module marks the copies, so a process that never imported it (no torch yet: a path
    refused before any work) prints every error.
    """
    distributed = sys.modules.get("adapmtl_cli.train.distributed")
    return distributed is None or bool(distributed.reports_error(exc))


def handles_errors(fn: F) -> F:
    """Turn ``AdapmtlError`` into ``Error: ...`` + exit 2 and Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from adapmtl_cli.cli import ui

        try:
            with ui.own_stdout():  # user code's prints go to stderr: our stdout stays machine-readable
                return fn(*args, **kwargs)
        except AdapmtlError as exc:
            if _state["debug"]:
                traceback.print_exc()
            if _reports_error(exc):
                ui.error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            if _reports_error(exc):
                ui.error(str(exc) or INTERRUPTED)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _register(group: typer.Typer, command: Callable[..., Any], epilog: str, name: str | None = None) -> None:
    group.command(name, epilog=epilog)(handles_errors(command))


_register(app, demo_command.demo, demo_command.DEMO_EPILOG)
_register(data_app, data_commands.data_synth, data_commands.SYNTH_EPILOG, "synth")
_register(data_app, data_commands.data_check, data_commands.CHECK_EPILOG, "check")
_register(app, prune_commands.inspect, prune_commands.INSPECT_EPILOG)
_register(app, prune_commands.prune, prune_commands.PRUNE_EPILOG)
_register(app, prune_commands.resume, prune_commands.RESUME_EPILOG)
_register(app, output_commands.report, output_commands.REPORT_EPILOG)
_register(app, output_commands.export, output_commands.EXPORT_EPILOG)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit:
        raise
    except Exception:  # a bug: keep the traceback, exit 1
        traceback.print_exc()
        sys.exit(1)


__all__ = ["app", "main"]
