"""The sparsity target over time and the controller that makes the thresholds follow it exactly.

Target: a cubic ramp (Zhu & Gupta 2017) from ``initial`` to ``final`` over the first ``ramp_end`` fraction of
the run, then held: ``target(k) = final + (initial - final) * (1 - k / K) ** 3`` for ``k < K``.

Controller: the thresholds' gradients decide how sparsity is split between groups; the controller decides only
the level. After every optimizer step it adds one common offset ``delta`` to every threshold logit so that the
overall zero count is the scheduled one. Near ``sigmoid``'s tail a common logit offset scales every threshold by
the same factor ``e^delta``, so the learned ratios between groups survive. ``delta`` is found by bisection on
exact zero counts of the current weights at every step, so the sparsity is exact up to ties.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.sparsity.thresholds import ThresholdedModel


def ramp_steps(total: int, ramp_end: float) -> int:
    """The step at which the cubic ramp reaches the target (the first ``ramp_end`` of ``total`` steps, at least 1)."""
    return max(1, round(total * ramp_end))


def cubic_target(step: int, total: int, final: float, initial: float = 0.0, ramp_end: float = 0.75) -> float:
    """Scheduled overall sparsity after ``step`` optimizer steps out of ``total``."""
    ramp = ramp_steps(total, ramp_end)
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


_SAMPLE = 1 << 16
"""About this many magnitudes (strided, all groups together) place the first, approximate bracket."""


def _flat(w: torch.Tensor) -> torch.Tensor:
    """All values of ``w`` as a 1-D view, in memory order (also for channels-last weights)."""
    strides = w.stride()
    order = sorted(range(w.dim()), key=lambda d: -strides[d])
    return w.permute(order).reshape(-1)


class Workspace:
    """Buffers reused by every call of ``fit_level_``: memory, never values that outlive a call.

    On a CPU, fresh pages for 26 M magnitudes cost ten times more than computing them (measured: 50 ms to
    allocate and fault in, 5 ms for ``abs``), so a controller keeps one workspace for the whole run.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, str], torch.Tensor] = {}

    def buffer(self, key: tuple[int, str], n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.numel() != n or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf


def group_magnitudes(tm: ThresholdedModel, ws: Workspace) -> list[torch.Tensor]:
    """Per group, ``|w|`` of all its layers in one flat fp32 buffer (unsorted, on the weights' device)."""
    by_group: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = {g: [] for g in tm.bank.groups}
    for fqn, g in tm.groups.items():
        by_group[g].append((_flat(tm.raw_weight(fqn).detach()), tm.layer_scale(fqn) if tm.scaled else None))
    out = []
    for i, g in enumerate(tm.bank.groups):
        weights = by_group[g]
        buf = ws.buffer((i, "mag"), sum(w.numel() for w, _ in weights), torch.float32, weights[0][0].device)
        offset = 0
        for w, scale in weights:
            part = buf[offset : offset + w.numel()]
            torch.abs(w, out=part)
            if scale is not None:  # |w| <= t * scale  <=>  |w| / scale <= t (up to one rounding)
                part.div_(scale)
            offset += w.numel()
        out.append(buf)
    return out


def _thresholds(logits: torch.Tensor, delta: float) -> torch.Tensor:
    # The same expression the forward evaluates (ThresholdBank.value of the shifted logit), so counts are exact.
    return torch.sigmoid((logits + delta).float())


class _ZeroCounter:
    """Exact zero counts ``sum_g #{|w| <= sigmoid(s_g + delta)}`` without sorting every weight.

    Sorting 26 M magnitudes takes seconds on a CPU, yet the count is only ever needed near the target. A sorted
    strided sample gives an approximate bracket ``[lo, hi]`` of offsets around the target count; one exact
    pass confirms it (``count(lo) < want <= count(hi)``, widening until it does) and collects the few
    magnitudes between the two brackets' thresholds. Inside the bracket a count is then the exact count at
    ``lo`` plus a binary search in those few sorted values; outside it the count's side of ``want`` is known
    (counts never decrease as the offset grows).
    """

    def __init__(self, mags: list[torch.Tensor], logits: torch.Tensor, want: int, ws: Workspace) -> None:
        self.mags, self.logits, self.want, self.ws = mags, logits, want, ws
        self.total = sum(m.numel() for m in mags)
        self.lo: float | None = None
        self.hi: float | None = None
        self.c_hi = 0
        self._bracket()

    def _le(self, i: int, which: str, t: torch.Tensor) -> torch.Tensor:
        """``mags[i] <= t`` into a reused mask."""
        m = self.mags[i]
        return torch.le(m, t, out=self.ws.buffer((i, which), m.numel(), torch.bool, m.device))

    def _full(self, delta: float) -> int:
        t = _thresholds(self.logits, delta)
        # count_nonzero: summing a bool tensor is ten times slower on the CPU.
        return int(torch.stack([torch.count_nonzero(self._le(i, "lo", t[i])) for i in range(len(self.mags))]).sum())

    def _approximate(self, margin: int) -> tuple[float | None, float | None]:
        """Offsets whose sampled counts are about ``want - margin`` and ``want + margin`` (None: unbounded)."""
        stride = max(1, self.total // _SAMPLE)
        crit, weight = [], []
        for s, m in zip(self.logits.tolist(), self.mags, strict=True):
            sample = m[::stride].double().cpu().clamp(0.0, 1.0)
            # |w| <= sigmoid(s + d)  <=>  d >= logit(|w|) - s: each weight's critical offset.
            crit.append(torch.logit(sample) - s)
            weight.append(torch.full_like(sample, m.numel() / max(1, sample.numel())))
        values, order = torch.sort(torch.cat(crit))
        counts = torch.cumsum(torch.cat(weight)[order], 0)

        def offset(count: float) -> float | None:
            if count <= 0 or count >= self.total:
                return None
            i = int(torch.searchsorted(counts, torch.tensor([count], dtype=counts.dtype)))
            return min(max(float(values[min(i, len(values) - 1)]), -40.0), 40.0)

        return offset(self.want - margin), offset(self.want + margin)

    def _bracket(self) -> None:
        if self.total <= 4 * _SAMPLE:  # small enough that sorting everything is the cheapest exact band
            assert self._try_band(None, None)
            return
        margin = 64 * max(1, self.total // _SAMPLE) + 64
        for _ in range(4):
            if self._try_band(*self._approximate(margin)):
                return
            margin *= 8
        assert self._try_band(None, None)  # every magnitude in the band: exact, as slow as a full sort

    def _try_band(self, lo: float | None, hi: float | None) -> bool:
        """Keep ``[lo, hi]`` as the bracket if ``count(lo) < want <= count(hi)``; None is an open end."""
        inf = torch.full_like(self.logits, math.inf)
        t_lo = -inf if lo is None else _thresholds(self.logits, lo)
        t_hi = inf if hi is None else _thresholds(self.logits, hi)
        below = [self._le(i, "lo", t_lo[i]) for i in range(len(self.mags))]
        upto = [self._le(i, "hi", t_hi[i]) for i in range(len(self.mags))]
        base = torch.stack([torch.count_nonzero(x) for x in below]).sum()
        c_lo, c_hi = torch.stack([base, torch.stack([torch.count_nonzero(x) for x in upto]).sum()]).tolist()
        if (lo is not None and c_lo >= self.want) or (hi is not None and c_hi < self.want) or c_lo > c_hi:
            return False
        band = []
        for m, x, u in zip(self.mags, below, upto, strict=True):
            # below is a subset of upto (t_lo <= t_hi): xor leaves "up to t_hi but not up to t_lo".
            band.append(torch.sort(m[torch.bitwise_xor(u, x, out=u)]).values)
        # One padded (groups, width) table: a single batched searchsorted per count.
        table = torch.full((len(band), max(1, max(x.numel() for x in band))), math.inf, device=self.logits.device)
        for i, x in enumerate(band):
            table[i, : x.numel()] = x
        self.lo, self.hi, self.t_lo, self.t_hi, self.base, self.band = lo, hi, t_lo, t_hi, base, table
        self.c_hi = int(c_hi)
        return True

    def count(self, delta: float, *, inside: bool = False) -> int:
        """The exact zero count at ``delta``; ``inside``: the caller knows that ``lo < delta < hi``."""
        t = _thresholds(self.logits, delta)
        n = self.base + torch.searchsorted(self.band, t[:, None], right=True).sum()
        if inside or (self.lo is None and self.hi is None):
            return int(n)
        ok = (t >= self.t_lo).all() & (t <= self.t_hi).all()
        got, is_inside = torch.stack([n, ok.long()]).tolist()
        return int(got) if is_inside else self._full(delta)

    def may_equal_want(self, delta: float) -> bool:
        """False when the bracket alone shows ``count(delta) != want``."""
        if self.lo is not None and delta <= self.lo:
            return False
        return not (self.hi is not None and delta >= self.hi and self.c_hi > self.want)

    def below_want(self, delta: float) -> bool:
        """``count(delta) < want``, decided without counting outside the bracket."""
        if self.lo is not None and delta <= self.lo:
            return True
        if self.hi is not None and delta >= self.hi:
            return False
        return self.count(delta, inside=True) < self.want


Bounds = dict[str, tuple[float, float]]
"""Per group, the lowest and highest sparsity it may have (``--component-sparsity NAME=MIN:MAX``)."""


def _bisect(counter: _ZeroCounter, want: int, iters: int) -> tuple[float, int]:
    """The offset whose exact zero count is closest to ``want``, and that count."""
    if counter.may_equal_want(0.0) and counter.count(0.0) == want:
        return 0.0, want
    lo, hi = -40.0, 40.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if counter.below_want(mid):
            lo = mid
        else:
            hi = mid
    # Pick the side whose count is closer to the wanted one.
    c_lo, c_hi = counter.count(lo), counter.count(hi)
    return (lo, c_lo) if abs(c_lo - want) < abs(c_hi - want) else (hi, c_hi)


def check_bounds(bounds: Bounds, sizes: dict[str, int], target: float) -> None:
    """Refuse bounds on unknown groups, inverted or out-of-range bounds, and bounds no split can meet."""
    for group, (low, high) in bounds.items():
        if group not in sizes:
            raise ConfigError(
                f"--component-sparsity names {group!r}, which is not a component; the components are {', '.join(sizes)}"
            )
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"--component-sparsity {group}={low}:{high} needs 0 <= MIN <= MAX <= 1")
    total = sum(sizes.values())
    least = sum(bounds.get(g, (0.0, 1.0))[0] * n for g, n in sizes.items()) / total
    most = sum(bounds.get(g, (0.0, 1.0))[1] * n for g, n in sizes.items()) / total
    if not least - 1e-9 <= target <= most + 1e-9:
        raise ConfigError(
            f"--component-sparsity bounds allow an overall sparsity between {least:.4f} and {most:.4f}, "
            f"but --sparsity is {target}; loosen the bounds or change the target"
        )


def _fit_bounded(
    mags: list[torch.Tensor], logits: torch.Tensor, want: int, groups: list[str], bounds: Bounds, iters: int
) -> tuple[torch.Tensor, int]:
    """Per-group offsets: one common offset for the free groups; a group the common fit would push past its
    bound is pinned at the bound with its own offset, and the rest are refitted without it."""
    offsets = torch.zeros_like(logits)
    free = list(range(len(groups)))
    pinned_zeros = 0
    while free:
        sub_want = want - pinned_zeros
        counter = _ZeroCounter([mags[i] for i in free], logits[free], sub_want, Workspace())
        delta, zeros = _bisect(counter, sub_want, iters)
        t = _thresholds(logits[free], delta)
        outside = []
        for j, i in enumerate(free):
            if groups[i] not in bounds:
                continue
            low, high = bounds[groups[i]]
            sparsity = int(torch.count_nonzero(mags[i] <= t[j])) / mags[i].numel()
            if sparsity < low or sparsity > high:
                outside.append((i, low if sparsity < low else high))
        if not outside:
            offsets[free] = delta
            return offsets, zeros + pinned_zeros
        for i, bound in outside:
            own = int(round(bound * mags[i].numel()))
            offsets[i], got = _bisect(_ZeroCounter([mags[i]], logits[i : i + 1], own, Workspace()), own, iters)
            pinned_zeros += got
            free.remove(i)
    return offsets, pinned_zeros


@torch.no_grad()
def fit_level_(
    tm: ThresholdedModel,
    target: float,
    *,
    iters: int = 60,
    workspace: Workspace | None = None,
    bounds: Bounds | None = None,
    magnitudes: list[torch.Tensor] | None = None,
) -> LevelFit:
    """Shift every threshold logit by one offset so that overall sparsity equals ``target``; in place.

    The offset is bisected on exact zero counts of the current weights; returns it and the resulting zero count
    (the target up to ties between equal magnitudes). With ``bounds``, a group whose sparsity would leave its
    ``(min, max)`` is pinned at the bound by its own offset and the others share the common one (``delta`` is
    then the free groups' offset, or NaN when every group is pinned).

    Args:
        workspace: buffers to reuse between calls (see ``Workspace``); a fresh one when omitted.
        magnitudes: ``group_magnitudes(tm, workspace)`` of the current weights, when the caller has them.
    """
    groups = tm.bank.groups
    ws = workspace if workspace is not None else Workspace()
    mags = magnitudes if magnitudes is not None else group_magnitudes(tm, ws)
    total = sum(m.numel() for m in mags)
    want = int(round(target * total))
    logits = torch.stack([tm.bank.logit(g).detach().float() for g in groups])
    if bounds:
        offsets, zeros = _fit_bounded(mags, logits, want, list(groups), bounds, iters)
        free = [i for i, g in enumerate(groups) if g not in bounds]
        delta = float(offsets[free[0]]) if free else math.nan
    else:
        delta, zeros = _bisect(_ZeroCounter(mags, logits, want, ws), want, iters)
        if delta == 0.0 and zeros == want:
            return LevelFit(0.0, want, want, total)
        offsets = torch.full_like(logits, delta)
    new = (logits + offsets).float()
    for i, g in enumerate(groups):
        tm.bank.logit(g).copy_(new[i])
    return LevelFit(delta, zeros, want, total)


class LevelController:
    """Calls ``fit_level_`` after each step: the level is exact, on the current weights, at every step.

    A pure function of the weights and thresholds (no cache), so a resumed run makes the same decisions as an
    uninterrupted one, and every process of a distributed run (which holds the same weights) makes the same.
    """

    def __init__(self, tm: ThresholdedModel, bounds: Bounds | None = None) -> None:
        self.tm = tm
        self.bounds = bounds or None
        self.workspace = Workspace()

    def step_(
        self, step: int, target: float, *, exact: bool = True, magnitudes: list[torch.Tensor] | None = None
    ) -> LevelFit:
        """Fit the level after optimizer step ``step``; ``exact`` is accepted for callers and always true.

        ``magnitudes``: the current weights' ``group_magnitudes`` in this controller's workspace, if computed.
        """
        del step, exact
        return fit_level_(self.tm, target, workspace=self.workspace, bounds=self.bounds, magnitudes=magnitudes)
