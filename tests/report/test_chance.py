"""Chance level: the best constant prediction per task, and the warning for a dense model that does not beat it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapmtl_cli.data import get_dataset
from adapmtl_cli.model.outputs import OutputMapping
from adapmtl_cli.models import deeplab_resnet_tiny
from adapmtl_cli.report.chance import (
    CHANCE_MARGIN,
    _fit_constant,
    _fit_targets,
    beats_chance,
    chance_warnings,
    constant_metrics,
)
from adapmtl_cli.tasks.base import TaskSpec
from adapmtl_cli.train.evaluate import evaluate

pytest.register_assert_rewrite("fixtures_e2e")

pytest_plugins = ["fixtures_e2e"]


@pytest.fixture(scope="module")
def data(scenes: Path) -> tuple[list[TaskSpec], object, object]:
    adapter = get_dataset("synthetic")
    return list(adapter.tasks(scenes)), adapter.open(scenes, "train"), adapter.open(scenes, "val")


@pytest.fixture(scope="module")
def chance(data: tuple[list[TaskSpec], object, object]) -> dict[str, dict[str, float]]:
    tasks, train, val = data
    return constant_metrics(train, val, tasks)  # type: ignore[arg-type]


def _specs(tasks: list[TaskSpec]) -> dict[str, TaskSpec]:
    return {t.name: t for t in tasks}


def test_each_constant_is_what_a_model_learns_from_no_input(data: tuple[list[TaskSpec], object, object]) -> None:
    tasks, train, _ = data
    targets = _fit_targets(train, tasks)  # type: ignore[arg-type]
    by_name = _specs(tasks)
    seg = targets["segmentation"]
    labels = seg[seg >= 0].long()
    logits = _fit_constant(by_name["segmentation"], seg, 0)
    assert int(logits.argmax()) == int(torch.bincount(labels).argmax())  # the majority class
    depth = targets["depth"]
    valid = depth[depth > 0]
    fitted = float(_fit_constant(by_name["depth"], depth, 0))
    assert abs(fitted - float(valid.median())) < 0.05 * float(valid.median())  # L1: the median
    normal = targets["normal"]
    mean = normal.movedim(1, -1).reshape(-1, 3).mean(0)
    direction = _fit_constant(by_name["normal"], normal, 0)
    assert float(torch.cosine_similarity(direction, mean, dim=0)) > 0.99  # 1 - cosine: the mean direction


def test_the_constant_is_scored_by_the_tasks_own_meter(
    data: tuple[list[TaskSpec], object, object], chance: dict[str, dict[str, float]]
) -> None:
    tasks, _, val = data
    assert set(chance) == {t.name for t in tasks}
    assert all(set(chance[t.name]) == {m.name for m in t.metrics} for t in tasks)
    labels = torch.cat([y["segmentation"].flatten() for _, y in val])  # type: ignore[attr-defined]
    labels = labels[labels >= 0].long()
    shares = torch.bincount(labels).double() / labels.numel()
    # One class everywhere: the pixel accuracy is that class's share of the split (the majority's, up to the fit).
    assert any(abs(chance["segmentation"]["pixel_acc"] - float(s)) < 1e-6 for s in shares)
    assert chance["segmentation"]["pixel_acc"] >= float(shares.max()) - 0.1


def test_an_untrained_model_is_at_chance(
    data: tuple[list[TaskSpec], object, object], chance: dict[str, dict[str, float]]
) -> None:
    tasks, _, val = data
    torch.manual_seed(0)
    model = deeplab_resnet_tiny().eval()
    mapping = OutputMapping(paths={t.name: (t.name,) for t in tasks}, how="names")
    dense = evaluate(model, val, tasks, mapping, torch.device("cpu"), batch_size=4)  # type: ignore[arg-type]
    warnings = chance_warnings(dense, chance, _specs(tasks))
    assert warnings, beats_chance(dense, chance, _specs(tasks))  # the README's old tour pruned such a model
    assert all(w.startswith("the dense model is at chance level on task ") for w in warnings)


def test_beats_chance_is_the_mean_clipped_signed_change(data: tuple[list[TaskSpec], object, object]) -> None:
    specs = _specs(data[0])
    chance = {"depth": {"abs_err": 1.0, "rel_err": 0.5, "delta1": 0.2}}
    same = beats_chance(chance, chance, specs)
    assert same == {"depth": 0.0}
    better = {"depth": {"abs_err": 0.5, "rel_err": 0.25, "delta1": 0.8}}  # -50% errors, delta1 x4 (clipped)
    assert beats_chance(better, chance, specs) == {"depth": pytest.approx((50 + 50 + 100) / 3)}
    assert chance_warnings(chance, chance, specs) and not chance_warnings(better, chance, specs)
    barely = {"depth": {"abs_err": 1.0, "rel_err": 0.5, "delta1": 0.2 * (1 + 3 * CHANCE_MARGIN / 100 - 1e-6)}}
    assert chance_warnings(barely, chance, specs)  # just under the margin on average


def test_no_chance_metrics_no_warning(data: tuple[list[TaskSpec], object, object]) -> None:
    specs = _specs(data[0])
    dense = {"depth": {"abs_err": 1.0, "rel_err": 0.5, "delta1": 0.2}}
    assert chance_warnings(dense, None, specs) == []
    assert beats_chance(dense, {"depth": {"abs_err": 0.0}}, specs) == {}  # a zero baseline has no relative change


def test_the_chance_level_leaves_the_global_random_stream_alone(data: tuple[list[TaskSpec], object, object]) -> None:
    tasks, train, val = data
    torch.manual_seed(123)
    before = torch.get_rng_state()
    constant_metrics(train, val, tasks)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), before)
