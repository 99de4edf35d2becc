"""Backtests: `cached_backtest`, `BacktestCache`, best parameters, walk-forward splits, the
report and the ``afml-cache backtests`` command.

A real engine (backtesting.py, SMA crossover on its bundled GOOG bars) in this process, in
joblib workers and in four processes sweeping overlapping grids; and the guide's examples as
written (with ``afml.cache`` renamed). Computations are counted in files (see helpers).
"""

from __future__ import annotations

import collections
import decimal
import importlib
import json
import multiprocessing
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import backtests as hb

import afml_cache
from afml_cache import BacktestCache, cached_backtest, get_backtest_cache, robust_cacheable
from afml_cache.backtest_cache import CURVES_NAMESPACE, BacktestResult
from afml_cache.cli import main

GOOG = hb.GOOG


@pytest.fixture
def counter(tmp_path: Path) -> str:
    return str(tmp_path / "computed.txt")


def assert_same_stats(got: pd.Series, expected: pd.Series) -> None:
    """backtesting.py statistics equal field by field (frames exactly)."""
    assert list(got.index) == list(expected.index)
    for name in expected.index:
        if name in ("_trades", "_equity_curve"):
            pd.testing.assert_frame_equal(got[name], expected[name])
        elif name == "_strategy":
            assert str(got[name]) == str(expected[name])
        else:
            assert got[name] == expected[name] or (
                pd.isna(got[name]) and pd.isna(expected[name])
            ), name


# --- a real engine ---------------------------------------------------------------------------


def test_grid_is_computed_once_and_hits_equal_the_uncached_results(cache_dir, counter):
    first = [hb.run_sma(GOOG, params, counter) for params in hb.GRID]
    again = [hb.run_sma(GOOG, params, counter) for params in hb.GRID]
    assert len(hb.computed(counter)) == len(hb.GRID)
    for params, got, hit in zip(hb.GRID, first, again, strict=True):
        expected = hb.sma_backtest(GOOG, params)
        assert_same_stats(got, expected)
        assert_same_stats(hit, expected)
        assert type(hit) is type(expected)


def test_backtests_count_in_the_functions_statistics(cache_dir, counter):
    # get_cache_stats() "should show your function" (the guide's troubleshooting), as for
    # robust_cacheable's: each computed run a miss, each run read back a hit.
    for params in [*hb.GRID[:2], hb.GRID[0]]:
        hb.run_sma(GOOG, params, counter)
    stats = afml_cache.get_cache_stats()[hb.run_sma._name]
    assert (stats.total_calls, stats.cache_hits, stats.cache_misses) == (3, 1, 2)


def test_one_changed_bar_recomputes(cache_dir, counter):
    params = hb.GRID[2]
    hb.run_sma(GOOG, params, counter)
    changed = GOOG.copy()
    # Row 1001: the original sampled every 100th row and returned the old backtest here.
    changed.iloc[1001, changed.columns.get_loc("Close")] *= 1.05
    got = hb.run_sma(changed, params, counter)
    assert len(hb.computed(counter)) == 2
    assert_same_stats(got, hb.sma_backtest(changed, params))


def test_find_best_parameters_equals_a_manual_sort(cache_dir, counter):
    for params in hb.GRID:
        hb.run_sma(GOOG, params, counter)
    uncached = [(hb.sma_backtest(GOOG, p)["Sharpe Ratio"], p["n1"], p["n2"]) for p in hb.GRID]
    manual = sorted(uncached, key=lambda row: -row[0])[:3]
    best = get_backtest_cache().find_best_parameters("sma_cross", "sharpe_ratio", top_n=3)
    got = list(zip(best["Sharpe Ratio"], best["param_n1"], best["param_n2"], strict=True))
    assert got == manual
    assert list(best["sharpe_ratio"]) == [row[0] for row in manual]
    assert {"strategy", "created", "start", "end"} <= set(best.columns)
    assert best["start"].iloc[0] == GOOG.index.min() and best["end"].iloc[0] == GOOG.index.max()
    worst = get_backtest_cache().find_best_parameters(
        "sma_cross", "Sharpe Ratio", maximize=False, top_n=1
    )
    assert worst["Sharpe Ratio"].iloc[0] == min(row[0] for row in uncached)


def test_joblib_parallel_sweep_computes_each_point_once(cache_dir, counter):
    from joblib import Parallel, delayed

    sharpe = Parallel(n_jobs=2)(
        delayed(hb.sweep_point)(str(cache_dir), p, counter) for p in hb.GRID + hb.GRID
    )
    assert sorted(hb.computed(counter)) == sorted(f"sma {p['n1']} {p['n2']}" for p in hb.GRID)
    expected = [hb.sma_backtest(GOOG, p)["Sharpe Ratio"] for p in hb.GRID]
    assert sharpe == expected + expected


