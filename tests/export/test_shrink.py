"""Structured shrink: which channels go, what stays, exact sizes, parity, and the models it must refuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from adapmtl_cli.export import shrink as shrink_module
from adapmtl_cli.export.onnx import check_onnx_parity, export_onnx
from adapmtl_cli.export.shrink import ShrinkReport, count_flops, count_params, shrink_model, zero_filters
from adapmtl_cli.models import mobilenet_v2_tiny

TASKS = ["segmentation", "depth", "normal"]


def _images(batch: int = 2, size: tuple[int, int] = (8, 10), seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _inputs(size: tuple[int, int] = (8, 10)) -> list[Tensor]:
    return [_images(1, size, seed=1), _images(3, size, seed=2)]


class ConvBnConv(nn.Module):
    """conv -> BN -> ReLU -> conv: the basic shrinkable chain (ResNet's conv1 -> bn1 -> relu -> conv2)."""

    def __init__(self, kernel: int = 3, bias: bool = False, channels: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, 4, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.conv2(self.relu(self.bn(self.conv1(x))))}


def _prepared(model: ConvBnConv, betas: list[float]) -> ConvBnConv:
    """BN with zero mean, unit variance, unit gamma and the given betas, so a zero filter's constant is relu(beta)."""
    torch.manual_seed(0)
    with torch.no_grad():
        model.bn.running_mean.zero_()
        model.bn.running_var.fill_(1.0 - model.bn.eps)
        model.bn.bias.copy_(torch.tensor(betas))
    return model.eval()


def _zero_filter_(conv: nn.Conv2d, channel: int) -> None:
    with torch.no_grad():
        conv.weight[channel] = 0.0


def _standard(kernel: int) -> ConvBnConv:
    """Filter 1: constant relu(-0.5) = 0. Filter 2: constant relu(0.5) = 0.5. Channel 4: unused by conv2."""
    model = _prepared(ConvBnConv(kernel), [0.1, -0.5, 0.5, 0.2, 0.3, -0.1])
    _zero_filter_(model.conv1, 1)
    _zero_filter_(model.conv1, 2)
    with torch.no_grad():
        model.conv2.weight[:, 4] = 0.0
    return model


def test_padded_consumer_loses_zero_and_unused_channels_but_keeps_a_nonzero_constant() -> None:
    model = _standard(kernel=3)
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"conv1": 2} and report.reason == ""
    assert (shrunk.conv1.out_channels, shrunk.bn.num_features, shrunk.conv2.in_channels) == (4, 4, 4)
    assert report.max_abs_diff <= 1e-6
    # conv1 loses 2 filters of 3*3*3, BN 2 (gamma, beta), conv2 2 input slices of 4*3*3
    assert report.params_before - report.params_after == 2 * 27 + 2 * 2 + 2 * 36
    pixels = 8 * 10
    assert report.flops_before == 2 * pixels * (6 * 27 + 4 * 54)
    assert report.flops_after == 2 * pixels * (4 * 27 + 4 * 36)
    assert model.conv1.out_channels == 6  # the input model is untouched


def test_unpadded_consumer_folds_a_nonzero_constant_into_its_bias() -> None:
    model = _standard(kernel=1)
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"conv1": 3}
    assert shrunk.conv2.bias is not None and model.conv2.bias is None
    # conv2 gained the folded bias: sum over channel 2 of its weights times relu(0.5)
    assert torch.allclose(shrunk.conv2.bias, 0.5 * model.conv2.weight[:, 2].sum(dim=(1, 2)))
    assert report.max_abs_diff <= 1e-5


def test_producer_bias_is_part_of_the_constant() -> None:
    model = _prepared(ConvBnConv(kernel=3, bias=True), [0.0] * 6)
    _zero_filter_(model.conv1, 0)
    _zero_filter_(model.conv1, 3)
    with torch.no_grad():
        model.conv1.bias.copy_(torch.tensor([-1.0, 0.5, 0.5, 0.7, 0.5, 0.5]))  # relu(bn(-1)) = 0, relu(bn(0.7)) > 0
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"conv1": 1} and shrunk.conv1.out_channels == 5
    assert report.max_abs_diff <= 1e-6


def test_all_removable_keeps_one_channel() -> None:
    model = _prepared(ConvBnConv(kernel=3), [-1.0] * 6)
    with torch.no_grad():
        model.conv1.weight.zero_()
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"conv1": 5} and shrunk.conv1.out_channels == 1
    assert report.max_abs_diff == 0.0


