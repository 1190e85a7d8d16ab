"""The ``inspect`` and ``prune`` jobs end to end: load, open data, map outputs, discover, fine-tune, bake, score.

Each public function is what one CLI command calls; progress reaches the caller through ``Hooks``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from adapmtl_cli.config import (
    ComponentEntry,
    ComponentsManifest,
    ComponentSparsity,
    DeltaTEntry,
    LayerEntry,
    LayerSparsity,
    PruneConfig,
    RunReport,
    ScoreEntry,
    TaskMetrics,
)
from adapmtl_cli.data import get_dataset
from adapmtl_cli.errors import ConfigError, DataError, DiscoveryError, TrainingError
from adapmtl_cli.files.rundir import (
    RunDir,
    append_jsonl,
    prepare_run_dir,
    read_jsonl,
    read_model,
    write_bytes,
    write_model,
    write_text,
)
from adapmtl_cli.jobs.config_file import sync_run_config_toml
from adapmtl_cli.methods import DEFAULT_LAYER_SCALE, DEFAULT_WEIGHTING, MethodContext, build_pruner
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES
from adapmtl_cli.methods.weighting import make_weighting
from adapmtl_cli.model.discover import ComponentMap, discover_components, parse_head_overrides
from adapmtl_cli.model.loading import LoadedModel, load_model
from adapmtl_cli.model.outputs import OutputMapping, map_outputs
from adapmtl_cli.sparsity.schedule import check_bounds
from adapmtl_cli.tasks import match_task
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.tasks.scores import SCORE_CONVENTIONS, delta_m, delta_p, delta_t
from adapmtl_cli.train.distributed import (
    World,
    agree,
    check_batch_size,
    process_group,
    rank_device,
    run_on_main,
    world_from_env,
)
from adapmtl_cli.train.loop import (
    LoopState,
    Rollback,
    StepInfo,
    autocast_dtype,
    evaluate,
    finetune,
    resolve_device,
    to_device,
    train_batches,
)
from adapmtl_cli.train.state_files import load_state, save_state


@dataclass
class Hooks:
    """Callbacks the CLI turns into status lines and progress bars; all optional."""

    status: Callable[[str], None] = lambda msg: None
    on_step: Callable[[StepInfo], None] | None = None
    on_eval: Callable[[str, int, int], None] | None = None


@dataclass
class Prepared:
    """A loaded model with its data, tasks, output mapping and component map."""

    loaded: LoadedModel
    tasks: list[TaskSpec]
    train: Dataset
    val: Dataset
    mapping: OutputMapping
    cmap: ComponentMap
    input_shape: tuple[int, ...]


def select_tasks(available: Sequence[TaskSpec], wanted: Sequence[str] | None) -> list[TaskSpec]:
    if not wanted:
        return list(available)
    by_name = {t.name: t for t in available}
    out = []
    for name in wanted:
        canon = match_task(name, list(by_name))
        if canon is None:
            raise ConfigError(f"--tasks names {name!r}; this dataset has {', '.join(by_name)}")
        out.append(by_name[canon])
    return out


def check_method_options(cfg: PruneConfig, prepared: Prepared) -> None:
    """Refuse ``--component-sparsity`` the method cannot honour or no split can meet, and ``--layer-scale`` for a
    method without thresholds, before the run folder."""
    if cfg.layer_scale is not None and DEFAULT_LAYER_SCALE[cfg.method] is None:
        raise ConfigError(
            f"--layer-scale scales learned thresholds (--method adapmtl, str_global or str_layer); --method "
            f"{cfg.method} prunes with masks"
        )
    if not cfg.component_sparsity:
        return
    if cfg.method != "adapmtl":
        raise ConfigError(
            f"--component-sparsity needs one learned threshold per component (--method adapmtl); "
            f"--method {cfg.method} has none"
        )
    sizes = {c.name: c.prunable_params for c in prepared.cmap.components if c.prunable_params}
    check_bounds(cfg.component_sparsity, sizes, cfg.sparsity)


def only_tasks(dataset: Any, specs: Sequence[TaskSpec]) -> Any:
    """The dataset narrowed to the selected tasks when it can skip the others' files (``select(names)``)."""
    select = getattr(dataset, "select", None)
    return select([t.name for t in specs]) if callable(select) else dataset


