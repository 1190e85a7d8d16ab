"""The physically smaller model of a channel run (``--structure channel``): write it, and rebuild it.

``prune --structure channel`` bakes a full-size model whose removed channels read as zeros everywhere and
records, per channel group, the channels it kept (``report.json``'s ``channels.keep``). ``export`` removes the
other channels for real (``model/channels.py``, Torch-Pruning's dependency graph), checks the smaller model
against the full-size one, and writes:

- ``model.channels.safetensors``: the smaller model's state_dict (your keys, smaller shapes);
- ``channel_plan.json``: the kept channels and the input shape, so ``load_pruned`` can rebuild the smaller
  architecture from your own factory (a fresh dense model) and load those weights into it with ``strict=True``;
- with ``--onnx``, ``model.channels.onnx`` (parity-checked in onnxruntime like every ONNX file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapmtl_cli.config import ChannelPlan
from adapmtl_cli.errors import CheckpointError, ConfigError, ExportError
from adapmtl_cli.export.dense import save_dense
from adapmtl_cli.files.atomic import write_model
from adapmtl_cli.files.reading import read_model, read_safetensors
from adapmtl_cli.model.channels import count_params_flops, remove_channels, tensor_leaves
from adapmtl_cli.model.loading import load_state_into

PLAN_FILE = "channel_plan.json"
WEIGHTS_FILE = "model.channels.safetensors"
ONNX_FILE = "model.channels.onnx"
CHECK_ATOL = 1e-4
"""The smaller model's outputs must match the full-size pruned model's to this (removal is exact up to float
summation order)."""


def _zeros(input_shape: Sequence[int]) -> torch.Tensor:
    return torch.zeros(2, *input_shape)


def smaller_model(model: nn.Module, keep: Mapping[str, Sequence[int]], input_shape: Sequence[int]) -> nn.Module:
    """A copy of ``model`` with every channel not in ``keep`` removed, in eval mode (``model`` is untouched)."""
    return remove_channels(model, _zeros(input_shape), {k: list(v) for k, v in keep.items()}).eval()


@torch.no_grad()
def max_output_diff(a: nn.Module, b: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference between the two models' output tensors on ``inputs`` (eval mode)."""
    worst = 0.0
    for x in inputs:
        for u, v in zip(tensor_leaves(a(x)), tensor_leaves(b(x)), strict=True):
            worst = max(worst, float((u.float() - v.float()).abs().max()))
    return worst


def write_channel_model(
    model: nn.Module,
    keep: Mapping[str, Sequence[int]],
    input_shape: Sequence[int],
    target: Path,
    inputs: Sequence[torch.Tensor],
    *,
    checkpoint: str,
    factory: str | None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the channels, check the result against ``model`` on ``inputs``, write the weights and the plan.

    Returns the smaller model and the ``ChannelExport`` fields (without the ONNX ones).

    Raises:
        ExportError: the smaller model's outputs differ from ``model``'s by more than ``CHECK_ATOL``.
    """
    model.eval()
    smaller = smaller_model(model, keep, input_shape)
    diff = max_output_diff(model, smaller, inputs)
    if not diff <= CHECK_ATOL:
        raise ExportError(
            f"the model with its channels removed differs from the pruned model by {diff:.3g} (> {CHECK_ATOL}); "
            "this is a bug: please report it with the run folder"
        )
    one = torch.zeros(1, *input_shape)
    params_before, flops_before = count_params_flops(model, one)
    params_after, flops_after = count_params_flops(smaller, one)
    state = {k: v.detach().cpu().contiguous() for k, v in smaller.state_dict().items()}
    weights = target / WEIGHTS_FILE
    size = save_dense(state, weights, metadata={"format": "pt", "producer": "adapmtl", "plan": PLAN_FILE})
    plan = ChannelPlan(
        keep={k: list(v) for k, v in keep.items()},
        input_shape=list(input_shape),
        factory=factory,
        checkpoint=checkpoint,
        params_before=params_before,
        params_after=params_after,
        flops_before=flops_before,
        flops_after=flops_after,
    )
    write_model(target / PLAN_FILE, plan)
    fields = {
        "plan": str(target / PLAN_FILE),
        "weights": str(weights),
        "weights_bytes": size,
        "params_before": params_before,
        "params_after": params_after,
        "flops_before": flops_before,
        "flops_after": flops_after,
        "max_abs_diff": diff,
    }
    return smaller, fields


def load_channel_model(model: nn.Module, export_dir: Path | str) -> nn.Module:
    """Rebuild a channel run's smaller model from a fresh dense ``model`` (your factory's) and ``export_dir``.

    ``export_dir`` is what ``adapmtl export RUN`` wrote (it holds ``channel_plan.json`` and
    ``model.channels.safetensors``). Returns a new, smaller module of your model's class, in eval mode, with the
    pruned weights loaded (``strict=True``); ``model`` itself is untouched.

    Raises:
        ConfigError: the folder holds no channel plan (not a channel run's export).
        CheckpointError: the plan or the weights do not fit ``model`` (another architecture).
    """
    folder = Path(export_dir)
    plan_path = folder / PLAN_FILE
    if not plan_path.is_file():
        raise ConfigError(
            f"{str(folder)!r} holds no {PLAN_FILE}: pass the export folder of a --structure channel run "
            "(adapmtl export RUN writes it)"
        )
    plan = read_model(plan_path, ChannelPlan)
    try:
        smaller = smaller_model(model, plan.keep, plan.input_shape)
    except ExportError as exc:
        raise CheckpointError(f"{PLAN_FILE} does not fit this model ({exc}); build it with the run's factory") from exc
    hint = f"export the run again with `adapmtl export RUN` (it writes {WEIGHTS_FILE})"
    state = read_safetensors(folder / WEIGHTS_FILE, CheckpointError, "channel model weights", hint)
    load_state_into(smaller, state, repr(str(folder / WEIGHTS_FILE)))
    return smaller.eval()
