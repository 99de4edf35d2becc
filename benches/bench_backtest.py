"""Backtests: a `cached_backtest` hit on a 1M-bar frame, and ranking 10,000 runs.

    python benches/bench_backtest.py            # the full run
    python benches/bench_backtest.py --quick    # smoke test: 100,000 bars, 1,000 runs

Cases:
- ``hit``: a hit of ``run(bars, params)`` where ``bars`` is a 1M-row OHLCV frame and the result
  is ``(metrics, trades, equity)`` with a 1M-point equity curve. Target: the frame's
  ``fingerprint`` plus reading the stored run (``read``), both measured alone beside it; and
  joblib.Memory's hit of the same function for reference.
- ``find_best_parameters``, ``index`` and ``compare_runs`` (10 runs) over 10,000 stored runs.
  Target: well under a second.

Medians over repeats after warm-ups, in a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
from _common import (
    fmt_seconds,
    machine_facts,
    markdown_table,
    median,
    optional_import,
    print_facts,
    time_calls,
)
from bench_decorators import make_bars


def backtest(data: pd.DataFrame, params: dict[str, Any]) -> tuple[dict[str, float], Any, Any]:
    """A stand-in backtest: a moving-average signal's equity curve and trades."""
    close = data["close"]
    signal = np.sign(close - close.rolling(params["window"]).mean()).fillna(0.0)
    equity = (1 + signal.shift(1).fillna(0.0) * close.pct_change().fillna(0.0)).cumprod()
    flips = signal.index[signal.diff().fillna(0.0) != 0][:500]
    trades = pd.DataFrame({"time": flips, "side": signal.loc[flips].to_numpy()})
    returns = equity.pct_change().dropna()
    metrics = {"sharpe_ratio": float(returns.mean() / returns.std() * np.sqrt(252 * 390))}
    return metrics, trades, equity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 bars, 1,000 runs")
    args = parser.parse_args(argv)
    bars_n, runs_n, repeats = (100_000, 1_000, 3) if args.quick else (1_000_000, 10_000, 7)
    print("# afml-cache backtest benchmark\n")
    print_facts(machine_facts(["numpy", "pandas", "afml_cache", "joblib"]))
    directory = tempfile.mkdtemp(prefix="afml-bench-bt-")
    rows: list[tuple[str, str, str]] = []
    try:
        import afml_cache
        from afml_cache import BacktestCache, cached_backtest

        afml_cache.configure(directory=f"{directory}/afml", size_limit="20GB")
        bars = make_bars(bars_n)
        params = {"window": 50}
        run = cached_backtest("bench_ma")(backtest)
        run(bars, params)
        hit = median(time_calls(lambda: run(bars, params), repeats=repeats, warmup=2))
        frame_fp = median(time_calls(lambda: afml_cache.fingerprint(bars), repeats=repeats))
        store = BacktestCache()
        run_id = run.last_run_id
        read = median(time_calls(lambda: store.get_run(run_id), repeats=repeats, warmup=2))
        rows += [
            (f"hit ({bars_n:,} bars)", fmt_seconds(hit), "fingerprint + read"),
            ("  fingerprint(bars)", fmt_seconds(frame_fp), ""),
            ("  read the stored run", fmt_seconds(read), ""),
            ("  hit / (fingerprint + read)", f"{hit / (frame_fp + read):.2f}x", "about 1x"),
        ]
        joblib = optional_import("joblib")
        if joblib is not None:
            memory = joblib.Memory(f"{directory}/joblib", verbose=0)
            joblib_run = memory.cache(backtest)
            joblib_run(bars, params)
            joblib_hit = median(
                time_calls(lambda: joblib_run(bars, params), repeats=repeats, warmup=1)
            )
            rows.append(("  joblib.Memory hit (reference)", fmt_seconds(joblib_hit), ""))

        print(f"  storing {runs_n:,} runs ...", file=sys.stderr, flush=True)
        small = bars.iloc[:100]
        start = time.perf_counter()
        for i in range(runs_n):
            metrics = {"sharpe_ratio": float(np.sin(i)), "max_drawdown": -(i % 17) / 100}
            store.cache_backtest("grid", {"a": i % 100, "b": i // 100}, small, metrics)
        stored = time.perf_counter() - start
        rows.append((f"cache_backtest x {runs_n:,}", fmt_seconds(stored / runs_n) + " each", ""))
        # Cold: a run was just stored, so the entries' headers are read again.
        cold, cold_cpu = [], []
        for i in range(repeats):
            store.cache_backtest("grid", {"a": -1, "b": i}, small, {"sharpe_ratio": 0.0})
            start, start_cpu = time.perf_counter(), time.process_time()
            store.find_best_parameters("grid", top_n=10)
            cold.append(time.perf_counter() - start)
            cold_cpu.append(time.process_time() - start_cpu)
        warm = median(
            time_calls(lambda: store.find_best_parameters("grid", top_n=10), repeats=repeats)
        )
        index = median(time_calls(lambda: len(store.index), repeats=repeats))
        some = list(store.find_best_parameters("grid", top_n=10).index)
        compare = median(time_calls(lambda: store.compare_runs(some), repeats=repeats))
        rows += [
            (f"find_best_parameters ({runs_n:,} runs)", fmt_seconds(median(cold)), "< 1 s"),
            ("  its CPU time (all threads)", fmt_seconds(median(cold_cpu)), ""),
            ("  again, nothing stored since", fmt_seconds(warm), ""),
            (f"index ({runs_n:,} runs, nothing stored since)", fmt_seconds(index), ""),
            (f"compare_runs (10 of {runs_n:,})", fmt_seconds(compare), ""),
        ]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(markdown_table(("case", "median", "target"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
