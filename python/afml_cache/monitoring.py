"""Per-function statistics of the decorators, under the original AFML cache's names, and the
reports built on them: the health report, the efficiency table, pattern analysis, exports.

The counts live in the cache directory (shared counters updated atomically by every process), so
they are correct across processes and restarts: every hit and miss is counted, none is lost at
exit. Latencies are kept as histograms (4 buckets per doubling of time, from 1 µs), from which
the percentiles here are estimated. Moments are UTC ``pd.Timestamp``s; sizes are in MB of 2**20
bytes, the unit of sizes written like ``"500MB"``.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from afml_cache import config, report
from afml_cache._core import LATENCY_BOUNDS
from afml_cache._store import FunctionTotals
from afml_cache.cache import Cache
from afml_cache.errors import CacheError, CacheWarning, caller_stacklevel
from afml_cache.progress import in_notebook
from afml_cache.report import MB

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CacheHealth",
    "CacheMonitor",
    "FunctionStats",
    "analyze_cache_patterns",
    "cache_status",
    "function_row",
    "function_stats",
    "get_cache_efficiency_report",
    "get_cache_health",
    "get_cache_monitor",
    "get_cache_stats",
    "latency_percentiles",
    "names_ending_with",
    "names_like",
    "print_cache_health",
]

_FIELDS = (
    "function_name",
    "total_calls",
    "cache_hits",
    "cache_misses",
    "hit_rate",
    "avg_computation_time",
    "time_saved",
    "cache_size_mb",
    "last_accessed",
)
_QUANTILES = (0.5, 0.95, 0.99)
_LATENCY_FIELDS = tuple(
    f"{kind}_latency_p{round(q * 100)}" for kind in ("hit", "miss") for q in _QUANTILES
)
#: The fields of a function's statistics (`get_cache_stats`), in order.
STATS_FIELDS = _FIELDS + _LATENCY_FIELDS
# The efficiency table speaks the original guide's words: its column, the statistics field it
# is read from, and the factor to its unit (per-call times in ms, as the guide's avg_time_ms).
_REPORT = (
    ("function", "function_name", None),
    ("calls", "total_calls", None),
    ("hits", "cache_hits", None),
    ("misses", "cache_misses", None),
    ("hit_rate", "hit_rate", 1.0),
    ("avg_time_ms", "avg_computation_time", 1e3),
    ("cache_size_mb", "cache_size_mb", 1.0),
    ("last_access", "last_accessed", None),
    ("time_saved", "time_saved", 1.0),
    *((f"{field}_ms", field, 1e3) for field in _LATENCY_FIELDS),
)
#: The columns of `get_cache_efficiency_report` and of exported CSV reports, in order.
REPORT_COLUMNS = tuple(column for column, _, _ in _REPORT)
_INT_COLUMNS = ("calls", "hits", "misses")
_TOP = 5  # functions listed among the top and worst performers
_GOOD_HIT_RATE = 0.5  # the health report's line between top and worst performers
_REPORT_SUFFIXES = {".csv": "csv", ".html": "html", ".htm": "html"}


class FunctionStats(dict[str, Any]):
    """One function's statistics: a dict (``stats["hit_rate"]``) whose fields also read as
    attributes (``stats.hit_rate``), as in the original AFML cache's monitor."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            fields = ", ".join(self)
            message = f"function statistics have no field {name!r}; fields: {fields}"
            raise AttributeError(message) from None


# --- latency percentiles ----------------------------------------------------------------------


