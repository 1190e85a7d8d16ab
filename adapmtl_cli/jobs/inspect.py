"""``inspect`` as a dry run: what will not be pruned and why, and the cost of one step measured on a real batch.

The estimate builds the planned method on a copy of the model and times a few real training steps (forward,
task losses, backward, optimizer step, the method's after-step) at the planned batch size and device, after
one warm-up step. Peak memory is what CUDA allocated at most on a GPU, and the process's peak resident set on
a CPU (which includes Python and torch themselves, as the real run would).
"""

from __future__ import annotations

import copy
import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from adapmtl_cli.config import PruneConfig
from adapmtl_cli.jobs.prepare import Prepared, prepare_pruning
from adapmtl_cli.train.batches import check_batch_size, to_device
from adapmtl_cli.train.device import autocast, autocast_dtype, resolve_device
from adapmtl_cli.train.loop import adam

REASONS = ("excluded", "type not prunable", "unreached", "frozen")


@dataclass(frozen=True)
class NotPruned:
    """A module with parameters that keeps all its weights, and why."""

    name: str
    type: str
    params: int
    reason: str
    """``excluded`` (by ``--exclude``), ``type not prunable`` (norms, embeddings, ...), ``unreached`` (no task
    output depends on it), ``frozen`` (``requires_grad=False``)."""


@dataclass(frozen=True)
class StepEstimate:
    """The measured cost of the planned run's training step."""

    method: str
    device: str
    batch_size: int
    timed_steps: int
    seconds_per_step: float
    steps: int
    peak_memory_bytes: int
    memory_kind: str

    @property
    def total_seconds(self) -> float:
        """Fine-tuning time for ``steps`` steps (evaluation not included)."""
        return self.seconds_per_step * self.steps


def not_pruned(prepared: Prepared) -> list[NotPruned]:
    """Every module with its own parameters that no threshold or mask will touch, in model order."""
    cmap = prepared.cmap
    excluded, unreached = set(cmap.excluded), set(cmap.unreached)
    layers = {x.fqn for x in cmap.layers}
    out = []
    for name, module in prepared.loaded.model.named_modules():
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if not params or name in layers:
            continue
        if name in excluded:
            reason = "excluded"
        elif name in unreached:
            reason = "unreached"
        elif not any(p.requires_grad for p in module.parameters(recurse=False)):
            reason = "frozen"
        else:
            reason = "type not prunable"  # norms, embeddings, or a Conv/Linear whose weight is not a Parameter
        out.append(NotPruned(name, type(module).__name__, params, reason))
    return out


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def estimate_step(prepared: Prepared, cfg: PruneConfig, *, timed_steps: int = 2) -> StepEstimate:
    """Time ``timed_steps`` training steps of the planned run ``cfg`` (after one warm-up) on one real batch.

    The steps are the real run's: the library's ``Pruning`` with the run's method, layer scale, threshold
    learning rate and precision.

    Raises:
        ConfigError: the train split has fewer samples than the batch size, or the device is unavailable.
    """
    check_batch_size(cfg.batch_size, len(prepared.train))  # type: ignore[arg-type]
    dev = resolve_device(cfg.device)
    items = [prepared.train[i] for i in range(cfg.batch_size)]
    batch = to_device(
        (
            torch.stack([x for x, _ in items]),
            {t.name: torch.stack([y[t.name] for _, y in items]) for t in prepared.tasks},
        ),
        dev,
    )
    model: nn.Module = copy.deepcopy(prepared.loaded.model).to(dev).train()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    pruning = prepare_pruning(prepared, model, cfg, calibration=[batch])
    optimizer = adam(pruning.param_groups(cfg.lr))
    dtype = autocast_dtype(cfg.precision, dev.type)
    mapping = prepared.mapping

    def one_step() -> None:
        with autocast(dev, dtype):
            preds = mapping.select(pruning.model(batch[0]))
        losses = {t.name: t.loss(preds[t.name].float(), batch[1][t.name]) for t in prepared.tasks}
        total = pruning.weigh(losses)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        pruning.step()

    one_step()  # warm-up: allocator, kernels, lazy state
    _sync(dev)
    start = time.perf_counter()
    for _ in range(timed_steps):
        one_step()
    _sync(dev)
    per_step = (time.perf_counter() - start) / timed_steps
    if dev.type == "cuda":
        peak, kind = int(torch.cuda.max_memory_allocated(dev)), "CUDA memory allocated"
    else:
        peak, kind = _peak_rss_bytes(), "process resident memory"
    return StepEstimate(cfg.method, str(dev), cfg.batch_size, timed_steps, per_step, cfg.steps, peak, kind)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
