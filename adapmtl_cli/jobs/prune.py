"""The ``prune`` job end to end: check, write the run's setup, score the dense model, prune, fine-tune, report.

What the CLI's ``prune`` and ``resume`` call. The pruning itself is the public API's ``Pruning``
(``adapmtl_cli.api``), trained by ``train.loop.finetune``; this job adds the data, the evaluation, the run folder,
resume and torchrun around it. Progress reaches the caller through ``Hooks``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapmtl_cli.api import Pruning
from adapmtl_cli.config import PruneConfig, RunReport
from adapmtl_cli.data import get_dataset
from adapmtl_cli.errors import ConfigError, TrainingError
from adapmtl_cli.export.dense import weights_bytes
from adapmtl_cli.files.atomic import append_jsonl, write_bytes, write_model, write_text
from adapmtl_cli.files.reading import read_json_object, read_jsonl, read_model
from adapmtl_cli.files.rundir import RunDir, claim_run_dir
from adapmtl_cli.jobs.config_file import sync_run_config_toml
from adapmtl_cli.jobs.prepare import Hooks, Prepared, components_manifest, prepare_from, prepare_pruning
from adapmtl_cli.jobs.run_inputs import check_checkpoint_identity, record_inputs
from adapmtl_cli.methods import check_method_options, needs_calibration
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES
from adapmtl_cli.report.build import build_report
from adapmtl_cli.report.chance import constant_metrics
from adapmtl_cli.train.batches import check_batch_size, to_device, train_batches
from adapmtl_cli.train.device import autocast_dtype, resolve_device
from adapmtl_cli.train.distributed import (
    World,
    agree,
    mark_rank_copy,
    process_group,
    rank_device,
    reports_error,
    run_on_main,
    world_from_env,
)
from adapmtl_cli.train.evaluate import Evaluation, evaluate_with_diagnostics
from adapmtl_cli.train.events import Rollback, StepInfo
from adapmtl_cli.train.loop import LoopHooks, LoopState, TrainConfig, finetune, seed_streams_
from adapmtl_cli.train.state_files import load_state, save_state

Metrics = dict[str, dict[str, float]]


def _state_dict_for_save(state: LoopState) -> dict[str, Any]:
    return {
        "step": state.step,
        "optimizer": state.optimizer,
        "weighting": state.weighting,
        "model": state.model,
        "rng": state.rng,
        "elapsed": state.elapsed,
        "rollbacks": state.rollbacks,
        "scaler": state.scaler,
        "task_weights": state.task_weights,
    }


def _load_state(run: RunDir, hooks: Hooks) -> LoopState | None:
    """The newest intact saved state (checksum verified; a damaged latest falls back to prev), told to the user."""
    loaded = load_state(run, lambda raw: LoopState(**raw))
    damaged = "; ".join(loaded.rejected)
    if loaded.value is None:
        if damaged:
            hooks.status(f"no usable saved state ({damaged}); starting the fine-tuning from step 0")
        else:
            hooks.status("no saved state found; starting the fine-tuning from step 0")
        return None
    assert loaded.path is not None
    note = "" if loaded.verified else " (saved without a checksum)"
    text = f"resuming from state/{loaded.path.name} at step {loaded.value.step}{note}"
    hooks.status(f"{text}; not used: {damaged}" if damaged else text)
    return loaded.value


_LOG_HINT = "remove that line (or the whole log) and resume again"


def _truncate_metrics(run: RunDir, step: int) -> None:
    """Drop log lines past the state we resume from: those steps run again and are logged again.

    Raises:
        ConfigError: the log holds a line that is not a record of a step (named with its line number).
    """
    records = read_jsonl(run.metrics, ConfigError, "training log", _LOG_HINT)
    for number, record in enumerate(records, start=1):
        if type(record.get("step", 0)) is not int:
            raise ConfigError(
                f"record {number} of training log {str(run.metrics)!r} has step {record['step']!r}, not a whole "
                f"number; {_LOG_HINT}"
            )
    kept = [r for r in records if r.get("step", 0) <= step]
    write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in kept))


def _save_state(run: RunDir, state: LoopState) -> None:
    save_state(run, _state_dict_for_save(state))


def resume_prune(run: Path, *, trust_pickle: bool = False, hooks: Hooks | None = None) -> RunReport:
    """The ``resume`` command: continue the run in ``run`` with the options saved in its ``config.json``.

    The same job as ``prune --resume``; the folder may have been moved since it was written.
    """
    rd = RunDir(Path(run))
    if not rd.is_run():
        raise ConfigError(
            f"{str(run)!r} holds no run to resume (no config.json); pass a folder written by `adapmtl prune`"
        )
    saved = read_model(rd.config, PruneConfig)
    cfg = saved.model_copy(update={"out": str(run), "trust_pickle": trust_pickle})
    return run_prune(cfg, resume=True, hooks=hooks)


def run_prune(
    cfg: PruneConfig, *, resume: bool = False, overwrite: bool = False, hooks: Hooks | None = None
) -> RunReport:
    """The ``prune`` command: fine-tune with soft thresholds to ``cfg.sparsity`` and write the run folder.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this: each trains a DDP copy on its share of
    every global batch, rank 0 alone writes the run folder and reports progress (``hooks`` are silent on the
    others), and every rank returns rank 0's report.

    Raises:
        AdapmtlError subclasses for every user-fixable problem; ``KeyboardInterrupt`` after saving state.
    """
    hooks = hooks or Hooks()
    world = world_from_env()
    if not world.distributed:
        return _prune(cfg, resume, overwrite, hooks, world)
    with process_group(world, _device_type(cfg, resume)) as world:
        return _prune(cfg, resume, overwrite, hooks if world.is_main else Hooks(), world)


def _device_type(cfg: PruneConfig, resume: bool) -> str:
    """The kind of device the run will train on, which picks the process group's backend."""
    name = cfg.device
    if resume and RunDir(Path(cfg.out)).is_run():
        try:
            name = read_model(RunDir(Path(cfg.out)).config, PruneConfig).device
        except ConfigError:
            pass
    try:
        return resolve_device(name).type
    except ConfigError:
        return "cpu"  # the same error comes again once the group is up, where all ranks agree on it


