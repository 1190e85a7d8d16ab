"""``adapmtl inspect``, ``prune`` and ``resume``: plan a pruning run, run it, continue it.

Each command resolves its options into a ``PruneConfig`` (typed options over ``--config`` over the config's
defaults), calls one job and renders what it returns. The options and their defaults live in ``options.py``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from adapmtl_cli.cli import options as o

INSPECT_EPILOG = "Example: adapmtl inspect model.pt --factory my_models.py:build --data synthetic --data-dir ./scenes"
PRUNE_EPILOG = (
    "Example: adapmtl prune model.pt --factory my_models.py:build --data synthetic --data-dir ./scenes "
    "--sparsity 0.9 --steps 300 --out runs/a"
)
RESUME_EPILOG = "Example: adapmtl resume runs/a"


def inspect(
    ctx: typer.Context,
    checkpoint: Path | None = o.CHECKPOINT,
    factory: str | None = o.FACTORY,
    trust_pickle: bool = o.TRUST,
    data: str = o.DATA,
    data_dir: Path | None = o.DATA_DIR,
    layout: str | None = o.LAYOUT,
    augment: bool | None = o.AUGMENT,
    data_opt: list[str] | None = o.DATA_OPT,
    tasks: list[str] | None = o.TASKS,
    outputs: list[str] | None = o.OUTPUTS,
    exclude: list[str] | None = o.EXCLUDE,
    backbone: list[str] | None = o.BACKBONE,
    head: list[str] | None = o.HEAD,
    method: str | None = o.PLANNED_METHOD,
    layer_scale: str | None = o.PLANNED_LAYER_SCALE,
    batch_size: int | None = o.PLANNED_BATCH_SIZE,
    steps: int | None = o.PLANNED_STEPS,
    device: str | None = o.PLANNED_DEVICE,
    config: Path | None = o.PLANNED_CONFIG,
    estimate: bool = o.ESTIMATE,
    as_json: bool = o.AS_JSON,
) -> None:
    """Dry run: which weights are shared and which belong to each task head, what stays unpruned and why, and
    the time per step and peak memory of the planned run, measured on one real batch."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.preflight import check_prune_inputs
    from adapmtl_cli.jobs.config_file import resolve_prune_config

    given = {k: v for k, v in o.typed_options(ctx).items() if k not in ("as_json", "estimate")}
    cfg, _ = resolve_prune_config(given, config, fallback={"out": "-"})  # inspect writes no run folder
    check_prune_inputs(cfg)  # before torch loads
    from adapmtl_cli.jobs.inspect import estimate_step, not_pruned
    from adapmtl_cli.jobs.prepare import components_manifest, prepare_from
    from adapmtl_cli.report.terminal import components_renderable

    prepared = prepare_from(cfg)
    manifest = components_manifest(prepared)
    if as_json:
        ui.plain(manifest.model_dump_json(indent=2))
        return
    step = None
    if estimate:
        with ui.spinner(f"timing {cfg.method} training steps at batch size {cfg.batch_size}"):
            step = estimate_step(prepared, cfg)
    ui.show(components_renderable(manifest, not_pruned(prepared), step))


