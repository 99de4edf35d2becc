"""`@time_aware_cacheable(incremental=True, lookback=N)`: a frame that grew computes only its new
rows (plus the window before them, and the look-ahead rows at the old end), and the result is the
full computation's."""

from __future__ import annotations

import datetime
import pickle
import re
import tempfile
import threading
import zoneinfo
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytz
from dateutil import relativedelta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import afml_cache
from afml_cache import Cache, CacheWarning, time_aware_cacheable
from afml_cache import incremental as incremental_module
from afml_cache._store import serialize

# What each decorated function was given, by length: the rows it computed.
computed: list[int] = []
WINDOW = 30
DEFAULT_BLOCK_ROWS = incremental_module.BLOCK_ROWS


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 64 rows, so frames of a few hundred rows span whole and partial blocks."""
    monkeypatch.setattr(incremental_module, "BLOCK_ROWS", 64)
    computed.clear()


def minute_bars(rows: int, seed: int = 0, gaps: bool = False) -> pd.DataFrame:
    """Bars on a sorted minute index (with random gaps: a market that closes)."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([1, 1, 1, 7, 60], size=rows) if gaps else np.ones(rows, dtype=int)
    index = pd.Timestamp("2024-01-02 09:30") + pd.to_timedelta(np.cumsum(steps), unit="min")
    close = 100 + rng.normal(0, 0.05, rows).cumsum()
    return pd.DataFrame(
        {
            "high": close + rng.uniform(0, 0.1, rows),
            "low": close - rng.uniform(0, 0.1, rows),
            "close": close,
            "volume": rng.integers(1, 10_000, rows),
        },
        index=pd.DatetimeIndex(index, name="time"),
    )


def exact_features(bars: pd.DataFrame, window: int = WINDOW) -> pd.DataFrame:
    """Exact operations only: maxima, minima, shifts, sums of integers."""
    computed.append(len(bars))
    return pd.DataFrame(
        {
            "high_max": bars["high"].rolling(window).max(),
            "low_min": bars["low"].rolling(window, min_periods=1).min(),
            "previous_close": bars["close"].shift(1),
            "volume_sum": bars["volume"].rolling(window).sum(),
        }
    )


features = time_aware_cacheable(
    incremental=True, lookback=WINDOW - 1, ignore_globals=("computed",)
)(exact_features)


def test_a_frame_that_grew_computes_its_new_rows_plus_the_lookback(cache_dir: Path) -> None:
    bars = minute_bars(1000)
    first = features(bars.iloc[:700])
    grown = features(bars)
    assert computed == [700, 300 + WINDOW - 1]
    pd.testing.assert_frame_equal(first, exact_features(bars.iloc[:700]), check_exact=True)
    pd.testing.assert_frame_equal(grown, exact_features(bars), check_exact=True)
    computed.clear()
    pd.testing.assert_frame_equal(features(bars), grown, check_exact=True)
    assert computed == []  # the same frame again: a hit


