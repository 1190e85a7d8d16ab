"""Iterative magnitude pruning (Frankle & Carbin, ICLR 2019) inside the fine-tuning budget.

IMP alternates pruning and retraining: ``K = mask_rounds.ROUNDS`` (4) rounds, round ``k`` setting the global
magnitude mask (largest ``|w|`` over every prunable layer) to

    s_k = 1 - (1 - s) ** (k / K)

so each round removes the same fraction of the surviving weights, and the weights keep training between rounds
(no rewinding; that is ``lth``). The rounds are spread like gmp's cubic ramp: round 1 prunes the dense model
before step 1, round ``K`` starts where the ramp ends (``ramp_end * steps``, 75% by default), evenly spaced in
between, so the last round retrains for the hold phase; the last round never starts later than
``steps - ceil(steps / K)`` (``--ramp-end 1`` still leaves it an even share of retraining). Masks are nested
across rounds and the last round's mask is exactly the target.
"""

from __future__ import annotations

import math

from adapmtl_cli.methods.base import MethodContext
from adapmtl_cli.methods.mask_rounds import ROUNDS, MagnitudeRounds
from adapmtl_cli.methods.registry import register_method
from adapmtl_cli.sparsity.schedule import ramp_steps


def last_round_start(steps: int, ramp_end: float, rounds: int = ROUNDS) -> int:
    """The step after which IMP's last round prunes to the target: the ramp's end, leaving retraining steps."""
    ramp = ramp_steps(steps, ramp_end)  # where gmp's cubic ramp reaches the target
    return max(0, min(ramp, steps - math.ceil(steps / rounds)))


@register_method("imp")
def build(ctx: MethodContext) -> MagnitudeRounds:
    return MagnitudeRounds("imp", ctx, last=last_round_start(ctx.steps, ctx.ramp_end))