def prune(
    ctx: typer.Context,
    checkpoint: Path | None = o.CHECKPOINT,
    out: Path | None = o.OUT,
    factory: str | None = o.FACTORY,
    trust_pickle: bool = o.TRUST,
    data: str = o.DATA,
    data_dir: Path | None = o.DATA_DIR,
    layout: str | None = o.LAYOUT,
    augment: bool | None = o.AUGMENT,
    data_opt: list[str] | None = o.DATA_OPT,
    tasks: list[str] | None = o.TASKS,
    outputs: list[str] | None = o.OUTPUTS,
    sparsity: float = o.SPARSITY,
    steps: int = o.STEPS,
    batch_size: int = o.BATCH_SIZE,
    lr: float = o.LR,
    threshold_lr: float = o.THRESHOLD_LR,
    method: str = o.METHOD,
    component_sparsity: list[str] | None = o.COMPONENT_SPARSITY,
    weighting: str | None = o.WEIGHTING,
    layer_scale: str | None = o.LAYER_SCALE,
    allocation: str | None = o.ALLOCATION,
    settle: str | None = o.SETTLE,
    structure: str | None = o.STRUCTURE,
    target: str | None = o.TARGET,
    seed: int = o.SEED,
    device: str = o.DEVICE,
    precision: str = o.PRECISION,
    exclude: list[str] | None = o.EXCLUDE,
    backbone: list[str] | None = o.BACKBONE,
    head: list[str] | None = o.HEAD,
    save_every: int = o.SAVE_EVERY,
    log_every: int = o.LOG_EVERY,
    eval_batches: int | None = o.EVAL_BATCHES,
    eval_split: str = o.EVAL_SPLIT,
    num_workers: int = o.WORKERS,
    workers: int | None = o.OLD_WORKERS,
    resume: bool = o.RESUME,
    overwrite: bool = o.OVERWRITE,
    quiet: bool = o.QUIET,
    log_format: str = o.LOG_FORMAT,
    tensorboard: Path | None = o.TENSORBOARD,
    config: Path | None = o.CONFIG,
    print_config: bool = o.PRINT_CONFIG,
) -> None:
    """Prune CHECKPOINT to --sparsity with AdapMTL and write a run folder (see `adapmtl report`)."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.preflight import check_prune_inputs
    from adapmtl_cli.jobs.config_file import prune_config_toml, resolve_prune_config

    for note in o.deprecation_notes(ctx):
        ui.warn(note)
    cfg, session = resolve_prune_config(o.typed_options(ctx), config)
    if print_config:
        ui.plain(prune_config_toml(cfg))
        return
    check_prune_inputs(cfg, resume=session.resume)  # before torch loads
    from adapmtl_cli.jobs.prepare import Hooks
    from adapmtl_cli.jobs.prune import run_prune
    from adapmtl_cli.report.terminal import terminal_renderable
    from adapmtl_cli.report.views import load_runs
    from adapmtl_cli.train.distributed import is_main_process

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
            ui.show(terminal_renderable(load_runs([Path(cfg.out)])))  # as `adapmtl report` shows it
        ui.success(f"run written to {cfg.out}  (next: adapmtl report {cfg.out}; adapmtl export {cfg.out} --onnx)")


def resume(
    run: Path = typer.Argument(..., help="Run folder written by `adapmtl prune` (interrupted or finished)."),
    trust_pickle: bool = typer.Option(
        False, "--trust-pickle", help="Needed again when the run was made with --trust-pickle."
    ),
    quiet: bool = o.QUIET,
) -> None:
    """Continue an interrupted `adapmtl prune` run from its last intact saved state, with its saved options."""
    from adapmtl_cli.cli import ui
    from adapmtl_cli.cli.preflight import check_run_folders

    check_run_folders([run])  # before torch loads
    from adapmtl_cli.jobs.prepare import Hooks
    from adapmtl_cli.jobs.prune import resume_prune
    from adapmtl_cli.report.terminal import terminal_renderable
    from adapmtl_cli.report.views import load_runs
    from adapmtl_cli.train.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 alone shows progress and the report
        resume_prune(run, trust_pickle=trust_pickle, hooks=Hooks())
        return
    with ui.TrainingProgress(quiet) as progress:
        hooks = Hooks(status=progress.status, on_step=progress.on_step, on_eval=progress.on_eval)
        resume_prune(run, trust_pickle=trust_pickle, hooks=hooks)
    if not quiet:
        ui.show(terminal_renderable(load_runs([run])))  # as `adapmtl report` shows it
    ui.success(f"run written to {run}  (next: adapmtl report {run}; adapmtl export {run} --onnx)")
