"""Property-based tests (hypothesis) of the task metrics and losses: bounds, best values, invariances.

Every meter pools over pixels, so splitting a split into batches, or reordering its samples, must not change
what it reports (exactly for counts, to rounding for float sums). Inputs are drawn as small numpy arrays so
that hypothesis can shrink a failure to a few pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adapmtl_cli.tasks.base import LABEL_CLASSES, PREDICTED_CLASSES, DiagnosticMeter
from adapmtl_cli.tasks.depth import Depth
from adapmtl_cli.tasks.normal import Normal
from adapmtl_cli.tasks.segmentation import Segmentation

SETTINGS = settings(max_examples=60, deadline=None)
_FINITE = st.floats(-50, 50, allow_nan=False, width=32)


@st.composite
def _shapes(draw: st.DrawFn) -> tuple[int, int, int]:
    return draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))


def _metrics(task: object, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    meter = task.new_meter()  # type: ignore[attr-defined]
    for pred, target in batches:
        meter.update(pred, target)
    return meter.compute()


def _splits(pred: torch.Tensor, target: torch.Tensor, cut: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(pred[:cut], target[:cut]), (pred[cut:], target[cut:])] if 0 < cut < len(pred) else [(pred, target)]


# --- segmentation ---------------------------------------------------------------------------------------


@st.composite
def _segmentation(draw: st.DrawFn) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(num_classes, logits (B, C, H, W), labels (B, H, W) in -1..C-1 with at least one labelled pixel)."""
    b, h, w = draw(_shapes())
    c = draw(st.integers(2, 5))
    labels = draw(arrays(np.int64, (b, h, w), elements=st.integers(-1, c - 1)))
    assume((labels >= 0).any())
    logits = draw(arrays(np.float32, (b, c, h, w), elements=_FINITE))
    return c, torch.from_numpy(logits), torch.from_numpy(labels)


@SETTINGS
@given(case=_segmentation(), cut=st.integers(0, 4))
def test_segmentation_scores_are_fractions_and_batching_does_not_matter(
    case: tuple[int, torch.Tensor, torch.Tensor], cut: int
) -> None:
    c, logits, labels = case
    task = Segmentation(num_classes=c)
    whole = _metrics(task, [(logits, labels)])
    assert 0.0 <= whole["miou"] <= 1.0 and 0.0 <= whole["pixel_acc"] <= 1.0
    assert _metrics(task, _splits(logits, labels, cut)) == whole  # integer confusion counts: exact
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cut))
    assert _metrics(task, [(logits[order], labels[order])]) == whole


@SETTINGS
@given(case=_segmentation(), cut=st.integers(0, 4))
def test_segmentation_class_counts_are_the_distinct_classes_on_labelled_pixels(
    case: tuple[int, torch.Tensor, torch.Tensor], cut: int
) -> None:
    c, logits, labels = case
    task = Segmentation(num_classes=c)
    labelled = labels >= 0
    want = {
        PREDICTED_CLASSES: len(torch.unique(logits.argmax(dim=1)[labelled])),
        LABEL_CLASSES: len(torch.unique(labels[labelled])),
    }
    whole = task.new_meter()
    whole.update(logits, labels)
    assert isinstance(whole, DiagnosticMeter) and whole.diagnostics() == want
    split = task.new_meter()
    for pred, target in _splits(logits, labels, cut):
        split.update(pred, target)
    assert isinstance(split, DiagnosticMeter) and split.diagnostics() == want
    assert 1 <= want[PREDICTED_CLASSES] <= c and set(whole.compute()) == {"miou", "pixel_acc"}


@SETTINGS
@given(case=_segmentation())
def test_segmentation_perfect_prediction_is_the_best_score(case: tuple[int, torch.Tensor, torch.Tensor]) -> None:
    c, logits, labels = case
    task = Segmentation(num_classes=c)
    perfect = F.one_hot(labels.clamp_min(0), c).permute(0, 3, 1, 2).float() * 10
    best = _metrics(task, [(perfect, labels)])
    assert best == {"miou": 1.0, "pixel_acc": 1.0}
    other = _metrics(task, [(logits, labels)])
    assert other["miou"] <= best["miou"] and other["pixel_acc"] <= best["pixel_acc"]


