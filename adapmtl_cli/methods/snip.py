"""SNIP (Lee et al., ICLR 2019): one-shot pruning by connection sensitivity, before fine-tuning.

SNIP scores a connection by how much the loss reacts to removing it, to first order: with ``w_eff = c * w`` and
the mask ``c = 1``, ``dL/dc_j = w_j * dL/dw_j``, so the sensitivity is

    S_j = | w_j * dL/dw_j |,   L = sum over the calibration batches b and the tasks t of L_t(b)

the gradient of the *summed* task loss (equal weights) over every calibration batch, as one batch: the paper's
minibatch, made of the first ``CALIBRATION_BATCHES`` training batches (eval mode, so BatchNorm uses its running
statistics and the scores do not depend on how the batches are split). The global top ``N - round(s * N)``
weights by ``S`` are kept; the masks stay fixed during fine-tuning (SNIP's normalisation by ``sum S`` does not
change the ranking and is left out). Unlike ``disparse``, which ranks each task's saliency separately and keeps
the union of the tasks' top weights, one task's gradients may dominate the sum, and SNIP follows them.
Cost: one forward and backward per calibration batch, once.
"""

from __future__ import annotations

import torch

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.methods.base import MaskPruner, MethodContext
from adapmtl_cli.methods.registry import register_method
from adapmtl_cli.methods.saliency import CALIBRATION_BATCHES


class Snip(MaskPruner):
    """Keep the global top of ``|w * dL/dw|`` of the summed task loss; masks fixed afterwards."""

    def scores(self) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        if ctx.calibration is None or ctx.task_losses is None:
            raise ConfigError(f"method {self.name!r} needs training batches to score weights; it cannot run here")
        fqns = list(self.mm.groups)
        weights = [self.mm.raw_weight(f) for f in fqns]  # every mask is all ones here: dL/dw_raw = dL/dw_eff
        grads = [torch.zeros_like(w) for w in weights]
        was_training = self.mm.training
        self.mm.eval()
        try:
            for i, batch in enumerate(ctx.calibration()):
                if i >= CALIBRATION_BATCHES:
                    break
                total = torch.stack(list(ctx.task_losses(self.mm, batch).values())).sum()
                for acc, g in zip(grads, torch.autograd.grad(total, weights, allow_unused=True), strict=True):
                    if g is not None:
                        acc.add_(g)
        finally:
            self.mm.train(was_training)
        return {f: (w.detach() * g).abs() for f, w, g in zip(fqns, weights, grads, strict=True)}


@register_method("snip", calibrates=True)
def build(ctx: MethodContext) -> MaskPruner:
    return Snip("snip", ctx, gradual=False)
