"""Tiny models with residual additions, concatenations, depthwise convs, branches and flatten (channel tests)."""

from __future__ import annotations

import torch
from torch import nn


def cbr(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """a -> bn -> relu = y;  relu(bn(b(y)) + y) -> head. ``a`` and ``b`` are coupled by the addition."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bna = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bnb = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bna(self.a(x)))
        z = torch.relu(self.bnb(self.b(y)) + y)
        return self.head(z)


class Concat(nn.Module):
    """Two branches concatenated, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.br1 = cbr(3, 3)
        self.br2 = cbr(3, 2)
        self.mix = cbr(5, 4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(torch.cat([self.br1(x), self.br2(x)], dim=1)))


class Depthwise(nn.Module):
    """MobileNet style: conv -> depthwise conv (groups=C) -> pointwise conv -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = cbr(3, 4)
        self.dw = cbr(4, 4, groups=4)
        self.pw = nn.Sequential(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5), nn.ReLU())
        self.head = nn.Conv2d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw(self.expand(x))))


class Multitask(nn.Module):
    """Shared stem, a dense head and a classification head, returned as a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 4)
        self.seg_hidden = nn.Conv2d(4, 3, 3, padding=1)
        self.seg_out = nn.Conv2d(3, 2, 1)
        self.cls_hidden = nn.Linear(4, 5)
        self.cls_out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.stem(x)
        seg = self.seg_out(torch.relu(self.seg_hidden(f)))
        pooled = nn.functional.adaptive_avg_pool2d(f, 1).flatten(1)
        cls = self.cls_out(torch.relu(self.cls_hidden(pooled)))
        return {"seg": seg, "cls": cls}


class Flatten(nn.Module):
    """conv -> bn -> relu -> flatten into a Linear: each channel is 64 input features of the Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.body = cbr(3, 4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))