def test_four_processes_sweeping_overlapping_grids_compute_each_point_once(cache_dir, counter):
    grids = [hb.GRID[0:4], hb.GRID[2:6], hb.GRID[1:5], hb.GRID[::-1]]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(grids))
    workers = [
        context.Process(target=hb.sweep, args=(str(cache_dir), grid, counter, barrier))
        for grid in grids
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert sorted(hb.computed(counter)) == sorted(f"sma {p['n1']} {p['n2']}" for p in hb.GRID)
    index = BacktestCache(cache_dir).index
    assert sorted((r["parameters"]["n1"], r["parameters"]["n2"]) for r in index.values()) == sorted(
        (p["n1"], p["n2"]) for p in hb.GRID
    )


def test_dask_workers_compute_each_point_once(cache_dir, counter):
    distributed = pytest.importorskip("dask.distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        futures = client.map(
            hb.sweep_point, [str(cache_dir)] * 12, hb.GRID + hb.GRID, [counter] * 12, pure=False
        )
        sharpe = client.gather(futures)
    assert sorted(hb.computed(counter)) == sorted(f"sma {p['n1']} {p['n2']}" for p in hb.GRID)
    assert sharpe[:6] == sharpe[6:] == [hb.sma_backtest(GOOG, p)["Sharpe Ratio"] for p in hb.GRID]


def test_a_backtest_defined_in_a_script_runs_in_joblib_workers(cache_dir, tmp_path, run_python):
    script = f"""
        import numpy as np, pandas as pd
        from joblib import Parallel, delayed
        import afml_cache
        from afml_cache import cached_backtest

        afml_cache.configure(directory={str(cache_dir)!r})

        @cached_backtest("script")
        def backtest(data, params):
            with open({str(tmp_path / "script.txt")!r}, "a") as fh:
                fh.write(f"{{params}}\\n")
            return {{"total": float(data.sum()) * params}}

        data = np.arange(10.0)
        backtest(data, 0)  # a call first: the function has state by now
        out = Parallel(n_jobs=2)(delayed(backtest)(data, p) for p in [1, 2, 1, 2])
        print(out)
    """
    assert run_python(script).strip() == str([{"total": 45.0 * p} for p in (1, 2, 1, 2)])
    assert sorted((tmp_path / "script.txt").read_text().split()) == ["0", "1", "2"]


def test_a_script_backtest_with_its_own_cache_runs_in_joblib_workers(tmp_path, run_python):
    # It travels by value with the decorators' engine, which sends the cache's address.
    script = f"""
        import numpy as np
        from joblib import Parallel, delayed
        import afml_cache
        from afml_cache import cached_backtest

        @cached_backtest("own_cache", cache=afml_cache.Cache({str(tmp_path / "own")!r}))
        def backtest(data, params):
            return {{"total": float(data.sum()) * params}}

        data = np.arange(10.0)
        print(Parallel(n_jobs=2)(delayed(backtest)(data, p) for p in [1, 2, 1, 2]))
        print(len(backtest.runs()))
    """
    out, runs = run_python(script).split("\n")[:2]
    assert (out, runs) == (str([{"total": 45.0 * p} for p in (1, 2) * 2]), "2")


def test_a_sweep_killed_halfway_resumes_where_it_stopped(cache_dir, counter):
    for params in hb.GRID[:3]:
        hb.run_sma(GOOG, params, counter)
    afml_cache.configure(directory=cache_dir)  # a new session: nothing in memory
    for params in hb.GRID:
        hb.run_sma(GOOG, params, counter)
    assert len(hb.computed(counter)) == len(hb.GRID)


# --- the decorator ---------------------------------------------------------------------------


def _frame(rows: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=rows, freq="h")
    return pd.DataFrame({"close": 100 + rng.normal(size=rows).cumsum()}, index=index)


def test_returns_what_the_function_returned_on_a_miss_and_a_hit(cache_dir):
    calls = []

    @cached_backtest("dict_strategy")
    def metrics_only(data, params):
        calls.append(params)
        return {"sharpe_ratio": np.float32(1.5), "trades": np.int64(3)}

    miss = metrics_only(_frame(), {"window": 5})
    hit = metrics_only(_frame(), {"window": 5})
    assert miss == hit == {"sharpe_ratio": np.float32(1.5), "trades": np.int64(3)}
    assert type(hit) is dict and type(hit["sharpe_ratio"]) is np.float32
    assert len(calls) == 1
    run = get_backtest_cache().index[metrics_only.last_run_id]
    assert run["metrics"] == {"sharpe_ratio": 1.5, "trades": 3}
    assert run["data_range"] == ["2024-01-01T00:00:00", "2024-01-03T01:00:00"]


def test_extra_arguments_and_parameter_types_are_in_the_key(cache_dir):
    calls = []

    @cached_backtest("extras")
    def backtest(data, params, commission=0.0):
        calls.append((params, commission))
        return {"total": float(np.sum(params)) - commission}

    data = _frame()
    assert backtest(data, (1, 1)) == {"total": 2.0}
    assert backtest(data, [1, 1]) == {"total": 2.0}  # a list is not a tuple: its own run
    assert backtest(data, (1, 1), commission=0.5) == {"total": 1.5}
    assert backtest(data, (1, 1), 0.5) == {"total": 1.5}  # bound: the same call
    assert backtest(data, np.int64(1)) == {"total": 1.0}  # numpy scalar parameters
    assert len(calls) == 4
    assert len(backtest.runs()) == 4


def test_every_argument_after_the_data_is_a_parameter_without_params(cache_dir):
    @cached_backtest("cross")
    def cross(data, fast, slow):
        return {"sharpe_ratio": float(slow - fast)}

    for slow in (20, 60, 120):
        cross(_frame(), 10, slow)
    best = get_backtest_cache().find_best_parameters("cross", metric="sharpe_ratio", top_n=3)
    assert list(best["param_slow"]) == [120, 60, 20]
    assert list(best["param_fast"]) == [10, 10, 10]


class _Runner:
    def __cache_key__(self) -> str:
        return "runner"

    @cached_backtest("method")
    def run(self, data, fast, slow):
        return {"sharpe_ratio": float(slow - fast)}


def test_parameters_are_named_after_the_arguments_that_are_not_the_data(cache_dir):
    @cached_backtest("options", ignore=["verbose"])
    def options(data, fast, verbose=False, **extra):
        return {"sharpe_ratio": float(fast)}

    @cached_backtest("window")
    def window(data, window):
        return {"sharpe_ratio": float(window)}

    @cached_backtest("config")
    def config(data, config):
        return {"sharpe_ratio": float(config["x"])}

    _Runner().run(_frame(), 1, 2)  # a method: its instance is neither data nor parameter
    options(_frame(), 1, slow=3)
    window(_frame(), 5)
    assert _Runner.run.runs().filter(like="param_").to_dict("records") == [
        {"param_fast": 1, "param_slow": 2}
    ]
    assert _Runner.run.runs()["start"].iloc[0] == _frame().index[0]
    assert options.runs().filter(like="param_").to_dict("records") == [
        {"param_fast": 1, "param_slow": 3}
    ]
    assert window.runs().filter(like="param_").to_dict("records") == [{"param_window": 5}]
    config(_frame(), collections.OrderedDict(x=1, y=2))  # a lone mapping: by its keys
    assert config.runs().filter(like="param_").to_dict("records") == [{"param_x": 1, "param_y": 2}]


def test_a_backtest_that_changes_its_data_in_place_runs_uncached(cache_dir):
    # A hit would leave the caller's frame without the column the run added to it.
    @cached_backtest("in_place")
    def signals(data, params):
        data["signal"] = data["close"].diff() > 0
        return {"sharpe_ratio": float(data["signal"].sum())}

    with pytest.warns(afml_cache.CacheWarning, match="changed its argument 'data' in place"):
        first = signals(_frame(), {})
    again = _frame()
    assert signals(again, {}) == first
    assert "signal" in again.columns
    assert len(signals.runs()) == 0


def test_runs_hands_out_parameters_of_its_own(cache_dir):
    backtests = get_backtest_cache()
    backtests.cache_backtest(
        "sma", {"windows": [5, 20], "opts": {}}, _frame(), {"sharpe_ratio": 1.5}
    )
    runs = backtests.runs("sma")
    runs["param_windows"].iloc[0].append(999)
    runs["param_opts"].iloc[0]["x"] = 1
    again = backtests.find_best_parameters("sma", metric="sharpe_ratio")
    assert again["param_windows"].iloc[0] == [5, 20]
    assert again["param_opts"].iloc[0] == {}


def test_a_script_backtest_is_named_and_keyed_as_robust_cacheable_names_and_keys_it(cache_dir):
    # As a script defines it: its runs carry the script's path, like its decorated functions.
    code = (
        "from afml_cache import cached_backtest\n"
        "@cached_backtest('script_strategy', strict=True)\n"
        "def backtest(data, params):\n"
        "    return {'total': float(sum(data)) * params}\n"
    )
    defined = {"__name__": "__main__", "__file__": "/home/ana/sweep.py"}
    exec(code, defined)
    backtest = defined["backtest"]
    assert backtest([1.0, 2.0], 2) == backtest.uncached([1.0, 2.0], 2) == {"total": 6.0}
    runs = BacktestCache().runs(function="__main__[/home/ana/sweep.py].backtest")
    assert list(runs.index) == [backtest.last_run_id]
    # A key failure names the argument, as robust_cacheable's does.
    with pytest.raises(afml_cache.FingerprintError, match=r"backtest: argument 'params'"):
        backtest([1.0], threading.Lock())


def test_editing_the_strategy_class_recomputes(cache_dir, tmp_path, monkeypatch):
    source = """
from afml_cache import cached_backtest

class Signal:
    def score(self, data):
        return float(data["close"].iloc[-1]) * {factor}

@cached_backtest("edited")
def backtest(data, params):
    return {{"score": Signal().score(data) + params["shift"]}}
"""
    module = tmp_path / "edited_strategy.py"
    module.write_text(source.format(factor=1))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _frame()
    first = importlib.import_module("edited_strategy").backtest(data, {"shift": 0})
    module.write_text(source.format(factor=2))
    sys.modules.pop("edited_strategy")
    second = importlib.import_module("edited_strategy").backtest(data, {"shift": 0})
    assert second["score"] == 2 * first["score"]
    sys.modules.pop("edited_strategy")


SETTINGS = {"factor": 1.0}


@cached_backtest("reads_a_global")
def scaled_backtest(data, params):
    return {"score": params * SETTINGS["factor"]}


def test_a_mutable_global_counts_by_its_content_at_the_call(cache_dir, monkeypatch):
    data = _frame()
    assert scaled_backtest(data, 2.0) == {"score": 2.0}
    monkeypatch.setitem(SETTINGS, "factor", 3.0)
    assert scaled_backtest(data, 2.0) == {"score": 6.0}


def test_a_strategy_class_passed_as_an_argument_counts_by_its_code(
    cache_dir, tmp_path, monkeypatch
):
    source = """
class Signal:
    def score(self, data):
        return float(data["close"].iloc[-1]) * {factor}
"""

    @cached_backtest("class_argument")
    def backtest(data, params, signal_class):
        return {"score": signal_class().score(data) + params}

    module = tmp_path / "passed_signal.py"
    module.write_text(source.format(factor=1))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _frame()
    first = backtest(data, 0, importlib.import_module("passed_signal").Signal)
    module.write_text(source.format(factor=2))
    sys.modules.pop("passed_signal")
    second = backtest(data, 0, importlib.import_module("passed_signal").Signal)
    sys.modules.pop("passed_signal")
    assert second["score"] == 2 * first["score"]


def test_a_sweep_over_one_backtest_object_hits_and_counts_its_strategy_code(
    cache_dir, tmp_path, monkeypatch, counter
):
    """The notebook sweep ``run(bt, params)`` over one ``Backtest``: ``bt.run`` leaves its
    statistics on the object, which must neither break the next call's key nor be in it; and
    a Backtest built from the strategy class edited must not find the old class's runs."""
    source = hb.STRATEGY_SOURCE

    def uncached(bt, params):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return bt.run(**params)

    @cached_backtest("one_backtest_object")
    def run(bt, params):
        hb.mark(counter, f"run {params}")
        return uncached(bt, params)

    module = tmp_path / "swept_strategy.py"
    module.write_text(source.format(size=0.5))
    monkeypatch.syspath_prepend(str(tmp_path))
    bt = hb.Backtest(
        GOOG, importlib.import_module("swept_strategy").Cross, cash=10_000, finalize_trades=True
    )
    grid = [{"n1": 10, "n2": 20}, {"n1": 5, "n2": 30}]
    for _ in range(2):
        for params in grid:
            assert_same_stats(run(bt, params), uncached(bt, params))
    assert len(hb.computed(counter)) == len(grid)
    module.write_text(source.format(size=0.9))
    sys.modules.pop("swept_strategy")
    edited = hb.Backtest(
        GOOG, importlib.import_module("swept_strategy").Cross, cash=10_000, finalize_trades=True
    )
    got = run(edited, grid[0])
    sys.modules.pop("swept_strategy")
    assert_same_stats(got, uncached(edited, grid[0]))
    assert len(hb.computed(counter)) == len(grid) + 1


def test_a_backtest_drawing_inside_a_library_counts_the_seed(cache_dir):
    # A bootstrap strategy: pandas' sample() draws from numpy's global generator.
    @cached_backtest("bootstrap")
    def backtest(data, params):
        return {"score": float(data["close"].sample(n=3).mean()) * params}

    data = _frame(rows=200)
    for seed in (0, 1, 2, 1, 0):
        np.random.seed(seed)
        got = backtest(data, 1.0)
        np.random.seed(seed)
        assert got == backtest.uncached(data, 1.0), seed


def test_save_trades_false_keeps_trades_out_of_the_stored_value(cache_dir):
    @cached_backtest("no_trades", save_trades=False)
    def backtest(data, params):
        trades = pd.DataFrame({"pnl": [1.0, -0.5]})
        return {"sharpe_ratio": 1.0}, trades, data["close"]

    data = _frame()
    miss = backtest(data, {"a": 1})
    assert miss[1] is not None
    metrics, trades, equity = backtest(data, {"a": 1})
    assert metrics == {"sharpe_ratio": 1.0} and trades is None
    pd.testing.assert_series_equal(equity, data["close"])
    assert get_backtest_cache().get_run(backtest.last_run_id).trades is None


def test_save_trades_false_on_backtesting_statistics(cache_dir, counter):
    @cached_backtest("sma_no_trades", save_trades=False)
    def backtest(data, params):
        return hb.sma_backtest(data, params)

    backtest(GOOG, hb.GRID[0])
    hit = backtest(GOOG, hb.GRID[0])
    assert hit["_trades"] is None
    pd.testing.assert_frame_equal(
        hit["_equity_curve"], hb.sma_backtest(GOOG, hb.GRID[0])["_equity_curve"]
    )


def test_last_run_id_is_per_thread(cache_dir):
    @cached_backtest("threads")
    def backtest(data, params):
        return {"value": params}

    data = _frame()
    seen: dict[int, tuple[str | None, str | None]] = {}
    barrier = threading.Barrier(2)

    def work(value: int) -> None:
        barrier.wait()
        for _ in range(20):
            backtest(data, value)
            mine = backtest.last_run_id
        seen[value] = (mine, get_backtest_cache().index[mine]["parameters"])

    threads = [threading.Thread(target=work, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[1][1] == 1 and seen[2][1] == 2 and seen[1][0] != seen[2][0]


def test_a_result_that_cannot_be_stored_is_returned_with_one_warning(cache_dir):
    @cached_backtest("unpicklable")
    def backtest(data, params):
        return {"sharpe_ratio": 1.0}, None, lambda: params

    data = _frame()
    with pytest.warns(UserWarning, match="returned but not cached") as caught:
        first = backtest(data, 1)
        second = backtest(data, 1)
    assert len(caught) == 1
    assert first[0] == second[0] == {"sharpe_ratio": 1.0} and second[2]() == 1
    assert backtest.last_run_id is None
    assert get_backtest_cache().index == {}
    assert afml_cache.Cache(cache_dir).check() == []


def test_disabled_runs_uncached(cache_dir):
    calls = []

    @cached_backtest("off")
    def backtest(data, params):
        calls.append(1)
        return {"x": 1.0}

    with afml_cache.disabled():
        backtest(_frame(), 1)
        backtest(_frame(), 1)
    assert len(calls) == 2 and backtest.last_run_id is None


# --- the store -------------------------------------------------------------------------------


def test_manual_api_keeps_frames_exactly_and_numbers_as_numbers(cache_dir):
    cache = BacktestCache()
    data = _frame()
    trades = pd.DataFrame(
        {"entry": pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC"), "pnl": [1.0, -2, 3]}
    )
    equity = pd.Series(np.linspace(1, 2, 50, dtype=np.float32), index=data.index, name="eq")
    metrics = {
        "sharpe_ratio": np.float32(1.25),
        "trades": np.int32(3),
        "fee": decimal.Decimal("0.25"),
        "win_rate": np.float32(0.1),
        "note": "text stays in the value only",
    }
    params = {"window": np.int64(20), "bands": {"upper": 2.0, "lower": np.float64(-2)}}
    run_id = cache.cache_backtest("manual", params, data, metrics, trades, equity)
    got = cache.get_cached_backtest("manual", params, data)
    assert isinstance(got, BacktestResult) and got.run_id == run_id
    pd.testing.assert_frame_equal(got.trades, trades)
    pd.testing.assert_series_equal(got.equity_curve, equity)
    assert got.metrics == metrics and got.parameters == params
    row = cache.index[run_id]
    assert row["metrics"] == {"sharpe_ratio": 1.25, "trades": 3, "fee": 0.25, "win_rate": 0.1}
    assert row["parameters"] == {"window": 20, "bands": {"upper": 2.0, "lower": -2.0}}
    frame = cache.find_best_parameters("manual", "sharpe_ratio")
    assert list(frame.columns) == [
        "strategy", "created", "start", "end",
        "param_window", "param_bands.upper", "param_bands.lower",
        "sharpe_ratio", "trades", "fee", "win_rate",
    ]  # fmt: skip
    assert frame["fee"].dtype == np.float64
    changed = data.copy()
    changed.iloc[17, 0] += 1e-9
    assert cache.get_cached_backtest("manual", params, changed) is None
    curves = afml_cache.Cache(cache_dir, namespace=CURVES_NAMESPACE)
    pd.testing.assert_series_equal(curves.by_digest.lookup(run_id)[1], equity.astype(float))
    assert cache.delete_run(run_id) and len(curves) == 0 and cache.index == {}


def test_nan_metrics_rank_last_and_unknown_metrics_are_named(cache_dir):
    cache = BacktestCache()
    data = _frame()
    for i, value in enumerate([0.5, float("nan"), 2.0, None]):
        metrics = {"sharpe_ratio": value} if value is not None else {"other": 1.0}
        cache.cache_backtest("nan", {"i": i}, data, metrics)
    ranked = cache.find_best_parameters("nan", top_n=4)
    assert list(ranked["param_i"]) == [2, 0, 1, 3]
    ranked = cache.find_best_parameters("nan", maximize=False, top_n=4)
    assert list(ranked["param_i"])[:2] == [0, 2]
    with pytest.raises(KeyError, match=r"'sortino'.*other, sharpe_ratio"):
        cache.find_best_parameters("nan", "sortino")
    assert cache.find_best_parameters("never_run").empty


def test_compare_runs_and_unknown_ids(cache_dir):
    cache = BacktestCache()
    data = _frame()
    a = cache.cache_backtest("a", {"w": 1}, data, {"sharpe_ratio": 1.0, "max_drawdown": -0.1})
    b = cache.cache_backtest("b", {"w": 2}, data, {"sharpe_ratio": 2.0, "win_rate": 0.6})
    both = cache.compare_runs([b, a], metrics=["sharpe_ratio", "win_rate"])
    assert list(both.index) == [b, a]
    assert list(both["sharpe_ratio"]) == [2.0, 1.0]
    assert both["win_rate"].iloc[0] == 0.6 and np.isnan(both["win_rate"].iloc[1])
    with pytest.raises(KeyError, match="nope"):
        cache.compare_runs([a, "nope"])


def test_index_is_read_from_the_entries_and_read_only(cache_dir, run_python):
    one, two = BacktestCache(), BacktestCache(cache_dir)
    assert len(two.index) == 0
    run_id = one.cache_backtest("shared", {"w": 1}, _frame(), {"sharpe_ratio": 1.0})
    assert run_id in two.index
    code = f"""
        import numpy as np, pandas as pd
        from afml_cache import BacktestCache
        data = pd.DataFrame({{"close": np.arange(3.0)}})
        print(BacktestCache({str(cache_dir)!r}).cache_backtest("other", {{"w": 2}}, data, {{}}))
    """
    other = run_python(code).strip()
    assert other in two.index and other in one.index
    two.index[run_id]["metrics"]["sharpe_ratio"] = 5.0  # a copy: the listing is unchanged
    assert two.index[run_id]["metrics"] == {"sharpe_ratio": 1.0}
    with pytest.raises(TypeError):
        two.index[run_id] = {}  # type: ignore[index]
    assert two.delete_run(run_id) and run_id not in one.index
    one.cache_backtest("s1", {"w": 1}, _frame(), {"x": 1.0})
    one.cache_backtest("s2", {"w": 1}, _frame(), {"x": 1.0})
    assert one.clear("s1") == 1 and one.strategies() == ["other", "s2"]


def test_object_columns_give_one_run_id_in_every_process(cache_dir, run_python):
    data = pd.DataFrame({"side": ["buy", "sell", None], "qty": [1, 2, 3]}, dtype=object)
    run_id = BacktestCache().cache_backtest("objects", {"w": 1}, data, {"x": 1.0})
    code = f"""
        import pandas as pd
        from afml_cache import BacktestCache
        data = pd.DataFrame({{"side": ["buy", "sell", None], "qty": [1, 2, 3]}}, dtype=object)
        got = BacktestCache({str(cache_dir)!r}).get_cached_backtest("objects", {{"w": 1}}, data)
        print(got.run_id)
    """
    for seed in ("1", "2"):
        assert run_python(code, env={"PYTHONHASHSEED": seed}).strip() == run_id


def test_walk_forward_splits_round_trip_and_empty_folds(cache_dir):
    cache = BacktestCache()
    data = _frame(100)
    for fold in range(3):
        train = data.iloc[: 30 * (fold + 1)]
        test = data.iloc[30 * (fold + 1) : 30 * (fold + 2)] if fold < 2 else data.iloc[0:0]
        cache.cache_walk_forward_split("wf", train, test, fold, 3)
    got = cache.get_walk_forward_split("wf", 1)
    pd.testing.assert_frame_equal(got.train_data, data.iloc[:60])
    pd.testing.assert_frame_equal(got.test_data, data.iloc[60:90])
    assert cache.get_walk_forward_split("wf", 2).test_data.empty
    assert cache.get_walk_forward_split("wf", 5) is None
    folds = cache.walk_forward_splits("wf")
    assert list(folds.index) == [0, 1, 2] and list(folds["test_rows"]) == [30, 30, 0]
    assert pd.isna(folds.loc[2, "test_start"]) and folds.loc[0, "train_start"] == data.index[0]
    with pytest.raises(ValueError, match="folds count from 0"):
        cache.cache_walk_forward_split("wf", data, data, 3, 3)


# --- the guide's examples, as written ----------------------------------------------------------


def test_a_damaged_directory_never_stops_a_walk_forward_or_a_ranking(cache_dir):
    backtests = get_backtest_cache()
    backtests.cache_backtest("s", {"a": 1}, _frame(), {"sharpe_ratio": 1.0})
    namespace = cache_dir / "entries" / "afml_cache.backtests"
    shutil.rmtree(namespace)
    namespace.write_text("a file where the runs' directory was")
    with pytest.warns(afml_cache.CacheWarning, match="fold 0 of the split 'wf' was not cached"):
        assert backtests.cache_walk_forward_split("wf", _frame(), _frame(), 0, 3) == "wf_fold_0"
    with pytest.warns(afml_cache.CacheWarning, match="could not be listed"):
        assert len(backtests.runs()) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", afml_cache.CacheWarning)
        assert backtests.get_walk_forward_split("wf", 0) is None
        assert backtests.get_cached_backtest("s", {"a": 1}, _frame()) is None
    curves = cache_dir / "entries" / "afml_cache.backtests.curves"
    shutil.rmtree(curves, ignore_errors=True)
    curves.write_text("a file where the curves' directory was")
    with pytest.warns(afml_cache.CacheWarning) as warned:
        assert backtests.clear() == 0
    said = [str(w.message) for w in warned]
    assert any("could not be listed" in m for m in said)
    assert any("could not all be removed" in m for m in said)
    assert namespace.read_text() == "a file where the runs' directory was"


def test_the_guides_examples_as_written(cache_dir):
    from afml_cache.backtest_cache import BacktestCache, cached_backtest

    mt5_data = _frame(200)
    trades_df = pd.DataFrame({"pnl": [1.0, -0.5]})
    equity_series = mt5_data["close"] / 100

    # Initialize backtest cache
    backtest_cache = BacktestCache()

    @cached_backtest("momentum_strategy", save_trades=True)
    def run_momentum_backtest(data, params):
        trades = []
        equity = []
        # The guide's walk-forward loop passes the best-parameters frame as params.
        threshold = params["threshold"] if isinstance(params, dict) else 0.02
        metrics = {
            "total_return": 0.45,
            "sharpe_ratio": 1.8 * threshold / 0.02,
            "max_drawdown": -0.12,
            "win_rate": 0.58,
            "profit_factor": 2.1,
        }
        return metrics, pd.DataFrame(trades), pd.Series(equity)

    params = {"lookback": 20, "threshold": 0.02}
    metrics, trades, equity = run_momentum_backtest(mt5_data, params)
    metrics2, trades2, equity2 = run_momentum_backtest(mt5_data, params)
    assert metrics2 == metrics
    pd.testing.assert_frame_equal(trades2, trades)
    pd.testing.assert_series_equal(equity2, equity)

    # Manual caching
    run_id = backtest_cache.cache_backtest(
        strategy_name="mean_reversion",
        parameters={"window": 50, "std_dev": 2},
        data=mt5_data,
        metrics={"sharpe": 1.5, "return": 0.3},
        trades=trades_df,
        equity_curve=equity_series,
    )
    cached = backtest_cache.get_cached_backtest(
        strategy_name="mean_reversion", parameters={"window": 50, "std_dev": 2}, data=mt5_data
    )
    assert cached and cached.run_id == run_id
    assert cached.metrics["sharpe"] == 1.5 and len(cached.trades) == 2

    # Parameter optimization
    param_grid = [
        {"lookback": 10, "threshold": 0.01},
        {"lookback": 20, "threshold": 0.02},
        {"lookback": 30, "threshold": 0.03},
    ]
    results = []
    for params in param_grid:
        metrics, _, _ = run_momentum_backtest(mt5_data, params)
        results.append((params, metrics))
    best_params = backtest_cache.find_best_parameters(
        strategy_name="momentum_strategy", metric="sharpe_ratio", maximize=True, top_n=3
    )
    assert list(best_params["param_lookback"]) == [30, 20, 10]

    # Walk-forward analysis
    def get_train_fold(fold):
        return mt5_data.iloc[fold * 20 : fold * 20 + 100]

    def get_test_fold(fold):
        return mt5_data.iloc[fold * 20 + 100 : fold * 20 + 120]

    split_id = "2024_walk_forward"
    for fold in range(5):
        train_data = get_train_fold(fold)
        test_data = get_test_fold(fold)
        backtest_cache.cache_walk_forward_split(
            split_id=split_id,
            train_data=train_data,
            test_data=test_data,
            fold_number=fold,
            total_folds=5,
        )
        metrics, _, _ = run_momentum_backtest(test_data, best_params)
    assert len(backtest_cache.walk_forward_splits(split_id)) == 5

    # Comparing strategies
    comparison = backtest_cache.compare_runs(
        run_ids=[run_id, run_momentum_backtest.last_run_id],
        metrics=["sharpe_ratio", "max_drawdown", "win_rate"],
    )
    ranked = comparison.sort_values("sharpe_ratio", ascending=False)
    assert ranked.index[0] == run_momentum_backtest.last_run_id


def test_the_guides_three_argument_backtest(cache_dir):
    from afml_cache import cached_backtest

    @cached_backtest("momentum_v2", save_trades=True)
    def run_backtest(data, model, params):
        return {"sharpe_ratio": 1.65 + params["threshold"], "model": model}, None, None

    data = _frame()
    metrics, _, _ = run_backtest(data, "rf-v2", {"threshold": 0.02})
    assert run_backtest(data, "rf-v2", {"threshold": 0.02}) == (metrics, None, None)
    assert get_backtest_cache().index[run_backtest.last_run_id]["parameters"] == {"threshold": 0.02}


# --- pictures and the command ------------------------------------------------------------------


@pytest.fixture
def swept(cache_dir, counter):
    for params in hb.GRID:
        hb.run_sma(GOOG, params, counter)
    return cache_dir


def test_report_has_ranking_curves_and_heatmap(swept, tmp_path):
    page = get_backtest_cache().report(tmp_path / "bt.html", metric="sharpe_ratio")
    text = page.read_text()
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in text
    assert text.count('class="afml-bt-curve"') == 5
    assert text.count('class="afml-bt-cell"') == len(hb.GRID)
    assert "sharpe_ratio by n1 and n2" in text


def test_report_of_runs_whose_metric_has_the_name_asked_for(cache_dir, tmp_path):
    cache = BacktestCache()
    for window in (10, 20):
        equity = pd.Series(np.linspace(1, 2, 30), index=_frame(30).index)
        metrics = {"sharpe_ratio": window / 10}
        cache.cache_backtest("mr", {"window": window}, _frame(), metrics, equity_curve=equity)
    text = cache.report(tmp_path / "mr.html").read_text()
    assert text.count('class="afml-bt-curve"') == 2
    assert "window=20" in text and "No heatmap" not in text


@pytest.mark.parametrize(
    ("grid", "shown"),
    [
        ({"n1": (5, 10), "n2": (20, 40)}, "inf"),  # an infinite metric: no drawdown
        ({"weights": ([0.5, 0.5], [0.3, 0.7]), "n": (1, 2)}, "[0.3, 0.7]"),  # list-valued
        ({"sl": (None, 0.02, "atr"), "n": (1, 2)}, "atr"),  # None, numbers and names
    ],
)
def test_report_heatmap_of_odd_metrics_and_parameters(cache_dir, tmp_path, grid, shown):
    cache = BacktestCache()
    equity = pd.Series(np.linspace(1, 2, 30), index=_frame(30).index)
    (x, xs), (y, ys) = grid.items()
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            score = float("inf") if shown == "inf" and (i, j) == (0, 0) else 1.0 + i + j / 10
            metrics = {"sharpe_ratio": score}
            cache.cache_backtest("odd", {x: a, y: b}, _frame(), metrics, equity_curve=equity)
    text = cache.report(tmp_path / "odd.html").read_text()
    assert "afml-bt-heatmap" in text and f">{shown}<" in text


def _strategy_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> tuple[Path, type]:
    """A module ``name`` holding a class ``Strategy``, written and imported: its file, and the
    class (the tests then take the module away, as another process would not have it)."""
    module = tmp_path / f"{name}.py"
    module.write_text("class Strategy:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return module, importlib.import_module(name).Strategy


def test_report_never_unpickles_runs_whose_classes_are_gone(cache_dir, tmp_path, monkeypatch):
    # As `afml-cache backtests --report` run outside the project: the runs' values refer to a
    # strategy class that does not import there; the report must neither need nor remove them.
    module, strategy_class = _strategy_module(tmp_path, monkeypatch, "gone_strategy")

    @cached_backtest("gone")
    def backtest(data, params):
        stats = {"sharpe_ratio": float(params)}
        return stats, strategy_class(), data["close"] * params

    for p in (1, 2):
        backtest(_frame(), p)
    sys.modules.pop("gone_strategy")
    module.unlink()
    afml_cache.configure(directory=cache_dir)  # a new session: nothing in memory
    text = get_backtest_cache().report(tmp_path / "gone.html").read_text()
    assert text.count('class="afml-bt-curve"') == 2
    assert len(get_backtest_cache().index) == 2


def test_get_run_of_a_run_whose_class_is_gone_raises_and_keeps_it(cache_dir, tmp_path, monkeypatch):
    # A sweep in a script, its best run inspected from a notebook where the strategy class
    # does not import: a clear error, and the run (trades, curve) still there when it does.
    module, strategy_class = _strategy_module(tmp_path, monkeypatch, "elsewhere_strategy")

    @cached_backtest("elsewhere")
    def backtest(data, params):
        return {"sharpe_ratio": float(params)}, strategy_class(), data["close"] * params

    backtest(_frame(), 1)
    run_id = backtest.last_run_id
    sys.modules.pop("elsewhere_strategy")
    module.rename(tmp_path / "moved.py")
    afml_cache.configure(directory=cache_dir)  # a new session: nothing in memory
    with pytest.raises(afml_cache.CacheError, match=r"does not unpickle in this process.*kept"):
        get_backtest_cache().get_run(run_id)
    assert list(get_backtest_cache().runs("elsewhere").index) == [run_id]
    (tmp_path / "moved.py").rename(module)
    run = get_backtest_cache().get_run(run_id)
    assert run is not None and run.metrics == {"sharpe_ratio": 1.0}
    sys.modules.pop("elsewhere_strategy")


def test_report_renders_in_headless_chromium(swept, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    image = pytest.importorskip("PIL.Image")
    page = get_backtest_cache().report(tmp_path / "bt.html")
    shot = tmp_path / "bt.png"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1400,1800", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = image.open(shot).convert("L")
    # Not blank: many pixels are far from the white background.
    dark = sum(count for level, count in enumerate(pixels.histogram()) if level < 200)
    assert dark > 0.01 * pixels.width * pixels.height
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
        text=True,
    ).stdout
    assert dom.count("<polyline") == 5
    assert dom.count('class="afml-bt-cell"') == len(hb.GRID)
    assert "afml-bt-ranked" in dom


def test_command_lists_ranks_and_reports(swept, tmp_path, capsys):
    assert main(["backtests", "--dir", str(swept), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["strategies"]["sma_cross"]["runs"] == len(hb.GRID)
    assert (
        main(["backtests", "--dir", str(swept), "--best", "sharpe_ratio", "--top", "2", "--json"])
        == 0
    )
    best = json.loads(capsys.readouterr().out)["strategies"]["sma_cross"]["shown"]
    expected = get_backtest_cache().find_best_parameters("sma_cross", top_n=2)
    assert [row["run_id"] for row in best] == list(expected.index)
    assert main(["backtests", "--dir", str(swept), "--best", "sharpe_ratio", "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert "sma_cross: 6 runs (top 2 by sharpe_ratio)" in text
    assert main(["backtests", "--dir", str(swept), "--strategy", "nope"]) == 2
    assert "no cached runs of strategy 'nope'" in capsys.readouterr().err
    report = tmp_path / "r.html"
    assert main(["backtests", "--dir", str(swept), "--report", str(report)]) == 0
    assert report.exists() and "Wrote the backtest report" in capsys.readouterr().out


# --- found on the way ------------------------------------------------------------------------


class Model:
    def __init__(self, weight: float) -> None:
        self.weight = weight


@robust_cacheable(ignore=("calls",))
def make_model(weight: float, calls: list[int]) -> Model:
    calls.append(1)
    return Model(weight)


def test_storing_an_instance_does_not_change_its_class_code_fingerprint(cache_dir):
    # Pickling an instance caches __slotnames__ on its class; the class's code did not change.
    calls: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_model(1.0, calls)
        assert make_model(1.0, calls).weight == 1.0
    assert len(calls) == 1


def test_runs_are_pickled_under_the_guides_module_path() -> None:
    # Entries hold runs pickled by class path: the path must stay the guide's, whichever module
    # defines the classes, or entries written by one layout stop loading under another.
    import pickle

    from afml_cache.backtest_cache import WalkForwardSplit

    run = BacktestResult("id", "sma_cross", {"fast": 5}, {"sharpe_ratio": 1.0}, created=1.0)
    split = WalkForwardSplit("wf", 0, 2, [1, 2], [3], created=1.0)
    for value in (run, split):
        stream = pickle.dumps(value, protocol=5)
        assert b"afml_cache.backtest_cache" in stream
        assert b"afml_cache.backtest_runs" not in stream
        assert pickle.loads(stream) == value
