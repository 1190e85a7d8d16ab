"""Channel gates: whole output channels pruned by one learnable threshold per component (``--structure channel``).

A prunable channel belongs to a *channel group* (``model/channels.py``: the root conv/linear's filter and
everything that must shrink with it: BatchNorm entries, residual partners, the next layers' input slices).
Each channel ``j`` has a norm ``n_j`` (L2 over every coupled slice of the raw weights) and, normalised by its
group's scale ``m_g`` (``SCALE_RMS`` times the root mean square of the group's norms at the start, so that a
threshold in ``(0, 1)`` reaches every group alike), ``n_j / m_g``; its score ``r_j`` is its rank score in the
group (``RANK_SCORES``: about the fraction of the group's channels weaker than it, so one threshold removes the
same fraction of every group of its component). With its component's threshold ``t_c = sigmoid(s_c)`` the
channel's gate is the group soft threshold

    ``gate_j = relu(1 - (t_c / r_j)^p)``  (0 exactly when ``t_c / r_j >= 1``: the channel is removed; ``GATE_POWER``)

and it multiplies the channel's *input slice* in every layer that reads the channel (a weight parametrization
on those consumers). A removed channel is then read by nobody, which is what removing it physically computes
(``model/channels.py`` removes every coupled slice, so outputs stay equal); a kept channel's contribution shrinks
by its gate, as ``sign(w)·relu(|w| - t)`` shrinks a surviving weight. The norms are refreshed after every step
and treated as constants by autograd (the gradient reaches ``s_c`` through the gates, and the weights through
the multiplication), so a step costs one gate vector per consumer.

Mask mode (``mask=True``) replaces the soft gates by a fixed 0/1 keep mask per channel (a channel baseline
such as ``tp_magnitude`` sets it). Baking multiplies the gates into the consumers and zeroes every coupled slice
of a removed channel, so the user's model computes exactly what the gated model computed and ``export``
can remove those channels physically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from adapmtl_cli.model.channels import ChannelGroup, CoupledSlice
from adapmtl_cli.sparsity.thresholds import LayerZeros, ParametrizedLayers, ThresholdBank, parameter_order

RankKey = Callable[[torch.Tensor], torch.Tensor]  # normalised norms -> the key ranks come from (channel_scores)
SCALE_RMS = 4.0
"""A group's norms are divided by this many times their root mean square at the start: every group's channels
then sit around 0.25 whatever its width or depth (so one threshold per component prunes every group by its
channels' relative norms), and a channel would have to be 4x the group's RMS to be beyond any threshold."""


RANK_SCORES = True
"""Compare each component threshold with the channel's rank score in its group (:func:`rank_scores`), not with
its normalised norm, so one threshold removes the same fraction of every group of its component (the split
*between* components is still learned). Chosen on the dev split (issue #14, session 9; 50% of the channels, 200
steps, seeds 0-1, ``benchmarks/results/quality-dev-s9-channel-*.md``): with normalised norms one backbone
threshold emptied the early groups of the backbone-heavy models (Δ_T −300.4 on ``deeplab_resnet_tiny``, −179.4 on
``mobilenet_v2_tiny``, −29.5 on ``mobilenet_aspp_tiny``); with rank scores −95.7 / −98.9 / −53.7 (``tp_magnitude``:
−82.3 / −102.9 / −80.9). ``False`` gives the earlier rule."""
MIN_KEEP = 0.0
"""Every group keeps at least ``ceil(MIN_KEEP * channels)`` (and 1) of its strongest channels. A dev experiment
that lost (0.25 with normalised norms: −140.3 / −174.4 / −54.7), kept at 0 so the dev records re-run."""
KEEP_MULTIPLE = 4
"""With ``RANK_SCORES``, every group of at least ``2 * KEEP_MULTIPLE`` channels keeps a multiple of this many (or
all): onnxruntime's CPU convolutions are fast on such counts and slow on others (``benchmarks/channel_counts.py``
on ``deeplab_resnet_tiny``: kept 4/8/16/32 of 8/16/32/64 channels runs 2.8× faster than dense at batch 8, odd
counts of about 45% of the channels *slower* than dense, 0.9×). Narrower groups are pruned channel by channel;
the level then lands on the closest count those steps reach (``fit_channel_level_``)."""
MAX_THRESHOLD = 1.0 - 2.0**-20
"""The largest threshold a gate sees: fp32's ``sigmoid`` is exactly 1 above a logit of about 16.6, which would
remove even a group's protected strongest chunk (ratio ``t / 1 = 1``); below 1 it keeps a sliver (a gate of about
``8 · 2^-20``) and the group stays connected."""
GATE_POWER = 8.0
"""The gate is ``relu(1 - (t/r)^p)``: with ``p > 1`` a kept channel well above the threshold keeps nearly all of
its contribution (at twice the threshold ``1 - 2^-p`` instead of a half) and only channels near the threshold are
shrunk. Dev (as ``RANK_SCORES``): p = 1 / 3 / 8 gave −93.5 / −98.0 / −95.7 on ``deeplab_resnet_tiny``, and over the
three models p = 8 had the best mean (−82.8; p = 3: −85.2; frozen split, p = 8: −85.0; ``tp_magnitude`` −88.7)."""


@dataclass(frozen=True)
class GatedGroup:
    """One prunable channel group, with the component whose threshold gates it and its place in the flat vector."""

    group: ChannelGroup
    component: str
    offset: int
    """Index of the group's channel 0 in the flat per-channel vectors."""


