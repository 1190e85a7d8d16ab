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
        from adapmtl_cli.cli import ui
        from adapmtl_cli.train.distributed import reports_error

        try:
            return fn(*args, **kwargs)
        except AdapmtlError as exc:
            if _state["debug"]:
                traceback.print_exc()
            if reports_error(exc):  # under torchrun, one rank prints what every rank raised
                ui.error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            if reports_error(exc):
                ui.error("interrupted; the last saved state is kept (continue with --resume)")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _split(values: list[str] | None) -> list[str] | None:
    """Accept both ``--tasks a,b`` and ``--tasks a --tasks b``."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _typed_options(ctx: typer.Context) -> dict[str, Any]:
    """The options the user typed (not Typer's defaults) as config values, for ``--config`` to fill the rest."""
    out: dict[str, Any] = {}
    for name, value in ctx.params.items():
        # Typer vendors click, so compare the source by name rather than importing click's enum.
        source = getattr(ctx.get_parameter_source(name), "name", "DEFAULT")
        if name in ("config", "print_config") or source == "DEFAULT":
            continue
        if name in ("tasks", "outputs"):
            value = _split(value)
        elif name in ("data_opt", "layout", "augment"):
            continue
        elif name == "component_sparsity":
            value = _parse_bounds(value)
        elif isinstance(value, Path):
            value = str(value)
        out[name] = value
    options = _data_options(ctx)
    if options is not None:
        out["data_options"] = options
    return out


def _parse_bounds(items: list[str] | None) -> dict[str, tuple[float, float]]:
    """``["backbone=0.5:0.8"]`` -> ``{"backbone": (0.5, 0.8)}``; ``NAME=:0.8`` and ``NAME=0.5:`` leave a side open."""
    from adapmtl_cli.errors import ConfigError

    out: dict[str, tuple[float, float]] = {}
    for item in items or []:
        name, sep, span = item.partition("=")
        low, colon, high = span.partition(":")
        try:
            if not sep or not colon or not name.strip():
                raise ValueError
            out[name.strip()] = (float(low) if low.strip() else 0.0, float(high) if high.strip() else 1.0)
        except ValueError:
            raise ConfigError(
                f"--component-sparsity {item!r} must look like NAME=MIN:MAX, e.g. backbone=0.5:0.85 or 'head:seg=:0.9'"
            ) from None
    return out


def _parse_data_opts(items: list[str] | None) -> dict[str, str]:
    """``["normals=adashare", ...]`` -> ``{"normals": "adashare"}``."""
    from adapmtl_cli.errors import ConfigError

    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--data-opt {item!r} must look like KEY=VALUE, e.g. normals=adashare")
        options[key.strip()] = value.strip()
    return options


def _data_options(ctx: typer.Context) -> dict[str, str] | None:
    """``--data-opt KEY=VALUE`` (repeatable) plus the ``--layout`` and ``--augment`` shorthands; None if unset."""

    def typed(name: str) -> bool:
        return name in ctx.params and getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"

    if not any(typed(n) for n in ("data_opt", "layout", "augment")):
        return None
    options = _parse_data_opts(ctx.params.get("data_opt"))
    if typed("layout"):
        options["layout"] = ctx.params["layout"]
    if typed("augment"):
        options["augment"] = "true" if ctx.params["augment"] else "false"
    return options


# Shared option definitions, so inspect and prune read the same.
FACTORY = typer.Option(
    None, "--factory", help="Builds the architecture: 'package.module:function' or 'path/file.py:function'."
)
TRUST = typer.Option(False, "--trust-pickle", help="Allow a fully pickled nn.Module (runs code from the file).")
DATA = typer.Option(
    "synthetic",
    "--data",
    help="Dataset: synthetic, nyuv2 (MTAN .npy or AdaShare layout, detected), taskonomy, or your own plug-in "
    "as path/to/plugin.py or package.module.",
)
LAYOUT = typer.Option(None, "--layout", help="On-disk layout when --data has several (nyuv2: auto, mtan, adashare).")
AUGMENT = typer.Option(
    None, "--augment/--no-augment", help="Random scale-crop and flip of the training split (never of val)."
)
DATA_OPT = typer.Option(
    None, "--data-opt", help="Dataset option KEY=VALUE (repeatable), e.g. normals=adashare; see README."
)
WORKERS = typer.Option(0, "--workers", min=0, help="DataLoader worker processes (0: load in the main process).")
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
    dense_steps: int = typer.Option(1200, "--dense-steps", help="Steps to train the dense demo model first."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo in --out."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars."),
) -> None:
    """Run the whole job on generated data: make scenes, train a tiny dense model, prune it, report, export.

    No downloads; about two minutes on two CPU cores.
    """
    from adapmtl_cli.cli import ui
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
    _show_export(result.export)
    ui.status(
        "the demo model is tiny (191k prunable weights, trained for a minute), so 90% sparsity costs it more "
        "than it costs a full-size network; Δ_T sums the changes of every metric of a task (normals have five)"
    )
    ui.success(f"demo finished in {result.seconds:.0f} s; run folder {result.run}")


