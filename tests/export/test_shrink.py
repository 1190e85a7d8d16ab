"""Structured shrink: which channels go, what stays, exact sizes, parity, and the models it must refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export import shrink as shrink_module
from adapmtl_cli.export.onnx import check_onnx_parity, export_onnx
from adapmtl_cli.export.shrink import ShrinkReport, count_flops, count_params, shrink_model, zero_filters
from adapmtl_cli.models import deeplab_resnet_tiny, mobilenet_v2_tiny

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
    """conv -> BN whose output feeds the next conv and a skip connection into the model output: its group reaches
    an output (removing a channel would change the output's shape), so it is never offered."""

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
        if x.sum() > 0:  # a branch on a tensor's value: one traced execution cannot stand for all, fx refuses it
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

    def reckless(*args: Any) -> shrink_module._Plan:
        plan = real_plan(*args)
        plan.remove, plan.fold = [0, 3], {}  # live channels: the outputs must move
        return plan

    monkeypatch.setattr(shrink_module, "_plan", reckless)
    model = _standard(kernel=3)
    shrunk, report = shrink_model(model, _inputs())
    assert report.reason.startswith("shrink not possible for this model (outputs moved by")
    assert report.removed == {} and shrunk.conv1.out_channels == 6
    assert report.params_after == report.params_before and report.max_abs_diff > 1e-4


def test_a_failed_removal_is_reported_and_returns_the_model_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any) -> nn.Module:
        raise ExportError("channel removal changed the model's output shapes")

    monkeypatch.setattr(shrink_module, "remove_channels", refuse)
    shrunk, report = shrink_model(_standard(kernel=3), _inputs())
    assert report.reason == (
        "shrink not possible for this model (channel removal failed: ExportError: channel removal changed the "
        "model's output shapes)"
    )
    assert not report.possible and report.removed == {} and shrunk.conv1.out_channels == 6


class NoGraph(ConvBnConv):
    """Runs without autograd: Torch-Pruning has no graph to read."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return super().forward(x)


def test_a_model_torch_pruning_cannot_trace_is_reported_not_guessed() -> None:
    model = _standard(kernel=3)
    untraced = NoGraph()
    untraced.load_state_dict(model.state_dict())
    shrunk, report = shrink_model(untraced.eval(), _inputs())
    assert report.reason == (
        "shrink not possible for this model (channel groups: the model's outputs carry no autograd graph; "
        "nothing can be traced)"
    )
    assert not report.possible and shrunk.conv1.out_channels == 6


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


# --- residual additions, concatenations, flatten: groups on Torch-Pruning's graph ----------------------


def _trained_bn_(model: nn.Module, seed: int = 0) -> None:
    """Every BatchNorm gets trained-looking statistics and affine parameters (constants of either sign)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)


def _bn_constant_(bn: nn.BatchNorm2d, channel: int, value: float) -> None:
    """Make ``bn`` map an all-zero input channel to ``value``."""
    with torch.no_grad():
        scale = bn.weight[channel] / torch.sqrt(bn.running_var[channel] + bn.eps)
        bn.bias[channel] = value + bn.running_mean[channel] * scale


def _assert_kept(
    original: nn.Module, shrunk: nn.Module, keep: dict[str, tuple[list[int] | None, list[int] | None]]
) -> None:
    """Each named layer of ``shrunk`` holds exactly the original's weights at the kept (out, in) channels."""
    for name, (out_keep, in_keep) in keep.items():
        old, new = original.get_submodule(name), shrunk.get_submodule(name)
        weight = old.weight.detach()
        weight = weight[out_keep] if out_keep is not None else weight
        weight = weight[:, in_keep] if in_keep is not None and weight.dim() > 1 else weight
        assert torch.equal(new.weight.detach(), weight), name
        if isinstance(old, nn.BatchNorm2d):
            assert torch.equal(new.running_mean, old.running_mean[out_keep]), name
            assert torch.equal(new.bias.detach(), old.bias.detach()[out_keep]), name