def latency_percentiles(
    counts: Sequence[int], bounds: Sequence[float], qs: Sequence[float] = _QUANTILES
) -> tuple[float | None, ...]:
    """Estimates of the quantiles ``qs`` (each in (0, 1]) of a latency histogram, in seconds;
    all None when it holds no calls.

    ``counts[i]`` is the number of calls that took ``bounds[i-1] < t <= bounds[i]`` seconds
    (the first bucket starts at 0; the last bound may be ``inf``). The quantile's rank is
    located in its bucket, and its value is interpolated geometrically inside the bucket
    (``lo * (hi / lo) ** fraction``: latencies spread evenly on a log scale), except in the first
    bucket (its upper bound is returned) and an unbounded last bucket (its lower bound). With
    `LATENCY_BOUNDS` (4 buckets per doubling) the true value lies in the estimate's bucket, so
    the estimate is within a factor 2 ** (1/4) of it: off by less than 19%.
    """
    if len(counts) != len(bounds):
        raise ValueError(
            f"latency_percentiles needs one count per bucket bound, got {len(counts)} counts "
            f"and {len(bounds)} bounds"
        )
    for q in qs:
        if not 0 < q <= 1:
            raise ValueError(f"quantiles must be in (0, 1], got {q}")
    cumulative = list(itertools.accumulate(counts))
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return tuple(None for _ in qs)
    estimates: list[float | None] = []
    for q in qs:
        rank = q * total
        i = min(bisect.bisect_left(cumulative, rank), len(counts) - 1)
        hi = bounds[i]
        if i == 0:
            estimates.append(hi)
            continue
        lo = bounds[i - 1]
        if math.isinf(hi):
            estimates.append(lo)
            continue
        fraction = (rank - (cumulative[i] - counts[i])) / counts[i]
        estimates.append(lo * (hi / lo) ** fraction)
    return tuple(estimates)


# --- per-function statistics ------------------------------------------------------------------


def _latencies(raw: FunctionTotals) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for kind, histogram in (("hit", raw.hit_latency), ("miss", raw.miss_latency)):
        estimates = latency_percentiles(histogram, LATENCY_BOUNDS)
        for q, estimate in zip(_QUANTILES, estimates, strict=True):
            found[f"{kind}_latency_p{round(q * 100)}"] = estimate
    return found


def _empty(name: str) -> FunctionStats:
    return FunctionStats(
        {
            **dict.fromkeys(_FIELDS, 0),
            "function_name": name,
            "last_accessed": None,
            "hit_rate": 0.0,
            "avg_computation_time": 0.0,
            "time_saved": 0.0,
            "cache_size_mb": 0.0,
            **dict.fromkeys(_LATENCY_FIELDS),
        }
    )


def _moment(epoch: float | None) -> pd.Timestamp | None:
    """The UTC timestamp of seconds since the epoch (None stays None)."""
    import pandas as pd

    return None if epoch is None else pd.Timestamp(epoch, unit="s", tz="UTC")


def _row(raw: FunctionTotals, size: int | None = None) -> FunctionStats:
    """``size``: the bytes of the function's entries, where some live in other namespaces
    (`_sizes`)."""
    calls, hits, misses = raw.calls, raw.hits, raw.misses
    return FunctionStats(
        {
            "function_name": raw.namespace,
            "total_calls": calls,
            "cache_hits": hits,
            "cache_misses": misses,
            "hit_rate": hits / calls if calls else 0.0,
            "avg_computation_time": raw.compute_time / misses if misses else 0.0,
            "time_saved": raw.time_saved,
            "cache_size_mb": (raw.bytes if size is None else size) / MB,
            "last_accessed": _moment(raw.last_accessed),
            **_latencies(raw),
        }
    )


_unreadable: set[Path] = set()  # directories whose statistics could not be read, warned once


def _totals(cache: Cache) -> list[FunctionTotals]:
    """``cache.function_stats()``, or none, with one warning, when the directory's statistics
    cannot be read (made read-only while in use, say): a report never fails the run it reports
    on."""
    try:
        return cache.function_stats()
    except OSError as exc:
        if cache.directory not in _unreadable:
            _unreadable.add(cache.directory)
            warnings.warn(
                f"afml_cache: the call statistics of {cache.directory} cannot be read ({exc}); "
                "they are reported as none until they can",
                CacheWarning,
                stacklevel=caller_stacklevel(),
            )
        return []


