"""Task-loss weights: AdapMTL's adaptive weighting (our estimator and the paper's), normalised and equal weights.

AdapMTL (Xiang et al., ACM MM 2024) weighs each task by how strongly its loss reacts while pruning goes on.

``paper`` (:class:`PaperWeighting`) is the paper's estimator: ``d_i(k) = |L_i(k-1) - L_i(k)| / (L_i(k) + eps)``,
averaged over a moving window, normalised so the weights sum to the number of tasks ``T``, equal (1) during a
warm-up. The original code fixes warm-up 5000 and window 500 of 20 000 steps and normalises to a hard-coded 3; here
warm-up and window are fractions of the run and ``T`` is the real task count. With a few hundred steps, the
step-to-step change is mostly minibatch noise, not a reaction to pruning, and it favours tasks with noisy losses.

``adaptive`` (:class:`AdaptiveWeighting`, ``adapmtl``'s default before issue #13) measures the reaction against the
dense model: each task's loss is compared with its own level at the start of the run (before the sparsity ramp has
removed much), as ``r_i = EMA(L_i) / L_i(dense)``, and ``w_i ∝ r_i / L_i(dense)``: a task whose loss grew more,
relative to where it started, weighs more (the paper's principle), and dividing by the dense level makes the
weights independent of each loss's scale (cross-entropy ~1 and 1 − cosine ~0.1 count alike), which is what Δ_T, a
sum of relative changes, rewards. Measured in ``docs/architecture.md`` ("Making the default win").
``norm``
(:class:`NormWeighting`) is ``w_i ∝ 1 / L_i(dense)`` alone: the control that shows what the robustness factor
adds; it did as well as ``adaptive`` on the quality benchmark's dev split, so it is ``adapmtl``'s default now
(``methods/adapmtl.py``), and the test table has the two tied (docs/architecture.md, "How the split moves"). Under
Adam a task's weight barely changes how its own head trains (each parameter's step is normalised); it acts on the
shared backbone and on the ``marginal`` rule's per-component costs. The weights are plain floats: no gradient
flows through them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

WEIGHTINGS = ("adaptive", "paper", "equal", "norm")
ROBUSTNESS_POWER = 1.0
"""γ in ``adaptive``'s ``w_i ∝ r_i^γ / B_i``: 1 is the estimator above, 0 is ``norm``, −1 divides each loss by its
current level. A dev-split switch (issue #13, session 14; 40 pairs against ``norm``: γ = −1 −1.36 [−2.22, −0.49],
γ = 1 −0.57 [−1.34, +0.19], γ = 3 −2.59 [−3.81, −1.38] Δ_T): tracking the loss either way costs quality here."""


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


class PaperWeighting:
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


class AdaptiveWeighting:
    """Weights from each task's loss relative to its dense level: ``w_i ∝ (EMA(L_i) / B_i) / B_i``, summing to T.

    ``B_i`` is the mean of task ``i``'s first ``max(min_base, base * total_steps)`` finite losses; until every task
    has its baseline, every weight is 1. ``EMA`` uses factor ``ema`` per step (about ten steps of memory).
    """

    def __init__(
        self, tasks: Sequence[str], total_steps: int, *, base: float = 0.02, min_base: int = 5, ema: float = 0.9
    ) -> None:
        self.tasks = list(tasks)
        self.base_steps = max(min_base, int(round(base * total_steps)))
        self.ema = ema
        self.base_sum: dict[str, float] = dict.fromkeys(self.tasks, 0.0)
        self.base_count: dict[str, int] = dict.fromkeys(self.tasks, 0)
        self.avg: dict[str, float] = {}

    def update(self, step: int, losses: dict[str, float]) -> None:
        """Record the losses of optimizer step ``step`` (0-based); non-finite losses are skipped."""
        del step
        for t in self.tasks:
            loss = float(losses[t])
            if not math.isfinite(loss):
                continue
            if self.base_count[t] < self.base_steps:
                self.base_sum[t] += loss
                self.base_count[t] += 1
            self.avg[t] = loss if t not in self.avg else self.ema * self.avg[t] + (1 - self.ema) * loss

    def weights(self) -> dict[str, float]:
        if any(self.base_count[t] < self.base_steps for t in self.tasks):
            return dict.fromkeys(self.tasks, 1.0)
        base = {t: self.base_sum[t] / self.base_count[t] for t in self.tasks}
        if any(not b > 0 for b in base.values()):
            return dict.fromkeys(self.tasks, 1.0)
        raw = {t: self._raw(t, base[t]) for t in self.tasks}
        total = sum(raw.values())
        if total <= 0 or not math.isfinite(total):
            return dict.fromkeys(self.tasks, 1.0)
        return {t: len(self.tasks) * v / total for t, v in raw.items()}

    def _raw(self, task: str, base: float) -> float:
        """The unnormalised weight: the loss's growth since its dense level, over that level (``EMA(L) / B²``)."""
        if ROBUSTNESS_POWER == 1.0:
            return self.avg[task] / base**2  # the committed cells' exact arithmetic
        return (self.avg[task] / base) ** ROBUSTNESS_POWER / base

    def state_dict(self) -> dict[str, Any]:
        return {"base_sum": dict(self.base_sum), "base_count": dict(self.base_count), "avg": dict(self.avg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_sum = {t: float(v) for t, v in state["base_sum"].items()}
        self.base_count = {t: int(v) for t, v in state["base_count"].items()}
        self.avg = {t: float(v) for t, v in state["avg"].items()}


class NormWeighting(AdaptiveWeighting):
    """``w_i ∝ 1 / B_i``: each loss normalised by its dense level, without ``adaptive``'s robustness factor.

    The control for ``adaptive``: what the reaction to pruning adds over plain normalisation.
    """

    def _raw(self, task: str, base: float) -> float:
        del task
        return 1.0 / base


Weighting = AdaptiveWeighting | PaperWeighting | EqualWeighting | NormWeighting


def make_weighting(name: str, tasks: Sequence[str], total_steps: int) -> Weighting:
    if name == "adaptive":
        return AdaptiveWeighting(tasks, total_steps)
    if name == "paper":
        return PaperWeighting(tasks, total_steps)
    if name == "equal":
        return EqualWeighting(tasks)
    if name == "norm":
        return NormWeighting(tasks, total_steps)
    raise ValueError(f"unknown weighting {name!r}")
