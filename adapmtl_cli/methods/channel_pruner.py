"""The channel family (``--structure channel``): whole output channels, landed exactly on a channel fraction.

* ``ChannelThresholdPruner`` — one learnable threshold per component on the channels' rank scores in their groups
  (``sparsity/channel_gates.py``), its split moved by ``--allocation`` as for weights, the level set after
  every step by one common logit offset so the removed fraction follows the cubic schedule exactly.
* ``ChannelMaskPruner`` — 0/1 channel masks from a score on the same schedule (``tp_magnitude``), the same
  fraction of every group, groups of 8+ channels keeping multiples of ``KEEP_MULTIPLE`` like the threshold rule
  (Torch-Pruning's ``round_to``: onnxruntime runs uneven counts no faster than dense).

Both prune the channel groups of ``model/channels.py`` (Torch-Pruning's dependency graph): a group is rooted at
a prunable conv/linear layer and belongs to that layer's component; groups reaching a model output (the task
output layers) are never pruned. ``--target flops`` lands on a fraction of the prunable layers' FLOPs instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adapmtl_cli.errors import AdapmtlError, ConfigError
from adapmtl_cli.methods.base import MethodContext
from adapmtl_cli.model.channels import channel_groups, count_params_flops, remove_channels
from adapmtl_cli.model.discover import ComponentMap
from adapmtl_cli.sparsity.allocation import ALLOCATIONS, MarginalAllocator
from adapmtl_cli.sparsity.channel_flops import LayerFlops, layer_flops
from adapmtl_cli.sparsity.channel_gates import (
    KEEP_MULTIPLE,
    ChannelGatedModel,
    RankKey,
    channel_zeros,
    fit_channel_level_,
    gated_groups,
    init_channel_thresholds_,
    raw_weight_taylor,
)
from adapmtl_cli.sparsity.schedule import cubic_target
from adapmtl_cli.sparsity.thresholds import LayerZeros

RANK_BY = "norm*taylor"
"""What orders the channels of a group for ``adapmtl --structure channel``'s rank scores: ``norm*taylor`` (the
default: the normalised norm times the moving average of the channel's Taylor score ``Σ |w · ∂L/∂w|`` over its
coupled conv/linear slices, divided by its gate, i.e. what the channel would weigh at full strength), ``taylor``
(that average alone: ``tp_taylor``'s importance) or ``norm`` (the normalised norm: the rule until session 12).
Chosen on the dev split (issue #14, session 12; 50% of the channels, 200 steps, seeds 0-3, dense seed 0,
``benchmarks/results/quality-dev-s12-channel-taylor-*.md``), mean Δ_T on ``deeplab_resnet_tiny`` /
``mobilenet_v2_tiny`` / ``mobilenet_aspp_tiny``: ``norm`` −83.4 / −92.9 / −37.8, ``taylor`` −62.0 / −77.1 /
−36.2, ``norm*taylor`` −53.7 / −62.5 / −28.2 (``tp_taylor`` on the same cells: −72.1 / −70.7 / −69.9). Before
the first step (no gradient yet) the order is the norm's."""
TAYLOR_KEYS = ("taylor", "norm*taylor")
"""The ``RANK_BY`` values that keep a Taylor key."""
TAYLOR_SMOOTHING = 0.9
"""EMA factor of the Taylor key (one batch's gradient is noisy)."""
TAYLOR_MIN_GATE = 1e-3
"""Gates below this count as this much when the Taylor key is divided by the gate."""


def gated_model(ctx: MethodContext, *, mask: bool) -> ChannelGatedModel:
    """Find the channel groups of ``ctx.model`` and put gates on them; ConfigError when it cannot be done."""
    if ctx.example_input is None:
        raise ConfigError("--structure channel traces the model: pass an example input")
    if ctx.cmap.tied:
        raise ConfigError(
            f"--structure channel cannot prune a model with tied weights ({', '.join(ctx.cmap.tied)}); "
            "use --structure weight"
        )
    try:
        groups = channel_groups(ctx.model, ctx.example_input)
    except AdapmtlError as exc:
        raise ConfigError(f"--structure channel: {exc}") from exc
    component_of = {layer.fqn: layer.component for layer in ctx.cmap.layers}
    gated, components = gated_groups(groups, component_of)
    if not gated:
        raise ConfigError(
            "--structure channel found no prunable channel group (every conv/linear channel reaches an output, "
            "is shared, or passes an op whose removal cannot be proven exact); use --structure weight"
        )
    return ChannelGatedModel(ctx.model, gated, components, mask=mask)


class _ChannelBase:
    """What both channel pruners share: the gated model, the schedule, measuring and baking."""

    name: str
    ctx: MethodContext
    cm: ChannelGatedModel
    module: nn.Module

    def _setup(self, name: str, ctx: MethodContext, *, mask: bool) -> None:
        self.name, self.ctx = name, ctx  # the option rules were checked by the registry (build_pruner)
        self.target_unit = ctx.target or "channels"
        self.cm = gated_model(ctx, mask=mask)
        self.module = self.cm
        self.flops: LayerFlops | None = None
        if self.target_unit == "flops":
            self.flops = layer_flops(ctx.model, ctx.example_input, self.cm.gated)
        self._layers = {layer.fqn: layer.component for layer in ctx.cmap.layers}

    def cost(self) -> Any:
        return None if self.flops is None else self.flops.removed

    def target_at(self, step: int) -> float:
        return cubic_target(step, self.ctx.steps, self.ctx.sparsity, 0.0, self.ctx.ramp_end)

    def measure(self) -> list[LayerZeros]:
        return channel_zeros(self.cm, self._layers)

    def bake_(self) -> nn.Module:
        return self.cm.bake_()

    def removed_fraction(self) -> float:
        """The removed fraction now, in the target's unit (channels or FLOPs)."""
        removed = self.cm.removed()
        if self.flops is None:
            return float(removed.sum()) / max(1, removed.numel())
        return self.flops.removed(removed) / max(1.0, self.flops.total)

    def channel_report(self) -> dict[str, Any]:
        """The structure, target unit, per component (channels, removed) and the kept channels per group."""
        return {
            "target": self.target_unit,
            "achieved": self.removed_fraction(),
            "components": {c: {"channels": n, "removed": z} for c, (n, z) in self.cm.component_channels().items()},
            "keep": self.cm.keep_lists(),
        }

    def channel_summary(self, baked: nn.Module) -> dict[str, Any]:
        """``channel_report`` plus parameters and FLOPs before and after removing the channels from a copy of
        ``baked`` (what ``export`` writes), per component too."""
        report = self.channel_report()
        one = _first_sample(self.ctx.example_input)
        smaller = remove_channels(baked, one, report["keep"])
        params_before, flops_before = count_params_flops(baked, one)
        params_after, flops_after = count_params_flops(smaller, one)
        before, after = _component_params(baked, self.ctx.cmap), _component_params(smaller, self.ctx.cmap)
        for name, entry in report["components"].items():
            entry["params_before"], entry["params_after"] = before.get(name, 0), after.get(name, 0)
        report.update(
            params_before=params_before, params_after=params_after, flops_before=flops_before, flops_after=flops_after
        )
        return report


def _first_sample(example: Any) -> Any:
    """One sample of a batch (a tensor, or a tuple/list/dict of tensors), for counting FLOPs per sample."""
    if isinstance(example, torch.Tensor):
        return example[:1]
    if isinstance(example, (tuple, list)):
        return type(example)(_first_sample(x) for x in example)
    if isinstance(example, dict):
        return {k: _first_sample(v) for k, v in example.items()}
    return example


def _component_params(model: nn.Module, cmap: ComponentMap) -> dict[str, int]:
    """Per component, the parameters its modules hold directly."""
    owner = {m: c.name for c in cmap.components for m in c.modules}
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0] if "." in name else ""
        if module in owner:
            out[owner[module]] = out.get(owner[module], 0) + p.numel()
    return out


