"""Training batches in a deterministic order that can start at any step, sharded per rank under torchrun."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from adapmtl_cli.errors import ConfigError
from adapmtl_cli.train.distributed import SINGLE, World


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


def check_batch_size(batch_size: int, samples: int | None, world: World = SINGLE) -> None:
    """``--batch-size`` is the global batch: it must split evenly over the ranks and fit in the train split.

    Args:
        samples: the train split's size (None: not known yet).

    Raises:
        ConfigError: it does not split or does not fit (incomplete batches are dropped).
    """
    if batch_size % world.world_size:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {world.world_size} processes (it is the global batch "
            f"per step); pass a multiple of {world.world_size}"
        )
    if samples is not None and samples < batch_size:
        raise ConfigError(
            f"--batch-size {batch_size} is larger than the train split ({samples} samples); lower --batch-size"
        )


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
    check_batch_size(batch_size, n, world)
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
