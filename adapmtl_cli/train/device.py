"""Devices and precision: ``--device`` names, the autocast dtype of ``--precision``, channels-last on CUDA."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from adapmtl_cli.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the first GPU if there is one, else CPU; an unavailable device is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name!r}: this torch build or machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name!r}: MPS is not available on this machine; use --device cpu")
    return device


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device_type: str, *, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype ``--precision`` means on this kind of device; ``None`` is plain fp32.

    ``auto``: bf16 on CUDA (fp16, with a gradient scaler, on GPUs without bf16), fp32 elsewhere. ``bf16`` also
    works on the CPU, where it must be asked for. Thresholds, their sparsity and the losses stay fp32 always.

    Args:
        bf16_supported: whether the GPU has bf16; asked from torch when omitted (CUDA only).

    Raises:
        ConfigError: the device cannot autocast to that dtype.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device_type == "cuda":
        if bf16_supported is None:
            bf16_supported = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return torch.bfloat16 if bf16_supported else torch.float16
        if precision == "bf16" and not bf16_supported:
            raise ConfigError("--precision bf16: this GPU has no bfloat16 support; pass --precision fp16 or fp32")
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if precision == "auto":
        return None
    if device_type == "cpu" and precision == "bf16":
        return torch.bfloat16
    raise ConfigError(
        f"--precision {precision} is not supported on {device_type}; use fp32 (or bf16 on the CPU, bf16/fp16 on CUDA)"
    )


def autocast_for(device: torch.device, precision: str = "auto") -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    return autocast(device, autocast_dtype(precision, device.type))


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def uses_channels_last(module: torch.nn.Module, device: torch.device) -> bool:
    """Channels-last memory on CUDA for models with 2-D convolutions (faster cuDNN kernels, tensor cores)."""
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
