"""The output and target checks every task kind shares: resizing, and the exact errors that name the fix."""

from __future__ import annotations

import pytest
import torch

from adapmtl_cli.errors import DataError, DiscoveryError
from adapmtl_cli.tasks.checks import dense_output, label_target, map_target, shape_text, vector_output


def test_shape_text() -> None:
    assert shape_text(torch.zeros(2, 3, 24, 32)) == "(2,3,24,32)"
    assert shape_text(torch.tensor(1.0)) == "()"


def test_dense_output_is_fp32_at_the_target_size() -> None:
    pred = torch.randn(2, 3, 12, 16, dtype=torch.float16)
    out = dense_output("normal", pred, torch.zeros(2, 3, 24, 32), 3)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 24, 32)
    same = torch.randn(2, 3, 24, 32)
    assert torch.equal(dense_output("normal", same, torch.zeros(2, 3, 24, 32), 3), same)


@pytest.mark.parametrize(
    ("pred", "kwargs", "message"),
    [
        (
            torch.zeros(2, 1, 4, dtype=torch.float32),
            {},
            "task 't' expects a float output (B,1,h,w), got (2,1,4) torch.float32; check --outputs",
        ),
        (
            torch.zeros(2, 1, 4, 4, dtype=torch.int64),
            {},
            "task 't' expects a float output (B,1,h,w), got (2,1,4,4) torch.int64; check --outputs",
        ),
        (torch.zeros(2, 3, 4, 4), {}, "task 't' expects 1 output channel, got 3 (2,3,4,4); check --outputs"),
        (
            torch.zeros(2, 3, 4, 4),
            {"channel_noun": "channels", "channel_hint": "check --num-classes"},
            "task 't' expects 1 output channels, got 3 (2,3,4,4); check --num-classes",
        ),
        (
            torch.zeros(3, 1, 4, 4),
            {},
            "task 't' output has batch size 3 but its target has 2 ((3,1,4,4) vs (2,1,8,8)); check --outputs",
        ),
    ],
)
def test_dense_output_errors(pred: torch.Tensor, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        dense_output("t", pred, torch.zeros(2, 1, 8, 8), 1, **kwargs)
    assert str(info.value) == message


def test_dense_output_says_channels_for_more_than_one() -> None:
    with pytest.raises(DiscoveryError, match=r"^task 't' expects 3 output channels, got 1 "):
        dense_output("t", torch.zeros(2, 1, 4, 4), torch.zeros(2, 3, 4, 4), 3)


def test_vector_output_flattens_one_by_one_maps() -> None:
    out = vector_output("t", torch.ones(4, 5, 1, 1, dtype=torch.bfloat16), 5, 4)
    assert out.shape == (4, 5) and out.dtype == torch.float32


@pytest.mark.parametrize(
    ("pred", "message"),
    [
        (
            torch.zeros(4, 5, 2, 2),
            "task 't' expects a float output (B,5) or (B,5,1,1), got (4,5,2,2) torch.float32; pool the head's "
            "feature map (e.g. x.mean((2, 3))) or check --outputs",
        ),
        (torch.zeros(4, 3), "task 't' expects 5 outputs per sample, got 3 (4,3); check --outputs or the head size"),
        (torch.zeros(2, 5), "task 't' output has batch size 2 but its target has 4; check --outputs"),
    ],
)
def test_vector_output_errors(pred: torch.Tensor, message: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        vector_output("t", pred, 5, 4)
    assert str(info.value) == message


def test_map_target_adds_the_channel_of_one_channel_maps_only() -> None:
    assert map_target("depth", torch.zeros(2, 8, 8), 1).shape == (2, 1, 8, 8)
    with pytest.raises(DataError) as info:
        map_target("normal", torch.zeros(2, 8, 8), 3)
    assert str(info.value) == "task 'normal' expects targets (B,3,H,W), got (2,8,8); check the dataset adapter"


def test_label_target_squeezes_and_keeps_the_dtype() -> None:
    labels = label_target("seg", torch.zeros(2, 1, 8, 8, dtype=torch.int32))
    assert labels.shape == (2, 8, 8) and labels.dtype == torch.int32
    with pytest.raises(DataError) as info:
        label_target("seg", torch.zeros(2, 8, 8))
    assert str(info.value) == (
        "task 'seg' expects integer targets (B,H,W), got (2,8,8) torch.float32; check the dataset adapter"
    )


def test_class_ids_keep_integers_and_whole_floats() -> None:
    import numpy as np

    from adapmtl_cli.tasks.checks import class_ids

    ints = np.array([[0, 3], [-1, 12]], dtype=np.int16)
    assert class_ids(ints, "'x'").dtype == np.int64
    assert class_ids(ints, "'x'").tolist() == [[0, 3], [-1, 12]]
    floats = np.array([[0.0, 3.0], [-1.0, 12.0 + 1e-6]], dtype=np.float64)
    assert class_ids(floats, "'x'").tolist() == [[0, 3], [-1, 12]]


@pytest.mark.parametrize("bad", [0.5, 2.25, -0.5, 11.999])
def test_class_ids_refuse_fractional_labels(bad: float) -> None:
    import numpy as np

    from adapmtl_cli.tasks.checks import class_ids

    labels = np.zeros((4, 4), dtype=np.float32)
    labels[1, 2] = bad
    labels[3, 3] = bad
    with pytest.raises(DataError) as info:
        class_ids(labels, "'scenes/train/label/0.npy'")
    message = str(info.value)
    assert message.startswith(
        f"'scenes/train/label/0.npy' holds segmentation label {float(np.float32(bad))!r} (2 such pixels), "
        "which is not a class id; labels must be whole numbers"
    )
    assert "nearest-neighbour" in message


def test_class_ids_refuse_a_non_numeric_dtype() -> None:
    import numpy as np

    from adapmtl_cli.tasks.checks import class_ids

    with pytest.raises(DataError, match=r"'x' holds segmentation labels of dtype 'complex64'"):
        class_ids(np.zeros(3, dtype=np.complex64), "'x'")
