"""``Pruning``: one model being pruned, driven by the user's own loop (``adapmtl_cli.prepare`` builds it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adapmtl_cli.config import ComponentSparsity, LayerSparsity
from adapmtl_cli.errors import CheckpointError, ConfigError
from adapmtl_cli.methods import Pruner
from adapmtl_cli.methods.weighting import Weighting
from adapmtl_cli.sparsity.thresholds import LayerZeros

if TYPE_CHECKING:
    from adapmtl_cli.api import Discovery


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
    structure: str = "weight"
    """``weight`` or ``channel``; a channel run's ``sparsity`` is the fraction of channels (or FLOPs) removed."""
    target: str | None = None
    """A channel run's unit: ``channels`` or ``flops`` (None for weight runs)."""
    settle: str | None = None
    """What the thresholds do once the ramp reaches the target: ``mask`` or ``thresholds`` (None: no thresholds)."""


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
        self._final_channels: dict[str, Any] | None = None

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
            "settle": s.settle,
            "target_sparsity": s.sparsity,
            "overall_sparsity": zeros / total if total else 0.0,
            "prunable_params": total,
            "zeros": zeros,
            "steps": self.step_count,
            "components": [c.model_dump(exclude={"schema_version"}) for c in self.component_sparsity()],
            "layers": [x.model_dump(exclude={"schema_version"}) for x in self.layer_sparsity()],
            "task_weights": self.task_weights(),
            "structure": s.structure,
            "channels": self.channels(),
        }

    def channels(self) -> dict[str, Any] | None:
        """A channel run's summary (``ChannelReport``'s fields; sizes after removal once finalized); None for
        weight runs."""
        if self._final is not None:
            return self._final_channels
        live = getattr(self.pruner, "channel_report", None)
        return live() if live is not None else None

    def finalize(self) -> nn.Module:
        """Bake the pruning into the user's model and return it: plain parameters, exact zeros, its own class,
        its ``state_dict`` keys in their order. Lands exactly on the target even if fewer than ``steps`` steps
        ran (the level is projected onto the target first). The ``Pruning`` is spent afterwards."""
        self._check_open()
        if self.step_count < self.settings.steps:
            self.pruner.after_step_(self.settings.steps)
        layers, thresholds = self.pruner.measure(), self.pruner.thresholds()
        summary = getattr(self.pruner, "channel_summary", None)
        model = self.pruner.bake_()
        mods = dict(model.named_modules())
        for stat in layers:
            # Weights that were exactly zero before thresholding count as zeros in both views.
            zeros = int((mods[stat.fqn].weight == 0).sum())
            assert zeros == stat.zeros, f"baked {stat.fqn} has {zeros} zeros, the pruned view had {stat.zeros}"
        self._final, self._final_thresholds = layers, thresholds
        if summary is not None:
            self._final_channels = summary(model)  # removes the channels from a copy to count what it saves
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
        try:
            self.pruner.module.load_state_dict(state["model"])
        except RuntimeError as exc:  # missing or unexpected entries: another version's or another method's state
            first = str(exc).strip().splitlines()[-1].strip()[:200]
            raise CheckpointError(
                f"the saved state does not fit this {self.pruner.name} run ({first}); it was written by another "
                "adapmtl version or with other options: start the run again (prune --overwrite)"
            ) from exc
        self.weighting.load_state_dict(state["weighting"])
        self.step_count = int(state["step"])

    def _check_open(self) -> None:
        if self._final is not None:
            raise ConfigError("this Pruning was finalized; use the model finalize() returned")
