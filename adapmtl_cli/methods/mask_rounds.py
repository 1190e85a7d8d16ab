"""Prune/retrain rounds of global magnitude masks, shared by ``imp`` and ``lth``.

Round ``k`` of ``K`` (``k = 1..K``) starts after optimizer step ``t_k = floor((k - 1) * last / (K - 1))`` (round 1
at step 0, before the first step; round ``K`` at ``last``) and sets the global magnitude mask to sparsity

    s_k = 1 - (1 - s) ** (k / K)

so every round removes the same fraction of the weights still kept and the last round's mask is the target.
Weights keep training between rounds. A round ranks only the weights still kept (pruned ones score below every
kept one), so the masks are nested: a weight pruned in one round stays pruned in every later one. The count is
exact (``keep_k = N - round(s_k * N)``, cut at a count, never at a magnitude), so ties cannot overshoot.

The state is the masks and the step: ``after_step_`` prunes when the mask keeps more weights than the step's
round allows, so a resumed run (masks loaded from the state file) and an early ``finalize`` behave alike.
"""

from __future__ import annotations

import torch

from adapmtl_cli.methods.base import MaskPruner, MethodContext
from adapmtl_cli.sparsity.masks import mask_zeros

ROUNDS = 4
"""Prune/retrain rounds K of ``imp`` (and of ``lth``'s mask search). Four rounds remove ``1 - (1 - s) ** (1/4)``
of the remaining weights each: at 90% about 44% per round, at 98% about 62%."""


def round_sparsity(k: int, rounds: int, final: float) -> float:
    """``s_k = 1 - (1 - final) ** (k / rounds)``; exactly ``final`` for the last round."""
    if k >= rounds:
        return final
    return 1.0 - (1.0 - final) ** (k / rounds)


def round_starts(last: int, rounds: int) -> list[int]:
    """The step after which each round prunes: evenly spaced from 0 to ``last`` (round 1 at 0, round K at last)."""
    if rounds < 1 or last < 0:
        raise ValueError(f"need rounds >= 1 and last >= 0, got rounds={rounds}, last={last}")
    if rounds == 1:
        return [last]
    return [(k * last) // (rounds - 1) for k in range(rounds)]


class MagnitudeRounds(MaskPruner):
    """Global magnitude masks tightened in ``rounds`` rounds, the last one starting after step ``last``."""

    def __init__(self, name: str, ctx: MethodContext, *, last: int, rounds: int = ROUNDS) -> None:
        # gradual=True: the base class prunes nothing at build; round 1 (and any round due at step 0) runs here.
        super().__init__(name, ctx, gradual=True)
        self.rounds = rounds
        self.starts = round_starts(min(last, ctx.steps), rounds)
        self.apply_(self.target_at(0))

    def round_at(self, step: int) -> int:
        """The round in force after ``step`` optimizer steps (rounds due at the same step count as one)."""
        return max(1, sum(1 for t in self.starts if t <= step))

    def target_at(self, step: int) -> float:
        return round_sparsity(self.round_at(step), self.rounds, self.ctx.sparsity)

    def keep_at(self, step: int) -> int:
        """Weights the mask keeps after ``step`` optimizer steps."""
        return self.total - int(round(self.target_at(step) * self.total))

    def kept(self) -> int:
        """Weights the mask keeps now."""
        return int(torch.stack([self.mm.mask(f).sum() for f in self.mm.groups]).sum())

    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        """``|w|`` of the kept weights; pruned ones score -1, below every kept one (so masks stay nested)."""
        return {f: torch.where(self.mm.mask(f), self.mm.raw_weight(f).abs(), -1.0) for f in self.mm.groups}

    def after_step_(self, step: int) -> float:
        if (step in self.starts or step >= self.ctx.steps) and self.kept() > self.keep_at(step):
            self.apply_(self.target_at(step))
        return self.sparsity_now()

    def sparsity_now(self) -> float:
        """Zeros of the effective weights over all prunable weights (what ``after_step_`` returns)."""
        return sum(mask_zeros(self.mm).values()) / self.total
