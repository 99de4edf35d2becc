"""Shared helpers for the afml-cache benchmarks: timers, machine facts, a Markdown table.

Kept small and generic on purpose so every ``benches/bench_*.py`` script can reuse it.
Scripts are run directly (``python benches/bench_x.py``), which puts this directory on
``sys.path`` so ``from _common import ...`` works without installing anything.
"""

from __future__ import annotations

import gc
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def time_calls(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> list[float]:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls; seconds per call.

    The garbage collector is run before each repeat and disabled while timing, like ``timeit``.
    """
    return time_loops(fn, loops=1, repeats=repeats, warmup=warmup)


def time_loops(
    fn: Callable[[], object], *, loops: int, repeats: int, warmup: int = 1
) -> list[float]:
    """Time ``repeats`` loops of ``loops`` calls each; returns seconds *per call* per repeat.

    ``warmup`` untimed loops run first. Use this for calls too fast to time one by one.
    """
    for _ in range(warmup):
        for _ in range(loops):
            fn()
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            gc.collect()
            gc.disable()
            t0 = time.perf_counter()
            for _ in range(loops):
                fn()
            samples.append((time.perf_counter() - t0) / loops)
            if gc_was_enabled:
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """The median time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt_seconds(seconds: float) -> str:
    """Human-readable duration: ``812 ns``, ``1.23 µs``, ``45.6 ms``, ``2.01 s``."""
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(other: float, reference: float) -> str:
    """How ``other``'s time compares with ``reference``'s, e.g. ``1.04x slower``."""
    if reference <= 0 or other <= 0:
        return "n/a"
    r = other / reference
    word = "slower" if r >= 1.0 else "faster"
    r = max(r, 1.0 / r)
    return f"{r:.2f}x {word}" if r < 10 else f"{r:.1f}x {word}"


def optional_import(name: str) -> Any | None:
    """Import ``name`` or return ``None`` (with a printed note) if it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        print(f"note: {name} not importable ({exc}); its rows are skipped", file=sys.stderr)
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(packages: Iterable[str] = ()) -> dict[str, str]:
    """CPU count, CPU model, Python and the versions of ``packages`` (if installed)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    facts = {
        "nproc": str(usable),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):  # other load skews timings on a small machine
        facts["loadavg (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    for name in packages:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            facts[name] = "not installed"
        else:
            facts[name] = str(getattr(mod, "__version__", "unknown"))
    return facts


def filesystem_of(path: str) -> str:
    """The filesystem ``path`` is on, from ``df -T``: ``"ext4 (/dev/vda, mounted on /)"``."""
    try:
        out = subprocess.run(
            ["df", "-T", "-P", path], capture_output=True, text=True, check=True, timeout=10
        ).stdout
        fields = out.splitlines()[1].split()
        return f"{fields[1]} ({fields[0]}, mounted on {fields[-1]})"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``samples``, linearly interpolated."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentile of no samples")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def print_facts(facts: dict[str, str]) -> None:
    for key, value in facts.items():
        print(f"- {key}: {value}")
    print()


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Render a Markdown table with columns padded to equal width."""
    text_rows = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


# The generator's parameters, shared by the frame and its entropy bound below.
_STEP, _GAP, _WICK, _VOLUME_MU = 5e-4, 1e-4, 3e-4, 8.0


def continuous_ohlcv(n: int) -> Any:
    """A 1-minute OHLCV frame of full-precision prices: close is a geometric random walk."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, _STEP, n)))
    open_ = np.empty(n)
    open_[0] = 100.0
    open_[1:] = close[:-1]
    open_ *= 1.0 + rng.normal(0.0, _GAP, n)  # small gap between bars
    spread = np.abs(rng.normal(0.0, _WICK, (2, n))) * close
    high = np.maximum(open_, close) + spread[0]
    low = np.minimum(open_, close) - spread[1]
    volume = np.round(rng.lognormal(_VOLUME_MU, 1.0, n))
    index = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume},
        index=index,
    )


def continuous_ohlcv_bound(frame: Any) -> float:
    """The fewest bytes any lossless codec can store ``continuous_ohlcv``'s frame in, on average.

    Each value costs -log2 of its probability under the process that generated it, given the
    values before it: a density times the width of the float64 cell the value falls in (for a
    price: its own random step, gap or wick, to first order; for a volume: the lognormal at that
    integer). Their sum is the frame's entropy (Shannon's bound); the regular index costs
    nothing. A codec that does not know the generator's seed can only come near it from above.
    """
    import numpy as np

    def bits(x: Any, mean: Any, sd: Any) -> Any:
        z = (x - mean) / sd
        return (0.5 * z * z) / math.log(2) + np.log2(
            sd * math.sqrt(2 * math.pi) / np.spacing(np.abs(x))
        )

    o, h, lo, c, v = (frame[name].to_numpy() for name in ("open", "high", "low", "close", "volume"))
    total = bits(c[1:], c[:-1], _STEP * c[:-1]).sum() + bits(o[1:], c[:-1], _GAP * c[:-1]).sum()
    # A wick is a half-normal: one bit less than the normal of the same scale.
    total += (bits(h, np.maximum(o, c), _WICK * c) - 1).sum()
    total += (bits(lo, np.minimum(o, c), _WICK * c) - 1).sum()
    log_v = np.log(v)
    total += (
        (0.5 * (log_v - _VOLUME_MU) ** 2 - np.log(1 / (v * math.sqrt(2 * math.pi)))) / math.log(2)
    ).sum()
    return float(total) / 8
