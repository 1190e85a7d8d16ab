"""What the training loop reports: each step's numbers, rollbacks, their scalars, and a TensorBoard sink.

``StepInfo`` and ``Rollback`` are what the loop hands its callbacks and what ``metrics.jsonl`` records. The
scalars of a logged step are named for dashboards; the TensorBoard writer is optional.

The same numbers ``metrics.jsonl`` records every ``--log-every`` steps: total and per-task loss, task weights,
target and measured sparsity, sparsity per threshold group, thresholds. TensorBoard support goes through
``torch.utils.tensorboard``, which needs the ``tensorboard`` package; without it ``--tensorboard`` is a
one-line ``ConfigError`` raised before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapmtl_cli.errors import ConfigError


@dataclass
class StepInfo:
    """What the loop reports after a step (and writes to ``metrics.jsonl`` every ``log_every`` steps)."""

    step: int
    total_steps: int
    loss: float
    task_losses: dict[str, float]
    task_weights: dict[str, float]
    target: float
    sparsity: float | None = None
    group_sparsity: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss": self.loss,
            "task_losses": self.task_losses,
            "task_weights": self.task_weights,
            "target": self.target,
            "sparsity": self.sparsity,
            "group_sparsity": self.group_sparsity,
            "thresholds": self.thresholds,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class Rollback:
    """A divergence the loop recovered from: what went wrong, where it went back to, the new learning rates."""

    step: int
    """The step of the good state the loop went back to (it continues from there)."""
    failed_step: int
    reason: str
    lrs: list[float]
    attempt: int
    max_attempts: int

    def record(self) -> dict[str, Any]:
        return {"event": "rollback", **{k: getattr(self, k) for k in self.__dataclass_fields__}}


TENSORBOARD_HINT = "pip install tensorboard"


def step_scalars(info: StepInfo) -> dict[str, float]:
    """``tag -> value`` for one step; tags group as TensorBoard shows them (``loss/``, ``sparsity/``, ...)."""
    out = {"loss/total": info.loss, "sparsity/target": info.target}
    if info.sparsity is not None:
        out["sparsity/overall"] = info.sparsity
    out.update({f"loss/{t}": v for t, v in info.task_losses.items()})
    out.update({f"task_weight/{t}": v for t, v in info.task_weights.items()})
    out.update({f"sparsity/{g}": v for g, v in info.group_sparsity.items()})
    out.update({f"threshold/{g}": v for g, v in info.thresholds.items()})
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


class TensorBoardLog:
    """Writes ``step_scalars`` of every logged step to an event file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                f"--tensorboard {str(folder)!r} needs the tensorboard package, which is not installed; "
                f"{TENSORBOARD_HINT}, or drop --tensorboard (metrics.jsonl has the same numbers)"
            ) from None
        if Path(folder).exists() and not Path(folder).is_dir():
            raise ConfigError(f"--tensorboard {str(folder)!r} is a file; pass a folder")
        self._writer: Any = SummaryWriter(log_dir=str(folder))

    def log(self, info: StepInfo) -> None:
        for tag, value in step_scalars(info).items():
            self._writer.add_scalar(tag, value, info.step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