@dataclass
class _Job:
    """One ``prune`` run: its resolved config, folder, device, prepared model and data."""

    cfg: PruneConfig
    run: RunDir
    device: torch.device
    prepared: Prepared
    resume: bool
    hooks: Hooks
    world: World
    saved_step: int | None = None
    """The step of the newest state saved (or resumed from), for the message of an interruption."""
    earlier_seconds: float = 0.0
    """Training time of the earlier processes of a resumed run (the report's wall time includes it)."""

    def on_main(self, fn: Callable[[], Any]) -> Any:
        return run_on_main(self.world, fn)

    def evaluate(self, model: nn.Module, label: str) -> Evaluation:
        """The model's metrics on the validation split, with its meters' diagnostics (not metrics) beside them."""
        split = "validation" if self.cfg.eval_split == "val" else self.cfg.eval_split
        self.hooks.status(f"evaluating the {label} model on the {split} split")
        # Random draws while evaluating (a dataset's augmentation) depend on the seed alone, not on what ran before.
        seed_streams_("evaluate", self.cfg.seed, label)
        cb = self.hooks.on_eval
        return evaluate_with_diagnostics(
            model,
            self.prepared.val,
            self.prepared.tasks,
            self.prepared.mapping,
            self.device,
            self.cfg.batch_size,
            self.cfg.eval_batches,
            on_batch=(lambda i, n: cb(label, i, n)) if cb is not None else None,
            precision=self.cfg.precision,
        )


def _check_and_prepare(cfg: PruneConfig, run: RunDir, resume: bool, hooks: Hooks, world: World) -> _Job:
    """Check everything that can be checked before the run folder gets its config: a run that fails here leaves
    nothing behind, so the corrected command is not refused as "folder already holds a run"."""
    if resume:
        saved = read_model(run.config, PruneConfig)
        if saved.trust_pickle and not cfg.trust_pickle:
            # A run folder may come from someone else: its config must not unpickle anything on its own.
            raise ConfigError(
                f"the run in {str(run.root)!r} was made with --trust-pickle: resuming unpickles "
                f"{saved.checkpoint!r} again, which runs code from it; pass --trust-pickle if you trust it"
            )
        cfg = saved
        check_checkpoint_identity(cfg, "resume")
    get_dataset(cfg.data, cfg.data_options)
    device = rank_device(resolve_device(cfg.device), world)
    autocast_dtype(cfg.precision, device.type)
    check_batch_size(cfg.batch_size, None, world)
    torch.manual_seed(cfg.seed)
    prepared = prepare_from(cfg, hooks)
    check_batch_size(cfg.batch_size, len(prepared.train), world)  # type: ignore[arg-type]
    sizes = {c.name: c.prunable_params for c in prepared.cmap.components if c.prunable_params}
    check_method_options(
        cfg.method,
        layer_scale=cfg.layer_scale,
        bounds=cfg.component_sparsity,
        sizes=sizes,
        sparsity=cfg.sparsity,
        allocation=cfg.allocation,
        structure=cfg.structure,
        target=cfg.target,
        settle=cfg.settle,
    )
    return _Job(cfg, run, device, prepared, resume, hooks, world)


