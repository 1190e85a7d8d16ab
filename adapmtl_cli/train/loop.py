"""The fine-tuning loop: weights and thresholds co-optimised under task-loss weights, on a sparsity schedule.

Per step: forward (under ``--precision``'s autocast), per-task losses (fp32), ``sum_t w_t * L_t``, backward, one
Adam step on the parameter groups the pruning method declares (for AdapMTL: weights, and threshold logits with
their own learning rate), then the method's ``after_step_`` (for AdapMTL: the level controller moves all
thresholds together onto the scheduled sparsity). Progress goes to an ``on_step`` callback; this module never
prints. State is saved every ``save_every`` steps (and on Ctrl-C) so ``--resume`` continues exactly.

Host-device traffic: the losses, a finiteness probe of the parameters and the stop flag travel in one small
tensor, all-reduced over the ranks of a distributed run and fetched once per step, after the optimizer step,
where the level controller has to wait for the device anyway. The per-layer sparsity and the thresholds are
measured only every ``log_every`` steps.

Divergence: a non-finite task loss or a non-finite parameter after the optimizer step rolls everything back to
the last good state (the one saved last, kept in memory), halves every learning rate and replays the same
batches; after ``max_rollbacks`` rollbacks in a run it stops with a ``TrainingError``. The rollback count and
the lowered rates are part of the saved state.

Randomness: every global random stream (torch's on the CPU and every CUDA device, numpy's, Python's ``random``)
is seeded from ``(seed, step)`` alone before each step's forward, and from ``(seed, epoch, index)`` before each
item of the training data is read (in the loader's worker processes too), so dropout, random augmentation in the
dataset and anything else drawn from them are the same whether a run went through uninterrupted, was resumed
from any saved step, or rolled back; the order of the batches depends on ``(seed, step)`` only (``batches.py``).

Distributed (``world.distributed``): ``--batch-size`` is the global batch; each rank trains a DDP copy on its
slice of every global batch (see ``EpochSampler``), and every decision (rollback, stop, the adaptive weights,
the controller's level) is taken from all-reduced numbers or synchronised weights, so all ranks take the same.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from adapmtl_cli.api import Pruning
from adapmtl_cli.errors import TrainingError
from adapmtl_cli.sparsity.thresholds import overall_sparsity
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.train.batches import to_device, train_batches
from adapmtl_cli.train.device import autocast, autocast_dtype, uses_channels_last
from adapmtl_cli.train.distributed import SINGLE, World, all_reduce_sum_, broadcast_buffers_, mark_rank_copy, wrap_ddp
from adapmtl_cli.train.events import Rollback, StepInfo


@dataclass(frozen=True)
class TrainConfig:
    """The loop's slice of the run config (``TrainConfig.of(cfg)`` takes the fields of the same names)."""

    steps: int
    batch_size: int
    lr: float
    seed: int
    log_every: int = 10
    save_every: int = 50
    num_workers: int = 0
    precision: str = "auto"
    max_rollbacks: int = 3

    @classmethod
    def of(cls, cfg: Any) -> TrainConfig:
        """The fields of ``cfg`` (a ``PruneConfig``) this config has; the others keep their defaults."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)})


@dataclass
class LoopHooks:
    """Callbacks of the loop. In a distributed run ``on_log``, ``on_save`` and ``on_rollback`` are called on every
    rank at the same steps (so they may hold collectives)."""

    on_step: Callable[[StepInfo], None] | None = None
    on_log: Callable[[StepInfo], None] | None = None
    on_save: Callable[[LoopState], None] | None = None
    on_rollback: Callable[[Rollback], None] | None = None


@dataclass
class LoopState:
    """Everything needed to continue a run exactly."""

    step: int
    optimizer: dict[str, Any]
    weighting: dict[str, Any]
    model: dict[str, torch.Tensor]
    rng: torch.Tensor
    elapsed: float
    rollbacks: int = 0
    scaler: dict[str, Any] | None = None
    """The fp16 gradient scaler's state (``None`` for other precisions)."""
    task_weights: dict[str, float] | None = None
    """The task weights of the step that led to this state (``None`` in states saved before they were kept)."""