def _sizes(cache: Cache, totals: list[FunctionTotals]) -> dict[str, int]:
    """Bytes of entries by function, where they differ from its namespace's: the runs a
    `cached_backtest` function stored count as its own, not the backtests' namespaces' (which
    keep what no decorated function stored)."""
    from afml_cache import backtest_runs

    stored = {raw.namespace: raw.bytes for raw in totals}
    if not stored.get(backtest_runs.NAMESPACE):
        return {}
    try:
        owned = backtest_runs.entries_by_function(cache)
    except (CacheError, OSError):
        return {}  # reported where they are stored
    sizes: dict[str, int] = {}
    for function, entries in owned.items():
        sizes[function] = stored.get(function, 0) + sum(e.size for e in entries)
        for e in entries:
            sizes[e.namespace] = sizes.get(e.namespace, stored.get(e.namespace, 0)) - e.size
    return sizes


def _collect(cache: Cache | None) -> tuple[dict[str, FunctionStats], int]:
    """The statistics of every function called or with entries, by name, and the bytes of
    all entries."""
    if cache is None:
        return {}, 0
    totals = _totals(cache)  # sorted by namespace
    sizes = _sizes(cache, totals)
    rows = {
        raw.namespace: _row(raw, sizes.get(raw.namespace))
        for raw in totals
        if raw.calls or (sizes.get(raw.namespace, raw.bytes) > 0 and _decorated(cache, raw))
    }
    # A backtest function whose runs were imported, never called here: its runs, no calls.
    counted = {raw.namespace for raw in totals}
    for name, size in sizes.items():
        if name not in counted and size > 0:
            rows[name] = FunctionStats({**_empty(name), "cache_size_mb": size / MB})
    return dict(sorted(rows.items())), sum(raw.bytes for raw in totals)


def _decorated(cache: Cache, raw: FunctionTotals) -> bool:
    """Whether a namespace no call was counted in holds a decorated function's entries
    (imported from another cache, say): they carry its code's fingerprint, where the entries
    of a `Cache`'s own namespace (``default``) do not."""
    from afml_cache.maintenance import _stored_code

    if "." not in raw.namespace:  # a function's is its qualified name: `default` is none
        return False
    try:
        entries = cache.scan(raw.namespace)
    except (CacheError, OSError):
        return False
    return any(e.namespace == raw.namespace and _stored_code(e.metadata) for e in entries)


def get_cache_stats(cache: Cache | None = None) -> dict[str, FunctionStats]:
    """Statistics of every cached function of ``cache``'s directory (default: the configured
    cache), by qualified name: ``function_name``,
    ``total_calls``, ``cache_hits``, ``cache_misses``, ``hit_rate``, ``avg_computation_time``
    (seconds per miss), ``time_saved`` (seconds), ``cache_size_mb`` (2**20 bytes),
    ``last_accessed`` (a UTC ``pd.Timestamp``), and the latency percentiles of whole calls
    ``hit_latency_p50``, ``_p95``, ``_p99`` and ``miss_latency_p50``, ``_p95``, ``_p99``
    (seconds, None without such calls; see `latency_percentiles` for their accuracy)."""
    return _collect(cache if cache is not None else config.shared_cache())[0]


def function_row(cache: Cache | None, name: str) -> FunctionStats:
    """The statistics of the cached function ``name`` kept in ``cache``'s directory (zeros if
    it was never called and has no entries, or there is no usable cache)."""
    if cache is None:
        return _empty(name)
    totals = _totals(cache)
    for raw in totals:
        if raw.namespace == name:
            # Entries elsewhere are a backtest function's, whose own namespace holds none:
            # any other function's row reads no backtest run.
            return _row(raw, _sizes(cache, totals).get(name) if raw.bytes == 0 else None)
    return _empty(name)


