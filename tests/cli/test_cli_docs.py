"""``docs/cli.md`` is generated from the Typer app; this test fails when a command or option changed since."""

from __future__ import annotations

from pathlib import Path

from adapmtl_cli.cli.docs import cli_markdown, main

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == cli_markdown(), (
        "docs/cli.md is stale; regenerate it with: python -m adapmtl_cli.cli.docs docs/cli.md"
    )


def test_reference_covers_every_command_and_option() -> None:
    text = cli_markdown()
    for heading in ("`adapmtl prune`", "`adapmtl report`", "`adapmtl inspect`", "`adapmtl data synth`"):
        assert f"## {heading}" in text or f"### {heading}" in text
    for option in ("`--config` PATH", "`--print-config`", "`--format`, `-f` TEXT", "`--compare`", "`--plot` PATH"):
        assert option in text
    assert "`--estimate`, `--no-estimate`" in text


def test_check_mode(tmp_path: Path) -> None:
    path = tmp_path / "cli.md"
    assert main([str(path)]) == 0
    assert main(["--check", str(path)]) == 0
    path.write_text(path.read_text(encoding="utf-8") + "edited\n", encoding="utf-8")
    assert main(["--check", str(path)]) == 1
