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
from adapmtl_cli.methods.base import MaskPruner, MethodContext
from adapmtl_cli.methods.registry import register_method
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES, best_task_ranks


class DiSparse(MaskPruner):
    def scores(self) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        if ctx.calibration is None or ctx.task_losses is None:
            raise ConfigError("method 'disparse' needs training batches to score weights; it cannot run here")
        fqns = list(self.mm.groups)
        weights = [self.mm.raw_weight(f) for f in fqns]
        ranks = best_task_ranks(
            self.mm, weights, fqns, self.mm.groups, ctx.cmap, ctx.calibration, ctx.task_losses, CALIBRATION_BATCHES
        )
        return {f: r.to(w.device) for f, r, w in zip(fqns, ranks, weights, strict=True)}


@register_method("disparse", calibrates=True)
def build(ctx: MethodContext) -> MaskPruner:
    return DiSparse("disparse", ctx, gradual=False)
