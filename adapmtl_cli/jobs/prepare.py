"""Everything a job does before pruning: load the checkpoint, open the data, map outputs, find the components.

``inspect`` stops here; ``prune`` goes on from the ``Prepared`` it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from adapmtl_cli.api import Discovery, Pruning, discover
from adapmtl_cli.api import prepare as prepare_api
from adapmtl_cli.config import ComponentEntry, ComponentsManifest, LayerEntry, PruneConfig
from adapmtl_cli.data import get_dataset
from adapmtl_cli.errors import ConfigError, DataError, DiscoveryError
from adapmtl_cli.model.discover import ComponentMap
from adapmtl_cli.model.loading import LoadedModel, load_model
from adapmtl_cli.model.outputs import Names, OutputMapping
from adapmtl_cli.tasks import match_task
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.train.events import StepInfo


@dataclass
class Hooks:
    """Callbacks the CLI turns into status lines and progress bars; all optional."""

    status: Callable[[str], None] = lambda msg: None
    on_step: Callable[[StepInfo], None] | None = None
    on_eval: Callable[[str, int, int], None] | None = None


@dataclass
class Prepared:
    """A loaded model with its data, tasks, and what discovery found (output mapping, component map)."""

    loaded: LoadedModel
    tasks: list[TaskSpec]
    train: Dataset
    val: Dataset
    """The split the dense and the pruned model are evaluated on: ``val``, or ``test`` (see ``eval_split``)."""
    discovery: Discovery
    example_input: torch.Tensor
    """The probe batch discovery ran on (two training samples)."""
    eval_split: str = "val"
    """Which split ``val`` holds (``PruneConfig.eval_split``)."""

    @property
    def mapping(self) -> OutputMapping:
        return self.discovery.mapping

    @property
    def cmap(self) -> ComponentMap:
        return self.discovery.cmap

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example_input.shape[1:])


def select_tasks(available: Sequence[TaskSpec], wanted: Sequence[str] | None) -> list[TaskSpec]:
    """The dataset's tasks that ``--tasks`` names (all of them when it is empty), aliases resolved."""
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


def parse_head_overrides(values: Sequence[str], tasks: Sequence[str]) -> dict[str, list[str]]:
    """``["seg=decoder.seg*"]`` -> ``{"segmentation": ["decoder.seg*"]}`` with task aliases resolved."""
    out: dict[str, list[str]] = {}
    for value in values:
        task, sep, pattern = value.partition("=")
        canon = match_task(task, tasks)
        if not sep or not pattern:
            raise ConfigError(f"--head {value!r} must look like TASK=GLOB, e.g. segmentation='heads.seg.*'")
        if canon is None:
            raise ConfigError(f"--head {value!r} names task {task!r}; the tasks are {', '.join(tasks)}")
        out.setdefault(canon, []).append(pattern)
    return out


def only_tasks(dataset: Any, specs: Sequence[TaskSpec]) -> Any:
    """The dataset narrowed to the selected tasks when it can skip the others' files (``select(names)``)."""
    select = getattr(dataset, "select", None)
    return select([t.name for t in specs]) if callable(select) else dataset


def _probe(model: torch.nn.Module, x: torch.Tensor, data_dir: str) -> None:
    """Run the forward once so a failing model is reported with the data it failed on."""
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise DiscoveryError(
            f"the model's forward failed on a batch of shape {tuple(x.shape)} from {data_dir!r}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from exc


def prepare(
    checkpoint: str,
    *,
    factory: str | None,
    trust_pickle: bool,
    data: str,
    data_dir: str,
    data_options: Mapping[str, str] | None = None,
    tasks: Sequence[str] | None = None,
    outputs: Names | None = None,
    exclude: Sequence[str] = (),
    backbone: Sequence[str] = (),
    head: Sequence[str] = (),
    hooks: Hooks | None = None,
    eval_split: str = "val",
) -> Prepared:
    """Everything up to (and including) component discovery; no training.

    ``eval_split`` (``val`` or ``test``) is the split opened for evaluation, ``Prepared.val``; a dataset without
    that split fails here, before any training, with the adapter's one-line ``DataError``. ``outputs`` is
    ``--outputs``: ``TASK=PATH`` entries (or a ``{task: path}`` mapping), or one task name per positional output
    (see ``model/outputs.py``).
    """
    hooks = hooks or Hooks()
    hooks.status(f"loading {checkpoint}")
    loaded = load_model(Path(checkpoint), factory=factory, trust_pickle=trust_pickle)
    adapter = get_dataset(data, data_options)
    root = Path(data_dir)
    specs = select_tasks(adapter.tasks(root), tasks)
    train = only_tasks(adapter.open(root, "train"), specs)
    val = only_tasks(adapter.open(root, eval_split), specs)
    if len(train) < 1:
        raise DataError(f"{data_dir!r} has an empty train split")
    probe = [train[i] for i in range(min(2, len(train)))]
    x = torch.stack([p[0] for p in probe])
    y = {t.name: torch.stack([p[1][t.name] for p in probe]) for t in specs}
    model = loaded.model.eval()
    hooks.status("probing the model's outputs")
    _probe(model, x, data_dir)
    names = [t.name for t in specs]
    entries = [f"{task}={path}" for task, path in outputs.items()] if isinstance(outputs, Mapping) else outputs
    found = discover(
        model, x, specs, outputs=entries, exclude=exclude, backbone=backbone, heads=parse_head_overrides(head, names)
    )
    with torch.no_grad():
        preds = found.mapping.select(model(x))
    for t in specs:
        if not torch.isfinite(t.loss(preds[t.name], y[t.name])):
            raise DiscoveryError(f"task {t.name!r} gives a non-finite loss on the first batch; check the model")
    return Prepared(loaded, specs, train, val, found, x, eval_split)


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
        eval_split=cfg.eval_split,
    )


def prepare_pruning(prepared: Prepared, model: torch.nn.Module, cfg: PruneConfig, calibration: Any) -> Pruning:
    """The library's ``prepare`` for a planned or real run: ``cfg``'s method options, the tasks' own losses."""
    return prepare_api(
        model,
        prepared.example_input,
        tasks=prepared.tasks,
        sparsity=cfg.sparsity,
        steps=cfg.steps,
        method=cfg.method,
        calibration=calibration,
        losses={t.name: t.loss for t in prepared.tasks},
        weighting=cfg.weighting,
        layer_scale=cfg.layer_scale,
        allocation=cfg.allocation,
        settle=cfg.settle,
        structure=cfg.structure,
        target=cfg.target,
        threshold_lr=cfg.threshold_lr,
        ramp_end=cfg.ramp_end,
        component_sparsity=cfg.component_sparsity,
        discovery=prepared.discovery,
    )


def components_manifest(p: Prepared) -> ComponentsManifest:
    """``components.json``: what discovery found, in plain data."""
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
        total_params=sum(q.numel() for q in p.loaded.model.parameters()),
        input_shape=list(p.input_shape),
    )
