"""The ``adapmtl`` command line: parse, call one library function, render. No logic lives here.

Exit codes: 0 success, 2 an input the user can fix (``Error: ...`` on one line), 130 interrupted (state saved),
1 a bug (traceback kept). ``--debug`` shows the traceback for every error.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from adapmtl_cli import __version__
from adapmtl_cli.errors import AdapmtlError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="adapmtl",
    help=(
        "Prune an already-trained PyTorch multitask model with AdapMTL: learnable soft thresholds per component "
        "(backbone, each head) and adaptive task-loss weights, to the sparsity you ask for.\n\n"
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


def handles_errors(fn: F) -> F:
    """Turn ``AdapmtlError`` into ``Error: ...`` + exit 2 and Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from adapmtl_cli import ui

        try:
            return fn(*args, **kwargs)
        except AdapmtlError as exc:
            if _state["debug"]:
                traceback.print_exc()
            ui.error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            ui.error("interrupted; the last saved state is kept (continue with --resume)")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _split(values: list[str] | None) -> list[str] | None:
    """Accept both ``--tasks a,b`` and ``--tasks a --tasks b``."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# Shared option definitions, so inspect and prune read the same.
FACTORY = typer.Option(
    None, "--factory", help="Builds the architecture: 'package.module:function' or 'path/file.py:function'."
)
TRUST = typer.Option(False, "--trust-pickle", help="Allow a fully pickled nn.Module (runs code from the file).")
DATA = typer.Option("synthetic", "--data", help="Dataset adapter: synthetic, nyuv2.")
DATA_DIR = typer.Option(..., "--data-dir", help="Dataset folder (e.g. made by `adapmtl data synth`).")
TASKS = typer.Option(None, "--tasks", help="Tasks to keep, comma-separated (default: all of the dataset's).")
OUTPUTS = typer.Option(
    None,
    "--outputs",
    help="Task name of each positional model output, in order; '_' skips one (seg,depth,normal).",
)
EXCLUDE = typer.Option(None, "--exclude", help="Module glob never pruned (repeatable), e.g. 'backbone.stem*'.")
BACKBONE = typer.Option(None, "--backbone", help="Module glob forced into the backbone (repeatable).")
HEAD = typer.Option(None, "--head", help="TASK=GLOB forcing modules into a task's head (repeatable).")


@app.command(epilog="Example: adapmtl demo --out demo-run")
@handles_errors
def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", help="Folder for the generated data, model and run."),
    sparsity: float = typer.Option(0.9, "--sparsity", help="Target fraction of zero weights."),
    steps: int = typer.Option(300, "--steps", help="Pruning fine-tune steps."),
    dense_steps: int = typer.Option(400, "--dense-steps", help="Steps to train the dense demo model first."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
) -> None:
    """Run the whole job on generated data: make scenes, train a tiny dense model, prune it, report, export.

    No downloads; about two minutes on two CPU cores.
    """
    from adapmtl_cli import demo as demo_lib
    from adapmtl_cli import ui
    from adapmtl_cli.report import report_renderable

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
    _show_export(result.export)
    ui.status(
        "the demo's dense model is tiny and briefly trained, and the fine-tune keeps training it, so the pruned "
        "model can score above it here; on a converged checkpoint expect Δ_T near or below 0"
    )
    ui.success(f"demo finished in {result.seconds:.0f} s; run folder {result.run}")


@data_app.command("synth", epilog="Example: adapmtl data synth ./scenes --train 256 --val 64 --size 96,128 --seed 0")
@handles_errors
def data_synth(
    root: Path = typer.Argument(..., help="Folder to write (MTAN/LibMTL .npy layout)."),
    train: int = typer.Option(256, "--train", min=1, help="Training samples."),
    val: int = typer.Option(64, "--val", min=1, help="Validation samples."),
    size: str = typer.Option("96,128", "--size", help="Image height,width."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier generated folder."),
) -> None:
    """Generate NYU-v2-like indoor scenes (image, 13-class labels, depth, normals) with no download."""
    from adapmtl_cli import ui
    from adapmtl_cli.data.synthetic import generate_scenes
    from adapmtl_cli.errors import ConfigError

    try:
        h, w = (int(v) for v in size.split(","))
    except ValueError:
        raise ConfigError(f"--size {size!r} must be HEIGHT,WIDTH, e.g. 96,128") from None
    if h < 16 or w < 16:
        raise ConfigError(f"--size {size!r} is too small; use at least 16,16")
    summary = generate_scenes(root, train=train, val=val, size=(h, w), seed=seed, overwrite=overwrite)
    ui.success(f"wrote {summary.train} train + {summary.val} val scenes of {h}x{w} to {root} ({summary.seconds:.1f} s)")


@data_app.command("check", epilog="Example: adapmtl data check ./scenes")
@handles_errors
def data_check(
    root: Path = typer.Argument(..., help="Dataset folder (MTAN/LibMTL .npy layout)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate a dataset folder and summarise it: samples, image size, tasks, class histogram, invalid depth."""
    import json

    from adapmtl_cli import ui
    from adapmtl_cli.data.nyuv2 import describe
    from adapmtl_cli.report import dataset_renderable

    desc = describe(root)
    if as_json:
        ui.plain(json.dumps(desc, indent=2))
    else:
        ui.show(dataset_renderable(desc))
        ui.success(f"{root} is a valid dataset folder")


