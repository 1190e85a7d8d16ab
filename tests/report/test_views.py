"""The shared report numbers: best-per-row, layer order, format resolution, run labels, value formatting."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from adapmtl_cli.config import RunReport
from adapmtl_cli.errors import ConfigError
from adapmtl_cli.report.formats import resolve_format
from adapmtl_cli.report.views import Row, fmt, relative_change, run_labels, sorted_layers


def _row(values: tuple[object, ...], better: int) -> Row:
    return Row("summary", "", "x", "float", values, better)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "better", "best"),
    [
        ((0.9, 0.8), +1, {0}),
        ((0.9, 0.8), -1, {1}),
        ((0.9, 0.8), 0, set()),
        ((0.9, 0.9), +1, set()),  # every run ties: nothing stands out
        ((0.9, 0.9, 0.5), +1, {0, 1}),
        ((None, 0.5), +1, set()),  # one number is no comparison
        ((math.nan, 0.5, 0.7), +1, {2}),
        (("a", "b"), +1, set()),
    ],
)
def test_best(values: tuple[object, ...], better: int, best: set[int]) -> None:
    assert _row(values, better).best() == best


def _report() -> RunReport:
    layers = [
        ("b.conv10", "backbone", 10, 0.5),
        ("h.out", "head:a", 30, 0.1),
        ("b.conv2", "backbone", 40, 0.9),
        ("b.conv1", "backbone", 20, 0.7),
    ]
    return RunReport(
        method="adapmtl",
        weighting="equal",
        target_sparsity=0.5,
        overall_sparsity=0.5,
        prunable_params=100,
        zeros=50,
        steps=1,
        wall_seconds=1.0,
        components=[
            {
                "name": "backbone",
                "kind": "backbone",
                "tasks": ["a"],
                "params": 70,
                "zeros": 1,
                "sparsity": 0.1,
                "threshold": None,
            },
            {
                "name": "head:a",
                "kind": "head",
                "tasks": ["a"],
                "params": 30,
                "zeros": 1,
                "sparsity": 0.1,
                "threshold": None,
            },
        ],
        layers=[{"name": n, "component": c, "params": p, "zeros": int(p * s), "sparsity": s} for n, c, p, s in layers],
        tasks={},
        delta_t={"per_task": {}, "overall": 0.0, "convention": "c"},
        task_weights={},
    )


@pytest.mark.parametrize(
    ("sort", "order"),
    [
        ("model", ["b.conv10", "b.conv2", "b.conv1", "h.out"]),
        ("sparsity", ["b.conv2", "b.conv1", "b.conv10", "h.out"]),
        ("params", ["b.conv2", "b.conv1", "b.conv10", "h.out"]),
        ("name", ["b.conv1", "b.conv2", "b.conv10", "h.out"]),  # natural order: 2 before 10
    ],
)
def test_sorted_layers_groups_by_component_then_sorts(sort: str, order: list[str]) -> None:
    assert [x.name for x in sorted_layers(_report(), sort)] == order


def test_sorted_layers_rejects_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="--sort 'size'"):
        sorted_layers(_report(), "size")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "table"),
        ({"fmt": "csv"}, "csv"),
        ({"as_json": True}, "json"),
        ({"markdown": True}, "markdown"),
        ({"fmt": "json", "as_json": True}, "json"),
        ({"output": Path("r.HTML")}, "html"),
        ({"output": Path("r.md")}, "markdown"),
        ({"output": Path("r.txt")}, "table"),
        ({"output": Path("r.csv"), "fmt": "json"}, "json"),
    ],
)
def test_resolve_format(kwargs: dict[str, object], expected: str) -> None:
    fmt_name = kwargs.pop("fmt", None)
    assert resolve_format(fmt_name, **kwargs) == expected  # type: ignore[arg-type]


def test_resolve_format_names_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_format("pdf", markdown=True, sort="size")
    message = str(info.value)
    assert "--format 'pdf'" in message and "pick one format" in message and "--sort 'size'" in message


def test_run_labels() -> None:
    assert run_labels([Path("runs/a"), Path("runs/b")]) == ["a", "b"]
    assert run_labels([Path("x/a"), Path("y/a")]) == ["x/a", "y/a"]
    assert run_labels([Path("x/a"), Path("x/a")]) == ["x/a", "x/a #2"]


def test_run_labels_are_the_shortest_unique_path_suffixes() -> None:
    paths = [Path("/home/me/exp/one/run"), Path("/home/me/exp/two/run"), Path("/home/me/exp/b")]
    assert run_labels(paths) == ["one/run", "two/run", "b"]
    assert run_labels([Path("/a/x/s0/run"), Path("/b/x/s0/run")]) == ["a/x/s0/run", "b/x/s0/run"]


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (0.123456, "ratio", "12.35%"),
        (1234567, "int", "1,234,567"),
        (0.000123456, "threshold", "0.000123"),
        (3.14159, "signed", "+3.14"),
        (12.7, "seconds", "13 s"),
        (0.5, "float", "0.5000"),
        (123.456, "float", "123.46"),
        (None, "float", "-"),
        ("adaptive", "text", "adaptive"),
    ],
)
def test_fmt(value: object, kind: str, text: str) -> None:
    assert fmt(value, kind) == text  # type: ignore[arg-type]


def test_relative_change_follows_the_delta_t_sign() -> None:
    assert relative_change(0.5, 0.55, True) == pytest.approx(10.0)
    assert relative_change(0.2, 0.25, False) == pytest.approx(-25.0)
    assert relative_change(0.0, 0.1, True) is None
