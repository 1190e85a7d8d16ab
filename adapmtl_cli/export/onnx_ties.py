"""Tied max-pool windows: finding them, and a max-pool whose indices no runtime can break differently.

A max-pool that returns indices (SegNet's ``MaxPool2d(return_indices=True)`` feeding ``MaxUnpool2d``) must pick
one element of each window. Where several elements hold the maximum (a *tied* window) the choice is free:
PyTorch takes the first in row-major order, but ONNX leaves MaxPool's ``Indices`` tie-breaking unspecified, so
onnxruntime may take another, and the unpooled map (and all that follows) then differs. Pruning makes ties
common: a conv whose filter became all zero outputs a constant channel, every window of which is tied.

:func:`tied_windows` counts tied windows over a model's forward passes (any ``max_pool2d`` call with indices,
module or functional). :func:`tie_stable_copy` swaps each ``nn.MaxPool2d(return_indices=True)`` of a copy of
the model for :class:`TieStableMaxPool2d`, which gives the same values and indices from ``amax`` and
``argmax`` over the stacked window elements. ONNX specifies ``ArgMax``'s tie-breaking (``select_last_index=0``:
the first maximum), exactly PyTorch's rule, so its graph computes PyTorch's indices in every runtime; it is
slower than a native MaxPool, which is why it is only used when a plain export fails parity on tied windows.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = tuple(value)
    return int(first), int(second)


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool) -> int:
    """PyTorch's pooling output size (``pooling_output_shape``), ceil mode included."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_windows(
    x: Tensor,
    kernel: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
    """The window elements of a 2-d max-pool over ``x`` ``(N, C, H, W)``, stacked last: ``(N, C, Ho, Wo, k*k)``.

    Elements are in row-major window order; padding reads ``-inf``. Also returns the output size and the
    ``(dy, dx)`` offsets' kernel shape, for turning a window position into an input index.
    """
    (kh, kw), (ph, pw), (dh, dw) = _pair(kernel), _pair(padding), _pair(dilation)
    sh, sw = _pair(stride if stride is not None and stride != [] else kernel)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ho, wo = _out_size(h, kh, sh, ph, dh, ceil_mode), _out_size(w, kw, sw, pw, dw, ceil_mode)
    bottom = max(0, (ho - 1) * sh + dh * (kh - 1) + 1 - (h + 2 * ph))
    right = max(0, (wo - 1) * sw + dw * (kw - 1) + 1 - (w + 2 * pw))
    padded = F.pad(x, (pw, pw + right, ph, ph + bottom), value=-math.inf)
    parts = [
        padded[..., dy * dh : dy * dh + (ho - 1) * sh + 1 : sh, dx * dw : dx * dw + (wo - 1) * sw + 1 : sw]
        for dy in range(kh)
        for dx in range(kw)
    ]
    return torch.stack(parts, dim=-1), (ho, wo), (kh, kw)


def stable_max_pool2d(
    x: Tensor,
    kernel: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
) -> tuple[Tensor, Tensor]:
    """``F.max_pool2d(..., return_indices=True)`` from ``amax``/``argmax``: the first maximum of a tied window."""
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    windows, (ho, wo), (kh, kw) = pool_windows(x, kernel, stride, padding, dilation, ceil_mode)
    values = windows.amax(dim=-1)
    position = windows.argmax(dim=-1)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride or kernel), _pair(padding), _pair(dilation)
    rows = torch.arange(ho, device=x.device).view(ho, 1) * sh - ph + torch.div(position, kw, rounding_mode="floor") * dh
    cols = torch.arange(wo, device=x.device).view(1, wo) * sw - pw + torch.remainder(position, kw) * dw
    indices = rows * int(x.shape[-1]) + cols
    if unbatched:
        return values[0], indices[0]
    return values, indices


class TieStableMaxPool2d(nn.Module):
    """``nn.MaxPool2d`` with indices whose tie-breaking ONNX specifies (see the module docstring)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.kernel_size = pool.kernel_size
        self.stride = pool.stride
        self.padding = pool.padding
        self.dilation = pool.dilation
        self.ceil_mode = pool.ceil_mode
        self.return_indices = pool.return_indices

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        values, indices = stable_max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )
        return (values, indices) if self.return_indices else values


def tie_stable_copy(module: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``module`` with every ``nn.MaxPool2d(return_indices=True)`` made tie-stable; how many."""
    stable = copy.deepcopy(module)
    names = [n for n, m in stable.named_modules() if isinstance(m, nn.MaxPool2d) and m.return_indices and n]
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = stable.get_submodule(parent) if parent else stable
        setattr(owner, attr, TieStableMaxPool2d(stable.get_submodule(name)))  # type: ignore[arg-type]
    return stable, len(names)


class _TieCounter(TorchFunctionMode):
    """Counts the windows (and the tied ones) of every 2-d max-pool with indices run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.windows = 0
        self.tied = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is F.max_pool2d_with_indices and isinstance(args[0], Tensor) and args[0].dim() in (3, 4):
            x = args[0] if args[0].dim() == 4 else args[0].unsqueeze(0)
            options = dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), args[1:], strict=False))
            options.update({k: v for k, v in (kwargs or {}).items() if k != "return_indices"})
            windows, _, _ = pool_windows(
                x.detach(),
                options["kernel_size"],
                options.get("stride"),
                options.get("padding", 0),
                options.get("dilation", 1),
                bool(options.get("ceil_mode", False)),
            )
            hits = (windows == windows.amax(dim=-1, keepdim=True)).sum(dim=-1)
            self.windows += hits.numel()
            self.tied += int((hits > 1).sum())
        return out


def tied_windows(module: nn.Module, inputs: Sequence[Tensor]) -> tuple[int, int]:
    """``(tied, total)`` windows of the max-pools with indices that ``module`` runs on ``inputs`` (eval mode)."""
    counter = _TieCounter()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), counter:
            for x in inputs:
                module(x)
    finally:
        module.train(was_training)
    return counter.tied, counter.windows
