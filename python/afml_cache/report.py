"""How the monitoring reports look: terminal text, HTML for Jupyter, and the exported HTML page
with its charts (inline SVG drawn here: the page needs no network, script or stylesheet).

Sizes are shown in the units sizes are given in (``size_limit="2GB"``, ``--max-size 500MB``):
1 KB = 1024 bytes, so a "2GB" limit reads 2.0 GB."""

from __future__ import annotations

import datetime
import html
import math
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afml_cache.monitoring import CacheHealth

__all__ = [
    "MB",
    "STYLE",
    "bar_chart_svg",
    "escape",
    "format_duration",
    "format_latency",
    "format_size",
    "format_when",
    "functions_table_html",
    "health_html",
    "health_text",
    "report_html",
    "table",
]

#: Bytes in a MB of every report (``cache_size_mb``, ``max_size_mb``, ...), as in ``"500MB"``.
MB = 2**20
_RULE = "=" * 70
#: The pages' inline style (so a page stands alone), small and readable in light and dark viewers.
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.afml-cache { border-collapse: collapse; font-size: 0.9em; }
table.afml-cache th, table.afml-cache td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; }
table.afml-cache th { text-align: left; background: #f4f4f4; }
table.afml-cache td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure.afml-chart { margin: 1.2em 0; } figure.afml-chart figcaption { font-weight: 600; }
svg text { font-family: system-ui, sans-serif; font-size: 12px; fill: #222; }
"""
_LATENCY_COLUMNS = (
    ("hit_latency_p50", "hit p50"),
    ("hit_latency_p95", "hit p95"),
    ("hit_latency_p99", "hit p99"),
    ("miss_latency_p50", "miss p50"),
    ("miss_latency_p95", "miss p95"),
    ("miss_latency_p99", "miss p99"),
)


def format_duration(seconds: float) -> str:
    """``3.2 h``, ``4.5 min`` or ``12.0 s``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def format_latency(seconds: float | None) -> str:
    """A call's duration at a readable scale (``850 µs``, ``12.3 ms``, ``4.20 s``); ``-`` for
    none."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def format_size(nbytes: float) -> str:
    """``1,023 B``, ``1.50 KB``, ``245.67 MB``, ``2.0 GB``, ``1.5 TB`` (1 KB = 1024 bytes)."""
    if nbytes < 1024:
        return f"{nbytes:,.0f} B"
    if nbytes < MB:
        return f"{nbytes / 1024:,.2f} KB"
    if nbytes < 1024 * MB:
        return f"{nbytes / MB:,.2f} MB"
    if nbytes < 1024**2 * MB:
        return f"{nbytes / (1024 * MB):,.1f} GB"
    return f"{nbytes / (1024**2 * MB):,.1f} TB"


def format_when(moment: datetime.datetime | float | None) -> str:
    """``2026-11-21 09:47 UTC`` for a datetime (a ``pd.Timestamp``; naive ones count as UTC)
    or seconds since the epoch; ``never`` for None."""
    if moment is None:
        return "never"
    if not isinstance(moment, datetime.datetime):
        moment = datetime.datetime.fromtimestamp(moment, tz=datetime.UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ranked(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return [
        f"{rank}. {row['function_name']}: {row['hit_rate']:.1%} ({row['total_calls']:,} calls)"
        for rank, row in enumerate(rows, 1)
    ]


def _stale_lines(health: CacheHealth) -> list[str]:
    return [
        f"- {row['function_name']}: last used {format_when(row['last_accessed'])}, "
        f"{row['cache_size_mb']:.2f} MB"
        for row in health.stale_caches
    ]


# --- terminal ---------------------------------------------------------------------------------


def health_text(health: CacheHealth) -> str:
    """The health report as plain text, 70 columns wide."""
    where = str(health.directory) if health.directory is not None else "no usable directory"
    limit = f" (limit {format_size(health.size_limit)})" if health.size_limit else ""
    lines = [
        _RULE,
        "CACHE HEALTH REPORT",
        _RULE,
        f"Directory: {where}",
        "",
        "Overall Statistics:",
        f"  Total Functions:     {len(health.functions):,}",
        f"  Total Calls:         {health.total_calls:,}",
        f"  Overall Hit Rate:    {health.hit_rate:.1%}",
        f"  Total Cache Size:    {format_size(health.size_bytes)}{limit}",
        f"  Time Saved:          {format_duration(health.time_saved)}",
    ]
    sections = (
        ("Top Performers (by hit rate):", _ranked(health.top_performers)),
        ("Worst Performers (by hit rate):", _ranked(health.worst_performers)),
        (f"Stale Caches (not used for over {health.unused_days:g} days):", _stale_lines(health)),
        ("Recommendations:", [f"- {r}" for r in health.recommendations]),
    )
    for title, items in sections:
        if items:
            lines += ["", title]
            lines += map(_item_lines, items)
    lines.append(_RULE)
    return "\n".join(lines)


def _item_lines(item: str) -> str:
    """An item wrapped at 70 columns, unless it names a function too long for a line: a name
    is never split, nor moved away from its number, as it is what `clear --function` takes."""
    if max(map(len, item.split()), default=0) > 60:
        return "  " + item
    return textwrap.fill(item, 70, initial_indent="  ", subsequent_indent="    ")


# --- HTML -------------------------------------------------------------------------------------


def escape(value: Any) -> str:
    """``value`` as text safe in HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def table(
    header: Sequence[str], rows: Iterable[Sequence[tuple[str, bool]]], css_class: str = ""
) -> str:
    """An HTML table; each cell is (text, numeric). Every text is escaped here. ``css_class``
    is added to the table's ``afml-cache`` class."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(t)}</td>' if num else f"<td>{escape(t)}</td>"
            for t, num in row
        )
        + "</tr>"
        for row in rows
    )
    classes = f"afml-cache {css_class}".strip()
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _list(items: Sequence[str], ordered: bool = False) -> str:
    tag = "ol" if ordered else "ul"
    return f"<{tag}>" + "".join(f"<li>{escape(i)}</li>" for i in items) + f"</{tag}>"


def health_html(health: CacheHealth) -> str:
    """The health report as an HTML fragment (what Jupyter shows)."""
    where = str(health.directory) if health.directory is not None else "no usable directory"
    limit = f" of {format_size(health.size_limit)}" if health.size_limit else ""
    summary = table(
        ("", ""),
        [
            (("Directory", False), (where, False)),
            (("Functions", False), (f"{len(health.functions):,}", True)),
            (("Calls", False), (f"{health.total_calls:,}", True)),
            (("Hit rate", False), (f"{health.hit_rate:.1%}", True)),
            (("Size on disk", False), (f"{format_size(health.size_bytes)}{limit}", True)),
            (("Time saved", False), (format_duration(health.time_saved), True)),
        ],
    )
    parts = ["<div><h3>Cache health</h3>", summary]
    sections = (
        ("Top performers (by hit rate)", [r[3:] for r in _ranked(health.top_performers)], True),
        ("Worst performers (by hit rate)", [r[3:] for r in _ranked(health.worst_performers)], True),
        (
            f"Stale caches (not used for over {health.unused_days:g} days)",
            [s[2:] for s in _stale_lines(health)],
            False,
        ),
        ("Recommendations", health.recommendations, False),
    )
    for title, items, ordered in sections:
        if items:
            parts += [f"<h4>{escape(title)}</h4>", _list(items, ordered)]
    parts.append("</div>")
    return "".join(parts)


def functions_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """One row per function: the statistics fields and the latency percentiles."""
    header = (
        "function",
        "calls",
        "hits",
        "misses",
        "hit rate",
        "avg compute",
        "time saved",
        "size (MB)",
        "last accessed",
        *(label for _, label in _LATENCY_COLUMNS),
    )
    return table(
        header,
        (
            (
                (row["function_name"], False),
                (f"{row['total_calls']:,}", True),
                (f"{row['cache_hits']:,}", True),
                (f"{row['cache_misses']:,}", True),
                (f"{row['hit_rate']:.1%}", True),
                (format_latency(row["avg_computation_time"]), True),
                (format_duration(row["time_saved"]), True),
                (f"{row['cache_size_mb']:,.3f}", True),
                (format_when(row["last_accessed"]), False),
                *((format_latency(row[key]), True) for key, _ in _LATENCY_COLUMNS),
            )
            for row in rows
        ),
    )


def bar_chart_svg(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    texts: Sequence[str],
    scale_max: float | None = None,
) -> str:
    """A horizontal bar chart as inline SVG: one bar per label, ``texts`` printed beside the
    bars, bars scaled to ``scale_max`` (default: the largest value). Labels are escaped; long
    ones keep their end (the function's own name) and show in full on hover."""
    bar, gap, top, width, text_room = 18, 6, 8, 260, 90
    shown = [label if len(label) <= 48 else "…" + label[-47:] for label in labels]
    label_room = 12 + 7 * max((len(s) for s in shown), default=0)
    clean = [v if math.isfinite(v) and v > 0 else 0.0 for v in values]
    biggest = scale_max if scale_max is not None else max(clean, default=0.0)
    height = top * 2 + len(labels) * (bar + gap)
    total_width = label_room + width + text_room
    parts = [
        f'<figure class="afml-chart"><figcaption>{escape(title)}</figcaption>',
        f'<svg width="{total_width}" height="{height}" viewBox="0 0 {total_width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
    ]
    for i, (label, short, value, text) in enumerate(zip(labels, shown, clean, texts, strict=True)):
        y = top + i * (bar + gap)
        length = width * value / biggest if biggest > 0 else 0.0
        parts.append(
            f"<g><title>{escape(label)}: {escape(text)}</title>"
            f'<text x="{label_room - 6}" y="{y + 13}" text-anchor="end">{escape(short)}</text>'
            f'<rect x="{label_room}" y="{y}" width="{length:.1f}" height="{bar}" '
            'fill="#4c78a8"/>'
            f'<text x="{label_room + length + 4:.1f}" y="{y + 13}">{escape(text)}</text></g>'
        )
    parts.append("</svg></figure>")
    return "".join(parts)


def report_html(health: CacheHealth) -> str:
    """The exported report: a standalone HTML page with the health summary, the per-function
    table, and charts of hit rate, size and time saved per function."""
    rows = health.functions
    names = [r["function_name"] for r in rows]
    if rows:
        charts = [
            bar_chart_svg(
                "Hit rate per function",
                names,
                [100 * r["hit_rate"] for r in rows],
                [f"{r['hit_rate']:.1%}" for r in rows],
                scale_max=100.0,
            ),
            bar_chart_svg(
                "Size on disk per function (MB)",
                names,
                [r["cache_size_mb"] for r in rows],
                [f"{r['cache_size_mb']:,.3f} MB" for r in rows],
            ),
            bar_chart_svg(
                "Time saved per function",
                names,
                [r["time_saved"] for r in rows],
                [format_duration(r["time_saved"]) for r in rows],
            ),
        ]
        details = ["<h2>Functions</h2>", functions_table_html(rows), "<h2>Charts</h2>", *charts]
    else:
        details = ["<p>No cached function has been called with this cache directory yet.</p>"]
    generated = format_when(health.generated)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>afml-cache report</title>",
            f"<style>{STYLE}</style></head><body>",
            "<h1>afml-cache report</h1>",
            f"<p>Generated {escape(generated)}.</p>",
            health_html(health),
            *details,
            "</body></html>",
            "",
        ]
    )