class ChannelThresholdPruner(_ChannelBase):
    """One learnable soft threshold per component on channel norms."""

    def __init__(self, name: str, ctx: MethodContext, *, allocation: str = "marginal") -> None:
        self._setup(name, ctx, mask=False)
        init_channel_thresholds_(self.cm, ctx.sparsity)
        self.allocation = ctx.allocation or allocation
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"--allocation {self.allocation!r} is not one of {', '.join(ALLOCATIONS)}")
        if self.allocation == "marginal":
            self.cm.allocator = MarginalAllocator(len(self.cm.bank.groups))
        self.rank_by = RANK_BY
        if self.rank_by in TAYLOR_KEYS:
            self.cm.register_buffer("taylor_key", torch.zeros_like(self.cm.inv_norm))  # saved: resume continues

    def _rank_key_(self) -> RankKey | None:
        """With a Taylor ``RANK_BY``: fold this step's gradients into the Taylor key; the rank key (None: by norm)."""
        if self.rank_by not in TAYLOR_KEYS:
            return None
        key = self.cm.get_buffer("taylor_key")
        taylor = raw_weight_taylor(self.cm)  # the gradients of the forward that used the current gates
        if bool(taylor.any()):
            gates = self.cm.gates().detach()
            full = torch.where(gates > 0, taylor / gates.clamp_min(TAYLOR_MIN_GATE), torch.zeros_like(taylor))
            key.mul_(TAYLOR_SMOOTHING).add_(full, alpha=1 - TAYLOR_SMOOTHING)
        if not bool(key.any()):
            return None
        if self.rank_by == "norm*taylor":
            return lambda norms: key * norms  # the norms refresh_ computes anyway
        return lambda norms: key

    def param_groups(self, lr: float, threshold_lr: float) -> list[dict[str, Any]]:
        bank = {id(p) for p in self.cm.bank.parameters()}
        weights = [p for p in self.cm.parameters() if p.requires_grad and id(p) not in bank]
        rate = threshold_lr if self.allocation == "adam" else 0.0
        return [
            {"params": weights, "lr": lr, "weight_decay": 0.0},
            {"params": list(self.cm.bank.parameters()), "lr": rate, "weight_decay": 0.0},
        ]

    def after_step_(self, step: int) -> float:
        self.cm.refresh_(self._rank_key_())
        allocator = getattr(self.cm, "allocator", None)
        if isinstance(allocator, MarginalAllocator):
            r = 1.0 / self.cm.inv_norm
            per = [r[self.cm.component_index == i] for i in range(len(self.cm.bank.groups))]
            allocator.step_(self.cm, per, steps=self.ctx.steps)  # type: ignore[arg-type]  # uses .bank only
        fit_channel_level_(
            self.cm, self.target_at(step), cost=self.cost(), total=None if self.flops is None else self.flops.total
        )
        return self.removed_fraction()

    def thresholds(self) -> dict[str, float]:
        return self.cm.bank.values()