def _raw(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return cast(Any, module).parametrizations.weight.original
    return cast(torch.Tensor, module.weight)


class InputGate(nn.Module):
    """Parametrization of a consumer's weight: its input features that read gated channels are multiplied by
    their channel's gate (``features[i]`` reads flat channel ``flat[i]``)."""

    features: torch.Tensor
    flat: torch.Tensor

    def __init__(self, owner: ChannelGatedModel, features: Sequence[int], flat: Sequence[int]) -> None:
        super().__init__()
        object.__setattr__(self, "_owner", owner)  # not a submodule: the owner holds this module
        self.register_buffer("features", torch.tensor(list(features), dtype=torch.long))
        self.register_buffer("flat", torch.tensor(list(flat), dtype=torch.long))

    def vector(self, width: int, gates: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(width, dtype=gates.dtype, device=gates.device)
        return ones.index_copy(0, self.features, gates.index_select(0, self.flat))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        owner = cast(ChannelGatedModel, cast(Any, self).__dict__["_owner"])
        vec = self.vector(weight.shape[1], owner.gates())
        return weight * vec.view(1, -1, *([1] * (weight.dim() - 2))).to(weight.dtype)


class ChannelGatedModel(ParametrizedLayers):
    """The user's model with input gates on every consumer of a prunable channel, plus the thresholds."""

    inv_norm: torch.Tensor
    component_index: torch.Tensor
    scale: torch.Tensor
    keep_mask: torch.Tensor

    def __init__(
        self, model: nn.Module, groups: Sequence[GatedGroup], components: Sequence[str], *, mask: bool = False
    ) -> None:
        consumers = _consumers(groups)
        super().__init__(model, dict.fromkeys(consumers, "gate"), parameter_order(model, list(consumers)))
        self.gated = list(groups)
        self.mask_mode = mask
        self.bank = ThresholdBank(list(components))
        if mask:
            self.bank.requires_grad_(False)  # masks are set by a score, not learned
        total = sum(g.group.channels for g in groups)
        index = {c: i for i, c in enumerate(components)}
        comp = [index[g.component] for g in groups for _ in range(g.group.channels)]
        self.register_buffer("component_index", torch.tensor(comp, dtype=torch.long))
        self.register_buffer("inv_norm", torch.zeros(total, dtype=torch.float32))
        self.register_buffer("scale", torch.ones(len(groups), dtype=torch.float32))
        self.register_buffer("keep_mask", torch.ones(total, dtype=torch.float32))
        device = next(iter(model.parameters())).device
        self.to(device)  # buffers next to the weights (only this wrapper's own buffers move)
        mods = dict(model.named_modules())
        for fqn, (features, flat) in consumers.items():
            gate = InputGate(self, features, flat).to(device)
            parametrize.register_parametrization(mods[fqn], "weight", gate, unsafe=True)
        norms = self.norms()
        with torch.no_grad():
            for i, g in enumerate(groups):
                part = norms[g.offset : g.offset + g.group.channels]
                rms = float(part.pow(2).mean().sqrt()) if part.numel() else 0.0
                self.scale[i] = SCALE_RMS * rms if rms > 0 else 1.0
        self.refresh_()

    def slice_index(self) -> list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]]:
        """Every coupled slice as (module, kind, its channels in the module, their flat channels), built once
        per device (the per-step norms would otherwise rebuild ~2 index tensors per slice every step)."""
        device = self.inv_norm.device
        cached = getattr(self, "_slice_cache", None)
        if cached is None or cached[0] != device:
            rows = []
            for g in self.gated:
                for s in g.group.slices:
                    idx = torch.tensor(s.channels, dtype=torch.long, device=device)
                    flat = torch.tensor([g.offset + r for r in s.root_channels], dtype=torch.long, device=device)
                    rows.append((self.model.get_submodule(s.module), s.kind, idx, flat))
            cached = (device, rows)
            object.__setattr__(self, "_slice_cache", cached)  # not state: rebuilt from the groups
        return cached[1]

    # ------------------------------------------------------------------------------------------ per channel

    @torch.no_grad()
    def norms(self) -> torch.Tensor:
        """Per flat channel, the L2 norm of its raw coupled slices (fp32, on the weights' device)."""
        return raw_weight_squares(self).sqrt()

    @torch.no_grad()
    def normalised_norms(self) -> torch.Tensor:
        """``n_j / m_g``: each channel's norm relative to its group's starting scale (``channel_scores`` ranks it)."""
        return self.norms() / self._scale_per_channel()

    @torch.no_grad()
    def channel_scores(self, order: RankKey | None = None) -> torch.Tensor:
        """Per flat channel, what its threshold is compared with: ``r_j`` or its rank score (by ``order(r_j)``)."""
        r = self.normalised_norms()
        return rank_scores(r, self.gated, order=None if order is None else order(r)) if RANK_SCORES else r

    def _scale_per_channel(self) -> torch.Tensor:
        sizes = torch.tensor([g.group.channels for g in self.gated], device=self.scale.device)
        return torch.repeat_interleave(self.scale, sizes)

    @torch.no_grad()
    def refresh_(self, order: RankKey | None = None) -> None:
        """Recompute ``1 / r_j`` (``r_j``: ``channel_scores``) from the current weights (after every optimizer step).

        A zero score gives ``inf``: the channel is always removed. Each group's strongest channel (with
        ``KEEP_MULTIPLE``, its strongest chunk, which shares one score) counts as if its score were at least 1, so
        no threshold in ``(0, 1)`` removes it: a group never loses all of its channels (that would cut the model).
        """
        r = self.channel_scores(order)
        inv = 1.0 / r
        for g in self.gated:
            n = g.group.channels
            part = r[g.offset : g.offset + n]
            top = torch.topk(part, max(1, math.ceil(MIN_KEEP * n))).indices
            top = torch.cat([top, (part == part.max()).nonzero().flatten()])  # a whole top chunk (KEEP_MULTIPLE)
            inv[g.offset + top] = inv[g.offset + top].clamp_max(1.0)
        self.inv_norm.copy_(inv)

    def logits(self) -> torch.Tensor:
        """The components' threshold logits, one per component in ``component_index`` order (fp32)."""
        return torch.stack([self.bank.logit(c) for c in self.bank.groups]).float()

    def gates(self) -> torch.Tensor:
        """Per flat channel its gate (differentiable in the threshold logits)."""
        if self.mask_mode:
            return self.keep_mask
        t = torch.sigmoid(self.logits()).clamp_max(MAX_THRESHOLD).index_select(0, self.component_index)
        return gate_values(t * self.inv_norm)

    @torch.no_grad()
    def removed(self) -> torch.Tensor:
        """Per flat channel, whether it is removed now (its gate is exactly 0)."""
        return self.gates() == 0

    def component_channels(self) -> dict[str, tuple[int, int]]:
        """Per component with prunable channels: (channels, removed channels)."""
        removed = self.removed()
        out: dict[str, list[int]] = {c: [0, 0] for c in self.bank.groups}
        for g in self.gated:
            part = removed[g.offset : g.offset + g.group.channels]
            out[g.component][0] += g.group.channels
            out[g.component][1] += int(part.sum())
        return {c: (n, z) for c, (n, z) in out.items()}

    def keep_lists(self) -> dict[str, list[int]]:
        """Per group root, the indices of its kept channels (what ``remove_channels`` replays)."""
        removed = self.removed().cpu()
        return {
            g.group.root: [i for i in range(g.group.channels) if not bool(removed[g.offset + i])] for g in self.gated
        }

    # ---------------------------------------------------------------------------------------- the weights

    @torch.no_grad()
    def effective_weights(self, fqns: Sequence[str]) -> dict[str, torch.Tensor]:
        """What baking gives each named layer's weight: gated inputs, removed channels' slices zeroed."""
        mods = dict(self.model.named_modules())
        gates = self.gates().detach()
        removed = gates == 0
        out = {}
        for fqn in fqns:
            module = mods[fqn]
            w = _raw(module).detach()
            if parametrize.is_parametrized(module, "weight"):
                w = cast(Any, module).parametrizations.weight[0](w)
            out[fqn] = w.clone()
        for s, rows in self._removed_rows(removed):
            if s.module in out and s.kind in ("out_channels", "depthwise"):
                out[s.module][rows] = 0
        return out

    def _removed_rows(self, removed: torch.Tensor) -> list[tuple[CoupledSlice, list[int]]]:
        """Per coupled slice of a group with removed channels, the module's indices of those channels."""
        out = []
        for g in self.gated:
            drop = set(removed[g.offset : g.offset + g.group.channels].nonzero().flatten().tolist())
            if not drop:
                continue
            for s in g.group.slices:
                out.append((s, [c for r, c in zip(s.root_channels, s.channels, strict=True) if r in drop]))
        return out

    @torch.no_grad()
    def bake_(self) -> nn.Module:
        """The user's model computing exactly what the gated model computes, removed channels zeroed throughout."""
        removed = self.gates().detach() == 0
        model = self.unparametrize_()  # consumers: weight = raw * gate
        for s, rows in self._removed_rows(removed):
            if s.kind == "in_channels":
                continue  # already zero: their gate is 0
            module = model.get_submodule(s.module)
            for name in ("weight", "bias"):
                p = getattr(module, name, None)
                if isinstance(p, torch.Tensor):
                    p[rows] = 0
        return model


