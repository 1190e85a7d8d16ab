"""The fine-tuning loop: weights and thresholds co-optimised under adaptive task weights, on a sparsity schedule.

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

Distributed (``world.distributed``): ``--batch-size`` is the global batch; each rank trains a DDP copy on its
slice of every global batch (see ``EpochSampler``), and every decision (rollback, stop, the adaptive weights,
the controller's level) is taken from all-reduced numbers or synchronised weights, so all ranks take the same.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from adapmtl_cli.errors import ConfigError, DataError, TrainingError
from adapmtl_cli.methods.base import Pruner
from adapmtl_cli.methods.weighting import EqualWeighting, PaperWeighting
from adapmtl_cli.model.outputs import OutputMapping
from adapmtl_cli.sparsity.thresholds import overall_sparsity
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.train.distributed import SINGLE, World, all_reduce_sum_, broadcast_buffers_, mark_rank_copy, wrap_ddp


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if there is one, else CPU; an unavailable device is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name!r}: this torch build or machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name!r}: MPS is not available on this machine; use --device cpu")
    return device


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start mid-epoch, so a resumed run sees the same batches.

    With ``world_size > 1`` it yields one rank's share: the permutation is cut into global batches of
    ``global_batch`` samples and rank ``r`` takes the ``r``-th contiguous slice of ``global_batch / world_size``
    samples of each, so the global batch of step ``k`` depends on (seed, epoch, k) only, never on the number
    of processes, and a run can resume under another world size.
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int = 0,
        offset: int = 0,
        *,
        global_batch: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.n, self.seed, self.epoch, self.offset = n, seed, epoch, offset
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()[self.offset :]
        if self.world_size == 1:
            return iter(perm)
        return iter(shard(perm, self.global_batch, self.rank, self.world_size))

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n - self.offset
        return (self.n - self.offset) // self.global_batch * (self.global_batch // self.world_size)


def shard(order: Sequence[int], global_batch: int, rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s slice of every complete global batch in ``order`` (an incomplete last one is dropped)."""
    local = global_batch // world_size
    out: list[int] = []
    for start in range(0, len(order) - global_batch + 1, global_batch):
        out.extend(order[start + rank * local : start + (rank + 1) * local])
    return out


def train_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    start_step: int,
    num_workers: int = 0,
    world: World = SINGLE,
    pin_memory: bool = False,
) -> Iterator[Any]:
    """Endless batches in a deterministic order, starting at batch number ``start_step``.

    ``pin_memory`` (for CUDA runs) has the loader return page-locked batches, so the copies to the GPU
    (``non_blocking``) overlap with compute.

    ``batch_size`` is the global batch; in a distributed run this rank gets its ``batch_size / world_size``
    share of each (``EpochSampler``). A dataset with a ``set_epoch(epoch, seed)`` method (random augmentation)
    is told each epoch before its loader starts, so its random draws depend on (seed, epoch, index) only and a
    resumed run sees the same ones.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n < batch_size:
        raise DataError(
            f"the train split has {n} samples, fewer than --batch-size {batch_size}; lower --batch-size "
            "(incomplete batches are dropped)"
        )
    if batch_size % world.world_size:
        raise ConfigError(f"--batch-size {batch_size} does not split over {world.world_size} processes")
    local = batch_size // world.world_size
    per_epoch = n // batch_size
    epoch, within = divmod(start_step, per_epoch)
    while True:
        sampler = EpochSampler(
            n,
            seed,
            epoch,
            within * batch_size,
            global_batch=batch_size,
            rank=world.rank,
            world_size=world.world_size,
        )
        set_epoch = getattr(dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch, seed)
        loader = DataLoader(
            dataset,
            batch_size=local,
            sampler=sampler,
            drop_last=True,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        yield from loader
        epoch, within = epoch + 1, 0


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    image, targets = batch
    return image.to(device, non_blocking=True), {k: v.to(device, non_blocking=True) for k, v in targets.items()}


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device_type: str, *, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype ``--precision`` means on this kind of device; ``None`` is plain fp32.

    ``auto``: bf16 on CUDA (fp16, with a gradient scaler, on GPUs without bf16), fp32 elsewhere. ``bf16`` also
    works on the CPU, where it must be asked for. Thresholds, their sparsity and the losses stay fp32 always.

    Args:
        bf16_supported: whether the GPU has bf16; asked from torch when omitted (CUDA only).

    Raises:
        ConfigError: the device cannot autocast to that dtype.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device_type == "cuda":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return torch.bfloat16 if bf16_supported else torch.float16
        if precision == "bf16" and not bf16_supported:
            raise ConfigError("--precision bf16: this GPU has no bfloat16 support; pass --precision fp16 or fp32")
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "auto":
        return None
    if device_type == "cpu" and precision == "bf16":
        return torch.bfloat16
    raise ConfigError(
        f"--precision {precision} is not supported on {device_type}; use fp32 (or bf16 on the CPU, bf16/fp16 on CUDA)"
    )


def autocast_for(device: torch.device, precision: str = "auto") -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    return _autocast(device, autocast_dtype(precision, device.type))


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def uses_channels_last(module: torch.nn.Module, device: torch.device) -> bool:
    """Channels-last memory on CUDA for models with 2-D convolutions (faster cuDNN kernels, tensor cores)."""
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    tasks: Sequence[TaskSpec],
    mapping: OutputMapping,
    device: torch.device,
    batch_size: int = 8,
    max_batches: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    precision: str = "auto",
) -> dict[str, dict[str, float]]:
    """Every task's metrics over ``dataset`` (pooled over all pixels of the split), under ``precision``."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    meters = {t.name: t.new_meter() for t in tasks}
    dtype = autocast_dtype(precision, device.type)
    for i, batch in enumerate(loader):
        if i >= total:
            break
        x, y = to_device(batch, device)
        with _autocast(device, dtype):
            preds = mapping.select(model(x))
        for t in tasks:
            meters[t.name].update(preds[t.name], y[t.name])
        if on_batch:
            on_batch(i + 1, total)
    model.train(was_training)
    return {name: m.compute() for name, m in meters.items()}


