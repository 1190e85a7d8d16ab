"""Structured shrink leaves tied parameters alone: slicing one holder's copy would untie the tensor."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from adapmtl_cli.export.shrink import count_params, shrink_model


class TwoTiedChains(nn.Module):
    """Two conv -> ReLU -> conv chains whose first convs share one weight (with zero filters) and an untied one."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.Conv2d(6, 2, 1, bias=False)
        self.b1, self.b2 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.Conv2d(6, 2, 1, bias=False)
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.Conv2d(6, 2, 1, bias=False)
        self.b1.weight = self.a1.weight
        with torch.no_grad():
            for conv in (self.a1, self.c1):
                conv.weight[[1, 4]] = 0.0

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {
            "a": self.a2(torch.relu(self.a1(x))),
            "b": self.b2(torch.relu(self.b1(x))),
            "c": self.c2(torch.relu(self.c1(x))),
        }


def test_tied_chains_are_kept_and_untied_ones_shrink() -> None:
    torch.manual_seed(0)
    model = TwoTiedChains().eval()
    inputs = [torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(1))]
    shrunk, report = shrink_model(model, inputs)
    assert report.removed == {"c1": 2}
    assert shrunk.b1.weight is shrunk.a1.weight and shrunk.a1.out_channels == 6
    assert report.params_after == count_params(model) - 2 * 27 - 2 * 2 == count_params(shrunk)


class TiedResidual(nn.Module):
    """A residual stream whose partner ``conv2`` may share its weight with ``twin``, which reads the stream.

    y = relu(bn0(stem(x))); z = relu(y + bn2(conv2(y))); outputs out(relu(head(z))) and twin(z). The stream's
    group holds stem, conv2 (both ways), head's and twin's inputs; head's own group is head -> out.
    """

    def __init__(self, tied: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn0 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.twin = nn.Conv2d(6, 6, 1, bias=False)
        self.head, self.out = nn.Conv2d(6, 4, 1), nn.Conv2d(4, 2, 3, padding=1)
        if tied:
            self.twin.weight = self.conv2.weight
        else:
            self.twin.weight = nn.Parameter(self.conv2.weight.detach().clone())
        with torch.no_grad():
            for bn in (self.bn0, self.bn2):
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            self.bn0.bias[1] = -0.4  # y[1] = relu(-0.4) = 0 once the stem's filter 1 is dead
            self.bn2.bias[1] = 0.3  # z[1] = relu(0 + 0.3): folded into head's and twin's biases (1x1, no padding)
            self.stem.weight[1] = 0.0
            self.conv2.weight[1] = 0.0
            self.twin.weight[1] = 0.0
            self.head.weight[2] = 0.0
            self.head.bias[2] = -1.0  # relu(-1) = 0 at out's input

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        y = torch.relu(self.bn0(self.stem(x)))
        z = torch.relu(y + self.bn2(self.conv2(y)))
        return {"out": self.out(torch.relu(self.head(z))), "aux": self.twin(z)}


@pytest.mark.parametrize("tied", [False, True])
def test_a_tied_residual_partner_keeps_its_whole_group(tied: bool) -> None:
    model = TiedResidual(tied).eval()
    inputs = [torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(2))]
    shrunk, report = shrink_model(model, inputs)
    assert report.removed == ({"head": 1} if tied else {"stem": 1, "head": 1})
    assert report.max_abs_diff <= 1e-5
    assert shrunk.head.out_channels == 3 and shrunk.out.in_channels == 3
    assert shrunk.stem.out_channels == (6 if tied else 5)
    assert (shrunk.twin.weight is shrunk.conv2.weight) == tied
    want, got = model(inputs[0]), shrunk(inputs[0])
    assert all(torch.allclose(got[k], want[k], atol=1e-5, rtol=0) for k in want)
