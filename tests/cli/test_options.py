"""The CLI's options show ``PruneConfig``'s defaults and names, and the registries agree with the config."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer.main

from adapmtl_cli.cli import options
from adapmtl_cli.cli.app import app
from adapmtl_cli.config import DEFAULTS, PruneConfig, choices
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.jobs.config_file import SESSION_DEFAULTS, SessionOptions


def _command(*path: str) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _params(*path: str) -> dict[str, Any]:
    return {p.name: p for p in _command(*path).params}


def test_method_choices_are_the_registered_methods() -> None:
    from adapmtl_cli.methods import METHODS

    assert choices("method") == tuple(METHODS)


def test_weighting_and_layer_scale_choices_are_the_implemented_ones() -> None:
    from adapmtl_cli.methods.layer_scales import LAYER_SCALES
    from adapmtl_cli.methods.weighting import WEIGHTINGS

    assert choices("weighting") == WEIGHTINGS
    assert choices("layer_scale") == LAYER_SCALES


def test_the_help_texts_name_the_methods_own_defaults() -> None:
    # The --weighting and --layer-scale help say which method uses what unless told; the registry decides it.
    from adapmtl_cli.methods import DEFAULT_LAYER_SCALE, DEFAULT_WEIGHTING

    own = {"adapmtl": "norm", "adapmtl_paper": "paper"}
    assert DEFAULT_WEIGHTING == {m: own.get(m, "equal") for m in choices("method")}
    assert DEFAULT_LAYER_SCALE["adapmtl"] == "saliency"
    assert {s for m, s in DEFAULT_LAYER_SCALE.items() if m != "adapmtl"} <= {"none", None}


@pytest.mark.parametrize(
    ("notes", "names"),
    [
        (options.WEIGHTING_NOTES, choices("weighting")),
        (options.LAYER_SCALE_NOTES, choices("layer_scale")),
        (options.PRECISION_NOTES, choices("precision")),
        (options.SETTLE_NOTES, choices("settle")),
        (options.EVAL_SPLIT_NOTES, choices("eval_split")),
        (options.LOG_FORMAT_NOTES, choices("log_format", SessionOptions)),
    ],
)
def test_every_note_belongs_to_a_choice(notes: dict[str, str], names: tuple[str, ...]) -> None:
    assert set(notes) <= set(names)


def test_prune_shows_the_config_defaults() -> None:
    params = _params("prune")
    shown = 0
    for name, param in params.items():
        if param.default is None or param.param_type_name != "option":
            continue  # unset: PruneConfig's default (or the method's) applies
        if name in PruneConfig.model_fields:
            assert param.default == getattr(DEFAULTS, name), name
            shown += 1
        elif name in SessionOptions.model_fields:
            assert param.default == getattr(SESSION_DEFAULTS, name), name
    assert shown >= 14  # sparsity, steps, batch size, lr, threshold lr, method, seed, device, precision, ...


def test_inspect_and_demo_take_the_planned_runs_defaults_from_the_config() -> None:
    inspect = _params("inspect")
    for name in ("method", "batch_size", "steps", "device", "layer_scale"):
        assert inspect[name].default is None, name  # unset: the config file's value, then PruneConfig's
    assert f"(default {DEFAULTS.batch_size})" in inspect["batch_size"].help
    assert f"(default {DEFAULTS.steps})" in inspect["steps"].help
    assert f"(default {DEFAULTS.method})" in inspect["method"].help
    demo = _params("demo")
    assert demo["sparsity"].default == DEFAULTS.sparsity
    from adapmtl_cli.jobs.demo import DEMO_STEPS, DENSE_STEPS

    # The CLI repeats the demo's own sizes so that --help does not import torch.
    assert (demo["steps"].default, demo["dense_steps"].default) == (DEMO_STEPS, DENSE_STEPS)


def test_data_defaults_agree_across_commands() -> None:
    assert _params("prune")["data"].default == _params("inspect")["data"].default == DEFAULTS.data
    assert _params("data", "check")["data"].default == DEFAULTS.data


def test_out_and_data_dir_say_they_are_required() -> None:
    prune, inspect = _params("prune"), _params("inspect")
    assert "Required: here or as out in --config." in prune["out"].help
    for params in (prune, inspect):
        assert "Required: here or as data_dir in --config." in params["data_dir"].help


def test_method_help_lists_every_method() -> None:
    text = _params("prune")["method"].help
    assert text.startswith(f"{DEFAULTS.method} (default), or a baseline: ")
    assert all(name in text for name in choices("method"))


def test_report_help_lists_the_formats_and_sorts_it_accepts() -> None:
    # report.views owns these names but imports torch, so the help spells them out and this test keeps them equal.
    from adapmtl_cli.report.formats import FORMATS, SORTS

    params = _params("report")
    assert params["fmt"].help.startswith(options.one_of(FORMATS) + " ")
    assert f": {', '.join(SORTS)}." in params["sort"].help
    assert params["sort"].default == SORTS[0]


def test_one_of() -> None:
    assert options.one_of(["a"]) == "a"
    assert options.one_of(["a", "b", "c"], {"b": "note"}) == "a, b (note) or c"


def test_split_list() -> None:
    assert options.split_list(None) is None
    assert options.split_list(["a,b", " c ", ","]) == ["a", "b", "c"]


def test_parse_bounds() -> None:
    assert options.parse_bounds(["backbone=0.5:0.8", "head:seg=:0.9", "x=0.2:"]) == {
        "backbone": (0.5, 0.8),
        "head:seg": (0.0, 0.9),
        "x": (0.2, 1.0),
    }
    for bad in ("backbone", "backbone=0.5", "=0.1:0.2", "b=x:0.2"):
        with pytest.raises(ConfigError, match="NAME=MIN:MAX"):
            options.parse_bounds([bad])


def test_parse_data_opts() -> None:
    assert options.parse_data_opts(["normals = adashare", "k="]) == {"normals": "adashare", "k": ""}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        options.parse_data_opts(["normals"])


def test_the_command_line_loads_without_torch() -> None:
    # --help must stay fast: every command imports its job (and torch) only when it runs.
    code = "import sys, adapmtl_cli.cli.app; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def _printed_config(*extra: str) -> tuple[str, str]:
    from typer.testing import CliRunner

    args = ["prune", "model.pt", "--data-dir", "d", "--out", "o", "--print-config", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def test_num_workers_is_spelt_as_its_config_key() -> None:
    stdout, stderr = _printed_config("--num-workers", "2")
    assert "num_workers = 2" in stdout and stderr == ""


def test_the_old_workers_spelling_still_works_with_a_deprecation_note() -> None:
    stdout, stderr = _printed_config("--workers", "3")
    assert "num_workers = 3" in stdout
    assert (
        stderr.strip()
        == "warning: --workers is deprecated; use --num-workers (the same value; num_workers in --config)"
    )
    stdout, _ = _printed_config("--workers", "3", "--num-workers", "1")
    assert "num_workers = 1" in stdout  # the current spelling wins


def test_old_spellings_stay_out_of_help() -> None:
    assert _params("prune")["workers"].hidden
