"""Dense safetensors export: strict loading, tied and non-contiguous tensors, metadata, write errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_samples import TASKS, images, pruned_model
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import HardShared

from adapmtl_cli.errors import ExportError
from adapmtl_cli.export.dense import save_dense


def test_dense_file_loads_strictly_into_a_fresh_model(tmp_path: Path) -> None:
    model = pruned_model()
    size = save_dense(model.state_dict(), tmp_path / "model.safetensors", {"sparsity": "0.8"})
    assert size == (tmp_path / "model.safetensors").stat().st_size
    fresh = HardShared()
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    fresh.eval()
    x = images(2)
    with torch.no_grad():
        want, got = model(x), fresh(x)
    assert all(torch.equal(want[name], got[name]) for name in TASKS)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"sparsity": "0.8"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temp file left behind


def test_dense_file_accepts_shared_and_non_contiguous_tensors(tmp_path: Path) -> None:
    weight = torch.randn(4, 6)
    save_dense({"a": weight, "b": weight, "c": weight.t()}, tmp_path / "tied.safetensors")
    loaded = load_file(str(tmp_path / "tied.safetensors"))
    assert torch.equal(loaded["a"], weight) and torch.equal(loaded["b"], weight)
    assert torch.equal(loaded["c"], weight.t())


def test_dense_metadata_must_be_strings(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="strings to strings"):
        save_dense({"a": torch.zeros(1)}, tmp_path / "m.safetensors", {"sparsity": 0.8})  # type: ignore[dict-item]


def test_dense_write_into_missing_folder_is_an_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot write dense safetensors file"):
        save_dense({"a": torch.zeros(1)}, tmp_path / "absent" / "m.safetensors")
