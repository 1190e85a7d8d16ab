"""``adapmtl report`` in every format, from the shared real run: each carries report.json's numbers, equal.

Human formats (table, Markdown, HTML) print numbers with the precision ``report_data.fmt`` gives each kind; CSV
and JSON carry them at full precision. ``--compare`` runs against a second run folder made from the first.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from adapmtl_cli.config import RunReport
from adapmtl_cli.report.views import fmt

pytest.register_assert_rewrite("fixtures_e2e")

from fixtures_e2e import CliRun, copy_run, invoke, read_report, user_error  # noqa: E402

pytest_plugins = ["fixtures_e2e"]

HUMAN = ("table", "markdown", "html")


def _visible(text: str) -> str:
    """The text a reader sees: HTML tags and the embedded JSON removed, entities decoded."""
    from html import unescape

    text = re.sub(r'<script type="application/json".*?</script>', "", text, flags=re.S)
    return unescape(re.sub(r"<[^>]+>", " ", text))


def expected_strings(rep: RunReport, *, layers: bool) -> list[str]:
    """Every number of report.json as a human format prints it."""
    out = [
        fmt(rep.target_sparsity, "ratio"),
        fmt(rep.overall_sparsity, "ratio"),
        fmt(rep.prunable_params, "int"),
        fmt(rep.zeros, "int"),
        f"{rep.delta_t.overall:+.2f}%",
    ]
    for c in rep.components:
        out += [c.name, fmt(c.params, "int"), fmt(c.sparsity, "ratio"), fmt(c.threshold, "threshold")]
    for task, tm in rep.tasks.items():
        for metric, dense in tm.dense.items():
            out += [metric, fmt(dense, "float"), fmt(tm.pruned[metric], "float")]
        if task in rep.delta_t.per_task:
            out.append(f"{task} {rep.delta_t.per_task[task]:+.2f}")
    out += [f"{task} {fmt(w, 'float')}" for task, w in rep.task_weights.items()]
    bounded = rep.scores["delta_t_bounded"]
    out += ["bounded Δ_T", f"{bounded.overall:+.2f}%"]
    out += [f"{task} {v:+.2f}" for task, v in bounded.per_task.items()]
    out += ["collapsed tasks", ": " + (", ".join(t for t, c in rep.collapsed.items() if c) or "none") + " ("]
    if layers:
        for x in rep.layers:
            out += [x.name, fmt(x.params, "int"), fmt(x.sparsity, "ratio")]
    return out


def _missing(text: str, expected: list[str]) -> list[str]:
    return [s for s in expected if s not in text]


@pytest.fixture(scope="module")
def other_run(pruned_run: CliRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second finished run: the shared one with a lower sparsity and a better segmentation mIoU."""
    run = copy_run(pruned_run.path, tmp_path_factory.mktemp("cmp") / "b")
    rep = read_report(run)
    seg = rep.tasks["segmentation"]
    tasks = {**rep.tasks, "segmentation": seg.model_copy(update={"pruned": {**seg.pruned, "miou": 0.987654}})}
    changed = rep.model_copy(update={"overall_sparsity": 0.712345, "tasks": tasks, "wall_seconds": 9999.0})
    (run / "report.json").write_text(changed.model_dump_json(indent=2))
    return run


@pytest.mark.parametrize("fmt_name", HUMAN)
def test_human_formats_carry_every_number(pruned_run: CliRun, fmt_name: str) -> None:
    result = invoke("report", pruned_run.path, "--format", fmt_name, "--layers")
    assert result.exit_code == 0, result.output
    rep = read_report(pruned_run.path)
    assert _missing(_visible(result.stdout), expected_strings(rep, layers=True)) == []


