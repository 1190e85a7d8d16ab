"""Sample weights and files shared by the export-stage tests: sparse tensors, raw sparse files, a pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_models import HardShared
from torch import Tensor, nn

from adapmtl_cli.export.sparse_codec import encode_sparse
from adapmtl_cli.export.sparse_tensor import canonicalize_zeros

TASKS = ["segmentation", "depth", "normal"]
_INT_VIEWS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def sparse_weights(shape: tuple[int, ...], sparsity: float, dtype: torch.dtype, seed: int = 0) -> Tensor:
    """A seeded random tensor with (about) ``sparsity`` of its elements exactly zero."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator).to(dtype)
    keep = torch.rand(shape, generator=generator) >= sparsity
    return values * keep.to(dtype)  # randn never yields an exact zero, so sparsity is what was asked


def assert_bit_equal(got: Tensor, want: Tensor) -> None:
    """Same dtype, shape and bits, counting -0.0 in ``want`` as +0.0 (what the format returns)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    view = _INT_VIEWS.get(want.dtype, want.dtype)
    assert torch.equal(got.contiguous().view(view), canonicalize_zeros(want).contiguous().view(view))


def write_raw(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write tensors and metadata as they are, bypassing the encoder (to craft malformed files)."""
    save_file(tensors, str(path), metadata=metadata)
    return path


def valid_parts(sparsity: float = 0.9) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The version-1 parts of one 64x64 float32 tensor ``w`` (bitmask at 0.9, indices at 0.99)."""
    return encode_sparse({"w": sparse_weights((64, 64), sparsity, torch.float32)})


def with_table(metadata: dict[str, str], **changes: object) -> dict[str, str]:
    """``metadata`` with the table entry of ``w`` changed."""
    table = json.loads(metadata["tensors"])
    table["w"].update(changes)
    return {**metadata, "tensors": json.dumps(table)}


def pruned_model(seed: int = 0) -> HardShared:
    """A ``HardShared`` model in eval mode with about 80% exact zeros in its convs and non-trivial BN stats."""
    torch.manual_seed(seed)
    model = HardShared()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(torch.rand_like(module.weight) > 0.8)  # exact zeros, as after baking
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def images(batch: int, seed: int = 1) -> Tensor:
    """A seeded batch of 3x32x48 images."""
    return torch.randn(batch, 3, 32, 48, generator=torch.Generator().manual_seed(seed))
