"""Lottery ticket with rewinding (Frankle & Carbin, ICLR 2019; rewinding: Frankle et al., ICML 2020).

A winning ticket is a sparse mask plus the weights it starts from. Inside the fine-tuning budget:

1. Steps ``1..H`` with ``H = steps // 2`` (the rewind step) run IMP's rounds (``mask_rounds.MagnitudeRounds``,
   ``K = 4``): round ``k`` prunes the global magnitude mask to ``s_k = 1 - (1 - s) ** (k / K)`` after step
   ``floor((k - 1) * H / (K - 1))``, weights training between rounds; round ``K`` prunes to the target after
   step ``H``, from the magnitudes trained so far. That mask is the ticket.
2. Right after it, every parameter of the model (prunable weights, biases, normalisation parameters, layers
   that are not pruned) and every floating-point buffer (BatchNorm running statistics) is rewound to its value
   in the dense checkpoint the method was built from: ``w <- w_dense``, so ``w * mask = w_dense * mask``. The
   rewind point is the start of fine-tuning, i.e. the trained dense model (late rewinding: the dense
   checkpoint plays the part of "iteration k of training" in Frankle et al.).
3. Steps ``H+1..steps`` retrain the ticket with the mask fixed; the run ends exactly on the target.

The dense copy is taken when the method is built (so ``prepare`` must be given the dense model; a resumed run
rebuilds it from the same checkpoint) and stays on the weights' device: one more copy of the model's
floating-point state in memory. The optimizer's moments are not reset at the rewind: the method does not own
the optimizer (``Pruner`` only hands out parameter groups), so for Adam the first and second moments of the
first half carry over into the retraining (the first moment fades within ~10 steps at beta1 0.9, the second
over ~1000 at beta2 0.999). A run that stops before step ``H`` and is finalized keeps the magnitude mask at
the target without rewinding.
"""

from __future__ import annotations

import torch

from adapmtl_cli.methods.base import MethodContext
from adapmtl_cli.methods.mask_rounds import MagnitudeRounds
from adapmtl_cli.methods.registry import register_method


class LotteryTicket(MagnitudeRounds):
    """IMP's rounds over the first half, then the weights rewound to the dense checkpoint, then retraining."""

    def __init__(self, name: str, ctx: MethodContext) -> None:
        self.rewind_step = ctx.steps // 2
        super().__init__(name, ctx, last=self.rewind_step)
        # Masks are buffers beside the raw weights: pruning round 1 left every weight at its dense value.
        self.dense = {n: t.detach().clone() for n, t in self._state().items()}

    def _state(self) -> dict[str, torch.Tensor]:
        """What rewinding restores: every parameter and floating-point buffer (not the masks, not counters)."""
        state: dict[str, torch.Tensor] = dict(self.mm.named_parameters())
        state.update((n, b) for n, b in self.mm.named_buffers() if b.is_floating_point())
        return state

    @torch.no_grad()
    def rewind_(self) -> None:
        """Put every parameter and floating-point buffer back to its dense value (masks kept)."""
        for name, tensor in self._state().items():
            tensor.copy_(self.dense[name])

    def after_step_(self, step: int) -> float:
        sparsity = super().after_step_(step)  # at the rewind step: the last round, from the trained magnitudes
        if step == self.rewind_step:
            self.rewind_()
            sparsity = self.sparsity_now()
        return sparsity


@register_method("lth")
def build(ctx: MethodContext) -> LotteryTicket:
    return LotteryTicket("lth", ctx)
