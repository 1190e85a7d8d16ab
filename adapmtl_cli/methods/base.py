"""The pruning-method contract, and the two families every method belongs to.

A ``Pruner`` owns the trainable wrapper around the user's model, its optimizer parameter groups, the sparsity
target over the run and what happens after each optimizer step; the engine only runs the loop. Both families
land exactly on the requested overall sparsity at the last step:

* ``ThresholdPruner`` — learnable soft thresholds (AdapMTL, STR variants) with the level controller of
  ``schedule.py``: gradients split the sparsity between groups, one common offset sets the level.
* ``MaskPruner`` — binary masks chosen by a score (magnitude, task importance) at fixed count, either once at
  the start (one-shot + fine-tune) or on a cubic schedule (gradual magnitude pruning).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods.layer_scales import LAYER_SCALES, saliency_scales
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES, best_task_ranks
from adapmtl_cli.model.discover import ComponentMap
from adapmtl_cli.sparsity.allocation import ALLOCATIONS, MarginalAllocator
from adapmtl_cli.sparsity.masks import (
    MaskedModel,
    bake_masks_,
    effective_magnitudes,
    inject_masks_,
    keep_top_,
    mask_zeros,
)
from adapmtl_cli.sparsity.schedule import Bounds, LevelController, cubic_target, group_magnitudes, ramp_steps
from adapmtl_cli.sparsity.settle import SETTLES, SettledMask
from adapmtl_cli.sparsity.thresholds import (
    LayerZeros,
    ThresholdedModel,
    bake_,
    init_thresholds_,
    inject_thresholds_,
    measure_layers,
)

Batches = Callable[[], Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]]
"""A fresh iterator over a few training batches (for methods that score weights with task gradients)."""


@dataclass(frozen=True)
class MethodContext:
    """What a method may use when it is built."""

    model: nn.Module
    cmap: ComponentMap
    sparsity: float
    steps: int
    ramp_end: float
    calibration: Batches | None = None
    task_losses: Callable[[nn.Module, tuple[torch.Tensor, dict[str, torch.Tensor]]], dict[str, torch.Tensor]] | None = (
        None
    )
    bounds: Mapping[str, tuple[float, float]] | None = None
    """``--component-sparsity``: per component, the final sparsity's floor and cap (component thresholds only)."""
    layer_scale: str | None = None
    """``--layer-scale``: how a threshold method scales its thresholds per layer (None: the method's default)."""
    allocation: str | None = None
    """``--allocation``: how a threshold method's split between groups moves (None: the method's default)."""
    structure: str | None = None
    """``--structure``: ``weight`` prunes single weights, ``channel`` whole output channels (channel groups);
    None: the method's own (``build_pruner`` resolves it before the factory runs)."""
    target: str | None = None
    """``--target`` of a channel run: ``channels`` (the default) or ``flops``; None for weight runs."""
    settle: str | None = None
    """``--settle``: what a threshold method does once the ramp reaches the target (None: the method's default)."""
    example_input: Any = None
    """One batch of inputs (channel runs trace the model's channel groups with it)."""


@runtime_checkable
class Pruner(Protocol):
    """One pruning method applied to one model."""

    name: str
    module: nn.Module
    """The wrapper to train (the user's model plus any learnable pruning parameters)."""

    def param_groups(self, lr: float, threshold_lr: float) -> list[dict[str, Any]]: ...

    def target_at(self, step: int) -> float:
        """Scheduled overall sparsity after ``step`` optimizer steps."""
        ...

    def after_step_(self, step: int) -> float:
        """Apply the method after optimizer step ``step`` (1-based); return the overall sparsity now."""
        ...

    def measure(self) -> list[LayerZeros]: ...

    def thresholds(self) -> dict[str, float]:
        """Per group, the current threshold (empty for mask methods)."""
        ...

    def bake_(self) -> nn.Module:
        """Plain weights with exact zeros; returns the user's model (the pruner is spent)."""
        ...


START = "quantile"
"""Where the component thresholds of a threshold method with per-group init start: ``quantile`` (each component
at the target, the default) or ``union`` (a dev-split experiment, issue #13: each component at the sparsity
DiSparse's union rule gives it: the global ``target`` quantile of the weights' best task-saliency rank)."""


def _union_sparsities(tm: ThresholdedModel, ranks: list[torch.Tensor], sparsity: float) -> dict[str, float]:
    """Per threshold group, the fraction of its weights whose best task rank is below the global cut."""
    flat = torch.cat([r.flatten().float() for r in ranks])
    cut = float(flat.kthvalue(max(1, int(round(sparsity * flat.numel())))).values)
    below: dict[str, list[int]] = {}
    for fqn, r in zip(tm.groups, ranks, strict=True):
        acc = below.setdefault(tm.groups[fqn], [0, 0])
        acc[0] += int((r <= cut).sum())
        acc[1] += r.numel()
    return {g: z / n for g, (z, n) in below.items()}


