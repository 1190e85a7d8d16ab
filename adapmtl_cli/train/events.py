"""The scalars of a logged training step, named for dashboards, and a TensorBoard writer for them (optional).

The same numbers ``metrics.jsonl`` records every ``--log-every`` steps: total and per-task loss, task weights,
target and measured sparsity, sparsity per threshold group, thresholds. TensorBoard support goes through
``torch.utils.tensorboard``, which needs the ``tensorboard`` package; without it ``--tensorboard`` is a
one-line ``ConfigError`` raised before any work starts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.train.loop import StepInfo

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