def _write_setup(job: _Job) -> None:
    if not job.resume:
        write_model(job.run.config, job.cfg)
    # config.toml mirrors config.json so `adapmtl prune --config RUN/config.toml` repeats the run.
    sync_run_config_toml(job.run.root)
    write_model(job.run.components, components_manifest(job.prepared))


def _saved_dense_metrics(job: _Job) -> Metrics | None:
    """The dense metrics a resumed run wrote before; ``None`` (said to the user) when missing or damaged.

    They are scored again then: the dense model and the validation split are the ones the run started from.
    """
    path = job.run.dense_metrics
    if not path.is_file():
        return None
    problem = None
    try:
        saved = read_json_object(path, ConfigError, "dense metrics", "scoring the dense model again")
    except ConfigError as exc:
        problem = str(exc)
    else:
        names = {t.name for t in job.prepared.tasks}
        if set(saved) == names and all(_is_metric_table(saved[name]) for name in names):
            return saved
        problem = f"dense metrics {str(path)!r} do not hold a number per metric of tasks {sorted(names)!r}"
        problem += "; scoring the dense model again"
    job.hooks.status(problem)
    return None


def _is_metric_table(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()
    )


def _dense_metrics(job: _Job, model: nn.Module) -> Metrics:
    """The dense model's validation metrics, computed once per run folder (a resume reads them back)."""
    saved = _saved_dense_metrics(job) if job.resume else None
    if saved is not None:
        return {task: {m: float(v) for m, v in values.items()} for task, values in saved.items()}
    metrics = job.evaluate(model, "dense").metrics
    write_text(job.run.dense_metrics, json.dumps(metrics, indent=2) + "\n")
    return metrics


def _pruning(job: _Job, model: nn.Module) -> Pruning:
    """The library's ``prepare`` with the run's options; calibration batches come from the train split."""
    cfg, p = job.cfg, job.prepared
    if needs_calibration(cfg.method, cfg.layer_scale, cfg.structure):
        job.hooks.status(f"scoring the weights by task saliency on {CALIBRATION_BATCHES} training batches")
    batches = (to_device(b, job.device) for b in train_batches(p.train, cfg.batch_size, cfg.seed + 1, 0))
    return prepare_pruning(p, model, cfg, calibration=batches)


def _loop_hooks(job: _Job) -> LoopHooks:
    """The loop's callbacks: metrics lines, state files and rollback notes, written by rank 0."""
    run = job.run

    def on_rollback(event: Rollback) -> None:
        def write() -> None:
            # The steps after event.step run again and are logged again, as after a resume.
            _truncate_metrics(run, event.step)
            append_jsonl(run.metrics, event.record())
            job.hooks.status(
                f"{event.reason}; rolled back to step {event.step} and halved the learning rates "
                f"(rollback {event.attempt} of at most {event.max_attempts})"
            )

        job.on_main(write)

    return LoopHooks(
        on_step=job.hooks.on_step,
        on_log=lambda info: job.on_main(lambda: append_jsonl(run.metrics, info.record())),
        on_save=lambda s: _saved(job, s),
        on_rollback=on_rollback,
    )


def _saved(job: _Job, state: LoopState) -> None:
    job.on_main(lambda: _save_state(job.run, state))
    job.saved_step = state.step


def _fine_tune(job: _Job, pruning: Pruning) -> StepInfo:
    cfg, world = job.cfg, job.world
    state = agree(world, lambda: _load_state(job.run, job.hooks) if job.resume else None)
    if state is not None:
        job.saved_step, job.earlier_seconds = state.step, state.elapsed
    if job.resume:
        job.on_main(lambda: _truncate_metrics(job.run, state.step if state is not None else 0))
    if state is not None and state.step >= cfg.steps:
        job.hooks.status(f"run already finished {state.step} steps; rebuilding its outputs")
    where = f"{job.device}" if not world.distributed else f"{world.world_size} processes ({job.device.type})"
    job.hooks.status(f"fine-tuning {cfg.steps} steps to {cfg.sparsity:.1%} sparsity on {where}")
    return finetune(
        pruning,
        job.prepared.train,
        job.prepared.tasks,
        TrainConfig.of(cfg),
        device=job.device,
        world=world,
        resume=state,
        hooks=_loop_hooks(job),
    )