def seed_streams_(*parts: object) -> None:
    """Seed every global random stream from ``parts`` alone: torch's (CPU, and each CUDA device once CUDA is up),
    numpy's and Python's ``random``.

    ``torch.default_generator`` is seeded directly: ``torch.manual_seed`` also visits every other backend, which
    costs half a millisecond, too much per data item.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    seed = int.from_bytes(digest, "little") >> 1  # 63 bits: a valid seed for every generator
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class SeededItems(Dataset):
    """A training split whose item ``index`` of ``epoch`` is read with the random streams seeded from
    ``(seed, epoch, index)``: a dataset drawing random numbers (augmentation) gives the same item whenever it is
    read, on any resume, in any worker process.

    ``set_epoch`` is what ``train_batches`` calls each epoch; it is passed on to the wrapped split.
    """

    def __init__(self, inner: Dataset, seed: int) -> None:
        self.inner, self.seed, self.epoch = inner, seed, 0

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        seed_streams_("item", self.seed, self.epoch, int(index))
        return self.inner[index]

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.epoch, self.seed = epoch, seed
        inner = getattr(self.inner, "set_epoch", None)
        if callable(inner):
            inner(epoch, seed)


def _cpu_clone(obj: Any) -> Any:
    """A deep copy with every tensor cloned to the CPU (for in-memory snapshots the loop must not mutate)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_clone(v) for v in obj)
    return obj


def _user_name(name: str) -> str:
    """The user's name of a wrapper's parameter: ``x.weight`` for ``model.x.parametrizations.weight.original``."""
    name = re.sub(r"\.parametrizations\.(\w+)\.original$", r".\1", name)
    return name.removeprefix("model.")


def _non_finite_params(module: torch.nn.Module, step: int) -> str | None:
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not params or bool(torch.stack([torch.isfinite(p).all() for _, p in params]).all()):
        return None
    bad = [_user_name(n) for n, p in params if not bool(torch.isfinite(p).all())]
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return f"parameter {bad[0]!r}{more} became non-finite in optimizer step {step}"


def _group_sparsity(pruning: Pruning) -> tuple[float, dict[str, float]]:
    layers = pruning.measure()
    groups: dict[str, list[int]] = {}
    for layer in layers:
        acc = groups.setdefault(layer.group, [0, 0])
        acc[0] += layer.zeros
        acc[1] += layer.params
    return overall_sparsity(layers), {g: z / n for g, (z, n) in groups.items()}


class _StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None


@contextmanager
def _deferred_stop() -> Iterator[_StopFlag]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so the state we save is always consistent.

    A second Ctrl-C interrupts at once.
    """
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.signal is not None:
            raise KeyboardInterrupt
        flag.signal = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def adam(params: Any) -> torch.optim.Optimizer:
    """Adam, fused into one kernel per tensor where torch has it (CPU and CUDA, torch >= 2.4).

    On the CPU the fused step is 4-7 times faster than the default one, and it does not slow down on the
    all-zero second moments of pruned weights (``sqrt(0)`` is ten times slower than ``sqrt(x)`` there).
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch, or a device without the fused kernel
        return torch.optim.Adam(params)


def _divergence_message(first: str, last: str, rollbacks: int, good_step: int) -> str:
    advice = "lower --lr, check the data for invalid values, or check the model for operations that overflow"
    if rollbacks == 0:
        return f"{first}; {advice}"
    again = "" if last == first else f" ({last})"
    return (
        f"{first}; rolled back to the last good state (step {good_step}) with halved learning rates "
        f"{rollbacks} times and it diverged again{again}; {advice}"
    )


