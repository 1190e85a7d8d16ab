"""Config validation: every bad CLI value reported on one line, named as the user typed it."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from adapmtl_cli.config import SCHEMA_VERSION, PruneConfig, make_prune_config
from adapmtl_cli.errors import ConfigError

REQUIRED = {"checkpoint": "model.pt", "data_dir": "./scenes", "out": "runs/a"}


def _error(**values: object) -> str:
    with pytest.raises(ConfigError) as info:
        make_prune_config(**{**REQUIRED, **values})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_none_values() -> None:
    config = make_prune_config(**REQUIRED, sparsity=None, factory=None)
    assert config.sparsity == 0.9
    assert config.schema_version == SCHEMA_VERSION
    assert config.method == "adapmtl" and config.exclude == []


@pytest.mark.parametrize("sparsity", [-1, 0, 1, 2, math.nan, math.inf])
def test_sparsity_outside_open_interval(sparsity: float) -> None:
    assert _error(sparsity=sparsity).startswith("--sparsity: ")


@pytest.mark.parametrize("sparsity", [1e-6, 0.5, 0.999])
def test_sparsity_inside_open_interval(sparsity: float) -> None:
    assert make_prune_config(**REQUIRED, sparsity=sparsity).sparsity == sparsity


def test_all_problems_on_one_line() -> None:
    message = _error(sparsity=2, steps=0, lr=-1, method="channel")
    parts = message.split("; ")
    assert [p.split(":")[0] for p in parts] == ["--method", "--sparsity", "--steps", "--lr"]
    assert "(got 2)" in parts[1] and "(got 0)" in parts[2]


def test_missing_required_values_are_named() -> None:
    with pytest.raises(ConfigError) as info:
        make_prune_config(out="runs/a")
    assert [p.split(":")[0] for p in str(info.value).split("; ")] == ["--checkpoint", "--data-dir"]


@pytest.mark.parametrize("device", ["tpu", "gpu", "CUDA", ""])
def test_unknown_device(device: str) -> None:
    message = _error(device=device)
    assert message.startswith("--device: ") and repr(device) in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_known_device(device: str) -> None:
    assert make_prune_config(**REQUIRED, device=device).device == device


def test_extra_key_rejected() -> None:
    assert _error(sparsty=0.5).startswith("--sparsty: Extra inputs are not permitted")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ramp_end", 0),
        ("ramp_end", 1.5),
        ("batch_size", 0),
        ("threshold_lr", 0),
        ("log_every", 0),
        ("save_every", 0),
        ("eval_batches", 0),
        ("num_workers", -1),
        ("weighting", "uncertainty"),
        ("method", "magnitude"),
    ],
)
def test_other_bounds(field: str, value: object) -> None:
    assert _error(**{field: value}).startswith(f"--{field.replace('_', '-')}: ")


@pytest.mark.parametrize("field", ["lr", "threshold_lr"])
def test_infinite_learning_rate(field: str) -> None:
    _error(**{field: math.inf})


def test_config_is_frozen_and_round_trips_through_json() -> None:
    config = make_prune_config(**REQUIRED, sparsity=0.8, head=["seg=heads.seg*"], tasks=["seg", "depth"])
    assert PruneConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValidationError):
        config.sparsity = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99])
def test_a_newer_schema_version_is_refused_naming_the_one_this_build_reads(version: int) -> None:
    from adapmtl_cli.config import RunReport

    for model in (PruneConfig, RunReport):
        with pytest.raises(ValidationError) as info:
            model.model_validate({"schema_version": version})
        errors = [e for e in info.value.errors() if e["loc"] == ("schema_version",)]
        assert errors and f"schema_version {version}; this build reads up to {SCHEMA_VERSION}" in errors[0]["msg"]


def test_a_schema_version_below_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a version adapmtl ever wrote"):
        PruneConfig(**REQUIRED, schema_version=0)


def test_typed_paths_are_shown_and_the_identity_is_checked() -> None:
    from adapmtl_cli.config import FileIdentity

    cfg = PruneConfig(**{**REQUIRED, "checkpoint": "/abs/model.pt"}, typed_paths={"checkpoint": "model.pt"})
    assert cfg.shown("checkpoint") == "model.pt" and cfg.shown("data_dir") == "./scenes"
    with pytest.raises(ValidationError):
        FileIdentity(bytes=3, sha256="not a hash")