def names_ending_with(name: str, known: Iterable[str]) -> list[str]:
    """The dotted names in ``known`` that ``name`` designates, sorted: ``name`` itself if
    known, else those it ends by whole components (``labeling`` ends ``afml.labeling``, never
    ``afml.labeling_fast``)."""
    known = set(known)
    if name in known:
        return [name]
    return sorted(k for k in known if k.endswith("." + name))


def names_like(name: str, known: Iterable[str]) -> list[str]:
    """Up to three names in ``known`` a mistyped ``name`` may mean: those ending with it, else
    those close to it in full or by their last component (``triple_barier_labels``)."""
    known = sorted(set(known))
    ending = [k for k in known if k.endswith(name)]
    if ending:
        return ending[:3]
    by_last: dict[str, list[str]] = {}
    for k in known:
        by_last.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    alike = difflib.get_close_matches(name, known, n=3)
    for last in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(by_last), n=3):
        alike += by_last[last]
    return list(dict.fromkeys(alike))[:3]


def _known_functions(cache: Cache) -> set[str]:
    """The functions ``cache`` knows: counted, with entries, or decorated in a module imported
    in this process, with their entries in its directory."""
    from afml_cache.decorators import cached_functions

    known = {raw.namespace for raw in _totals(cache)}  # called, or with entries
    here = Path(cache.directory).resolve()
    for fn in cached_functions():
        if fn.__module__ not in sys.modules:  # its module is gone: nobody can name it
            continue
        engine = fn.__afml_cache__  # type: ignore[attr-defined]
        view = engine.cache()
        if view is not None and Path(view.directory).resolve() == here:
            known.add(engine.name)
    return known


def function_stats(name: str) -> FunctionStats:
    """The statistics of one cached function of the configured cache, named in full
    (``afml.labeling.triple_barrier``) or by the last components of its name when they name
    only one function (``triple_barrier``). Zeros for a function not called yet, or when there
    is no usable cache directory.

    Raises KeyError for a name the cache does not know (with the names that look like it), and
    for a short name of several functions (listing them)."""
    cache = config.shared_cache()
    if cache is None:
        return _empty(name)
    known = _known_functions(cache)
    found = names_ending_with(name, known)
    if len(found) > 1:
        raise KeyError(
            f"{name!r} names several cached functions: {', '.join(found)}; give the one you "
            "mean in full"
        )
    if not found:
        alike = names_like(name, known)
        hint = f" (did you mean {', '.join(alike)}?)" if alike else ""
        raise KeyError(
            f"no cached function is named {name!r} in {cache.directory}{hint}; give the "
            "qualified name (module.qualname) as get_cache_stats() lists it, or its last "
            "components"
        )
    (full,) = found
    return function_row(cache, full)


def cache_status() -> str:
    """One line: ``Hit rate: 82.5% | Tracked functions: 15 | Saved: 3.2 h``."""
    stats = get_cache_stats().values()
    calls = sum(s["total_calls"] for s in stats)
    hits = sum(s["cache_hits"] for s in stats)
    rate = 100.0 * hits / calls if calls else 0.0
    saved = sum(s["time_saved"] for s in stats)
    return (
        f"Hit rate: {rate:.1f}% | Tracked functions: {len(stats)} | "
        f"Saved: {report.format_duration(saved)}"
    )


# --- the efficiency table ---------------------------------------------------------------------


def _frame(rows: Iterable[FunctionStats]) -> pd.DataFrame:
    import pandas as pd

    rows = list(rows)
    columns: dict[str, pd.Series] = {}
    for column, field_name, factor in _REPORT:
        values = pd.Series([row[field_name] for row in rows], dtype=object)
        if column == "function":
            columns[column] = values.astype(str)
        elif column in _INT_COLUMNS:
            columns[column] = values.astype("int64")
        elif column == "last_access":
            columns[column] = pd.to_datetime(values, utc=True).astype("datetime64[ns, UTC]")
        else:
            columns[column] = values.astype("float64") * factor  # None becomes NaN
    return pd.DataFrame(columns, columns=list(REPORT_COLUMNS))