def _removable(n: int, multiple: int) -> list[int]:
    """The channel counts a group of ``n`` may lose: any that keeps one, or (``n >= 2 * multiple``) those that keep
    a multiple of ``multiple`` or all ``n``, as ``KEEP_MULTIPLE`` does for the threshold rule."""
    if multiple <= 1 or n < 2 * multiple:
        return list(range(n))
    return sorted({0, *(n - kept for kept in range(multiple, n + 1, multiple))})


def uniform_keep(
    scores: list[torch.Tensor], fraction: float, multiple: int = 1, at_least: list[int] | None = None
) -> list[torch.Tensor]:
    """Per group a keep mask removing about the same fraction of each group's lowest-scored channels.

    With ``multiple`` 1 the counts are rounded so that the total removed is ``round(fraction * all channels)``
    exactly (the largest remainders get the extra channel) and every group keeps at least one channel. With a
    larger ``multiple``, groups of at least twice that many keep a multiple of it (or everything): each group
    starts at its allowed count closest to ``fraction`` of it, then single steps (narrow groups first, as they
    move by one) bring the total to the reachable count closest to ``round(fraction * all channels)``;
    ``at_least`` (per group, the channels removed already) keeps a group's count from going back.
    """
    sizes = [s.numel() for s in scores]
    want = round(fraction * sum(sizes))
    if multiple <= 1:
        counts = _exact_counts(sizes, fraction, want)
    else:
        counts = _rounded_counts(sizes, fraction, want, multiple, at_least or [0] * len(sizes))
    masks = []
    for s, k in zip(scores, counts, strict=True):
        keep = torch.ones(s.numel(), dtype=torch.float32, device=s.device)
        if k:
            keep[torch.argsort(s, stable=True)[:k]] = 0.0
        masks.append(keep)
    return masks


