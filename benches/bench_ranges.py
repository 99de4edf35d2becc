"""Loaders by [start, end): what `time_aware_cacheable(range=...)` costs against fetching.

Bars: 24-hour minute bars on weekdays (as in bench_incremental.py), 5 years = 1,879,200 rows of
OHLCV (four float64 columns and an int64 volume, ~75 MB with the index); a day adds 1,440 rows.

The loader stands for a vendor's API, by a cost model (printed with the table): each request
waits ``--latency`` seconds per page of ``--page`` bars plus ``--per-row-us`` microseconds a
bar (transfer and parsing), then returns the bars of [start, end) from a frame built once.

Rows of the table, on one machine in one run:
  full            the loader uncached over five years and a day (what a cache keyed by the
                  whole call computes for a new end);
  append one day  the cached call for five years and one more day, five years being cached:
                  fetch the day, store it, read and stitch (median and range over --rounds,
                  each a day later than the one before);
  read 100 pieces the cached call over five years held as 100 pieces (merging off), against
                  reading one entry of the same frame (``Cache.get``); warm (memory tier) and
                  from disk (a second Cache with memory_limit=1 on the directory). The two
                  alternate, --rounds pairs, and the ratio is each pair's (median and range),
                  so that a shared machine's load stretches both sides of a ratio alike; then
                  the peak memory (traced) of each read from disk, its result included; and
                  a warm read of 100 pieces of 10 rows: the cost a piece, the copy aside;
  merged          the first read past MERGE_ABOVE pieces (stitches and stores the merged
                  piece), then a read of the merged piece.

Usage: python3 benches/bench_ranges.py [--years 5] [--rounds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _common import fmt_seconds, markdown_table

from afml_cache import Cache, flush_writes, ranges, time_aware_cacheable

DAY = 1440


def weekday_minute_bars(years: float, extra_days: int) -> pd.DataFrame:
    days = pd.bdate_range("2019-01-01", periods=int(years * 261) + extra_days)
    offsets = pd.to_timedelta(np.tile(np.arange(DAY), len(days)), "min")
    index = (days.repeat(DAY) + offsets).rename("time")
    rng = np.random.default_rng(7)
    close = 3000 + np.round(rng.normal(0, 0.25, len(index)).cumsum(), 2)
    return pd.DataFrame(
        {
            "open": close - np.round(rng.normal(0, 0.25, len(index)), 2),
            "high": close + np.round(rng.uniform(0, 0.5, len(index)), 2),
            "low": close - np.round(rng.uniform(0, 0.5, len(index)), 2),
            "close": close,
            "volume": rng.integers(1, 500, len(index)),
        },
        index=index,
    )


class Vendor:
    """The bars of [start, end) after the cost model's wait."""

    def __init__(self, bars: pd.DataFrame, latency: float, page: int, per_row_us: float):
        self.bars, self.latency, self.page, self.per_row = bars, latency, page, per_row_us * 1e-6
        self.times = self.bars.index.as_unit("ns").asi8

    def fetch(self, start: Any, end: Any, cost: bool) -> pd.DataFrame:
        first, last = np.searchsorted(
            self.times, [pd.Timestamp(start).value, pd.Timestamp(end).value]
        )
        rows = int(last - first)
        if cost:
            time.sleep(self.latency * max(1, -(-rows // self.page)) + rows * self.per_row)
        return self.bars.iloc[first:last].copy()


def make_loader(cache: Cache, vendor: Vendor) -> Callable[..., pd.DataFrame]:
    """The decorated loader, over ``cache``: one function name and code for every cache, so
    loaders made over one directory share their families. The vendor stands for an API client:
    its state is not what the loader returns, so it is left out of the key, as a user lists a
    client in ``ignore_globals`` (else it counts by its pickled state, 90 MB, at each call)."""

    @time_aware_cacheable(
        range=("start", "end"), cache=cache, ignore=("cost",), ignore_globals=("vendor",)
    )
    def load_bars(symbol: str, start: Any, end: Any, cost: bool = True) -> pd.DataFrame:
        return vendor.fetch(start, end, cost)

    return load_bars


def measure(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of ``repeats`` calls, and the last value. CPU time (of every
    thread of the process) is what a loaded machine does not stretch; the vendor's wait is
    wall time only. No earlier value is held during a call: a result of 90 MB still alive makes
    the next one's fresh pages harder to find (huge pages, compaction) and the timing noisier."""
    walls, cpus, value = [], [], None
    for _ in range(repeats):
        value = None
        wall, cpu = time.perf_counter(), time.process_time()
        value = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), value


def peak_memory(fn: Callable[[], Any]) -> int:
    """The most memory (bytes, as traced) held at once during a call, its result included."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def spread(ratios: list[float], unit: str, digits: int) -> str:
    """The median of ``ratios`` and their range, e.g. ``1.08x (0.97-1.31)``."""
    return (
        f"{statistics.median(ratios):.{digits}f}{unit} "
        f"({min(ratios):.{digits}f}-{max(ratios):.{digits}f})"
    )


def paired(
    one: Callable[[], Any], stitched: Callable[[], Any], rounds: int, expected: pd.DataFrame
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(wall, CPU) of ``one`` and of ``stitched`` over ``rounds`` pairs, called alternately
    (after one untimed call of each), checking that ``stitched`` returns ``expected``; each
    result is let go before the next call, on both sides alike (see `measure`)."""
    one()
    stitched()
    ones, stitches = [], []
    for _ in range(rounds):
        wall, cpu, got = measure(one)
        ones.append((wall, cpu))
        del got
        wall, cpu, got = measure(stitched)
        assert got.equals(expected), "a stitched read differs from the frame"
        stitches.append((wall, cpu))
        del got
    return ones, stitches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--years", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds a page")
    parser.add_argument("--page", type=int, default=50_000, help="bars a page")
    parser.add_argument("--per-row-us", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    bars = weekday_minute_bars(args.years, args.rounds + 2)
    vendor = Vendor(bars, args.latency, args.page, args.per_row_us)
    cut = int(args.years * 261) * DAY
    five_years = bars.index[cut]  # the end of five years of days
    start = bars.index[0]
    span = bars.iloc[:cut].copy()
    days = [five_years + pd.offsets.BDay(n) for n in range(1, args.rounds + 1)]
    rows: list[list[str]] = []
    loads = [os.getloadavg()[0]]

    def row(case: str, wall: float, cpu: float, ratio: str) -> None:
        rows.append([case, fmt_seconds(wall), fmt_seconds(cpu), ratio])
        loads.append(os.getloadavg()[0])

    def read_rows(
        case: str, ones: list[tuple[float, float]], reads: list[tuple[float, float]]
    ) -> None:
        wall = statistics.median(w for w, _ in reads)
        cpu = statistics.median(c for _, c in reads)
        walls = spread([r[0] / o[0] for r, o in zip(reads, ones, strict=True)], "x", 2)
        cpus = spread([r[1] / o[1] for r, o in zip(reads, ones, strict=True)], "x", 2)
        row(case, wall, cpu, f"{walls} wall, {cpus} CPU of 1 entry")

    with tempfile.TemporaryDirectory() as directory:
        cache = Cache(directory, size_limit="8GB", memory_limit="1GB")
        load = make_loader(cache, vendor)

        full, full_cpu = measure(lambda: load.uncached("ES", start, days[0], True))[:2]
        row("full (uncached, 5 years + 1 day)", full, full_cpu, "1.000 of full")
        wall, cpu = measure(lambda: load("ES", start, five_years))[:2]
        row("first cached call, 5 years", wall, cpu, f"{wall / full:.3f} of full")
        appends = []
        for day in days:
            wall, cpu, got = measure(lambda day=day: load("ES", start, day))
            assert got.equals(vendor.fetch(start, day, False)), "append differs from a fetch"
            appends.append((wall, cpu))
            del got
        wall = statistics.median(w for w, _ in appends)
        cpu = statistics.median(c for _, c in appends)
        ratio = spread([w / full for w, _ in appends], " of full", 3)
        row("append one day (median)", wall, cpu, ratio)
        day_fetch = args.latency + DAY * args.per_row_us * 1e-6
        projected = (day_fetch + cpu) / full
        rows.append(
            [
                "  the day's fetch (model) + CPU",
                fmt_seconds(day_fetch + cpu),
                "",
                f"{projected:.3f} of full",
            ]
        )
        wall, cpu = measure(lambda: load("ES", start, days[-1]), 3)[:2]
        row("hit, 5 years + days (stitched)", wall, cpu, f"{wall / full:.3f} of full")

        # 100 pieces over five years, merging off, then read whole.
        ranges.MERGE_ABOVE = 1_000
        edges = bars.index[np.linspace(0, cut, 101).astype(int)]
        for low, high in itertools.pairwise(edges):
            load("P100", low, high, False)
        cache.set("one entry", span)
        flush_writes()
        cold = Cache(directory, size_limit="8GB", memory_limit=1)
        cold_load = make_loader(cold, vendor)
        reads = {
            "warm": (
                lambda: load("P100", start, five_years, False),
                lambda: cache.get("one entry"),
            ),
            "from disk": (
                lambda: cold_load("P100", start, five_years, False),
                lambda: cold.get("one entry"),
            ),
        }
        for where, (stitched, one) in reads.items():
            ones, stitches = paired(one, stitched, args.rounds, span)
            one_wall = statistics.median(w for w, _ in ones)
            one_cpu = statistics.median(c for _, c in ones)
            row(f"read 1 entry, {where}", one_wall, one_cpu, "")
            read_rows(f"read 100 pieces, {where}", ones, stitches)
        stitched_read, one_read = reads["from disk"]
        one_peak, stitched_peak = peak_memory(one_read), peak_memory(stitched_read)
        rows.append(
            [
                "  peak memory of a read from disk",
                "",
                "",
                f"{stitched_peak / 1e6:.0f} MB (100 pieces), {one_peak / 1e6:.0f} MB (1 entry)",
            ]
        )
        # The same over 100 pieces of 10 rows: what stitching costs a piece, the copy of the
        # rows aside (which is most of a read of five years).
        small = bars.iloc[:1000].copy()
        for low, high in itertools.pairwise(bars.index[np.arange(0, 1001, 10)]):
            load("S100", low, high, False)
        cache.set("small entry", small)
        ones, stitches = paired(
            lambda: cache.get("small entry"),
            lambda: load("S100", start, bars.index[1000], False),
            20 * args.rounds,
            small,
        )
        wall = statistics.median(w for w, _ in stitches)
        cost = (wall - statistics.median(w for w, _ in ones)) / 100
        row(
            "read 100 pieces of 10 rows, warm",
            wall,
            statistics.median(c for _, c in stitches),
            f"{cost * 1e6:.0f} µs a piece more than 1 entry of their rows",
        )
        ranges.MERGE_ABOVE = 32
        wall, cpu = measure(reads["warm"][0])[:2]
        row("first read past MERGE_ABOVE (merges)", wall, cpu, "")
        pieces = load.coverage("P100", cost=False)[0]["pieces"]
        for where, (stitched, one) in reads.items():
            read_rows(
                f"read merged ({pieces} piece), {where}", *paired(one, stitched, args.rounds, span)
            )

    header = (
        f"5 years of weekday 24h minute bars: {len(span):,} rows, "
        f"{span.memory_usage(index=True).sum() / 1e6:.0f} MB; vendor model: {args.latency} s a "
        f"page of {args.page:,} bars + {args.per_row_us} µs a bar; targets: append <= 0.02 of "
        f"full, 100 pieces <= 1.2x of 1 entry; {args.rounds} rounds; load average (1 min) "
        f"{min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs"
    )
    table = markdown_table(["case", "wall", "CPU", "ratio"], rows)
    text = f"{header}\n\n{table}\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
