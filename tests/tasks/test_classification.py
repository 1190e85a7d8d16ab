"""Per-sample task kinds (classification, multilabel, regression): losses and pooled metrics, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from adapmtl_cli.errors import ConfigError, DataError, DiscoveryError
from adapmtl_cli.tasks import TASKS, canonical_task_name, get_task
from adapmtl_cli.tasks.base import LABEL_CLASSES, PREDICTED_CLASSES, DiagnosticMeter, TaskSpec
from adapmtl_cli.tasks.classification import Classification, Multilabel, Regression

NAN = float("nan")


def _logits(labels: list[int], num_classes: int) -> torch.Tensor:
    """Logits (B, C) whose argmax is ``labels``."""
    return F.one_hot(torch.tensor(labels), num_classes).float() * 10


def _metrics(task: TaskSpec, *batches: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    meter = task.new_meter()
    for pred, target in batches:
        meter.update(pred, target)
    return meter.compute()


# --- registry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_kinds_are_registered_under_their_own_name(kind: str) -> None:
    task = TASKS[kind]()
    assert isinstance(task, TaskSpec)
    assert task.name == kind and canonical_task_name(kind) == kind
    assert type(get_task(kind)) is type(task)


def test_kinds_take_a_name_and_their_options() -> None:
    assert TASKS["classification"](name="left", num_classes=10) == Classification(10, -1, "left")
    assert TASKS["multilabel"](name="tags", num_labels=3).channels == 3
    regression = TASKS["regression"](name="sum", num_outputs=2, loss="mse")
    assert regression == Regression(num_outputs=2, loss_kind="mse", name="sum") and regression.channels == 2


@pytest.mark.parametrize(
    ("kind", "options", "fragment"),
    [
        ("classification", {"num_classes": 1}, "num_classes >= 2"),
        ("classification", {"num_classes": 5, "ignore_index": 0}, "ignore_index 0"),
        ("multilabel", {"num_labels": 0}, "num_labels >= 1"),
        ("regression", {"num_outputs": 0}, "num_outputs >= 1"),
        ("regression", {"loss": "huber"}, "loss 'huber' is unknown; use one of: l1, mse"),
    ],
)
def test_bad_options_are_config_errors(kind: str, options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        TASKS[kind](**options)


# --- classification -------------------------------------------------------------------------------------


def test_classification_perfect_prediction_scores_one() -> None:
    task = Classification(num_classes=3)
    target = torch.tensor([0, 1, 2, 2])
    assert _metrics(task, (_logits([0, 1, 2, 2], 3), target)) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_classification_known_confusion_matrix() -> None:
    # truth 0 0 1 1 2 2 / guess 0 1 1 1 2 0: F1_0 = 2/(2+1+1), F1_1 = 4/(4+1+0), F1_2 = 2/(2+0+1);
    # class 3 occurs in neither and is left out of the macro mean.
    task = Classification(num_classes=4)
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    metrics = _metrics(task, (_logits([0, 1, 1, 1, 2, 0], 4), target))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_classification_pools_over_batches_not_batch_means() -> None:
    task = Classification(num_classes=2)
    # Batch 1: one sample, right; batch 2: three samples, one right. Pooled 2/4; a mean of batch means, 2/3.
    metrics = _metrics(
        task,
        (_logits([1], 2), torch.tensor([1])),
        (_logits([0, 0, 0], 2), torch.tensor([0, 1, 1])),
    )
    assert metrics["accuracy"] == pytest.approx(2 / 4)
    # F1_0 = 2/(2+2+0), F1_1 = 2/(2+0+2)
    assert metrics["macro_f1"] == pytest.approx(0.5)


def test_classification_ignored_samples_change_nothing() -> None:
    task = Classification(num_classes=3)
    target = torch.tensor([0, -1, 2, -1])
    pred = _logits([0, 1, 2, 1], 3)
    assert _metrics(task, (pred, target)) == {"accuracy": 1.0, "macro_f1": 1.0}
    assert task.loss(pred, target).item() == pytest.approx(task.loss(pred[::2], target[::2]).item())


def test_classification_loss_of_uniform_logits_is_log_c() -> None:
    task = Classification(num_classes=5)
    pred = torch.zeros(3, 5, requires_grad=True)
    loss = task.loss(pred, torch.tensor([0, 4, 2]))
    assert loss.item() == pytest.approx(math.log(5))
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_classification_all_ignored_gives_zero_loss_and_a_meter_error() -> None:
    task = Classification(num_classes=3)
    pred = torch.randn(2, 3, requires_grad=True)
    target = torch.tensor([-1, -1])
    loss = task.loss(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(DataError, match="saw no labelled sample"):
        _metrics(task, (pred.detach(), target))


def test_classification_accepts_1x1_maps_and_column_targets() -> None:
    task = Classification(num_classes=3)
    pred = torch.randn(4, 3)
    target = torch.tensor([0, 2, 1, 1])
    flat = task.loss(pred, target)
    assert task.loss(pred[:, :, None, None], target[:, None]).item() == pytest.approx(flat.item())


def test_classification_refuses_spatial_outputs_and_wrong_sizes() -> None:
    task = Classification(name="digit", num_classes=3)
    target = torch.tensor([0, 1])
    with pytest.raises(DiscoveryError, match=r"'digit' expects a float output \(B,3\) or \(B,3,1,1\), got \(2,3,4,4\)"):
        task.loss(torch.randn(2, 3, 4, 4), target)
    with pytest.raises(DiscoveryError, match="expects 3 outputs per sample, got 5"):
        task.loss(torch.randn(2, 5), target)
    with pytest.raises(DataError, match="one integer class id per sample"):
        task.loss(torch.randn(2, 3), torch.tensor([0.0, 1.0]))


def test_classification_label_out_of_range_is_skipped_by_the_loss_and_reported_by_the_meter() -> None:
    task = Classification(num_classes=3)
    pred = _logits([0, 1], 3)
    assert math.isfinite(task.loss(pred, torch.tensor([0, 7])).item())
    with pytest.raises(DataError, match="class id 7 outside 0..2"):
        _metrics(task, (pred, torch.tensor([0, 7])))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=20), st.integers(1, 19))
def test_classification_metrics_are_bounded_and_batch_invariant(pairs: list[tuple[int, int]], cut: int) -> None:
    task = Classification(num_classes=4)
    truth = torch.tensor([t for t, _ in pairs])
    pred = _logits([g for _, g in pairs], 4)
    whole = _metrics(task, (pred, truth))
    split = _metrics(task, (pred[:cut], truth[:cut]), (pred[cut:], truth[cut:]))
    assert whole == pytest.approx(split)
    assert all(0.0 <= v <= 1.0 for v in whole.values())
    assert whole["accuracy"] == pytest.approx(sum(t == g for t, g in pairs) / len(pairs))


def test_classification_meter_counts_predicted_and_labelled_classes() -> None:
    task = Classification(num_classes=4)
    meter = task.new_meter()
    meter.update(_logits([2, 2, 2, 1], 4), torch.tensor([0, 1, 3, -1]))  # the sample predicted 1 is unlabelled
    assert isinstance(meter, DiagnosticMeter)
    assert meter.diagnostics() == {PREDICTED_CLASSES: 1, LABEL_CLASSES: 3}
    assert list(meter.compute()) == ["accuracy", "macro_f1"]  # the counts are not metrics


def test_per_sample_meters_without_classes_have_no_diagnostics() -> None:
    assert not isinstance(Multilabel(num_labels=2).new_meter(), DiagnosticMeter)
    assert not isinstance(Regression().new_meter(), DiagnosticMeter)


# --- multilabel -----------------------------------------------------------------------------------------


def test_multilabel_known_counts() -> None:
    # label 0: TP, TN -> acc 1, F1 1; label 1: FP, TP -> acc 1/2, F1 2/3; label 2: FN, unknown -> acc 0, F1 0.
    task = Multilabel(num_labels=3)
    target = torch.tensor([[1, 0, 1], [0, 1, -1]])
    pred = torch.tensor([[3.0, 2.0, -1.0], [-2.0, 1.0, 5.0]])
    metrics = _metrics(task, (pred, target))
    assert metrics["accuracy"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_multilabel_perfect_and_all_negative_predictions_score_one() -> None:
    task = Multilabel(num_labels=2)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert _metrics(task, (target * 4 - 2, target)) == {"accuracy": 1.0, "macro_f1": 1.0}
    negatives = torch.zeros(2, 2)
    assert _metrics(task, (torch.full((2, 2), -1.0), negatives)) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_multilabel_loss_skips_unknown_entries() -> None:
    task = Multilabel(num_labels=2)
    pred = torch.zeros(2, 2, requires_grad=True)
    loss = task.loss(pred, torch.tensor([[1, -1], [0, -1]]))
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert pred.grad is not None and pred.grad[:, 1].abs().sum() == 0


def test_multilabel_rejects_values_other_than_one_zero_minus_one() -> None:
    task = Multilabel(name="tags", num_labels=2)
    with pytest.raises(DataError, match="'tags' target holds 2.0"):
        _metrics(task, (torch.zeros(1, 2), torch.tensor([[2, 0]])))
    with pytest.raises(DataError, match=r"expects targets \(B,2\)"):
        task.loss(torch.zeros(1, 2), torch.tensor([[1, 0, 1]]))


def test_multilabel_with_nothing_known_is_a_data_error() -> None:
    with pytest.raises(DataError, match="saw no known label"):
        _metrics(Multilabel(num_labels=2), (torch.zeros(1, 2), torch.tensor([[-1, -1]])))


# --- regression -----------------------------------------------------------------------------------------


def test_regression_known_errors_and_missing_targets() -> None:
    # errors 0, 2, (missing), 4 -> mae 6/3, rmse sqrt((0 + 4 + 16) / 3)
    pred = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    target = torch.tensor([[1.0], [4.0], [NAN], [0.0]])
    metrics = _metrics(Regression(), (pred, target))
    assert metrics["mae"] == pytest.approx(2.0)
    assert metrics["rmse"] == pytest.approx(math.sqrt(20 / 3))
    assert Regression().loss(pred, target).item() == pytest.approx(2.0)
    assert Regression(loss_kind="mse").loss(pred, target).item() == pytest.approx(20 / 3)


def test_regression_pools_every_entry_of_every_batch() -> None:
    task = Regression(num_outputs=2)
    # batch 1: errors 1, 1; batch 2: errors 4, (missing) -> mae 6/3, not the mean of batch means (1 + 4) / 2
    metrics = _metrics(
        task,
        (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 3.0]])),
        (torch.tensor([[5.0, 0.0]]), torch.tensor([[1.0, NAN]])),
    )
    assert metrics["mae"] == pytest.approx(2.0)
    assert metrics["rmse"] == pytest.approx(math.sqrt(18 / 3))


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_regression_gradients_stay_finite_with_missing_targets(loss: str) -> None:
    task = TASKS["regression"](num_outputs=2, loss=loss)
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, NAN], [NAN, NAN]])
    value = task.loss(pred, target)
    assert value.item() == pytest.approx(1.0)
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    # Only the one known entry pulls; l1 gives sign(1) / 1, mse 2 * 1 / 1.
    expected = torch.tensor([[1.0 if loss == "l1" else 2.0, 0.0], [0.0, 0.0]])
    assert torch.equal(pred.grad, expected)


def test_regression_all_missing_gives_zero_loss_and_a_meter_error() -> None:
    pred = torch.randn(2, 1, requires_grad=True)
    target = torch.full((2, 1), NAN)
    loss = Regression().loss(pred, target)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    with pytest.raises(DataError, match="saw no known target"):
        _metrics(Regression(), (pred.detach(), target))


def test_regression_shapes_and_bad_targets() -> None:
    task = Regression(name="sum")
    assert task.loss(torch.tensor([[2.0]]), torch.tensor([5.0])).item() == pytest.approx(3.0)
    assert task.loss(torch.full((1, 1, 1, 1), 2.0), torch.tensor([[5.0]])).item() == pytest.approx(3.0)
    with pytest.raises(DataError, match=r"'sum' expects float targets \(B,1\), got \(2,1\) torch.int64"):
        task.loss(torch.zeros(2, 1), torch.tensor([[1], [2]]))
    with pytest.raises(DataError, match="infinite value"):
        _metrics(task, (torch.zeros(1, 1), torch.tensor([[math.inf]])))
    with pytest.raises(DiscoveryError, match="expects 1 outputs per sample, got 3"):
        task.loss(torch.zeros(2, 3), torch.zeros(2, 1))
