"""Tied max-pool windows: the tie-stable pool equals PyTorch's, the counter finds ties, and the verified export.

A runtime that breaks ties differently from PyTorch is simulated by exporting a model whose max-pools pick the
*last* maximum of a window (a subclass of ``nn.MaxPool2d``, as onnxruntime's MaxPool might) while parity is
checked against the same model with PyTorch's pools (the first maximum): exactly the SegNet case, a graph that
matches PyTorch everywhere but in tied windows.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.onnx import export_verified_onnx
from adapmtl_cli.export.onnx_ties import (
    TieStableMaxPool2d,
    pool_windows,
    stable_max_pool2d,
    tie_stable_copy,
    tied_windows,
)

NAMES = ["segmentation", "depth"]


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "ceil"),
    [(2, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 2, False), (2, 3, 0, 1, True)],
)
def test_stable_pool_gives_pytorchs_values_and_indices(
    kernel: int, stride: int, padding: int, dilation: int, ceil: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    for shape, kind in itertools.product([(2, 3, 7, 9), (3, 8, 12)], ["random", "rounded", "constant"]):
        x = torch.randn(*shape, generator=gen)
        x = x.round() if kind == "rounded" else x.fill_(0.25) if kind == "constant" else x
        want = F.max_pool2d(x, kernel, stride, padding, dilation, ceil, return_indices=True)
        got = stable_max_pool2d(x, kernel, stride, padding, dilation, ceil)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), (shape, kind)


def test_pool_windows_pads_with_minus_infinity() -> None:
    windows, size, kernel = pool_windows(torch.arange(9.0).view(1, 1, 3, 3), 2, 2, padding=1)
    assert size == (2, 2) and kernel == (2, 2)
    assert windows[0, 0, 0, 0].tolist() == [float("-inf")] * 3 + [0.0]


def _last_max_pool(x: Tensor, kernel: int, stride: int) -> tuple[Tensor, Tensor]:
    """Values and indices of the *last* maximum of each window (another runtime's tie rule)."""
    windows, (ho, wo), (kh, kw) = pool_windows(x, kernel, stride)
    position = (windows.shape[-1] - 1) - windows.flip(-1).argmax(dim=-1)
    rows = torch.arange(ho).view(ho, 1) * stride + torch.div(position, kw, rounding_mode="floor")
    cols = torch.arange(wo).view(1, wo) * stride + torch.remainder(position, kw)
    return windows.amax(dim=-1), rows * x.shape[-1] + cols


class LastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(2, 2, return_indices=True)`` picking the last maximum of a tied window."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _last_max_pool(x, 2, 2)


class SegNetTiny(nn.Module):
    """SegNet's pattern: encoder max-pools with indices, decoder features unpooled at those indices.

    ``pool``: ``module`` (``nn.MaxPool2d``), ``last`` (:class:`LastMaxPool2d`), ``functional``
    (``F.max_pool2d``) or ``functional_last`` (:func:`_last_max_pool`, no module to swap).
    """

    def __init__(self, pool: str = "module") -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.kind = pool
        if pool in ("module", "last"):
            self.pool = (LastMaxPool2d if pool == "last" else nn.MaxPool2d)(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.dec = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.seg, self.depth = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.enc(x)
        if self.kind == "functional":
            pooled, indices = F.max_pool2d(feat, 2, 2, return_indices=True)
        elif self.kind == "functional_last":
            pooled, indices = _last_max_pool(feat, 2, 2)
        else:
            pooled, indices = self.pool(feat)
        up = self.unpool(self.mid(pooled), indices)  # decoder values land on the encoder's argmax
        out = self.dec(up)
        return self.seg(out), self.depth(out)


def _pruned(model: SegNetTiny) -> SegNetTiny:
    """Two all-zero filters behind a BN with positive betas: two constant channels, every window tied."""
    torch.manual_seed(0)
    with torch.no_grad():
        model.enc[1].bias.uniform_(0.1, 0.5)
        model.enc[0].weight[[1, 4]] = 0.0
    return model.eval()


def _twin(pool: str, reference: SegNetTiny) -> SegNetTiny:
    twin = SegNetTiny(pool)
    twin.load_state_dict(reference.state_dict())
    return twin.eval()


def _inputs() -> tuple[Tensor, list[Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 8, 12, generator=gen), [torch.rand(b, 3, 8, 12, generator=gen) for b in (1, 3)]


def test_tied_windows_counts_constant_channels() -> None:
    model = _pruned(SegNetTiny())
    _, inputs = _inputs()
    tied, total = tied_windows(model, inputs)
    assert total == 4 * 6 * 4 * 6 and tied >= 4 * 2 * 4 * 6  # every window of the two constant channels
    # Random values tie nowhere; ReLU's zeros tie too (a window of zeros), which the counter must see.
    pool = nn.MaxPool2d(2, 2, return_indices=True)
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    assert tied_windows(pool, [x]) == (0, 2 * 3 * 4 * 6)
    assert tied_windows(pool, [torch.relu(x - 5)]) == (2 * 3 * 4 * 6, 2 * 3 * 4 * 6)
    assert tied_windows(_twin("functional", model), inputs) == (tied, total)  # functional calls count too


def test_tie_stable_copy_swaps_pools_and_keeps_the_function() -> None:
    model = _pruned(SegNetTiny())
    stable, swapped = tie_stable_copy(model)
    assert swapped == 1 and isinstance(stable.pool, TieStableMaxPool2d) and type(model.pool) is nn.MaxPool2d
    x = _inputs()[1][1]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), stable(x), strict=True))
    # The simulated runtime really differs from PyTorch, and only because of the ties.
    last = _twin("last", model)
    with torch.no_grad():
        assert not torch.allclose(last(x)[0], model(x)[0], atol=1e-3)
        plain = torch.randn(2, 6, 8, 12, generator=torch.Generator().manual_seed(1))
        assert all(torch.equal(a, b) for a, b in zip(last.pool(plain), model.pool(plain), strict=True))


