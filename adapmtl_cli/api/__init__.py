"""The public library API: prune a trained multitask model inside your own training loop.

```python
import adapmtl_cli as adapmtl

pruning = adapmtl.prepare(model, example_input, tasks=["segmentation", "depth"], sparsity=0.9, steps=3000)
opt = torch.optim.Adam(pruning.param_groups(lr=1e-4))
for x, y in loader:
    out = pruning.model(x)
    loss = pruning.weigh({t: loss_fn[t](out[t], y[t]) for t in tasks})
    opt.zero_grad(); loss.backward(); opt.step()
    pruning.step()
model = pruning.finalize()  # the user's own module, exact zeros, same state_dict keys in the same order
```

``prepare`` maps the model's outputs to tasks, discovers which weights are shared and which belong to each
task (autograd reachability from each task's output), and applies a pruning method (``--method``'s registry).
The CLI's ``prune`` job runs on this same object (``jobs/prune.py`` and ``train/loop.py``): it adds data,
evaluation, the run folder, resume and distributed training around it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapmtl_cli.api.pruning import Pruning, PruningSettings
from adapmtl_cli.config import DEFAULTS
from adapmtl_cli.errors import ConfigError, DiscoveryError
from adapmtl_cli.export.channel_model import load_channel_model
from adapmtl_cli.export.latency import measure_latency
from adapmtl_cli.export.sparse_codec import load_sparse, save_sparse
from adapmtl_cli.methods import (
    MethodContext,
    allocation_name,
    build_pruner,
    check_method,
    layer_scale_name,
    needs_calibration,
    settle_name,
    structure_name,
    weighting_name,
)
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES
from adapmtl_cli.methods.weighting import WEIGHTINGS, make_weighting
from adapmtl_cli.model.discover import ComponentMap, discover_components
from adapmtl_cli.model.outputs import OutputMapping, flatten_outputs, map_outputs

__all__ = [
    "Discovery",
    "NamedTask",
    "Pruning",
    "PruningSettings",
    "discover",
    "load_pruned",
    "load_sparse",
    "measure_latency",
    "prepare",
    "save_sparse",
]

Batch = tuple[Any, dict[str, torch.Tensor]]
LossFn = Any
"""``fn(output, target) -> scalar tensor`` for one task."""


@dataclass(frozen=True)
class NamedTask:
    """A task known only by name (and, when known, the channel count of its output)."""

    name: str
    channels: int | None = None


@dataclass(frozen=True)
class Discovery:
    """Which output feeds which task, and the components (backbone, heads, shared branches) of the model."""

    tasks: tuple[str, ...]
    mapping: OutputMapping
    cmap: ComponentMap


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP or DataParallel wrapper (the wrapper holds no weights of its own)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _task_list(tasks: Sequence[Any]) -> list[Any]:
    if isinstance(tasks, str) or not tasks:
        raise ConfigError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    out = [NamedTask(t) if isinstance(t, str) else t for t in tasks]
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks name one task twice: {names}")
    return out


def _map(raw: Any, tasks: list[Any], batch: int, outputs: Sequence[str] | None) -> OutputMapping:
    try:
        return map_outputs(raw, tasks, batch, names=outputs)
    except DiscoveryError:
        # Tasks known by name only: a flat tuple with one output per task is read in the order of ``tasks``.
        by_order = isinstance(raw, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in raw)
        unsized = all(getattr(t, "channels", None) is None for t in tasks)
        if outputs is not None or not unsized or not by_order or len(raw) != len(tasks):
            raise
        return map_outputs(raw, tasks, batch, names=[t.name for t in tasks])


def load_pruned(model: nn.Module, export_dir: Any) -> nn.Module:
    """The physically smaller model of a ``--structure channel`` run, rebuilt from your own dense ``model``.

    ``model`` is a fresh instance from your factory (its weights do not matter); ``export_dir`` the folder
    ``adapmtl export RUN`` wrote (``channel_plan.json`` and ``model.channels.safetensors``). Returns a new module
    of your model's class with the removed channels gone and the pruned weights loaded, in eval mode.

    Raises:
        ConfigError: ``export_dir`` is not a channel run's export. CheckpointError: it does not fit ``model``.
    """
    return load_channel_model(_unwrap(model), export_dir)


def discover(
    model: nn.Module,
    example_input: Any,
    tasks: Sequence[Any],
    *,
    outputs: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    backbone: Sequence[str] = (),
    heads: Mapping[str, Sequence[str]] | None = None,
) -> Discovery:
    """Map outputs to tasks and find the components, from one forward pass on ``example_input`` (eval mode).

    Args:
        tasks: task names, or task specs (``adapmtl_cli.tasks``) whose channel counts can also pick outputs.
        outputs: one task name per output leaf in order (``_`` skips one), when names and counts cannot tell.
        exclude: module globs never pruned; backbone: globs forced into the backbone; heads: ``task -> globs``
            forced into that task's head.

    Raises:
        DiscoveryError: the forward fails, or outputs cannot be matched to tasks unambiguously.
    """
    model = _unwrap(model)
    specs = _task_list(tasks)
    names = [t.name for t in specs]
    was_training = model.training
    model.eval()  # no BatchNorm statistics change, no dropout
    try:
        try:
            raw = model(example_input)
        except Exception as exc:
            shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input)
            raise DiscoveryError(
                f"the model's forward failed on the example input {shape}: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc
        batch = example_input.shape[0] if isinstance(example_input, torch.Tensor) else _batch_of(raw)
        mapping = _map(raw, specs, batch, outputs)
        preds = mapping.select(raw)
        cmap = discover_components(
            model,
            preds,
            names,
            exclude=exclude,
            backbone=backbone,
            heads={k: list(v) for k, v in (heads or {}).items()},
        )
    finally:
        model.train(was_training)
    return Discovery(tuple(names), mapping, cmap)


def _batch_of(raw: Any) -> int:
    return flatten_outputs(raw, 0)[0].shape[0]


def _check_prepare_options(method: str, sparsity: float, steps: int, weighting: str | None) -> None:
    check_method(method)
    if not (isinstance(sparsity, (int, float)) and 0.0 < sparsity < 1.0):
        raise ConfigError(f"sparsity must be a fraction in (0, 1), got {sparsity!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    if weighting is not None and weighting not in WEIGHTINGS:
        raise ConfigError(f"weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")


def _calibration_batches(
    method: str,
    layer_scale: str | None,
    calibration: Iterable[Batch] | None,
    losses: Mapping[str, LossFn] | None,
    tasks: Sequence[str],
    device: torch.device,
) -> list[Batch]:
    """The first ``CALIBRATION_BATCHES`` batches on the model's device (a method scores them once per task)."""
    scale = layer_scale_name(method, layer_scale)
    if calibration is None or losses is None:
        raise ConfigError(
            f"method {method!r} scores weights by task saliency (layer scale {scale!r}): pass "
            "calibration=[(input, {task: target}), ...] and losses={task: fn(output, target)}"
            + (", or layer_scale='none'" if scale == "saliency" else "")
        )
    missing = [t for t in tasks if t not in losses]
    if missing:
        raise ConfigError(f"losses has no function for task {', '.join(map(repr, missing))}")
    batches = []
    for x, y in itertools.islice(iter(calibration), CALIBRATION_BATCHES):
        x = x.to(device) if isinstance(x, torch.Tensor) else x
        batches.append((x, {k: v.to(device) for k, v in y.items()}))
    if not batches:
        raise ConfigError("calibration holds no batch; pass at least one (input, {task: target}) pair")
    return batches


