"""The sparsity target over time and the controller that makes the thresholds follow it exactly.

Target: a cubic ramp (Zhu & Gupta 2017) from ``initial`` to ``final`` over the first ``ramp_end`` fraction of
the run, then held: ``target(k) = final + (initial - final) * (1 - k / K) ** 3`` for ``k < K``.

Controller: the thresholds' gradients decide how sparsity is split between groups; the controller decides only
the level. After every optimizer step it adds one common offset ``delta`` to every threshold logit so that the
overall zero count is the scheduled one. Near ``sigmoid``'s tail a common logit offset scales every threshold by
the same factor ``e^delta``, so the learned ratios between groups survive. ``delta`` is found by bisection on
exact counts from sorted magnitudes, so the final sparsity is exact up to ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from adapmtl_cli.thresholds import ThresholdedModel


def cubic_target(step: int, total: int, final: float, initial: float = 0.0, ramp_end: float = 0.75) -> float:
    """Scheduled overall sparsity after ``step`` optimizer steps out of ``total``."""
    ramp = max(1, round(total * ramp_end))
    if step >= ramp:
        return final
    frac = 1.0 - step / ramp
    return final + (initial - final) * frac**3


@dataclass(frozen=True)
class LevelFit:
    delta: float
    zeros: int
    target_zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total


def _count(sorted_mags: Sequence[torch.Tensor], logits: torch.Tensor, delta: float) -> int:
    t = torch.sigmoid((logits + delta).float())
    return int(sum(int(torch.searchsorted(m, t[i : i + 1], right=True)) for i, m in enumerate(sorted_mags)))


def _sorted_magnitudes(tm: ThresholdedModel) -> list[torch.Tensor]:
    by_group: dict[str, list[torch.Tensor]] = {g: [] for g in tm.bank.groups}
    for fqn, g in tm.groups.items():
        by_group[g].append(tm.raw_weight(fqn).detach().abs().flatten().float())
    return [torch.sort(torch.cat(by_group[g])).values for g in tm.bank.groups]


@torch.no_grad()
def fit_level_(
    tm: ThresholdedModel, target: float, *, sorted_mags: list[torch.Tensor] | None = None, iters: int = 60
) -> LevelFit:
    """Shift every threshold logit by one offset so that overall sparsity equals ``target``; in place.

    Args:
        sorted_mags: per group, the sorted ``|w|`` (from a recent step); computed exactly when omitted.

    Returns the applied offset and the resulting zero count (exact when ``sorted_mags`` is fresh).
    """
    groups = tm.bank.groups
    if sorted_mags is None:
        sorted_mags = _sorted_magnitudes(tm)
    total = sum(m.numel() for m in sorted_mags)
    want = int(round(target * total))
    logits = torch.stack([tm.bank.logit(g).detach().float() for g in groups])
    lo, hi = -40.0, 40.0
    if _count(sorted_mags, logits, 0.0) == want:
        return LevelFit(0.0, want, want, total)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if _count(sorted_mags, logits, mid) < want:
            lo = mid
        else:
            hi = mid
    # Pick the side whose count is closer to the wanted one.
    c_lo, c_hi = _count(sorted_mags, logits, lo), _count(sorted_mags, logits, hi)
    delta, zeros = (lo, c_lo) if abs(c_lo - want) < abs(c_hi - want) else (hi, c_hi)
    new = (logits + delta).float()
    for i, g in enumerate(groups):
        tm.bank.logit(g).copy_(new[i])
    return LevelFit(delta, zeros, want, total)


class LevelController:
    """Calls ``fit_level_`` after each step, re-sorting the magnitudes only every ``refresh_every`` steps.

    Sorting is the expensive part (about 3 s for 26 M weights on two CPU cores), while weights move little per
    step; between refreshes the level is fitted on slightly stale magnitudes. Refreshes happen on steps that are
    multiples of ``refresh_every`` (so a run resumed from a periodic save sees the same refreshes), and always
    with ``exact=True`` (the last step), so the final sparsity is exact.
    """

    def __init__(self, tm: ThresholdedModel, refresh_every: int | None = None) -> None:
        self.tm = tm
        n = sum(tm.raw_weight(f).numel() for f in tm.groups)
        self.refresh_every = refresh_every or max(1, n // 2_000_000)
        self._cache: list[torch.Tensor] | None = None

    def step_(self, step: int, target: float, *, exact: bool = False) -> LevelFit:
        if exact or self._cache is None or step % self.refresh_every == 0:
            self._cache = _sorted_magnitudes(self.tm)
        return fit_level_(self.tm, target, sorted_mags=self._cache)
