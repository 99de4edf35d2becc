"""The ``afml-cache`` command.

``afml-cache demo`` fingerprints a realistic minute-bar OHLCV frame the way the cache keys a
function's arguments, and prints what it measured. It grows into the full pipeline demo once the
decorators exist.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import afml_cache


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="afml-cache",
        description="Content-addressed disk cache for quant-research functions.",
    )
    parser.add_argument(
        "--version", action="version", version=f"afml-cache {afml_cache.__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="fingerprint a synthetic minute-bar OHLCV frame and show what the keys see",
        description="Fingerprint a synthetic minute-bar OHLCV frame and print what it measured.",
    )
    demo.add_argument(
        "--rows", type=int, default=2_000_000, help="minute bars to generate (default 2,000,000)"
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.rows < 2:
            parser.error("--rows must be at least 2")
        try:
            return run_demo(args.rows)
        except BrokenPipeError:
            # The reader went away (`afml-cache demo | head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    parser.print_help()
    return 2


def minute_bars(rows: int, seed: int = 7) -> Any:
    """A synthetic OHLCV frame of one-minute bars with a UTC DatetimeIndex (freq 'min')."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    close = 4500.0 * np.exp(np.cumsum(rng.normal(0.0, 2e-4, rows)))
    spread = np.abs(rng.normal(0.0, 0.5, rows))
    open_ = np.concatenate(([close[0]], close[:-1]))
    index = pd.date_range("2020-01-02", periods=rows, freq="min", tz="UTC", name="timestamp")
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.integers(1, 500, rows).astype(np.float64),
        },
        index=index,
    )


def _median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_demo(rows: int) -> int:
    out = sys.stdout
    start = time.perf_counter()
    bars = minute_bars(rows)
    built = time.perf_counter() - start
    nbytes = int(bars.memory_usage(index=True, deep=True).sum())
    out.write(
        f"afml-cache {afml_cache.__version__} (fingerprint spec v{afml_cache.SPEC_VERSION})\n"
    )
    out.write(
        f"Synthetic bars: {rows:,} one-minute OHLCV rows, {bars.index[0]} .. {bars.index[-1]}, "
        f"{nbytes / 1e6:,.1f} MB (built in {built:.2f} s)\n\n"
    )

    digest = afml_cache.fingerprint(bars)
    seconds = _median_seconds(lambda: afml_cache.fingerprint(bars))
    out.write(f"fingerprint(bars)            {digest}\n")
    out.write(
        f"  median of 5: {seconds * 1e3:.1f} ms = {nbytes / seconds / 1e9:.1f} GB/s, "
        "every byte read\n"
    )
    scalars = (20, 0.01, "close")
    per_call = _median_seconds(lambda: [afml_cache.fingerprint(scalars) for _ in range(10_000)])
    out.write(f"fingerprint({scalars!r}): {per_call / 10_000 * 1e6:.2f} µs per call\n\n")

    checks = [
        ("a copy", bars.copy(), True),
        ("the frame rebuilt column by column", _rebuilt(bars), True),
        ("one close price changed in the last bar", _with_last_close_bumped(bars), False),
        ("the index in New York time (same instants)", bars.tz_convert("America/New_York"), False),
        ("the index without its freq", _without_freq(bars), False),
        ("columns renamed to upper case", bars.rename(columns=str.upper), False),
    ]
    out.write("What the key sees:\n")
    failures = 0
    for label, other, expect_same in checks:
        same = afml_cache.fingerprint(other) == digest
        verdict = "same digest (a hit)" if same else "new digest (a miss)"
        mark = "ok" if same == expect_same else "UNEXPECTED"
        failures += same != expect_same
        out.write(f"  {label:<45} {verdict:<22} {mark}\n")
    return 1 if failures else 0


def _rebuilt(frame: Any) -> Any:
    import pandas as pd

    return pd.DataFrame(
        {name: frame[name].to_numpy(copy=True) for name in frame}, index=frame.index
    )


def _with_last_close_bumped(frame: Any) -> Any:
    changed = frame.copy()
    changed.iloc[-1, changed.columns.get_loc("close")] += 0.25
    return changed


def _without_freq(frame: Any) -> Any:
    import pandas as pd

    changed = frame.copy()
    changed.index = pd.DatetimeIndex(changed.index, freq=None)
    return changed


if __name__ == "__main__":
    raise SystemExit(main())