class ResidualNet(nn.Module):
    """y = relu(bn0(stem(x))); z = relu(y + bn2(conv2(relu(bn1(conv1(y)))))); out(relu(head(z))).

    The stem, conv2 (its residual partner), bn0, bn2 and the inputs of conv1 and head form one group.
    """

    def __init__(self, head_kernel: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn0 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv1, self.bn1 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 4, head_kernel, padding=head_kernel // 2)
        self.out = nn.Conv2d(4, 2, 3, padding=1)
        _trained_bn_(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        y = torch.relu(self.bn0(self.stem(x)))
        z = torch.relu(y + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(y))))))
        return {"out": self.out(torch.relu(self.head(z)))}


def _residual(head_kernel: int, sum_after_dead: float) -> ResidualNet:
    """Stream channel 1: both producers dead; y = 0 there and z = relu(sum_after_dead). Channel 3: only the stem
    dead (conv2 still feeds it). Channel 4: read by neither conv1 nor head. Everything else alive."""
    model = ResidualNet(head_kernel).eval()
    with torch.no_grad():
        model.stem.weight[[1, 3]] = 0.0
        model.conv2.weight[1] = 0.0
        model.conv1.weight[:, 4] = 0.0
        model.head.weight[:, 4] = 0.0
    _bn_constant_(model.bn0, 1, -0.4)  # y[1] = relu(-0.4) = 0: conv1's zero padding meets zeros only
    _bn_constant_(model.bn2, 1, sum_after_dead)
    return model


@pytest.mark.parametrize(
    ("head_kernel", "after", "removed"),
    [
        (1, 0.3, [1, 4]),  # z[1] = 0.3 is folded into the unpadded head's bias
        (3, 0.3, [4]),  # a padded head would see 0.3 meet its zero padding: channel 1 stays
        (3, -0.3, [1, 4]),  # z[1] = relu(-0.3) = 0 adds nothing, padded or not
    ],
)
def test_residual_stream_channels_go_when_every_consumer_gets_nothing(
    head_kernel: int, after: float, removed: list[int]
) -> None:
    model = _residual(head_kernel, after)
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"stem": len(removed)} and report.reason == ""
    keep = [c for c in range(6) if c not in removed]
    assert (shrunk.stem.out_channels, shrunk.conv2.out_channels, shrunk.conv1.in_channels) == (len(keep),) * 3
    assert shrunk.bn0.num_features == shrunk.bn2.num_features == shrunk.head.in_channels == len(keep)
    assert shrunk.conv1.out_channels == 6  # conv1's own group is alive
    _assert_kept(
        model,
        shrunk,
        {
            "stem": (keep, None),
            "bn0": (keep, None),
            "conv1": (None, keep),
            "conv2": (keep, None),
            "bn2": (keep, None),
            "head": (None, keep),
        },
    )
    folded = 1 in removed and after > 0
    assert torch.equal(shrunk.head.bias, model.head.bias) != folded
    assert report.max_abs_diff <= 1e-5
    want, got = model(_images(4, seed=7))["out"], shrunk(_images(4, seed=7))["out"]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_one_live_residual_partner_keeps_the_channel() -> None:
    model = _residual(1, 0.3)
    with torch.no_grad():
        model.conv2.weight[1, 0, 1, 1] = 0.5  # conv2 feeds channel 1 again
    _, report = shrink_model(model, _inputs())
    assert report.removed == {"stem": 1}  # channel 4 (unread) only


def test_residual_groups_do_not_cross_components() -> None:
    model = _residual(1, 0.3)
    with torch.no_grad():
        model.conv1.weight[2] = 0.0  # conv1's group: conv1 -> bn1 -> conv2, all backbone
    _bn_constant_(model.bn1, 2, -1.0)
    inside = {"stem": "backbone", "conv1": "backbone", "conv2": "backbone", "head": "head:out", "out": "head:out"}
    _, report = shrink_model(model, _inputs(), components=inside)
    assert report.removed == {"conv1": 1}  # the stream's group reaches the head: kept
    everything = dict.fromkeys(inside, "backbone")
    _, report = shrink_model(model, _inputs(), components=everything)
    assert report.removed == {"stem": 2, "conv1": 1}


