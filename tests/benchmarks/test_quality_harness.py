"""The quality benchmark's harness: cell keys, paired intervals, row specs and the report built from the JSON."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import quality  # noqa: E402
import quality_stats as qs  # noqa: E402


def _cell(**change: object) -> quality.Cell:
    values: dict[str, object] = dict(
        bench=quality.BENCHES["aspp"],
        row="adapmtl",
        options=(("method", "adapmtl"),),
        sparsity=0.9,
        seed=0,
        dense_seed=0,
        split="test",
        steps=200,
        lr=5e-4,
        threads=1,
    )
    values.update(change)
    return quality.Cell(**values)  # type: ignore[arg-type]


def test_the_cell_key_is_stable_and_changes_with_every_setting_that_decides_the_result() -> None:
    base = _cell()
    assert base.key == _cell().key  # same settings, same key (no time, no process id)
    assert base.key == qs.cell_key(base.settings())
    changed = [
        _cell(sparsity=0.95),
        _cell(seed=1),
        _cell(dense_seed=1),
        _cell(split="dev"),
        _cell(steps=100),
        _cell(lr=1e-3),
        _cell(threads=2),
        _cell(device="cuda"),
        _cell(options=(("allocation", "frozen"), ("method", "adapmtl"))),
        _cell(bench=quality.BENCHES["resnet"]),
    ]
    keys = {c.key for c in changed}
    assert base.key not in keys and len(keys) == len(changed)


def test_the_label_of_a_row_does_not_enter_the_key_but_its_options_do() -> None:
    assert _cell(row="renamed").key == _cell().key


def test_the_harness_version_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _cell().key
    monkeypatch.setattr(qs, "HARNESS_VERSION", qs.HARNESS_VERSION + 1)
    assert _cell().key != before


def test_a_t_interval_matches_a_hand_computed_one() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sd sqrt(2.5), t(4) = 2.776
    iv = qs.interval(values)
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert iv.mean == 3.0 and iv.low == pytest.approx(3 - half) and iv.high == pytest.approx(3 + half)
    assert iv.excludes_zero
    assert not qs.interval([-1.0, 1.0, 0.5]).excludes_zero
    assert not qs.interval([4.0]).excludes_zero  # one value: no interval, never "significant"
    with pytest.raises(ValueError):
        qs.interval([1.0, math.nan])


def _run(method: str, seed: int, dt: float, dense_seed: int = 0, sparsity: float = 0.9) -> dict[str, object]:
    return {
        "benchmark": "b",
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "dense_seed": dense_seed,
        "split": "test",
        "delta_t": dt,
        "score_bounded": dt,
        "collapsed": {"seg": False},
        "achieved_sparsity": sparsity,
        "components": {"backbone": 0.5, "head:seg": 0.95},
    }


def test_paired_differences_use_only_the_pairs_both_rows_have() -> None:
    runs = [_run("adapmtl", s, 1.0 + s) for s in range(4)] + [_run("gmp", s, 0.5 + s) for s in range(3)]
    runs.append(_run("gmp", 0, 100.0, dense_seed=1))  # no adapmtl partner: ignored
    iv = qs.paired(runs, "adapmtl", "gmp")[("b", 0.9)]
    assert iv.n == 3 and iv.mean == pytest.approx(0.5) and iv.low == pytest.approx(0.5)


def test_the_report_marks_partial_results_and_reads_every_row_from_the_json() -> None:
    runs = [_run("adapmtl", s, 1.0 + 0.1 * s) for s in range(3)]
    runs += [_run("adapmtl-frozen", s, 0.2 * s) for s in range(3)]
    runs += [_run("dense+finetune", s, 2.0) for s in range(3)]
    text = qs.render_markdown(
        {"runs": runs, "partial": "3 of 12 cells done", "benchmarks": [], "frozen_settings": {"steps": 200}}
    )
    assert "PARTIAL" in text and "3 of 12 cells done" in text
    assert "| adapmtl-frozen | 3 |" in text and "| dense+finetune | 3 |" in text
    assert "Against adapmtl-frozen:" in text and "excludes 0 (bounded score:" in text
    assert "the default is ahead in 3 of 3 pairs" in text
    assert "| adapmtl-frozen | 3 | +0.20 [" in text and "| 3/3 | 0 |" in text
    assert "Cost of pruning" in text
    complete = qs.render_markdown({"runs": runs, "notes": ["rows ran on two code versions"]})
    assert "PARTIAL" not in complete and "- rows ran on two code versions" in complete


def test_wins_count_the_pairs_and_resist_one_collapsed_cell() -> None:
    runs = [_run("adapmtl", s, 1.0) for s in range(5)]
    runs += [_run("adapmtl-frozen", s, 0.5) for s in range(4)] + [_run("adapmtl-frozen", 4, 900.0)]
    assert qs.wins(runs, "adapmtl", "adapmtl-frozen", "b", 0.9) == (4, 5)
    assert qs.paired(runs, "adapmtl", "adapmtl-frozen")[("b", 0.9)].mean < 0  # the mean follows the outlier
    assert qs.wins(runs, "adapmtl", "gmp", "b", 0.9) == (0, 0)


def test_a_row_spec_takes_options_and_keeps_commas_inside_brackets() -> None:
    specs = quality.split_rows("adapmtl,adapmtl[allocation=marginal,threshold_lr=0.05],gmp")
    assert specs == ["adapmtl", "adapmtl[allocation=marginal,threshold_lr=0.05]", "gmp"]
    label, options = quality.parse_row(specs[1], quality.ROWS)
    assert label == specs[1]
    assert options == {"method": "adapmtl", "allocation": "marginal", "threshold_lr": 0.05}
    with pytest.raises(SystemExit, match="unknown row"):
        quality.parse_row("nope", quality.ROWS)


def test_every_row_of_the_contract_is_defined_and_names_a_registered_method() -> None:
    from adapmtl_cli.methods import METHODS

    contract = (
        "adapmtl adapmtl-frozen adapmtl-paper adapmtl+equal adapmtl+norm dense+finetune disparse disparse-dynamic "
        "snip imp lth gmp str_global str_layer magnitude_oneshot uniform_magnitude"
    ).split()
    assert set(contract) <= set(quality.ROWS)
    for row, options in quality.ROWS.items():
        assert options["method"] in METHODS or (row == "dense+finetune" and options["method"] == "dense")


def test_the_remaining_time_estimate_uses_each_rows_measured_cost() -> None:
    cells = [_cell(), _cell(seed=1), _cell(row="gmp", options=(("method", "gmp"),))]
    plan = quality.Plan(cells, done={cells[0].key: {"method": "adapmtl", "cpu_seconds": 100.0}})
    assert plan.pending() == cells[1:]
    assert plan.estimate(plan.pending()) == pytest.approx(200.0)  # adapmtl's 100 s; gmp falls back to the mean


def test_a_const_option_sets_a_module_constant_for_one_cell_and_restores_it() -> None:
    import cell_runner

    from adapmtl_cli.sparsity import allocation

    before = allocation.RUN_RATE
    options = {"method": "adapmtl", "allocation": "marginal", "const:sparsity.allocation.RUN_RATE": 0.01}
    with cell_runner.constants(dict(options)) as rest:
        assert allocation.RUN_RATE == 0.01 and "const:sparsity.allocation.RUN_RATE" not in rest
        assert rest == {"method": "adapmtl", "allocation": "marginal"}
    assert allocation.RUN_RATE == before
    with pytest.raises(SystemExit, match="no constant"), cell_runner.constants({"const:sparsity.allocation.NOPE": 1}):
        pass


def test_dense_finetune_is_computed_once_for_every_sparsity_and_reported_at_each() -> None:
    dense = (("method", "dense"),)
    a, b = _cell(row="dense+finetune", options=dense), _cell(row="dense+finetune", options=dense, sparsity=0.95)
    assert a.key == b.key  # nothing is pruned: the sparsity does not change what the cell computes
    assert _cell().key != _cell(sparsity=0.95).key  # a pruning row's sparsity does
    plan = quality.Plan([a, b, _cell()])
    assert [c.row for c in plan.pending()] == ["dense+finetune", "adapmtl"]  # the shared computation runs once
    plan.done[a.key] = {"key": a.key, "sparsity": 0.9, "delta_t": -1.0}
    assert [c.record(plan.done[c.key])["sparsity"] for c in (a, b)] == [0.9, 0.95]
    assert "--cell dense+finetune:0.95:0:0" in b.record(plan.done[b.key])["command"]


def test_changing_a_product_default_makes_the_cells_that_used_it_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapmtl_cli.methods import registry
    from adapmtl_cli.sparsity import allocation

    monkeypatch.setitem(registry.DEFAULT_ALLOCATION, "adapmtl", "adam")
    default, explicit = _cell(), _cell(options=(("allocation", "adam"), ("method", "adapmtl")))
    marginal = _cell(options=(("allocation", "marginal"), ("method", "adapmtl")))
    before = {c: c.key for c in (default, explicit, marginal)}
    monkeypatch.setitem(registry.DEFAULT_ALLOCATION, "adapmtl", "marginal")
    assert default.key != before[default]
    assert default.settings()["defaults"] == marginal.settings()["defaults"]  # the default row now is marginal
    assert explicit.key == before[explicit] and marginal.key == before[marginal]  # explicit rows did not change
    monkeypatch.setattr(allocation, "RUN_RATE", allocation.RUN_RATE / 2)
    assert marginal.key != before[marginal] and explicit.key == before[explicit]  # the rule's constant decides


def test_a_row_identical_to_the_default_is_marked_and_left_out_of_the_verdict() -> None:
    runs = [_run("adapmtl", s, 1.0 + 0.1 * s) for s in range(3)]
    runs += [_run("adapmtl+norm", s, 1.0 + 0.1 * s) for s in range(3)]  # the default's settings again
    runs += [_run("adapmtl+equal", s, 1.0 + 0.1 * s - (0.5 if s == 0 else 0.0)) for s in range(3)]
    text = qs.render_markdown({"runs": runs})
    assert "| adapmtl+norm | 3 |" in text and "= the default (identical cells)" in text
    verdict = next(line for line in text.splitlines() if line.startswith("Default **behind or equal**"))
    assert "adapmtl+norm" not in verdict and "none" in verdict  # not counted as a row the default fails to beat
    assert not qs.same_as_default(runs, "adapmtl+equal", runs[0]["benchmark"], runs[0]["sparsity"])


def test_the_summary_table_pairs_every_row_with_the_default_at_each_sparsity() -> None:
    runs = [_run("adapmtl", s, 1.0 + 0.1 * s, sparsity=sp) for s in range(3) for sp in (0.9, 0.95)]
    runs += [_run("gmp", s, 0.1 * s, sparsity=sp) for s in range(3) for sp in (0.9, 0.95)]
    runs += [_run("adapmtl+norm", s, 1.0 + 0.1 * s, sparsity=0.9) for s in range(3)]
    runs += [_run("snip", 0, 5.0, sparsity=0.95)]  # one pair, only at 95%, the default behind
    table = qs.summary_table({"runs": runs, "frozen_settings": {"rows": {"snip": {}, "gmp": {}}}})
    lines = table.splitlines()
    assert lines[0] == "| against | cells (90%/95%) | 90%: Δ_T | 90%: wins | 95%: Δ_T | 95%: wins |"
    assert lines[2].startswith("| `snip` | 0/1 | - | - | -4.00 (n=1) | 0/1 |")
    assert lines[3] == "| `gmp` | 3/3 | **+1.00 [+1.00, +1.00]** | 3/3 | **+1.00 [+1.00, +1.00]** | 3/3 |"
    assert lines[4] == "| `adapmtl+norm` | 3/0 | = default | - | - | - |"
    assert len(lines) == 5  # the default is not paired with itself


def test_the_report_names_its_machines_and_flags_a_mix() -> None:
    runs = [{**_run("adapmtl", s, 1.0), "machine": "cpu A"} for s in range(2)]
    assert "Machine: `cpu A`." in qs.render_markdown({"runs": runs})
    mixed = qs.render_markdown({"runs": [*runs, _run("gmp", 0, 0.0)]})
    assert "`cpu A`, `unrecorded` (**mixed machines**" in mixed


def test_readme_quotes_the_committed_table() -> None:
    """README.md's quality table is the one ``quality.json`` renders, not a hand copy that can drift."""
    import json

    root = Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    assert qs.README_START in readme and qs.README_END in readme
    quoted = readme.split(qs.README_START, 1)[1].split(qs.README_END, 1)[0]
    results = json.loads((root / "benchmarks" / "results" / "quality.json").read_text())
    assert quoted == qs.summary_table(results), "run python benchmarks/quality.py --render"
    assert qs.quote_summary(readme, results) == readme
