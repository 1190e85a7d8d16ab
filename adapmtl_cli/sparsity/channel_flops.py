"""FLOPs of a channel-gated model as a function of which channels are removed (``--target flops``).

Every ``nn.Conv*`` / ``nn.Linear`` costs its multiply-accumulates on the example input (per sample). Removing
channels scales a layer's cost by the kept fraction of its input features times the kept fraction of its
output channels (a depthwise conv: the kept fraction of its channels, once), which is exactly the cost of the
physically smaller layer. BatchNorm and activations are left out (a few per cent of a conv's cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapmtl_cli.model.channels import call_model
from adapmtl_cli.sparsity.channel_gates import GatedGroup

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class _Side:
    """Which flat channels one side (inputs or outputs) of a layer holds, and how many features each."""

    width: int
    flat: torch.Tensor
    """Flat channel index per gated feature (a channel flattened into a Linear appears several times)."""


@dataclass
class _Layer:
    name: str
    macs: float
    inputs: _Side | None
    outputs: _Side | None
    depthwise: bool


class LayerFlops:
    """The model's conv/linear MACs per sample, and the MACs a removed-channel mask saves."""

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers
        self.total = float(sum(x.macs for x in layers))

    @staticmethod
    def _kept(side: _Side | None, removed: torch.Tensor) -> torch.Tensor:
        if side is None or side.flat.numel() == 0:
            return torch.ones((), device=removed.device)
        gone = removed.index_select(0, side.flat.to(removed.device)).sum()
        return 1.0 - gone.float() / side.width

    def removed(self, removed: torch.Tensor) -> float:
        """MACs saved when the channels where ``removed`` is True are removed."""
        saved = torch.zeros((), dtype=torch.float64, device=removed.device)
        for layer in self.layers:
            if layer.depthwise:
                kept = self._kept(layer.outputs, removed)
            else:
                kept = self._kept(layer.inputs, removed) * self._kept(layer.outputs, removed)
            saved = saved + layer.macs * (1.0 - kept.double())
        return float(saved)


def _macs(module: nn.Module, output: torch.Tensor) -> float:
    per_sample = output[0].numel() if output.dim() > 1 else output.numel()
    if isinstance(module, _CONVS):
        k = 1
        for x in module.kernel_size:
            k *= x
        return float(per_sample * (module.in_channels // module.groups) * k)
    assert isinstance(module, nn.Linear)
    return float(per_sample * module.in_features)


def layer_flops(model: nn.Module, example_input: Any, groups: Sequence[GatedGroup]) -> LayerFlops:
    """Measure every conv/linear layer's MACs on ``example_input`` and map its sides to the flat channels."""
    macs: dict[str, float] = {}
    names = {m: n for n, m in model.named_modules()}

    def record(module: nn.Module, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            macs[names[module]] = macs.get(names[module], 0.0) + _macs(module, out)

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example_input)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    ins: dict[str, list[int]] = {}
    outs: dict[str, list[int]] = {}
    depthwise: set[str] = set()
    for g in groups:
        for s in g.group.slices:
            side = ins if s.kind == "in_channels" else outs
            if s.kind in ("in_channels", "out_channels", "depthwise"):
                side.setdefault(s.module, []).extend(g.offset + r for r in s.root_channels)
            if s.kind == "depthwise":
                depthwise.add(s.module)
    mods = dict(model.named_modules())
    layers = []
    for name, value in macs.items():
        module = mods[name]
        width_in = module.in_channels if isinstance(module, _CONVS) else module.in_features
        width_out = module.out_channels if isinstance(module, _CONVS) else module.out_features
        layers.append(
            _Layer(
                name,
                value,
                _Side(int(width_in), torch.tensor(ins.get(name, []), dtype=torch.long)),
                _Side(int(width_out), torch.tensor(outs.get(name, []), dtype=torch.long)),
                name in depthwise,
            )
        )
    return LayerFlops(layers)
