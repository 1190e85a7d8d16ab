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

from adapmtl_cli.config import DEFAULTS, ComponentSparsity, LayerSparsity
from adapmtl_cli.errors import ConfigError, DiscoveryError
from adapmtl_cli.export.latency import measure_latency
from adapmtl_cli.export.sparse_codec import load_sparse, save_sparse
from adapmtl_cli.methods import (
    MethodContext,
    Pruner,
    allocation_name,
    build_pruner,
    check_method,
    layer_scale_name,
    needs_calibration,
    weighting_name,
)
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES
from adapmtl_cli.methods.weighting import WEIGHTINGS, Weighting, make_weighting
from adapmtl_cli.model.discover import ComponentMap, discover_components
from adapmtl_cli.model.outputs import OutputMapping, flatten_outputs, map_outputs
from adapmtl_cli.sparsity.thresholds import LayerZeros

__all__ = [
    "Discovery",
    "NamedTask",
    "Pruning",
    "PruningSettings",
    "discover",
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
        tasks: task names (the keys of your outputs and losses) or task specs.
        method: any ``--method`` value (``adapmtl`` is the default).
        outputs: as ``--outputs``: one task name per output leaf, when outputs cannot be matched by name.
        calibration: ``(input, {task: target})`` batches; methods that score weights by task saliency (the
            default's layer scales, ``disparse``) use the first few.
        losses: ``{task: fn(output, target) -> scalar}``; needed with ``calibration``.
        weighting, layer_scale, allocation, threshold_lr, ramp_end, component_sparsity: as the ``prune`` options (None:
            the method's own default). exclude, backbone, heads: discovery overrides (see ``discover``).
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
    if needs_calibration(method, layer_scale):
        device = next(user_model.parameters()).device
        batches = _calibration_batches(method, layer_scale, calibration, losses, names, device)
    mapping = found.mapping

    def task_losses(module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        assert losses is not None
        preds = mapping.select(module(batch[0]))
        return {t: losses[t](preds[t], batch[1][t]) for t in names}

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
        ),
    )
    chosen = weighting_name(method, weighting)
    scale = layer_scale_name(method, layer_scale)
    settings = PruningSettings(
        method, chosen, scale, allocation_name(method, allocation), float(sparsity), steps, threshold_lr
    )
    return Pruning(pruner, found, make_weighting(chosen, names, steps), settings)


@dataclass(frozen=True)
class PruningSettings:
    """What ``prepare`` resolved: the method, its weighting and layer scale, the target and the step budget."""

    method: str
    weighting: str
    layer_scale: str | None
    allocation: str | None
    sparsity: float
    steps: int
    threshold_lr: float


class Pruning:
    """One model being pruned: the module to train, its optimizer groups, the task weighting and the schedule.

    Call ``weigh`` on the task losses of every step and ``step`` after every optimizer step; ``finalize`` at the
    end returns the user's model with plain parameters and exact zeros.
    """

    def __init__(self, pruner: Pruner, discovery: Discovery, weighting: Weighting, settings: PruningSettings) -> None:
        self.pruner = pruner
        self.discovery = discovery
        self.weighting = weighting
        self.settings = settings
        self.step_count = 0
        """Optimizer steps taken so far (``step`` calls); part of ``state_dict``."""
        self._losses: dict[str, torch.Tensor] = {}
        self._final: list[LayerZeros] | None = None
        self._final_thresholds: dict[str, float] = {}

    @property
    def model(self) -> nn.Module:
        """The module to train: the user's model with the method's parametrizations (same forward and outputs)."""
        self._check_open()
        return self.pruner.module

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.discovery.tasks

    def param_groups(self, lr: float, threshold_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the weights at ``lr``, the thresholds at their own rate (the method's)."""
        self._check_open()
        rate = self.settings.threshold_lr if threshold_lr is None else threshold_lr
        return self.pruner.param_groups(lr, rate)

    def task_weights(self) -> dict[str, float]:
        """The current task-loss weights (they sum to the number of tasks)."""
        return self.weighting.weights()

    def weigh(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum_t w_t * L_t`` with the method's task weights; the losses are kept for the next ``step``."""
        missing = [t for t in self.tasks if t not in losses]
        if missing:
            raise ConfigError(f"weigh got no loss for task {', '.join(map(repr, missing))}; pass one per task")
        weights = self.weighting.weights()
        self._losses = {t: losses[t].detach() for t in self.tasks}
        total = sum(weights[t] * losses[t] for t in self.tasks)
        assert isinstance(total, torch.Tensor)
        return total

    def target_at(self, step: int) -> float:
        """The scheduled overall sparsity after ``step`` optimizer steps."""
        return self.pruner.target_at(step)

    def step(self, losses: Mapping[str, float] | None = None) -> float:
        """After each optimizer step: move the sparsity onto the schedule (exact level) and update the weights.

        Args:
            losses: the step's task losses as numbers (default: those given to the last ``weigh``).

        Returns:
            The overall sparsity now.
        """
        self._check_open()
        if losses is None:
            if not self._losses:
                raise ConfigError("step() before weigh(): pass the step's task losses through weigh() first")
            losses = {t: float(v) for t, v in self._losses.items()}
        sparsity = self.pruner.after_step_(self.step_count + 1)
        self.weighting.update(self.step_count, dict(losses))
        self.step_count += 1
        self._losses = {}
        return sparsity

    def measure(self) -> list[LayerZeros]:
        """Per prunable layer, its zeros now (after ``finalize``: in the final model)."""
        return list(self._final) if self._final is not None else self.pruner.measure()

    def thresholds(self) -> dict[str, float]:
        """Per threshold group, its current threshold (empty for mask methods)."""
        return dict(self._final_thresholds) if self._final is not None else self.pruner.thresholds()

    def sparsity(self) -> dict[str, Any]:
        """``{"overall": fraction of zero prunable weights, "components": {component: fraction}}``."""
        comps = self.component_sparsity()
        zeros, total = sum(c.zeros for c in comps), sum(c.params for c in comps)
        return {"overall": zeros / total if total else 0.0, "components": {c.name: c.sparsity for c in comps}}

    def component_sparsity(self) -> list[ComponentSparsity]:
        """Per component (in discovery order), its prunable weights, zeros and threshold."""
        layers, thresholds = self.measure(), self.thresholds()
        comp_of = {layer.fqn: layer.component for layer in self.discovery.cmap.layers}
        per: dict[str, list[int]] = {}
        for s in layers:
            acc = per.setdefault(comp_of[s.fqn], [0, 0])
            acc[0] += s.zeros
            acc[1] += s.params
        out = []
        for c in self.discovery.cmap.components:
            zeros, n = per.get(c.name, [0, 0])
            thr = thresholds.get(c.name, thresholds.get("global"))
            out.append(
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
        return out

    def layer_sparsity(self) -> list[LayerSparsity]:
        """Per prunable layer (in model order), its weights, zeros and own threshold."""
        comp_of = {layer.fqn: layer.component for layer in self.discovery.cmap.layers}
        return [
            LayerSparsity(
                name=s.fqn,
                component=comp_of[s.fqn],
                params=s.params,
                zeros=s.zeros,
                sparsity=s.zeros / s.params,
                threshold=s.threshold,  # the layer's own (its group's times its scale); None for mask methods
            )
            for s in self.measure()
        ]

    def report(self) -> dict[str, Any]:
        """The sparsity parts of ``report.json``: target, overall, per component, per layer, task weights."""
        layers = self.measure()
        total, zeros = sum(s.params for s in layers), sum(s.zeros for s in layers)
        s = self.settings
        return {
            "method": s.method,
            "weighting": s.weighting,
            "layer_scale": s.layer_scale,
            "allocation": s.allocation,
            "target_sparsity": s.sparsity,
            "overall_sparsity": zeros / total if total else 0.0,
            "prunable_params": total,
            "zeros": zeros,
            "steps": self.step_count,
            "components": [c.model_dump(exclude={"schema_version"}) for c in self.component_sparsity()],
            "layers": [x.model_dump(exclude={"schema_version"}) for x in self.layer_sparsity()],
            "task_weights": self.task_weights(),
        }

    def finalize(self) -> nn.Module:
        """Bake the pruning into the user's model and return it: plain parameters, exact zeros, its own class,
        its ``state_dict`` keys in their order. Lands exactly on the target even if fewer than ``steps`` steps
        ran (the level is projected onto the target first). The ``Pruning`` is spent afterwards."""
        self._check_open()
        if self.step_count < self.settings.steps:
            self.pruner.after_step_(self.settings.steps)
        layers, thresholds = self.pruner.measure(), self.pruner.thresholds()
        model = self.pruner.bake_()
        mods = dict(model.named_modules())
        for stat in layers:
            # Weights that were exactly zero before thresholding count as zeros in both views.
            zeros = int((mods[stat.fqn].weight == 0).sum())
            assert zeros == stat.zeros, f"baked {stat.fqn} has {zeros} zeros, the pruned view had {stat.zeros}"
        self._final, self._final_thresholds = layers, thresholds
        return model

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs besides the optimizer: the module (weights, thresholds), weighting and step."""
        return {
            "model": self.pruner.module.state_dict(),
            "weighting": self.weighting.state_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_open()
        self.pruner.module.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.step_count = int(state["step"])

    def _check_open(self) -> None:
        if self._final is not None:
            raise ConfigError("this Pruning was finalized; use the model finalize() returned")
