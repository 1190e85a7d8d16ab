"""Task-loss weights: AdapMTL's adaptive weighting, and equal weights for ablation.

AdapMTL (Xiang et al., ACM MM 2024) weighs each task by how strongly its loss reacts while pruning goes on:
``d_i(k) = |L_i(k-1) - L_i(k)| / (L_i(k) + eps)``, averaged over a moving window, normalised so the weights sum
to the number of tasks ``T``, equal (1) during a warm-up. The original code fixes warm-up 5000 and window 500 of
20 000 steps and normalises to a hard-coded 3; here warm-up and window are fractions of the run, ``T`` is the
real task count, and optional EMA smoothing of the losses reduces the batch-to-batch noise in ``d_i``.
The weights are plain floats: no gradient flows through them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

WEIGHTINGS = ("adaptive", "equal")


class EqualWeighting:
    """Every task weighs 1."""

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)

    def update(self, step: int, losses: dict[str, float]) -> None:
        del step, losses

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class AdaptiveWeighting:
    """AdapMTL's weights from the windowed relative change of each task's loss."""

    def __init__(
        self,
        tasks: Sequence[str],
        total_steps: int,
        *,
        warmup: float = 0.25,
        window: float = 0.025,
        min_window: int = 10,
        smoothing: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        self.tasks = list(tasks)
        self.warmup_steps = int(round(warmup * total_steps))
        self.window = max(min_window, int(round(window * total_steps)))
        self.smoothing = smoothing
        self.eps = eps
        self.prev: dict[str, float] = {}
        self.history: dict[str, deque[float]] = {t: deque(maxlen=self.window) for t in self.tasks}

    def update(self, step: int, losses: dict[str, float]) -> None:
        """Record the losses of optimizer step ``step`` (0-based)."""
        for t in self.tasks:
            loss = float(losses[t])
            if not math.isfinite(loss):
                continue
            if self.smoothing and t in self.prev:
                loss = self.smoothing * self.prev[t] + (1 - self.smoothing) * loss
            if step >= self.warmup_steps and t in self.prev:
                self.history[t].append(abs(self.prev[t] - loss) / (abs(loss) + self.eps))
            self.prev[t] = loss

    def weights(self) -> dict[str, float]:
        full = all(len(self.history[t]) >= self.window for t in self.tasks)
        if not full:
            return dict.fromkeys(self.tasks, 1.0)
        raw = {t: sum(self.history[t]) / len(self.history[t]) for t in self.tasks}
        total = sum(raw.values())
        if total <= 0 or not math.isfinite(total):
            return dict.fromkeys(self.tasks, 1.0)
        n = len(self.tasks)
        return {t: n * v / total for t, v in raw.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"prev": dict(self.prev), "history": {t: list(h) for t, h in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev = {t: float(v) for t, v in state["prev"].items()}
        for t, values in state["history"].items():
            self.history[t].clear()
            self.history[t].extend(float(v) for v in values)


def make_weighting(name: str, tasks: Sequence[str], total_steps: int) -> AdaptiveWeighting | EqualWeighting:
    if name == "adaptive":
        return AdaptiveWeighting(tasks, total_steps)
    if name == "equal":
        return EqualWeighting(tasks)
    raise ValueError(f"unknown weighting {name!r}")
