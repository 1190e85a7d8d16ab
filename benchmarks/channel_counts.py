"""Does onnxruntime care how many channels a pruned layer keeps? (issue #14; why ``channel_gates.KEEP_MULTIPLE``)

Removes channels from an untrained ``deeplab_resnet_tiny`` (widths 8-64, 32 prunable groups) four ways, exports each
to ONNX and times them against the dense model in one interleaved onnxruntime loop (one thread, batch 1 and 8):

- ``half``: every group keeps half (4/8/16/32 of 8/16/32/64: multiples of 4, Torch-Pruning's 50%),
- ``odd``: every group keeps an odd count near 45% (fewer FLOPs than ``half``),
- ``half_minus1``: half minus one channel,
- ``odd_to_4``: ``odd`` rounded up to a multiple of 4.

    python benchmarks/channel_counts.py       # prints the medians (ms) and dense/variant ratios
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from adapmtl_cli.export.latency import measure_latency
from adapmtl_cli.export.onnx import export_onnx
from adapmtl_cli.model.channels import channel_groups, remove_channels
from adapmtl_cli.models import deeplab_resnet_tiny

VARIANTS: dict[str, Callable[[int], int]] = {
    "half": lambda n: max(1, n // 2),
    "odd": lambda n: max(1, round(n * 0.45) | 1),
    "half_minus1": lambda n: max(1, n // 2 - 1),
    "odd_to_4": lambda n: min(n, 4 * math.ceil((round(n * 0.45) | 1) / 4)),
}


class _Tuple(nn.Module):
    def __init__(self, inner: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.inner, self.names = inner, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(x)
        return tuple(out[k] for k in self.names)


def main() -> int:
    torch.manual_seed(0)
    model = deeplab_resnet_tiny().eval()
    x = torch.randn(1, 3, 48, 64)
    names = list(model(x))
    groups = channel_groups(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"dense": Path(tmp) / "dense.onnx"}
        export_onnx(_Tuple(model, names), x, paths["dense"], names)
        for name, kept in VARIANTS.items():
            smaller = remove_channels(model, x, {g.root: list(range(kept(g.channels))) for g in groups}).eval()
            paths[name] = Path(tmp) / f"{name}.onnx"
            export_onnx(_Tuple(smaller, names), x, paths[name], names)
        lat = measure_latency(paths, [3, 48, 64], batch=8, threads=1, repeats=40)
    for batch in (1, 8):
        dense = lat.medians_ms["dense"][batch]
        cells = ", ".join(f"{k} {v[batch]:.3f} ms ({dense / v[batch]:.2f}×)" for k, v in lat.medians_ms.items())
        print(f"batch {batch}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
