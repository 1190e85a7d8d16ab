"""DiSparse's dynamic variant (Sun et al., CVPR 2022): RigL-style drop and regrow (Evci et al., ICML 2020) on
per-task importance, with the mask at the exact target throughout.

Start: the static ``disparse`` mask at the target (per-task saliency ``|w * dL_t/dw|`` ranked within each task, a
weight's score its best rank over the tasks that reach it, global top ``keep = N - round(s * N)``). Then, after
every ``update_every = max(1, T_end // UPDATES)``-th optimizer step ``t < T_end = round(ramp_end * steps)``
(where gmp's ramp ends; ``UPDATES = 8``, so at most 8 updates):

* ``n = round(f(t) * keep)`` with RigL's cosine-decaying update fraction ``f(t) = f0 * (1 + cos(pi * t / T_end)) / 2``,
  ``f0 = DROP_FRACTION = 0.3`` (RigL's alpha); an update whose ``n`` is 0 is skipped;
* drop the ``n`` kept weights of lowest saliency score (``saliency.best_task_ranks`` on the current weights: the
  best per-task rank of ``|w * dL_t/dw|``, the union over tasks, as ``disparse`` does);
* regrow the ``n`` weights, among those pruned before this update (a just-dropped weight cannot come straight
  back), of largest task-gradient score: the best per-task rank of ``|dL_t/dw|``, the dense gradient at the
  pruned position on the model without the dropped weights (RigL's growth criterion, made per task the same
  way). Regrown weights start at zero, as in RigL. A weight without gradient is never grown (at zero it would
  stay zero and count as pruned): when fewer than ``n`` pruned weights have one, only that many are swapped, and
  the most salient of the dropped weights stay.

So every update swaps as many weights out as in and the mask keeps exactly ``keep`` weights at every step; from
``T_end`` on the mask is fixed and the run fine-tunes it. A zero weight counts as pruned, so right after an
update the ``n`` regrown weights (still zero until the next optimizer step moves them) show as up to ``n / N``
above the target; every step without an update, and the last step, is exact. The scores come from the
calibration batches (the first ``CALIBRATION_BATCHES`` training batches), the same batches at every update, on
the current weights: saliency in eval mode (as ``disparse``), gradients in train mode (``_growth_view``; the
BatchNorm statistics and the random state are restored afterwards).

Cost: at build, one ``disparse`` scoring (``T * B`` single-task forward/backward passes for ``T`` tasks and
``B <= 4`` batches); per update ``2 * T * B`` more (saliency, then gradients): with three tasks and four batches,
24 per update and at most 8 * 24 = 192 per run, about 0.6x the passes of a 300-step fine-tune at the same
batch size. Memory at an update: two model-sized fp32 score buffers and a copy of the prunable weights, the
masks and the buffers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods.base import Batches, MethodContext
from adapmtl_cli.methods.disparse import DiSparse
from adapmtl_cli.methods.registry import register_method
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES, TaskLosses, best_task_ranks
from adapmtl_cli.model.discover import ComponentMap
from adapmtl_cli.sparsity.masks import MaskedModel
from adapmtl_cli.sparsity.schedule import ramp_steps

DROP_FRACTION = 0.3
"""``f0``: the fraction of the kept weights swapped at the first update (RigL's default alpha)."""
UPDATES = 8
"""Drop/regrow updates over the ramp, at most (each costs ``2 * tasks * calibration batches`` passes)."""


def update_fraction(step: int, end: int, initial: float = DROP_FRACTION) -> float:
    """RigL's cosine decay ``f(t) = f0 * (1 + cos(pi * t / T_end)) / 2`` (0 from ``T_end`` on)."""
    if step >= end:
        return 0.0
    return initial * (1.0 + math.cos(math.pi * step / end)) / 2.0


def task_gradient_ranks(
    module: nn.Module,
    weights: Sequence[torch.Tensor],
    fqns: Sequence[str],
    component_of: Mapping[str, str],
    cmap: ComponentMap,
    calibration: Batches,
    task_losses: TaskLosses,
    count: int = CALIBRATION_BATCHES,
) -> list[torch.Tensor]:
    """Per weight (``weights[k]`` is layer ``fqns[k]``), its best percentile rank in [0, 1] over the tasks that
    reach it of ``|sum over count batches of dL_t/dw|``, one task at a time, in the module's current mode.

    The growth counterpart of ``saliency.best_task_ranks`` (same ranks, same union over tasks), on the gradient
    alone: RigL's growth criterion. A weight without gradient ranks 0, below every weight with one.
    """
    comp_tasks = {c.name: set(c.tasks) for c in cmap.components}
    best = [torch.zeros(w.shape, dtype=torch.float32) for w in weights]
    for t in cmap.tasks:
        reached = [k for k, f in enumerate(fqns) if t in comp_tasks[component_of[f]]]
        if not reached:
            continue
        inputs = [weights[k] for k in reached]
        grads = [torch.zeros_like(w) for w in inputs]
        for i, batch in enumerate(calibration()):
            if i >= count:
                break
            for acc, g in zip(
                grads, torch.autograd.grad(task_losses(module, batch)[t], inputs, allow_unused=True), strict=True
            ):
                if g is not None:
                    acc.add_(g)
        flat = torch.cat([g.flatten().abs().float().cpu() for g in grads])
        del grads
        ranks = torch.empty_like(flat)
        ranks[torch.argsort(flat)] = torch.arange(1, flat.numel() + 1, dtype=flat.dtype) / flat.numel()
        ranks[flat == 0] = 0.0  # no gradient, no growth: a weight regrown at zero would stay zero
        offset = 0
        for k in reached:
            n = best[k].numel()
            torch.maximum(best[k], ranks[offset : offset + n].view_as(best[k]), out=best[k])
            offset += n
    return best


@contextmanager
def _growth_view(mm: MaskedModel) -> Iterator[None]:
    """Within: the model as it trains (train mode), every mask all ones and every pruned weight zero in storage,
    so the outputs are the masked model's but ``dL/dw`` is the dense gradient at every position (pruned ones
    too). After: the weights, masks, mode, buffers (BatchNorm statistics) and random state are as before.

    Train mode, not eval mode as for the saliency: a channel whose weights are all pruned is constant, which
    BatchNorm's batch statistics turn into ``beta`` (often dead behind a ReLU) but the running statistics do not;
    a weight grown where training gives it no gradient would stay at zero.
    """
    masks = [mm.mask(f).clone() for f in mm.groups]
    raw = [mm.raw_weight(f).detach().clone() for f in mm.groups]
    mask_ids = {id(mm.mask(f)) for f in mm.groups}
    buffers = [(b, b.clone()) for b in mm.buffers() if id(b) not in mask_ids]
    cuda = sorted({m.device.index or 0 for m in masks if m.device.type == "cuda"})
    was_training = mm.training
    with torch.random.fork_rng(devices=cuda):
        with torch.no_grad():
            for f, m in zip(mm.groups, masks, strict=True):
                mm.raw_weight(f).mul_(m)
                mm.mask(f).fill_(True)
        mm.train()
        try:
            yield
        finally:
            mm.train(was_training)
            with torch.no_grad():
                for f, m, w in zip(mm.groups, masks, raw, strict=True):
                    mm.mask(f).copy_(m)
                    mm.raw_weight(f).copy_(w)
                for b, saved in buffers:
                    b.copy_(saved)


class DiSparseDynamic(DiSparse):
    """The static DiSparse mask at the target, then drop/regrow swaps of a cosine-decaying size until ``T_end``."""

    def __init__(self, name: str, ctx: MethodContext) -> None:
        if ctx.calibration is None or ctx.task_losses is None:
            raise ConfigError(f"method {name!r} needs training batches to score weights; it cannot run here")
        super().__init__(name, ctx, gradual=False)  # the static mask, at the target from the start
        self.keep = self.total - int(round(ctx.sparsity * self.total))
        self.end = ramp_steps(ctx.steps, ctx.ramp_end)
        self.update_every = max(1, self.end // UPDATES)

    def swap_count(self, step: int) -> int:
        """Weights to drop (and regrow) after ``step``: 0 between updates and from ``T_end`` on."""
        if step % self.update_every or step >= self.end:
            return 0
        n = int(round(update_fraction(step, self.end) * self.keep))
        return min(n, self.keep, self.total - self.keep)

    def after_step_(self, step: int) -> float:
        n = self.swap_count(step)
        if n:
            self.swap_(n)
        return super().after_step_(step)

    def swap_(self, n: int) -> int:
        """Swap up to ``n`` weights: the kept ones of lowest saliency score out, the pruned ones of largest task
        gradient (measured with the ``n`` dropped) in, at zero. Returns how many were swapped: fewer than ``n``
        when fewer pruned weights have any gradient (then only the least salient of the dropped stay dropped)."""
        ctx = self.ctx
        assert ctx.calibration is not None and ctx.task_losses is not None  # checked at build
        fqns = list(self.mm.groups)
        args = (ctx.cmap, ctx.calibration, ctx.task_losses, CALIBRATION_BATCHES)
        weights = [self.mm.raw_weight(f) for f in fqns]
        before = torch.cat([self.mm.mask(f).flatten().cpu() for f in fqns])
        saliency = torch.cat([r.flatten() for r in best_task_ranks(self.mm, weights, fqns, self.mm.groups, *args)])
        drop = torch.topk(torch.where(before, saliency, math.inf), n, largest=False).indices  # lowest first
        after = before.clone()
        after[drop] = False
        self._set_masks_(after)
        with _growth_view(self.mm):
            ranks = task_gradient_ranks(self.mm, weights, fqns, self.mm.groups, *args)
        growth = torch.where(before, 0.0, torch.cat([g.flatten() for g in ranks]))
        swapped = min(n, int((growth > 0).sum()))
        after[drop[swapped:]] = True  # the most salient of the dropped stay when too few can grow
        grow = torch.topk(growth, swapped, sorted=False).indices
        after[grow] = True
        self._set_masks_(after, zero=grow)
        return swapped

    @torch.no_grad()
    def _set_masks_(self, flat: torch.Tensor, zero: torch.Tensor | None = None) -> None:
        """Masks from one flat boolean vector over every layer; weights at the flat indices ``zero`` set to 0."""
        grown = torch.zeros_like(flat)
        if zero is not None:
            grown[zero] = True
        offset = 0
        for f in self.mm.groups:
            mask, n = self.mm.mask(f), self.mm.mask(f).numel()
            mask.copy_(flat[offset : offset + n].view_as(mask))
            if zero is not None:
                self.mm.raw_weight(f).masked_fill_(grown[offset : offset + n].view_as(mask).to(mask.device), 0.0)
            offset += n


@register_method("disparse_dynamic", calibrates=True)
def build(ctx: MethodContext) -> DiSparseDynamic:
    return DiSparseDynamic("disparse_dynamic", ctx)
