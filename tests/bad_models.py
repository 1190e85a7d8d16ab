"""Factories of misbehaving models for the bad-input and reliability tests (``--factory tests/bad_models.py:NAME``).

Each wraps the reference ``deeplab_resnet_tiny`` as ``inner`` (so its checkpoint is ``factory().state_dict()``)
and breaks one thing: the outputs' structure, their batch size, their type, or finiteness during training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapmtl_cli.models import deeplab_resnet_tiny


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = deeplab_resnet_tiny()
        self.training_calls = 0

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = self.inner(x)
        if self.training:
            self.training_calls += 1
        return out


class OneOutput(_Wrapper):
    """Only the segmentation map, as a bare tensor: depth and normal have no output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)["segmentation"]


class StringOutput(_Wrapper):
    def forward(self, x: torch.Tensor) -> str:
        self.outputs(x)
        return "segmentation"


class WrongBatch(_Wrapper):
    """Every output has one row more than the input batch."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.cat([v, v[:1]]) for k, v in self.outputs(x).items()}


class Raises(_Wrapper):
    def forward(self, x: torch.Tensor) -> Any:
        raise RuntimeError("this model cannot run")


class NanLoss(_Wrapper):
    """NaN outputs on training-mode forward calls number ``first``..``last`` (1-based); finite otherwise."""

    first, last = 4, 4

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.outputs(x)
        if self.training and self.first <= self.training_calls <= self.last:
            out = {k: v * float("nan") for k, v in out.items()}
        return out


class NanLossForever(NanLoss):
    first, last = 4, 10**9


class NanWeightsOnce(_Wrapper):
    """Finite outputs and loss, but a NaN gradient for ``gain`` on the 4th training step: the weights go NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.outputs(x)
        term = self.gain * 0
        if self.training and self.training_calls == 4:
            term = torch.sqrt(self.gain * 0)  # value 0, gradient 0 * inf = NaN
        return {k: v + term for k, v in out.items()}


def one_output() -> nn.Module:
    return OneOutput()


def string_output() -> nn.Module:
    return StringOutput()


def wrong_batch() -> nn.Module:
    return WrongBatch()


def raises() -> nn.Module:
    return Raises()


def nan_loss_once() -> nn.Module:
    return NanLoss()


def nan_loss_forever() -> nn.Module:
    return NanLossForever()


def nan_weights_once() -> nn.Module:
    return NanWeightsOnce()


def returns_an_int() -> int:
    return 3