def get_cache_efficiency_report() -> pd.DataFrame:
    """The statistics of every cached function as a DataFrame, one row per function (ordered by
    name), in the original guide's columns: ``function``, ``calls``, ``hits``, ``misses``
    (int64), ``hit_rate`` (a fraction), ``avg_time_ms`` (compute time per miss),
    ``cache_size_mb``, ``last_access`` (``datetime64[ns, UTC]``), then ``time_saved``
    (seconds) and the latency percentiles of whole calls in ms, ``hit_latency_p50_ms`` ...
    ``miss_latency_p99_ms`` (NaN without such calls). Numbers are float64, so they sort as
    numbers. Empty, with those columns, when no cached function has been called.

    The columns carry only the guide's names (``calls``, not also `get_cache_stats`'s
    ``total_calls``): one name per quantity in a table people print and sort."""
    return _frame(get_cache_stats().values())


# --- patterns ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Thresholds:
    low_hit_rate: float = 0.5
    min_calls: int = 10
    unused_days: float = 7.0
    large_mb: float = 100.0
    frequent_calls: int = 100
    candidate_calls: int = 50
    candidate_hit_rate: float = 0.3


def _patterns(
    rows: Iterable[FunctionStats], limits: _Thresholds, now: float
) -> dict[str, list[str]]:
    rows = sorted(rows, key=lambda r: r["function_name"])
    unused_before = _moment(now - limits.unused_days * 86400)

    def names(select: Any) -> list[str]:
        return [r["function_name"] for r in rows if select(r)]

    return {
        "high_miss_rate_functions": names(
            lambda r: r["hit_rate"] < limits.low_hit_rate and r["total_calls"] > limits.min_calls
        ),
        "unused_caches": names(
            lambda r: r["last_accessed"] is not None and r["last_accessed"] < unused_before
        ),
        "large_caches": names(lambda r: r["cache_size_mb"] > limits.large_mb),
        "frequently_accessed": names(lambda r: r["total_calls"] > limits.frequent_calls),
        "optimization_candidates": names(
            lambda r: (
                r["total_calls"] > limits.candidate_calls
                and r["hit_rate"] < limits.candidate_hit_rate
            )
        ),
    }


def analyze_cache_patterns(
    *,
    low_hit_rate: float = 0.5,
    min_calls: int = 10,
    unused_days: float = 7,
    large_mb: float = 100,
    frequent_calls: int = 100,
    candidate_calls: int = 50,
    candidate_hit_rate: float = 0.3,
) -> dict[str, list[dict[str, Any]]]:
    """Cached functions that need attention, by qualified name. Each list holds, for each
    function, as in the original AFML cache's guide, a dict of ``function``, ``calls``,
    ``hit_rate``, ``size_mb`` and ``last_accessed`` (a UTC ``pd.Timestamp``):

    - ``high_miss_rate_functions``: hit rate below ``low_hit_rate`` over more than
      ``min_calls`` calls (their arguments rarely repeat);
    - ``unused_caches``: not called for more than ``unused_days`` days;
    - ``large_caches``: entries taking more than ``large_mb`` MB (2**20 bytes);
    - ``frequently_accessed``: more than ``frequent_calls`` calls;
    - ``optimization_candidates``: more than ``candidate_calls`` calls with a hit rate below
      ``candidate_hit_rate`` (caching costs them more than it saves, or a key is too fine).
    """
    limits = _Thresholds(
        low_hit_rate=low_hit_rate,
        min_calls=min_calls,
        unused_days=unused_days,
        large_mb=large_mb,
        frequent_calls=frequent_calls,
        candidate_calls=candidate_calls,
        candidate_hit_rate=candidate_hit_rate,
    )
    stats = get_cache_stats()
    return {
        pattern: [
            {
                "function": name,
                "calls": stats[name]["total_calls"],
                "hit_rate": stats[name]["hit_rate"],
                "size_mb": stats[name]["cache_size_mb"],
                "last_accessed": stats[name]["last_accessed"],
            }
            for name in names
        ]
        for pattern, names in _patterns(stats.values(), limits, time.time()).items()
    }


