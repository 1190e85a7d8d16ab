"""The quality benchmark's pure parts: cell keys, paired statistics and the Markdown report (no torch).

``benchmarks/quality.py`` runs the cells; this module decides what a cell *is* (its key), how rows compare
(paired differences over seeds and dense checkpoints, with Student-t 95% intervals) and renders
``quality.md`` from ``quality.json`` alone, so the table can always be rebuilt from the results file.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HARNESS_VERSION = 3
"""Bump when what a cell computes changes without its settings changing (every cached cell is then stale).
3: the #16 random-stream seeding (same seed, other numbers) made every version-2 cell stale."""

DEFAULT_ROW = "adapmtl"

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (t_{0.975, df}); above 30 the normal's.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom (``df`` >= 1)."""
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def cell_key(settings: Mapping[str, Any]) -> str:
    """A stable hash of everything that determines a cell's result (and the harness version)."""
    blob = json.dumps({"harness": HARNESS_VERSION, **settings}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided 95% Student-t interval (``low == high == mean`` for one value)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 2) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n=1)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t interval of ``values`` (NaNs are not allowed: a cell that has no score is a bug)."""
    if not values:
        raise ValueError("no values")
    if any(math.isnan(v) for v in values):
        raise ValueError("NaN in the values")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, mean, mean, 1)
    half = t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def paired(
    runs: Iterable[Mapping[str, Any]], a: str, b: str, *, metric: str = "delta_t"
) -> dict[tuple[str, float], Interval]:
    """Per (benchmark, sparsity): the 95% interval of ``a − b`` over the (seed, dense seed) pairs both have."""
    table: dict[tuple[str, float, str], dict[tuple[int, int], float]] = {}
    for r in runs:
        table.setdefault((r["benchmark"], r["sparsity"], r["method"]), {})[(r["seed"], r["dense_seed"])] = r[metric]
    out = {}
    for bench, sparsity, method in table:
        if method != a or (bench, sparsity, b) not in table:
            continue
        mine, theirs = table[bench, sparsity, a], table[bench, sparsity, b]
        pairs = sorted(set(mine) & set(theirs))
        if pairs:
            out[bench, sparsity] = interval([mine[p] - theirs[p] for p in pairs])
    return out


def wins(runs: Iterable[Mapping[str, Any]], a: str, b: str, bench: str, sparsity: float) -> tuple[int, int]:
    """(pairs where ``a`` has the higher Δ_T, pairs both have) at (``bench``, ``sparsity``): a count that one
    collapsed cell cannot dominate, unlike the mean."""
    cells: dict[str, dict[tuple[int, int], float]] = {}
    for r in runs:
        if r["benchmark"] == bench and r["sparsity"] == sparsity and r["method"] in (a, b):
            cells.setdefault(r["method"], {})[(r["seed"], r["dense_seed"])] = r["delta_t"]
    mine, theirs = cells.get(a, {}), cells.get(b, {})
    pairs = set(mine) & set(theirs)
    return sum(mine[p] > theirs[p] for p in pairs), len(pairs)


def same_as_default(runs: Iterable[Mapping[str, Any]], row: str, bench: str, sparsity: float) -> bool:
    """Whether every cell of ``row`` equals the default's cell of the same pair in every reported number.

    That happens when a row's options resolve to the default's effective settings (``adapmtl+norm`` once ``norm``
    is the default): the row is the default computed again, not an alternative it can beat.
    """
    fields = ("delta_t", "score_bounded", "achieved_sparsity", "components")
    cells: dict[str, dict[tuple[int, int], tuple[Any, ...]]] = {}
    for r in runs:
        if r["benchmark"] == bench and r["sparsity"] == sparsity and r["method"] in (row, DEFAULT_ROW):
            cells.setdefault(r["method"], {})[(r["seed"], r["dense_seed"])] = tuple(r[f] for f in fields)
    mine, default = cells.get(row, {}), cells.get(DEFAULT_ROW, {})
    pairs = set(mine) & set(default)
    return bool(pairs) and all(mine[p] == default[p] for p in pairs)


def _rows_at(runs: list[Mapping[str, Any]], bench: str, sparsity: float) -> dict[str, list[Mapping[str, Any]]]:
    rows: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        if r["benchmark"] == bench and r["sparsity"] == sparsity:
            rows.setdefault(r["method"], []).append(r)
    return rows


def _components(cells: list[Mapping[str, Any]]) -> str:
    names = list(cells[0]["components"])
    return " / ".join(f"{statistics.fmean(c['components'][n] for c in cells):.0%}" for n in names)


def render_markdown(results: Mapping[str, Any], *, title: str = "Quality benchmark") -> str:
    """``quality.md`` from the results file: every row, every sparsity, paired against the default."""
    runs = list(results["runs"])
    frozen = results.get("frozen_settings", {})
    lines = [f"# {title}", ""]
    if results.get("partial"):
        lines += ["**PARTIAL RESULTS**: not every cell of the frozen plan has run yet; " + results["partial"], ""]
    lines += [f"- {note}" for note in results.get("notes", [])] + ([""] if results.get("notes") else [])
    split = {r["split"] for r in runs}
    codes = sorted({r.get("code", "unknown") for r in runs})
    machines = sorted({r.get("machine", "unrecorded") for r in runs})
    lines += [
        f"Generated from `{results.get('source', 'quality.json')}` by `python benchmarks/quality.py --render`. "
        f"Split: {', '.join(sorted(split)) or '-'}. Every cell: one (method row, sparsity, seed, dense checkpoint); "
        "its `command` in the JSON re-runs it from a clean checkout. Code: "
        + ", ".join(f"`{c}`" for c in codes)
        + (" (**mixed code versions**)" if len(codes) > 1 else "")
        + ". Machine: "
        + ", ".join(f"`{m}`" for m in machines)
        + (
            " (**mixed machines**: one cell moves by about a seed's spread from one CPU to another)"
            if len(machines) > 1
            else ""
        )  # fmt: skip
        + ".",
        "",
        "Scores: Δ_T is AdapMTL's (per task the sum over its metrics of ±(pruned − dense)/dense × 100, mean over "
        "tasks; higher is better) against the dense checkpoint, the bounded score the same with each change "
        "clipped to ±100%. *Paired vs default*: mean of (default − row) over the (seed, dense seed) pairs both "
        "have, with its 95% Student-t interval; **bold** when the interval excludes 0. Positive = the default is "
        "better.",
        "",
    ]
    if frozen:
        lines += ["Settings:", ""]
        lines += [f"- `{k}`: `{json.dumps(v)}`" for k, v in frozen.items() if k != "rows"]
        lines += [f"- row `{r}`: `{json.dumps(o)}`" for r, o in frozen.get("rows", {}).items()]
        lines.append("")
    for bench_info in results.get("benchmarks", []):
        lines += [
            f"- benchmark `{bench_info['name']}`: factory `{bench_info['factory']}`, backbone "
            f"{bench_info['backbone_share']:.1%} of the prunable weights, dense seeds {bench_info['dense_seeds']}"
            + (f"; dense training: {bench_info['dense_note']}" if bench_info.get("dense_note") else ""),
        ]
    lines.append("")
    for bench in dict.fromkeys(r["benchmark"] for r in runs):
        lines += [f"## {bench}: paired differences", "", summary_table(results, bench), ""]
        for sparsity in sorted({r["sparsity"] for r in runs if r["benchmark"] == bench}):
            lines += _sparsity_section(runs, bench, sparsity)
    return "\n".join(lines) + "\n"


def summary_table(results: Mapping[str, Any], bench: str | None = None) -> str:
    """Default − row in Δ_T per sparsity (95% interval, pairs the default wins): the table README.md quotes.

    Rows in the frozen plan's order (else first appearance); ``bench`` defaults to the first benchmark.
    """
    runs = list(results["runs"])
    bench = bench or runs[0]["benchmark"]
    mine = [r for r in runs if r["benchmark"] == bench]
    sparsities = sorted({r["sparsity"] for r in mine})
    order = list(dict.fromkeys([*results.get("frozen_settings", {}).get("rows", {}), *(r["method"] for r in mine)]))
    head = "| against | cells (" + "/".join(f"{s:.0%}" for s in sparsities) + ") |"
    head += "".join(f" {s:.0%}: Δ_T | {s:.0%}: wins |" for s in sparsities)
    lines = [head, "|---|---|" + "---|---|" * len(sparsities)]
    for method in order:
        rows = [_rows_at(runs, bench, s).get(method, []) for s in sparsities]
        if method == DEFAULT_ROW or not any(rows):
            continue
        cells = [f"| `{method}` | " + "/".join(str(len(r)) for r in rows) + " |"]
        for sparsity in sparsities:
            pair = paired(runs, DEFAULT_ROW, method).get((bench, sparsity))
            if same_as_default(runs, method, bench, sparsity):
                cells.append(" = default | - |")
            elif pair is None:
                cells.append(" - | - |")
            else:
                k, n = wins(runs, DEFAULT_ROW, method, bench, sparsity)
                text = f"**{pair.text()}**" if pair.excludes_zero else pair.text()
                cells.append(f" {text} | {k}/{n} |")
        lines.append("".join(cells))
    return "\n".join(lines)


def _sparsity_section(runs: list[Mapping[str, Any]], bench: str, sparsity: float) -> list[str]:
    rows = _rows_at(runs, bench, sparsity)
    lines = [f"## {bench} at {sparsity:.0%}", ""]
    comp_names = next((list(c[0]["components"]) for c in rows.values() if c[0]["components"]), [])
    lines += [
        f"| row | cells | Δ_T mean [95% CI] | bounded | paired vs default (Δ_T) | paired (bounded) | default wins "
        f"| collapsed | {' / '.join(comp_names)} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(rows, key=lambda m: -statistics.fmean(r["delta_t"] for r in rows[m]))
    for method in order:
        cells = rows[method]
        dt = interval([c["delta_t"] for c in cells])
        bounded = interval([c["score_bounded"] for c in cells])
        diff, diff_bounded, won = "", "", ""
        if method != DEFAULT_ROW:
            pair = paired(runs, DEFAULT_ROW, method).get((bench, sparsity))
            pair_b = paired(runs, DEFAULT_ROW, method, metric="score_bounded").get((bench, sparsity))
            if same_as_default(runs, method, bench, sparsity):
                diff = "= the default (identical cells)"
            elif pair is not None and pair_b is not None:
                diff, diff_bounded = (f"**{p.text()}**" if p.excludes_zero else p.text() for p in (pair, pair_b))
                k, n = wins(runs, DEFAULT_ROW, method, bench, sparsity)
                won = f"{k}/{n}"
        collapsed = sum(1 for c in cells if any(c["collapsed"].values()))
        comps = _components(cells) if cells[0]["components"] else "-"
        lines.append(
            f"| {method} | {len(cells)} | {dt.text()} | {bounded.text()} | {diff} | {diff_bounded} | {won} "
            f"| {collapsed} | {comps} |"
        )
    lines.append("")
    verdict = verdict_lines(runs, bench, sparsity)
    if verdict:
        lines += verdict + [""]
    return lines


def verdict_lines(runs: list[Mapping[str, Any]], bench: str, sparsity: float) -> list[str]:
    """The acceptance reading: the default against every other pruning row, and against ``adapmtl-frozen``."""
    rows = _rows_at(runs, bench, sparsity)
    if DEFAULT_ROW not in rows:
        return []
    beaten, not_beaten = [], []
    for method in rows:
        if method in (DEFAULT_ROW, "dense+finetune") or same_as_default(runs, method, bench, sparsity):
            continue
        pair = paired(runs, DEFAULT_ROW, method).get((bench, sparsity))
        if pair is None:
            continue
        (beaten if pair.mean > 0 else not_beaten).append(f"{method} ({pair.mean:+.2f})")
    out = [
        f"Default ahead on mean paired Δ_T of: {', '.join(beaten) or 'none'}.",
        f"Default **behind or equal**: {', '.join(not_beaten) or 'none'}.",
    ]
    frozen = paired(runs, DEFAULT_ROW, "adapmtl-frozen").get((bench, sparsity))
    if frozen is not None:
        frozen_b = paired(runs, DEFAULT_ROW, "adapmtl-frozen", metric="score_bounded")[bench, sparsity]
        k, n = wins(runs, DEFAULT_ROW, "adapmtl-frozen", bench, sparsity)
        out.append(
            f"Against adapmtl-frozen: {frozen.text()}; the interval "
            + ("excludes 0" if frozen.excludes_zero else "does **not** exclude 0")
            + f" (bounded score: {frozen_b.text()}, "
            + ("excludes 0" if frozen_b.excludes_zero else "does not exclude 0")
            + f"; the default is ahead in {k} of {n} pairs)."
        )
    ref = paired(runs, DEFAULT_ROW, "dense+finetune").get((bench, sparsity))
    if ref is not None:
        out.append(f"Cost of pruning (default − dense+finetune, Δ_T): {ref.text()}.")
    return out


README_START = "<!-- quality-summary: generated by summary_table(quality.json) -->\n"
README_END = "\n<!-- /quality-summary -->"


def quote_summary(readme: str, results: Mapping[str, Any]) -> str:
    """``readme`` with the block between the quality-summary markers replaced by :func:`summary_table`."""
    if README_START not in readme or README_END not in readme:
        raise ValueError("README.md has no quality-summary block")
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return head + README_START + summary_table(results) + README_END + tail
