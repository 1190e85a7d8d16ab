"""DiSparse-style static pruning (Sun et al., CVPR 2022): per-task importance, shared weights keep the union.

Each task scores the weights it reaches with the first-order saliency ``|w * dL_t/dw|`` summed over a few
training batches. Within each task, scores become percentile ranks; a weight's score is its best rank over the
tasks that reach it. Keeping the global top ``(1 - s) N`` by that score is exactly "each task keeps its top
weights, a shared component keeps the union", with the per-task share chosen so the total hits the target.
Pruned once before fine-tuning, masks fixed afterwards.
"""

from __future__ import annotations

import torch

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods import register_method
from adapmtl_cli.methods.base import MaskPruner, MethodContext

CALIBRATION_BATCHES = 4


class DiSparse(MaskPruner):
    def scores(self) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        if ctx.calibration is None or ctx.task_losses is None:
            raise ConfigError("method 'disparse' needs training batches to score weights; it cannot run here")
        fqns = list(self.mm.groups)
        weights = [self.mm.raw_weight(f) for f in fqns]
        tasks = list(ctx.cmap.tasks)
        saliency = {t: [torch.zeros_like(w) for w in weights] for t in tasks}
        was_training = self.mm.training
        self.mm.eval()
        for i, batch in enumerate(ctx.calibration()):
            if i >= CALIBRATION_BATCHES:
                break
            losses = ctx.task_losses(self.mm, batch)
            for j, t in enumerate(tasks):
                grads = torch.autograd.grad(losses[t], weights, allow_unused=True, retain_graph=j < len(tasks) - 1)
                for acc, w, g in zip(saliency[t], weights, grads, strict=True):
                    if g is not None:
                        acc.add_((w.detach() * g).abs())
        self.mm.train(was_training)
        comp_tasks = {c.name: set(c.tasks) for c in ctx.cmap.components}
        best = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        for t in tasks:
            reached = [k for k, f in enumerate(fqns) if t in comp_tasks[self.mm.groups[f]]]
            if not reached:
                continue
            flat = torch.cat([saliency[t][k].flatten().float() for k in reached])
            ranks = torch.empty_like(flat)
            ranks[torch.argsort(flat)] = torch.arange(1, flat.numel() + 1, dtype=flat.dtype) / flat.numel()
            offset = 0
            for k in reached:
                n = weights[k].numel()
                best[k] = torch.maximum(best[k], ranks[offset : offset + n].view_as(best[k]))
                offset += n
        return dict(zip(fqns, best, strict=True))


@register_method("disparse")
def build(ctx: MethodContext) -> MaskPruner:
    return DiSparse("disparse", ctx, gradual=False)