@SETTINGS
@given(case=_segmentation(), seed=st.integers(0, 1000))
def test_segmentation_renaming_the_classes_changes_nothing(
    case: tuple[int, torch.Tensor, torch.Tensor], seed: int
) -> None:
    c, logits, labels = case
    # Argmax ties break by class index, which renaming changes: make every logit distinct first.
    logits = logits + torch.arange(c, dtype=torch.float32).view(1, c, 1, 1) * 1e-3
    task = Segmentation(num_classes=c)
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(seed))
    renamed = torch.where(labels >= 0, perm[labels.clamp_min(0)], labels)
    # channel k of the renamed logits scores class perm[k]
    renamed_logits = torch.empty_like(logits)
    renamed_logits[:, perm] = logits
    got, want = _metrics(task, [(renamed_logits, renamed)]), _metrics(task, [(logits, labels)])
    assert got["pixel_acc"] == want["pixel_acc"]
    assert got["miou"] == pytest.approx(want["miou"], abs=1e-12)


@SETTINGS
@given(case=_segmentation())
def test_segmentation_loss_is_finite_non_negative_and_ignores_unlabelled_pixels(
    case: tuple[int, torch.Tensor, torch.Tensor],
) -> None:
    c, logits, labels = case
    task = Segmentation(num_classes=c)
    loss = float(task.loss(logits, labels))
    assert np.isfinite(loss) and loss >= 0
    scrambled = torch.where((labels < 0)[:, None], torch.randn_like(logits) * 100, logits)
    assert float(task.loss(scrambled, labels)) == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert _metrics(task, [(scrambled, labels)]) == _metrics(task, [(logits, labels)])


# --- depth ----------------------------------------------------------------------------------------------


@st.composite
def _depth(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction (B, 1, H, W), ground truth (B, 1, H, W) in metres, 0 = invalid, at least one valid pixel)."""
    b, h, w = draw(_shapes())
    gt = draw(arrays(np.float32, (b, 1, h, w), elements=st.one_of(st.just(0.0), st.floats(0.125, 10.0, width=32))))
    assume((gt > 0).any())
    pred = draw(arrays(np.float32, (b, 1, h, w), elements=st.floats(-2.0, 12.0, width=32)))
    return torch.from_numpy(pred), torch.from_numpy(gt)


@SETTINGS
@given(case=_depth(), cut=st.integers(0, 4))
def test_depth_errors_are_non_negative_and_batching_only_rounds(
    case: tuple[torch.Tensor, torch.Tensor], cut: int
) -> None:
    pred, gt = case
    whole = _metrics(Depth(), [(pred, gt)])
    assert whole["abs_err"] >= 0 and whole["rel_err"] >= 0 and 0.0 <= whole["delta1"] <= 1.0
    split = _metrics(Depth(), _splits(pred, gt, cut))
    assert split["delta1"] == whole["delta1"]  # a count: exact
    assert split["abs_err"] == pytest.approx(whole["abs_err"], rel=1e-5, abs=1e-6)
    assert split["rel_err"] == pytest.approx(whole["rel_err"], rel=1e-5, abs=1e-6)


@SETTINGS
@given(case=_depth())
def test_depth_perfect_prediction_is_the_best_score(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    pred, gt = case
    best = _metrics(Depth(), [(gt.clone(), gt)])
    assert best == {"abs_err": 0.0, "rel_err": 0.0, "delta1": 1.0}
    assert float(Depth().loss(gt.clone(), gt)) == 0.0
    other = _metrics(Depth(), [(pred, gt)])
    assert other["abs_err"] >= 0.0 and other["delta1"] <= 1.0
    assert float(Depth().loss(pred, gt)) == pytest.approx(other["abs_err"], rel=1e-5, abs=1e-6)


@SETTINGS
@given(case=_depth())
def test_depth_invalid_pixels_never_count(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    pred, gt = case
    scrambled = torch.where(gt == 0, torch.full_like(pred, 1e6), pred)
    assert _metrics(Depth(), [(scrambled, gt)]) == _metrics(Depth(), [(pred, gt)])


# --- normal ---------------------------------------------------------------------------------------------


@st.composite
def _normal(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction (B, 3, H, W), ground truth (B, 3, H, W), all-zero = invalid, at least one valid pixel)."""
    b, h, w = draw(_shapes())
    gt = draw(arrays(np.float32, (b, 3, h, w), elements=st.floats(-1, 1, width=32)))
    invalid = draw(arrays(np.bool_, (b, 1, h, w)))
    gt = np.where(invalid, 0.0, gt).astype(np.float32)
    # Lengths in float64: a float32 norm of a denormal vector underflows to 0. Vectors shorter than 1e-3 are
    # not normals (the data check is "all zero = invalid"; such near-zero vectors do not occur in real data).
    norms = np.linalg.norm(gt.astype(np.float64), axis=1)
    assume(((norms > 1e-3) | ~gt.any(axis=1)).all() and (norms > 0).any())
    pred = draw(arrays(np.float32, (b, 3, h, w), elements=st.floats(-1, 1, width=32)))
    assume((np.linalg.norm(pred.astype(np.float64), axis=1) > 1e-3).all())
    return torch.from_numpy(pred), torch.from_numpy(gt)