def _exact_counts(sizes: list[int], fraction: float, want: int) -> list[int]:
    exact = [fraction * n for n in sizes]
    counts = [min(math.floor(x), n - 1) for x, n in zip(exact, sizes, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    for i in order:
        if sum(counts) >= want:
            break
        if counts[i] < sizes[i] - 1:
            counts[i] += 1
    return counts


def _closest(options: list[int], x: float) -> int:
    """The option nearest ``x`` (the smaller one on a tie)."""
    return min(options, key=lambda k: (abs(k - x), k))


def _rounded_counts(sizes: list[int], fraction: float, want: int, multiple: int, floor: list[int]) -> list[int]:
    options = []
    for n, done in zip(sizes, floor, strict=True):
        allowed = _removable(n, multiple)
        options.append([k for k in allowed if k >= done] or [max(allowed)])
    counts = [_closest(opts, fraction * n) for opts, n in zip(options, sizes, strict=True)]
    while True:  # one group's next allowed count toward ``want`` per pass: the smallest |gap|, the smallest move,
        # then the group that ends nearest its own share (ties spread over the groups instead of piling on one)
        gap = want - sum(counts)
        moves = []  # (new |gap|, size of the move, distance from its share, group, its new count)
        for i, (opts, n) in enumerate(zip(options, sizes, strict=True)):
            at = opts.index(counts[i]) + (1 if gap > 0 else -1)
            if gap and 0 <= at < len(opts):
                moved = opts[at] - counts[i]
                moves.append((abs(gap - moved), abs(moved), abs(opts[at] - fraction * n) / n, i, opts[at]))
        best = min(moves, default=None)
        if best is None or best[0] >= abs(gap):
            return counts
        counts[best[3]] = best[4]


class ChannelMaskPruner(_ChannelBase):
    """Channel masks from a per-channel score, the same fraction per group, on the cubic schedule."""

    def __init__(self, name: str, ctx: MethodContext, *, update_every: int | None = None) -> None:
        self._setup(name, ctx, mask=True)
        self.update_every = update_every or max(1, ctx.steps // 50)

    def scores(self) -> torch.Tensor:
        """Per flat channel, higher = keep (subclasses override)."""
        raise NotImplementedError

    def apply_(self, fraction: float) -> None:
        # removed channels stay removed: below every kept channel, even one whose score is 0
        scores = torch.where(self.cm.keep_mask > 0, self.scores(), -1.0)
        parts = [scores[g.offset : g.offset + g.group.channels] for g in self.cm.gated]
        removed = [int((self.cm.keep_mask[g.offset : g.offset + g.group.channels] == 0).sum()) for g in self.cm.gated]
        with torch.no_grad():
            self.cm.keep_mask.copy_(torch.cat(uniform_keep(parts, fraction, KEEP_MULTIPLE, removed)))

    def param_groups(self, lr: float, threshold_lr: float) -> list[dict[str, Any]]:
        del threshold_lr
        weights = [p for p in self.cm.parameters() if p.requires_grad]  # the bank is frozen in mask mode
        return [{"params": weights, "lr": lr, "weight_decay": 0.0}]

    def after_step_(self, step: int) -> float:
        if step % self.update_every == 0 or step >= self.ctx.steps:
            self.apply_(self.target_at(step))
        return self.removed_fraction()

    def thresholds(self) -> dict[str, float]:
        return {}