def test_json_is_report_json(pruned_run: CliRun) -> None:
    for args in (("--format", "json"), ("--json",), ("-f", "json", "--layers", "--sort", "name")):
        result = invoke("report", pruned_run.path, *args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == json.loads((pruned_run.path / "report.json").read_text())


def test_csv_values_equal_report_json(pruned_run: CliRun) -> None:
    result = invoke("report", pruned_run.path, "--format", "csv")
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(table[0]) == ["section", "name", "field", "value"]
    got = {(r["section"], r["name"], r["field"]): r["value"] for r in table}
    rep = read_report(pruned_run.path)

    def num(key: tuple[str, str, str]) -> float:
        return float(got[key])

    assert num(("summary", "", "overall_sparsity")) == rep.overall_sparsity
    assert num(("summary", "", "target_sparsity")) == rep.target_sparsity
    assert num(("summary", "", "zeros")) == rep.zeros
    for c in rep.components:
        assert num(("component", c.name, "sparsity")) == c.sparsity
        assert num(("component", c.name, "params")) == c.params
        assert got[("component", c.name, "threshold")] == ("" if c.threshold is None else repr(c.threshold))
    for task, tm in rep.tasks.items():
        for metric, dense in tm.dense.items():
            assert num(("metric", f"{task}.{metric}", "dense")) == dense
            assert num(("metric", f"{task}.{metric}", "pruned")) == tm.pruned[metric]
            assert got[("metric", f"{task}.{metric}", "better")] == (
                "higher" if tm.higher_is_better[metric] else "lower"
            )
    for task, v in rep.delta_t.per_task.items():
        assert num(("delta_t", "Δ_T", task)) == v
    assert num(("delta_t", "Δ_T", "overall")) == rep.delta_t.overall
    for task, w in rep.task_weights.items():
        assert num(("task_weight", "weight", task)) == w
    bounded = rep.scores["delta_t_bounded"]
    assert num(("delta_t", "bounded Δ_T", "overall")) == bounded.overall
    for task, v in bounded.per_task.items():
        assert num(("delta_t", "bounded Δ_T", task)) == v
    for task, flag in rep.collapsed.items():
        assert got[("collapse", "collapsed", task)] == ("yes" if flag else "no")
    for x in rep.layers:
        assert num(("layer", x.name, "sparsity")) == x.sparsity
        assert num(("layer", x.name, "zeros")) == x.zeros


def test_html_embeds_report_json(pruned_run: CliRun) -> None:
    from adapmtl_cli.report.html import embedded_json

    result = invoke("report", pruned_run.path, "--format", "html")
    assert result.exit_code == 0, result.output
    assert embedded_json(result.stdout) == json.loads((pruned_run.path / "report.json").read_text())
    assert result.stdout.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("name", "fmt_name"), [("r.md", "markdown"), ("r.csv", "csv"), ("r.json", "json"), ("r.html", "html")]
)
def test_output_writes_the_file_and_infers_the_format(
    pruned_run: CliRun, tmp_path: Path, name: str, fmt_name: str
) -> None:
    out = tmp_path / name
    result = invoke("report", pruned_run.path, "--output", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out} ({fmt_name})" in result.stdout
    printed = invoke("report", pruned_run.path, "--format", fmt_name).stdout
    assert out.read_text(encoding="utf-8").rstrip("\n") == printed.rstrip("\n")
    assert out.stat().st_mode & 0o044 == 0o044  # as readable as any file the user writes (umask 022 in CI)


