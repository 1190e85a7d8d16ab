"""``data synth --test N`` and ``prune --eval-split`` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, invoke, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]


def _print_config(*extra: object) -> str:
    result = invoke("prune", "model.pt", "--data-dir", "scenes", "--out", "runs/a", *extra, "--print-config")
    assert result.exit_code == 0, result.output
    return result.stdout


def test_eval_split_defaults_to_val_and_takes_test() -> None:
    assert 'eval_split = "val"' in _print_config()
    assert 'eval_split = "test"' in _print_config("--eval-split", "test")


def test_an_unknown_eval_split_is_a_one_line_error() -> None:
    message = user_error(invoke("prune", "model.pt", "--data-dir", "s", "--out", "o", "--eval-split", "dev"))
    assert message == "--eval-split: Input should be 'val' or 'test' (got 'dev')"


def test_data_synth_test_writes_a_split_that_data_check_lists(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    result = invoke("data", "synth", root, "--train", 3, "--val", 2, "--test", 2, "--size", "16,16")
    assert result.exit_code == 0, result.output
    assert "wrote 3 train + 2 val + 2 test scenes of 16x16" in result.stdout
    assert sorted(p.name for p in (root / "test" / "depth").iterdir()) == ["0.npy", "1.npy"]
    check = invoke("data", "check", root, "--json")
    assert check.exit_code == 0, check.output
    splits = json.loads(check.stdout)["splits"]
    assert {s: (v["folder"], v["samples"]) for s, v in splits.items()} == {
        "train": ("train", 3),
        "val": ("val", 2),
        "test": ("test", 2),
    }
    table = invoke("data", "check", root)
    assert table.exit_code == 0 and "test" in table.stdout


def test_data_synth_refuses_a_negative_test_count(tmp_path: Path) -> None:
    result = invoke("data", "synth", tmp_path / "s", "--test", "-1")  # refused by the parser, as --train 0 is
    assert result.exit_code == 2 and "Invalid value for '--test'" in result.stderr
    assert not (tmp_path / "s").exists()


def test_prune_on_a_folder_without_a_test_split_says_where_it_looked(
    checkpoint: Path, scenes: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["prune", checkpoint, "--factory", FACTORY, "--data-dir", scenes, "--out", out, "--device", "cpu"]
    message = user_error(invoke(*args, "--eval-split", "test", "-q"))
    assert message.startswith(f"split folder {str(scenes / 'test')!r} does not exist, so there is no held-out test")
    assert not out.exists()


def test_a_test_split_run_is_titled_with_its_split(checkpoint: Path, tmp_path: Path) -> None:
    from adapmtl_cli.data.synth.scenes import generate_scenes

    scenes = tmp_path / "scenes"
    generate_scenes(scenes, train=8, val=4, test=4, size=(32, 48), seed=0)
    out = tmp_path / "run"
    args = ["--factory", FACTORY, "--data-dir", scenes, "--out", out, "--eval-split", "test"]
    result = invoke("prune", checkpoint, *args, "--steps", 2, "--batch-size", 4, "--device", "cpu")
    assert result.exit_code == 0, result.output
    shown = invoke("report", out)
    for text in (result.stdout, shown.stdout):
        assert "Task metrics on the test split" in text and "validation split" not in text
    page = invoke("report", out, "--format", "html").stdout
    assert "Task metrics on the test split" in page and "on the validation split" not in page
