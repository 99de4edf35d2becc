"""Monitoring: per-function statistics, latency percentiles, the health report, the efficiency
table, pattern analysis and exported reports.

Statistics are driven through the store's shared counters (``record_call``), so every count is
known exactly; one test goes through a decorated function end to end. Each test has its own
cache directory.
"""

from __future__ import annotations

import io
import math
import re
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import afml_cache
from afml_cache import config
from afml_cache._core import LATENCY_BOUNDS
from afml_cache.monitoring import REPORT_COLUMNS, STATS_FIELDS, latency_percentiles


@pytest.fixture
def cache(cache_dir: Path) -> afml_cache.Cache:
    shared = config.shared_cache()
    assert shared is not None
    return shared


def record(
    cache: afml_cache.Cache,
    name: str,
    hits: int,
    misses: int,
    *,
    compute: float = 0.5,
    latency: float = 1e-3,
) -> None:
    """Counts ``hits`` hits (each saving ``compute`` s) and ``misses`` misses of ``name``."""
    for _ in range(hits):
        cache._store.record_call(name, True, 0.0, compute, latency)
    for _ in range(misses):
        cache._store.record_call(name, False, compute, 0.0, latency)


def store_bytes(cache: afml_cache.Cache, name: str, key: str, nbytes: int) -> int:
    """Stores incompressible bytes in ``name``'s namespace; returns the entry's size on disk."""
    view = cache.namespaced(name)
    view.set(key, np.random.default_rng(len(key)).bytes(nbytes))
    return next(e["size"] for e in view.entries() if e["key"] == key)


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Makes Python's clock run ``seconds`` ahead (the store's own clock is untouched)."""
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + seconds)


# --- latency percentiles --------------------------------------------------------------------

BOUNDS = (1.0, 2.0, 4.0, 8.0, math.inf)


def test_percentiles_interpolate_geometrically_inside_a_bucket() -> None:
    assert latency_percentiles([0, 0, 10, 0, 0], BOUNDS, (0.1, 0.5, 1.0)) == pytest.approx(
        (2 * 2**0.1, 2 * 2**0.5, 4.0)
    )
    # Ranks 2 and 3 of 4: the end of the (1, 2] bucket, the middle of (2, 4].
    assert latency_percentiles([0, 2, 2, 0, 0], BOUNDS, (0.5, 0.75)) == pytest.approx(
        (2.0, 2 * 2**0.5)
    )


def test_percentiles_in_the_first_and_the_unbounded_last_bucket() -> None:
    # The first bucket reports its upper bound, the unbounded last one its lower bound.
    assert latency_percentiles([5, 0, 0, 0, 5], BOUNDS, (0.5, 0.6, 0.99)) == (1.0, 8.0, 8.0)


def test_percentiles_of_an_empty_histogram_are_none() -> None:
    assert latency_percentiles([0] * 5, BOUNDS) == (None, None, None)
    assert latency_percentiles([], []) == (None, None, None)


@pytest.mark.parametrize(
    ("counts", "bounds", "qs", "message"),
    [
        ([1, 2], BOUNDS, (0.5,), "one count per bucket bound, got 2 counts and 5 bounds"),
        ([1] * 5, BOUNDS, (0.0,), r"quantiles must be in \(0, 1\], got 0.0"),
        ([1] * 5, BOUNDS, (1.5,), r"quantiles must be in \(0, 1\], got 1.5"),
    ],
)
def test_percentiles_refuse_bad_input(
    counts: list[int], bounds: tuple[float, ...], qs: tuple[float, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        latency_percentiles(counts, bounds, qs)


@pytest.mark.parametrize("seconds", [3e-6, 4.1e-5, 0.2, 1.7, 95.0])
def test_percentiles_of_the_store_buckets_are_within_19_percent(seconds: float) -> None:
    counts = [0] * len(LATENCY_BOUNDS)
    # bucket i holds LATENCY_BOUNDS[i-1] < t <= LATENCY_BOUNDS[i]
    counts[next(i for i, bound in enumerate(LATENCY_BOUNDS) if seconds <= bound)] = 7
    for estimate in latency_percentiles(counts, LATENCY_BOUNDS, (0.01, 0.5, 0.99, 1.0)):
        assert estimate is not None
        assert 1 / 1.19 <= estimate / seconds <= 1.19


def test_stats_rows_carry_hit_and_miss_latency_percentiles(cache: afml_cache.Cache) -> None:
    record(cache, "m.timed", hits=1, misses=0, latency=3e-6)
    row = afml_cache.get_cache_stats()["m.timed"]
    # 3 µs falls in the bucket (2^(6/4), 2^(7/4)] µs; one call sits mid-bucket (geometrically).
    middle = math.sqrt(LATENCY_BOUNDS[6] * LATENCY_BOUNDS[7])
    assert LATENCY_BOUNDS[6] < 3e-6 <= LATENCY_BOUNDS[7]
    assert row["hit_latency_p50"] == pytest.approx(middle)
    assert (row["miss_latency_p50"], row["miss_latency_p95"], row["miss_latency_p99"]) == (
        None,
        None,
        None,
    )


def test_a_decorated_function_counts_calls_and_latencies(cache_dir: Path) -> None:
    computed = []

    @afml_cache.robust_cacheable
    def square(x: int) -> int:
        computed.append(x)
        return x * x

    for x in (1, 1, 2, 1, 2):
        square(x)
    name = f"{square.__module__}.{square.__qualname__}"
    row = afml_cache.get_cache_stats()[name]
    assert computed == [1, 2]
    assert (row["total_calls"], row["cache_hits"], row["cache_misses"]) == (5, 3, 2)
    assert row["hit_rate"] == pytest.approx(0.6)
    for kind in ("hit", "miss"):
        p50, p95, p99 = (row[f"{kind}_latency_p{q}"] for q in (50, 95, 99))
        assert 0 < p50 <= p95 <= p99
    assert set(row) == set(STATS_FIELDS)


# --- statistics objects ---------------------------------------------------------------------


def test_function_stats_read_as_keys_and_attributes(cache: afml_cache.Cache) -> None:
    record(cache, "m.f", hits=3, misses=1)
    stats = afml_cache.get_cache_monitor().get_function_stats("m.f")
    assert stats["total_calls"] == stats.total_calls == 4
    assert stats.hit_rate == pytest.approx(0.75)
    assert stats.avg_computation_time == pytest.approx(0.5)
    with pytest.raises(AttributeError, match="no field 'calls'; fields: function_name, "):
        _ = stats.calls


def test_an_unknown_function_name_is_a_key_error_with_close_matches(
    cache: afml_cache.Cache,
) -> None:
    record(cache, "afml.labeling.triple_barrier", hits=1, misses=1)
    record(cache, "afml.features.frac_diff", hits=0, misses=1)
    monitor = afml_cache.get_cache_monitor()
    with pytest.raises(
        KeyError,
        # The closest first; functions decorated in this process (other tests') may follow.
        match=r"'afml\.labeling\.triple_barier'.*did you mean "
        r"afml\.labeling\.triple_barrier[,?]",
    ):
        monitor.get_function_stats("afml.labeling.triple_barier")
    with pytest.raises(KeyError, match="no cached function is named 'nothing_like_it'"):
        monitor.get_function_stats("nothing_like_it")
    # A short name mistyped: it was compared with full names only, and matched none.
    for typo in ("triple_barier", "tripple_barrier", "labeling.triple_barier"):
        with pytest.raises(KeyError, match=r"did you mean afml\.labeling\.triple_barrier[,?]"):
            monitor.get_function_stats(typo)


def test_a_short_name_finds_the_one_function_it_ends_with(cache: afml_cache.Cache) -> None:
    record(cache, "afml.labeling.triple_barrier", hits=1, misses=1)
    record(cache, "afml.labeling.triple_barrier_fast", hits=0, misses=1)
    monitor = afml_cache.get_cache_monitor()
    full = monitor.get_function_stats("afml.labeling.triple_barrier")
    assert monitor.get_function_stats("triple_barrier") == full
    assert monitor.get_function_stats("labeling.triple_barrier") == full
    assert full.function_name == "afml.labeling.triple_barrier"
    # A name ending a dotted component only: "barrier" is no function's name.
    with pytest.raises(KeyError, match="no cached function is named 'barrier'"):
        monitor.get_function_stats("barrier")


def test_a_short_name_of_several_functions_lists_them(cache: afml_cache.Cache) -> None:
    record(cache, "afml.labeling.triple_barrier", hits=1, misses=1)
    record(cache, "research.triple_barrier", hits=0, misses=1)
    with pytest.raises(
        KeyError,
        match=r"'triple_barrier' names several cached functions: "
        r"afml\.labeling\.triple_barrier, research\.triple_barrier; ",
    ):
        afml_cache.get_cache_monitor().get_function_stats("triple_barrier")


def test_a_decorated_function_not_called_yet_has_zero_statistics(cache_dir: Path) -> None:
    @afml_cache.robust_cacheable
    def never_called(x: int) -> int:
        return x

    name = f"{never_called.__module__}.{never_called.__qualname__}"
    never = afml_cache.get_cache_monitor().get_function_stats(name)
    assert (never.total_calls, never.hit_rate, never.last_accessed) == (0, 0.0, None)
    assert never.hit_latency_p50 is None


def test_times_are_utc_timestamps(cache: afml_cache.Cache) -> None:
    before = pd.Timestamp.now(tz="UTC")
    record(cache, "m.when", hits=0, misses=12)
    after = pd.Timestamp.now(tz="UTC")
    when = afml_cache.get_cache_stats()["m.when"]["last_accessed"]
    assert isinstance(when, pd.Timestamp) and str(when.tz) == "UTC"
    assert before - pd.Timedelta("1s") <= when <= after
    (missing,) = afml_cache.analyze_cache_patterns()["high_miss_rate_functions"]
    assert missing["last_accessed"] == when


def test_the_monitor_lists_every_called_function(cache: afml_cache.Cache) -> None:
    record(cache, "m.b", hits=1, misses=1)
    record(cache, "m.a", hits=0, misses=2)
    everything = afml_cache.get_cache_monitor().get_all_function_stats()
    assert list(everything) == ["m.a", "m.b"]
    assert everything == afml_cache.get_cache_stats()
    assert everything["m.a"]["cache_misses"] == 2


# --- the efficiency table -------------------------------------------------------------------

DTYPES = {
    "function": "str",
    "calls": "int64",
    "hits": "int64",
    "misses": "int64",
    "hit_rate": "float64",
    "avg_time_ms": "float64",
    "cache_size_mb": "float64",
    "last_access": "datetime64[ns, UTC]",
    "time_saved": "float64",
    **{f"{k}_latency_p{q}_ms": "float64" for k in ("hit", "miss") for q in (50, 95, 99)},
}


def test_efficiency_report_has_the_guides_columns_one_numeric_row_per_function(
    cache: afml_cache.Cache,
) -> None:
    before = pd.Timestamp.now(tz="UTC")
    record(cache, "m.mostly_hits", hits=9, misses=1, compute=2.0)
    record(cache, "m.always_new", hits=0, misses=4, compute=0.25, latency=3e-6)
    record(cache, "m.quarter", hits=1, misses=3, compute=1.0)
    size = store_bytes(cache, "m.quarter", "k", 5000)
    after = pd.Timestamp.now(tz="UTC")

    frame = afml_cache.get_cache_efficiency_report()
    assert list(frame.columns) == list(REPORT_COLUMNS) == list(DTYPES)
    assert {c: str(t) for c, t in frame.dtypes.items()} == DTYPES
    assert list(frame["function"]) == ["m.always_new", "m.mostly_hits", "m.quarter"]
    assert list(frame["calls"]) == [4, 10, 4]
    assert list(frame["hits"]) == [0, 9, 1]
    assert list(frame["misses"]) == [4, 1, 3]
    assert list(frame["hit_rate"]) == pytest.approx([0.0, 0.9, 0.25])
    assert list(frame["avg_time_ms"]) == pytest.approx([250.0, 2000.0, 1000.0])
    assert list(frame["time_saved"]) == pytest.approx([0.0, 18.0, 1.0])
    assert list(frame["cache_size_mb"]) == pytest.approx([0.0, 0.0, size / 2**20])
    assert frame["last_access"].between(before - pd.Timedelta("1s"), after).all()
    assert frame["hit_latency_p50_ms"].isna().tolist() == [True, False, False]
    stats = afml_cache.get_cache_stats()["m.always_new"]
    assert frame["miss_latency_p50_ms"][0] == pytest.approx(1e3 * stats["miss_latency_p50"])
    # The migration guide's ranking, and numbers sort as numbers.
    assert frame.sort_values("calls", ascending=False)["function"].iloc[0] == "m.mostly_hits"
    ranked = frame.sort_values("hit_rate", ascending=False)["function"].tolist()
    assert ranked == ["m.mostly_hits", "m.quarter", "m.always_new"]


def test_efficiency_report_is_empty_with_its_columns(cache_dir: Path) -> None:
    frame = afml_cache.get_cache_efficiency_report()
    assert frame.empty
    assert list(frame.columns) == list(REPORT_COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == DTYPES


# --- patterns -------------------------------------------------------------------------------


@pytest.fixture
def patterned(cache: afml_cache.Cache) -> afml_cache.Cache:
    record(cache, "m.misses", hits=4, misses=16)  # 20 calls, 20%
    record(cache, "m.few_calls", hits=0, misses=10)  # 10 calls: not more than 10
    record(cache, "m.busy", hits=90, misses=11)  # 101 calls, 89%
    record(cache, "m.candidate", hits=6, misses=54)  # 60 calls, 10%
    record(cache, "m.at_the_line", hits=18, misses=42)  # 60 calls, exactly 30%
    record(cache, "m.large", hits=1, misses=1)
    store_bytes(cache, "m.large", "big", 3000)
    return cache


def pattern_names(patterns: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {pattern: [f["function"] for f in found] for pattern, found in patterns.items()}


def test_patterns_with_the_default_thresholds(patterned: afml_cache.Cache) -> None:
    patterns = afml_cache.analyze_cache_patterns()
    assert pattern_names(patterns) == {
        "high_miss_rate_functions": ["m.at_the_line", "m.candidate", "m.misses"],
        "unused_caches": [],
        "large_caches": [],
        "frequently_accessed": ["m.busy"],
        "optimization_candidates": ["m.candidate"],
    }
    # Each function comes with the fields the original guide prints.
    (candidate,) = patterns["optimization_candidates"]
    stats = afml_cache.get_cache_stats()["m.candidate"]
    assert candidate == {
        "function": "m.candidate",
        "calls": 60,
        "hit_rate": 0.1,
        "size_mb": 0.0,
        "last_accessed": stats["last_accessed"],
    }
    assert isinstance(candidate["last_accessed"], pd.Timestamp)


def test_pattern_thresholds_are_configurable(patterned: afml_cache.Cache) -> None:
    patterns = afml_cache.analyze_cache_patterns(
        min_calls=5,
        large_mb=0.002,  # MB of 2**20 bytes: the 3000-byte entry's 0.00286
        frequent_calls=50,
        candidate_calls=19,
        candidate_hit_rate=0.31,
    )
    assert pattern_names(patterns) == {
        "high_miss_rate_functions": ["m.at_the_line", "m.candidate", "m.few_calls", "m.misses"],
        "unused_caches": [],
        "large_caches": ["m.large"],
        "frequently_accessed": ["m.at_the_line", "m.busy", "m.candidate"],
        "optimization_candidates": ["m.at_the_line", "m.candidate", "m.misses"],
    }


def test_unused_caches_are_those_not_called_for_the_given_days(
    patterned: afml_cache.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    later(monkeypatch, 8 * 86400)
    every = sorted(afml_cache.get_cache_stats())
    assert pattern_names(afml_cache.analyze_cache_patterns())["unused_caches"] == every
    assert afml_cache.analyze_cache_patterns(unused_days=9)["unused_caches"] == []


# --- the health report ----------------------------------------------------------------------


def test_health_report_text(patterned: afml_cache.Cache) -> None:
    out = io.StringIO()
    assert afml_cache.print_cache_health(file=out) is None
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[1] == "CACHE HEALTH REPORT"
    assert f"Directory: {patterned.directory}" in lines
    assert "  Total Functions:     6" in lines
    assert "  Total Calls:         253" in lines
    # hits: 4 + 0 + 90 + 6 + 18 + 1 = 119 of 253
    assert f"  Overall Hit Rate:    {119 / 253:.1%}" in lines
    top = lines.index("Top Performers (by hit rate):")
    assert lines[top + 1 : top + 4] == [
        "  1. m.busy: 89.1% (101 calls)",
        "  2. m.large: 50.0% (2 calls)",
        "",
    ]
    worst = lines.index("Worst Performers (by hit rate):")
    assert lines[worst + 1 : worst + 6] == [
        "  1. m.few_calls: 0.0% (10 calls)",
        "  2. m.candidate: 10.0% (60 calls)",
        "  3. m.misses: 20.0% (20 calls)",
        "  4. m.at_the_line: 30.0% (60 calls)",
        "",
    ]
    assert "Stale Caches" not in text
    recommendations = text[text.index("Recommendations:") :]
    for name in ("m.at_the_line", "m.candidate", "m.misses"):
        assert f"  - {name}: hit rate" in recommendations
    assert "m.busy" not in recommendations
    assert max(len(line) for line in lines if not line.startswith("Directory:")) <= 70
    assert text.endswith("=" * 70 + "\n")


def test_health_report_never_splits_a_function_name(cache: afml_cache.Cache) -> None:
    # A script's function, named with its path, was cut mid-word at column 70: the name a
    # user copied into `clear --function` was wrong.
    name = "__main__[/home/ana/research/project/labels.py].compute_triple_barrier_labels"
    record(cache, name, hits=1, misses=1)
    lines = str(afml_cache.get_cache_health()).splitlines()
    top = lines.index("Top Performers (by hit rate):")
    assert lines[top + 1] == f"  1. {name}: 50.0% (2 calls)"


def test_health_report_lists_stale_caches(
    patterned: afml_cache.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    later(monkeypatch, 30 * 86400)
    health = afml_cache.get_cache_health()
    assert [r.function_name for r in health.stale_caches] == sorted(afml_cache.get_cache_stats())
    text = str(health)
    lines = text.splitlines()
    first = lines[lines.index("Stale Caches (not used for over 7 days):") + 1]
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
    assert re.fullmatch(rf"  - m\.at_the_line: last used {when}, 0\.00 MB", first), first
    assert "6 function(s) unused for over 7 days" in text


def test_health_of_an_empty_cache(cache_dir: Path) -> None:
    health = afml_cache.get_cache_health()
    assert (len(health.functions), health.total_calls, health.hit_rate) == (0, 0, 0.0)
    assert "No cached function has been called with this cache directory yet." in str(health)


def test_print_cache_health_writes_to_stdout_outside_notebooks(
    patterned: afml_cache.Cache, capsys: pytest.CaptureFixture[str]
) -> None:
    afml_cache.print_cache_health()
    assert capsys.readouterr().out == str(afml_cache.get_cache_health()) + "\n"


def test_in_a_notebook_print_cache_health_displays_html_once(
    patterned: afml_cache.Cache,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A stand-in for a Jupyter kernel's IPython: what print_cache_health looks for and calls.
    class Kernel:
        kernel = object()

    shown: list[Any] = []
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: Kernel()  # type: ignore[attr-defined]
    display = types.ModuleType("IPython.display")
    display.display = shown.append  # type: ignore[attr-defined]
    ipython.display = display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    assert afml_cache.print_cache_health() is None
    assert capsys.readouterr().out == ""
    assert len(shown) == 1 and isinstance(shown[0], afml_cache.CacheHealth)
    # An explicit file still gets the text.
    out = io.StringIO()
    afml_cache.print_cache_health(file=out)
    assert "CACHE HEALTH REPORT" in out.getvalue() and len(shown) == 1


def test_health_renders_as_escaped_html(cache: afml_cache.Cache) -> None:
    record(cache, "tests.make.<locals>.step", hits=3, misses=1)
    page = afml_cache.get_cache_health()._repr_html_()
    assert page.startswith("<div>") and "<table" in page
    assert "tests.make.&lt;locals&gt;.step" in page
    assert "<locals>" not in page
    assert "75.0%" in page


# --- exported reports -----------------------------------------------------------------------


def test_csv_report_has_the_report_columns_and_one_row_per_function(
    patterned: afml_cache.Cache, tmp_path: Path
) -> None:
    target = tmp_path / "report.csv"
    written = afml_cache.get_cache_monitor().export_report(target)
    assert written == target
    back = pd.read_csv(target)
    expected = afml_cache.get_cache_efficiency_report()
    assert list(back.columns) == list(REPORT_COLUMNS)
    assert back["function"].tolist() == expected["function"].tolist()
    for column in ("calls", "hits", "misses"):
        assert back[column].tolist() == expected[column].tolist()
    for column in ("hit_rate", "time_saved", "cache_size_mb", "miss_latency_p99_ms"):
        assert back[column].tolist() == pytest.approx(expected[column].tolist())
    parsed = pd.to_datetime(back["last_access"], utc=True, format="ISO8601")
    assert (parsed - expected["last_access"]).abs().max() < pd.Timedelta("1ms")


@pytest.mark.parametrize("name", ["report.html", "REPORT.HTM"])
def test_html_report_is_self_contained_with_three_charts(
    cache: afml_cache.Cache, tmp_path: Path, name: str
) -> None:
    record(cache, "m.plain", hits=3, misses=1)
    record(cache, "tests.make.<locals>.step", hits=0, misses=2)
    store_bytes(cache, "m.plain", "k", 2000)
    target = tmp_path / name
    assert afml_cache.get_cache_monitor().export_report(target) == target
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 3
    for title in ("Hit rate per function", "Size on disk per function", "Time saved per function"):
        assert title in page
    assert "http" not in page.lower()
    assert "<script" not in page and "<link" not in page
    assert "&lt;locals&gt;" in page and "<locals>" not in page
    # Every chart has one bar per function.
    assert page.count("<rect") == 3 * 2


def test_html_report_of_an_empty_cache_has_no_charts(cache_dir: Path, tmp_path: Path) -> None:
    target = afml_cache.get_cache_monitor().export_report(tmp_path / "empty.html")
    page = target.read_text(encoding="utf-8")
    assert "<svg" not in page
    assert "No cached function has been called" in page


def test_report_format_must_be_named_by_the_suffix(cache_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    with pytest.raises(ValueError, match=r"suffix '\.txt'.*one of \.csv, \.html, \.htm"):
        afml_cache.get_cache_monitor().export_report(target)
    assert not target.exists()


def test_cache_status_still_summarises_in_one_line(cache: afml_cache.Cache) -> None:
    record(cache, "m.one", hits=3, misses=1, compute=40.0)
    assert afml_cache.cache_status() == "Hit rate: 75.0% | Tracked functions: 1 | Saved: 2.0 min"


def test_time_ranges_of_entries_are_utc_timestamps(cache_dir: Path) -> None:
    @afml_cache.time_aware_cacheable
    def mean(df: pd.DataFrame) -> float:
        return float(df["value"].mean())

    days = pd.date_range("2024-01-01", periods=10, freq="D", tz="America/New_York")
    mean(pd.DataFrame({"value": np.arange(10.0)}, index=days))
    (entry,) = mean.cache_entries()
    start, end = entry["time_range"]
    assert (start, end) == (days[0], days[-1])
    assert str(start.tz) == str(end.tz) == "UTC"
    assert "Timestamp('2024-01-01 05:00:00+0000', tz='UTC')" in repr(entry)


# --- sizes ----------------------------------------------------------------------------------


def test_sizes_use_the_units_sizes_are_given_in(cache_dir: Path) -> None:
    # "2GB" is 2 * 2**30 bytes when configured: reports show it as 2.0 GB, and every MB in a
    # report is 2**20 bytes, as in "500MB".
    afml_cache.configure(directory=cache_dir, size_limit="2GB")
    cache = config.shared_cache()
    assert cache is not None
    record(cache, "m.sized", hits=1, misses=1)
    size = store_bytes(cache, "m.sized", "k", 3 * 2**20)
    text = str(afml_cache.get_cache_health())
    assert f"  Total Cache Size:    {size / 2**20:.2f} MB (limit 2.0 GB)" in text.splitlines()
    assert afml_cache.get_cache_stats()["m.sized"]["cache_size_mb"] == size / 2**20
    assert "of 2.0 GB" in afml_cache.get_cache_health()._repr_html_()


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0 B"),
        (1023, "1,023 B"),
        (1536, "1.50 KB"),
        (5 * 2**20, "5.00 MB"),
        (2 * 2**30, "2.0 GB"),
        (int(1.5 * 2**40), "1.5 TB"),
    ],
)
def test_format_size(nbytes: int, text: str) -> None:
    from afml_cache.report import format_size

    assert format_size(nbytes) == text