def test_frames_inside_one_block_of_the_default_size(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(incremental_module, "BLOCK_ROWS", DEFAULT_BLOCK_ROWS)
    bars = minute_bars(1000)
    features(bars.iloc[:700])
    pd.testing.assert_frame_equal(features(bars), exact_features(bars), check_exact=True)
    assert computed[:2] == [700, 300 + WINDOW - 1]


def test_a_panel_that_grew_computes_its_new_rows_plus_the_lookback(cache_dir: Path) -> None:
    # Yesterday's panel, loaded then, lists fewer times in its index's levels than today's.
    bars = minute_bars(1000)
    index = pd.MultiIndex.from_arrays([bars.index, ["ES"] * len(bars)], names=["time", "sym"])
    panel = bars.set_axis(index, axis=0)
    yesterday = panel.iloc[:700].copy()
    yesterday.index = yesterday.index.remove_unused_levels()
    first = features(yesterday)
    grown = features(panel)
    assert computed == [700, 300 + WINDOW - 1]
    pd.testing.assert_frame_equal(first, exact_features(yesterday), check_exact=True)
    pd.testing.assert_frame_equal(grown, exact_features(panel), check_exact=True)


def test_the_longest_stored_prefix_is_extended(cache_dir: Path) -> None:
    bars = minute_bars(900)
    for rows in (300, 500, 800):
        features(bars.iloc[:rows])
    computed.clear()
    pd.testing.assert_frame_equal(features(bars), exact_features(bars), check_exact=True)
    assert computed[0] == 100 + WINDOW - 1


def test_many_symbols_of_one_family_each_grow(cache_dir: Path) -> None:
    symbols = [minute_bars(400, seed=seed) for seed in range(3 * incremental_module.MAX_PREFIXES)]
    for bars in symbols:
        features(bars.iloc[:300])
    computed.clear()
    for bars in symbols:
        pd.testing.assert_frame_equal(features(bars), exact_features(bars), check_exact=True)
    assert computed[::2] == [100 + WINDOW - 1] * len(symbols)  # each grew from its own rows


def test_an_edit_in_the_old_rows_computes_everything(cache_dir: Path) -> None:
    bars = minute_bars(1000)
    features(bars.iloc[:700])
    revised = bars.copy()
    revised.iloc[650, revised.columns.get_loc("close")] += 1.0  # the vendor revised one bar
    result = features(revised)
    assert computed == [700, 1000]
    pd.testing.assert_frame_equal(result, exact_features(revised), check_exact=True)


def test_a_lookback_in_time_feeds_the_rows_of_that_span(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback="20min", ignore_globals=("computed",))
    def highest(bars: pd.DataFrame) -> pd.Series:
        computed.append(len(bars))
        return bars["high"].rolling("20min").max()

    bars = minute_bars(1200, gaps=True)
    highest(bars.iloc[:900])
    result = highest(bars)
    fed = bars.index.searchsorted(bars.index[900] - pd.Timedelta("20min"))
    assert computed == [900, 1200 - fed]
    pd.testing.assert_series_equal(result, highest.uncached(bars), check_exact=True)


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_a_span_finer_than_the_index_reaches_a_whole_unit_further(
    cache_dir: Path, unit: str
) -> None:
    @time_aware_cacheable(
        incremental=True,
        lookback=pd.Timedelta(minutes=20, nanoseconds=1),
        lookahead=pd.Timedelta(nanoseconds=1),
        ignore_globals=("computed",),
    )
    def highest(bars: pd.DataFrame) -> pd.Series:
        computed.append(len(bars))
        return bars["high"].rolling("20min").max()

    bars = minute_bars(1200, gaps=True)
    bars.index = bars.index.as_unit(unit)
    highest(bars.iloc[:900])
    result = highest(bars)
    assert computed[1] < 1200  # extended, not computed in full
    pd.testing.assert_series_equal(result, highest.uncached(bars), check_exact=True)


def test_ticks_stamped_alike_at_the_window_edges_are_all_fed(cache_dir: Path) -> None:
    # Tick data repeats timestamps: the lookback fed only the last of the ticks at t - lookback,
    # and the lookahead did not compute again the row whose window ends at the old last tick.
    @time_aware_cacheable(incremental=True, lookback="2s")
    def trailing(ticks: pd.Series) -> pd.Series:  # row t reads [t - 2s, t]
        return ticks.rolling("2s", closed="both").sum()

    @time_aware_cacheable(incremental=True, lookback=0, lookahead="2s")
    def leading(ticks: pd.Series) -> pd.Series:  # row t reads [t, t + 2s]
        stamps = ticks.index.as_unit("ns").asi8
        sums = np.concatenate([[0.0], np.cumsum(ticks.to_numpy())])
        low = np.searchsorted(stamps, stamps, side="left")
        high = np.searchsorted(stamps, stamps + 2 * 10**9, side="right")
        return pd.Series(sums[high] - sums[low], index=ticks.index)

    start = pd.Timestamp("2024-01-02 09:30", tz="UTC")
    for seconds, old in [([0, 1, 2, 2, 3, 4], 5), ([0, 1, 2, 3, 4, 4, 5], 5)]:
        index = pd.DatetimeIndex([start + pd.Timedelta(seconds=s) for s in seconds])
        ticks = pd.Series(10.0 ** np.arange(len(seconds)), index=index, name="size")
        for feature in (trailing, leading):
            feature(ticks.iloc[:old])
            grown = feature(ticks)
            pd.testing.assert_series_equal(grown, feature.uncached(ticks), check_exact=True)
            feature.cache_clear()


def test_labels_that_look_ahead_are_computed_again_at_the_old_end(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback=0, lookahead=5, ignore_globals=("computed",))
    def direction(bars: pd.DataFrame, horizon: int = 5) -> pd.Series:
        computed.append(len(bars))
        close = bars["close"]
        return np.sign(close.shift(-horizon) - close).rename("label")

    bars = minute_bars(600)
    old = direction(bars.iloc[:400])
    assert old.iloc[-5:].isna().all()  # no future yet
    result = direction(bars)
    assert computed == [400, 200 + 5]
    pd.testing.assert_series_equal(result, direction.uncached(bars), check_exact=True)


def test_labels_grown_a_row_at_a_time_from_stored_new_rows(cache_dir: Path) -> None:
    # Each frame grows by fewer rows than the look-ahead: the rows computed again start inside
    # the whole result, then inside the rows stored beside it; read back from memory and disk.
    @time_aware_cacheable(incremental=True, lookback=2, lookahead=5, ignore_globals=("computed",))
    def direction(bars: pd.DataFrame) -> pd.Series:
        computed.append(len(bars))
        close = bars["close"]
        return np.sign(close.shift(-5) - close.shift(2)).rename("label")

    bars = minute_bars(460)
    entries = direction.__afml_cache__._open()[2]
    previous = 0
    for rows in [400, 401, 403, 410, 411, 430, 460]:
        computed.clear()
        result = direction(bars.iloc[:rows])
        assert computed[0] == (rows if previous == 0 else rows - previous + 5 + 2)
        previous = rows
        pd.testing.assert_series_equal(
            result, direction.uncached(bars.iloc[:rows]), check_exact=True
        )
    entries.memory.clear()
    computed.clear()
    hits = [direction(bars.iloc[:rows]) for rows in [401, 430, 460]]
    assert computed == []
    for hit in hits:
        pd.testing.assert_series_equal(
            hit, direction.uncached(bars.iloc[: len(hit)]), check_exact=True
        )


def test_a_vertical_barrier_in_time(cache_dir: Path) -> None:
    @time_aware_cacheable(
        incremental=True, lookback=0, lookahead="30min", ignore_globals=("computed",)
    )
    def barrier_return(bars: pd.DataFrame) -> pd.Series:
        """The return to the last bar at or before 30 minutes later (triple-barrier's vertical
        barrier)."""
        computed.append(len(bars))
        index, close = bars.index, bars["close"].to_numpy()
        last = index.searchsorted(index + pd.Timedelta("30min"), side="right") - 1
        return pd.Series(close[last] - close, index=index, name="barrier_return")

    bars = minute_bars(800, seed=3, gaps=True)
    barrier_return(bars.iloc[:500])
    result = barrier_return(bars)
    recomputed = 500 - bars.index.searchsorted(bars.index[500] - pd.Timedelta("30min"))
    assert computed == [500, 300 + recomputed]
    pd.testing.assert_series_equal(result, barrier_return.uncached(bars), check_exact=True)


def test_windows_in_time_across_a_weekend_reach_the_bar_beyond_the_gap(cache_dir: Path) -> None:
    # Friday's bars stored, Monday's appended. A vertical barrier at the first bar at or after
    # t + 30min (AFML's add_vertical_barrier) is Monday's first bar for Friday's last half hour;
    # a return as of t - 1D (get_daily_vol) reads Friday's close for Monday.
    def session(day: str) -> pd.DatetimeIndex:
        return pd.date_range(f"{day} 09:30", f"{day} 15:59", freq="min", tz="America/New_York")

    index = session("2024-03-07").append(session("2024-03-08")).append(session("2024-03-11"))
    close = pd.Series(np.linspace(100, 101, len(index)), index=index, name="close")

    @time_aware_cacheable(incremental=True, lookback=0, lookahead="30min")
    def vertical_barrier(prices: pd.Series) -> pd.Series:
        after = prices.index.searchsorted(prices.index + pd.Timedelta("30min"))
        out = pd.Series(pd.NaT, index=prices.index, dtype=prices.index.dtype, name="t1")
        inside = after < len(prices)
        out[inside] = prices.index[after[inside]]
        return out

    vertical_barrier(close[close.index < "2024-03-09"])
    pd.testing.assert_series_equal(vertical_barrier(close), vertical_barrier.uncached(close))

    days = pd.bdate_range("2024-01-01", "2024-03-29")
    daily = pd.Series(100 + np.arange(len(days), dtype=float), index=days, name="close")

    @time_aware_cacheable(incremental=True, lookback="1D")
    def daily_return(prices: pd.Series) -> pd.Series:
        before = prices.index.searchsorted(prices.index - pd.Timedelta("1D"), side="right") - 1
        base = np.where(before >= 0, prices.to_numpy()[np.maximum(before, 0)], np.nan)
        return prices / base - 1

    daily_return(daily[:"2024-03-22"])  # ends a Friday
    grown = daily[:"2024-03-25"]
    pd.testing.assert_series_equal(daily_return(grown), daily_return.uncached(grown))


def test_running_floating_point_state_matches_the_same_window_computed_fresh(
    cache_dir: Path,
) -> None:
    """A rolling std keeps running sums: the full computation drifts from a fresh computation of
    the same rows, so the tail is compared with the tail computed fresh, and the whole with the
    full computation within noise."""

    @time_aware_cacheable(incremental=True, lookback=389, ignore_globals=("computed",))
    def volatility(bars: pd.DataFrame) -> pd.Series:
        computed.append(len(bars))
        return bars["close"].rolling(390).std()

    bars = minute_bars(3000, seed=5)
    volatility(bars.iloc[:2500])
    result = volatility(bars)
    fed = 2500 - 389
    pd.testing.assert_series_equal(
        result.iloc[2500:], volatility.uncached(bars.iloc[fed:]).iloc[389:], check_exact=True
    )
    pd.testing.assert_series_equal(result, volatility.uncached(bars), rtol=1e-9)


def test_a_series_grows_too(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback=9, ignore_globals=("computed",))
    def lowest(close: pd.Series) -> pd.Series:
        computed.append(len(close))
        return close.rolling(10).min()

    close = minute_bars(500)["close"]
    lowest(close.iloc[:300])
    result = lowest(close)
    assert computed == [300, 209]
    pd.testing.assert_series_equal(result, lowest.uncached(close), check_exact=True)


def test_other_columns_or_arguments_are_another_family(cache_dir: Path) -> None:
    bars = minute_bars(600)
    features(bars.iloc[:400])
    features(bars.iloc[:, :4].astype({"volume": "float64"}))  # another dtype
    features(bars, window=10)  # another argument
    assert computed == [400, 600, 600]
    pd.testing.assert_frame_equal(
        features(bars, window=10), exact_features(bars, window=10), check_exact=True
    )


def changes(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.diff()


@pytest.mark.parametrize(
    "columns",
    [
        pd.Index(["high", "low", "close", "volume"], name="field"),
        pd.MultiIndex.from_product(
            [["ES"], ["high", "low", "close", "volume"]], names=["symbol", "field"]
        ),
    ],
    ids=["name", "level-names"],
)
def test_the_names_of_the_columns_are_part_of_the_family(
    cache_dir: Path, columns: pd.Index
) -> None:
    cached = time_aware_cacheable(incremental=True, lookback=1)(changes)
    bars = minute_bars(300)
    unnamed = bars.set_axis(columns.set_names([None] * columns.nlevels), axis=1)
    named = bars.set_axis(columns, axis=1)
    cached(unnamed)
    pd.testing.assert_frame_equal(cached(named), changes(named), check_exact=True)
    cached(named.iloc[:200])
    pd.testing.assert_frame_equal(cached(unnamed), changes(unnamed), check_exact=True)


def next_session(bars: pd.DataFrame) -> pd.Series:
    """The session after each bar on the index's own calendar (its holidays included)."""
    return pd.Series([t + bars.index.freq for t in bars.index], index=bars.index, name="next")


def stamps(bars: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"change": bars["close"].diff(), "at": bars.index.to_series()})


def _daily(rows: int, freq: Any = "D", tz: Any = None) -> pd.DataFrame:
    index = pd.date_range("2024-01-08", periods=rows, freq=freq, tz=tz)
    return pd.DataFrame({"close": np.arange(rows, dtype=float)}, index=index)


def _with_labels(dtype: str) -> pd.DataFrame:
    bars = minute_bars(300).iloc[:, :3]
    return bars.set_axis(pd.Index(list(bars.columns), dtype=dtype), axis=1)


@pytest.mark.parametrize(
    ("function", "first", "second"),
    [
        # str() of a business day omits its holidays: the 15th is one in the second calendar.
        (
            next_session,
            lambda rows: _daily(rows, pd.offsets.CustomBusinessDay()),
            lambda rows: _daily(rows, pd.offsets.CustomBusinessDay(holidays=["2024-01-15"])),
        ),
        # str() of a zone omits its library; a hit would hand on pytz's, with its LMT offsets.
        (
            stamps,
            lambda rows: _daily(rows, tz=pytz.timezone("America/New_York")),
            lambda rows: _daily(rows, tz=zoneinfo.ZoneInfo("America/New_York")),
        ),
        # Column labels held as objects or as pandas strings: equal lists, other dtypes.
        (
            changes,
            lambda rows: _with_labels("object").iloc[:rows],
            lambda rows: _with_labels("str").iloc[:rows],
        ),
        # pandas' "UTC" is datetime.timezone.utc; zoneinfo's has a .key.
        (
            stamps,
            lambda rows: _daily(rows, tz=datetime.UTC),
            lambda rows: _daily(rows, tz=zoneinfo.ZoneInfo("UTC")),
        ),
    ],
    ids=["holidays", "zone library", "label dtype", "utc"],
)
def test_what_text_would_not_tell_apart_is_another_family(
    cache_dir: Path, function: Any, first: Any, second: Any
) -> None:
    cached = time_aware_cacheable(incremental=True, lookback=1)(function)
    cached(first(5))
    for rows in (5, 7):  # the same rows, then grown
        got, expected = cached(second(rows)), function(second(rows))
        check = (
            pd.testing.assert_series_equal
            if isinstance(got, pd.Series)
            else pd.testing.assert_frame_equal
        )
        check(got, expected, check_exact=True)
        index = got.index
        assert type(index.tz) is type(expected.index.tz) and index.freq == expected.index.freq


def marked(bars: pd.DataFrame) -> pd.DataFrame:
    computed.append(len(bars))
    out = bars.diff()
    out.attrs = {"fill": np.nan, "weights": np.array([0.5, 0.5])}  # == cannot compare these
    return out


def test_parts_whose_attrs_are_alike_are_stitched_with_them(cache_dir: Path) -> None:
    # NaN unequal to itself, arrays compared element-wise: equal attrs all the same, so the
    # frame grows by its new rows, and the result keeps them as the full computation does.
    bars = minute_bars(300).set_axis(
        pd.Index(["high", "low", "close", "volume"], dtype=object), axis=1
    )
    bars.attrs = {"missing": np.nan}  # pandas hands the input's on to bars.diff()
    cached = time_aware_cacheable(incremental=True, lookback=1, ignore_globals=("computed",))(
        marked
    )
    cached(bars.iloc[:200])
    got = cached(bars)
    expected = marked(bars)
    assert computed == [200, 101, 300]
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert afml_cache.fingerprint(got.attrs) == afml_cache.fingerprint(expected.attrs)
    # The result's labels are its own: writing them leaves the stored rows' alone.
    np.asarray(got.columns)[0] = "written"
    grown = minute_bars(320).set_axis(bars.columns, axis=1)
    grown.iloc[:300] = bars
    grown.attrs = bars.attrs
    assert list(cached(grown).columns) == ["high", "low", "close", "volume"]


def buckets(bars: pd.DataFrame) -> pd.DataFrame:
    codes = bars["volume"].to_numpy() % 7
    return pd.DataFrame({"bucket": pd.Categorical(codes, categories=np.arange(7))}, bars.index)


def test_a_stitched_results_categories_are_its_own(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stored head is read over the memory tier's buffers (every buffer out of band here);
    # np.asarray hands a categorical's categories out writable.
    monkeypatch.setattr(serialize, "_IN_BAND_LIMIT", 1)
    cached = time_aware_cacheable(incremental=True, lookback=0)(buckets)
    bars = minute_bars(300)
    cached(bars.iloc[:200])
    for _ in range(2):
        grown = cached(bars)
        pd.testing.assert_frame_equal(grown, buckets(bars), check_exact=True)
        np.asarray(grown["bucket"].cat.categories)[0] = -1
    pd.testing.assert_frame_equal(
        cached(bars.iloc[:200]), buckets(bars.iloc[:200]), check_exact=True
    )


def regime(bars: pd.DataFrame) -> pd.Series:
    up = np.where(bars["close"].diff().to_numpy() > 0, "up", "down")
    series = pd.Series(pd.Categorical(up), index=bars.index, name="regime")
    series.attrs = {"model": "v1"}
    return series.set_flags(allows_duplicate_labels=False)


def test_a_stitched_categorical_series_keeps_its_attrs_and_flags(cache_dir: Path) -> None:
    cached = time_aware_cacheable(incremental=True, lookback=1)(regime)
    bars = minute_bars(300)
    cached(bars.iloc[:200])
    got, expected = cached(bars), regime(bars)
    pd.testing.assert_series_equal(got, expected, check_exact=True)
    assert got.attrs == expected.attrs
    assert not got.flags.allows_duplicate_labels


def last_seen(bars: pd.DataFrame) -> pd.DataFrame:
    out = bars.diff()
    out.attrs = {"last": str(bars.index[-1])}  # set from the rows the function saw
    return out


def as_integer_index(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.diff().set_axis(pd.Index(np.arange(len(bars)) + bars.index[0]), axis=0)


@pytest.mark.parametrize(
    ("function", "bars"),
    [
        (last_seen, minute_bars(300)),
        (as_integer_index, minute_bars(300).reset_index(drop=True)),  # a RangeIndex made Index
    ],
    ids=["attrs from the rows", "another kind of index"],
)
def test_parts_that_differ_from_the_whole_are_not_stitched(
    cache_dir: Path, function: Any, bars: pd.DataFrame
) -> None:
    cached = time_aware_cacheable(incremental=True, lookback=1)(function)
    cached(bars.iloc[:200])
    got, expected = cached(bars), function(bars)
    pd.testing.assert_frame_equal(got, expected, check_exact=True, check_index_type=True)
    assert got.attrs == expected.attrs


@pytest.mark.parametrize(
    ("unit", "window"),
    [
        ("ns", {"lookback": "100000D"}),  # 1900 less 100,000 days lies before 1677
        ("ns", {"lookback": datetime.timedelta(days=200_000)}),  # more than ns can count
        ("ns", {"lookback": 1, "lookahead": pd.Timedelta(days=200_000)}),
        ("us", {"lookback": pd.Timedelta.max}),  # rounded up to µs, past the largest
        ("s", {"lookback": pd.Timedelta.max}),
    ],
    ids=["before 1677", "past ns", "ahead past ns", "max in us", "max in s"],
)
def test_a_window_longer_than_the_unit_can_count_feeds_every_row(
    cache_dir: Path, unit: str, window: dict[str, Any]
) -> None:
    bars = minute_bars(300).set_axis(
        pd.date_range("1900-01-01", periods=300, freq="D", unit=unit), axis=0
    )
    cached = time_aware_cacheable(incremental=True, **window)(exact_features)
    cached(bars.iloc[:200])
    computed.clear()
    pd.testing.assert_frame_equal(cached(bars), exact_features(bars), check_exact=True)
    assert computed[0] == 300


def test_a_frequency_holding_a_dateutil_weekday_is_read_without_a_warning(
    cache_dir: Path,
) -> None:
    # The third Friday of each month; strict mode raises on any value without a rule.
    expiries = pd.date_range(
        "2020-01-01", periods=60, freq=pd.DateOffset(months=1, day=1, weekday=relativedelta.FR(3))
    )
    bars = pd.DataFrame({"close": np.arange(60.0)}, index=expiries)
    cached = time_aware_cacheable(incremental=True, lookback=1, strict=True)(changes)
    cached(bars.iloc[:40])
    pd.testing.assert_frame_equal(cached(bars), changes(bars), check_exact=True)


def test_a_precache_too_large_for_the_cache_removes_the_result_it_was_to_replace(
    cache_dir: Path,
) -> None:
    small = Cache(cache_dir / "small", size_limit="1MB")
    cached = time_aware_cacheable(
        cache=small, incremental=True, lookback=WINDOW - 1, ignore_globals=("computed",)
    )(exact_features)
    bars = minute_bars(300)
    cached(bars)
    noise = pd.DataFrame(np.random.default_rng(0).random((300, 600)), index=bars.index)
    with pytest.warns(CacheWarning, match="more than the whole size_limit"):
        assert cached.precache(noise, bars) is False  # 1.4 MB: refused, and said so
    expected = exact_features(bars)
    computed.clear()
    pd.testing.assert_frame_equal(cached(bars), expected, check_exact=True)
    assert computed == [300]  # computed again, not the value the precache was to replace


def test_a_stored_prefix_that_is_gone_means_a_full_computation(cache_dir: Path) -> None:
    bars = minute_bars(600)
    features(bars.iloc[:400])
    view = features.__afml_cache__.cache()
    stored = [e for e in view.entries() if (e["metadata"] or {}).get("rows") == 400]
    assert view.remove_entries(stored) == 1  # evicted; the family's prefix index still names it
    result = features(bars)
    assert computed == [400, 600]
    pd.testing.assert_frame_equal(result, exact_features(bars), check_exact=True)


def test_is_cached_is_false_when_a_stored_result_lost_the_rows_it_extends(
    cache_dir: Path,
) -> None:
    bars = minute_bars(2000)
    features(bars.iloc[:1900])
    features(bars)  # stored as its new rows beside the 1,900-row result
    assert features.is_cached(bars)
    view = features.__afml_cache__.cache()
    stored = [e for e in view.entries() if (e["metadata"] or {}).get("rows") == 1900]
    assert view.remove_entries(stored) == 1  # the whole result it extends is evicted
    assert not features.is_cached(bars)  # a call computes it all: warm() must not skip it
    computed.clear()
    result = features(bars)
    assert computed == [2000]
    pd.testing.assert_frame_equal(result, exact_features(bars), check_exact=True)
    assert features.is_cached(bars)


def test_is_cached_reads_a_family_index_written_before_it_named_bases(cache_dir: Path) -> None:
    bars = minute_bars(2000)
    features(bars.iloc[:1900])
    features(bars)
    engine = features.__afml_cache__
    grown = engine._grown((bars,), {})
    found, index, _ = grown.entries.lookup(grown.index_key)
    assert found and all(len(p) == 4 for p in index)
    grown.entries.put(grown.index_key, [tuple(p)[:3] for p in index])  # (rows, digests, key)
    assert features.is_cached(bars) and features.is_cached(bars.iloc[:1900])
    view = features.__afml_cache__.cache()
    stored = [e for e in view.entries() if (e["metadata"] or {}).get("rows") == 1900]
    assert view.remove_entries(stored) == 1
    assert not features.is_cached(bars) and not features.is_cached(bars.iloc[:1900])


def rows_stored(view: Cache) -> dict[int, int]:
    """The bytes of each stored result's value, by the rows of its frame."""
    return {
        e["metadata"]["rows"]: e["value_size"]
        for e in view.entries()
        if "rows" in (e["metadata"] or {})
    }


def test_a_frame_grown_by_a_little_stores_only_the_rows_it_computed(cache_dir: Path) -> None:
    bars = minute_bars(2000)
    features(bars.iloc[:1900])
    features(bars.iloc[:1950])
    features(bars)  # grown from a result stored as its new rows, too
    afml_cache.flush_writes()
    sizes = rows_stored(features.__afml_cache__.cache())
    assert sizes[1950] < sizes[1900] / 8 and sizes[2000] < sizes[1900] / 4
    features.__afml_cache__._open()[2].memory.clear()
    computed.clear()
    hits = [features(bars.iloc[:rows]) for rows in (1950, 2000)]  # read from disk
    assert computed == []
    for hit in hits:
        pd.testing.assert_frame_equal(hit, exact_features(bars.iloc[: len(hit)]), check_exact=True)


def test_new_rows_stored_without_the_result_they_extend_are_computed_again(
    cache_dir: Path,
) -> None:
    bars = minute_bars(2000)
    features(bars.iloc[:1900])
    features(bars)
    view = features.__afml_cache__.cache()
    afml_cache.flush_writes()
    assert (
        view.remove_entries(e for e in view.entries() if (e["metadata"] or {}).get("rows") == 1900)
        == 1
    )
    computed.clear()
    result = features(bars)
    assert computed == [2000]
    pd.testing.assert_frame_equal(result, exact_features(bars), check_exact=True)
    computed.clear()
    features(bars)  # stored whole this time
    assert computed == []


def test_invalidate_removes_the_new_rows_stored_with_the_result_they_extend(
    cache_dir: Path,
) -> None:
    bars = minute_bars(2000)
    features(bars.iloc[:1900])
    features(bars)
    assert features.invalidate(after=bars.index[1800]) == 2
    computed.clear()
    features(bars)
    assert computed == [2000]


def test_verify_catches_a_lookback_too_short(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback=3, verify=1.0, ignore_globals=("computed",))
    def too_short(bars: pd.DataFrame) -> pd.Series:
        computed.append(len(bars))
        return bars["high"].rolling(20).max()

    bars = minute_bars(500)
    too_short(bars.iloc[:400])
    with pytest.warns(CacheWarning, match="lookback"):
        result = too_short(bars)
    assert computed == [400, 103, 500]
    pd.testing.assert_series_equal(result, too_short.uncached(bars), check_exact=True)


def test_verify_passes_a_right_lookback_silently(cache_dir: Path) -> None:
    verified = time_aware_cacheable(
        incremental=True, lookback=WINDOW - 1, verify=1.0, ignore_globals=("computed",)
    )(exact_features)
    bars = minute_bars(500)
    verified(bars.iloc[:400])
    result = verified(bars)  # filterwarnings=error: any warning fails
    assert computed == [400, 100 + WINDOW - 1, 500]
    pd.testing.assert_frame_equal(result, exact_features(bars), check_exact=True)


def test_a_result_that_cannot_be_stored_is_returned_with_one_warning(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback=0, ignore_globals=("computed",))
    def with_callbacks(bars: pd.DataFrame) -> pd.Series:
        computed.append(len(bars))
        return pd.Series([lambda: None] * len(bars), index=bars.index)  # lambdas do not pickle

    bars = minute_bars(300)
    with pytest.warns(CacheWarning, match="not cached"):
        first = with_callbacks(bars.iloc[:200])
    grown = with_callbacks(bars)  # nothing stored to extend; no second warning
    assert computed == [200, 300]
    assert len(first) == 200 and grown.index.equals(bars.index)


def test_is_cached_and_precache_know_frames(cache_dir: Path) -> None:
    bars = minute_bars(600)
    assert not features.is_cached(bars.iloc[:400])
    features.precache(exact_features(bars.iloc[:400]), bars.iloc[:400])
    computed.clear()
    assert features.is_cached(bars.iloc[:400])
    assert not features.is_cached(bars)
    pd.testing.assert_frame_equal(features(bars), exact_features(bars), check_exact=True)
    assert computed[0] == 200 + WINDOW - 1  # grew from the stored result
    assert features.is_cached(bars)
    assert features.cache_info()["cache_misses"] == 1


def test_the_engine_travels_with_its_window() -> None:
    engine = pickle.loads(pickle.dumps(features.__afml_cache__))
    assert isinstance(engine, type(features.__afml_cache__))
    assert engine.window == features.__afml_cache__.window


def test_threads_growing_one_frame_compute_it_once(cache_dir: Path) -> None:
    bars = minute_bars(800)
    features(bars.iloc[:600])
    computed.clear()
    start = threading.Barrier(4)
    results: list[pd.DataFrame] = []

    def grow() -> None:
        start.wait()
        results.append(features(bars))

    threads = [threading.Thread(target=grow) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert computed == [200 + WINDOW - 1]
    for result in results:
        pd.testing.assert_frame_equal(result, exact_features(bars), check_exact=True)


def test_invalidate_after_a_time_keeps_the_results_before_it(cache_dir: Path) -> None:
    bars = minute_bars(900)
    features(bars.iloc[:400])
    features(bars.iloc[:700])
    assert features.invalidate(after=bars.index[500]) == 1  # the vendor revised bars from 500 on
    computed.clear()
    features(bars)
    assert computed == [500 + WINDOW - 1]  # grew from the 400 rows kept


def test_verbose_says_how_many_rows_a_miss_computed(
    cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bars = minute_bars(1000)
    features(bars.iloc[:700])
    saved = afml_cache.config.settings()
    afml_cache.configure(verbose=1)
    try:
        features(bars)
    finally:
        afml_cache.config.restore_settings(saved)
    [line] = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        rf"\[afml_cache\] miss {re.escape(features.__afml_cache__.name)}: computed in "
        rf"[\d.]+ (µs|ms|s), stored .+ \({300 + WINDOW - 1} of 1,000 rows computed\)",
        line,
    )


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({}, TypeError, "needs lookback="),
        ({"lookback": "often"}, ValueError, "lookback='often'"),
        ({"lookback": -1}, ValueError, "lookback=-1"),
        ({"lookback": True}, ValueError, "lookback=True"),
        ({"lookback": "1MS"}, ValueError, "calendar offset"),
        ({"lookback": "390"}, ValueError, r"lookback='390': .* no unit.*lookback=390\).*'390min'"),
        ({"lookback": 5, "lookahead": " 30 "}, ValueError, r"lookahead=' 30 ': .* no unit"),
        ({"lookback": 5, "lookahead": -2}, ValueError, "lookahead=-2"),
        ({"lookback": 5, "verify": 2}, ValueError, "verify=2"),
    ],
)
def test_bad_options_are_refused_when_decorating(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        time_aware_cacheable(incremental=True, **options)(exact_features)


def test_window_options_without_incremental_are_refused() -> None:
    with pytest.raises(TypeError, match="incremental=True"):
        time_aware_cacheable(lookback=5)(exact_features)
    with pytest.raises(TypeError, match="not both"):
        time_aware_cacheable(range=("start", "end"), incremental=True, lookback=5)


def test_a_coroutine_function_is_refused() -> None:
    async def load(bars: pd.DataFrame) -> pd.DataFrame:
        return bars

    with pytest.raises(TypeError, match="takes a plain function of a frame"):
        time_aware_cacheable(incremental=True, lookback=1)(load)


def test_an_unsorted_frame_is_refused(cache_dir: Path) -> None:
    bars = minute_bars(100).iloc[::-1]
    with pytest.raises(ValueError, match=r"not sorted ascending.*sort_index"):
        features(bars)


def test_a_first_argument_that_is_no_frame_is_refused(cache_dir: Path) -> None:
    with pytest.raises(TypeError, match="DataFrame or Series as the first argument \\('bars'\\)"):
        features(np.arange(10))


def test_a_lookback_in_time_needs_a_time_index(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback="1h")
    def f(bars: pd.DataFrame) -> pd.DataFrame:
        return bars

    with pytest.raises(TypeError, match="DatetimeIndex"):
        f(pd.DataFrame({"x": [1, 2]}))


def test_a_result_not_aligned_to_its_input_is_refused(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback=4)
    def dropping(bars: pd.DataFrame) -> pd.Series:
        return bars["close"].rolling(5).mean().dropna()

    with pytest.raises(ValueError, match="one row per input row"):
        dropping(minute_bars(50))


# --- the law --------------------------------------------------------------------------------------


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.integers(1, 300),
    appends=st.lists(st.integers(1, 200), min_size=1, max_size=3),
    window=st.integers(1, 40),
    lookahead=st.integers(0, 6),
    edit=st.none() | st.floats(0, 1),
)
def test_any_growth_gives_the_full_computation(
    first: int, appends: list[int], window: int, lookahead: int, edit: float | None
) -> None:
    def labelled(bars: pd.DataFrame, window: int) -> pd.DataFrame:
        computed.append(len(bars))
        frame = exact_features(bars, window)
        frame["ahead"] = bars["close"].shift(-lookahead) if lookahead else 0.0
        return frame

    lookback = max(window - 1, 1)  # the shift reaches one row back
    bars = minute_bars(first + sum(appends), seed=first)
    with tempfile.TemporaryDirectory() as directory:
        cached = time_aware_cacheable(
            incremental=True,
            lookback=lookback,
            lookahead=lookahead,
            cache=Cache(directory),
            ignore_globals=("computed",),
        )(labelled)
        rows = first
        for grown in [0, *appends]:
            rows += grown
            frame = bars.iloc[:rows].copy()
            if edit is not None and grown:  # a revision inside what was computed before
                frame.iloc[int(edit * (rows - grown - 1)), 2] += 0.5
            computed.clear()
            result = cached(frame, window)
            pd.testing.assert_frame_equal(result, labelled(frame, window), check_exact=True)
            assert computed[0] <= (
                rows if edit is not None or not grown else grown + lookahead + lookback
            )


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    first=st.integers(1, 300),
    appends=st.lists(st.integers(1, 150), min_size=1, max_size=3),
    back=st.integers(1, 90),
    ahead=st.integers(0, 90),
)
def test_any_growth_with_spans_of_time_gives_the_full_computation(
    first: int, appends: list[int], back: int, ahead: int
) -> None:
    def spans(bars: pd.DataFrame) -> pd.DataFrame:
        index, close = bars.index, bars["close"].to_numpy()
        last = index.searchsorted(index + pd.Timedelta(minutes=ahead), side="right") - 1
        return pd.DataFrame(
            {
                "high_max": bars["high"].rolling(f"{back}min").max(),
                "barrier": close[last] - close,
            },
            index=index,
        )

    bars = minute_bars(first + sum(appends), seed=first, gaps=True)
    with tempfile.TemporaryDirectory() as directory:
        cached = time_aware_cacheable(
            incremental=True,
            lookback=pd.Timedelta(minutes=back),
            lookahead=pd.Timedelta(minutes=ahead),
            cache=Cache(directory),
        )(spans)
        rows = first
        for grown in [0, *appends]:
            rows += grown
            frame = bars.iloc[:rows]
            pd.testing.assert_frame_equal(cached(frame), spans(frame), check_exact=True)


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_a_result_shares_no_buffer_with_the_stored_prefix(
    cache_dir: Path, tier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stored prefix is read without a copy (lookup(copy=False)); mutating a grown result
    # must change neither the prefix's result nor the frames grown from it later. Every column
    # goes out of band, as large ones do, so the memory tier holds the buffers read over.
    monkeypatch.setattr(serialize, "_IN_BAND_LIMIT", 1)
    bars = minute_bars(1000)
    entries = features.__afml_cache__._open()[2]
    features(bars.iloc[:600])
    for rows in (800, 900, 1000):
        if tier == "disk":
            entries.memory.clear()
        grown = features(bars.iloc[:rows])
        pd.testing.assert_frame_equal(grown, exact_features(bars.iloc[:rows]), check_exact=True)
        grown.iloc[:, 0] = -1.0
        grown.iloc[0, 3] = -7.0
    pd.testing.assert_frame_equal(
        features(bars.iloc[:600]), exact_features(bars.iloc[:600]), check_exact=True
    )


@pytest.mark.parametrize("odd", [0.0, 1e6], ids=["inf", "outlier"])
def test_verify_sees_a_wrong_result_beside_an_inf_or_an_outlier(
    cache_dir: Path, odd: float
) -> None:
    # An inf (0.0: a zero-volume bar's change is inf on the next row) or one block trade made
    # the tolerance of a column its largest magnitude: every finite difference passed as noise.
    days = pd.date_range("2024-01-01", periods=400, freq="D")
    volume = pd.Series(np.random.default_rng(0).integers(50, 150, 400) * 1.0, index=days)
    volume.iloc[5] = odd

    @time_aware_cacheable(incremental=True, lookback=5, verify=1.0)
    def mean_volume(v: pd.Series) -> pd.Series:
        return v.rolling(60, min_periods=1).mean() + v.pct_change()  # reads 59 rows back

    mean_volume(volume.iloc[:300])
    with pytest.warns(afml_cache.CacheWarning, match="differs from the full computation"):
        got = mean_volume(volume)
    pd.testing.assert_series_equal(got, mean_volume.uncached(volume))


class Counter:
    def __init__(self) -> None:
        self.n = 0


COUNTER = Counter()


def test_a_feature_that_changes_what_it_reads_says_why_it_misses(cache_dir: Path) -> None:
    @time_aware_cacheable(incremental=True, lookback=WINDOW)
    def counted(bars: pd.DataFrame) -> pd.DataFrame:
        COUNTER.n += 1  # read by content: each call makes another family
        return exact_features(bars)

    bars = minute_bars(300)
    counted(bars)
    with pytest.warns(CacheWarning, match=r"changed 'COUNTER' as it ran"):
        counted(bars)