def prepare(
    checkpoint: str,
    *,
    factory: str | None,
    trust_pickle: bool,
    data: str,
    data_dir: str,
    data_options: Mapping[str, str] | None = None,
    tasks: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    backbone: Sequence[str] = (),
    head: Sequence[str] = (),
    hooks: Hooks | None = None,
) -> Prepared:
    """Everything up to (and including) component discovery; no training."""
    hooks = hooks or Hooks()
    hooks.status(f"loading {checkpoint}")
    loaded = load_model(Path(checkpoint), factory=factory, trust_pickle=trust_pickle)
    adapter = get_dataset(data, data_options)
    root = Path(data_dir)
    specs = select_tasks(adapter.tasks(root), tasks)
    train = only_tasks(adapter.open(root, "train"), specs)
    val = only_tasks(adapter.open(root, "val"), specs)
    if len(train) < 1:  # type: ignore[arg-type]
        raise DataError(f"{data_dir!r} has an empty train split")
    probe = [train[i] for i in range(min(2, len(train)))]  # type: ignore[arg-type]
    x = torch.stack([p[0] for p in probe])
    y = {t.name: torch.stack([p[1][t.name] for p in probe]) for t in specs}
    model = loaded.model.eval()
    hooks.status("probing the model's outputs")
    try:
        raw = model(x)
    except Exception as exc:
        raise DiscoveryError(
            f"the model's forward failed on a batch of shape {tuple(x.shape)} from {data_dir!r}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from exc
    mapping = map_outputs(raw, specs, batch=x.shape[0], names=outputs)
    preds = mapping.select(raw)
    for t in specs:
        loss = t.loss(preds[t.name], y[t.name])
        if not torch.isfinite(loss):
            raise DiscoveryError(f"task {t.name!r} gives a non-finite loss on the first batch; check the model")
    names = [t.name for t in specs]
    cmap = discover_components(
        model,
        preds,
        names,
        exclude=exclude,
        backbone=backbone,
        heads=parse_head_overrides(head, names),
    )
    return Prepared(loaded, specs, train, val, mapping, cmap, tuple(x.shape[1:]))


def components_manifest(p: Prepared) -> ComponentsManifest:
    model = p.loaded.model
    return ComponentsManifest(
        tasks=[t.name for t in p.tasks],
        outputs=p.mapping.describe(),
        output_paths={t: list(path) for t, path in p.mapping.paths.items()},
        output_mapping=p.mapping.how,
        components=[
            ComponentEntry(
                name=c.name,
                kind=c.kind,  # type: ignore[arg-type]
                tasks=list(c.tasks),
                modules=list(c.modules),
                params=c.params,
                prunable_params=c.prunable_params,
            )
            for c in p.cmap.components
        ],
        layers=[LayerEntry(name=x.fqn, component=x.component, type=x.kind, params=x.params) for x in p.cmap.layers],
        unreached=list(p.cmap.unreached),
        excluded=list(p.cmap.excluded),
        prunable_params=p.cmap.prunable_params,
        total_params=sum(q.numel() for q in model.parameters()),
        input_shape=list(p.input_shape),
    )


def prepare_from(cfg: PruneConfig, hooks: Hooks | None = None) -> Prepared:
    """``prepare`` with the loading, data and mapping options of a resolved ``PruneConfig``."""
    return prepare(
        cfg.checkpoint,
        factory=cfg.factory,
        trust_pickle=cfg.trust_pickle,
        data=cfg.data,
        data_dir=cfg.data_dir,
        data_options=cfg.data_options,
        tasks=cfg.tasks,
        outputs=cfg.outputs,
        exclude=cfg.exclude,
        backbone=cfg.backbone,
        head=cfg.head,
        hooks=hooks,
    )


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


def weighting_name(cfg: PruneConfig) -> str:
    """``--weighting`` if given, else the method's own default (adaptive for AdapMTL, equal for baselines)."""
    return cfg.weighting or DEFAULT_WEIGHTING[cfg.method]


def layer_scale_name(cfg: PruneConfig) -> str | None:
    """``--layer-scale`` if given, else the method's own default; None for methods without thresholds."""
    default = DEFAULT_LAYER_SCALE[cfg.method]
    return (cfg.layer_scale or default) if default is not None else None


def _task_losses(
    module: nn.Module, batch: tuple[torch.Tensor, dict[str, torch.Tensor]], prepared: Prepared
) -> dict[str, torch.Tensor]:
    x, y = batch
    preds = prepared.mapping.select(module(x))
    return {t.name: t.loss(preds[t.name], y[t.name]) for t in prepared.tasks}


def _truncate_metrics(run: RunDir, step: int) -> None:
    """Drop log lines past the state we resume from: those steps run again and are logged again."""
    records = [r for r in read_jsonl(run.metrics) if int(r.get("step", 0)) <= step]
    write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in records))


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