def _task_losses(mapping: OutputMapping, losses: Mapping[str, LossFn] | None, names: list[str]) -> Any:
    """``fn(module, batch) -> {task: loss}`` for methods that score weights with task gradients."""

    def task_losses(module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        assert losses is not None
        preds = mapping.select(module(batch[0]))
        return {t: losses[t](preds[t], batch[1][t]) for t in names}

    return task_losses


def _settings(
    method: str,
    weighting: str | None,
    layer_scale: str | None,
    allocation: str | None,
    settle: str | None,
    structure: str | None,
    target: str | None,
    sparsity: float,
    steps: int,
    threshold_lr: float,
) -> PruningSettings:
    """What ``prepare`` resolves each option to (the method's own defaults where not given)."""
    kind = structure_name(method, structure)
    return PruningSettings(
        method,
        weighting_name(method, weighting),
        layer_scale_name(method, layer_scale, structure),
        allocation_name(method, allocation),
        sparsity,
        steps,
        threshold_lr,
        kind,
        (target or "channels") if kind == "channel" else None,
        settle_name(method, settle, structure),
    )


def prepare(
    model: nn.Module,
    example_input: Any,
    *,
    tasks: Sequence[Any],
    sparsity: float = DEFAULTS.sparsity,
    steps: int = DEFAULTS.steps,
    method: str = DEFAULTS.method,
    outputs: Sequence[str] | None = None,
    calibration: Iterable[Batch] | None = None,
    losses: Mapping[str, LossFn] | None = None,
    weighting: str | None = None,
    layer_scale: str | None = None,
    allocation: str | None = None,
    settle: str | None = None,
    structure: str | None = None,
    target: str | None = None,
    threshold_lr: float = DEFAULTS.threshold_lr,
    ramp_end: float = DEFAULTS.ramp_end,
    component_sparsity: Mapping[str, tuple[float, float]] | None = None,
    exclude: Sequence[str] = (),
    backbone: Sequence[str] = (),
    heads: Mapping[str, Sequence[str]] | None = None,
    discovery: Discovery | None = None,
) -> Pruning:
    """Get ``model`` ready to be pruned to ``sparsity`` over ``steps`` optimizer steps of your own loop.

    Args:
        model: the trained multitask model (a DDP or DataParallel wrapper is looked through).
        example_input: one batch of inputs the model's forward accepts.
        tasks: task names (the keys of your outputs and losses) or task specs. method: any ``--method`` value.
        outputs: as ``--outputs``: one task name per output leaf, when outputs cannot be matched by name.
        calibration: ``(input, {task: target})`` batches; methods that score weights by task saliency (the
            default's layer scales, ``disparse``) use the first few.
        losses: ``{task: fn(output, target) -> scalar}``; needed with ``calibration``.
        weighting, layer_scale, allocation, settle, threshold_lr, ramp_end, component_sparsity: as the ``prune``
            options (None: the method's own default). exclude, backbone, heads: discovery overrides (see ``discover``).
        structure: ``"weight"`` (single weights) or ``"channel"`` (whole output channels, which ``export`` removes
            physically; ``sparsity`` is then the fraction of channels removed). None: the method's own.
        target: for channel runs, what ``sparsity`` counts: ``"channels"`` (default) or ``"flops"``.
        discovery: a ``discover`` result for this model, to skip the forward pass.

    Raises:
        ConfigError: an option is invalid or the method needs ``calibration`` and ``losses``.
        DiscoveryError: outputs cannot be matched to tasks.
    """
    _check_prepare_options(method, sparsity, steps, weighting)
    user_model = _unwrap(model)
    found = discovery or discover(
        user_model, example_input, tasks, outputs=outputs, exclude=exclude, backbone=backbone, heads=heads
    )
    names = list(found.tasks)
    batches = None
    if needs_calibration(method, layer_scale, structure):
        device = next(user_model.parameters()).device
        batches = _calibration_batches(method, layer_scale, calibration, losses, names, device)
    task_losses = _task_losses(found.mapping, losses, names)
    pruner = build_pruner(
        method,
        MethodContext(
            model=user_model,
            cmap=found.cmap,
            sparsity=float(sparsity),
            steps=steps,
            ramp_end=ramp_end,
            calibration=(lambda: iter(batches)) if batches is not None else None,
            task_losses=task_losses if batches is not None else None,
            bounds=dict(component_sparsity or {}),
            layer_scale=layer_scale,
            allocation=allocation,
            settle=settle,
            structure=structure_name(method, structure),
            target=target,
            example_input=example_input,
        ),
    )
    settings = _settings(
        method, weighting, layer_scale, allocation, settle, structure, target, float(sparsity), steps, threshold_lr
    )
    return Pruning(pruner, found, make_weighting(settings.weighting, names, steps), settings)
