"""Shared layout constants and NYU-v2 layout detection: generators write what readers expect; readers stand alone."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from adapmtl_cli.data import layouts
from adapmtl_cli.data.layouts import (
    ADASHARE_FOLDERS,
    ADASHARE_JSON,
    MTAN_FOLDERS,
    MTAN_TASK_FOLDERS,
    TASKONOMY_DOMAINS,
    TASKONOMY_FOLDERS,
    TASKONOMY_JSON,
    TASKONOMY_PRIOR,
    detect_layout,
)
from adapmtl_cli.data.synth.scenes import generate_scenes
from adapmtl_cli.data.synth.taskonomy import generate_taskonomy
from adapmtl_cli.errors import DataError

DATA = Path(layouts.__file__).parent


def test_json_means_adashare_and_wins_over_split_folders(tmp_path: Path) -> None:
    (tmp_path / ADASHARE_JSON).write_text("{}")
    (tmp_path / "train").mkdir()
    assert detect_layout(tmp_path) == "adashare"


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_any_split_folder_means_mtan(tmp_path: Path, split: str) -> None:
    (tmp_path / split).mkdir()
    assert detect_layout(tmp_path) == "mtan"


def test_missing_root_names_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; .*train/ and val/ \(MTAN layout\) or nyu_v2_3task\.json"):
        detect_layout(tmp_path / "nowhere")


def test_neither_layout_names_the_adashare_folders_found(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "seg").mkdir()
    with pytest.raises(DataError, match=r"in neither NYU-v2 layout \(it has img/, seg/ but no nyu_v2_3task\.json\)"):
        detect_layout(tmp_path)


def test_mtan_task_folders_are_the_target_folders() -> None:
    assert MTAN_FOLDERS == ("image", *MTAN_TASK_FOLDERS)


def test_generated_nyuv2_folders_match_the_constants(tmp_path: Path) -> None:
    mtan, adashare = tmp_path / "mtan", tmp_path / "adashare"
    generate_scenes(mtan, train=1, val=1, size=(8, 8), layout="mtan")
    generate_scenes(adashare, train=1, val=1, size=(8, 8), layout="adashare")
    assert detect_layout(mtan) == "mtan" and detect_layout(adashare) == "adashare"
    for split in ("train", "val"):
        assert sorted(p.name for p in (mtan / split).iterdir()) == sorted(MTAN_FOLDERS)
    entry = json.loads((adashare / ADASHARE_JSON).read_text())["train"][0]
    assert tuple(path.split("/")[0] for path in entry) == ADASHARE_FOLDERS


def test_generated_taskonomy_files_match_the_constants(tmp_path: Path) -> None:
    generate_taskonomy(tmp_path, train=1, val=1, size=(8, 8))
    assert (tmp_path / TASKONOMY_PRIOR).is_file()
    entry = json.loads((tmp_path / TASKONOMY_JSON).read_text())["train"][0]
    for folder, path in zip(TASKONOMY_FOLDERS, entry, strict=True):
        assert path.split("/")[1] == folder and path.endswith(f"_domain_{TASKONOMY_DOMAINS[folder]}.png")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize("reader", sorted(p.name for p in DATA.glob("*.py")))
def test_readers_never_import_the_generators(reader: str) -> None:
    generators = [m for m in _imports(DATA / reader) if m.startswith("adapmtl_cli.data.synth")]
    assert not generators, f"data/{reader} imports {generators}; shared names belong in data/layouts.py"