def _finish(job: _Job, pruning: Pruning, model: nn.Module, dense: Metrics, last: StepInfo, started: float) -> RunReport:
    """Score the pruned model, write its weights and the report."""
    evaluation = job.evaluate(model, "pruned")
    pruned = evaluation.metrics
    _check_finite(pruned)
    write_bytes(job.run.weights, weights_bytes(model.state_dict(), metadata={"format": "pt"}))
    p, cfg = job.prepared, job.cfg
    # What a constant prediction scores on the same split: a dense model at that level learned nothing to keep.
    chance = constant_metrics(
        p.train, p.val, p.tasks, batch_size=cfg.batch_size, max_batches=cfg.eval_batches, seed=cfg.seed
    )
    report = build_report(
        job.cfg,
        pruning,
        job.prepared.tasks,
        dense,
        pruned,
        task_weights=last.task_weights,
        wall=time.perf_counter() - started + job.earlier_seconds,
        diagnostics=evaluation.diagnostics,
        chance=chance,
    )
    write_model(job.run.report, report)
    return report


def _prune(cfg: PruneConfig, resume: bool, overwrite: bool, hooks: Hooks, world: World) -> RunReport:
    # Rank 0 holds the run folder's lock until the run ends: a second prune/resume/export of it is refused.
    with ExitStack() as held:

        def claim() -> RunDir:
            return held.enter_context(claim_run_dir(Path(cfg.out), resume=resume, overwrite=overwrite))

        return _prune_claimed(cfg, resume, hooks, world, claim)


def _prune_claimed(
    cfg: PruneConfig, resume: bool, hooks: Hooks, world: World, claim: Callable[[], RunDir]
) -> RunReport:
    started = time.perf_counter()
    fresh = not Path(cfg.out).exists()
    if not resume:  # a resumed run keeps what its config.json recorded
        cfg = record_inputs(cfg)
    run = run_on_main(world, claim)
    try:
        job = agree(world, lambda: _check_and_prepare(cfg, run, resume, hooks, world))
    except BaseException as exc:
        if world.is_main and fresh and run.root.is_dir() and not any(run.root.iterdir()):
            run.root.rmdir()
        if isinstance(exc, KeyboardInterrupt):
            kept = (
                f"its saved state is kept: continue with `adapmtl resume {run.root}`" if resume else "nothing was saved"
            )
            raise _interrupted(exc, f"{str(exc) or 'interrupted before the run started'}; {kept}") from None
        raise
    try:
        job.on_main(lambda: _write_setup(job))
        model = job.prepared.loaded.model.to(job.device)
        # Evaluation (in eval mode, under no_grad) changes no weight or buffer, so rank 0 alone can do it.
        dense = job.on_main(lambda: _dense_metrics(job, model))
        pruning = _pruning(job, model)
        last = _fine_tune(job, pruning)
        model = pruning.finalize()
        return job.on_main(lambda: _finish(job, pruning, model, dense, last, started))
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, _interrupt_message(job)) from None


def _interrupt_message(job: _Job) -> str:
    """What an interruption kept and how to go on: ``adapmtl resume RUN`` and the step it continues from."""
    root = job.run.root
    if job.saved_step is not None:
        return f"interrupted; the state saved at step {job.saved_step} is kept: continue with `adapmtl resume {root}`"
    if job.run.config.is_file():
        return f"interrupted before the first state was saved; `adapmtl resume {root}` starts again from step 0"
    return "interrupted before the run started; nothing was saved"


def _interrupted(exc: KeyboardInterrupt, message: str) -> KeyboardInterrupt:
    """``KeyboardInterrupt(message)``, still marked as another rank's copy when ``exc`` was one."""
    new = KeyboardInterrupt(message)
    return new if reports_error(exc) else mark_rank_copy(new)


def _check_finite(metrics: Metrics) -> None:
    bad = [f"{t}.{m}" for t, ms in metrics.items() for m, v in ms.items() if not math.isfinite(v)]
    if bad:
        raise TrainingError(f"the pruned model gives non-finite metrics ({', '.join(bad)}); lower --lr or --sparsity")