@SETTINGS
@given(case=_normal(), cut=st.integers(0, 4))
def test_normal_angles_are_bounded_ordered_and_batching_only_rounds(
    case: tuple[torch.Tensor, torch.Tensor], cut: int
) -> None:
    pred, gt = case
    whole = _metrics(Normal(), [(pred, gt)])
    assert 0.0 <= whole["median_angle"] <= 180.0 and 0.0 <= whole["mean_angle"] <= 180.0 + 1e-4
    assert 0.0 <= whole["within_11_25"] <= whole["within_22_5"] <= whole["within_30"] <= 1.0
    split = _metrics(Normal(), _splits(pred, gt, cut))
    # Vectorised and scalar kernels may round one pixel's angle differently by an ulp: a pixel on a bin or a
    # threshold edge may move, nothing more.
    one_pixel = 1.0 / int((gt != 0).any(dim=1).sum()) + 1e-12
    for key in ("within_11_25", "within_22_5", "within_30"):
        assert split[key] == pytest.approx(whole[key], abs=one_pixel), key
    assert split["median_angle"] == pytest.approx(whole["median_angle"], abs=0.011)
    assert split["mean_angle"] == pytest.approx(whole["mean_angle"], rel=1e-5, abs=1e-5)


@SETTINGS
@given(case=_normal(), scale=st.floats(0.01, 100.0))
def test_normal_prediction_length_does_not_matter(case: tuple[torch.Tensor, torch.Tensor], scale: float) -> None:
    pred, gt = case
    got, want = _metrics(Normal(), [(pred * scale, gt)]), _metrics(Normal(), [(pred, gt)])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=0.02), key  # 0.01° histogram bins


@SETTINGS
@given(case=_normal())
def test_normal_perfect_prediction_is_the_best_score(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    pred, gt = case
    best = _metrics(Normal(), [(gt.clone(), gt)])
    assert best["mean_angle"] == pytest.approx(0.0, abs=1e-3) and best["median_angle"] == pytest.approx(0.0, abs=1e-3)
    assert best["within_11_25"] == best["within_22_5"] == best["within_30"] == 1.0
    other = _metrics(Normal(), [(pred, gt)])
    assert other["mean_angle"] >= best["mean_angle"] - 1e-6
    assert float(Normal().loss(gt.clone(), gt)) == pytest.approx(0.0, abs=1e-5)
    assert -1e-6 <= float(Normal().loss(pred, gt)) <= 2.0 + 1e-6  # 1 - cos, cos rounded up to 1 + 1 ulp