@app.command(
    epilog="Example: adapmtl inspect model.pt --factory my_models.py:build --data synthetic --data-dir ./scenes"
)
@handles_errors
def inspect(
    checkpoint: Path = typer.Argument(..., help="Checkpoint: state_dict (.pt/.pth/.safetensors) or pickled module."),
    factory: str | None = FACTORY,
    trust_pickle: bool = TRUST,
    data: str = DATA,
    data_dir: Path = DATA_DIR,
    tasks: list[str] | None = TASKS,
    outputs: list[str] | None = OUTPUTS,
    exclude: list[str] | None = EXCLUDE,
    backbone: list[str] | None = BACKBONE,
    head: list[str] | None = HEAD,
    as_json: bool = typer.Option(False, "--json", help="Print the component map as JSON."),
) -> None:
    """Show which weights are shared and which belong to each task head, without training anything."""
    from adapmtl_cli import ui
    from adapmtl_cli.pipeline import components_manifest, prepare
    from adapmtl_cli.report import components_renderable

    prepared = prepare(
        str(checkpoint),
        factory=factory,
        trust_pickle=trust_pickle,
        data=data,
        data_dir=str(data_dir),
        tasks=_split(tasks),
        outputs=_split(outputs),
        exclude=exclude or (),
        backbone=backbone or (),
        head=head or (),
    )
    manifest = components_manifest(prepared)
    if as_json:
        ui.plain(manifest.model_dump_json(indent=2))
    else:
        ui.show(components_renderable(manifest))


