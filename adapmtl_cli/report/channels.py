"""How every report format shows a ``--structure channel`` run: the headline in the target's unit, and the
channels, parameters and FLOPs before and after per component.

A channel run's ``target_sparsity`` is a fraction of channels (or of FLOPs, ``channels.target``), while its
``overall_sparsity`` stays the fraction of zero weights the removed channels leave: the headline names both
units, so no report reads "target 50 % → achieved 71 %". Weight runs never reach this module's output.
Nothing here imports ``views`` (which imports this module); numbers are formatted as ``views.fmt`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapmtl_cli.config import ChannelReport, RunReport

UNITS = {"channels": "channels", "flops": "FLOPs"}
"""How the reports name a channel run's target unit (``ChannelReport.target``)."""

CHANNEL_TITLE = "Channels per component (whole output channels removed)"
CHANNEL_HEAD = (
    "component",
    "channels",
    "removed",
    "kept",
    "params before → after",
    "params reduction",
    "FLOPs before → after",
    "FLOPs reduction",
)
CHANNEL_NUMERIC = (False, True, True, True, True, True, True, True)
CHANNEL_NOTE = (
    "FLOPs: multiply-accumulates of one sample's forward; params and FLOPs of the whole model in the total row "
    "(components count their prunable layers' parameters)"
)
ZERO_WEIGHTS_TITLE = "Zero weights per component (left by the removed channels)"
"""The component sparsity table's title in a channel run: its numbers are zero weights, not the target's unit."""


_TITLES = {
    "params_before": "params before",
    "params_after": "params after",
    "flops_before": "FLOPs before",
    "flops_after": "FLOPs after",
    "params_reduction": "params reduction",
    "flops_reduction": "FLOPs reduction",
    "channels": "channels",
    "removed": "channels removed",
    "kept": "channels kept",
}
"""How people read the channel rows' fields (the CSV keeps the field names)."""


def channels_of(report: RunReport) -> ChannelReport | None:
    """The ``channels`` entry of a channel run; None for weight runs (and channel reports without one)."""
    return report.channels if report.structure == "channel" else None


def unit(ch: ChannelReport) -> str:
    """``channels`` or ``FLOPs``: what the run's ``target_sparsity`` and ``achieved`` count."""
    return UNITS.get(ch.target, ch.target)


def _ratio(x: float) -> str:
    return f"{x:.2%}"


def reduction(before: int, after: int) -> str:
    """``3.43×``: how many times smaller ``after`` is; ``-`` when nothing is left to divide by."""
    return f"{before / after:.2f}×" if after > 0 else "-"


def before_after(before: int, after: int) -> str:
    """``192,556 → 54,971``."""
    return f"{before:,} → {after:,}"


def headline(report: RunReport, ch: ChannelReport) -> str:
    """``target 50.00% of channels → achieved 50.00% of channels (weights zero: 71.50%, Z of N prunable
    weights)``: the target and what was reached in the target's unit, the zero weights beside them."""
    u = unit(ch)
    return (
        f"target {_ratio(report.target_sparsity)} of {u} → achieved {_ratio(ch.achieved)} of {u} "
        f"(weights zero: {_ratio(report.overall_sparsity)}, {report.zeros:,} of {report.prunable_params:,} "
        "prunable weights)"
    )


def kept_fraction(channels: int, removed: int) -> float:
    """The kept share of ``channels`` (1 when there are none)."""
    return (channels - removed) / channels if channels else 1.0


def removed_fractions(ch: ChannelReport) -> dict[str, float]:
    """Per component the removed share of its channels (what the channel plot draws)."""
    return {name: 1.0 - kept_fraction(c.channels, c.removed) for name, c in ch.components.items()}


def channel_cells(ch: ChannelReport) -> list[list[str]]:
    """The channel table's rows as text (``CHANNEL_HEAD``'s columns): one per component, then the total.

    Components have no FLOPs of their own (``-``); the total row carries the whole model's parameters and FLOPs.
    """
    out = []
    for name, c in ch.components.items():
        out.append(
            [
                name,
                f"{c.channels:,}",
                f"{c.removed:,}",
                _ratio(kept_fraction(c.channels, c.removed)),
                before_after(c.params_before, c.params_after),
                reduction(c.params_before, c.params_after),
                "-",
                "-",
            ]
        )
    channels = sum(c.channels for c in ch.components.values())
    removed = sum(c.removed for c in ch.components.values())
    out.append(
        [
            "total",
            f"{channels:,}",
            f"{removed:,}",
            _ratio(kept_fraction(channels, removed)),
            before_after(ch.params_before, ch.params_after),
            reduction(ch.params_before, ch.params_after),
            before_after(ch.flops_before, ch.flops_after),
            reduction(ch.flops_before, ch.flops_after),
        ]
    )
    return out


def _need(r: RunReport) -> ChannelReport:
    """``r``'s channels, or ``KeyError`` (which ``views.rows`` reads as a missing value) for weight runs."""
    ch = channels_of(r)
    if ch is None:
        raise KeyError("channels")
    return ch


def _ratio_of(before: int, after: int) -> float | None:
    return before / after if after > 0 else None


def summary_rows(add: Callable[..., None]) -> None:
    """The summary rows a comparison with a channel run adds: what was pruned and what the target counts."""
    add("summary", "", "structure", "text", lambda r: r.structure)
    add(
        "summary",
        "",
        "target_unit",
        "text",
        lambda r: "weights" if (ch := channels_of(r)) is None else ch.target,
        title="target unit",
    )


def channel_rows(reps: list[RunReport], add: Callable[..., None]) -> None:
    """The ``channel`` section of the comparison rows and the CSV (``add`` of ``views.rows``); weight runs ``-``."""
    add("channel", "", "achieved", "ratio", lambda r: _need(r).achieved, title="achieved (in the target unit)")
    for field in ("params_before", "params_after", "flops_before", "flops_after"):
        add("channel", "total", field, "int", lambda r, f=field: getattr(_need(r), f), title=f"total {_TITLES[field]}")
    for kind in ("params", "flops"):

        def factor(r: RunReport, k: str = kind) -> Any:
            ch = _need(r)
            return _ratio_of(getattr(ch, f"{k}_before"), getattr(ch, f"{k}_after"))

        add("channel", "total", f"{kind}_reduction", "factor", factor, title=f"total {_TITLES[f'{kind}_reduction']}")
    add("channel", "", "groups", "int", lambda r: len(_need(r).keep), human=False)
    names = list(dict.fromkeys(n for r in reps if (ch := channels_of(r)) is not None for n in ch.components))
    for name in names:
        for field in ("channels", "removed", "params_before", "params_after"):
            get = lambda r, n=name, f=field: getattr(_need(r).components[n], f)  # noqa: E731
            add("channel", name, field, "int", get, title=f"{name} {_TITLES[field]}")

        def kept(r: RunReport, n: str = name) -> float:
            c = _need(r).components[n]
            return kept_fraction(c.channels, c.removed)

        add("channel", name, "kept", "ratio", kept, title=f"{name} {_TITLES['kept']}")
