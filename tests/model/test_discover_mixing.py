"""Mixing architectures (cross-stitch, NDDR-CNN): reachability calls every column backbone, ``--head`` splits them.

What README's "Components" paragraph promises: through the mixing units every column reaches every task, so
discovery (rightly, by its rule) puts all columns in ``backbone``; ``--head TASK=GLOB`` per column then gives
each column its own component and threshold, the mixing units staying shared.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adapmtl_cli.jobs.prepare import parse_head_overrides
from adapmtl_cli.model.discover import discover_components

TASKS = ("segmentation", "depth")


class CrossStitch(nn.Module):
    """Two task columns of two convs; after each stage a cross-stitch unit mixes them (Misra et al., 2016)."""

    def __init__(self) -> None:
        super().__init__()
        self.columns = nn.ModuleDict(
            {t: nn.ModuleList([nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)]) for t in ("seg", "depth")}
        )
        self.stitch = nn.ParameterList([nn.Parameter(torch.eye(2) * 0.8 + 0.1) for _ in range(2)])
        self.out = nn.ModuleDict({"seg": nn.Conv2d(4, 13, 1), "depth": nn.Conv2d(4, 1, 1)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        a = b = x
        for i, mix in enumerate(self.stitch):
            a, b = torch.relu(self.columns["seg"][i](a)), torch.relu(self.columns["depth"][i](b))
            a, b = mix[0, 0] * a + mix[0, 1] * b, mix[1, 0] * a + mix[1, 1] * b
        return {"segmentation": self.out["seg"](a), "depth": self.out["depth"](b)}


def test_columns_are_backbone_until_head_globs_split_them() -> None:
    torch.manual_seed(0)
    model = CrossStitch()
    x = torch.randn(2, 3, 8, 8)
    cmap = discover_components(model, model(x), TASKS)
    assert {layer.fqn: layer.component for layer in cmap.layers if layer.fqn.startswith("columns")} == {
        f"columns.{t}.{i}": "backbone" for t in ("seg", "depth") for i in range(2)
    }
    heads = parse_head_overrides(["segmentation=columns.seg", "depth=columns.depth"], list(TASKS))
    split = discover_components(model, model(x), TASKS, heads=heads)
    layers = {layer.fqn: layer.component for layer in split.layers}
    assert layers["columns.seg.0"] == layers["columns.seg.1"] == "head:segmentation"
    assert layers["columns.depth.0"] == layers["columns.depth.1"] == "head:depth"
    assert split.component("backbone").modules == ("stitch",)  # the mixing units stay shared (not pruned: no conv)
