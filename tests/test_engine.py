"""The fine-tuning loop's building blocks: deterministic, resumable batch order and evaluation."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from adapmtl_cli.data import get_dataset
from adapmtl_cli.errors import AdapmtlError, ConfigError
from adapmtl_cli.jobs.prune import prepare
from adapmtl_cli.methods import MethodContext, build_pruner
from adapmtl_cli.methods.base import Pruner
from adapmtl_cli.methods.weighting import EqualWeighting
from adapmtl_cli.model.discover import discover_components
from adapmtl_cli.model.outputs import map_outputs
from adapmtl_cli.tasks import get_task
from adapmtl_cli.train.loop import EpochSampler, StepInfo, evaluate, finetune, train_batches

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, TASKS, time_limit  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


def _ids(n: int, batch_size: int, seed: int, start: int, count: int) -> list[list[int]]:
    dataset = TensorDataset(torch.arange(n))
    batches = train_batches(dataset, batch_size, seed, start)
    return [b[0].tolist() for b in itertools.islice(batches, count)]


def test_epoch_sampler_is_a_seeded_permutation() -> None:
    a = list(EpochSampler(10, seed=3, epoch=1))
    assert sorted(a) == list(range(10))
    assert a == list(EpochSampler(10, seed=3, epoch=1))
    assert a != list(EpochSampler(10, seed=3, epoch=2))
    assert a != list(EpochSampler(10, seed=4, epoch=1))


def test_epoch_sampler_can_start_mid_epoch() -> None:
    full = list(EpochSampler(10, seed=3, epoch=1))
    tail = EpochSampler(10, seed=3, epoch=1, offset=4)
    assert list(tail) == full[4:]
    assert len(tail) == 6


def test_train_batches_are_deterministic() -> None:
    assert _ids(10, 3, seed=0, start=0, count=12) == _ids(10, 3, seed=0, start=0, count=12)
    assert _ids(10, 3, seed=0, start=0, count=12) != _ids(10, 3, seed=1, start=0, count=12)


def test_train_batches_cover_each_epoch_once() -> None:
    batches = _ids(10, 3, seed=0, start=0, count=9)  # 3 full batches per epoch, the last sample dropped
    for epoch in range(3):
        seen = [i for b in batches[3 * epoch : 3 * epoch + 3] for i in b]
        assert len(seen) == len(set(seen)) == 9
    assert batches[:3] != batches[3:6]


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 7, 11])
def test_resuming_at_batch_k_continues_the_same_stream(k: int) -> None:
    stream = _ids(10, 3, seed=5, start=0, count=15)
    assert _ids(10, 3, seed=5, start=k, count=15 - k) == stream[k:]


def test_batch_larger_than_the_dataset_does_not_hang() -> None:
    """Three samples, batches of four: yield a (short) batch or raise a one-line error, but return."""
    with time_limit(3):
        try:
            batch = next(train_batches(TensorDataset(torch.arange(3)), 4, seed=0, start_step=0))
        except AdapmtlError:
            return
    assert 1 <= len(batch[0]) <= 4


def test_resuming_real_data_gives_the_same_images(scenes: Path) -> None:
    train = get_dataset("synthetic").open(scenes, "train")
    stream = list(itertools.islice(train_batches(train, 4, 0, 0), 9))
    resumed = list(itertools.islice(train_batches(train, 4, 0, 7), 2))
    for (x, y), (x2, y2) in zip(stream[7:], resumed, strict=True):
        assert torch.equal(x, x2)
        assert y.keys() == y2.keys() and all(torch.equal(y[t], y2[t]) for t in y)


def test_evaluate_returns_every_tasks_metrics(checkpoint: Path, scenes: Path) -> None:
    prepared = prepare(str(checkpoint), factory=FACTORY, trust_pickle=False, data="synthetic", data_dir=str(scenes))
    calls: list[tuple[int, int]] = []
    model, cpu = prepared.loaded.model.train(), torch.device("cpu")
    metrics = evaluate(
        model, prepared.val, prepared.tasks, prepared.mapping, cpu, 4, on_batch=lambda *a: calls.append(a)
    )
    assert list(metrics) == list(TASKS)
    for spec in prepared.tasks:
        assert list(metrics[spec.name]) == [m.name for m in spec.metrics]
        assert all(math.isfinite(v) for v in metrics[spec.name].values())
    assert calls == [(1, 2), (2, 2)]  # 8 validation samples in batches of 4
    assert model.training  # the caller's mode is restored
    again = evaluate(model, prepared.val, prepared.tasks, prepared.mapping, cpu, 4)
    assert again == metrics


def test_evaluate_max_batches_limits_the_pass(checkpoint: Path, scenes: Path) -> None:
    prepared = prepare(str(checkpoint), factory=FACTORY, trust_pickle=False, data="synthetic", data_dir=str(scenes))
    calls: list[tuple[int, int]] = []
    evaluate(
        prepared.loaded.model,
        prepared.val,
        prepared.tasks,
        prepared.mapping,
        torch.device("cpu"),
        2,
        max_batches=1,
        on_batch=lambda i, n: calls.append((i, n)),
    )
    assert calls == [(1, 1)]


# --- precision ------------------------------------------------------------------------------------


class _Scenes(Dataset):
    """Eight random (image, {segmentation, depth}) pairs at 32x48."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(8, 3, 32, 48, generator=g)
        self.seg = torch.randint(0, 13, (8, 32, 48), generator=g)
        self.depth = torch.rand(8, 1, 32, 48, generator=g) + 0.5

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {"segmentation": self.seg[i], "depth": self.depth[i]}


def _finetune(precision: str, steps: int = 6) -> tuple[Pruner, StepInfo]:
    from tiny_models import HardShared

    torch.manual_seed(0)
    model = HardShared(tasks={"segmentation": 13, "depth": 1})
    data = _Scenes()
    specs = [get_task("segmentation", num_classes=13), get_task("depth")]
    raw = model(data.x[:2])
    mapping = map_outputs(raw, specs, batch=2)
    cmap = discover_components(model, mapping.select(raw), [s.name for s in specs])
    pruner = build_pruner(
        "adapmtl", MethodContext(model=model, cmap=cmap, sparsity=0.8, steps=steps, ramp_end=0.5, layer_scale="none")
    )
    info = finetune(
        pruner,
        data,
        specs,
        mapping,
        device=torch.device("cpu"),
        steps=steps,
        batch_size=4,
        lr=1e-3,
        threshold_lr=1e-2,
        weighting=EqualWeighting([s.name for s in specs]),
        seed=0,
        log_every=3,
        precision=precision,
    )
    return pruner, info


def test_bf16_on_the_cpu_trains_to_the_exact_target() -> None:
    pruner, info = _finetune("bf16")
    bf16_losses = info.task_losses
    assert info.step == 6 and info.sparsity is not None and abs(info.sparsity - 0.8) <= 0.001
    assert all(p.dtype == torch.float32 for p in pruner.module.parameters())  # autocast never casts the weights
    assert all(math.isfinite(v) for v in bf16_losses.values())
    _, fp32 = _finetune("fp32")
    assert fp32.task_losses != bf16_losses  # bf16 really ran: the numbers differ in their last bits


def test_fp16_on_the_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="--precision fp16 is not supported on cpu"):
        _finetune("fp16", steps=1)
