"""The runner of ``afml-cache demo``: the pipeline three times, then what the keys see."""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

import pandas as pd

import afml_cache
from afml_cache.demo import pipeline

# Run 3 changes the CUSUM threshold: these steps depend on it, the others come from the cache.
_DOWNSTREAM_OF_THRESHOLD = {"cusum_filter", "triple_barrier_labels", "training_set"}


def run_demo(rows: int, directory: str | None = None, out: TextIO | None = None) -> int:
    """The demo; returns 0 when every step was computed or cached as expected."""
    out = out or sys.stdout
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="afml-cache-demo-"))
        # Results still being written behind must land before the directory is removed.
        stack.callback(afml_cache.flush_writes)
        afml_cache.configure(directory=directory)
        start = time.perf_counter()
        bars = pipeline.synthetic_minute_bars(rows)
        built = time.perf_counter() - start
        nbytes = int(bars.memory_usage(index=True, deep=True).sum())
        out.write(
            f"afml-cache {afml_cache.__version__} (fingerprint spec v{afml_cache.SPEC_VERSION}); "
            f"cache in {directory}\n"
            f"Synthetic bars: {rows:,} one-minute OHLCV rows, {bars.index[0]} .. "
            f"{bars.index[-1]}, {nbytes / 1e6:,.1f} MB (built in {built:.2f} s)\n\n"
        )
        failures = _run_pipeline_three_times(bars, out)
        failures += _show_what_the_keys_see(bars, nbytes, out)
        return 1 if failures else 0


def _run_pipeline_three_times(bars: pd.DataFrame, out: TextIO) -> int:
    steps = {name: afml_cache.robust_cacheable(fn) for name, fn in pipeline.STEPS.items()}
    # A directory an earlier demo used holds its results: run 1 starts cold all the same.
    earlier = sum(fn.cache_clear() for fn in steps.values())
    if earlier:
        out.write(
            f"Removed {earlier} entries an earlier demo left here, so that run 1 is cold.\n\n"
        )
    runs: list[tuple[str, dict[str, Any]]] = [
        ("run 1 (cold)", {}),
        ("run 2 (same inputs)", {}),
        ("run 3 (cusum_multiplier=2.5)", {"cusum_multiplier": 2.5}),
    ]
    timings, computed = [], []
    for _, changes in runs:
        before = {name: _misses(fn) for name, fn in steps.items()}
        result = pipeline.run_pipeline(bars, steps=steps, **changes)
        timings.append(result["timings"])
        computed.append({name for name, fn in steps.items() if _misses(fn) > before[name]})

    out.write("The pipeline, every step cached (seconds; * computed, else read from the cache):\n")
    out.write(f"  {'step':<24}" + "".join(f"{label:>31}" for label, _ in runs) + "\n")
    for name in steps:
        cells = "".join(
            f"{timings[i][name]:>30.3f}{'*' if name in computed[i] else ' '}"
            for i in range(len(runs))
        )
        out.write(f"  {name:<24}{cells}\n")
    out.write(f"  {'total':<24}" + "".join(f"{sum(t.values()):>30.3f} " for t in timings) + "\n")
    cold, warm = sum(timings[0].values()), sum(timings[1].values())
    out.write(f"  run 2 took {warm / cold:.1%} of run 1's time ({cold / warm:.0f}x faster)\n")
    out.write(
        f"  run 3 recomputed {', '.join(sorted(computed[2]))}: the steps that depend on the "
        "changed threshold; the others came from the cache\n\n"
    )

    out.write("Per-function statistics (afml_cache.get_cache_stats()):\n")
    out.write(
        f"  {'function':<46}{'calls':>6}{'hits':>6}{'misses':>7}{'hit rate':>10}"
        f"{'avg compute s':>15}{'saved s':>9}{'MB':>8}\n"
    )
    for name, row in sorted(afml_cache.get_cache_stats().items()):
        out.write(
            f"  {name:<46}{row['total_calls']:>6}{row['cache_hits']:>6}{row['cache_misses']:>7}"
            f"{row['hit_rate']:>10.0%}{row['avg_computation_time']:>15.3f}"
            f"{row['time_saved']:>9.3f}{row['cache_size_mb']:>8.1f}\n"
        )
    out.write(f"  {afml_cache.cache_status()}\n\n")
    expected = [set(steps), set(), _DOWNSTREAM_OF_THRESHOLD]
    return sum(got != want for got, want in zip(computed, expected, strict=True))


def _misses(fn: Any) -> int:
    return int(fn.cache_info()["cache_misses"])


def _median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _show_what_the_keys_see(bars: pd.DataFrame, nbytes: int, out: TextIO) -> int:
    digest = afml_cache.fingerprint(bars)
    seconds = _median_seconds(lambda: afml_cache.fingerprint(bars))
    out.write("What a key sees of the bars:\n")
    out.write(f"  fingerprint(bars) = {digest}\n")
    out.write(
        f"  median of 5: {seconds * 1e3:.1f} ms = {nbytes / seconds / 1e9:.1f} GB/s, "
        "every byte read\n"
    )
    scalars = (20, 0.01, "close")
    per_call = _median_seconds(lambda: [afml_cache.fingerprint(scalars) for _ in range(10_000)])
    out.write(f"  fingerprint({scalars!r}): {per_call / 10_000 * 1e6:.2f} µs per call\n")
    checks = [
        ("a copy", bars.copy(), True),
        ("the frame rebuilt column by column", _rebuilt(bars), True),
        ("one close price changed in the last bar", _with_last_close_bumped(bars), False),
        ("the index in New York time (same instants)", bars.tz_convert("America/New_York"), False),
        ("the index without its freq", _without_freq(bars), False),
        ("columns renamed to upper case", bars.rename(columns=str.upper), False),
    ]
    failures = 0
    for label, other, expect_same in checks:
        same = afml_cache.fingerprint(other) == digest
        verdict = "same digest (a hit)" if same else "new digest (a miss)"
        mark = "ok" if same == expect_same else "UNEXPECTED"
        failures += same != expect_same
        out.write(f"  {label:<45} {verdict:<22} {mark}\n")
    return failures


def _rebuilt(frame: pd.DataFrame) -> pd.DataFrame:
    columns = {name: frame[name].to_numpy(copy=True) for name in frame}
    return pd.DataFrame(columns, index=frame.index)


def _with_last_close_bumped(frame: pd.DataFrame) -> pd.DataFrame:
    changed = frame.copy()
    changed.iloc[-1, changed.columns.get_loc("close")] += 0.25
    return changed


def _without_freq(frame: pd.DataFrame) -> pd.DataFrame:
    changed = frame.copy()
    changed.index = pd.DatetimeIndex(changed.index, freq=None)
    return changed
