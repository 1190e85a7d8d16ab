"""First-order task saliency ``|w * dL_t/dw|`` and its per-task percentile ranks.

Used by the DiSparse-style baseline (to choose its masks) and by AdapMTL's layer scales (to measure each
layer's threshold in units that make layers comparable). Saliency is invariant to the scale of a weight tensor
that a normalisation layer follows (doubling ``w`` halves ``dL/dw``), which raw magnitudes are not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from adapmtl_cli.discover import ComponentMap

CALIBRATION_BATCHES = 4
"""Training batches whose task gradients score the weights (DiSparse's masks, AdapMTL's layer scales)."""

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]
TaskLosses = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]


def task_saliency(
    module: nn.Module,
    weights: Sequence[torch.Tensor],
    tasks: Sequence[str],
    batches: Iterator[Batch],
    task_losses: TaskLosses,
    count: int,
) -> dict[str, list[torch.Tensor]]:
    """Per task, ``sum over count batches of |w * dL_t/dw|`` for every tensor in ``weights`` (eval mode)."""
    saliency = {t: [torch.zeros_like(w) for w in weights] for t in tasks}
    was_training = module.training
    module.eval()
    try:
        for i, batch in enumerate(batches):
            if i >= count:
                break
            losses = task_losses(module, batch)
            for j, t in enumerate(tasks):
                grads = torch.autograd.grad(losses[t], weights, allow_unused=True, retain_graph=j < len(tasks) - 1)
                for acc, w, g in zip(saliency[t], weights, grads, strict=True):
                    if g is not None:
                        acc.add_((w.detach() * g).abs())
    finally:
        module.train(was_training)
    return saliency


def best_task_ranks(
    saliency: Mapping[str, Sequence[torch.Tensor]],
    fqns: Sequence[str],
    component_of: Mapping[str, str],
    cmap: ComponentMap,
) -> list[torch.Tensor]:
    """Per weight, its best percentile rank (in (0, 1]) over the tasks that reach it.

    Within each task, its saliency over all the weights it reaches becomes a percentile rank; keeping the global
    top of the best rank is "each task keeps its top weights, a shared component keeps the union".
    """
    comp_tasks = {c.name: set(c.tasks) for c in cmap.components}
    shapes = [next(iter(saliency.values()))[k].shape for k in range(len(fqns))]
    best = [torch.zeros(shape, dtype=torch.float32) for shape in shapes]
    for t, per_layer in saliency.items():
        reached = [k for k, f in enumerate(fqns) if t in comp_tasks[component_of[f]]]
        if not reached:
            continue
        flat = torch.cat([per_layer[k].flatten().float().cpu() for k in reached])
        ranks = torch.empty_like(flat)
        ranks[torch.argsort(flat)] = torch.arange(1, flat.numel() + 1, dtype=flat.dtype) / flat.numel()
        offset = 0
        for k in reached:
            n = best[k].numel()
            best[k] = torch.maximum(best[k], ranks[offset : offset + n].view_as(best[k]))
            offset += n
    return best