@torch.no_grad()
def _start_at_(tm: ThresholdedModel, sparsities: Mapping[str, float]) -> None:
    """Each group's threshold at its own magnitude quantile ``sparsities[group]``."""
    for g in tm.bank.groups:
        mags = torch.cat([tm.scaled_magnitudes(f).flatten() for f, gg in tm.groups.items() if gg == g])
        q = min(max(sparsities[g], 1e-4), 1 - 1e-4)
        t = float(mags.kthvalue(max(1, int(round(q * mags.numel())))).values)
        t = min(max(t, 1e-12), 1 - 1e-6)
        tm.bank.logit(g).fill_(math.log(t) - math.log1p(-t))


def _weights_and_rest(module: nn.Module, special: set[int]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    ordinary = [p for p in module.parameters() if p.requires_grad and id(p) not in special]
    extra = [p for p in module.parameters() if p.requires_grad and id(p) in special]
    return ordinary, extra


class ThresholdPruner:
    """Soft thresholds (one per component, per layer or global) driven onto a cubic schedule."""

    def __init__(
        self,
        name: str,
        ctx: MethodContext,
        granularity: str,
        *,
        per_group_init: bool = False,
        layer_scale: str = "none",
        allocation: str = "adam",
        settle: str = "thresholds",
    ) -> None:
        self.name = name
        self.ctx = ctx
        self.tm: ThresholdedModel = inject_thresholds_(ctx.model, ctx.cmap, granularity)
        self.layer_scale = ctx.layer_scale or layer_scale
        if self.layer_scale not in LAYER_SCALES:
            raise ConfigError(f"--layer-scale {self.layer_scale!r} is not one of {', '.join(LAYER_SCALES)}")
        self._ranks: list[torch.Tensor] | None = None
        if self.layer_scale != "none":
            # With one threshold per layer (str_layer) the scales only set where each layer's threshold starts.
            self.tm.set_layer_scales_(self._saliency_scales())
        self.bounds: Bounds = dict(ctx.bounds or {})  # checked by methods.check_method_options
        if self.bounds and granularity != "component":
            raise ValueError(f"method {name!r} has {granularity} thresholds; it must not accept component bounds")
        # Only the ratios between thresholds matter: the controller sets the level from step 1 on.
        init_thresholds_(self.tm, ctx.sparsity if per_group_init else 0.0, per_group=per_group_init)
        if per_group_init and START == "union" and self._ranks is not None and granularity == "component":
            _start_at_(self.tm, _union_sparsities(self.tm, self._ranks, ctx.sparsity))
        self.allocation = ctx.allocation or allocation
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"--allocation {self.allocation!r} is not one of {', '.join(ALLOCATIONS)}")
        if self.allocation == "marginal":
            self.tm.allocator = MarginalAllocator(len(self.tm.bank.groups))  # a submodule: its state is saved
        self.settle = ctx.settle or settle
        if self.settle not in SETTLES:
            raise ConfigError(f"--settle {self.settle!r} is not one of {', '.join(SETTLES)}")
        if self.settle == "mask":
            self.tm.settled = SettledMask(self.tm)  # a submodule: a resumed run holds the same mask
        self.settle_step = ramp_steps(ctx.steps, ctx.ramp_end)
        """The step the cubic ramp reaches the target at (``--settle mask`` fixes the mask after it)."""
        self.module: nn.Module = self.tm
        self._controller: LevelController | None = None

    def _saliency_scales(self) -> dict[str, float]:
        ctx = self.ctx
        if ctx.calibration is None or ctx.task_losses is None:
            raise ConfigError("--layer-scale saliency needs training batches to score weights; pass --layer-scale none")
        fqns = list(self.tm.groups)
        weights = [self.tm.raw_weight(f) for f in fqns]
        component_of = {layer.fqn: layer.component for layer in ctx.cmap.layers}
        ranks = best_task_ranks(
            self.tm, weights, fqns, component_of, ctx.cmap, ctx.calibration, ctx.task_losses, CALIBRATION_BATCHES
        )
        self._ranks = [r.cpu() for r in ranks]
        return saliency_scales(self.tm, ranks, ctx.sparsity)

    def param_groups(self, lr: float, threshold_lr: float) -> list[dict[str, Any]]:
        weights, bank = _weights_and_rest(self.tm, {id(p) for p in self.tm.bank.parameters()})
        # Only ``adam`` moves the logits by gradient steps; the other rules keep them in the optimizer at rate 0
        # so that the optimizer still clears their gradients every step.
        rate = threshold_lr if self.allocation == "adam" else 0.0
        return [
            {"params": weights, "lr": lr, "weight_decay": 0.0},
            {"params": bank, "lr": rate, "weight_decay": 0.0},
        ]

    def target_at(self, step: int) -> float:
        return cubic_target(step, self.ctx.steps, self.ctx.sparsity, 0.0, self.ctx.ramp_end)

    def _settled(self) -> SettledMask | None:
        settled = getattr(self.tm, "settled", None)
        return settled if isinstance(settled, SettledMask) else None

    def after_step_(self, step: int) -> float:
        settled = self._settled()
        if settled is not None and settled.is_done():
            return settled.hold_(self.tm)
        if self._controller is None:
            self._controller = LevelController(self.tm)
        allocator = getattr(self.tm, "allocator", None)
        mags = None
        if isinstance(allocator, MarginalAllocator):
            # The rule moves logits only, so the weights' magnitudes stay valid for the level fit below.
            mags = group_magnitudes(self.tm, self._controller.workspace)
            allocator.step_(self.tm, mags, steps=self.ctx.steps)
        target = self.target_at(step)
        if self.bounds:
            # Floors grow with the ramp (a 95% floor must not hit a component at step 1); caps hold throughout.
            ramp = target / self.ctx.sparsity
            self._controller.bounds = {g: (low * ramp, high) for g, (low, high) in self.bounds.items()}
        fit = self._controller.step_(step - 1, target, exact=step >= self.ctx.steps, magnitudes=mags)
        if settled is not None and step >= self.settle_step:
            settled.settle_(self.tm)  # the level is exact here: the mask keeps it to the end
        return fit.sparsity

    def measure(self) -> list[LayerZeros]:
        layers = measure_layers(self.tm)
        settled = self._settled()
        if settled is None or not settled.is_done():
            return layers
        # The thresholds the mask was fixed with, in each layer's units (the live ones are ~0 by then).
        values = settled.thresholds(self.tm)
        return [dataclasses.replace(x, threshold=values[x.group] * float(self.tm.layer_scale(x.fqn))) for x in layers]

    def thresholds(self) -> dict[str, float]:
        settled = self._settled()
        if settled is not None and settled.is_done():
            return settled.thresholds(self.tm)
        return self.tm.bank.values()

    def bake_(self) -> nn.Module:
        return bake_(self.tm)