@pytest.mark.onnx
def test_a_parity_failure_on_tied_windows_is_fixed_by_tie_stable_pools(tmp_path: Path) -> None:
    reference = _pruned(SegNetTiny())
    example, inputs = _inputs()
    path = tmp_path / "model.onnx"
    written, parity = export_verified_onnx(_twin("last", reference), reference, example, inputs, path, NAMES)
    assert written.tie_stable_pools == 1 and written.path == path
    assert parity.max_abs_diff <= 1e-4 and parity.batch_sizes == (1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.onnx
def test_a_real_difference_is_not_blamed_on_ties_and_leaves_earlier_output_intact(tmp_path: Path) -> None:
    reference = _pruned(SegNetTiny())
    broken = _twin("last", reference)
    with torch.no_grad():
        broken.seg.bias.add_(1.0)  # a real difference beside the ties
    (tmp_path / "model.onnx").write_bytes(b"an earlier, verified export")
    example, inputs = _inputs()
    with pytest.raises(ExportError) as info:
        export_verified_onnx(broken, reference, example, inputs, tmp_path / "model.onnx", NAMES)
    message = str(info.value)
    assert message.startswith("ONNX output 'segmentation' differs from PyTorch by ")
    assert (
        "; re-export, or try the other --exporter (tied max-pool windows are not the cause: with tie-stable" in message
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left
    assert (tmp_path / "model.onnx").read_bytes() == b"an earlier, verified export"  # the failed check wrote nothing


@pytest.mark.onnx
def test_functional_pools_get_the_diagnosis(tmp_path: Path) -> None:
    reference = _twin("functional", _pruned(SegNetTiny()))
    example, inputs = _inputs()
    with pytest.raises(ExportError) as info:
        export_verified_onnx(
            _twin("functional_last", reference), reference, example, inputs, tmp_path / "m.onnx", NAMES
        )
    message = str(info.value)
    assert message.startswith("ONNX output ")
    assert ", which tied max-pool windows may explain: the model's max-pools with indices (MaxUnpool) meet " in message
    assert "onnxruntime may pick another element of a tied window than PyTorch (with either exporter)" in message
    assert message.endswith(
        "they are functional calls (F.max_pool2d(..., return_indices=True)), which the export cannot make "
        "tie-stable: use nn.MaxPool2d(return_indices=True) modules"
    )
    assert "--exporter" not in message  # the other exporter would meet the same ties: no ping-pong
    assert list(tmp_path.iterdir()) == []