class ConcatNet(nn.Module):
    """Two branches concatenated into a 1x1 (or padded 3x3) mix conv: each branch is its own group."""

    def __init__(self, mix_kernel: int = 1) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.br1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.br2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.mix = nn.Conv2d(7, 5, mix_kernel, padding=mix_kernel // 2, bias=False)
        self.out = nn.Conv2d(5, 2, 3, padding=1)
        _trained_bn_(self, seed=1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([torch.relu(self.bn1(self.br1(x))), F.relu6(self.bn2(self.br2(x)))], dim=1)
        return self.out(torch.relu(self.mix(y)))


def _concat(mix_kernel: int) -> ConcatNet:
    """br1 channel 0: dead filter, constant relu(bn1(bias)) = 0.25. br2 channel 1: dead, relu6(bn2(0)) = 0.
    br2 channel 2: mix reads nothing from it (mix input 4 + 2 = 6)."""
    model = ConcatNet(mix_kernel).eval()
    with torch.no_grad():
        model.br1.weight[0] = 0.0
        model.br1.bias[0] = 0.0
        model.br2.weight[1] = 0.0
        model.mix.weight[:, 6] = 0.0
    _bn_constant_(model.bn1, 0, 0.25)
    _bn_constant_(model.bn2, 1, -0.1)
    return model


@pytest.mark.parametrize(("mix_kernel", "br1_removed"), [(1, 1), (3, 0)])
def test_concatenated_branches_shrink_with_the_mix_conv(mix_kernel: int, br1_removed: int) -> None:
    model = _concat(mix_kernel)
    shrunk, report = shrink_model(model, _inputs())
    want = {"br1": br1_removed, "br2": 2} if br1_removed else {"br2": 2}
    assert report.removed == want and report.reason == ""
    keep1 = [1, 2, 3] if br1_removed else [0, 1, 2, 3]
    assert shrunk.mix.in_channels == len(keep1) + 1 and shrunk.bn2.num_features == 1
    mix_in = keep1 + [4]  # br2's channel 0 sits at the mix's input 4
    _assert_kept(model, shrunk, {"br1": (keep1, None), "bn1": (keep1, None), "br2": ([0], None), "mix": (None, mix_in)})
    assert (shrunk.mix.bias is not None) == bool(br1_removed)  # the constant 0.25 was folded
    assert report.max_abs_diff <= 1e-5
    assert torch.allclose(shrunk(_images(4, seed=8)), model(_images(4, seed=8)), atol=1e-5, rtol=0)


class Flattened(nn.Module):
    """conv -> BN -> ReLU -> flatten -> Linear: a channel is 80 input features of the Linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 10, 3)
        _trained_bn_(self, seed=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_a_constant_channel_flattened_into_a_linear_is_folded_into_its_bias() -> None:
    model = Flattened().eval()
    with torch.no_grad():
        model.conv.weight[2] = 0.0
    _bn_constant_(model.bn, 2, 0.7)
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"conv": 1} and shrunk.fc.in_features == 3 * 80
    kept_features = [f for f in range(320) if not 160 <= f < 240]
    assert torch.equal(shrunk.fc.weight, model.fc.weight[:, kept_features])
    expected_bias = model.fc.bias.double() + 0.7 * model.fc.weight[:, 160:240].double().sum(dim=1)
    assert torch.allclose(shrunk.fc.bias.double(), expected_bias, atol=1e-6)
    assert report.max_abs_diff <= 1e-5


class Scaled(ResidualNet):
    """Python numbers join the stream (``z * 2 + 1``): operands from outside the group, so no constant is proven."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        y = torch.relu(self.bn0(self.stem(x)))
        z = torch.relu(y + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(y))))))
        return {"out": self.out(torch.relu(self.head(z * 2.0 + 1.0)))}


def test_an_operand_from_outside_the_group_breaks_the_constant_proof() -> None:
    model = Scaled().eval()
    model.load_state_dict(_residual(1, 0.3).state_dict())
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"stem": 1}  # channel 4, which nothing reads; channel 1's constant is not proven
    assert shrunk.stem.out_channels == 5 and shrunk.head.in_channels == 5 and report.max_abs_diff <= 1e-5


class Shifted(ResidualNet):
    """A per-channel buffer is added to the stream: Torch-Pruning does not couple it, so that group cannot shrink."""

    def __init__(self) -> None:
        super().__init__(head_kernel=1)
        self.register_buffer("shift", torch.linspace(0.0, 1.0, 6).reshape(1, 6, 1, 1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        y = torch.relu(self.bn0(self.stem(x)))
        z = torch.relu(y + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(y)))))) + self.shift
        return {"out": self.out(torch.relu(self.head(z)))}