# --- the health report ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CacheHealth:
    """A snapshot of the cache's health. ``str()`` is the terminal report; in Jupyter it
    renders as HTML (``_repr_html_``). Built by `get_cache_health`."""

    directory: Path | None
    functions: tuple[FunctionStats, ...]  # every called function, by name
    size_bytes: int  # all entries on disk, of every function and namespace
    size_limit: int | None
    patterns: dict[str, list[str]]
    unused_days: float
    generated: float = field(default_factory=time.time)

    @property
    def total_calls(self) -> int:
        return sum(r["total_calls"] for r in self.functions)

    @property
    def cache_hits(self) -> int:
        return sum(r["cache_hits"] for r in self.functions)

    @property
    def hit_rate(self) -> float:
        calls = self.total_calls
        return self.cache_hits / calls if calls else 0.0

    @property
    def time_saved(self) -> float:
        return sum(r["time_saved"] for r in self.functions)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / MB

    @property
    def top_performers(self) -> list[FunctionStats]:
        """Up to five functions with the highest hit rates, of those hitting at least half the
        time (ties: more calls first)."""
        good = (r for r in self.functions if r["hit_rate"] >= _GOOD_HIT_RATE)
        ranked = sorted(good, key=lambda r: (-r["hit_rate"], -r["total_calls"], r["function_name"]))
        return ranked[:_TOP]

    @property
    def worst_performers(self) -> list[FunctionStats]:
        """Up to five functions with the lowest hit rates, of those missing more often than they
        hit (ties: more calls first); one not called yet (its entries imported) is not ranked."""
        poor = (r for r in self.functions if r["total_calls"] and r["hit_rate"] < _GOOD_HIT_RATE)
        ranked = sorted(poor, key=lambda r: (r["hit_rate"], -r["total_calls"], r["function_name"]))
        return ranked[:_TOP]

    @property
    def stale_caches(self) -> list[FunctionStats]:
        """Functions not called for more than ``unused_days`` days."""
        stale = set(self.patterns["unused_caches"])
        return [r for r in self.functions if r["function_name"] in stale]

    @property
    def recommendations(self) -> list[str]:
        """What to do about what the report shows, most useful first."""
        if not self.functions:
            return ["No cached function has been called with this cache directory yet."]
        by_name = {r["function_name"]: r for r in self.functions}
        advice = []
        for name in self.patterns["high_miss_rate_functions"]:
            row = by_name[name]
            advice.append(
                f"{name}: hit rate {row['hit_rate']:.0%} over {row['total_calls']:,} calls; its "
                "arguments rarely repeat. List arguments that do not change the result in "
                "ignore=, or drop the decorator if every call is new."
            )
        if self.stale_caches:
            megabytes = sum(r["cache_size_mb"] for r in self.stale_caches)
            advice.append(
                f"{len(self.stale_caches)} function(s) unused for over {self.unused_days:g} days "
                f"keep {report.format_size(megabytes * MB)}: clear them with f.cache_clear(), "
                "or run maintain_cache(max_age_days=...)."
            )
        for name in self.patterns["large_caches"]:
            advice.append(
                f"{name} keeps {report.format_size(by_name[name]['cache_size_mb'] * MB)}: give it "
                "a ttl=, or run "
                "maintain_cache(max_size_mb=...)."
            )
        if self.size_limit and self.size_bytes > 0.9 * self.size_limit:
            advice.append(
                f"The cache holds {report.format_size(self.size_bytes)} of its "
                f"{report.format_size(self.size_limit)} limit, so entries are being evicted: "
                "raise it with "
                "afml_cache.configure(size_limit=...) if hits are being lost."
            )
        # About how functions use the cache: damaged entries are `check()`'s (`afml-cache
        # health`), which says so above this report.
        return advice or ["Nothing to change in how the functions use the cache."]

    def __str__(self) -> str:
        return report.health_text(self)

    def __repr__(self) -> str:
        return (
            f"<CacheHealth {len(self.functions)} functions, {self.total_calls:,} calls, "
            f"hit rate {self.hit_rate:.1%}, {report.format_size(self.size_bytes)}>"
        )

    def _repr_html_(self) -> str:
        return report.health_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # IPython in a terminal shows the full text report rather than the one-line repr.
        printer.text(str(self))