def test_training_mode_is_restored_and_the_copy_is_in_eval_mode() -> None:
    model = _standard(kernel=3).train()
    shrunk, _ = shrink_model(model, _inputs())
    assert model.training and not shrunk.training


class Residual(nn.Module):
    """conv -> BN whose output feeds both the next conv and a skip connection: not a chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv1(x))
        return self.conv2(F.relu(y)) + y


class DataDependent(ConvBnConv):
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.sum() > 0:  # fx cannot trace a branch on a tensor's value
            x = -x
        return super().forward(x)


class SharedProducer(ConvBnConv):
    """conv1 is called twice: removing its filters would change the second call too."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = super().forward(x)
        return {"out": out["out"], "aux": self.conv1(x * 2.0)}


class BasicBlock(nn.Module):
    """ResNet's block: one ReLU module called twice, conv1 -> bn1 -> relu -> conv2 shrinkable, conv2 not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + x)


def test_resnet_block_with_a_shared_relu_is_shrunk_inside() -> None:
    model = BasicBlock().eval()
    with torch.no_grad():
        model.bn1.bias.fill_(-0.5)
        model.conv1.weight[[0, 4]] = 0.0
        model.conv2.weight[1] = 0.0  # feeds the skip connection: stays
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"conv1": 2}
    assert shrunk.conv1.out_channels == 4 and shrunk.conv2.out_channels == 3
    assert report.max_abs_diff <= 1e-6


def test_skip_connection_is_not_shrunk() -> None:
    model = Residual().eval()
    _zero_filter_(model.conv1, 0)
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {} and report.reason == "no removable channels" and report.possible
    assert shrunk.conv1.out_channels == 6


def test_untraceable_model_is_reported_not_guessed() -> None:
    model = _prepared(DataDependent(), [-1.0] * 6)
    _zero_filter_(model.conv1, 0)
    shrunk, report = shrink_model(model, _inputs())
    assert report.reason.startswith("shrink not possible for this model (torch.fx cannot trace it: TraceError")
    assert not report.possible and report.removed == {} and shrunk.conv1.out_channels == 6
    assert report.params_after == report.params_before


def test_module_called_twice_is_left_alone() -> None:
    model = _prepared(SharedProducer(), [-1.0] * 6)
    _zero_filter_(model.conv1, 0)
    _, report = shrink_model(model, _inputs())
    assert report.removed == {}


def test_chains_do_not_cross_components() -> None:
    model = _standard(kernel=3)
    _, crossing = shrink_model(model, _inputs(), components={"conv1": "backbone", "conv2": "head:seg"})
    assert crossing.removed == {}
    _, inside = shrink_model(model, _inputs(), components={"conv1": "backbone", "conv2": "backbone"})
    assert inside.removed == {"conv1": 2}
    _, unknown = shrink_model(model, _inputs(), components={"conv1": "backbone"})
    assert unknown.removed == {}


def test_subclassed_conv_is_not_trusted() -> None:
    class StandardizedConv(nn.Conv2d):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * 2.0

    model = _standard(kernel=3)
    custom = StandardizedConv(6, 4, 3, padding=1, bias=False)
    custom.load_state_dict(model.conv2.state_dict())
    model.conv2 = custom
    _, report = shrink_model(model, _inputs())
    assert report.removed == {}


class InvertedResidual(nn.Module):
    """MobileNetV2's expand 1x1 -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> project 1x1, functional relu."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 4, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(F.relu(self.bn2(self.dw(self.act(self.bn1(self.expand(x)))))))


def test_depthwise_chain_is_shrunk_through() -> None:
    torch.manual_seed(0)
    model = InvertedResidual().eval()
    with torch.no_grad():
        model.bn1.bias.copy_(torch.tensor([-1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]))  # channel 0 -> 0 after ReLU6
        model.bn2.bias.copy_(torch.full((8,), 0.3))  # dead channels leave bn2 as the constant relu(0.3)
        model.bn2.running_mean.uniform_(-0.2, 0.2)
        model.expand.weight[0] = 0.0  # zero after the activation, so the padded depthwise conv passes 0 on
        model.dw.weight[3] = 0.0  # the depthwise filter itself is dead
        model.expand.weight[5] = 0.0  # constant relu6(0.5) meets the padded depthwise conv: must stay
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"expand": 2}
    assert shrunk.dw.groups == shrunk.dw.in_channels == shrunk.dw.out_channels == 6
    assert shrunk.bn1.num_features == shrunk.bn2.num_features == shrunk.project.in_channels == 6
    assert shrunk.project.bias is not None  # the two constants were folded
    assert report.max_abs_diff <= 1e-5