@data_app.command(
    "synth",
    epilog="Examples: adapmtl data synth ./scenes --train 256 --val 64 --size 96,128 --seed 0  |  "
    "adapmtl data synth ./nyu40 --layout nyuv2-adashare  |  adapmtl data synth ./tiny-taskonomy --layout taskonomy",
)
@handles_errors
def data_synth(
    root: Path = typer.Argument(..., help="Folder to write."),
    layout: str = typer.Option(
        "nyuv2",
        "--layout",
        help="On-disk format: nyuv2 (MTAN/LibMTL .npy, 13 classes), nyuv2-adashare (AdaShare/DiSparse/AdapMTL "
        "PNG + JSON, 40 classes) or taskonomy (Tiny-Taskonomy, 5 tasks).",
    ),
    train: int = typer.Option(256, "--train", min=1, help="Training samples."),
    val: int = typer.Option(64, "--val", min=1, help="Validation samples."),
    size: str | None = typer.Option(None, "--size", help="Image height,width (default 96,128; taskonomy 256,256)."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier generated folder."),
) -> None:
    """Generate NYU-v2-like indoor scenes (image, labels, depth, normals; for Taskonomy also keypoints and edges)
    in the exact on-disk format of a real dataset, with no download."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.data.synth.generate import SYNTH_LAYOUTS, generate
    from adapmtl_cli.errors import ConfigError

    if layout not in SYNTH_LAYOUTS:
        raise ConfigError(f"--layout {layout!r} is not one of: {', '.join(SYNTH_LAYOUTS)}")
    text = size or ("256,256" if layout == "taskonomy" else "96,128")
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--size {text!r} must be HEIGHT,WIDTH, e.g. 96,128") from None
    if h < 16 or w < 16:
        raise ConfigError(f"--size {text!r} is too small; use at least 16,16")
    with ui.spinner(f"rendering {train + val} scenes ({layout})"):
        summary = generate(layout, root, train=train, val=val, size=(h, w), seed=seed, overwrite=overwrite)
    ui.success(
        f"wrote {summary.train} train + {summary.val} val scenes of {h}x{w} to {root} in the {layout} layout "
        f"({summary.seconds:.1f} s); check it with: adapmtl data check {root}"
        + (" --data taskonomy" if layout == "taskonomy" else "")
    )


@data_app.command(
    "check", epilog="Examples: adapmtl data check ./scenes  |  adapmtl data check ./nyu --data nyuv2 --layout adashare"
)
@handles_errors
def data_check(
    ctx: typer.Context,
    root: Path = typer.Argument(..., help="Dataset folder."),
    data: str = typer.Option("nyuv2", "--data", help="Dataset: nyuv2, synthetic, taskonomy or a plug-in."),
    layout: str | None = LAYOUT,
    data_opt: list[str] | None = DATA_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate a dataset folder with the checks `prune` runs, and summarise it: samples, image size, tasks,
    class histogram, invalid-depth ratio."""
    import json

    from adapmtl_cli.cli import ui
    from adapmtl_cli.data import get_dataset
    from adapmtl_cli.report.terminal import dataset_renderable

    del layout, data_opt  # read through ctx, exactly as prune and inspect read them
    desc = get_dataset(data, _data_options(ctx) or {}).describe(root)
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
    ctx: typer.Context,
    checkpoint: Path | None = typer.Argument(
        None, help="Checkpoint: state_dict (.pt/.pth/.safetensors) or pickled module (or `checkpoint` in --config)."
    ),
    factory: str | None = FACTORY,
    trust_pickle: bool = TRUST,
    data: str = DATA,
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Dataset folder (e.g. made by `adapmtl data synth`)."
    ),
    layout: str | None = LAYOUT,
    augment: bool | None = AUGMENT,
    data_opt: list[str] | None = DATA_OPT,
    tasks: list[str] | None = TASKS,
    outputs: list[str] | None = OUTPUTS,
    exclude: list[str] | None = EXCLUDE,
    backbone: list[str] | None = BACKBONE,
    head: list[str] | None = HEAD,
    method: str | None = typer.Option(None, "--method", help="Method of the planned run (default adapmtl)."),
    layer_scale: str | None = typer.Option(
        None, "--layer-scale", help="Layer scales of the planned run: saliency or none (default: the method's)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Batch size of the planned run (default 8)."),
    steps: int | None = typer.Option(None, "--steps", help="Steps of the planned run (default 300)."),
    device: str | None = typer.Option(None, "--device", help="Device of the planned run: auto, cpu, cuda, mps."),
    config: Path | None = typer.Option(None, "--config", help="The planned run's TOML config (as for prune)."),
    estimate: bool = typer.Option(
        True, "--estimate/--no-estimate", help="Time a few training steps of the planned run on one real batch."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the component map as JSON (no estimate)."),
) -> None:
    """Dry run: which weights are shared and which belong to each task head, what stays unpruned and why, and
    the time per step and peak memory of the planned run, measured on one real batch."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.jobs.config_file import resolve_prune_config
    from adapmtl_cli.jobs.inspect import estimate_step, not_pruned
    from adapmtl_cli.jobs.prune import components_manifest, prepare_from
    from adapmtl_cli.report.terminal import components_renderable

    given = {k: v for k, v in _typed_options(ctx).items() if k not in ("as_json", "estimate")}
    cfg, _ = resolve_prune_config(given, config, fallback={"out": "-"})  # inspect writes no run folder
    prepared = prepare_from(cfg)
    manifest = components_manifest(prepared)
    if as_json:
        ui.plain(manifest.model_dump_json(indent=2))
        return
    step = None
    if estimate:
        with ui.spinner(f"timing {cfg.method} training steps at batch size {cfg.batch_size}"):
            step = estimate_step(
                prepared,
                method=cfg.method,
                batch_size=cfg.batch_size,
                device=cfg.device,
                steps=cfg.steps,
                sparsity=cfg.sparsity,
                ramp_end=cfg.ramp_end,
                layer_scale=cfg.layer_scale,
            )
    ui.show(components_renderable(manifest, not_pruned(prepared), step))


@app.command(
    epilog=(
        "Example: adapmtl prune model.pt --factory my_models.py:build --data synthetic --data-dir ./scenes "
        "--sparsity 0.9 --steps 300 --out runs/a"
    )
)
@handles_errors
def prune(
    ctx: typer.Context,
    checkpoint: Path | None = typer.Argument(
        None, help="Checkpoint: state_dict (.pt/.pth/.safetensors) or pickled module (or `checkpoint` in --config)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run folder to write (config, metrics, state, report, weights)."
    ),
    factory: str | None = FACTORY,
    trust_pickle: bool = TRUST,
    data: str = DATA,
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Dataset folder (e.g. made by `adapmtl data synth`)."
    ),
    layout: str | None = LAYOUT,
    augment: bool | None = AUGMENT,
    data_opt: list[str] | None = DATA_OPT,
    tasks: list[str] | None = TASKS,
    outputs: list[str] | None = OUTPUTS,
    sparsity: float = typer.Option(0.9, "--sparsity", help="Target fraction of zero prunable weights, in (0, 1)."),
    steps: int = typer.Option(300, "--steps", help="Fine-tuning steps (the sparsity ramps over the first 75%)."),
    batch_size: int = typer.Option(
        8, "--batch-size", help="Global batch per step (under torchrun, split evenly over the processes)."
    ),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate of the weights."),
    threshold_lr: float = typer.Option(0.002, "--threshold-lr", help="Adam learning rate of the threshold logits."),
    method: str = typer.Option(
        "adapmtl",
        "--method",
        help="adapmtl (default), or a baseline: str_global, str_layer, magnitude_oneshot, gmp, uniform_magnitude, "
        "disparse.",
    ),
    component_sparsity: list[str] | None = typer.Option(
        None,
        "--component-sparsity",
        help="Floor and cap of one component's final sparsity, NAME=MIN:MAX (repeatable; e.g. backbone=:0.85). "
        "The split of the rest stays learned; adapmtl only.",
    ),
    weighting: str | None = typer.Option(
        None,
        "--weighting",
        help="Task-loss weights: adaptive (loss growth relative to the dense level), paper (the paper's step-to-step "
        "estimator) or equal (default: adaptive for adapmtl, else equal).",
    ),
    layer_scale: str | None = typer.Option(
        None,
        "--layer-scale",
        help="Per-layer threshold scales: saliency (each layer's threshold in its own units, from task gradients; "
        "keeps whole layers from being emptied; default for adapmtl) or none (the paper's one raw threshold per "
        "component; default for the baselines).",
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="Autocast dtype: auto (bf16 on CUDA, fp32 elsewhere), fp32, bf16 or fp16; thresholds stay fp32.",
    ),
    exclude: list[str] | None = EXCLUDE,
    backbone: list[str] | None = BACKBONE,
    head: list[str] | None = HEAD,
    save_every: int = typer.Option(50, "--save-every", help="Save resumable state every N steps."),
    log_every: int = typer.Option(10, "--log-every", help="Measure sparsity and log metrics every N steps."),
    eval_batches: int | None = typer.Option(None, "--eval-batches", help="Evaluate on at most N validation batches."),
    num_workers: int = WORKERS,
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out (its config wins)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in --out."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
    log_format: str = typer.Option(
        "text", "--log-format", help="Progress as text (live view) or jsonl (one JSON object per line)."
    ),
    tensorboard: Path | None = typer.Option(
        None, "--tensorboard", help="Also write the logged scalars to this TensorBoard folder."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file with any of these options (options typed here win)."
    ),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config as TOML and exit."),
) -> None:
    """Prune CHECKPOINT to --sparsity with AdapMTL and write a run folder (see `adapmtl report`)."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.jobs.config_file import prune_config_toml, resolve_prune_config
    from adapmtl_cli.jobs.prune import Hooks, run_prune
    from adapmtl_cli.report.terminal import report_renderable
    from adapmtl_cli.train.distributed import is_main_process

    cfg, session = resolve_prune_config(_typed_options(ctx), config)
    if print_config:
        ui.plain(prune_config_toml(cfg))
        return
    if not is_main_process():  # under torchrun, rank 0 alone shows progress and the report
        hooks = Hooks()
        run_prune(cfg, resume=session.resume, overwrite=session.overwrite, hooks=hooks)
        return
    live = ui.TrainingProgress(session.quiet, log_format=session.log_format, tensorboard=session.tensorboard)
    with live as progress:
        hooks = Hooks(status=progress.status, on_step=progress.on_step, on_eval=progress.on_eval)
        report = run_prune(cfg, resume=session.resume, overwrite=session.overwrite, hooks=hooks)
        progress.finished(report, cfg.out)
    if session.log_format == "text":
        if not session.quiet:
            ui.show(report_renderable(report))
        ui.success(f"run written to {cfg.out}  (next: adapmtl report {cfg.out}; adapmtl export {cfg.out} --onnx)")