def _prune(cfg: PruneConfig, resume: bool, overwrite: bool, hooks: Hooks, world: World) -> RunReport:
    started = time.perf_counter()
    fresh = not Path(cfg.out).exists()
    run = run_on_main(world, lambda: prepare_run_dir(Path(cfg.out), resume=resume, overwrite=overwrite))

    def setup() -> tuple[PruneConfig, torch.device, Prepared]:
        # Check everything that can be checked before the run folder gets its config: a run that fails here
        # leaves nothing behind, so the corrected command is not refused as "folder already holds a run".
        resolved = cfg
        if resume:
            saved = read_model(run.config, PruneConfig)
            if saved.trust_pickle and not cfg.trust_pickle:
                # A run folder may come from someone else: its config must not unpickle anything on its own.
                raise ConfigError(
                    f"the run in {str(run.root)!r} was made with --trust-pickle: resuming unpickles "
                    f"{saved.checkpoint!r} again, which runs code from it; pass --trust-pickle if you trust it"
                )
            resolved = saved
        get_dataset(resolved.data, resolved.data_options)
        device = rank_device(resolve_device(resolved.device), world)
        autocast_dtype(resolved.precision, device.type)
        check_batch_size(resolved.batch_size, world)
        torch.manual_seed(resolved.seed)
        prepared = prepare_from(resolved, hooks)
        if len(prepared.train) < resolved.batch_size:  # type: ignore[arg-type]
            raise ConfigError(
                f"--batch-size {resolved.batch_size} is larger than the train split ({len(prepared.train)} "  # type: ignore[arg-type]
                "samples); lower --batch-size"
            )
        check_method_options(resolved, prepared)
        return resolved, device, prepared

    try:
        cfg, device, prepared = agree(world, setup)
    except BaseException:
        if world.is_main and fresh and run.root.is_dir() and not any(run.root.iterdir()):
            run.root.rmdir()
        raise

    def write_setup() -> None:
        if not resume:
            write_model(run.config, cfg)
        # config.toml mirrors config.json so `adapmtl prune --config RUN/config.toml` repeats the run.
        sync_run_config_toml(run.root)
        write_model(run.components, components_manifest(prepared))

    run_on_main(world, write_setup)
    model = prepared.loaded.model.to(device)

    def evaluate_val(evaluated: nn.Module, label: str) -> dict[str, dict[str, float]]:
        hooks.status(f"evaluating the {label} model on the validation split")
        return evaluate(
            evaluated,
            prepared.val,
            prepared.tasks,
            prepared.mapping,
            device,
            cfg.batch_size,
            cfg.eval_batches,
            on_batch=_eval_cb(hooks, label),
            precision=cfg.precision,
        )

    def dense() -> dict[str, dict[str, float]]:
        if resume and run.dense_metrics.is_file():
            return json.loads(run.dense_metrics.read_text())  # type: ignore[no-any-return]
        metrics = evaluate_val(model, "dense")
        write_text(run.dense_metrics, json.dumps(metrics, indent=2) + "\n")
        return metrics

    # Evaluation (in eval mode, under no_grad) changes no weight or buffer, so rank 0 alone can do it.
    dense_metrics = run_on_main(world, dense)

    if cfg.method == "disparse" or layer_scale_name(cfg) == "saliency":
        hooks.status(f"scoring the weights by task saliency on {CALIBRATION_BATCHES} training batches")
    pruner = build_pruner(
        cfg.method,
        MethodContext(
            model=model,
            cmap=prepared.cmap,
            sparsity=cfg.sparsity,
            steps=cfg.steps,
            ramp_end=cfg.ramp_end,
            calibration=lambda: (
                to_device(b, device) for b in train_batches(prepared.train, cfg.batch_size, cfg.seed + 1, 0)
            ),
            task_losses=lambda module, batch: _task_losses(module, batch, prepared),
            bounds=cfg.component_sparsity,
            layer_scale=cfg.layer_scale,
        ),
    )
    pruner.module.to(device)
    names = [t.name for t in prepared.tasks]
    weighting = make_weighting(weighting_name(cfg), names, cfg.steps)
    state = agree(world, lambda: _load_state(run, hooks) if resume else None)
    if resume:
        run_on_main(world, lambda: _truncate_metrics(run, state.step if state is not None else 0))
    if state is not None and state.step >= cfg.steps:
        hooks.status(f"run already finished {state.step} steps; rebuilding its outputs")

    def on_log(info: StepInfo) -> None:
        run_on_main(world, lambda: append_jsonl(run.metrics, info.record()))

    def on_rollback(event: Rollback) -> None:
        def write() -> None:
            # The steps after event.step run again and are logged again, as after a resume.
            _truncate_metrics(run, event.step)
            append_jsonl(run.metrics, event.record())
            hooks.status(
                f"{event.reason}; rolled back to step {event.step} and halved the learning rates "
                f"(rollback {event.attempt} of at most {event.max_attempts})"
            )

        run_on_main(world, write)

    where = f"{device}" if not world.distributed else f"{world.world_size} processes ({device.type})"
    hooks.status(f"fine-tuning {cfg.steps} steps to {cfg.sparsity:.1%} sparsity on {where}")
    last = finetune(
        pruner,
        prepared.train,
        prepared.tasks,
        prepared.mapping,
        device=device,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        threshold_lr=cfg.threshold_lr,
        weighting=weighting,
        seed=cfg.seed,
        log_every=cfg.log_every,
        save_every=cfg.save_every,
        num_workers=cfg.num_workers,
        resume=state,
        precision=cfg.precision,
        world=world,
        on_step=hooks.on_step,
        on_log=on_log,
        on_save=lambda s: run_on_main(world, lambda: _save_state(run, s)),
        on_rollback=on_rollback,
    )

    layer_stats = pruner.measure()
    thresholds = pruner.thresholds()
    model = pruner.bake_()
    _check_baked(model, layer_stats)

    def finish() -> RunReport:
        pruned_metrics = evaluate_val(model, "pruned")
        _check_finite(pruned_metrics)
        from safetensors.torch import save as save_safetensors

        cpu_state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        write_bytes(run.weights, save_safetensors(cpu_state, metadata={"format": "pt"}))
        report = build_report(
            cfg,
            prepared,
            layer_stats,
            thresholds,
            dense_metrics,
            pruned_metrics,
            last,
            time.perf_counter() - started,
        )
        write_model(run.report, report)
        return report

    return run_on_main(world, finish)