def test_parity_failure_returns_the_model_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    real_plan = shrink_module._plan

    def reckless(model: nn.Module, chain: shrink_module._Chain) -> bool:
        real_plan(model, chain)
        chain.remove, chain.fold = [0, 3], {}  # live channels: the outputs must move
        return True

    monkeypatch.setattr(shrink_module, "_plan", reckless)
    model = _standard(kernel=3)
    shrunk, report = shrink_model(model, _inputs())
    assert report.reason.startswith("shrink not possible for this model (outputs moved by")
    assert report.removed == {} and shrunk.conv1.out_channels == 6


@settings(max_examples=25, deadline=None)
@given(
    kernel=st.sampled_from([1, 3]),
    bias=st.booleans(),
    dead=st.sets(st.integers(0, 5)),
    unused=st.sets(st.integers(0, 5)),
    betas=st.lists(st.floats(-1.0, 1.0), min_size=6, max_size=6),
)
def test_property_shrink_keeps_outputs(
    kernel: int, bias: bool, dead: set[int], unused: set[int], betas: list[float]
) -> None:
    model = _prepared(ConvBnConv(kernel, bias), betas)
    for channel in dead:
        _zero_filter_(model.conv1, channel)
    with torch.no_grad():
        for channel in unused:
            model.conv2.weight[:, channel] = 0.0
    shrunk, report = shrink_model(model, _inputs())
    assert report.possible, report.reason
    removed = report.removed.get("conv1", 0)
    assert removed >= min(len(unused), 5)
    assert shrunk.conv1.out_channels == 6 - removed
    assert report.max_abs_diff <= 1e-5


# --- reporting and counting ------------------------------------------------------------------------


def test_zero_filters_lists_conv_and_linear_rows() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 5))
    with torch.no_grad():
        model[0].weight[[1, 3]] = 0.0
        model[2].weight[2] = 0.0
        model[0].weight[0, 0, 0, 0] = 0.0  # one zero is not a zero filter
    found = zero_filters(model)
    assert [(z.layer, z.channels, z.zero) for z in found] == [("0", 4, (1, 3)), ("2", 5, (2,))]


def test_flops_count_convs_and_linears() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(16, 5))
    flops = count_flops(model, torch.zeros(7, 3, 6, 6))  # counted for one image: batch 7 is ignored
    assert flops == 2 * (16 * 4 * 27 + 4 * 4 * 9 + 5 * 16)
    assert count_params(model) == 4 * 27 + 4 + 4 * 9 + 4 + 5 * 16 + 5


# --- a reference model, through ONNX -----------------------------------------------------------------


def _magnitude_pruned_mobilenet(sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    model = mobilenet_v2_tiny().eval()
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights])
    threshold = magnitudes.kthvalue(int(sparsity * magnitudes.numel())).values
    with torch.no_grad():
        for w in weights:
            w.mul_(w.abs() > threshold)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # trained-looking statistics: constants of either sign
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    return model


class _Tuple(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        return tuple(out[name] for name in TASKS)


@pytest.mark.onnx
def test_shrunk_reference_model_matches_in_onnxruntime(tmp_path: Path) -> None:
    model = _magnitude_pruned_mobilenet(0.95)
    inputs = [_images(1, (32, 48), seed=3), _images(3, (32, 48), seed=4)]
    shrunk, report = shrink_model(model, inputs)
    assert isinstance(report, ShrinkReport) and report.reason == ""
    assert sum(report.removed.values()) > 100
    assert report.params_after < 0.8 * report.params_before
    assert report.flops_after < 0.8 * report.flops_before
    assert report.max_abs_diff <= 1e-4
    path = tmp_path / "model.shrunk.onnx"
    export_onnx(_Tuple(shrunk), inputs[0], path, TASKS, exporter="legacy")
    parity = check_onnx_parity(_Tuple(model), path, inputs, TASKS)  # against the unshrunk model
    assert parity.max_abs_diff <= 1e-4
