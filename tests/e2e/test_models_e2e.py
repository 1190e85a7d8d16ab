"""Real-code model shapes end to end through the CLI: tied weights (prune, export), deep supervision (inspect).

A tied model (two heads sharing one conv weight) used to end in safetensors' "shared tensors" traceback when
``prune`` saved it; here it is pruned once, counted once, saved once and exported with the tie intact. An
MTI-Net-style output used to be mapped to its first auxiliary prediction; here the final heads are found, and
``--outputs TASK=PATH`` picks any leaf by path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import invoke, read_report  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

REAL_MODELS = Path(__file__).parents[1] / "real_models.py"
sys.path.insert(0, str(REAL_MODELS.parent))

import real_models  # noqa: E402


def test_a_tied_model_prunes_saves_once_and_exports_tied(scenes: Path, tmp_path: Path) -> None:
    checkpoint, run = tmp_path / "tied.pt", tmp_path / "run"
    torch.save(real_models.tied_heads().state_dict(), checkpoint)
    factory = f"{REAL_MODELS}:tied_heads"
    args = ("--steps", "4", "--batch-size", "4", "--device", "cpu", "--sparsity", "0.8", "-q")
    result = invoke("prune", checkpoint, "--factory", factory, "--data-dir", scenes, "--out", run, *args)
    assert result.exit_code == 0, result.output

    with safe_open(str(run / "pruned.safetensors"), framework="pt") as handle:
        assert "heads.normal.0.weight" not in set(handle.keys())  # stored once, under its first name
        assert json.loads(handle.metadata()["tied"]) == {"heads.normal.0.weight": "heads.depth.0.weight"}
    report = read_report(run)
    model = real_models.tied_heads()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert report.prunable_params == sum(m.weight.numel() for n, m in convs.items() if n != "heads.normal.0")
    assert "heads.normal.0" not in {layer.name for layer in report.layers}

    result = invoke("export", run, "--onnx")
    assert result.exit_code == 0, result.output
    model.load_state_dict(load_file(str(run / "export" / "model.safetensors")), strict=True)
    assert model.heads["normal"][0].weight is model.heads["depth"][0].weight
    zeros = sum(int((m.weight == 0).sum()) for n, m in convs.items() if n != "heads.normal.0")
    assert zeros == report.zeros and abs(zeros / report.prunable_params - 0.8) <= 0.001
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    assert manifest["onnx_max_abs_diff"] <= 1e-4


def _inspect(scenes: Path, tmp_path: Path, factory: str, *extra: str) -> dict[str, object]:
    checkpoint = tmp_path / "mti.pt"
    torch.save(real_models.deep_supervision().state_dict(), checkpoint)
    result = invoke(
        "inspect", checkpoint, "--factory", f"{REAL_MODELS}:{factory}", "--data-dir", scenes, "--json", *extra
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_deep_supervision_maps_the_final_heads(scenes: Path, tmp_path: Path) -> None:
    found = _inspect(scenes, tmp_path, "deep_supervision")
    assert found["outputs"] == {"segmentation": "semseg", "depth": "depth", "normal": "normals"}
    unreached = found["unreached"]
    assert isinstance(unreached, list) and not [m for m in unreached if m.startswith("final")]


def test_outputs_by_path_picks_any_leaf(scenes: Path, tmp_path: Path) -> None:
    found = _inspect(
        scenes, tmp_path, "deep_supervision_only", "--outputs", "segmentation=scale_1.semseg,depth=depth,normal=normals"
    )
    assert found["outputs"] == {
        "segmentation": "deep_supervision.scale_1.semseg",
        "depth": "depth",
        "normal": "normals",
    }
    assert found["output_mapping"] == "--outputs"