@dataclass
class StepInfo:
    """What the loop reports after a step (and writes to ``metrics.jsonl`` every ``log_every`` steps)."""

    step: int
    total_steps: int
    loss: float
    task_losses: dict[str, float]
    task_weights: dict[str, float]
    target: float
    sparsity: float | None = None
    group_sparsity: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss": self.loss,
            "task_losses": self.task_losses,
            "task_weights": self.task_weights,
            "target": self.target,
            "sparsity": self.sparsity,
            "group_sparsity": self.group_sparsity,
            "thresholds": self.thresholds,
            "seconds": self.seconds,
        }


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


@dataclass(frozen=True)
class Rollback:
    """A divergence the loop recovered from: what went wrong, where it went back to, the new learning rates."""

    step: int
    """The step of the good state the loop went back to (it continues from there)."""
    failed_step: int
    reason: str
    lrs: list[float]
    attempt: int
    max_attempts: int

    def record(self) -> dict[str, Any]:
        return {"event": "rollback", **{k: getattr(self, k) for k in self.__dataclass_fields__}}


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


def _group_sparsity(pruner: Pruner) -> tuple[float, dict[str, float]]:
    layers = pruner.measure()
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


def make_optimizer(pruner: Pruner, lr: float, threshold_lr: float) -> torch.optim.Optimizer:
    return adam(pruner.param_groups(lr, threshold_lr))


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


