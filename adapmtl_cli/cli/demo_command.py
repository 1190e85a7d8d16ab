"""``adapmtl demo``: the whole job on generated data, shown as ``prune``, ``report`` and ``export`` show it."""

from __future__ import annotations

from pathlib import Path

import typer

from adapmtl_cli.config import DEFAULTS

DEMO_EPILOG = "Example: adapmtl demo --out demo-run"


def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", help="Folder for the generated data, model and run."),
    sparsity: float = typer.Option(DEFAULTS.sparsity, "--sparsity", help="Target fraction of zero weights."),
    steps: int = typer.Option(DEFAULTS.steps, "--steps", help="Pruning fine-tune steps."),
    dense_steps: int = typer.Option(1200, "--dense-steps", help="Steps to train the dense demo model first."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
) -> None:
    """Run the whole job on generated data: make scenes, train a tiny dense model, prune it, report, export.

    No downloads; about two minutes on two CPU cores.
    """
    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.output_commands import show_export
    from adapmtl_cli.jobs import demo as demo_lib
    from adapmtl_cli.report.terminal import report_renderable

    with ui.TrainingProgress(quiet) as progress:
        result = demo_lib.run_demo(
            out,
            sparsity=sparsity,
            steps=steps,
            dense_steps=dense_steps,
            overwrite=overwrite,
            status=ui.status,
            on_step=progress.on_step,
            on_eval=progress.on_eval,
        )
    ui.show(report_renderable(result.report))
    show_export(result.export)
    ui.status(
        "the demo model is tiny (191k prunable weights, trained for a minute), so 90% sparsity costs it more "
        "than it costs a full-size network; Δ_T sums the changes of every metric of a task (normals have five)"
    )
    ui.success(f"demo finished in {result.seconds:.0f} s; run folder {result.run}")
