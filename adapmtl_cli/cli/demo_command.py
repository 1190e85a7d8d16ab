"""``adapmtl demo``: the whole job on generated data, shown as ``prune``, ``report`` and ``export`` show it."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from adapmtl_cli.config import DEFAULTS

DEMO_EPILOG = "Example: adapmtl demo --out demo-run"

# The demo's own sizes (``jobs.demo``), repeated here so that ``--help`` does not import torch (a test holds
# them equal).
DENSE_STEPS = 400
DEMO_STEPS = 200


def busy_machine() -> str | None:
    """``load average 7.9 on 2 cores`` when the machine's cores are already taken (and torch's threads are not
    set by ``OMP_NUM_THREADS``), else None.

    Torch's threads wait for each other by spinning: on a machine whose cores other work holds, two threads
    burned seven times the CPU of one for the same demo (README, "What it costs").
    """
    if "OMP_NUM_THREADS" in os.environ or not hasattr(os, "getloadavg"):
        return None
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    return f"the machine is busy (load average {load:.1f} on {cores} cores)" if load >= cores else None


def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", help="Folder for the generated data, model and run."),
    sparsity: float = typer.Option(DEFAULTS.sparsity, "--sparsity", help="Target fraction of zero weights."),
    steps: int = typer.Option(DEMO_STEPS, "--steps", help="Pruning fine-tune steps."),
    dense_steps: int = typer.Option(DENSE_STEPS, "--dense-steps", help="Steps to train the dense demo model first."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress display and no status lines."),
) -> None:
    """Run the whole job on generated data: make scenes, train a tiny dense model, prune it, report, export.

    No downloads; about a minute and a half on two idle CPU cores. It leaves a trained checkpoint,
    OUT/model.pt, and its data, OUT/scenes, for README's tour.
    """
    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.preflight import check_demo_out

    check_demo_out(out, overwrite)  # before torch loads
    import torch

    from adapmtl_cli.cli.output_commands import show_export
    from adapmtl_cli.jobs import demo as demo_lib
    from adapmtl_cli.report.terminal import terminal_renderable
    from adapmtl_cli.report.views import load_runs

    threads = torch.get_num_threads()
    try:
        with ui.TrainingProgress(quiet) as progress:
            busy = busy_machine()
            if busy is not None:
                torch.set_num_threads(1)
                progress.status(f"{busy}: training with one thread, which wastes no CPU waiting for a second one")
            result = demo_lib.run_demo(
                out,
                sparsity=sparsity,
                steps=steps,
                dense_steps=dense_steps,
                overwrite=overwrite,
                status=progress.status,
                on_step=progress.on_step,
                on_eval=progress.on_eval,
                on_progress=progress.on_progress,
            )
    finally:
        torch.set_num_threads(threads)  # the command leaves the process as it found it
    ui.show(terminal_renderable(load_runs([result.run])))  # as `adapmtl report` shows it
    show_export(result.export, quiet=quiet)
    if not quiet:
        ui.status(
            "the demo model is tiny (191k prunable weights, trained for under a minute), so 90% sparsity costs it "
            "more than it costs a full-size network; Δ_T sums the changes of every metric of a task (normals have "
            "five)"
        )
    ui.success(
        f"demo finished in {result.seconds:.0f} s; run folder {result.run}; the trained dense model "
        f"{out / 'model.pt'} and its data {out / 'scenes'} are the starting point of README's tour"
    )
