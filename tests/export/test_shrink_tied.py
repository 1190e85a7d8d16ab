"""Structured shrink leaves tied parameters alone: slicing one holder's copy would untie the tensor."""

from __future__ import annotations

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