def test_output_table_is_plain_text(pruned_run: CliRun, tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    assert invoke("report", pruned_run.path, "-o", out, "--layers").exit_code == 0
    text = out.read_text(encoding="utf-8")
    assert "\x1b[" not in text
    assert _missing(text, expected_strings(read_report(pruned_run.path), layers=True)) == []


def _layer_order(markdown: str) -> list[str]:
    return [line.split(" | ")[0].lstrip("| ") for line in markdown.splitlines() if line.startswith("| backbone.")]


@pytest.mark.parametrize("sort", ["model", "sparsity", "params", "name"])
def test_sort_orders_layers_within_each_component(pruned_run: CliRun, sort: str) -> None:
    rep = read_report(pruned_run.path)
    result = invoke("report", pruned_run.path, "--markdown", "--layers", "--sort", sort)
    assert result.exit_code == 0, result.output
    got = _layer_order(result.stdout)
    backbone = [x for x in rep.layers if x.component == "backbone"]
    by = {x.name: x for x in backbone}
    assert sorted(got) == sorted(by)
    if sort == "model":
        assert got == [x.name for x in backbone]
    elif sort == "sparsity":
        assert [by[n].sparsity for n in got] == sorted((x.sparsity for x in backbone), reverse=True)
    elif sort == "params":
        assert [by[n].params for n in got] == sorted((x.params for x in backbone), reverse=True)
    else:
        assert "backbone.layer1.0.conv1" in got[: got.index("backbone.layer2.0.conv1")]


def test_layers_are_grouped_by_component_in_the_table(pruned_run: CliRun) -> None:
    result = invoke("report", pruned_run.path, "--layers", "--sort", "params")
    lines = [x for x in result.stdout.splitlines() if "│ heads.depth." in x or "│ backbone." in x]
    groups = [line.split("│")[2].strip().split(".")[0] for line in lines]
    assert groups == sorted(groups, key=lambda g: g != "backbone")  # backbone block first, then the heads


# --- comparison -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt_name", HUMAN)
def test_compare_shows_both_runs_and_marks_the_best(pruned_run: CliRun, other_run: Path, fmt_name: str) -> None:
    result = invoke("report", pruned_run.path, other_run, "--compare", "--format", fmt_name)
    assert result.exit_code == 0, result.output
    text = _visible(result.stdout)
    a, b = read_report(pruned_run.path), read_report(other_run)
    assert pruned_run.path.name in text and other_run.name in text
    for rep in (a, b):
        assert fmt(rep.overall_sparsity, "ratio") in text
        assert fmt(rep.tasks["segmentation"].pruned["miou"], "float") in text
    best_sparsity, best_miou = fmt(a.overall_sparsity, "ratio"), fmt(0.987654, "float")
    if fmt_name == "table":
        assert f"{best_sparsity} ★" in text and f"{best_miou} ★" in text
    elif fmt_name == "markdown":
        assert f"**{best_sparsity}**" in text and f"**{best_miou}**" in text
    else:
        assert f'<span class="best">{best_sparsity}</span>' in result.stdout
        assert f'<span class="best">{best_miou}</span>' in result.stdout


def test_compare_csv_has_a_column_per_run_and_the_best(pruned_run: CliRun, other_run: Path) -> None:
    result = invoke("report", pruned_run.path, other_run, "--compare", "--format", "csv")
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    a, b = pruned_run.path.name, other_run.name
    assert list(table[0]) == ["section", "name", "field", a, b, "best"]
    row = next(r for r in table if r["field"] == "overall_sparsity")
    assert float(row[a]) == read_report(pruned_run.path).overall_sparsity and float(row[b]) == 0.712345
    assert row["best"] == a
    miou = next(r for r in table if r["name"] == "segmentation.miou" and r["field"] == "pruned")
    assert miou["best"] == b
    wall = next(r for r in table if r["field"] == "wall_seconds")
    assert wall["best"] == a
    target = next(r for r in table if r["field"] == "target_sparsity")
    assert target["best"] == ""  # a setting, not an outcome


def test_compare_json_keeps_each_report(pruned_run: CliRun, other_run: Path) -> None:
    result = invoke("report", pruned_run.path, other_run, "--compare", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["label"] for r in doc["runs"]] == [pruned_run.path.name, other_run.name]
    assert doc["runs"][1]["report"] == json.loads((other_run / "report.json").read_text())
    row = next(r for r in doc["rows"] if r["field"] == "overall_sparsity")
    assert row["best"] == [pruned_run.path.name] and row["better"] == "higher"


def test_compare_labels_runs_with_the_same_folder_name(pruned_run: CliRun, tmp_path: Path) -> None:
    twin = copy_run(pruned_run.path, tmp_path / pruned_run.path.name)
    result = invoke("report", pruned_run.path, twin, "--compare", "--format", "csv")
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split(",")
    name = pruned_run.path.name
    assert header[3:5] == [f"{pruned_run.path.parent.name}/{name}", f"{twin.parent.name}/{name}"]  # shortest unique


# --- errors -----------------------------------------------------------------------------------------


def test_several_runs_need_compare(pruned_run: CliRun, other_run: Path) -> None:
    assert "pass --compare" in user_error(invoke("report", pruned_run.path, other_run))


def test_unknown_format_and_sort_are_named_together(pruned_run: CliRun) -> None:
    message = user_error(invoke("report", pruned_run.path, "--format", "pdf", "--sort", "size"))
    assert "--format 'pdf'" in message and "--sort 'size'" in message and "; " in message


def test_conflicting_format_flags(pruned_run: CliRun) -> None:
    assert "pick one format" in user_error(invoke("report", pruned_run.path, "--json", "--format", "csv"))


def test_compare_names_every_missing_run(pruned_run: CliRun, tmp_path: Path) -> None:
    message = user_error(invoke("report", pruned_run.path, tmp_path / "x", tmp_path / "y", "--compare"))
    assert str(tmp_path / "x") in message and str(tmp_path / "y") in message


def test_output_into_a_folder(pruned_run: CliRun, tmp_path: Path) -> None:
    assert "is a folder" in user_error(invoke("report", pruned_run.path, "--output", tmp_path))


def test_compare_warns_on_stderr_when_the_dense_baselines_differ(
    pruned_run: CliRun, other_run: Path, tmp_path: Path
) -> None:
    same = invoke("report", pruned_run.path, other_run, "--compare", "--format", "markdown")
    assert same.exit_code == 0 and "different dense baselines" not in same.output
    moved = copy_run(other_run, tmp_path / "c")
    rep = read_report(moved)
    seg = rep.tasks["segmentation"]
    tasks = {**rep.tasks, "segmentation": seg.model_copy(update={"dense": {**seg.dense, "miou": 0.5}})}
    (moved / "report.json").write_text(rep.model_copy(update={"tasks": tasks}).model_dump_json(indent=2))
    for fmt_name in ("markdown", "csv", "json"):
        result = invoke("report", pruned_run.path, moved, "--compare", "--format", fmt_name)
        assert result.exit_code == 0, result.output
        assert result.stderr.startswith("warning: the runs have different dense baselines"), fmt_name
    table = invoke("report", pruned_run.path, moved, "--compare")
    assert "warning: the runs have different dense baselines" in table.stdout and table.stderr == ""