def _param_probe(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sum of every parameter: finite iff all are (up to overflow, which ``_non_finite_params`` rules out).

    One read per parameter and no boolean masks, so it stays cheap enough to run every step.
    """
    if not params:
        return torch.zeros(())
    return torch.stack([p.detach().float().sum() for p in params]).sum()


class _Loop:
    """One run of the loop: the training objects, their snapshots, and the step."""

    def __init__(
        self,
        pruning: Pruning,
        dataset: Dataset,
        tasks: Sequence[TaskSpec],
        cfg: TrainConfig,
        device: torch.device,
        world: World,
        hooks: LoopHooks,
    ) -> None:
        self.pruning, self.dataset, self.tasks, self.cfg = pruning, SeededItems(dataset, cfg.seed), list(tasks), cfg
        self.device, self.world, self.hooks = device, world, hooks
        self.tm = pruning.pruner.module
        self.tm.to(device).train()
        self.channels_last = uses_channels_last(self.tm, device)
        if self.channels_last:
            self.tm.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # a real overload missing from torch's stubs
        self.dtype = autocast_dtype(cfg.precision, device.type)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.optimizer = adam(pruning.param_groups(cfg.lr))
        self.elapsed, self.rollbacks = 0.0, 0
        self.resumed_weights: dict[str, float] | None = None
        self.names = [t.name for t in self.tasks]
        self.flags = torch.tensor([0.0, 1.0], device=device)  # the stop flag's two values: no upload per step
        self.pin = device.type == "cuda"
        self.params = [p for p in self.tm.parameters() if p.requires_grad]

    def start_(self, resume: LoopState | None) -> int:
        """Load ``resume`` (or seed a fresh run); returns the first step."""
        if resume is None:
            torch.manual_seed(self.cfg.seed)
            self.pruning.step_count = 0
            return 0
        self.pruning.load_state_dict({"model": resume.model, "weighting": resume.weighting, "step": resume.step})
        self.optimizer.load_state_dict(resume.optimizer)
        if resume.scaler:
            self.scaler.load_state_dict(resume.scaler)
        torch.set_rng_state(resume.rng)
        self.elapsed, self.rollbacks = resume.elapsed, resume.rollbacks
        self.resumed_weights = resume.task_weights
        return resume.step

    def snapshot(self, step: int, task_weights: dict[str, float] | None) -> LoopState:
        return LoopState(
            step=step,
            optimizer=_cpu_clone(self.optimizer.state_dict()),
            weighting=self.pruning.weighting.state_dict(),
            model=_cpu_clone(self.tm.state_dict()),
            rng=torch.get_rng_state(),
            elapsed=self.elapsed,
            rollbacks=self.rollbacks,
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            task_weights=task_weights,
        )

    def restore_(self, state: LoopState) -> None:
        self.pruning.load_state_dict({"model": state.model, "weighting": state.weighting, "step": state.step})
        # load_state_dict keeps references to same-device tensors: hand it a copy so the snapshot stays intact.
        self.optimizer.load_state_dict(_cpu_clone(state.optimizer))
        if state.scaler:
            self.scaler.load_state_dict(state.scaler)
        torch.set_rng_state(state.rng)

    def batches(self, step: int) -> Iterator[Any]:
        c = self.cfg
        return train_batches(self.dataset, c.batch_size, c.seed, step, c.num_workers, self.world, self.pin)

    def measured(self, info: StepInfo) -> StepInfo:
        if self.world.is_main:
            info.sparsity, info.group_sparsity = _group_sparsity(self.pruning)
            info.thresholds = self.pruning.thresholds()
        return info

    def train_step(self, net: torch.nn.Module, batch: Any, stop: _StopFlag) -> list[float]:
        """Forward, weighted loss, backward, optimizer step; returns the all-reduced losses, total, probe, stop."""
        x, y = to_device(batch, self.device)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            preds = self.pruning.discovery.mapping.select(net(x))
        if self.dtype is not None:
            preds = {k: v.float() for k, v in preds.items()}
        losses = [t.loss(preds[t.name], y[t.name]) for t in self.tasks]
        total = self.pruning.weigh(dict(zip(self.names, losses, strict=True)))
        # Always step, even on a non-finite loss: every rank must take part in DDP's gradient all-reduce.
        # The caller rolls such a step back.
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed, and lowers the scale
        self.scaler.update()
        stats = torch.stack(
            [
                *(loss.detach().float() for loss in losses),
                total.detach().float(),
                _param_probe(self.params).to(self.device),
                self.flags[int(stop.signal is not None)],
            ]
        )
        return cast(list[float], all_reduce_sum_(stats, self.world).tolist())  # the step's one transfer

    def problem(self, losses: dict[str, float], probe: float, step: int) -> str | None:
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            return f"loss of task {', '.join(map(repr, bad))} became {losses[bad[0]]} at step {step}"
        if not math.isfinite(probe):
            return _non_finite_params(self.tm, step)
        return None

    def roll_back_(self, good: LoopState, step: int, problem: str) -> None:
        """Go back to ``good`` with halved learning rates, and tell the hooks."""
        self.rollbacks += 1
        lrs = [group["lr"] * 0.5 for group in self.optimizer.param_groups]
        self.restore_(good)
        for group, group_lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = group_lr
        if self.hooks.on_rollback:
            self.hooks.on_rollback(Rollback(good.step, step, problem, lrs, self.rollbacks, self.cfg.max_rollbacks))

    def run(self, start: int) -> StepInfo:
        cfg, world, hooks = self.cfg, self.world, self.hooks
        net = wrap_ddp(self.tm, world, self.device)
        # The weights of the step that led here: a finished run resumed reports the weights its last step used.
        last_weights = self.resumed_weights or self.pruning.task_weights()
        good = self.snapshot(start, self.resumed_weights)  # the state a divergence rolls back to: the last saved
        first_failure: str | None = None
        batches = self.batches(start)
        info = StepInfo(start, cfg.steps, math.nan, {}, last_weights, self.pruning.target_at(start))
        step = start
        t0 = time.perf_counter() - self.elapsed
        with _deferred_stop() as stop:
            while step < cfg.steps:
                weights = self.pruning.task_weights()
                batch = next(batches)
                seed_streams_("step", cfg.seed, step)  # after the batch: a new loader's own draw cannot shift it
                values = self.train_step(net, batch, stop)
                losses = {name: v / world.world_size for name, v in zip(self.names, values, strict=False)}
                total, probe, stopping = values[-3] / world.world_size, values[-2], values[-1] > 0
                problem = self.problem(losses, probe, step)
                if problem is not None:
                    first_failure = first_failure or problem
                    if self.rollbacks >= cfg.max_rollbacks:
                        error = TrainingError(_divergence_message(first_failure, problem, self.rollbacks, good.step))
                        raise error if world.is_main else mark_rank_copy(error)
                    self.roll_back_(good, step, problem)
                    batches, step = self.batches(good.step), good.step
                    continue
                target = self.pruning.target_at(step + 1)
                sparsity = self.pruning.step(losses)
                self.elapsed = time.perf_counter() - t0
                info = StepInfo(step + 1, cfg.steps, total, losses, weights, target, sparsity, seconds=self.elapsed)
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    self.measured(info)
                    if hooks.on_log:
                        hooks.on_log(info)
                if hooks.on_step:
                    hooks.on_step(info)
                if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or stopping:
                    good = self.snapshot(step + 1, weights)
                    if hooks.on_save:
                        hooks.on_save(good)
                if stopping:
                    raise KeyboardInterrupt if world.is_main else mark_rank_copy(KeyboardInterrupt())
                step += 1
        return info


def finetune(
    pruning: Pruning,
    dataset: Dataset,
    tasks: Sequence[TaskSpec],
    cfg: TrainConfig,
    *,
    device: torch.device,
    world: World = SINGLE,
    resume: LoopState | None = None,
    hooks: LoopHooks | None = None,
) -> StepInfo:
    """Run the loop from step 0 (or ``resume.step``) to ``cfg.steps``; return the last step's info.

    In a distributed run every rank calls this with the same arguments; the logged sparsity and thresholds are
    measured on rank 0 only.

    Raises:
        TrainingError: the loss or the weights stayed non-finite after ``cfg.max_rollbacks`` rollbacks.
        KeyboardInterrupt: after the state was saved, so the run can be resumed.
    """
    loop = _Loop(pruning, dataset, tasks, cfg, device, world, hooks or LoopHooks())
    info = loop.run(loop.start_(resume))
    broadcast_buffers_(loop.tm, world)
    if not info.group_sparsity:
        loop.measured(info)
    return info
