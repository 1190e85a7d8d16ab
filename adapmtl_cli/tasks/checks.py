"""The shape checks every task kind runs on a model output and its target, with the errors that name the fix.

A wrong *output* is the model's or ``--outputs``' fault and raises ``DiscoveryError``; a wrong *target* is the
dataset's and raises ``DataError``. Dense outputs are then resized bilinearly to the target's size in fp32 (see
``tasks/base.py``), so models with a lower output stride need no special handling.

Class labels stored on disk as floats (MTAN's ``label/*.npy``) must hold whole numbers: :func:`class_ids` refuses
``0.5`` instead of truncating or rounding it to a class id, in every reader that converts stored labels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adapmtl_cli.errors import DataError, DiscoveryError


def shape_text(t: torch.Tensor) -> str:
    """A tensor's shape as error messages write it: ``(2,3,24,32)``."""
    return "(" + ",".join(str(s) for s in t.shape) + ")"


def dense_output(
    task: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    channels: int,
    *,
    channel_hint: str = "check --outputs",
    channel_noun: str | None = None,
) -> torch.Tensor:
    """``pred`` as fp32 at ``target``'s spatial size, after checking it is a float ``(B, channels, h, w)``.

    Args:
        task: the task's name, as the messages say it.
        pred: the model's output for the task.
        target: the batch's target; its first dimension is the batch, its last two the size to resize to.
        channels: the output channels the task needs.
        channel_hint: what a wrong channel count tells the user to check.
        channel_noun: the word after the count in that message; by default "channel" for 1, else "channels".

    Raises:
        DiscoveryError: ``pred`` is not a 4-d float tensor, has another channel count, or another batch size.
    """
    if pred.dim() != 4 or not pred.is_floating_point():
        raise DiscoveryError(
            f"task {task!r} expects a float output (B,{channels},h,w), got {shape_text(pred)} {pred.dtype}; "
            "check --outputs"
        )
    if pred.shape[1] != channels:
        noun = channel_noun or ("channel" if channels == 1 else "channels")
        raise DiscoveryError(
            f"task {task!r} expects {channels} output {noun}, got {pred.shape[1]} {shape_text(pred)}; {channel_hint}"
        )
    if pred.shape[0] != target.shape[0]:
        raise DiscoveryError(
            f"task {task!r} output has batch size {pred.shape[0]} but its target has {target.shape[0]} "
            f"({shape_text(pred)} vs {shape_text(target)}); check --outputs"
        )
    pred = pred.float()
    if pred.shape[-2:] != target.shape[-2:]:
        pred = F.interpolate(pred, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
    return pred


def vector_output(task: str, pred: torch.Tensor, channels: int, batch: int) -> torch.Tensor:
    """``pred`` as fp32 ``(B, channels)`` for a per-sample task, after checks; ``(B, C, 1, 1)`` is flattened.

    Raises:
        DiscoveryError: ``pred`` is not a float ``(B, channels)`` (a spatial map is refused, never pooled), or
            its batch size is not ``batch``.
    """
    if pred.dim() == 4 and pred.shape[-2:] == (1, 1):
        pred = pred.flatten(1)
    if pred.dim() != 2 or not pred.is_floating_point():
        raise DiscoveryError(
            f"task {task!r} expects a float output (B,{channels}) or (B,{channels},1,1), got {shape_text(pred)} "
            f"{pred.dtype}; pool the head's feature map (e.g. x.mean((2, 3))) or check --outputs"
        )
    if pred.shape[1] != channels:
        raise DiscoveryError(
            f"task {task!r} expects {channels} outputs per sample, got {pred.shape[1]} {shape_text(pred)}; "
            "check --outputs or the head size"
        )
    if pred.shape[0] != batch:
        raise DiscoveryError(
            f"task {task!r} output has batch size {pred.shape[0]} but its target has {batch}; check --outputs"
        )
    return pred.float()


def map_target(task: str, target: torch.Tensor, channels: int) -> torch.Tensor:
    """A dense target as ``(B, channels, H, W)``; a one-channel map may also come as ``(B, H, W)``.

    Raises:
        DataError: any other shape.
    """
    if channels == 1 and target.dim() == 3:
        target = target.unsqueeze(1)
    if target.dim() != 4 or target.shape[1] != channels:
        raise DataError(
            f"task {task!r} expects targets (B,{channels},H,W), got {shape_text(target)}; check the dataset adapter"
        )
    return target


def label_target(task: str, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel class ids as ``(B, H, W)``; ``(B, 1, H, W)`` is squeezed. The dtype is left as it came.

    Raises:
        DataError: another shape, or a float or complex dtype.
    """
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 3 or target.is_floating_point() or target.is_complex():
        raise DataError(
            f"task {task!r} expects integer targets (B,H,W), got {shape_text(target)} {target.dtype}; "
            "check the dataset adapter"
        )
    return target


LABEL_TOLERANCE = 1e-3
"""How far a float class label may lie from a whole number (float storage noise) and still count as that id."""


def class_ids(values: np.ndarray, where: str, *, task: str = "segmentation") -> np.ndarray:
    """Stored class labels as int64: integers as they are, floats only when each is a whole number.

    A label of ``0.5`` is no class: truncating it (``astype``) or rounding it (``rint``) would silently train on
    a class the data never gave; such maps usually come from resizing labels with interpolation.

    Args:
        values: the labels as read (any integer or float dtype; NaN is refused by the readers before).
        where: the file or sample the labels come from, as the message names it (already quoted).
        task: the task's name, as the message says it.

    Raises:
        DataError: ``values`` is not numeric, or holds a label farther than :data:`LABEL_TOLERANCE` from a
            whole number.
    """
    if values.dtype.kind in "biu":
        return values.astype(np.int64)
    if values.dtype.kind != "f":
        raise DataError(f"{where} holds {task} labels of dtype {str(values.dtype)!r}; store integer class ids")
    whole = np.rint(values)
    off = np.abs(values - whole) > LABEL_TOLERANCE
    if off.any():
        bad = float(values[off].flat[0])
        raise DataError(
            f"{where} holds {task} label {bad!r} ({int(off.sum())} such pixels), which is not a class id; "
            "labels must be whole numbers: resize label maps with nearest-neighbour, never with interpolation"
        )
    return whole.astype(np.int64)