@app.command(
    epilog=(
        "Example: adapmtl prune model.pt --factory my_models.py:build --data synthetic --data-dir ./scenes "
        "--sparsity 0.9 --steps 300 --out runs/a"
    )
)
@handles_errors
def prune(
    checkpoint: Path = typer.Argument(..., help="Checkpoint: state_dict (.pt/.pth/.safetensors) or pickled module."),
    out: Path = typer.Option(..., "--out", help="Run folder to write (config, metrics, state, report, weights)."),
    factory: str | None = FACTORY,
    trust_pickle: bool = TRUST,
    data: str = DATA,
    data_dir: Path = DATA_DIR,
    tasks: list[str] | None = TASKS,
    outputs: list[str] | None = OUTPUTS,
    sparsity: float = typer.Option(0.9, "--sparsity", help="Target fraction of zero prunable weights, in (0, 1)."),
    steps: int = typer.Option(300, "--steps", help="Fine-tuning steps (the sparsity ramps over the first 75%)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate of the weights."),
    threshold_lr: float = typer.Option(0.01, "--threshold-lr", help="Adam learning rate of the threshold logits."),
    weighting: str = typer.Option("adaptive", "--weighting", help="Task-loss weights: adaptive (AdapMTL) or equal."),
    granularity: str = typer.Option("component", "--granularity", help="One threshold per component|layer|global."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    exclude: list[str] | None = EXCLUDE,
    backbone: list[str] | None = BACKBONE,
    head: list[str] | None = HEAD,
    save_every: int = typer.Option(50, "--save-every", help="Save resumable state every N steps."),
    log_every: int = typer.Option(10, "--log-every", help="Measure sparsity and log metrics every N steps."),
    eval_batches: int | None = typer.Option(None, "--eval-batches", help="Evaluate on at most N validation batches."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out (its config wins)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Prune CHECKPOINT to --sparsity with AdapMTL and write a run folder (see `adapmtl report`)."""
    from adapmtl_cli import ui
    from adapmtl_cli.config import make_prune_config
    from adapmtl_cli.pipeline import Hooks, run_prune
    from adapmtl_cli.report import report_renderable

    cfg = make_prune_config(
        checkpoint=str(checkpoint),
        factory=factory,
        trust_pickle=trust_pickle,
        data=data,
        data_dir=str(data_dir),
        tasks=_split(tasks),
        outputs=_split(outputs),
        sparsity=sparsity,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        threshold_lr=threshold_lr,
        weighting=weighting,
        granularity=granularity,
        seed=seed,
        device=device,
        out=str(out),
        exclude=exclude or [],
        backbone=backbone or [],
        head=head or [],
        save_every=save_every,
        log_every=log_every,
        eval_batches=eval_batches,
    )
    with ui.TrainingProgress(quiet) as progress:
        hooks = Hooks(status=ui.status, on_step=progress.on_step, on_eval=progress.on_eval)
        report = run_prune(cfg, resume=resume, overwrite=overwrite, hooks=hooks)
    if not quiet:
        ui.show(report_renderable(report))
    ui.success(f"run written to {out}  (next: adapmtl report {out}; adapmtl export {out} --onnx)")


@app.command(epilog="Example: adapmtl report runs/a --layers")
@handles_errors
def report(
    run: Path = typer.Argument(..., help="Run folder written by `adapmtl prune`."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the report as Markdown."),
    layers: bool = typer.Option(False, "--layers", help="Add the per-layer sparsity table."),
) -> None:
    """Show per-component and per-layer sparsity, task metrics before and after, and Δ_T."""
    from adapmtl_cli import ui
    from adapmtl_cli.report import load_report, report_markdown, report_renderable

    rep = load_report(run)
    if as_json:
        ui.plain(rep.model_dump_json(indent=2))
    elif markdown:
        ui.plain(report_markdown(rep))
    else:
        ui.show(report_renderable(rep, layers=layers))


@app.command(
    epilog=(
        "Examples: adapmtl export runs/a --onnx  |  "
        "adapmtl export --densify runs/a/export/model.sparse.safetensors dense.safetensors"
    )
)
@handles_errors
def export(
    run: Path = typer.Argument(..., help="Run folder written by `adapmtl prune` (with --densify: a sparse file)."),
    dest: Path | None = typer.Argument(None, help="With --densify: the dense safetensors file to write."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx, checked with onnxruntime."),
    exporter: str = typer.Option("dynamo", "--exporter", help="ONNX exporter: dynamo or legacy."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the files (default RUN/export)."),
    densify: bool = typer.Option(False, "--densify", help="Decode a sparse safetensors file into a dense one."),
) -> None:
    """Write model.safetensors (dense, exact zeros, your state_dict keys), model.sparse.safetensors and ONNX."""
    from adapmtl_cli import ui
    from adapmtl_cli.deploy import densify_file, export_run
    from adapmtl_cli.errors import ConfigError

    if densify:
        if dest is None:
            raise ConfigError("--densify needs two paths: SPARSE.safetensors DENSE.safetensors")
        n = densify_file(run, dest)
        ui.success(f"wrote {dest} ({n / 1e6:.2f} MB), decoded from {run}")
        return
    if dest is not None:
        raise ConfigError(f"unexpected second path {str(dest)!r}; only `export --densify` takes two paths")
    with ui.spinner("exporting"):
        manifest = export_run(run, out_dir=out, onnx=onnx, exporter=exporter)
    _show_export(manifest)


def _show_export(manifest: Any) -> None:
    from adapmtl_cli import ui

    if manifest is None:
        return
    ui.success(f"dense  {manifest.dense} ({manifest.dense_bytes / 1e6:.2f} MB)")
    ratio = manifest.sparse_bytes / max(1, manifest.dense_bytes)
    ui.success(
        f"sparse {manifest.sparse} ({manifest.sparse_bytes / 1e6:.2f} MB, {ratio:.1%} of dense; decodes bit-exactly)"
    )
    if manifest.onnx:
        ui.success(
            f"onnx   {manifest.onnx} ({manifest.onnx_bytes / 1e6:.2f} MB); onnxruntime parity max abs diff "
            f"{manifest.onnx_max_abs_diff:.2e} (batch sizes {manifest.onnx_batch_sizes})"
        )


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
