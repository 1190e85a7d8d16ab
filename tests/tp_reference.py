"""Comparison of a channel baseline's scores with a Torch-Pruning importance, group by group (method tests)."""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp  # type: ignore[import-untyped]
from torch import nn


def assert_same_order_as_torch_pruning(
    model: nn.Module, x: torch.Tensor, cm: Any, ours: torch.Tensor, importance: Any, *, nonzero: bool = False
) -> None:
    """Within every gated group of ``cm``, ``ours`` (per flat channel) orders the channels as ``importance`` does
    on ``model``'s dependency graph; ``nonzero``: each group's scores must also not all be 0."""
    graph = tp.DependencyGraph().build_dependency(
        model, x, output_transform=lambda o: list(o.values()) if isinstance(o, dict) else o
    )
    compared = 0
    for g in cm.gated:
        root = model.get_submodule(g.group.root)
        group = graph.get_pruning_group(
            root,
            tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels,
            idxs=list(range(g.group.channels)),
        )
        theirs = importance(group)
        mine = ours[g.offset : g.offset + g.group.channels]
        if nonzero:
            assert mine.abs().sum() > 0, g.group.root
        assert torch.equal(torch.argsort(mine, stable=True), torch.argsort(theirs.float(), stable=True)), g.group.root
        compared += 1
    assert compared == len(cm.gated) > 0
