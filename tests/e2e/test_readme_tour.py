"""README's five-minute tour: it prunes the trained checkpoint the demo leaves, and its commands run as written.

Running the commands end to end (with fewer steps) takes a minute: ``python -m pytest -m slow
tests/e2e/test_readme_tour.py``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import invoke  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"


def tour_commands() -> list[list[str]]:
    """The tour's shell block as argument lists (continuation lines joined, comments dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The five-minute tour") :]
    block = section[section.index("```bash\n") + len("```bash\n") :]
    block = block[: block.index("```")].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_tour_prunes_the_checkpoint_the_demo_trains() -> None:
    commands = tour_commands()
    assert all(c[0] == "adapmtl" for c in commands), "the tour runs our commands only (no model made by hand)"
    first = commands[0]
    assert first[1] == "demo"
    out = first[first.index("--out") + 1]
    prune = next(c for c in commands if c[1] == "prune")
    assert prune[2] == f"{out}/model.pt"  # the demo's trained dense model, not a freshly built one
    assert prune[prune.index("--data-dir") + 1] == f"{out}/scenes"  # with the data it was trained on
    assert [c[1] for c in commands] == ["demo", "inspect", "prune", "report", "report", "export"]


def _fast(args: list[str]) -> list[str]:
    """The same command with fewer steps, for the test's time (the options a user may also pass)."""
    if args[1] == "demo":
        return [*args, "--dense-steps", "10", "--steps", "4"]
    if args[1] == "prune":
        at = args.index("--steps")
        return [*args[: at + 1], "4", *args[at + 2 :]]
    if args[1] == "inspect":
        return [*args, "--no-estimate"]
    return args


@pytest.mark.slow
@pytest.mark.onnx
def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for args in tour_commands():
            result = invoke(*_fast(args)[1:])
            assert result.exit_code == 0, (args, result.output)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "runs" / "a" / "export" / "model.onnx").is_file()