def get_cache_health(*, unused_days: float = 7) -> CacheHealth:
    """The health of the configured cache: totals (functions, calls, hit rate, size on disk,
    time saved), top and worst performers, stale caches (unused for over ``unused_days`` days)
    and recommendations. ``print(get_cache_health())`` gives the terminal report; as the last
    expression of a Jupyter cell it shows as HTML."""
    cache = config.shared_cache()
    rows, size_bytes = _collect(cache)
    now = time.time()
    return CacheHealth(
        directory=cache.directory if cache is not None else None,
        functions=tuple(rows.values()),
        size_bytes=size_bytes,
        size_limit=cache.size_limit if cache is not None else None,
        patterns=_patterns(rows.values(), _Thresholds(unused_days=unused_days), now),
        unused_days=unused_days,
        generated=now,
    )


def print_cache_health(file: TextIO | None = None) -> None:
    """Shows the cache health report (see `get_cache_health`).

    Writes the text report to ``file`` (default: standard output). In a Jupyter notebook with no
    ``file`` given it displays the HTML version instead, wherever in a cell it is called. It
    returns None, like ``print``, so a notebook never shows the report twice; use
    `get_cache_health` for the report as an object.
    """
    health = get_cache_health()
    if file is None and in_notebook():
        from IPython.display import display

        display(health)
        return
    out = file if file is not None else sys.stdout
    out.write(str(health) + "\n")


# --- the monitor ------------------------------------------------------------------------------


class CacheMonitor:
    """Per-function statistics of the configured cache, and reports to share."""

    def get_function_stats(self, name: str) -> FunctionStats:
        """The statistics of the function ``name``, its qualified name or the last components
        of it (`function_stats`); fields read as keys or attributes: ``stats.hit_rate``.
        Raises KeyError, with the names that look alike, for a function the cache does not
        know."""
        return function_stats(name)

    def get_all_function_stats(self) -> dict[str, FunctionStats]:
        """`get_cache_stats`: every called function's statistics, by qualified name."""
        return get_cache_stats()

    def export_report(self, path: str | os.PathLike[str]) -> Path:
        """Writes a report of every cached function to ``path``; returns the path.

        The suffix picks the format: ``.csv``, one row per function with the columns of
        `get_cache_efficiency_report` (``last_access`` in ISO 8601, UTC); ``.html`` or
        ``.htm``, a self-contained page (no network, no scripts) with the health summary, the
        per-function table, and charts of hit rate, size and time saved per function.
        """
        target = Path(path)
        kind = _REPORT_SUFFIXES.get(target.suffix.lower())
        if kind is None:
            allowed = ", ".join(_REPORT_SUFFIXES)
            raise ValueError(
                f"cannot tell the report format of {str(target)!r} from its suffix "
                f"{target.suffix!r}; name the file with one of {allowed}"
            )
        health = get_cache_health()
        if kind == "csv":
            _frame(health.functions).to_csv(target, index=False)
        else:
            target.write_text(report.report_html(health), encoding="utf-8")
        return target


def get_cache_monitor() -> CacheMonitor:
    """The monitor of the configured cache."""
    return CacheMonitor()
