"""How the split of sparsity between threshold groups moves during fine-tuning (``--allocation``).

The level controller (``schedule.py``) sets the overall level after every step with one common logit offset;
the allocation rule decides how the groups (components) move apart:

* ``adam`` — the thresholds are ordinary parameters: Adam steps on their logits at ``--threshold-lr`` (the
  paper's form, with our level controller). Adam normalises each logit's step to about the learning rate
  whatever the gradient's size, so how strongly a component's loss reacts barely reaches the split.
* ``frozen`` — the thresholds only follow the controller: the split stays where the start put it (the control
  that shows what learning adds).
* ``marginal`` — a Lagrangian rule: move the split toward equal marginal loss per pruned weight. For group
  ``c`` with threshold ``t_c = sigmoid(s_c)``, ``g_c = ∂L/∂s_c`` (autograd, the weighted task loss) is the
  loss's increase per unit of logit and ``d_c = ∂zeros_c/∂s_c`` the zeros it buys, measured each step from the
  magnitudes in a thin band around the threshold: ``d_c ≈ #{|w|/m ∈ [t·e^{−ε}, t·e^{ε}]} / (2ε) · (1 − t)``.
  With ``λ_c = g_c / d_c`` (exponential moving averages of both) and ``λ̂ = Σ g / Σ d`` (the cost per zero of
  moving every group together, the controller's direction), each logit takes the step
  ``−(η / steps) · (λ_c / λ̂ − 1)``, clipped to ``±max_step``: a group whose loss pays more per pruned weight than the
  average gets a lower threshold (stays denser), one that pays less prunes more, in proportion to the size of
  the difference. At the fixed point every ``λ_c`` is equal, the KKT condition of minimising the loss at the
  given zero count. With soft thresholds a weight at the margin is already near zero, so ``g_c`` is mostly the
  cost of shrinking the group's survivors: exactly what raising ``t_c`` costs in this parametrization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adapmtl_cli.sparsity.thresholds import ThresholdedModel

ALLOCATIONS = ("adam", "marginal", "frozen")
RUN_RATE = 0.2
"""η: logit movement over the whole run per unit of relative marginal-cost difference (``λ_c / λ̂ − 1``); each
step moves ``η / steps``, so the split moves as far in a 3000-step run as in a 200-step one. Chosen on the quality
benchmark's dev split (200 steps: per-step rates 0.05, 0.02, 0.01, 0.005, 0.0025 and 0.001 tried; 0.001, i.e.
η = 0.2, had the best mean Δ_T over 90% and 95%, 3 seeds; docs/architecture.md, "How the split moves")."""
MAX_STEP = 0.1
"""The largest logit step one update takes (a threshold moves by at most about 10% per step)."""
BAND = 0.05
"""ε: half-width of the magnitude band (in log units) around each threshold that measures ``d_c``."""
SMOOTHING = 0.9
"""EMA factor of ``g_c`` and ``d_c`` (minibatch gradients are noisy)."""
SIGN_AWARE = False
"""Dev-split experiment (issue #13): step ``−(η/steps)(λ_c − λ̂)/|λ̂|`` instead of ``(λ_c/λ̂ − 1)``, identical
when ``λ̂ > 0`` and also moving the split on steps where pruning lowers the average loss (``λ̂ <= 0``)."""


class MarginalAllocator(nn.Module):
    """The ``marginal`` rule's state (EMAs, saved with the model's state so a resume continues exactly)."""

    grad_ema: torch.Tensor
    density_ema: torch.Tensor
    updates: torch.Tensor

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.register_buffer("grad_ema", torch.zeros(groups, dtype=torch.float64))
        self.register_buffer("density_ema", torch.zeros(groups, dtype=torch.float64))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def step_(self, tm: ThresholdedModel, magnitudes: list[torch.Tensor], *, steps: int) -> torch.Tensor:
        """Move the logits of ``tm``'s bank one step toward equal marginal cost; returns the steps taken.

        Args:
            magnitudes: per group (bank order), the magnitudes its threshold is compared with (``|w| / m``).
            steps: the run's step budget (each step moves ``RUN_RATE / steps`` per unit of cost difference).
        """
        groups = tm.bank.groups
        logits = torch.stack([tm.bank.logit(g).detach().double() for g in groups]).cpu()
        grads = torch.stack([_grad(tm.bank.logit(g)) for g in groups]).cpu()
        density = torch.stack([_density(m, float(torch.sigmoid(s))) for m, s in zip(magnitudes, logits, strict=True)])
        self.updates += 1
        self.grad_ema.mul_(SMOOTHING).add_(grads.to(self.grad_ema.device), alpha=1 - SMOOTHING)
        self.density_ema.mul_(SMOOTHING).add_(density.to(self.density_ema.device), alpha=1 - SMOOTHING)
        correction = 1 - SMOOTHING ** int(self.updates)  # bias correction of the first EMA steps
        g = self.grad_ema.cpu() / correction
        d = (self.density_ema.cpu() / correction).clamp_min(1.0)
        total_g, total_d = float(g.sum()), float(d.sum())
        moves = torch.zeros_like(logits)
        if len(groups) < 2 or not math.isfinite(total_g) or total_g == 0:
            return moves  # one group, or no signal: nothing to rebalance
        if total_g < 0 and not SIGN_AWARE:
            return moves  # pruning does not cost loss on average: nothing to rebalance
        mean = total_g / total_d
        relative = (g / d - mean) / abs(mean)  # == ratio - 1 when mean > 0
        moves = (-(RUN_RATE / max(1, steps)) * relative).clamp(-MAX_STEP, MAX_STEP)
        for i, group in enumerate(groups):
            param = tm.bank.logit(group)
            param.add_(moves[i].to(param.dtype).to(param.device))
        return moves


def _grad(param: nn.Parameter) -> torch.Tensor:
    grad = param.grad
    if grad is None:
        return torch.zeros((), dtype=torch.float64)
    value = grad.detach().double()
    return value if bool(torch.isfinite(value)) else torch.zeros((), dtype=torch.float64)


def _density(mags: torch.Tensor, t: float) -> torch.Tensor:
    """``d zeros / d logit`` at threshold ``t``: the magnitudes within ``t·e^{±ε}``, per logit unit."""
    lo, hi = t * math.exp(-BAND), t * math.exp(BAND)
    inside = torch.count_nonzero(mags <= hi) - torch.count_nonzero(mags <= lo)
    return (inside.double() / (2 * BAND) * (1 - t)).cpu()
