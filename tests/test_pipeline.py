"""The AFML pipeline steps (`afml_cache.demo.pipeline`) against the book's reference loops."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from afml_cache.demo import pipeline
from afml_cache.demo.pipeline import (
    BARRIERS,
    STEPS,
    cusum_filter,
    daily_volatility,
    frac_diff_ffd,
    frac_diff_weights,
    rolling_features,
    run_pipeline,
    synthetic_minute_bars,
    triple_barrier_labels,
)

N = 20_000


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return synthetic_minute_bars(N, seed=11)


@pytest.fixture(scope="module")
def close(bars: pd.DataFrame) -> pd.Series:
    return bars["close"]


@pytest.fixture(scope="module")
def volatility(close: pd.Series) -> pd.Series:
    return daily_volatility(close)


def minute_series(values: list[float], start: str = "2024-03-01 14:30") -> pd.Series:
    index = pd.date_range(start, periods=len(values), freq="min", tz="UTC", name="timestamp")
    return pd.Series(np.asarray(values, dtype=np.float64), index=index, name="close")


# --------------------------------------------------------------------------- reference loops


def reference_daily_vol(close: pd.Series, span0: int = 100) -> pd.Series:
    """AFML snippet 3.1 as printed."""
    df0 = close.index.searchsorted(close.index - pd.Timedelta(days=1))
    df0 = df0[df0 > 0]
    df0 = pd.Series(close.index[df0 - 1], index=close.index[close.shape[0] - df0.shape[0] :])
    df0 = close.loc[df0.index] / close.loc[df0.array].values - 1  # .array: tz-aware .values
    return df0.ewm(span=span0).std()


def reference_cusum(close: pd.Series, h: float | pd.Series) -> pd.DatetimeIndex:
    """AFML snippet 2.4, one return at a time (without the book's skip of the first return)."""
    t_events, s_pos, s_neg = [], 0.0, 0.0
    diff = np.log(close).diff().dropna()
    for t, r in diff.items():
        threshold = h.get(t, np.nan) if isinstance(h, pd.Series) else h
        s_pos, s_neg = max(0.0, float(s_pos + r)), min(0.0, float(s_neg + r))
        if s_neg < -threshold:
            s_neg = 0.0
            t_events.append(t)
        elif s_pos > threshold:
            s_pos = 0.0
            t_events.append(t)
    return pd.DatetimeIndex(t_events, dtype=close.index.dtype, name=close.index.name)


def reference_triple_barrier(
    close: pd.Series,
    events: pd.DatetimeIndex,
    volatility: pd.Series,
    pt_sl: tuple[float, float],
    max_holding: pd.Timedelta,
    min_return: float = 0.0,
) -> pd.DataFrame:
    """AFML snippets 3.2-3.5 (getEvents, applyPtSlOnT1, vertical barrier, getBins), per event."""
    rows = {}
    for t0 in events:
        target = volatility.get(t0, np.nan)
        if not (np.isfinite(target) and target > min_return):
            continue
        pos = close.index.searchsorted(t0 + max_holding)
        vertical = close.index[pos] if pos < len(close) else pd.NaT
        path = close.loc[t0 : close.index[-1] if pd.isna(vertical) else vertical]
        returns = path / close.loc[t0] - 1
        up = returns[returns > pt_sl[0] * target].index.min() if pt_sl[0] > 0 else pd.NaT
        down = returns[returns < -pt_sl[1] * target].index.min() if pt_sl[1] > 0 else pd.NaT
        touches = [t for t in (up, down) if not pd.isna(t)]
        if touches:
            t1 = min(touches)
            barrier = "upper" if t1 == up else "lower"
        elif pd.isna(vertical):
            continue  # no outcome before the data ends
        else:
            t1, barrier = vertical, "vertical"
        ret = close.loc[t1] / close.loc[t0] - 1
        rows[t0] = (t1, target, ret, np.sign(ret), barrier)
    t0s = pd.DatetimeIndex(list(rows), dtype=close.index.dtype, name="t0")
    columns = list(zip(*rows.values(), strict=True)) if rows else [[]] * 5
    return pd.DataFrame(
        {
            "t1": pd.DatetimeIndex(list(columns[0]), dtype=close.index.dtype),
            "target": np.asarray(columns[1], dtype=np.float64),
            "ret": np.asarray(columns[2], dtype=np.float64),
            "label": np.asarray(columns[3], dtype=np.int8),
            "barrier": pd.Categorical(list(columns[4]), categories=list(BARRIERS)),
        },
        index=t0s,
    )


def reference_frac_diff_ffd(series: pd.Series, d: float, thres: float) -> pd.Series:
    """AFML snippet 5.3 (fracDiff_FFD) for one column, with its weights oldest first."""
    w = frac_diff_weights(d, thres)[::-1].reshape(-1, 1)
    width = len(w) - 1
    series_f = series.ffill().dropna()
    out = pd.Series(np.nan, index=series.index)
    for iloc1 in range(width, series_f.shape[0]):
        loc0, loc1 = series_f.index[iloc1 - width], series_f.index[iloc1]
        if not np.isfinite(series.loc[loc1]):
            continue
        out[loc1] = np.dot(w.T, series_f.loc[loc0:loc1])[0]
    return out


# --------------------------------------------------------------------------- synthetic bars


def test_synthetic_bars_are_deterministic_per_seed():
    first = synthetic_minute_bars(30_000, seed=5)
    pd.testing.assert_frame_equal(first, synthetic_minute_bars(30_000, seed=5))
    other = synthetic_minute_bars(30_000, seed=6)
    assert not first["close"].equals(other["close"])
    assert not first["volume"].equals(other["volume"])


def test_synthetic_bars_shape_index_and_dtypes(bars):
    assert len(bars) == N
    assert list(bars.columns) == ["open", "high", "low", "close", "volume"]
    assert isinstance(bars.index, pd.DatetimeIndex)
    assert str(bars.index.tz) == "UTC"
    assert bars.index.freqstr == "min"
    assert bars.index.is_monotonic_increasing
    assert (np.diff(bars.index.asi8) > 0).all()
    assert bars["volume"].dtype == np.int64
    assert (bars["volume"] >= 1).all()
    assert all(bars[c].dtype == np.float64 for c in ("open", "high", "low", "close"))


def test_synthetic_bars_ohlc_consistent_and_on_the_tick_grid(bars):
    body_high = np.maximum(bars["open"], bars["close"])
    body_low = np.minimum(bars["open"], bars["close"])
    assert (bars["low"] <= body_low).all()
    assert (body_high <= bars["high"]).all()
    assert (bars["low"] > 0).all()
    for column in ("open", "high", "low", "close"):
        ticks = bars[column].to_numpy() / pipeline.TICK
        np.testing.assert_array_equal(ticks, np.round(ticks))


def test_synthetic_bars_have_volatility_clustering_and_fat_tails(bars):
    returns = np.log(bars["close"]).diff().dropna()
    assert abs(returns.autocorr(1)) < 0.05  # a random walk...
    assert returns.abs().autocorr(1) > 0.1  # ...whose volatility clusters
    assert returns.abs().autocorr(60) > 0.1
    assert returns.kurt() > 3


# --------------------------------------------------------------------------- daily volatility


def test_daily_volatility_matches_snippet_3_1(close, volatility):
    expected = reference_daily_vol(close)
    pd.testing.assert_series_equal(volatility, expected, check_names=False, check_freq=False)
    assert volatility.index[0] == close.index[0] + pd.Timedelta(days=1, minutes=1)
    assert volatility.iloc[1:].notna().all()


def test_daily_volatility_uses_the_bar_before_a_day_ago():
    close = minute_series(list(100.0 + np.arange(1445.0)))
    vol = daily_volatility(close, span=3)
    returns = close.iloc[1441:].to_numpy() / close.iloc[:4].to_numpy() - 1
    pd.testing.assert_series_equal(
        vol, pd.Series(returns, index=close.index[1441:]).ewm(span=3).std(), check_names=False
    )


def test_daily_volatility_rejects_an_index_that_is_not_datetime():
    with pytest.raises(TypeError, match="DatetimeIndex"):
        daily_volatility(pd.Series([1.0, 2.0]))


# --------------------------------------------------------------------------- CUSUM


def test_cusum_hand_checked_events():
    log_steps = [0.0, 0.006, 0.006, -0.004, -0.004, -0.004, 0.001]
    close = minute_series(list(100 * np.exp(np.cumsum(log_steps))))
    events = cusum_filter(close, 0.01)
    # +0.012 breaches at bar 2 (s_pos resets), then -0.012 breaches at bar 5.
    pd.testing.assert_index_equal(events, close.index[[2, 5]])


@pytest.mark.parametrize("h", [1e-4, 5e-4, 2e-3, 1e-2])
def test_cusum_equals_reference_loop_for_a_constant_threshold(close, h):
    events = cusum_filter(close, h)
    pd.testing.assert_index_equal(events, reference_cusum(close, h))
    assert len(events) > 0


@pytest.mark.parametrize("multiplier", [0.1, 1.0, 2.0])
def test_cusum_equals_reference_loop_for_a_volatility_threshold(close, volatility, multiplier):
    threshold = multiplier * volatility  # NaN-free, but starts a day after the bars
    events = cusum_filter(close, threshold)
    pd.testing.assert_index_equal(events, reference_cusum(close, threshold))
    assert len(events) > 10
    assert events[0] >= volatility.index[0]


def test_cusum_aligns_a_sparse_threshold_by_timestamp(close, volatility):
    sparse = volatility.iloc[::3]  # not a contiguous run of the bars: looked up by timestamp
    events = cusum_filter(close, sparse)
    pd.testing.assert_index_equal(events, reference_cusum(close, sparse))
    assert events.isin(sparse.index).all()


def test_cusum_tiny_threshold_fires_on_both_sides_as_the_reference(close):
    # A threshold below one tick makes s_pos and s_neg breach together: only s_neg resets.
    events = cusum_filter(close.iloc[:5000], 1e-7)
    pd.testing.assert_index_equal(events, reference_cusum(close.iloc[:5000], 1e-7))


# --------------------------------------------------------------------------- triple barrier


@pytest.fixture
def barrier_case() -> tuple[pd.Series, pd.Series]:
    prices = [
        *[100.0, 100.5, 100.9, 101.5, 99.2, 98.5],  # bars 0-5: event A
        *[100.0, 99.5, 98.8, 100.0],  # bars 6-9: event B
        *[100.0, 100.3, 99.6, 100.2, 100.8, 100.4],  # bars 10-15: event C
        *[100.0, 100.2, 101.5, 100.0],  # bars 16-19: events D, E
    ]
    close = minute_series(prices)
    return close, pd.Series(0.01, index=close.index)


def test_triple_barrier_hand_checked_touches(barrier_case):
    close, vol = barrier_case
    events = close.index[[0, 6, 10, 16, 19]]
    labels = triple_barrier_labels(close, events, vol, (1.0, 1.0), pd.Timedelta(minutes=5))
    # A: +1.5% at bar 3 (upper); B: -1.2% at bar 8 (lower); C: inside the band until its
    # vertical barrier at bar 15 (+0.4%); D: no vertical barrier in the data but +1.5% at
    # bar 18; E: the last bar, nothing touched and no vertical barrier: dropped.
    assert labels.index.tolist() == close.index[[0, 6, 10, 16]].tolist()
    assert labels["t1"].tolist() == close.index[[3, 8, 15, 18]].tolist()
    assert labels["barrier"].tolist() == ["upper", "lower", "vertical", "upper"]
    assert labels["label"].tolist() == [1, -1, 1, 1]
    np.testing.assert_allclose(labels["ret"], [0.015, -0.012, 0.004, 0.015], rtol=1e-12)
    assert (labels["target"] == 0.01).all()
    pd.testing.assert_frame_equal(
        labels,
        reference_triple_barrier(close, events, vol, (1.0, 1.0), pd.Timedelta(minutes=5)),
    )


def test_triple_barrier_zero_multiplier_disables_a_barrier(barrier_case):
    close, vol = barrier_case
    labels = triple_barrier_labels(
        close, close.index[[0, 6]], vol, (0.0, 1.0), pd.Timedelta(5, "min")
    )
    # Without the upper barrier A runs on to -1.5% at bar 5, its vertical barrier's bar: a
    # horizontal touch there counts as the horizontal barrier.
    assert labels["barrier"].tolist() == ["lower", "lower"]
    assert labels["t1"].tolist() == close.index[[5, 8]].tolist()
    only_vertical = triple_barrier_labels(close, close.index[[0]], vol, (0.0, 0.0))
    assert only_vertical["barrier"].tolist() == []  # the 4 h vertical barrier is past the data
    vertical = triple_barrier_labels(close, close.index[[0]], vol, (0, 0), pd.Timedelta(2, "min"))
    assert vertical["barrier"].tolist() == ["vertical"]
    assert vertical["t1"].tolist() == [close.index[2]]


def test_triple_barrier_drops_small_or_missing_targets(barrier_case):
    close, vol = barrier_case
    events = close.index[[0, 6, 10]]
    holding = pd.Timedelta(minutes=5)
    assert triple_barrier_labels(close, events, vol, min_return=0.01, max_holding=holding).empty
    kept = triple_barrier_labels(close, events, vol, min_return=0.009, max_holding=holding)
    assert len(kept) == 3
    gappy = vol.copy()
    gappy.iloc[6] = np.nan
    kept = triple_barrier_labels(close, events, gappy, max_holding=holding)
    assert kept.index.tolist() == close.index[[0, 10]].tolist()


def test_triple_barrier_rejects_events_that_are_not_bars(barrier_case):
    close, _ = barrier_case
    between = close.index[[1]] + pd.Timedelta(seconds=30)
    with pytest.raises(ValueError, match="timestamps of close"):
        triple_barrier_labels(close, between, pd.Series(0.01, index=between))


@pytest.mark.parametrize(
    ("pt_sl", "hours"), [((1.0, 1.0), 4), ((2.0, 0.5), 1), ((0.0, 1.5), 4), ((1.0, 0.0), 12)]
)
def test_triple_barrier_equals_reference(close, volatility, monkeypatch, pt_sl, hours):
    events = cusum_filter(close, volatility)
    holding = pd.Timedelta(hours=hours)
    # A small block forces many chunks through the vectorised scan.
    monkeypatch.setattr(pipeline, "_BARRIER_BLOCK_CELLS", 5_000)
    labels = triple_barrier_labels(close, events, volatility, pt_sl, holding)
    expected = reference_triple_barrier(close, events, volatility, pt_sl, holding)
    pd.testing.assert_frame_equal(labels, expected)
    assert len(labels) > 100
    touched = {"vertical"} | ({"upper"} if pt_sl[0] else set()) | ({"lower"} if pt_sl[1] else set())
    assert set(labels["barrier"]) == touched


# --------------------------------------------------------------------------- frac diff


@pytest.mark.parametrize("d", [0.1, 0.4, 0.75, 1.3, 2.5])
def test_frac_diff_weights_follow_the_recursion(d):
    threshold = 1e-4
    w = frac_diff_weights(d, threshold)
    assert w[0] == 1.0
    for k in range(1, len(w)):
        assert math.isclose(w[k], -w[k - 1] * (d - k + 1) / k, rel_tol=1e-12)
    assert (np.abs(w) >= threshold).all()
    k = len(w)
    assert abs(-w[-1] * (d - k + 1) / k) < threshold  # the next weight is the first dropped


def test_frac_diff_weights_integer_orders():
    np.testing.assert_array_equal(frac_diff_weights(0.0), [1.0])
    np.testing.assert_array_equal(frac_diff_weights(1.0), [1.0, -1.0])
    np.testing.assert_array_equal(frac_diff_weights(2.0), [1.0, -2.0, 1.0])
    assert len(frac_diff_weights(0.4, 1e-5)) > len(frac_diff_weights(0.4, 1e-4))
    with pytest.raises(ValueError, match="threshold"):
        frac_diff_weights(0.4, 0.0)


def test_frac_diff_d1_is_the_first_difference_and_d0_the_series(close):
    log_close = np.log(close)
    pd.testing.assert_series_equal(frac_diff_ffd(log_close, d=1.0), log_close.diff())
    pd.testing.assert_series_equal(frac_diff_ffd(log_close, d=0.0), log_close)


def test_frac_diff_matches_snippet_5_3_with_missing_values(close):
    series = np.log(close.iloc[:3000]).copy()
    series.iloc[[700, 701, 1500]] = np.nan
    result = frac_diff_ffd(series, d=0.4, threshold=1e-3)
    expected = reference_frac_diff_ffd(series, d=0.4, thres=1e-3)
    np.testing.assert_allclose(result.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=0)
    width = len(frac_diff_weights(0.4, 1e-3)) - 1
    assert result.iloc[:width].isna().all()
    assert result.iloc[width:].isna().sum() == 3
    assert result.index.equals(series.index)
    assert result.name == series.name


def test_frac_diff_short_or_empty_series():
    short = minute_series([1.0, 2.0, 3.0])
    assert frac_diff_ffd(short, d=0.4).isna().all()
    leading = minute_series([np.nan, np.nan, 1.0, 2.0, 4.0])
    pd.testing.assert_series_equal(
        frac_diff_ffd(leading, d=1.0), minute_series([np.nan, np.nan, np.nan, 1.0, 2.0])
    )


# --------------------------------------------------------------------------- rolling features


def test_rolling_features_columns_and_values(bars):
    features = rolling_features(bars, windows=(5, 15))
    kinds = ["ret", "vol", "zscore", "volume_ratio", "range"]
    assert list(features.columns) == [f"{k}_{w}" for w in (5, 15) for k in kinds]
    assert features.index.equals(bars.index)
    assert (features.dtypes == np.float64).all()
    assert not np.isinf(features.to_numpy()).any()
    assert features.iloc[15:].notna().all().all()

    t = 1234
    window = bars.iloc[t - 14 : t + 1]
    close = bars["close"]
    assert math.isclose(features["ret_15"].iloc[t], math.log(close.iloc[t] / close.iloc[t - 15]))
    one_bar = np.diff(np.log(bars["close"].iloc[t - 15 : t + 1].to_numpy()))
    assert math.isclose(features["vol_15"].iloc[t], one_bar.std(ddof=1), rel_tol=1e-9)
    z = (close.iloc[t] - window["close"].mean()) / window["close"].std()
    # pandas' rolling variance of ~4300 price levels carries ~1e-9 relative error.
    assert math.isclose(features["zscore_15"].iloc[t], z, rel_tol=1e-6)
    ratio = bars["volume"].iloc[t] / window["volume"].mean()
    assert math.isclose(features["volume_ratio_15"].iloc[t], ratio, rel_tol=1e-12)
    span = math.log(window["high"].max() / window["low"].min())
    assert math.isclose(features["range_15"].iloc[t], span, rel_tol=1e-12)


def test_rolling_features_flat_prices_have_zero_zscore():
    close = minute_series([100.0] * 10 + [100.25, 100.5])
    bars = pd.DataFrame(
        {"open": close, "high": close, "low": close, "close": close, "volume": 10},
        index=close.index,
    )
    features = rolling_features(bars, windows=(5,))
    assert features["zscore_5"].iloc[4:10].eq(0.0).all()
    assert features["zscore_5"].iloc[10] > 0
    assert features["vol_5"].iloc[5:10].eq(0.0).all()


def test_rolling_features_have_no_look_ahead(bars):
    windows = (5, 15, 60, 240)
    sample = bars.iloc[:3000]
    before = rolling_features(sample, windows)
    k = 2000
    changed = sample.copy()
    for column in ("open", "high", "low", "close"):
        changed.iloc[k, changed.columns.get_loc(column)] *= 1.01
    changed.iloc[k, changed.columns.get_loc("volume")] *= 7
    after = rolling_features(changed, windows)
    pd.testing.assert_frame_equal(after.iloc[:k], before.iloc[:k])
    assert (after.iloc[k] != before.iloc[k]).all()


def test_rolling_features_reject_degenerate_windows(bars):
    with pytest.raises(ValueError, match="windows"):
        rolling_features(bars, windows=(1, 5))
    with pytest.raises(ValueError, match="windows"):
        rolling_features(bars, windows=())


# --------------------------------------------------------------------------- run_pipeline


@pytest.fixture(scope="module")
def pipeline_bars() -> pd.DataFrame:
    return synthetic_minute_bars(30_000, seed=2)


@pytest.fixture(scope="module")
def default_run(pipeline_bars) -> dict[str, object]:
    return run_pipeline(pipeline_bars)


def test_run_pipeline_returns_every_step_and_its_timing(default_run):
    assert list(default_run) == [*STEPS, "timings"]
    timings = default_run["timings"]
    assert list(timings) == list(STEPS)
    assert all(isinstance(t, float) and t > 0 for t in timings.values())
    assert isinstance(default_run["cusum_filter"], pd.DatetimeIndex)
    assert len(default_run["cusum_filter"]) > 100


def test_run_pipeline_training_set_joins_features_and_labels(default_run):
    train = default_run["training_set"]
    labels = default_run["triple_barrier_labels"]
    features = default_run["rolling_features"]
    frac_diff = default_run["frac_diff_ffd"]
    assert list(train.columns) == ["frac_diff", *features.columns, *labels.columns]
    assert train.index.isin(labels.index).all()
    assert len(train) > 0.9 * len(labels)
    assert train.drop(columns=list(labels.columns)).notna().all().all()
    t = train.index[len(train) // 2]
    assert train.at[t, "ret_60"] == features.at[t, "ret_60"]
    assert train.at[t, "frac_diff"] == frac_diff.at[t]
    assert train.at[t, "label"] == labels.at[t, "label"]
    assert set(train["label"]) <= {-1, 0, 1}


def test_run_pipeline_calls_the_step_overrides(pipeline_bars, default_run):
    calls: dict[str, int] = {}

    def counted(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] = calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    results = run_pipeline(
        pipeline_bars, steps={name: counted(name, fn) for name, fn in STEPS.items()}
    )
    assert calls == dict.fromkeys(STEPS, 1)
    pd.testing.assert_frame_equal(results["training_set"], default_run["training_set"])

    calls.clear()
    partial = run_pipeline(
        pipeline_bars, steps={"cusum_filter": counted("cusum_filter", cusum_filter)}
    )
    assert calls == {"cusum_filter": 1}
    pd.testing.assert_index_equal(partial["cusum_filter"], default_run["cusum_filter"])


def test_run_pipeline_parameters_reach_their_steps(pipeline_bars, default_run):
    seen: dict[str, object] = {}

    def spy(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            seen[name] = kwargs
            return fn(*args, **kwargs)

        return wrapper

    results = run_pipeline(
        pipeline_bars,
        cusum_multiplier=3.0,
        pt_sl=(2.0, 1.0),
        d=0.6,
        windows=(10, 30),
        steps={name: spy(name, fn) for name, fn in STEPS.items()},
    )
    assert seen["triple_barrier_labels"]["pt_sl"] == (2.0, 1.0)
    assert seen["frac_diff_ffd"]["d"] == 0.6
    assert seen["rolling_features"]["windows"] == (10, 30)
    assert len(results["cusum_filter"]) < len(default_run["cusum_filter"])
    assert "ret_30" in results["training_set"].columns


def test_run_pipeline_rejects_unknown_steps(pipeline_bars):
    with pytest.raises(ValueError, match="unknown pipeline steps"):
        run_pipeline(pipeline_bars, steps={"cusum": cusum_filter})