def test_a_group_whose_removal_fails_is_kept_and_the_others_still_shrink() -> None:
    model = Shifted().eval()
    model.load_state_dict(_residual(1, 0.3).state_dict(), strict=False)
    with torch.no_grad():
        model.head.weight[2] = 0.0
        model.head.bias[2] = -1.0  # relu(-1) = 0 at out's (padded) input
    shrunk, report = shrink_model(model, _inputs())
    assert report.removed == {"head": 1} and report.reason == ""
    assert shrunk.stem.out_channels == 6 and shrunk.head.out_channels == 3 and shrunk.out.in_channels == 3
    assert report.max_abs_diff <= 1e-5


class Mixed(nn.Module):
    """A residual stream through a max pool, concatenated with a side branch (1x1 -> depthwise 3x3), into a mix.

    (A concatenation straight into a depthwise conv makes one group without a full-width producer, which
    ``model/channels.py`` does not offer; the depthwise conv sits inside the side branch here.)
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.stem, self.bn0 = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.res, self.bnr = nn.Conv2d(5, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.side, self.bns = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.dw, self.bnd = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4)
        self.mix = nn.Conv2d(9, 4, 1)
        self.out = nn.Conv2d(4, 2, 3, padding=1)
        _trained_bn_(self, seed=3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn0(self.stem(x)))
        y = F.max_pool2d(torch.relu(y + self.bnr(self.res(y))), 3, stride=1, padding=1)
        side = torch.relu(self.bnd(self.dw(F.relu6(self.bns(self.side(x))))))
        return self.out(torch.relu(self.mix(torch.cat([y, side], dim=1))))


@settings(max_examples=30, deadline=None)
@given(
    dead=st.lists(st.sets(st.integers(0, 8)), min_size=4, max_size=4),
    unused=st.sets(st.integers(0, 8)),
    zero_bias=st.booleans(),
)
def test_property_residual_and_concat_shrink_keeps_outputs(
    dead: list[set[int]], unused: set[int], zero_bias: bool
) -> None:
    """Random dead filters (stem, residual partner, side branch, depthwise) and unread mix inputs: whatever goes,
    the outputs stay (the parity check never has to step in), every side channel the mix ignores goes, and so does
    every stream channel that both producers leave 0 (zero filter and bias, BatchNorm beta 0 after ReLU)."""
    model = Mixed().eval()
    with torch.no_grad():
        for layer, channels in zip((model.stem, model.res, model.side, model.dw), dead, strict=True):
            rows = [c for c in channels if c < layer.out_channels]
            layer.weight[rows] = 0.0
            if zero_bias:
                layer.bias[rows] = 0.0
        model.mix.weight[:, sorted(unused)] = 0.0
    both = {c for c in dead[0] & dead[1] if c < 5} if zero_bias else set()
    for c in both:  # relu(bn0(0)) = 0 and relu(0 + bnr(0)) = 0: the stream channel is 0 everywhere
        _bn_constant_(model.bn0, c, -0.1)
        _bn_constant_(model.bnr, c, -0.1)
    shrunk, report = shrink_model(model, _inputs())
    assert report.possible and report.reason in ("", "no removable channels"), report.reason
    assert report.max_abs_diff <= 1e-5
    assert shrunk.side.out_channels <= max(1, 4 - len({c for c in unused if c >= 5}))  # read by the mix only
    assert shrunk.stem.out_channels <= max(1, 5 - len(both))
    want, got = model(_images(2, seed=9)), shrunk(_images(2, seed=9))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_a_magnitude_pruned_residual_reference_model_shrinks_exactly() -> None:
    torch.manual_seed(0)
    model = deeplab_resnet_tiny().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    magnitudes = torch.cat([c.weight.detach().abs().flatten() for c in convs])
    threshold = magnitudes.kthvalue(int(0.98 * magnitudes.numel())).values
    with torch.no_grad():
        for c in convs:
            c.weight.mul_(c.weight.abs() > threshold)
    _trained_bn_(model)
    inputs = [_images(1, (32, 48), seed=5), _images(2, (32, 48), seed=6)]
    shrunk, report = shrink_model(model, inputs)
    assert report.reason == "" and sum(report.removed.values()) > 50
    assert report.params_after < 0.8 * report.params_before and report.max_abs_diff <= 1e-5
    assert report.params_after == count_params(shrunk)


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