def finetune(
    pruner: Pruner,
    dataset: Dataset,
    tasks: Sequence[TaskSpec],
    mapping: OutputMapping,
    *,
    device: torch.device,
    steps: int,
    batch_size: int,
    lr: float,
    threshold_lr: float,
    weighting: PaperWeighting | EqualWeighting,
    seed: int,
    log_every: int = 10,
    save_every: int = 50,
    num_workers: int = 0,
    resume: LoopState | None = None,
    max_rollbacks: int = 3,
    precision: str = "auto",
    world: World = SINGLE,
    on_step: Callable[[StepInfo], None] | None = None,
    on_log: Callable[[StepInfo], None] | None = None,
    on_save: Callable[[LoopState], None] | None = None,
    on_rollback: Callable[[Rollback], None] | None = None,
) -> StepInfo:
    """Run the loop from step 0 (or ``resume.step``) to ``steps``; return the last step's info.

    In a distributed run every rank calls this with the same arguments; ``on_log``, ``on_save`` and
    ``on_rollback`` are called on every rank at the same steps (so they may hold collectives), and the logged
    sparsity and thresholds are measured on rank 0 only.

    Raises:
        TrainingError: the loss or the weights stayed non-finite after ``max_rollbacks`` rollbacks.
        KeyboardInterrupt: after the state was saved, so the run can be resumed.
    """
    tm = pruner.module
    tm.to(device).train()
    channels_last = uses_channels_last(tm, device)
    if channels_last:
        tm.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(precision, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = make_optimizer(pruner, lr, threshold_lr)
    start, elapsed, rollbacks = 0, 0.0, 0
    if resume is not None:
        tm.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        weighting.load_state_dict(resume.weighting)
        if resume.scaler:
            scaler.load_state_dict(resume.scaler)
        torch.set_rng_state(resume.rng)
        start, elapsed, rollbacks = resume.step, resume.elapsed, resume.rollbacks
    else:
        torch.manual_seed(seed)
    net = wrap_ddp(tm, world, device)
    params = [p for p in tm.parameters() if p.requires_grad]
    names = [t.name for t in tasks]
    flags = torch.tensor([0.0, 1.0], device=device)  # the stop flag's two values, placed once: no upload per step

    def snapshot(step: int) -> LoopState:
        return LoopState(
            step=step,
            optimizer=_cpu_clone(optimizer.state_dict()),
            weighting=weighting.state_dict(),
            model=_cpu_clone(tm.state_dict()),
            rng=torch.get_rng_state(),
            elapsed=elapsed,
            rollbacks=rollbacks,
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
        )

    def restore_(state: LoopState) -> None:
        tm.load_state_dict(state.model)
        # load_state_dict keeps references to same-device tensors: hand it a copy so ``good`` stays intact.
        optimizer.load_state_dict(_cpu_clone(state.optimizer))
        weighting.load_state_dict(state.weighting)
        if state.scaler:
            scaler.load_state_dict(state.scaler)
        torch.set_rng_state(state.rng)

    def measured(info: StepInfo) -> StepInfo:
        if world.is_main:
            info.sparsity, info.group_sparsity = _group_sparsity(pruner)
            info.thresholds = pruner.thresholds()
        return info

    good = snapshot(start)  # the state a divergence rolls back to: the last one saved
    first_failure: str | None = None

    pin = device.type == "cuda"
    batches = train_batches(dataset, batch_size, seed, start, num_workers, world, pin)
    info = StepInfo(start, steps, math.nan, {}, weighting.weights(), pruner.target_at(start))
    step = start
    t0 = time.perf_counter() - elapsed
    with _deferred_stop() as stop:
        while step < steps:
            x, y = to_device(next(batches), device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            weights = weighting.weights()
            with _autocast(device, dtype):
                preds = mapping.select(net(x))
            if dtype is not None:
                preds = {k: v.float() for k, v in preds.items()}
            losses = [t.loss(preds[t.name], y[t.name]) for t in tasks]
            total = sum(weights[name] * loss for name, loss in zip(names, losses, strict=True))
            # Always step, even on a non-finite loss: every rank must take part in DDP's gradient all-reduce.
            # The check below rolls such a step back.
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()  # type: ignore[union-attr]
            scaler.step(optimizer)  # skips the update when fp16 gradients overflowed, and lowers the scale
            scaler.update()
            stats = torch.stack(
                [
                    *(loss.detach().float() for loss in losses),
                    total.detach().float(),  # type: ignore[union-attr]
                    _param_probe(params).to(device),
                    flags[int(stop.signal is not None)],
                ]
            )
            values = all_reduce_sum_(stats, world).tolist()  # the step's one device-to-host transfer
            loss_values = {name: v / world.world_size for name, v in zip(names, values, strict=False)}
            total_value, probe, stopping = values[-3] / world.world_size, values[-2], values[-1] > 0
            bad = [k for k, v in loss_values.items() if not math.isfinite(v)]
            problem: str | None = None
            if bad:
                problem = f"loss of task {', '.join(map(repr, bad))} became {loss_values[bad[0]]} at step {step}"
            elif not math.isfinite(probe):
                problem = _non_finite_params(tm, step)
            if problem is not None:
                first_failure = first_failure or problem
                if rollbacks >= max_rollbacks:
                    error = TrainingError(_divergence_message(first_failure, problem, rollbacks, good.step))
                    raise error if world.is_main else mark_rank_copy(error)
                rollbacks += 1
                lrs = [group["lr"] * 0.5 for group in optimizer.param_groups]
                restore_(good)
                for group, group_lr in zip(optimizer.param_groups, lrs, strict=True):
                    group["lr"] = group_lr
                batches = train_batches(dataset, batch_size, seed, good.step, num_workers, world, pin)
                if on_rollback:
                    on_rollback(Rollback(good.step, step, problem, lrs, rollbacks, max_rollbacks))
                step = good.step
                continue
            target = pruner.target_at(step + 1)
            sparsity = pruner.after_step_(step + 1)
            weighting.update(step, loss_values)
            elapsed = time.perf_counter() - t0
            info = StepInfo(step + 1, steps, total_value, loss_values, weights, target, sparsity, seconds=elapsed)
            if (step + 1) % log_every == 0 or step + 1 == steps:
                measured(info)
                if on_log:
                    on_log(info)
            if on_step:
                on_step(info)
            if (step + 1) % save_every == 0 or step + 1 == steps or stopping:
                good = snapshot(step + 1)
                if on_save:
                    on_save(good)
            if stopping:
                raise KeyboardInterrupt if world.is_main else mark_rank_copy(KeyboardInterrupt())
            step += 1
    broadcast_buffers_(tm, world)
    if not info.group_sparsity:
        measured(info)
    return info
