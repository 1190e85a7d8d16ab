"""Data-parallel runs under ``torchrun``: the process group, each rank's device, DDP, and agreeing on errors.

``torchrun --nproc_per_node=N -m adapmtl_cli prune ...`` starts N copies of the same command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. Every rank loads the same model, builds
the same thresholds and trains a ``DistributedDataParallel`` copy on its shard of each global batch; rank 0
alone writes the run folder and reports progress. Without those variables (or with ``WORLD_SIZE=1``) nothing
here does anything and the run is the ordinary single-process one.

Errors end every rank, and one of them says why. Setup that each rank does for itself runs through ``agree``
(the lowest failing rank's error is raised everywhere); work that only rank 0 does (writing, evaluating) runs
through ``run_on_main``, which hands rank 0's result or exception to every rank; a divergence is seen alike by
all ranks through all-reduced losses. The copies raised on the other ranks are marked, and ``reports_error``
tells the command line to print only the original. A rank that dies outright (out of memory, killed) breaks
the next collective of the others, which then leave quietly (``process_group``): the dead rank's own error is
the message. ``ADAPMTL_DIST_INIT_METHOD`` replaces torchrun's ``env://`` rendezvous (e.g.
``file:///shared/path`` where no TCP port is free; the tests use it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from adapmtl_cli.errors import AdapmtlError, ConfigError, TrainingError

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

INIT_METHOD_ENV = "ADAPMTL_DIST_INIT_METHOD"
_ECHO = "_adapmtl_rank_copy"


@dataclass(frozen=True)
class World:
    """Where this process stands in a run: its rank, how many there are, its GPU index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


SINGLE = World()


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The ``World`` that torchrun's variables describe; ``SINGLE`` when they are absent.

    Raises:
        ConfigError: the variables are malformed or contradict each other.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return SINGLE
    raw = {k: env.get(k, "0") for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    try:
        rank, size, local = (int(raw[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError(
            f"RANK={raw['RANK']!r}, WORLD_SIZE={raw['WORLD_SIZE']!r}, LOCAL_RANK={raw['LOCAL_RANK']!r} are not "
            "all integers; start distributed runs with torchrun"
        ) from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(
            f"RANK={rank} and WORLD_SIZE={size} do not fit together; start distributed runs with torchrun"
        )
    return World(rank, size, local)


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun run (for the command line's printing)."""
    try:
        return world_from_env().is_main
    except ConfigError:
        return True


def rank_device(device: torch.device, world: World) -> torch.device:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for CUDA runs, the CPU for CPU runs.

    Raises:
        ConfigError: the device cannot be shared out (one named GPU, MPS, fewer GPUs than ranks on the node).
    """
    if not world.distributed:
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"--device {str(device)!r} names one GPU but torchrun started {world.world_size} processes; pass "
                "--device cuda (each process uses cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {world.local_rank} has no GPU: only {torch.cuda.device_count()} are visible; "
                "start at most that many processes per node (--nproc_per_node)"
            )
        return torch.device("cuda", world.local_rank)
    if device.type != "cpu":
        raise ConfigError(
            f"--device {str(device)!r} cannot run distributed (torch.distributed supports CUDA and CPU); "
            "pass --device cuda or --device cpu"
        )
    return device


def backend_for(device_type: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


@contextmanager
def process_group(world: World, device_type: str) -> Iterator[World]:
    """Join the run's process group for the duration of the block, and leave it on success and on error.

    A collective that fails because another rank died becomes a ``TrainingError`` that this rank does not
    print (``reports_error``): the rank that failed first reports the cause.
    """
    if not world.distributed:
        yield world
        return
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    init = os.environ.get(INIT_METHOD_ENV) or "env://"
    dist.init_process_group(backend_for(device_type), init_method=init, rank=world.rank, world_size=world.world_size)
    try:
        yield world
        dist.barrier()  # nobody tears the group down while another rank still reads its last message
    except RuntimeError as exc:
        if not _lost_peer(exc):
            raise
        detail = " ".join(str(exc).split())[:200]
        raise mark_rank_copy(
            TrainingError(f"lost contact with another process of this run ({detail}); its own error says why")
        ) from exc
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # leaving a broken group must not hide the error that broke it
            pass


_PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "gloo/transport", "NCCL communicator")


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away (gloo raises plain RuntimeErrors)."""
    return isinstance(exc, dist.DistError) or any(marker in str(exc) for marker in _PEER_LOSS)


def mark_rank_copy(exc: E) -> E:
    """Mark ``exc`` as a copy of an error another rank reports; returns it."""
    setattr(exc, _ECHO, True)
    return exc


def reports_error(exc: BaseException) -> bool:
    """Whether this process should print ``exc`` (False for the copies of an error rank 0 prints)."""
    return not getattr(exc, _ECHO, False)


def run_on_main(world: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result or raises its exception.

    The other ranks wait for rank 0 (a broadcast is the barrier), so work that only rank 0 does (writing the
    run folder, evaluating) cannot leave them behind in a collective when it fails.
    """
    if not world.distributed:
        return fn()
    outcome: list[Any] = [None]
    if world.is_main:
        try:
            outcome[0] = ("ok", fn())
        except BaseException as exc:
            outcome[0] = ("error", _portable(exc))
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise mark_rank_copy(value)
    return value


def agree(world: World, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it fails on any, raise the lowest failing rank's error on all of them.

    For setup that each rank does for itself (loading, probing, checking options): a problem found on one rank
    must stop all of them, and the message is printed once.
    """
    if not world.distributed:
        return fn()
    result: Any = None
    error: BaseException | None = None
    try:
        result = fn()
    except BaseException as exc:
        error = exc
    errors: list[Any] = [None] * world.world_size
    dist.all_gather_object(errors, None if error is None else _portable(error))
    first = next((i for i, e in enumerate(errors) if e is not None), None)
    if first is None:
        return result
    if first == world.rank:
        assert error is not None
        raise error
    raise mark_rank_copy(errors[first])


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it can travel to another process as itself, else a ``TrainingError`` naming it."""
    if isinstance(exc, (AdapmtlError, KeyboardInterrupt)):
        return exc
    detail = " ".join(str(exc).split())[:200]
    return TrainingError(f"another process of this run failed with {type(exc).__name__}: {detail}")


def wrap_ddp(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when the run is distributed, else ``module`` itself.

    ``static_graph``: every step runs the same graph, so parameters no task reaches (modules discovery found
    unreached) are fine without the per-step graph search of ``find_unused_parameters``.
    """
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, static_graph=True, gradient_as_bucket_view=True)


def broadcast_buffers_(module: nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), in place.

    DDP sends them before each forward, but that forward updates them again from each rank's own slice of the
    batch: after the last step the ranks differ in their buffers until this runs.
    """
    if world.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def all_reduce_sum_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place (no-op for one process); returns it."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