@app.command(epilog="Example: adapmtl resume runs/a")
@handles_errors
def resume(
    run: Path = typer.Argument(..., help="Run folder written by `adapmtl prune` (interrupted or finished)."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Needed again when the run was made with --trust-pickle."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar."),
) -> None:
    """Continue an interrupted `adapmtl prune` run from its last intact saved state, with its saved options."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.jobs.prune import Hooks, resume_prune
    from adapmtl_cli.report.terminal import report_renderable
    from adapmtl_cli.train.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 alone shows progress and the report
        resume_prune(run, trust_pickle=trust_pickle, hooks=Hooks())
        return
    with ui.TrainingProgress(quiet) as progress:
        hooks = Hooks(status=ui.status, on_step=progress.on_step, on_eval=progress.on_eval)
        report = resume_prune(run, trust_pickle=trust_pickle, hooks=hooks)
    if not quiet:
        ui.show(report_renderable(report))
    ui.success(f"run written to {run}  (next: adapmtl report {run}; adapmtl export {run} --onnx)")


@app.command(
    epilog=(
        "Examples: adapmtl report runs/a --layers --sort sparsity  |  adapmtl report runs/a --format html "
        "--output report.html  |  adapmtl report runs/a runs/b --compare  |  adapmtl report runs/a --plot plots/"
    )
)
@handles_errors
def report(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN", help="Run folder written by `adapmtl prune` (several with --compare)."
    ),
    fmt: str | None = typer.Option(
        None, "--format", "-f", help="table, json, markdown, csv or html (default: table, or --output's suffix)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Short for --format json (prints report.json)."),
    markdown: bool = typer.Option(False, "--markdown", help="Short for --format markdown."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the report to this file instead."),
    layers: bool = typer.Option(False, "--layers", help="Add the per-layer sparsity table, grouped by component."),
    sort: str = typer.Option("model", "--sort", help="Layer order within a component: model, sparsity, params, name."),
    compare: bool = typer.Option(False, "--compare", help="Runs side by side, one column each, best value marked."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write PNG figures to this folder (needs matplotlib)."),
) -> None:
    """Show per-component and per-layer sparsity, task metrics before and after, and Δ_T; compare runs."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.errors import ConfigError
    from adapmtl_cli.report import plots
    from adapmtl_cli.report.terminal import render_text, terminal_renderable
    from adapmtl_cli.report.views import load_runs, resolve_format, write_output

    fmt_name = resolve_format(fmt, as_json=as_json, markdown=markdown, output=output, sort=sort)
    if len(runs) > 1 and not compare:
        raise ConfigError(f"got {len(runs)} run folders; pass --compare to put them side by side")
    if plot is not None:
        plots.require_matplotlib("--plot")
    views = load_runs(runs)
    figures = None
    if plot is not None or fmt_name == "html":
        if plots.have_matplotlib():
            figures = plots.figures(views)
        else:
            ui.warn(f"the HTML page has no plots: {plots.INSTALL_HINT}")
    if output is not None:
        write_output(output, render_text(views, fmt_name, layers=layers, sort=sort, plots=figures))
        ui.success(f"wrote {output} ({fmt_name})")
    elif fmt_name == "table":
        ui.show(terminal_renderable(views, layers=layers, sort=sort))
    else:
        ui.plain(render_text(views, fmt_name, layers=layers, sort=sort, plots=figures))
    if plot is not None and figures is not None:
        written = plots.write_plots(figures, plot)
        names = ", ".join(p.name for p in written)
        ui.success(f"wrote {len(written)} figures to {plot}: {names}", stderr=output is None and fmt_name != "table")