def gate_values(ratio: torch.Tensor) -> torch.Tensor:
    """``relu(1 - ratio ** GATE_POWER)`` for ``ratio = t_c / r_j``: 0 exactly when ``ratio >= 1``."""
    if GATE_POWER == 1.0:
        return torch.relu(1.0 - ratio)
    return torch.relu(1.0 - ratio.clamp_max(1.0).pow(GATE_POWER))


@torch.no_grad()
def rank_scores(
    r: torch.Tensor, groups: Sequence[GatedGroup], multiple: int | None = None, order: torch.Tensor | None = None
) -> torch.Tensor:
    """Per flat channel its rank score in its group: ``(rank + 1/2 + min(r, 1)/2) / n`` for the channel of
    ``rank`` (0 = smallest ``r``) among the group's ``n`` channels, 0 where ``r`` is 0 (channel by channel only:
    in a chunked group such a channel takes its chunk's score).

    A threshold ``t`` then removes about the fraction ``t`` of every group; the ``r`` term orders equal ranks of
    different groups by their relative norms (so the level can land on any channel count) and keeps the score
    increasing with the rank within a group.

    ``multiple`` (default ``KEEP_MULTIPLE``): in a group of at least twice that many channels, the channels are
    taken in chunks by rank so that the group always keeps a multiple of ``multiple`` (or all of its channels):
    every channel of a chunk gets the score of the chunk's strongest, so a threshold removes whole chunks. The
    strongest chunk scores highest and ``refresh_`` protects it, so such a group keeps at least ``multiple``.
    ``order``: per flat channel, the key the ranks come from (default ``r``; ``r`` still breaks ties between
    groups).
    """
    m = KEEP_MULTIPLE if multiple is None else multiple
    out = torch.zeros_like(r)
    for g in groups:
        n = g.group.channels
        part = r[g.offset : g.offset + n]
        by = torch.argsort(part if order is None else order[g.offset : g.offset + n], stable=True)
        rank = torch.empty(n, dtype=r.dtype, device=r.device)
        rank[by] = torch.arange(n, dtype=r.dtype, device=r.device)
        score = (rank + 0.5 + 0.5 * part.clamp(0, 1)) / n
        if m > 1 and n >= 2 * m:
            ends = torch.arange(n - m * ((n - 1) // m), n + 1, m, device=r.device)  # chunk ends (exclusive)
            last = ends[torch.bucketize(rank.long(), ends, right=True)] - 1  # the rank of each chunk's strongest
            score = score[by][last]
            out[g.offset : g.offset + n] = score
        else:
            out[g.offset : g.offset + n] = torch.where(part > 0, score, torch.zeros_like(score))
    return out


@torch.no_grad()
def raw_weight_squares(cm: ChannelGatedModel, *, biases: bool = True) -> torch.Tensor:
    """Per flat channel, the sum of squares of its raw coupled slices (fp32; ``biases``: biases and beta too)."""
    return _per_channel(cm, lambda w: w.detach().float().pow(2), biases=biases)


def _per_channel(
    cm: ChannelGatedModel,
    values: Callable[[torch.Tensor], torch.Tensor | None],
    *,
    biases: bool,
    kinds: tuple[str, ...] | None = None,
) -> torch.Tensor:
    """Per flat channel, the sum over its coupled slices of ``values(raw weight)`` (elementwise).

    Each module's values are computed and reduced once per side (one sum per output channel, one per input
    channel), then each slice picks its channels: no copy of a weight per slice, whatever the model's size.
    ``biases``: add the squared bias (and BatchNorm beta) of output slices; ``kinds``: only these slice kinds.
    """
    total = torch.zeros(cm.inv_norm.numel(), dtype=torch.float32, device=cm.inv_norm.device)
    sums: dict[tuple[int, bool], torch.Tensor | None] = {}
    for module, kind, idx, flat in cm.slice_index():
        if kinds is not None and kind not in kinds:
            continue
        side = kind == "in_channels"
        key = (id(module), side)
        if key not in sums:
            v = values(_raw(module))
            if v is not None and v.dim() > 1:
                v = v.sum(dim=tuple(d for d in range(v.dim()) if d != int(side)))
            sums[key] = v
        per = sums[key]
        if per is None:
            continue
        picked = per.index_select(0, idx)
        bias = getattr(module, "bias", None)
        if biases and not side and isinstance(bias, torch.Tensor):
            picked = picked + bias.detach().float().index_select(0, idx).pow(2)
        total.index_add_(0, flat, picked)
    return total


@torch.no_grad()
def raw_weight_taylor(cm: ChannelGatedModel) -> torch.Tensor:
    """Per flat channel, the first-order Taylor score of its coupled conv/linear slices: the sum of |w · ∂L/∂w|.

    The order of ``tp.importance.GroupTaylorImportance()`` within each group (defaults: no biases, and, as
    Torch-Pruning 1.6 computes it, no BatchNorm or depthwise slice). Reads the gradients the last backward left
    on the raw weights (zero where there is none).
    """

    def taylor(weight: torch.Tensor) -> torch.Tensor | None:
        if weight.grad is None:
            return None
        return (weight.detach().float() * weight.grad.float()).abs()

    return _per_channel(cm, taylor, biases=False, kinds=("out_channels", "in_channels"))


def _consumers(groups: Sequence[GatedGroup]) -> dict[str, tuple[list[int], list[int]]]:
    """Per consumer layer, its gated input features and the flat channel each reads."""
    out: dict[str, tuple[list[int], list[int]]] = {}
    for g in groups:
        for s in g.group.slices:
            if s.kind != "in_channels":
                continue
            features, flat = out.setdefault(s.module, ([], []))
            for root_channel, feature in zip(s.root_channels, s.channels, strict=True):
                features.append(feature)
                flat.append(g.offset + root_channel)
    return out


def gated_groups(groups: Sequence[ChannelGroup], component_of: Mapping[str, str]) -> tuple[list[GatedGroup], list[str]]:
    """The groups whose root is a prunable layer, in order, with their flat offsets; and the components used."""
    out: list[GatedGroup] = []
    offset = 0
    for group in groups:
        component = component_of.get(group.root)
        if component is None:
            continue
        out.append(GatedGroup(group, component, offset))
        offset += group.channels
    components = list(dict.fromkeys(g.component for g in out))
    return out, components


# ------------------------------------------------------------------------------------------------- the level


@torch.no_grad()
def init_channel_thresholds_(cm: ChannelGatedModel, fraction: float) -> None:
    """Each component's threshold at the ``fraction`` quantile of its channels' scores (``channel_scores``)."""
    r = cm.channel_scores()
    q = min(max(fraction, 1e-4), 1 - 1e-4)
    for i, c in enumerate(cm.bank.groups):
        mine = r[cm.component_index == i].sort().values
        k = min(len(mine) - 1, max(0, int(round(q * len(mine))) - 1))
        t = min(max(float(mine[k]), 1e-6), 1 - 1e-6)
        cm.bank.logit(c).fill_(math.log(t) - math.log1p(-t))


@dataclass(frozen=True)
class ChannelFit:
    delta: float
    removed: float
    """The removed amount (channels, or the cost unit) after the fit."""
    wanted: float
    total: float

    @property
    def fraction(self) -> float:
        return self.removed / self.total if self.total else 0.0


def removed_amount(
    cm: ChannelGatedModel, logits: torch.Tensor, delta: float, cost: Callable[[torch.Tensor], float] | None
) -> float:
    """The removed channels (or ``cost(removed mask)``) if every one of ``logits`` (``cm.logits()``, taken once
    by the caller that asks many times) were shifted by ``delta``."""
    t = torch.sigmoid(logits + delta).index_select(0, cm.component_index)
    mask = gate_values(t * cm.inv_norm) == 0  # the gates' own expression: counts agree exactly
    return float(mask.sum()) if cost is None else cost(mask)


@torch.no_grad()
def fit_channel_level_(
    cm: ChannelGatedModel,
    fraction: float,
    *,
    cost: Callable[[torch.Tensor], float] | None = None,
    total: float | None = None,
    iters: int = 60,
) -> ChannelFit:
    """Shift every threshold logit by one offset so the removed fraction is the closest to ``fraction``.

    ``cost`` maps a removed-channel mask to the removed amount in the target's unit (None: channels) and must
    not decrease as more channels are removed; ``total`` is what ``fraction`` is a fraction of (default: the
    cost of removing every channel).
    """
    n = int(cm.inv_norm.numel())
    if cost is None:
        total, want = float(n), float(round(fraction * n))
    else:
        if total is None:
            total = cost(torch.ones(n, dtype=torch.bool, device=cm.inv_norm.device))
        want = fraction * total
    lo, hi = -40.0, 40.0
    logits = cm.logits().detach()
    for _ in range(iters):
        mid = (lo + hi) / 2
        if removed_amount(cm, logits, mid, cost) < want:
            lo = mid
        else:
            hi = mid
    a_lo, a_hi = removed_amount(cm, logits, lo, cost), removed_amount(cm, logits, hi, cost)
    delta, got = (lo, a_lo) if abs(a_lo - want) < abs(a_hi - want) else (hi, a_hi)
    for c in cm.bank.groups:
        cm.bank.logit(c).add_(delta)
    return ChannelFit(delta, got, float(want), total)


def channel_zeros(cm: ChannelGatedModel, layers: Mapping[str, str]) -> list[LayerZeros]:
    """Per prunable layer (``fqn -> component``), the zeros baking will give its weight."""
    weights = cm.effective_weights(list(layers))
    return [LayerZeros(f, c, weights[f].numel(), int((weights[f] == 0).sum())) for f, c in layers.items()]
