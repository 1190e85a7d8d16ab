"""Chance level: what a prediction that ignores the input scores, and the tasks a dense model does not beat.

Pruning a model that never learned a task measures nothing: the pruned model is compared with noise, and Δ_T can
come out hugely positive (an untrained checkpoint once showed Δ_T +294.87% in the README's tour). The report
therefore says when the dense model is at chance level on a task.

*Chance* here is the best constant output: one value per output channel, the same for every sample and pixel,
fitted with Adam on the task's own loss over a few training batches. It is what a model learns from an input
that carries no information (under cross-entropy the class log-frequencies, so the majority class; under L1 a
median depth; under the cosine loss a mean direction), and the task's own meter scores it on the evaluation
split exactly as it scores the model. Any task kind works, plug-ins included: only ``loss`` and ``new_meter``
are used.

The dense model is at chance on a task when it beats the constant by less than :data:`CHANCE_MARGIN` on average
over the task's metrics (each metric's signed relative change, clipped to ±100% as the bounded Δ_T clips it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from adapmtl_cli.tasks.base import TaskSpec

Metrics = dict[str, dict[str, float]]

CHANCE_MARGIN = 5.0
"""Percent: a dense model that beats the constant prediction by less than this, on average, is at chance."""
FIT_SAMPLES = 32
"""Training samples (spread evenly over the split) the constant is fitted on."""
FIT_PIXELS = 256
"""Pixels per sample (an even stride) the constant of a dense task is fitted on."""
FIT_STEPS = 150

CHANCE_CONVENTION = (
    "chance = the best constant prediction (one value per output channel, fitted on training samples), scored on "
    f"the same split; at chance = beating it by less than {CHANCE_MARGIN:g}% on average over the task's metrics"
)


def constant_metrics(
    train: Dataset,
    evaluation: Dataset,
    tasks: Sequence[TaskSpec],
    *,
    batch_size: int = 8,
    max_batches: int | None = None,
    seed: int = 0,
) -> Metrics:
    """Every task's metrics for its best constant prediction, on ``evaluation`` (``max_batches`` as the model's).

    Draws no number from the global random streams, so a run that computes it trains as one that does not.

    Raises:
        The tasks' own errors for targets they refuse (``DataError``), as the model's evaluation would.
    """
    targets = _fit_targets(train, tasks, seed)
    constants = {t.name: _fit_constant(t, targets[t.name], seed) for t in tasks}
    meters = {t.name: t.new_meter() for t in tasks}
    loader = DataLoader(evaluation, batch_size=batch_size, shuffle=False, generator=_generator(seed))
    for i, (_, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        for t in tasks:
            meters[t.name].update(_broadcast(constants[t.name], y[t.name]), y[t.name])
    return {name: meter.compute() for name, meter in meters.items()}


def _generator(seed: int) -> torch.Generator:
    # A loader draws its base seed from a generator: its own one leaves the run's random streams untouched.
    return torch.Generator().manual_seed(seed)


def _fit_targets(train: Dataset, tasks: Sequence[TaskSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    """The targets to fit on: :data:`FIT_SAMPLES` samples, dense ones cut to :data:`FIT_PIXELS` pixels each.

    The pixels are an even stride through each image, kept as a ``(..., 1, FIT_PIXELS)`` image so that the
    task's loss reads them as it reads any target; a constant's loss is a mean over pixels, so a spread sample
    of them fits the same constant at a fraction of the cost.
    """
    n = len(train)  # type: ignore[arg-type]
    count = min(n, FIT_SAMPLES)
    indices = [i * n // count for i in range(count)]
    batch = next(iter(DataLoader(Subset(train, indices), batch_size=count, shuffle=False, generator=_generator(seed))))
    out = {}
    for t in tasks:
        target = batch[1][t.name]
        if target.dim() >= 3:
            flat = target.flatten(-2)
            step = max(1, flat.shape[-1] // FIT_PIXELS)
            target = flat[..., ::step].unsqueeze(-2)
        out[t.name] = target
    return out


def _broadcast(constant: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The constant as a model output for ``target``'s batch: ``(B, C, 1, 1)`` for dense targets, else ``(B, C)``."""
    shape = (target.shape[0], constant.numel()) + ((1, 1) if target.dim() >= 3 else ())
    return constant.view(1, -1, *([1] * (len(shape) - 2))).expand(shape)


def _fit_constant(task: TaskSpec, target: torch.Tensor, seed: int) -> torch.Tensor:
    """The output minimising ``task.loss`` over ``target`` among those that ignore the input (Adam, cosine lr)."""
    # A small random start: a loss like 1 - cosine has no gradient at exactly zero.
    value = (0.01 * torch.randn(task.channels, generator=_generator(seed))).requires_grad_(True)
    optimizer = torch.optim.Adam([value], lr=0.1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=FIT_STEPS)
    for _ in range(FIT_STEPS):
        loss = task.loss(_broadcast(value, target), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return value.detach()


def beats_chance(dense: Metrics, chance: Metrics, specs: Mapping[str, TaskSpec]) -> dict[str, float]:
    """Per task, how much the dense model beats the constant: the mean clipped signed relative change, percent.

    Metrics whose constant value is 0 or not finite are left out (no relative change); a task without any such
    metric is left out too.
    """
    out: dict[str, float] = {}
    for task, metrics in dense.items():
        if task not in chance or task not in specs:
            continue
        better = {m.name: m.higher_is_better for m in specs[task].metrics}
        changes = []
        for name, value in metrics.items():
            base = chance[task].get(name)
            if base is None or name not in better or base == 0 or not (math.isfinite(base) and math.isfinite(value)):
                continue
            change = (value - base) / abs(base) * 100 * (1 if better[name] else -1)
            changes.append(max(-100.0, min(100.0, change)))
        if changes:
            out[task] = sum(changes) / len(changes)
    return out


def chance_warnings(dense: Metrics, chance: Metrics | None, specs: Mapping[str, TaskSpec]) -> list[str]:
    """One report warning per task on which the dense model is at chance level; none without ``chance``."""
    if not chance:
        return []
    return [
        f"the dense model is at chance level on task {task}: it beats a constant prediction by {score:+.1f}% on "
        f"average over its metrics, so what pruning cost this task cannot be measured; prune a trained checkpoint"
        for task, score in beats_chance(dense, chance, specs).items()
        if score < CHANCE_MARGIN
    ]
