"""Evaluation: every task's metrics over a split, and the batch limit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from adapmtl_cli.jobs.prepare import prepare
from adapmtl_cli.train.evaluate import evaluate

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, TASKS  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


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
