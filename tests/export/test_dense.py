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


# --- the run's weights file: each tied tensor once -----------------------------------------------------------


def test_weights_bytes_store_a_tied_tensor_once_and_read_weights_reties_it(tmp_path: Path) -> None:
    import json

    from real_models import TiedHeads

    from adapmtl_cli.export.dense import read_weights, weights_bytes

    torch.manual_seed(0)
    model = TiedHeads()
    path = tmp_path / "pruned.safetensors"
    path.write_bytes(weights_bytes(model.state_dict(), {"format": "pt"}))
    with safe_open(str(path), framework="pt") as handle:
        assert "heads.normal.0.weight" not in set(handle.keys())
        assert json.loads(handle.metadata()["tied"]) == {"heads.normal.0.weight": "heads.depth.0.weight"}
        assert handle.metadata()["format"] == "pt"
    state = read_weights(path)
    assert set(state) == set(model.state_dict())
    assert state["heads.normal.0.weight"] is state["heads.depth.0.weight"]
    torch.manual_seed(1)
    fresh = TiedHeads()
    fresh.load_state_dict(state, strict=True)
    assert fresh.heads["normal"][0].weight is fresh.heads["depth"][0].weight  # still one tensor
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_weights_bytes_copy_overlapping_views_and_keep_plain_states_unchanged(tmp_path: Path) -> None:
    from safetensors.torch import load

    from adapmtl_cli.export.dense import read_weights, untie_state, weights_bytes

    base = torch.arange(12.0).reshape(3, 4)
    kept, aliases = untie_state({"a": base, "b": base, "row": base[1], "t": base.t(), "empty": torch.zeros(0)})
    assert aliases == {"b": "a"} and list(kept) == ["a", "row", "t", "empty"]
    assert kept["row"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()  # a copy
    path = tmp_path / "w.safetensors"
    path.write_bytes(weights_bytes({"a": base, "b": base, "row": base[1], "t": base.t()}))
    state = read_weights(path)
    assert torch.equal(state["row"], base[1]) and torch.equal(state["t"], base.t()) and state["b"] is state["a"]
    plain = {"x": torch.ones(2), "y": torch.zeros(3)}
    data = weights_bytes(plain, {"format": "pt"})
    assert set(load(data)) == {"x", "y"}
    path.write_bytes(data)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}  # no "tied" entry without ties


@pytest.mark.parametrize(
    ("tied", "message"),
    [
        ("[1, 2]", "has a damaged 'tied' metadata entry"),
        ("{not json", "has a damaged 'tied' metadata entry"),
        ('{"b": "missing"}', "ties 'b' to missing key 'missing'"),
        ('{"a": "a"}', "also stores 'a'"),
    ],
)
def test_read_weights_refuses_a_damaged_tie_table(tmp_path: Path, tied: str, message: str) -> None:
    from safetensors.torch import save_file

    from adapmtl_cli.export.dense import read_weights

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2)}, str(path), metadata={"tied": tied})
    with pytest.raises(ExportError) as info:
        read_weights(path)
    assert str(info.value).startswith(f"{str(path)!r} {message}")


def test_read_weights_refuses_a_truncated_file(tmp_path: Path) -> None:
    from adapmtl_cli.export.dense import read_weights, weights_bytes

    data = weights_bytes({"a": torch.ones(64)})
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=r"cut\.safetensors' is not a readable safetensors file"):
        read_weights(tmp_path / "cut.safetensors")