@app.command(
    epilog=(
        "Examples: adapmtl export runs/a --onnx  |  adapmtl export runs/a --onnx --shrink --sparse-initializers  |  "
        "adapmtl export --densify runs/a/export/model.sparse.safetensors dense.safetensors"
    )
)
@handles_errors
def export(
    run: Path = typer.Argument(..., help="Run folder written by `adapmtl prune` (with --densify: a sparse file)."),
    dest: Path | None = typer.Argument(None, help="With --densify: the dense safetensors file to write."),
    onnx: bool = typer.Option(False, "--onnx", help="Also write model.onnx, checked with onnxruntime."),
    exporter: str = typer.Option("dynamo", "--exporter", help="ONNX exporter: dynamo, or legacy if dynamo fails."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the files (default RUN/export)."),
    densify: bool = typer.Option(False, "--densify", help="Decode a sparse safetensors file into a dense one."),
    values_dtype: str | None = typer.Option(
        None, "--values-dtype", help="Store the sparse file's float values as fp16 or bf16 (default: as trained)."
    ),
    sparse_initializers: bool = typer.Option(
        False, "--sparse-initializers", help="Store mostly-zero ONNX weights as sparse initializers (int64 indices)."
    ),
    shrink: bool = typer.Option(
        False, "--shrink", help="Remove all-zero channels where the graph allows; write model.shrunk.onnx."
    ),
) -> None:
    """Write model.safetensors (dense, exact zeros, your state_dict keys), model.sparse.safetensors and ONNX."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.errors import ConfigError
    from adapmtl_cli.jobs.export import densify_file, export_run

    if densify:
        if dest is None:
            raise ConfigError("--densify needs two paths: SPARSE.safetensors DENSE.safetensors")
        n = densify_file(run, dest)
        ui.success(f"wrote {dest} ({n / 1e6:.2f} MB), decoded from {run}")
        return
    if dest is not None:
        raise ConfigError(f"unexpected second path {str(dest)!r}; only `export --densify` takes two paths")
    with ui.spinner("exporting"):
        manifest = export_run(
            run,
            out_dir=out,
            onnx=onnx,
            exporter=exporter,
            values_dtype=values_dtype,
            sparse_initializers=sparse_initializers,
            shrink=shrink,
        )
    _show_export(manifest)


def _show_export(manifest: Any) -> None:
    from adapmtl_cli.cli import ui

    if manifest is None:
        return

    def show_parity(worst: float, per_output: dict[str, float]) -> None:
        sizes = f" (batch sizes {manifest.onnx_batch_sizes})" if manifest.onnx_batch_sizes else ""
        ui.success(f"       onnxruntime parity max abs diff {worst:.2e}{sizes}")
        for name, diff in per_output.items():
            ui.plain(f"         {name:<16} {diff:.2e}")

    ui.success(f"dense  {manifest.dense} ({manifest.dense_bytes / 1e6:.2f} MB)")
    ratio = manifest.sparse_bytes / max(1, manifest.dense_bytes)
    exact = "decodes bit-exactly"
    if manifest.sparse_values_dtype:
        exact += f" to the weights rounded to {manifest.sparse_values_dtype}"
    ui.success(f"sparse {manifest.sparse} ({manifest.sparse_bytes / 1e6:.2f} MB, {ratio:.1%} of dense; {exact})")
    if manifest.onnx:
        extras = [f"{manifest.onnx_exporter} exporter, opset {manifest.onnx_opset}"]
        if manifest.onnx_sparse_initializers:
            extras.append(f"{manifest.onnx_sparse_initializers} sparse initializers")
        if manifest.onnx_external_data:
            extras.append(f"weights in {manifest.onnx_external_data}")
        ui.success(f"onnx   {manifest.onnx} ({manifest.onnx_bytes / 1e6:.2f} MB; {', '.join(extras)})")
        show_parity(manifest.onnx_max_abs_diff, manifest.onnx_parity)
    zero = manifest.zero_filters
    if zero:
        worst = sorted(zero, key=zero.__getitem__, reverse=True)
        named = ", ".join(f"{name} {zero[name]}" for name in worst[:3]) + (", ..." if len(worst) > 3 else "")
        ui.status(f"all-zero filters: {sum(zero.values())} in {len(zero)} layers ({named})")
    else:
        ui.status("all-zero filters: none")
    shrink = manifest.shrink
    if shrink is not None:
        if shrink.status != "shrunk":
            ui.plain(f"• shrink: {shrink.reason}")  # plain: the reason may quote a user's error text
            return
        removed = sum(shrink.removed_channels.values())
        ui.success(
            f"shrunk {shrink.onnx} ({shrink.onnx_bytes / 1e6:.2f} MB): {removed} channels removed in "
            f"{len(shrink.removed_channels)} layers; params {shrink.params_before:,} -> {shrink.params_after:,} "
            f"({shrink.params_after / max(1, shrink.params_before):.1%}), FLOPs {shrink.flops_before / 1e6:,.1f}M -> "
            f"{shrink.flops_after / 1e6:,.1f}M ({shrink.flops_after / max(1, shrink.flops_before):.1%}); "
            f"PyTorch max abs diff {shrink.max_abs_diff:.2e}"
        )
        show_parity(shrink.onnx_max_abs_diff, shrink.onnx_parity)


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
