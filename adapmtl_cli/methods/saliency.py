"""First-order task saliency ``|w * dL_t/dw|`` and its per-task percentile ranks.

Used by the DiSparse-style baseline (to choose its masks) and by AdapMTL's layer scales (to measure each
layer's threshold in units that make layers comparable). Saliency is invariant to the scale of a weight tensor
that a normalisation layer follows (doubling ``w`` halves ``dL/dw``), which raw magnitudes are not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from adapmtl_cli.model.discover import ComponentMap

CALIBRATION_BATCHES = 4
"""Training batches whose task gradients score the weights (DiSparse's masks, AdapMTL's layer scales)."""

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]
TaskLosses = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


def best_task_ranks(
    module: nn.Module,
    weights: Sequence[torch.Tensor],
    fqns: Sequence[str],
    component_of: Mapping[str, str],
    cmap: ComponentMap,
    calibration: Callable[[], Iterator[Batch]],
    task_losses: TaskLosses,
    count: int = CALIBRATION_BATCHES,
) -> list[torch.Tensor]:
    """Per weight (``weights[k]`` is layer ``fqns[k]``), its best percentile rank in (0, 1] over the tasks that
    reach it, from ``sum over count batches of |w * dL_t/dw|`` (eval mode).

    Within each task, its saliency over all the weights it reaches becomes a percentile rank; keeping the global
    top of the best rank is "each task keeps its top weights, a shared component keeps the union". Tasks are
    scored one after the other (one forward per batch and task), so only one task's saliency is held at a time:
    one model-sized buffer instead of one per task.
    """
    comp_tasks = {c.name: set(c.tasks) for c in cmap.components}
    best = [torch.zeros(w.shape, dtype=torch.float32) for w in weights]
    was_training = module.training
    module.eval()
    try:
        for t in cmap.tasks:
            reached = [k for k, f in enumerate(fqns) if t in comp_tasks[component_of[f]]]
            if not reached:
                continue
            inputs = [weights[k] for k in reached]
            saliency = [torch.zeros_like(w) for w in inputs]
            for i, batch in enumerate(calibration()):
                if i >= count:
                    break
                grads = torch.autograd.grad(task_losses(module, batch)[t], inputs, allow_unused=True)
                for acc, w, g in zip(saliency, inputs, grads, strict=True):
                    if g is not None:
                        acc.add_((w.detach() * g).abs())
            flat = torch.cat([x.flatten().float().cpu() for x in saliency])
            del saliency
            ranks = torch.empty_like(flat)
            ranks[torch.argsort(flat)] = torch.arange(1, flat.numel() + 1, dtype=flat.dtype) / flat.numel()
            offset = 0
            for k in reached:
                n = best[k].numel()
                torch.maximum(best[k], ranks[offset : offset + n].view_as(best[k]), out=best[k])
                offset += n
    finally:
        module.train(was_training)
    return best