def _eval_cb(hooks: Hooks, label: str) -> Callable[[int, int], None] | None:
    if hooks.on_eval is None:
        return None
    cb = hooks.on_eval
    return lambda i, n: cb(label, i, n)


def _check_baked(model: nn.Module, layer_stats: Sequence[Any]) -> None:
    mods = dict(model.named_modules())
    for stat in layer_stats:
        zeros = int((mods[stat.fqn].weight == 0).sum())
        # Weights that were exactly zero before thresholding count as zeros in both views.
        assert zeros == stat.zeros, f"baked {stat.fqn} has {zeros} zeros, thresholded view had {stat.zeros}"


def _check_finite(metrics: dict[str, dict[str, float]]) -> None:
    bad = [f"{t}.{m}" for t, ms in metrics.items() for m, v in ms.items() if not math.isfinite(v)]
    if bad:
        raise TrainingError(f"the pruned model gives non-finite metrics ({', '.join(bad)}); lower --lr or --sparsity")


def build_report(
    cfg: PruneConfig,
    prepared: Prepared,
    layer_stats: Sequence[Any],
    thresholds: dict[str, float],
    dense: dict[str, dict[str, float]],
    pruned: dict[str, dict[str, float]],
    last: StepInfo,
    wall: float,
) -> RunReport:
    comp_of = {layer.fqn: layer.component for layer in prepared.cmap.layers}
    per_comp: dict[str, list[int]] = {}
    for s in layer_stats:
        acc = per_comp.setdefault(comp_of[s.fqn], [0, 0])
        acc[0] += s.zeros
        acc[1] += s.params
    components = []
    for c in prepared.cmap.components:
        zeros, n = per_comp.get(c.name, [0, 0])
        thr = thresholds.get(c.name, thresholds.get("global"))
        components.append(
            ComponentSparsity(
                name=c.name,
                kind=c.kind,
                tasks=list(c.tasks),
                params=n,
                zeros=zeros,
                sparsity=zeros / n if n else 0.0,
                threshold=thr if n else None,
            )
        )
    layers = [
        LayerSparsity(
            name=s.fqn,
            component=comp_of[s.fqn],
            params=s.params,
            zeros=s.zeros,
            sparsity=s.zeros / s.params,
            threshold=s.threshold,  # the layer's own (its group's times its scale); None for mask methods
        )
        for s in layer_stats
    ]
    specs = {t.name: t for t in prepared.tasks}
    dt = delta_t(dense, pruned, specs)
    total = sum(s.params for s in layer_stats)
    zeros = sum(s.zeros for s in layer_stats)
    warnings = []
    if prepared.cmap.unreached:
        warnings.append(f"{len(prepared.cmap.unreached)} modules are reached by no task and were not pruned")
    return RunReport(
        method=cfg.method,
        weighting=weighting_name(cfg),
        layer_scale=layer_scale_name(cfg),
        target_sparsity=cfg.sparsity,
        overall_sparsity=zeros / total,
        prunable_params=total,
        zeros=zeros,
        steps=cfg.steps,
        wall_seconds=wall,
        components=components,
        layers=layers,
        tasks={
            name: TaskMetrics(
                dense=dense[name],
                pruned=pruned[name],
                higher_is_better={m.name: m.higher_is_better for m in specs[name].metrics},
            )
            for name in specs
        },
        delta_t=DeltaTEntry(
            per_task=dt.per_task, overall=dt.overall, convention=dt.convention, skipped=list(dt.skipped)
        ),
        scores=other_scores(dense, pruned, specs),
        task_weights=last.task_weights,
        warnings=warnings,
    )


def other_scores(dense: Any, pruned: Any, specs: dict[str, TaskSpec]) -> dict[str, ScoreEntry]:
    """Δm and Δ_p of the pruned metrics against the dense ones, each with its convention."""
    dp = delta_p(dense, pruned, specs)
    return {
        "delta_m": ScoreEntry(
            overall=delta_m(dense, pruned, specs),
            higher_is_better=SCORE_CONVENTIONS["delta_m"].higher_is_better,
            convention=SCORE_CONVENTIONS["delta_m"].text,
        ),
        "delta_p": ScoreEntry(
            overall=dp.overall,
            per_task=dp.per_task,
            higher_is_better=SCORE_CONVENTIONS["delta_p"].higher_is_better,
            convention=SCORE_CONVENTIONS["delta_p"].text,
        ),
    }


def dense_state_keys(model: nn.Module) -> list[str]:
    return list(model.state_dict().keys())


def probe_batch(dataset: Dataset, n: int, device: torch.device) -> torch.Tensor:
    items = [dataset[i] for i in range(min(n, len(dataset)))]  # type: ignore[arg-type]
    x, _ = to_device((torch.stack([i[0] for i in items]), {}), device)
    return x