class MaskPruner:
    """Binary masks from a score; ``gradual=False`` prunes once before step 1, ``True`` on a cubic schedule."""

    def __init__(self, name: str, ctx: MethodContext, *, gradual: bool, update_every: int | None = None) -> None:
        self.name = name
        self.ctx = ctx
        self.gradual = gradual
        assert not ctx.bounds, "component bounds need thresholds (methods.check_method_options refuses them)"
        self.mm: MaskedModel = inject_masks_(ctx.model, ctx.cmap)
        self.module: nn.Module = self.mm
        self.total = sum(self.mm.raw_weight(f).numel() for f in self.mm.groups)
        self.update_every = update_every or max(1, ctx.steps // 50)
        if not gradual:
            self.apply_(ctx.sparsity)

    def scores(self) -> dict[str, torch.Tensor]:
        """Higher = keep. Subclasses override (default: magnitude of the effective weight)."""
        return effective_magnitudes(self.mm)

    def apply_(self, sparsity: float) -> None:
        keep_top_(self.mm, self.scores(), self.total - int(round(sparsity * self.total)))

    def param_groups(self, lr: float, threshold_lr: float) -> list[dict[str, Any]]:
        del threshold_lr
        return [{"params": [p for p in self.mm.parameters() if p.requires_grad], "lr": lr, "weight_decay": 0.0}]

    def target_at(self, step: int) -> float:
        if not self.gradual:
            return self.ctx.sparsity
        return cubic_target(step, self.ctx.steps, self.ctx.sparsity, 0.0, self.ctx.ramp_end)

    def after_step_(self, step: int) -> float:
        if self.gradual and (step % self.update_every == 0 or step >= self.ctx.steps):
            self.apply_(self.target_at(step))
        return sum(mask_zeros(self.mm).values()) / self.total

    def measure(self) -> list[LayerZeros]:
        zeros = mask_zeros(self.mm)
        return [LayerZeros(f, g, self.mm.raw_weight(f).numel(), zeros[f]) for f, g in self.mm.groups.items()]

    def thresholds(self) -> dict[str, float]:
        return {}

    def bake_(self) -> nn.Module:
        return bake_masks_(self.mm)
