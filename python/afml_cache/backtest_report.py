"""The backtest report: one self-contained HTML page (inline SVG, no script, no network) with,
per strategy, its runs ranked by a metric, the top runs' equity curves overlaid, and a heatmap of
the metric when two parameters vary."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from afml_cache.report import STYLE, escape, format_when, table

__all__ = ["equity_chart_svg", "heatmap_svg", "report_html"]

# Colour-blind-safe (Okabe-Ito), in the order the top runs get them.
_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000")
# The reports' style, and the legend, axes and grid of the charts here.
_STYLE = (
    STYLE
    + """
.afml-bt-legend span { display: inline-block; margin-right: 1.2em; font-size: 0.85em; }
.afml-bt-legend i { display: inline-block; width: 1.4em; height: 0.3em; margin-right: 0.35em;
  vertical-align: middle; }
svg .axis { stroke: #888; stroke-width: 1; } svg .grid { stroke: #e6e6e6; stroke-width: 1; }
svg text.small { font-size: 11px; fill: #555; }
"""
)
_RANKED_ROWS = 20
_OTHER_METRICS = 5
_CURVE_POINTS = 600


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d")
    return str(value)


def run_label(row: Mapping[str, Any], params: Sequence[str]) -> str:
    """``n1=10, n2=30``: a run named by its parameters."""
    return ", ".join(f"{p[len('param_') :]}={_fmt(row[p])}" for p in params) or "(no parameters)"


def _ranked_table(ranked: pd.DataFrame, metric: str, params: list[str]) -> str:
    others = [
        c
        for c in ranked.columns
        if c not in (metric, "strategy", "created", "start", "end") and not c.startswith("param_")
    ][:_OTHER_METRICS]
    header = ["rank", "run", metric, *(p[len("param_") :] for p in params), *others, "created"]
    rows = []
    for rank, (run_id, row) in enumerate(ranked.head(_RANKED_ROWS).iterrows(), 1):
        rows.append(
            [
                (str(rank), True),
                (str(run_id)[:12], False),
                (_fmt(row[metric]), True),
                *((_fmt(row[p]), not isinstance(row[p], str)) for p in params),
                *((_fmt(row[m]), True) for m in others),
                (format_when(row["created"].timestamp()), False),
            ]
        )
    more = len(ranked) - _RANKED_ROWS
    tail = f"<p>… and {more:,} more runs.</p>" if more > 0 else ""
    return table(header, rows, "afml-bt-ranked") + tail


def equity_chart_svg(curves: Sequence[tuple[str, pd.Series]], title: str) -> str:
    """The equity curves overlaid on one time axis (or bar number when they have no times)."""
    width, height, left, right, top, bottom = 900, 340, 80, 40, 16, 36
    timed = all(isinstance(c.index, pd.DatetimeIndex) for _, c in curves)
    xs, ys = [], []
    for _, curve in curves:
        step = max(1, len(curve) // _CURVE_POINTS)
        sample = curve.dropna().iloc[::step]
        if timed:
            x = sample.index.as_unit("ns").asi8.astype(float)
        else:
            x = pd.RangeIndex(len(sample)) * step
        xs.append(list(map(float, x)))
        ys.append(list(map(float, sample.to_numpy())))
    x_low, x_high = min(min(x) for x in xs), max(max(x) for x in xs)
    y_low, y_high = min(min(y) for y in ys), max(max(y) for y in ys)
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + plot_w * (x - x_low) / x_span

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - y_low) / y_span)

    parts = [
        f'<figure class="afml-chart afml-bt-equity"><figcaption>{escape(title)}</figcaption>',
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
    ]
    for i in range(5):  # horizontal grid lines with their equity values
        y = y_low + y_span * i / 4
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{py(y):.1f}" '
            f'y2="{py(y):.1f}"/><text class="small" x="{left - 6}" y="{py(y) + 4:.1f}" '
            f'text-anchor="end">{escape(_fmt(y))}</text>'
        )
    for i in range(5):  # x ticks: dates, or bar numbers
        x = x_low + x_span * i / 4
        text = pd.Timestamp(int(x)).strftime("%Y-%m-%d") if timed else f"{x:,.0f}"
        parts.append(
            f'<text class="small" x="{px(x):.1f}" y="{height - 12}" '
            f'text-anchor="middle">{escape(text)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>'
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
        f'y2="{top + plot_h}"/>'
    )
    legend = []
    for i, ((label, _), curve_x, curve_y) in enumerate(zip(curves, xs, ys, strict=True)):
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(curve_x, curve_y, strict=True))
        parts.append(
            f'<polyline class="afml-bt-curve" fill="none" stroke="{colour}" stroke-width="1.6" '
            f'points="{points}"><title>{escape(label)}</title></polyline>'
        )
        legend.append(f'<span><i style="background:{colour}"></i>{escape(label)}</span>')
    parts.append("</svg>")
    parts.append(f'<div class="afml-bt-legend">{"".join(legend)}</div></figure>')
    return "".join(parts)


def _colour(fraction: float) -> str:
    """A sequential scale from pale yellow (low) to dark blue (high)."""
    low, mid, high = (255, 247, 188), (65, 182, 196), (8, 48, 107)
    a, b, t = (low, mid, fraction * 2) if fraction < 0.5 else (mid, high, fraction * 2 - 1)
    rgb = (round(a[k] + (b[k] - a[k]) * t) for k in range(3))
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _axis(values: pd.Series) -> pd.Series:
    """A parameter's values as a heatmap's axis: as they are when they sort, else as text (a
    list-valued weight, None beside numbers and names)."""
    present = [v for v in values if not pd.api.types.is_scalar(v) or not pd.isna(v)]
    try:
        sorted(present, key=lambda v: (hash(v), v)[1])
    except TypeError:
        return values.map(_fmt)
    return values


def heatmap_svg(ranked: pd.DataFrame, metric: str, x_param: str, y_param: str) -> str:
    """The metric over a grid of two parameters (the mean where runs share a cell)."""
    axes = ranked[[y_param, x_param, metric]].copy()
    for param in (y_param, x_param):
        axes[param] = _axis(axes[param])
    grid = axes.pivot_table(index=y_param, columns=x_param, values=metric, aggfunc="mean")
    grid = grid.sort_index().sort_index(axis=1)
    x_name, y_name = x_param[len("param_") :], y_param[len("param_") :]
    cell_w, cell_h, left, top = 80, 36, 90, 40
    width = left + cell_w * len(grid.columns) + 20
    height = top + cell_h * len(grid.index) + 40
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    title = f"{metric} by {x_name} and {y_name}"
    parts = [
        f'<figure class="afml-chart afml-bt-heatmap"><figcaption>{escape(title)}</figcaption>',
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{left + cell_w * len(grid.columns) / 2:.0f}" y="14" '
        f'text-anchor="middle">{escape(x_name)}</text>',
        f'<text x="14" y="{top + cell_h * len(grid.index) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + cell_h * len(grid.index) / 2:.0f})">'
        f"{escape(y_name)}</text>",
    ]
    for j, column in enumerate(grid.columns):
        parts.append(
            f'<text class="small" x="{left + cell_w * j + cell_w / 2:.0f}" y="{top - 6}" '
            f'text-anchor="middle">{escape(_fmt(column))}</text>'
        )
    for i, row_value in enumerate(grid.index):
        y = top + cell_h * i
        parts.append(
            f'<text class="small" x="{left - 6}" y="{y + cell_h / 2 + 4:.0f}" '
            f'text-anchor="end">{escape(_fmt(row_value))}</text>'
        )
        for j, column in enumerate(grid.columns):
            value = values[i, j]
            x = left + cell_w * j
            if math.isnan(value):
                fill, ink = "#eeeeee", "#999"
            else:
                # An infinite metric (a Calmar ratio without drawdown) takes the scale's end.
                fraction = (value - low) / (high - low) if high > low else 0.5
                fraction = min(max(fraction, 0.0), 1.0) if not math.isnan(fraction) else 0.5
                fill, ink = _colour(fraction), "#fff" if fraction > 0.6 else "#222"
            label = f"{x_name}={_fmt(column)}, {y_name}={_fmt(row_value)}: {_fmt(value)}"
            parts.append(
                f'<g class="afml-bt-cell"><title>{escape(label)}</title>'
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" '
                f'fill="{fill}"/><text x="{x + cell_w / 2 - 1:.0f}" y="{y + cell_h / 2 + 4:.0f}" '
                f'text-anchor="middle" style="fill:{ink}">{escape(_fmt(value))}</text></g>'
            )
    parts.append("</svg></figure>")
    return "".join(parts)


def _varying(ranked: pd.DataFrame) -> list[str]:
    """The parameter columns that take more than one value among the runs."""
    return [
        c
        for c in ranked.columns
        if c.startswith("param_") and ranked[c].astype(str).nunique(dropna=False) > 1
    ]


def _section(name: str, ranked: pd.DataFrame, curves: Mapping[str, pd.Series], metric: str) -> str:
    params = [c for c in ranked.columns if c.startswith("param_")]
    parts = [
        f'<section class="afml-bt-strategy"><h2>{escape(name)}</h2>',
        f"<p>{len(ranked):,} runs, ranked by {escape(metric)} (largest first; runs without it "
        "last).</p>",
    ]
    if ranked.empty:
        return "".join([*parts, "<p>No runs.</p></section>"])
    parts.append(_ranked_table(ranked, metric, params))
    if curves:
        labelled = [
            (f"#{list(ranked.index).index(r) + 1} {run_label(ranked.loc[r], params)}", c)
            for r, c in curves.items()
        ]
        parts.append(equity_chart_svg(labelled, f"Equity curves of the top {len(curves)} runs"))
    else:
        parts.append("<p>The top runs stored no equity curve.</p>")
    varying = _varying(ranked)
    if len(varying) == 2 and ranked[metric].notna().any():
        parts.append(heatmap_svg(ranked, metric, varying[0], varying[1]))
    elif len(varying) > 2:
        shown = ", ".join(v[len("param_") :] for v in varying)
        parts.append(f"<p>No heatmap: {len(varying)} parameters vary ({escape(shown)}).</p>")
    parts.append("</section>")
    return "".join(parts)


def report_html(
    sections: Sequence[tuple[str, pd.DataFrame, Mapping[str, pd.Series]]],
    metric: str,
    directory: str,
) -> str:
    """The page: one section per strategy, given as (name, runs ranked with ``metric`` as a
    column, the top runs' equity curves by run id)."""
    now = format_when(pd.Timestamp.now(tz="UTC").timestamp())
    body = [_section(name, ranked, curves, metric) for name, ranked, curves in sections]
    if not body:
        body = ["<p>No backtest runs are cached in this directory yet.</p>"]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>afml-cache backtests</title>",
            f"<style>{_STYLE}</style></head><body>",
            "<h1>afml-cache backtests</h1>",
            f"<p>{escape(directory)} · generated {escape(now)}</p>",
            *body,
            "</body></html>",
            "",
        ]
    )
