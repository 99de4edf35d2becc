"""Loaders by [start, end) that compute only what is missing: time_aware_cacheable(range=...).

Every result is compared with the uncached call (``f.uncached``); what the loaders computed is
counted from the spans they were asked for."""

from __future__ import annotations

import copy
import datetime
import gc
import itertools
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dateutil.parser
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afml_cache import Cache, CacheWarning, range_spans, ranges, time_aware_cacheable
from afml_cache._store import serialize

HOUR = pd.Timedelta("1h").value
BASE = pd.Timestamp("2024-01-01").value  # a Monday


def hourly(start: Any, end: Any, *, tz: str | None = None) -> pd.DataFrame:
    """Hourly bars on a fixed grid, values a function of the hour: what a vendor returns."""
    first = pd.Timestamp(start).ceil("h")
    index = pd.date_range(first, end, freq="h", inclusive="left", name="time", tz=tz)
    hours = (index.as_unit("ns").asi8 // HOUR) % 97
    return pd.DataFrame({"close": hours * 1.5, "volume": hours}, index=index)


def weekday_hours(start: Any, end: Any) -> pd.Series:
    """Trading-hours bars only, as a Series with no frequency; weekends return no rows."""
    bars = hourly(start, end)
    bars = bars[(bars.index.day_of_week < 5) & (bars.index.hour >= 14) & (bars.index.hour < 21)]
    return bars["close"].rename("close")


def spans(log: list[tuple[Any, Any]]) -> list[tuple[int, int]]:
    return [(pd.Timestamp(s).value, pd.Timestamp(e).value) for s, e in log]


def loader(
    body: Callable[..., Any], log: list[tuple[Any, Any]], **options: Any
) -> Callable[..., Any]:
    """A decorated loader(symbol, start, end) that logs the spans it computes."""

    @time_aware_cacheable(range=("start", "end"), **options)
    def load(symbol: str, start: Any, end: Any) -> Any:
        log.append((start, end))
        return body(start, end)

    return load


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The loaders' clock, set by the test: ``clock[0]`` is now (ns)."""
    now = [pd.Timestamp("2030-01-01").value]
    monkeypatch.setattr(ranges, "now_ns", lambda: now[0])
    return now


def test_a_request_computes_only_its_gaps_and_equals_the_uncached_call(
    cache_dir: Path, clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    first = load("AAPL", "2024-01-01", "2024-03-01")
    pd.testing.assert_frame_equal(first, hourly("2024-01-01", "2024-03-01"))
    log.clear()
    wider = load("AAPL", "2023-12-01", "2024-04-01")
    pd.testing.assert_frame_equal(wider, hourly("2023-12-01", "2024-04-01"))
    assert log == [
        (pd.Timestamp("2023-12-01"), pd.Timestamp("2024-01-01")),
        (pd.Timestamp("2024-03-01"), pd.Timestamp("2024-04-01")),
    ]
    log.clear()
    inside = load("AAPL", "2024-02-10 05:00", "2024-02-11")
    pd.testing.assert_frame_equal(inside, hourly("2024-02-10 05:00", "2024-02-11"))
    assert inside.index.freq == "h"
    assert log == []
    # Another symbol is another family.
    load("MSFT", "2024-02-10", "2024-02-11")
    assert len(log) == 1
    [interval] = load.coverage("AAPL")
    assert (interval["start"], interval["end"]) == (
        pd.Timestamp("2023-12-01", tz="UTC"),
        pd.Timestamp("2024-04-01", tz="UTC"),
    )
    assert interval["pieces"] == 3


requests = st.lists(
    st.tuples(st.integers(0, 24 * 20 * 4), st.integers(1, 24 * 8 * 4)), min_size=1, max_size=6
)


@pytest.mark.parametrize("memory_limit", ["1GB", 1], ids=["memory", "disk"])
@pytest.mark.parametrize("body", [hourly, weekday_hours], ids=["frame", "series"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(asked=requests)
def test_every_result_equals_the_uncached_call_and_nothing_covered_is_computed_again(
    body: Callable[..., Any], memory_limit: Any, asked: list[tuple[int, int]], clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []
    with tempfile.TemporaryDirectory() as directory:
        load = loader(body, log, cache=Cache(directory, memory_limit=memory_limit))
        wanted = []
        for offset, length in asked:  # in quarter hours: bounds on and off the hourly grid
            start = pd.Timestamp(BASE + offset * HOUR // 4)
            end = start + pd.Timedelta(length * HOUR // 4)
            wanted.append((start.value, end.value))
            got = load("ES", start, end)
            expected = body(start, end)
            if isinstance(expected, pd.Series):
                # pandas keeps a frequency on a selection that happens to be contiguous; the
                # pieces keep the one their own selection had.
                pd.testing.assert_series_equal(got, expected, check_freq=False)
            else:
                pd.testing.assert_frame_equal(got, expected)
    computed = sorted(spans(log))
    for (_, end), (start, _) in itertools.pairwise(computed):
        assert end <= start, "a span was computed twice"
    union = _union(wanted)
    assert not range_spans.gaps(computed, union), "computed outside what was asked"
    assert sum(e - s for s, e in computed) <= sum(e - s for s, e in union)


def _union(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def test_a_holiday_that_returned_no_rows_counts_as_covered(
    cache_dir: Path, clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(weekday_hours, log)
    weekend = ("2024-01-06", "2024-01-08")  # Saturday and Sunday
    empty = load("ES", *weekend)
    pd.testing.assert_series_equal(empty, weekday_hours(*weekend))
    assert empty.empty
    log.clear()
    pd.testing.assert_series_equal(load("ES", *weekend), weekday_hours(*weekend))
    week = load("ES", "2024-01-01", "2024-01-15")
    pd.testing.assert_series_equal(week, weekday_hours("2024-01-01", "2024-01-15"))
    assert spans(log) == spans([("2024-01-01", "2024-01-06"), ("2024-01-08", "2024-01-15")])


def test_rows_outside_the_gap_are_a_value_error_naming_the_function_and_rows(
    cache_dir: Path, clock: list[int]
) -> None:
    @time_aware_cacheable(range=("start", "end"))
    def sloppy_bars(symbol: str, start: Any, end: Any) -> pd.DataFrame:
        return hourly(pd.Timestamp(start) - pd.Timedelta("2h"), end)  # two bars too early

    with pytest.raises(ValueError, match=r"sloppy_bars returned 2 row\(s\) outside") as caught:
        sloppy_bars("ES", "2024-01-02", "2024-01-03")
    assert "2024-01-01 22:00:00" in str(caught.value)
    assert sloppy_bars.coverage("ES") == []

    @time_aware_cacheable(range=("start", "end"))
    def shuffled(symbol: str, start: Any, end: Any) -> pd.DataFrame:
        return hourly(start, end).iloc[::-1]

    with pytest.raises(ValueError, match="shuffled returned rows out of time order"):
        shuffled("ES", "2024-01-02", "2024-01-03")

    @time_aware_cacheable(range=("start", "end"))
    def listing(symbol: str, start: Any, end: Any) -> list[float]:
        return [1.0]

    with pytest.raises(TypeError, match="listing returned a list; a range loader must return"):
        listing("ES", "2024-01-02", "2024-01-03")


def test_bad_options_are_errors_at_decoration() -> None:
    with pytest.raises(ValueError, match="range= takes the names of the start and end"):
        time_aware_cacheable(range="start")
    for chunk in ("fortnightly", "0h", "-1D"):  # no step would widen a gap to all of time
        with pytest.raises(ValueError, match="chunk= takes a positive pandas frequency"):
            time_aware_cacheable(range=("start", "end"), chunk=chunk)
    with pytest.raises(ValueError, match="chunk= and live_calendar= are options of range loaders"):
        time_aware_cacheable(chunk="1D")
    with pytest.raises(ValueError, match="live_ttl='soon' is not a duration"):
        time_aware_cacheable(range=("start", "end"), live_ttl="soon")
    with pytest.raises(ValueError, match="has no argument 'begin' that range= can name"):

        @time_aware_cacheable(range=("begin", "end"))
        def load(symbol: str, start: Any, end: Any) -> pd.DataFrame:
            return hourly(start, end)


def test_gaps_are_aligned_to_chunks(cache_dir: Path, clock: list[int]) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log, chunk="1D")
    got = load("ES", "2024-01-02 10:00", "2024-01-02 14:00")
    pd.testing.assert_frame_equal(got, hourly("2024-01-02 10:00", "2024-01-02 14:00"))
    assert spans(log) == spans([("2024-01-02", "2024-01-03")])
    load("ES", "2024-01-02 03:00", "2024-01-02 23:00")
    load("ES", "2024-01-02 20:00", "2024-01-03 01:00")
    assert spans(log) == spans([("2024-01-02", "2024-01-03"), ("2024-01-03", "2024-01-04")])
    monthly: list[tuple[Any, Any]] = []
    by_month = loader(hourly, monthly, chunk="1MS")
    by_month("ES", "2024-02-10", "2024-03-05")
    assert spans(monthly) == spans([("2024-02-01", "2024-04-01")])


@pytest.mark.parametrize(
    "chunk",
    ["1bh", pd.DateOffset(hours=6), pd.DateOffset(seconds=10)],
    ids=["bh", "6h-offset", "10s-offset"],
)
def test_chunks_finer_than_a_day_that_are_not_fixed_steps(
    cache_dir: Path, clock: list[int], chunk: Any
) -> None:
    # Widened from midnight by one step, a gap's end fell before the gap's: 1 row of 10.
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log, chunk=chunk)
    for start, end in [("2024-01-03 09:00", "2024-01-03 19:00"), ("2024-01-03", "2024-01-05")]:
        pd.testing.assert_frame_equal(load("ES", start, end), hourly(start, end))
    gap = (pd.Timestamp("2024-01-03 09:00:03").value, pd.Timestamp("2024-01-03 18:49").value)
    low, high = range_spans.align(gap, pd.tseries.frequencies.to_offset(chunk))
    assert low <= gap[0] and high >= gap[1]
    if chunk == pd.DateOffset(seconds=10):  # a fixed step: the grid of 10 s, not left as it was
        assert (pd.Timestamp(low), pd.Timestamp(high)) == (
            pd.Timestamp("2024-01-03 09:00:00"),
            pd.Timestamp("2024-01-03 18:49:00"),
        )


def test_time_zones_and_units_of_the_request_reach_the_function(
    cache_dir: Path, clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(lambda s, e: hourly(s, e, tz=None if s.tz is None else "America/New_York"), log)
    start = pd.Timestamp("2024-01-02 09:30", tz="America/New_York")
    got = load("ES", start, start + pd.Timedelta("30h"))
    load("ES", start + pd.Timedelta("20h"), start + pd.Timedelta("50h"))
    got = load("ES", start, start + pd.Timedelta("50h"))
    expected = load.uncached("ES", start, start + pd.Timedelta("50h"))
    pd.testing.assert_frame_equal(got, expected)
    assert str(got.index.tz) == "America/New_York"
    assert all(str(s.tz) == "America/New_York" for s, _ in log)
    # Naive bounds given as datetimes (microseconds) are another family.
    naive = load("ES", start.tz_localize(None).to_pydatetime(), pd.Timestamp("2024-01-04"))
    pd.testing.assert_frame_equal(
        naive, hourly(start.tz_localize(None).to_pydatetime(), pd.Timestamp("2024-01-04"))
    )


@pytest.mark.parametrize(
    "start",
    [
        dateutil.parser.isoparse("2024-01-01T00:00:00Z"),  # tzinfo=tzutc()
        pd.Timestamp("2024-01-01", tz="dateutil/Europe/Paris"),
    ],
    ids=["isoparse", "dateutil-zone"],
)
def test_dateutil_time_zones_reach_the_function(
    cache_dir: Path, clock: list[int], start: Any
) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    end = start + pd.Timedelta("2D")
    pd.testing.assert_frame_equal(load("ES", start, end), hourly(start, end))
    later = (start + pd.Timedelta("1D"), end + pd.Timedelta("1D"))
    pd.testing.assert_frame_equal(load("ES", *later), hourly(*later))
    assert spans(log[1:]) == spans([(end, later[1])])
    assert all(s.tzinfo == start.tzinfo for s, _ in log)
    # The family's key names the zone, not the zone object: another object of it is a hit.
    other = pd.Timestamp(start).tz_convert(copy.deepcopy(start.tzinfo))
    engine = load.__afml_cache__
    assert engine.key(("ES", other, end), {}) == engine.key(("ES", start, end), {})


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-01-01", pd.DatetimeIndex(["2024-01-03"]).as_unit("ns")[0]),
        (pd.Timestamp("2024-01-01").as_unit("s"), "2024-01-03"),
        (pd.Timestamp("2024-01-01").as_unit("ns"), "2024-01-03"),
    ],
    ids=["us-ns", "s-us", "ns-us"],
)
def test_each_bound_reaches_the_function_in_the_unit_it_was_given(
    cache_dir: Path, clock: list[int], start: Any, end: Any
) -> None:
    def grid(start: Any, end: Any) -> pd.DataFrame:
        # pd.date_range gives the finer unit of its bounds.
        index = pd.date_range(start, end, freq="h", inclusive="left", name="time")
        return pd.DataFrame({"close": 1.0}, index=index)

    log: list[tuple[Any, Any]] = []
    load = loader(grid, log)
    pd.testing.assert_frame_equal(load("ES", start, end), grid(start, end))
    given = (pd.Timestamp(start).unit, pd.Timestamp(end).unit)
    assert [(s.unit, e.unit) for s, e in log] == [given]
    pd.testing.assert_frame_equal(load("ES", start, end), grid(start, end))
    assert len(log) == 1


@pytest.mark.parametrize("chunk", ["1D", "1h", "1MS"])
def test_an_open_ended_request_is_aligned_within_the_times_pandas_holds(
    cache_dir: Path, clock: list[int], chunk: str
) -> None:
    def vendor(start: Any, end: Any) -> pd.DataFrame:
        index = pd.date_range("2024-01-01", periods=72, freq="h", name="time")
        bars = pd.DataFrame({"close": np.arange(72.0)}, index=index)
        return bars[(index >= in_utc(start)) & (index < in_utc(end))]

    def in_utc(moment: Any) -> pd.Timestamp:
        moment = pd.Timestamp(moment)
        return moment if moment.tz is None else moment.tz_convert("UTC").tz_localize(None)

    log: list[tuple[Any, Any]] = []
    load = loader(vendor, log, chunk=chunk)
    london = pd.Timestamp("2024-01-02", tz="Europe/London")  # east of UTC: past pandas' times
    new_york = pd.Timestamp.min.tz_localize("America/New_York")  # west of UTC: before them
    for start, end in [
        ("2024-01-02", pd.Timestamp.max),
        (pd.Timestamp.min, "2024-01-02"),
        (london, pd.Timestamp.max),
        (new_york, pd.Timestamp("2024-01-02", tz="America/New_York")),
    ]:
        pd.testing.assert_frame_equal(load("ES", start, end), vendor(start, end))
        computed = len(log)
        pd.testing.assert_frame_equal(load("ES", start, end), vendor(start, end))
        assert len(log) == computed


def test_the_live_edge_expires_after_live_ttl_and_only_the_tail_is_fetched_again(
    cache_dir: Path, clock: list[int], tmp_path: Path
) -> None:
    vendor = tmp_path / "revision"
    vendor.write_text("0")

    def forming(start: Any, end: Any) -> pd.DataFrame:
        bars = hourly(start, end)  # the vendor's bars as of now
        return bars.assign(close=bars["close"] + int(vendor.read_text()))

    log: list[tuple[Any, Any]] = []
    load = loader(forming, log, live_window="2h", live_ttl="15min")
    clock[0] = pd.Timestamp("2024-03-05 12:10").value
    asked = ("ES", "2024-03-01", "2024-03-05 12:00")
    as_computed = load(*asked)
    vendor.write_text("1")
    clock[0] += pd.Timedelta("10min").value  # within live_ttl: served as computed
    pd.testing.assert_frame_equal(load(*asked), as_computed)
    assert len(log) == 1
    clock[0] += pd.Timedelta("10min").value  # past live_ttl: the last two hours again
    got = load(*asked)
    assert spans(log[1:]) == spans([("2024-03-05 10:10", "2024-03-05 12:00")])
    settled = as_computed.loc[:"2024-03-05 10:00"]
    pd.testing.assert_frame_equal(got.loc[:"2024-03-05 10:00"], settled)
    pd.testing.assert_frame_equal(
        got, pd.concat([settled, forming("2024-03-05 10:10", "2024-03-05 12:00")]).asfreq("h")
    )
    assert [c["live"] for c in load.coverage("ES")] == [True]


def test_a_calendar_measures_the_live_window_in_trading_time(
    cache_dir: Path, clock: list[int]
) -> None:
    pytest.importorskip("exchange_calendars")
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log, live_window="1h", live_ttl="15min", live_calendar="XNYS")
    clock[0] = pd.Timestamp("2024-01-05 22:00").value  # Friday, an hour after the close
    load("ES", "2024-01-05", "2024-01-06")
    clock[0] = pd.Timestamp("2024-01-07 23:00").value  # Sunday: no trading since
    load("ES", "2024-01-05", "2024-01-06")
    assert len(log) == 1
    clock[0] = pd.Timestamp("2024-01-08 14:50").value  # Monday, 20 trading minutes in
    got = load("ES", "2024-01-05", "2024-01-06")
    pd.testing.assert_frame_equal(got, hourly("2024-01-05", "2024-01-06"))
    # The last trading hour before Friday's 21:00 UTC close was still forming.
    assert spans(log[1:]) == spans([("2024-01-05 20:00", "2024-01-06")])


def test_a_tail_fetched_while_the_market_is_open_expires_at_the_close(
    cache_dir: Path, clock: list[int]
) -> None:
    pytest.importorskip("exchange_calendars")

    def so_far(start: Any, end: Any) -> pd.DataFrame:
        """The vendor's minute bars of the session (14:30-21:00 UTC in January) up to now."""
        index = pd.date_range(start, end, freq="min", inclusive="left", name="time")
        minute = index.hour * 60 + index.minute
        now = pd.Timestamp(ranges.now_ns())
        bars = (minute >= 14 * 60 + 30) & (minute < 21 * 60) & (index < now)
        return pd.DataFrame({"close": minute[bars] * 1.5}, index=index[bars])

    log: list[tuple[Any, Any]] = []
    load = loader(so_far, log, live_window="1h", live_ttl="15min", live_calendar="XNYS")
    asked = ("SPY", "2024-01-05", "2024-01-06")
    clock[0] = pd.Timestamp("2024-01-05 20:50").value  # Friday, 10 minutes before the close
    load(*asked)
    clock[0] = pd.Timestamp("2024-01-05 21:30").value  # after the close: the final bars exist
    pd.testing.assert_frame_equal(load(*asked), so_far(*asked[1:]))
    assert len(log) == 2
    clock[0] = pd.Timestamp("2024-01-07 23:00").value  # Sunday: fetched after the close, kept
    pd.testing.assert_frame_equal(load(*asked), so_far(*asked[1:]))
    assert len(log) == 2


def test_a_missing_or_unknown_calendar_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "exchange_calendars", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'afml-cache\[calendars\]'"):
        time_aware_cacheable(range=("start", "end"), live_calendar="XNYS")
    monkeypatch.undo()
    pytest.importorskip("exchange_calendars")
    with pytest.raises(ValueError, match="'NOPE' is not an exchange_calendars calendar"):
        time_aware_cacheable(range=("start", "end"), live_calendar="NOPE")


def test_invalidate_after_truncates_coverage_and_refresh_recomputes_a_span(
    cache_dir: Path, clock: list[int], tmp_path: Path
) -> None:
    vendor = tmp_path / "revision"
    vendor.write_text("0")

    def revised(start: Any, end: Any) -> pd.DataFrame:
        bars = hourly(start, end)  # the vendor's data, as revised so far
        return bars.assign(close=bars["close"] + int(vendor.read_text()))

    log: list[tuple[Any, Any]] = []
    load = loader(revised, log)
    load("ES", "2024-01-01", "2024-02-01")
    vendor.write_text("1")
    assert load.invalidate(after="2024-01-20") == 1
    [interval] = load.coverage("ES")
    assert interval["end"] == pd.Timestamp("2024-01-20", tz="UTC")
    got = load("ES", "2024-01-01", "2024-02-01")
    assert spans(log[1:]) == spans([("2024-01-20", "2024-02-01")])
    pd.testing.assert_frame_equal(
        got.loc[:"2024-01-19"],
        revised("2024-01-01", "2024-01-20").assign(close=lambda f: f["close"] - 1),
    )
    # A refresh in the middle: the newer piece wins where they overlap.
    vendor.write_text("2")
    refreshed = load.refresh("ES", "2024-01-10", "2024-01-12")
    pd.testing.assert_frame_equal(refreshed, revised("2024-01-10", "2024-01-12"))
    got = load("ES", "2024-01-09", "2024-01-13")
    assert got.index.is_unique and got.index.freq == "h"
    assert (
        got.loc["2024-01-10":"2024-01-11", "close"] == revised("2024-01-10", "2024-01-12")["close"]
    ).all()
    assert (got.loc["2024-01-09", "close"] == hourly("2024-01-09", "2024-01-10")["close"]).all()
    assert [c["pieces"] for c in load.coverage("ES")] == [4]
    assert load.invalidate(after="2023-01-01") == 4  # every family, from before the start
    assert load.coverage("ES") == []
    assert [e for e in load.cache_entries() if (e["metadata"] or {}).get("piece")] == []


def test_pieces_of_a_family_are_merged_once_it_holds_more_than_n(
    cache_dir: Path, clock: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranges, "MERGE_ABOVE", 4)
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    for day in range(1, 8):
        load("ES", f"2024-01-{day:02d}", f"2024-01-{day + 1:02d}")
    assert [c["pieces"] for c in load.coverage("ES")] == [7]
    # The first read of all seven stitches them, and merges them for the reads after it.
    for _ in range(2):
        got = load("ES", "2024-01-01", "2024-01-08")
        pd.testing.assert_frame_equal(got, hourly("2024-01-01", "2024-01-08"))
        assert [c["pieces"] for c in load.coverage("ES")] == [1]
    assert len(log) == 7
    pieces = [e for e in load.cache_entries() if (e["metadata"] or {}).get("piece")]
    assert len(pieces) == 1  # the merged pieces' entries are gone


def test_a_merged_piece_expires_when_the_first_of_its_pieces_would_have(
    cache_dir: Path, clock: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ttl= counts from when rows were fetched: merging them must not start it again.
    monkeypatch.setattr(ranges, "MERGE_ABOVE", 4)
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log, ttl=100)
    for day in range(1, 8):
        load("ES", f"2024-01-{day:02d}", f"2024-01-{day + 1:02d}")
    clock[0] += 60 * 10**9  # a minute on: 40 s of their 100 are left
    load("ES", "2024-01-01", "2024-01-08")  # merges them
    assert [c["pieces"] for c in load.coverage("ES")] == [1]
    [merged] = [e for e in load.cache_entries() if (e["metadata"] or {}).get("piece")]
    assert merged["expires"] - merged["created"] == pytest.approx(40, abs=1)
    clock[0] += 39.5 * 10**9  # less than a second left: nothing is merged, it is fetched soon
    load("ES", "2024-01-08", "2024-01-09")
    assert load.__afml_cache__._ttl_left(ranges_of(load)) == 0


def test_zones_whose_names_leave_out_their_offset_are_families_apart(
    cache_dir: Path, clock: list[int]
) -> None:
    # Two fixed offsets named alike: a loader given one must not read the other's rows.
    log: list[tuple[Any, Any]] = []

    def midnights(start: Any, end: Any) -> pd.DataFrame:
        index = pd.date_range(start.ceil("D"), end, freq="D", inclusive="left")
        return pd.DataFrame({"x": np.arange(len(index), dtype=float)}, index=index)

    load = loader(midnights, log)
    start, end = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-05", tz="UTC")
    for hours in (-5, 9):
        zone = datetime.timezone(datetime.timedelta(hours=hours), "EXCH")
        got = load("ES", start.tz_convert(zone), end.tz_convert(zone))
        pd.testing.assert_frame_equal(got, midnights(start.tz_convert(zone), end.tz_convert(zone)))
    assert len(log) == 2


def ranges_of(load: Any) -> list[Any]:
    request = load.__afml_cache__._families(("ES",), {})[0]
    return load.__afml_cache__._pieces(request)


def test_edited_code_or_closure_is_another_family(cache_dir: Path, clock: list[int]) -> None:
    def make(shift: float) -> Callable[..., Any]:
        @time_aware_cacheable(range=("start", "end"))
        def shifted(symbol: str, start: Any, end: Any) -> pd.DataFrame:
            bars = hourly(start, end)
            return bars.assign(close=bars["close"] + shift)

        return shifted

    first, second = make(0.0), make(1.0)
    first("ES", "2024-01-01", "2024-01-03")
    got = second("ES", "2024-01-01", "2024-01-03")
    pd.testing.assert_frame_equal(got, second.uncached("ES", "2024-01-01", "2024-01-03"))
    assert got["close"].iloc[0] == hourly("2024-01-01", "2024-01-02")["close"].iloc[0] + 1.0


def test_calls_that_are_not_ranges_run_uncached(cache_dir: Path, clock: list[int]) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(lambda s, e: hourly("2024-01-01", "2024-01-02"), log)
    load("ES", "latest", None)
    load("ES", "2024-01-02", "2024-01-01")  # an empty span: the function decides
    load("ES", "latest", None)
    assert len(log) == 3
    assert load.coverage("ES") == []


def test_two_threads_extending_one_family_compute_each_gap_once(
    cache_dir: Path, clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []

    def slow(start: Any, end: Any) -> pd.DataFrame:
        time.sleep(0.3)  # the other thread arrives meanwhile
        return hourly(start, end)

    load = loader(slow, log)
    asked = [("2024-01-01", "2024-01-10"), ("2024-01-05", "2024-01-15")]
    results: dict[int, pd.DataFrame] = {}
    threads = [
        threading.Thread(target=lambda i=i, a=a: results.update({i: load("ES", *a)}))
        for i, a in enumerate(asked)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, (start, end) in enumerate(asked):
        pd.testing.assert_frame_equal(results[i], hourly(start, end))
    computed = sorted(spans(log))
    assert len(computed) == 2 and computed[0][1] == computed[1][0]
    assert (computed[0][0], computed[1][1]) == spans([("2024-01-01", "2024-01-15")])[0]


CONCURRENT = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    import afml_cache
    from afml_cache import time_aware_cacheable

    cache_dir, log_path, start, end = sys.argv[1:5]
    afml_cache.configure(directory=cache_dir)

    def bars(start, end):
        index = pd.date_range(start, end, freq="h", inclusive="left", name="time")
        return pd.DataFrame({"close": (index.asi8 // 3_600_000_000_000 % 97) * 1.5}, index=index)

    @time_aware_cacheable(range=("start", "end"))
    def load(symbol, start, end):
        with open(log_path, "a") as log:
            log.write(f"{start.value} {end.value}\\n")
        time.sleep(0.5)  # a slow vendor: the other process arrives meanwhile
        return bars(start, end)

    got = load("ES", start, end)
    pd.testing.assert_frame_equal(got, bars(pd.Timestamp(start), pd.Timestamp(end)))
    print("ok")
    """
)


def test_two_processes_extending_one_family_compute_each_gap_once(tmp_path: Path) -> None:
    script = tmp_path / "load.py"
    script.write_text(CONCURRENT)
    log = tmp_path / "computed"

    def run(start: str, end: str) -> subprocess.Popen[str]:
        argv = [sys.executable, str(script), str(tmp_path / "cache"), str(log), start, end]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    both = [run("2024-01-01", "2024-01-10"), run("2024-01-05", "2024-01-15")]
    for process in both:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "ok"
    computed = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert computed[0][0] == pd.Timestamp("2024-01-01").value
    assert computed[-1][1] == pd.Timestamp("2024-01-15").value
    for (_, end), (start, _) in itertools.pairwise(computed):
        assert end == start, "a gap computed twice or lost"
    assert len(computed) == 2
    # A third process finds the union covered.
    third = run("2024-01-01", "2024-01-15")
    assert third.communicate(timeout=120)[0].strip() == "ok"
    assert len(log.read_text().splitlines()) == 2


def test_a_piece_the_store_refuses_is_returned_with_one_warning_and_computed_again(
    tmp_path: Path, clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log, cache=Cache(tmp_path / "small", size_limit=20_000))
    with pytest.warns(CacheWarning, match="load was returned but not cached") as caught:
        got = load("ES", "2024-01-01", "2024-03-01")
        again = load("ES", "2024-01-01", "2024-03-01")
    assert len(caught) == 1
    pd.testing.assert_frame_equal(got, hourly("2024-01-01", "2024-03-01"))
    pd.testing.assert_frame_equal(again, got)
    assert len(log) == 2
    assert load("ES", "2024-01-01", "2024-01-02").equals(hourly("2024-01-01", "2024-01-02"))
    assert load("ES", "2024-01-01", "2024-01-02").equals(hourly("2024-01-01", "2024-01-02"))
    assert len(log) == 3  # a small piece is stored


def test_is_cached_precache_and_warm_speak_of_spans(cache_dir: Path, clock: list[int]) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    report = load.warm([("ES", "2024-01-01", "2024-01-05"), ("ES", "2024-01-03", "2024-01-08")])
    assert (report["computed"], report["already_cached"], report["failed"]) == (2, 0, [])
    assert spans(log) == spans([("2024-01-01", "2024-01-05"), ("2024-01-05", "2024-01-08")])
    assert load.is_cached("ES", "2024-01-02", "2024-01-08")
    assert not load.is_cached("ES", "2024-01-02", "2024-01-09")
    assert load.warm([("ES", "2024-01-02", "2024-01-06")])["already_cached"] == 1
    assert load.precache(hourly("2024-02-01", "2024-02-03"), "ES", "2024-02-01", "2024-02-03")
    pd.testing.assert_frame_equal(
        load("ES", "2024-02-01", "2024-02-03"), hourly("2024-02-01", "2024-02-03")
    )
    assert len(log) == 2
    with pytest.raises(ValueError, match="outside the range"):
        load.precache(hourly("2024-03-01", "2024-03-03"), "ES", "2024-03-01", "2024-03-02")


def test_a_piece_the_store_lost_is_computed_again(cache_dir: Path, clock: list[int]) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    load("ES", "2024-01-01", "2024-01-03")
    load("ES", "2024-01-03", "2024-01-05")
    first = min(ranges_of(load), key=lambda p: p.start)
    load.__afml_cache__._open()[2].delete(first.digest)
    got = load("ES", "2024-01-01", "2024-01-05")
    pd.testing.assert_frame_equal(got, hourly("2024-01-01", "2024-01-05"))
    assert spans(log[2:]) == spans([("2024-01-01", "2024-01-03")])


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_a_result_shares_no_buffer_with_the_cache_it_was_read_from(
    cache_dir: Path, clock: list[int], tier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pieces are read without a copy (lookup(copy=False)); a caller mutating what a call
    # returned must not change what later calls get.
    def write(got: pd.DataFrame) -> None:
        got.iloc[0, 0] = -1.0
        got.iloc[-1, 1] = -7
        np.asarray(got.index)[0] = 0  # pandas hands the index's buffer out writable
        got.columns.name = "renamed in place"
        got.index.name = "renamed in place"

    asked = [("2024-01-01", "2024-01-03"), *_ASKED]  # one whole piece too
    log = _read_and_written(monkeypatch, hourly, asked, write, tier)
    assert spans(log[2:]) == spans([("2024-01-05", "2024-01-06")])


# A slice of one piece, two pieces stitched, a piece and a new gap (of pieces 01-01..01-05).
_ASKED = [
    ("2024-01-01 05:00", "2024-01-02"),
    ("2024-01-02", "2024-01-04"),
    ("2024-01-04", "2024-01-06"),
]


def _read_and_written(
    monkeypatch: pytest.MonkeyPatch,
    body: Callable[[Any, Any], pd.DataFrame],
    asked: list[tuple[str, str]],
    write: Callable[[pd.DataFrame], None],
    tier: str = "memory",
) -> list[tuple[Any, Any]]:
    """Pieces of ``body`` for 01-01..01-03 and 01-03..01-05, then each request of ``asked``
    read twice, checked against ``body`` and handed to ``write``; the loader's log. Every
    buffer goes out of band, as large ones do, so the memory tier holds the buffers the
    pieces are read over (``tier="disk"``: emptied before each read)."""
    monkeypatch.setattr(serialize, "_IN_BAND_LIMIT", 1)
    log: list[tuple[Any, Any]] = []
    load = loader(body, log)
    load("ES", "2024-01-01", "2024-01-03")
    load("ES", "2024-01-03", "2024-01-05")
    entries = load.__afml_cache__._open()[2]
    for _ in range(2):
        for start, end in asked:
            if tier == "disk":
                entries.memory.clear()
            got = load("ES", start, end)
            pd.testing.assert_frame_equal(got, body(start, end))
            write(got)
    return log


def numbered(start: Any, end: Any) -> pd.DataFrame:
    """Hourly rows under labels numpy holds (ints), with a categorical of int categories."""
    frame = hourly(start, end)
    minutes = frame.index.as_unit("ns").asi8 // 60_000_000_000
    frame = frame.assign(bucket=pd.Categorical(minutes % 7, categories=np.arange(7)))
    return frame.set_axis(pd.Index([10, 20, 30]), axis=1)


def test_writing_a_results_labels_leaves_later_reads_alone(
    cache_dir: Path, clock: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # np.asarray hands out the buffers of an index, of int column labels and of categories
    # writable.
    def write(got: pd.DataFrame) -> None:
        np.asarray(got.index)[0] = 0
        np.asarray(got.columns)[0] = -1
        np.asarray(got[30].cat.categories)[0] = -1

    log = _read_and_written(monkeypatch, numbered, _ASKED, write)
    assert spans(log[2:]) == spans([("2024-01-05", "2024-01-06")])


def test_a_request_computed_whole_returns_the_functions_own_frame(
    cache_dir: Path, clock: list[int]
) -> None:
    # As an uncached call would: no copy of what may be years of bars, and what the caller
    # then does to it never reaches the stored piece.
    returned: list[pd.DataFrame] = []

    def remembered(start: Any, end: Any) -> pd.DataFrame:
        returned.append(hourly(start, end))
        return returned[-1]

    log: list[tuple[Any, Any]] = []
    load = loader(remembered, log, ignore_globals=("returned",))
    got = load("ES", "2024-01-01", "2024-01-03")
    assert got is returned[-1]
    got.iloc[0, 0] = -1.0
    got.iloc[-1, 1] = -7
    # A gap beside cached rows is computed alone; the result is a stitched copy.
    wider = load("ES", "2024-01-01", "2024-01-04")
    assert all(wider is not frame for frame in returned)
    pd.testing.assert_frame_equal(wider, hourly("2024-01-01", "2024-01-04"))
    assert spans(log) == spans([("2024-01-01", "2024-01-03"), ("2024-01-03", "2024-01-04")])


def test_a_request_served_whole_by_one_piece_from_disk_is_not_copied_again(
    tmp_path: Path, clock: list[int]
) -> None:
    # A piece larger than the memory tier, read from disk, is the caller's own: stitching it
    # into a copy would hold its rows twice (the buffers read and numpy's copy are traced).
    def minutes(start: Any, end: Any) -> pd.DataFrame:
        index = pd.date_range(start, end, freq="min", inclusive="left", name="time")
        rows = np.arange(len(index), dtype=np.float64)
        return pd.DataFrame({"close": rows * 0.5, "volume": rows.astype(np.int64)}, index=index)

    cache = Cache(tmp_path / "cache", memory_limit=1)
    log: list[tuple[Any, Any]] = []
    load = loader(minutes, log, cache=cache)
    load("ES", "2024-01-01", "2024-07-01")  # 262,080 rows, 6 MB
    expected = minutes("2024-01-01", "2024-07-01")
    size = int(expected.memory_usage(index=True).sum())
    tracemalloc.start()
    try:
        got = load("ES", "2024-01-01", "2024-07-01")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pd.testing.assert_frame_equal(got, expected)
    assert len(log) == 1
    assert peak < 1.25 * size  # the rows once, as read


def minute_bars(start: Any, end: Any) -> pd.DataFrame:
    """Minute bars in New York time: four float columns and an int one (two numpy blocks)."""
    first = pd.Timestamp(start).tz_convert("America/New_York").ceil("min")
    last = pd.Timestamp(end).tz_convert("America/New_York")
    index = pd.date_range(first, last, freq="min", inclusive="left", name="time")
    minutes = index.asi8 // 60_000_000_000
    close = 4500 + (minutes % 1_009) * 0.25
    prices = {"open": close - 0.25, "high": close + 0.5, "low": close - 0.5, "close": close}
    return pd.DataFrame({**prices, "volume": minutes % 313}, index=index)


def test_pieces_read_from_disk_stitch_whole_and_cut(tmp_path: Path, clock: list[int]) -> None:
    # Past what the memory tier keeps, pieces whose blocks go out of band (over 64 KiB each):
    # whole pieces, and pieces cut at either end of the request, equal the uncached call's rows.
    log: list[tuple[Any, Any]] = []
    load = loader(minute_bars, log, cache=Cache(tmp_path / "cache", memory_limit=1))
    edges = pd.date_range("2024-03-01", periods=9, freq="10D", tz="UTC")
    for low, high in itertools.pairwise(edges):
        load("ES", low, high)  # 8 pieces of 14,400 rows
    log.clear()
    for start, end in [
        (edges[0], edges[-1]),
        (edges[0] + pd.Timedelta("61min"), edges[-1] - pd.Timedelta("3D")),
        (edges[3] + pd.Timedelta("1h"), edges[3] + pd.Timedelta("2h")),
    ]:
        got = load("ES", start, end)
        pd.testing.assert_frame_equal(got, minute_bars(start, end))
        assert got.index.freq == "min"
    assert log == []


def test_merging_leaves_a_piece_larger_than_the_rest_of_its_run_alone(
    cache_dir: Path, clock: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Days appended to years of bars: merging them must not rewrite the years each time.
    monkeypatch.setattr(ranges, "MERGE_ABOVE", 4)
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    load("ES", "2024-01-01", "2024-02-01")
    years = ranges_of(load)[0].digest
    for day in range(1, 6):
        load("ES", "2024-01-01", f"2024-02-{day + 1:02d}")
    got = load("ES", "2024-01-01", "2024-02-06")
    pd.testing.assert_frame_equal(got, hourly("2024-01-01", "2024-02-06"))
    # The fifth day made five pieces: the four days were merged, the month left alone.
    pieces = sorted(ranges_of(load), key=lambda p: p.start)
    assert [p.digest == years for p in pieces] == [True, False, False]
    assert len(log) == 6


def test_pieces_are_read_from_disk_while_the_interpreter_exits(tmp_path: Path) -> None:
    # Pieces on disk are read on threads, which an exiting interpreter no longer starts.
    script = textwrap.dedent(
        f"""
        import atexit
        import pandas as pd
        import afml_cache
        from afml_cache import time_aware_cacheable

        afml_cache.configure(directory={str(tmp_path / "cache")!r})

        @time_aware_cacheable(range=("start", "end"))
        def load(symbol, start, end):
            index = pd.date_range(start, end, freq="h", inclusive="left")
            return pd.DataFrame({{"x": range(len(index))}}, index=index)

        load("A", "2024-01-01", "2024-01-03")
        load("A", "2024-01-03", "2024-01-05")

        def at_exit():
            load.__afml_cache__._open()[2].memory.clear()
            print(len(load("A", "2024-01-01", "2024-01-05")))

        atexit.register(at_exit)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "96\n", "")


def test_objects_in_a_result_are_not_shared_with_later_results(
    cache_dir: Path, clock: list[int]
) -> None:
    # A list in a cell is an object the caller can change in place: later reads must not see it.
    def tagged(start: Any, end: Any) -> pd.DataFrame:
        bars = hourly(start, end)
        return bars.assign(tags=[["bar"] for _ in range(len(bars))])

    log: list[tuple[Any, Any]] = []
    load = loader(tagged, log)
    load("ES", "2024-01-01", "2024-01-02")
    load("ES", "2024-01-02", "2024-01-03")
    for _ in range(3):
        got = load("ES", "2024-01-01", "2024-01-03")
        pd.testing.assert_frame_equal(got, tagged("2024-01-01", "2024-01-03"))
        got["tags"].iloc[0].append("changed")
        got["tags"].iloc[-1].append("changed")
    assert len(log) == 2


def test_pieces_of_other_forms_are_never_stitched(cache_dir: Path, clock: list[int]) -> None:
    # A vendor whose volume comes back as floats on a day with a missing bar, and whose side
    # column's categories are those the span traded: stitched, the pieces made a frame no call
    # returns (str sides, float volume over days that had none missing).
    def uneven(start: Any, end: Any) -> pd.DataFrame:
        bars = hourly(start, end)
        volume = bars["volume"].where(bars.index != pd.Timestamp("2024-01-02 03:00"))
        sides = np.where(bars.index >= pd.Timestamp("2024-01-03 12:00"), "sell", "buy")
        return bars.assign(volume=volume, side=pd.Categorical(sides))

    log: list[tuple[Any, Any]] = []
    load = loader(uneven, log)
    days = [f"2024-01-{day:02d}" for day in range(1, 5)]
    requests = [
        *itertools.pairwise(days),  # a piece a day; the second differs from the first
        (days[0], days[-1]),  # stitched from three pieces
        ("2024-01-02 04:00", "2024-01-02 09:00"),  # a slice of the float day without its gap
        ("2024-01-03 00:00", "2024-01-03 10:00"),  # a slice without the sells
    ]
    with pytest.warns(CacheWarning, match="other columns, dtypes or attrs for other") as caught:
        for start, end in requests:
            pd.testing.assert_frame_equal(load("ES", start, end), uneven(start, end))
    assert len(caught) == 1
    assert len(log) == len(requests)  # the pieces, then each request computed whole, uncached
    assert load("ES", days[0], days[1])["volume"].dtype == np.int64

    # Alike pieces are stitched: only the form counts, not the values.
    log.clear()
    same = loader(hourly, log)
    for start, end in itertools.pairwise(days):
        same("NQ", start, end)
    pd.testing.assert_frame_equal(same("NQ", days[0], days[-1]), hourly(days[0], days[-1]))
    assert len(log) == 3


def test_attrs_that_name_the_span_are_never_stitched(cache_dir: Path, clock: list[int]) -> None:
    # pd.concat keeps attrs only when every part has the same: stitched, the span's attrs were
    # dropped where one call over the request returns its own.
    def asked(start: Any, end: Any) -> pd.DataFrame:
        bars = hourly(start, end)
        bars.attrs["asked"] = (str(start), str(end))
        return bars

    log: list[tuple[Any, Any]] = []
    load = loader(asked, log)
    load("ES", "2024-01-01", "2024-01-02")
    with pytest.warns(CacheWarning, match="other columns, dtypes or attrs for other"):
        load("ES", "2024-01-02", "2024-01-03")  # said once, at the piece of another form
        got = load("ES", "2024-01-01", "2024-01-03")
    pd.testing.assert_frame_equal(got, asked("2024-01-01", "2024-01-03"))
    assert got.attrs == {"asked": ("2024-01-01", "2024-01-03")}


def _frames_of_every_layout() -> dict[str, Any]:
    index = pd.date_range("2024-01-01", periods=12, freq="h", name="time", tz="Europe/London")
    numbers = np.arange(12)
    plain = pd.DataFrame({"close": numbers * 1.5, "volume": numbers}, index=index)
    mixed = pd.DataFrame(
        {"up": numbers % 2 == 0, "x": numbers * 0.5, "n": numbers.astype(np.uint8)}, index=index
    )
    mixed.insert(1, "x2", numbers)  # interleaved blocks
    duplicated = plain.set_axis(["close", "close"], axis=1)
    multi = plain.set_axis(pd.MultiIndex.from_tuples([("ES", "close"), ("ES", "volume")]), axis=1)
    attrs = plain.copy()
    attrs.attrs["vendor"] = "x"
    categorical = plain["close"].astype("category").set_flags(allows_duplicate_labels=False)
    categorical.attrs["vendor"] = "x"
    return {
        "numbers": plain,
        "mixed blocks": mixed,
        "duplicated names": duplicated,
        "multiindex columns": multi,
        "no frequency": plain.set_axis(index.as_unit("s").copy(), axis=0).iloc[
            [0, 1, 3, 4, 5, 6, 8, 9, 10, 11]
        ],
        "datetime column": plain.assign(at=index.tz_localize(None)),
        "category": plain.assign(side=pd.Categorical(["b", "s"] * 6)),
        "attrs": attrs,
        "labels as objects": plain.set_axis(pd.Index(["close", "volume"], dtype=object), axis=1),
        "categories as labels": plain.set_axis(pd.CategoricalIndex([10, 20]), axis=1),
        "categorical series": categorical,
        "numbered categories": plain.assign(
            bucket=pd.Categorical(numbers % 3, categories=[0, 1, 2])
        ),
        "series": plain["close"],
    }


@pytest.mark.parametrize("cut", ["three parts", "one part"])
@pytest.mark.parametrize("name", list(_frames_of_every_layout()))
def test_stitched_parts_equal_the_frame_they_were_cut_from(name: str, cut: str) -> None:
    # Every layout a vendor's frames may have: the stitched rows share no buffer with the parts,
    # not even the index's (np.asarray(result.index) is writable).
    frame = _frames_of_every_layout()[name]
    times = frame.index.as_unit("ns").asi8
    edges = [int(times[0]), int(times[4]), int(times[7]) + 1, int(times[-1]) + 1]
    if cut == "one part":  # the rows of a part inside the request: sliced, not concatenated
        edges, frame, full = [edges[1], edges[2]], frame.iloc[4:8], frame
        parts = [(full, int(times[0]), int(times[-1]) + 1)]
    else:
        parts = [(frame, low, high) for low, high in itertools.pairwise(edges)]
    got = range_spans.stitch(parts, edges[0], edges[-1])
    if isinstance(frame, pd.Series):
        pd.testing.assert_series_equal(got, frame)
    else:
        pd.testing.assert_frame_equal(got, frame)
    assert got.attrs == frame.attrs
    assert got.flags.allows_duplicate_labels == frame.flags.allows_duplicate_labels
    columns = [got] if isinstance(got, pd.Series) else [got.iloc[:, i] for i in range(got.shape[1])]
    sources = [frame] if isinstance(frame, pd.Series) else [frame.iloc[:, i] for i in range(2)]
    for column, source in itertools.product(columns, sources):
        assert not np.shares_memory(np.asarray(column), np.asarray(source))
    _owns_its_labels(got, frame)


def _owns_its_labels(got: Any, frame: Any) -> None:
    """That no buffer of ``got``'s labels (index, columns, MultiIndex levels, categories)
    is ``frame``'s: np.asarray hands them out writable."""
    assert not np.shares_memory(np.asarray(got.index), np.asarray(frame.index))
    if isinstance(got, pd.DataFrame):
        assert not np.shares_memory(np.asarray(got.columns), np.asarray(frame.columns))
        if isinstance(got.columns, pd.CategoricalIndex):
            mine, theirs = got.columns.categories, frame.columns.categories
            assert not np.shares_memory(np.asarray(mine), np.asarray(theirs))
        for mine, theirs in zip(
            getattr(got.columns, "levels", []), getattr(frame.columns, "levels", []), strict=True
        ):
            assert not np.shares_memory(np.asarray(mine), np.asarray(theirs))
    for mine, theirs in itertools.product(_categories(got), _categories(frame)):
        assert not np.shares_memory(mine, theirs)


def _categories(data: Any) -> list[np.ndarray]:
    """The categories of each categorical column of ``data``, as np.asarray gives them."""
    columns = [data] if isinstance(data, pd.Series) else [column for _, column in data.items()]
    return [
        np.asarray(column.cat.categories)
        for column in columns
        if isinstance(column.dtype, pd.CategoricalDtype)
    ]


@pytest.mark.parametrize("names", [("close", "close"), ("close", "last"), (None, "close")])
def test_stitched_series_are_named_as_pandas_concatenates_them(names: tuple[Any, Any]) -> None:
    close = hourly("2024-01-01", "2024-01-03")["close"]
    parts = [close.iloc[:24].rename(names[0]), close.iloc[24:].rename(names[1])]
    edges = [BASE, BASE + 24 * HOUR, BASE + 48 * HOUR]
    got = range_spans.stitch(
        [
            (part, low, high)
            for part, (low, high) in zip(parts, itertools.pairwise(edges), strict=True)
        ],
        edges[0],
        edges[-1],
    )
    pd.testing.assert_series_equal(got, pd.concat(parts))
    assert got.name == (names[0] if names[0] == names[1] else None)


def _variant(frame: pd.DataFrame, change: str) -> pd.DataFrame:
    """``frame`` as one day's vendor answer may differ from the others'."""
    if change == "columns reordered":
        return frame[frame.columns[::-1]]
    if change == "a column renamed":
        return frame.rename(columns={frame.columns[0]: "last"})
    if change == "a column of floats":
        return frame.astype({frame.columns[1]: np.float64})
    if change == "column labels of objects":
        return frame.set_axis(pd.Index(list(frame.columns), dtype=object), axis=1)
    if change == "column labels of floats":  # equal to numbers 0, 1, 2, of another dtype
        return frame.set_axis(pd.Index(np.arange(frame.shape[1], dtype=np.float64)), axis=1)
    if change == "columns named":
        return frame.rename_axis(columns="field")
    if change == "index renamed":
        return frame.rename_axis(index="at")
    if change == "attrs":
        marked = frame.copy()
        marked.attrs["vendor"] = "x"
        return marked
    if change == "another frequency":
        return frame.set_axis(pd.DatetimeIndex(frame.index, freq=None), axis=0)
    if change == "blocks in another order":  # equal columns, laid out last column first
        built = frame[frame.columns[-1:]].copy()
        for name in reversed(frame.columns[:-1]):
            built.insert(0, name, frame[name])
        return built
    return frame


_CHANGES = [
    "none",
    "columns reordered",
    "a column renamed",
    "a column of floats",
    "column labels of objects",
    "column labels of floats",
    "columns named",
    "index renamed",
    "attrs",
    "another frequency",
    "blocks in another order",
]


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.sets(st.integers(1, 23), max_size=6),
    change=st.sampled_from(_CHANGES),
    odd=st.integers(0, 6),
    tz=st.sampled_from([None, "America/New_York"]),
    unit=st.sampled_from(["ns", "us", "s"]),
    numbered=st.booleans(),
)
def test_stitching_is_what_pandas_concatenates(
    cuts: set[int], change: str, odd: int, tz: str | None, unit: str, numbered: bool
) -> None:
    # Parts laid out alike are stacked block by block, others concatenated by pandas: the
    # result is pd.concat's either way (columns, dtypes, names, frequency, attrs), and shares
    # no buffer with the parts, whose names a caller renaming the result's leaves alone.
    whole = hourly("2024-01-01", "2024-01-02", tz=tz)
    whole = whole.assign(up=whole["volume"] % 2 == 0).set_axis(whole.index.as_unit(unit), axis=0)
    if numbered:  # columns by position, as a frame made of an array has them
        whole.columns = pd.RangeIndex(whole.shape[1])
    rows = [0, *sorted(cuts), len(whole)]
    times = whole.index.as_unit("ns").asi8
    edges = [int(times[r]) if r < len(whole) else int(times[-1]) + 1 for r in rows]
    # Each part a frame of its own (as pieces are read), every one alike or one (the odd one) not;
    # a part reaching past its span is sliced.
    bounds = [
        (a, b + 1 if i == odd and b < len(whole) else b)
        for i, (a, b) in enumerate(itertools.pairwise(rows))
    ]
    frames = [
        _variant(whole.iloc[a:b].copy(), change if i == odd else "none")
        for i, (a, b) in enumerate(bounds)
    ]
    parts = list(zip(frames, edges[:-1], edges[1:], strict=True))
    got = range_spans.stitch(parts, edges[0], edges[-1])
    slices = [
        frame.iloc[: b - a] for frame, (a, b) in zip(frames, itertools.pairwise(rows), strict=True)
    ]
    expected = pd.concat(slices) if len(slices) > 1 else slices[0]
    pd.testing.assert_frame_equal(got, expected)
    assert got.attrs == expected.attrs
    for frame in frames:
        _owns_its_labels(got, frame.iloc[: len(got)])
        for mine, theirs in itertools.product(range(got.shape[1]), range(frame.shape[1])):
            column, source = np.asarray(got.iloc[:, mine]), np.asarray(frame.iloc[:, theirs])
            assert not np.shares_memory(column, source)
    got.columns.name = "renamed in place"
    got.index.name = "renamed in place"
    assert all(f.columns.name != "renamed in place" for f in frames)
    assert all(f.index.name != "renamed in place" for f in frames)


def _change_in_place(frame: pd.DataFrame, change: str) -> None:
    """Changes ``frame`` itself, as a caller may change a frame it was handed."""
    if change == "a column of floats":
        frame["volume"] = frame["volume"].astype(np.float64)
    elif change == "a column added":
        frame["open"] = frame["close"]
    elif change == "columns renamed":
        frame.columns = ["last", "volume"]
    elif change == "columns named":
        frame.columns.name = "field"
    elif change == "index renamed":
        frame.index.name = "at"
    elif change == "index in seconds":
        frame.index = frame.index.as_unit("s")
    elif change == "a value set":
        frame.iloc[0, 0] = -1.0
    elif change == "attrs":
        frame.attrs["vendor"] = "x"


@pytest.mark.parametrize(
    "change",
    [
        "a column of floats",
        "a column added",
        "columns renamed",
        "columns named",
        "index renamed",
        "index in seconds",
        "a value set",
        "attrs",
    ],
)
@pytest.mark.parametrize("freq", ["h", None])
def test_a_part_changed_since_it_was_stitched_is_stitched_as_it_is_now(
    change: str, freq: str | None
) -> None:
    # Stitching learns what each part is laid out like once per frame object (the memory tier
    # hands every read the same ones); a frame changed since is stitched as it is now.
    whole = hourly("2024-01-01", "2024-01-04")
    whole.index = pd.DatetimeIndex(whole.index, freq=freq)
    frames = [whole.iloc[24 * day : 24 * (day + 1)].copy() for day in range(3)]
    edges = [BASE + 24 * HOUR * day for day in range(4)]
    parts = list(zip(frames, edges[:-1], edges[1:], strict=True))
    pd.testing.assert_frame_equal(range_spans.stitch(parts, edges[0], edges[-1]), whole)
    _change_in_place(frames[1], change)
    got = range_spans.stitch(parts, edges[0], edges[-1])
    expected = pd.concat(frames)
    pd.testing.assert_frame_equal(got, expected)
    assert got.attrs == expected.attrs


def test_stitching_keeps_nothing_of_a_part_alive_that_the_part_let_go() -> None:
    # What stitching learns of a part refers to it weakly: an index or columns a caller
    # replaced afterwards are freed, not held for as long as the part lives.
    whole = hourly("2024-01-01", "2024-01-03")
    frames = [whole.iloc[:24].copy(), whole.iloc[24:].copy()]
    edges = [BASE, BASE + 24 * HOUR, BASE + 48 * HOUR]
    range_spans.stitch(list(zip(frames, edges[:-1], edges[1:], strict=True)), BASE, edges[-1])
    index, columns = weakref.ref(frames[1].index), weakref.ref(frames[1].columns)
    frames[1].index = frames[1].index.rename("at")
    frames[1].columns = ["last", "size"]
    gc.collect()
    assert index() is None
    assert columns() is None


class CountingVendor:
    """An API client that counts its requests: state the loader reads, which changes as it runs."""

    def __init__(self) -> None:
        self.requests = 0

    def bars(self, start: Any, end: Any) -> pd.DataFrame:
        self.requests += 1
        return hourly(start, end)


VENDOR = CountingVendor()


def test_a_loader_whose_client_counts_its_requests_says_why_it_misses(
    cache_dir: Path, clock: list[int]
) -> None:
    # The client is read by content, so each fetch makes another family: every call misses.
    # As robust_cacheable does, the second call warns once, naming it and ignore_globals=.
    @time_aware_cacheable(range=("start", "end"))
    def load(symbol: str, start: Any, end: Any) -> pd.DataFrame:
        return VENDOR.bars(start, end)

    load("ES", "2024-01-01", "2024-01-03")
    with pytest.warns(CacheWarning, match=r"changed 'VENDOR' as it ran.*ignore_globals"):
        load("ES", "2024-01-01", "2024-01-03")

    @time_aware_cacheable(range=("start", "end"), ignore_globals=("VENDOR",))
    def listed(symbol: str, start: Any, end: Any) -> pd.DataFrame:
        return VENDOR.bars(start, end)

    before = VENDOR.requests
    listed("ES", "2024-01-01", "2024-01-03")
    pd.testing.assert_frame_equal(
        listed("ES", "2024-01-01", "2024-01-03"), hourly("2024-01-01", "2024-01-03")
    )
    assert VENDOR.requests == before + 1


def test_a_live_tail_with_no_time_to_live_is_served_by_the_call_that_fetched_it(
    cache_dir: Path, clock: list[int]
) -> None:
    # With live_ttl="0s" the call that fetched the tail cut it off its own result (the clock
    # read the same before and after the fetch; always so with a calendar): rows were missing.
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log, live_window="1D", live_ttl="0s")
    clock[0] = pd.Timestamp("2024-03-11 14:37").value
    asked = ("X", "2024-03-05", "2024-03-12")
    for _ in range(2):  # the second call fetches the tail again, and serves it too
        pd.testing.assert_frame_equal(load(*asked), hourly("2024-03-05", "2024-03-12"))
    assert spans(log) == spans([asked[1:], ("2024-03-10 14:37", "2024-03-12")])


def test_invalidate_without_after_forgets_every_piece_as_the_warning_says(
    cache_dir: Path, clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    load("AAPL", "2024-01-01", "2024-01-05")
    load("MSFT", "2024-01-01", "2024-01-05")
    assert load.invalidate("AAPL") == 1
    assert load.coverage("AAPL") == [] and len(load.coverage("MSFT")) == 1
    assert load.invalidate() == 1 and load.coverage() == []
    with pytest.raises(ValueError, match=r"invalidate\(after='yesterday-ish'\): not a time"):
        load.invalidate(after="yesterday-ish")


def test_a_family_named_by_an_argument_without_a_fingerprint_is_refused(
    cache_dir: Path, clock: list[int]
) -> None:
    # coverage() and invalidate() took such a family for "none named": every family, so
    # invalidate(lock, after=...) cut every symbol's data.
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    load("AAPL", "2024-01-01", "2024-01-05")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        for act in (load.coverage, lambda s: load.invalidate(s, after="2024-01-02")):
            with pytest.raises(TypeError, match="no family is named by argument 'symbol'"):
                act(threading.Lock())
    [interval] = load.coverage("AAPL")
    assert interval["end"] == pd.Timestamp("2024-01-05", tz="UTC")


def test_rows_outside_the_span_name_who_gave_them_and_what_to_do(
    cache_dir: Path, clock: list[int]
) -> None:
    log: list[tuple[Any, Any]] = []
    load = loader(hourly, log)
    have = hourly("2024-01-01", "2024-01-03")
    with pytest.raises(ValueError, match=r"the frame given to precache holds 24 row.*slice it"):
        load.precache(have, "X", "2024-01-02", "2024-01-03")
    local = loader(lambda s, e: hourly(s, e, tz="UTC").tz_convert("America/New_York"), log)

    @time_aware_cacheable(range=("start", "end"))
    def exchange_local(symbol: str, start: Any, end: Any) -> pd.DataFrame:
        zone = "America/New_York"
        return hourly(pd.Timestamp(start).tz_localize(zone), pd.Timestamp(end).tz_localize(zone))

    assert len(local("X", "2024-01-02", "2024-01-03")) == 24
    with pytest.raises(ValueError, match="without a time zone are read as UTC"):
        exchange_local("X", "2024-01-02", "2024-01-03")
