"""``prune --config FILE`` / ``--print-config``: precedence, validation before work, TOML round trips."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapmtl_cli.config import PruneConfig
from adapmtl_cli.jobs.config_file import prune_config_toml, resolve_prune_config, to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import FACTORY, CliRun, invoke, read_report, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

REQUIRED = {"checkpoint": "model.pt", "data_dir": "./scenes", "out": "runs/a"}


def _print_config(*args: object) -> str:
    result = invoke("prune", *args, "--print-config")
    assert result.exit_code == 0, result.output
    return result.stdout


# --- the command line ---------------------------------------------------------------------------------


def test_print_config_round_trip(tmp_path: Path) -> None:
    first = _print_config(
        "model.pt", "--factory", FACTORY, "--data-dir", "scenes", "--out", "runs/x", "--tasks", "seg,depth",
        "--sparsity", "0.75", "--exclude", "backbone.stem*", "--eval-batches", "2", "--lr", "3e-05",
    )  # fmt: skip
    path = tmp_path / "prune.toml"
    path.write_text(first, encoding="utf-8")
    assert _print_config("--config", path) == first
    cfg = PruneConfig(**tomllib.loads(first))
    assert cfg.tasks == ["seg", "depth"] and cfg.sparsity == 0.75 and cfg.lr == 3e-05
    assert cfg.exclude == ["backbone.stem*"] and cfg.eval_batches == 2 and cfg.weighting is None


def test_command_line_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prune.toml"
    path.write_text(
        'checkpoint = "a.pt"\ndata_dir = "d"\nout = "o"\nsteps = 10\nsparsity = 0.5\ntasks = ["depth"]\n',
        encoding="utf-8",
    )
    text = _print_config("b.pt", "--config", path, "--steps", "7", "--tasks", "seg,normal")
    cfg = PruneConfig(**tomllib.loads(text))
    assert (cfg.checkpoint, cfg.steps, cfg.sparsity, cfg.tasks) == ("b.pt", 7, 0.5, ["seg", "normal"])
    assert cfg.batch_size == PruneConfig.model_fields["batch_size"].default  # neither: the model's default


def test_unknown_keys_are_named_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "prune.toml"
    path.write_text('checkpoint = "a.pt"\ndata_dir = "d"\nout = "o"\nbatch-size = 4\nfoo = 1\n', encoding="utf-8")
    message = user_error(invoke("prune", "--config", path, "--print-config"))
    assert f"{str(path)!r} has unknown keys 'batch-size' (did you mean 'batch_size'?), 'foo'" in message


def test_every_problem_on_one_line_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "prune.toml"
    out = tmp_path / "run"
    path.write_text(
        f'checkpoint = "a.pt"\nout = "{out}"\nsparsity = 1.5\nsteps = "many"\nbogus = 1\n', encoding="utf-8"
    )
    message = user_error(invoke("prune", "--config", path, "--log-format", "xml"))
    parts = message.split("; ")
    assert parts[0].startswith(f"{str(path)!r} has unknown keys 'bogus'")
    assert any(p.startswith(f"--sparsity (from {str(path)!r}): ") and "(got 1.5)" in p for p in parts)
    assert any(p.startswith(f"--steps (from {str(path)!r}): ") for p in parts)
    assert any(p.startswith("--data-dir: required") for p in parts)
    assert any(p.startswith("--log-format: ") and "'xml'" in p for p in parts)
    assert not out.exists()


def test_config_file_missing_or_malformed(tmp_path: Path) -> None:
    assert "does not exist" in user_error(invoke("prune", "--config", tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n", encoding="utf-8")
    message = user_error(invoke("prune", "--config", bad))
    assert "is not valid TOML" in message and "line 1" in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"steps = " + b"[" * 300_000 + b"]" * 300_000 + b"\n", "nests arrays or tables too deep"),
        (b'out = "\xff"\n', "is not UTF-8 text"),
        (b"schema_version = 99\n", "written by a newer adapmtl (schema_version 99; this build reads up to 1)"),
    ],
)
def test_config_file_that_is_not_plain_toml(tmp_path: Path, data: bytes, expected: str) -> None:
    bad = tmp_path / "odd.toml"
    bad.write_bytes(data)
    message = user_error(
        invoke("prune", "model.pt", "--data-dir", "d", "--out", "o", "--config", bad, "--print-config")
    )
    assert expected in message and "odd.toml" in message


def test_session_keys_in_the_file() -> None:
    cfg, session = resolve_prune_config({**REQUIRED, "quiet": True, "log_format": "jsonl", "tensorboard": "tb"})
    assert session.quiet and session.log_format == "jsonl" and session.tensorboard == "tb"
    assert "quiet" not in prune_config_toml(cfg)  # not part of the run


def test_a_run_stores_its_config_as_toml(pruned_run: CliRun) -> None:
    stored = (pruned_run.path / "config.toml").read_text(encoding="utf-8")
    assert PruneConfig(**tomllib.loads(stored)) == PruneConfig(
        **json.loads((pruned_run.path / "config.json").read_text())
    )
    assert _print_config("--config", pruned_run.path / "config.toml") == stored


def test_config_toml_repeats_a_run(pruned_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "again"
    args = ("--out", out, "--steps", "2", "--eval-batches", "1", "-q")
    result = invoke("prune", "--config", pruned_run.path / "config.toml", *args)
    assert result.exit_code == 0, result.output
    old = json.loads((pruned_run.path / "config.json").read_text())
    new = json.loads((out / "config.json").read_text())
    assert {**old, "out": str(out), "steps": 2, "eval_batches": 1} == new
    assert read_report(out).steps == 2
    assert (out / "config.toml").is_file()


def test_a_refused_start_leaves_the_other_runs_toml_alone(pruned_run: CliRun) -> None:
    before = (pruned_run.path / "config.toml").read_text(encoding="utf-8")
    message = user_error(invoke("prune", "--config", pruned_run.path / "config.toml", "--steps", "3"))
    assert "already holds files" in message
    assert (pruned_run.path / "config.toml").read_text(encoding="utf-8") == before


# --- the TOML writer ----------------------------------------------------------------------------------


def test_to_toml_values_and_tables() -> None:
    text = to_toml(
        {
            "s": 'a "quoted" \\ path\nnext\ttab\x7f é',
            "f": 1e-05,
            "big": 1e300,
            "n": math.nan,
            "i": -3,
            "b": True,
            "l": ["x", "y"],
            "none": None,
            "method": {"name": "gmp", "inner": {"k": 1}},
        }
    )
    back = tomllib.loads(text)
    assert back["s"] == 'a "quoted" \\ path\nnext\ttab\x7f é'
    assert back["f"] == 1e-05 and back["big"] == 1e300 and math.isnan(back["n"])
    assert back["i"] == -3 and back["b"] is True and back["l"] == ["x", "y"]
    assert "none" not in back and "# none is unset (default)" in text
    assert back["method"] == {"name": "gmp", "inner": {"k": 1}}
    assert "[method]" in text and "[method.inner]" in text


_scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.one_of(_scalars, st.lists(st.text(max_size=8), max_size=4)),
        max_size=6,
    )
)
def test_to_toml_round_trips(values: dict[str, object]) -> None:
    assert tomllib.loads(to_toml(values)) == values


def test_prune_config_toml_round_trips_every_field() -> None:
    cfg = PruneConfig(**REQUIRED, tasks=["seg"], outputs=["seg", "_"], weighting="equal", eval_batches=3)
    assert PruneConfig(**tomllib.loads(prune_config_toml(cfg))) == cfg


def test_a_damaged_config_toml_is_rewritten_from_config_json(pruned_run: CliRun, tmp_path: Path) -> None:
    from adapmtl_cli.jobs.config_file import sync_run_config_toml

    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.json").write_bytes((pruned_run.path / "config.json").read_bytes())
    (run / "config.toml").write_bytes(b"\xff\xfe not text")
    assert sync_run_config_toml(run) == run / "config.toml"
    assert (run / "config.toml").read_bytes() == (pruned_run.path / "config.toml").read_bytes()
