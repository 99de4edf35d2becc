"""Benchmark the ``afml_cache.Cache`` store against diskcache, joblib and cachier, in one run.

Run from the repository root (with ``afml_cache`` importable, e.g. after ``maturin develop``)::

    python benches/bench_store.py                 # default run (a few minutes)
    python benches/bench_store.py --quick         # smoke test: small sizes, few repeats
    python benches/bench_store.py --full-scale    # also 1,000,000 entries in get_vs_entries
    python benches/bench_store.py --only ohlcv_1m --json results.json
    python benches/bench_store.py --only ohlcv_continuous   # stored size vs the entropy bound

Cases and tools:

- ``small_get``: a hit on a small dict under a short str key -- afml-cache from its memory tier,
  afml-cache from disk (a second ``Cache`` on the directory with ``memory_limit=1``, so nothing
  is held in memory), ``diskcache.Cache.get``, ``joblib.load`` of a small pickle file,
  a ``joblib.Memory(...).cache(fn)`` hit, a ``@cachier(cache_dir=...)`` hit (cachier's defaults:
  pickle backend, ``pickle_reload=True``, so its cache file is read on each call).
- ``small_set``: storing that dict -- afml-cache and ``diskcache.Cache.set``, each both
  overwriting an existing key and under a new key; ``joblib.dump`` to a new file. cachier has
  no store call of its own (it stores only what a decorated function returns), so no row.
- ``ohlcv_1m``: a 1,000,000-row one-minute OHLCV frame -- bytes on disk / raw bytes, write
  and read throughput. afml-cache at each compression level (``none``, ``fast``, ``default``);
  its writes go through a default ``Cache`` (memory tier on, as users get it) and its reads
  through a ``memory_limit=1`` one (from disk). ``diskcache.Cache.set/get`` (pickled into a
  value file), ``joblib.dump/load`` raw and with ``compress=("zlib", 3)``, and with
  ``("lz4", 3)`` if the lz4 package is installed. cachier: skipped (no direct store API).
- ``ohlcv_continuous``: the same shape of frame with full-precision prices (a continuous
  geometric random walk, ``_common.continuous_ohlcv``): bytes on disk at ``default`` and ``max``
  beside the frame's entropy under the process that generated it, which no lossless codec
  beats on average.
- ``large``: one large float64 array (a random walk on a 0.25 tick), stored and read back by
  afml-cache (``Cache.set`` / ``Cache.get`` from disk, ``memory_limit=1``) and by
  ``np.save`` / ``np.load`` in the same directory: 1 GiB at the default compression and 512 MB
  with ``compression="none"`` (64 MiB each with --quick). Each operation runs in a fresh
  interpreter (all tools alternating, ``large_repeats`` times) that reports its time and its
  peak resident memory beyond the value (``ru_maxrss``; for reads, beyond the value returned).
- ``get_vs_entries``: the median and p95 latency of disk hits (``memory_limit=1``) on random
  existing keys of a directory holding N small entries, N = 1,000; 10,000; 100,000 and, with
  ``--full-scale``, 1,000,000; diskcache at the same N.

Every cache lives in its own fresh ``tempfile.mkdtemp`` directory under the default temp dir,
so all tools share one filesystem (printed in the header); it is removed afterwards. "Disk"
reads come from the OS page cache, as repeated reads of a recently written cache do in practice.
Small calls are timed in loops (median per call over the repeats); big cases get 3 warm-ups
(fresh inputs of 100 MB and more run slowly for their first passes on this VM) and the median
over repeats. GB means 1e9 bytes; raw bytes are ``df.memory_usage(index=True, deep=True).sum()``.
Targets are afml-cache's goals; only afml-cache's rows are marked ok / MISS against them.
Tools that are not installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from _common import (
    continuous_ohlcv,
    continuous_ohlcv_bound,
    filesystem_of,
    fmt_ratio,
    fmt_seconds,
    machine_facts,
    markdown_table,
    median,
    optional_import,
    percentile,
    print_facts,
    time_calls,
    time_loops,
)

BIG_WARMUPS = 3  # warm-ups before timing a big case
SLOW_WARMUPS = 1  # for joblib with zlib, which takes seconds per call
AFML = "afml-cache"
SMALL_KEY = "ES:2024-01-02:1min"
SMALL_VALUE = {"symbol": "ES", "bars": 1380, "vwap": 4783.25, "range": (4770.5, 4795.0)}
FLAT_FACTOR = 1.5  # "flat": median at N within this factor of the median at the smallest N


@dataclass(frozen=True)
class Config:
    small_loops: int  # calls per timed repeat, fast tools
    slow_loops: int  # calls per timed repeat, tools around 100 µs per call and slower
    small_repeats: int
    ohlcv_rows: int
    big_repeats: int
    slow_repeats: int  # joblib with zlib on the frame
    scale_ns: tuple[int, ...]
    scale_gets: int  # random gets timed one by one at each N
    large_cases: tuple[tuple[int, str], ...]  # (bytes, compression) of the large case
    large_repeats: int


FULL = Config(
    small_loops=5_000,
    slow_loops=2_000,
    small_repeats=7,
    ohlcv_rows=1_000_000,
    big_repeats=7,
    slow_repeats=3,
    scale_ns=(1_000, 10_000, 100_000),
    scale_gets=5_000,
    large_cases=((2**30, "default"), (512 * 10**6, "none")),
    large_repeats=3,
)
QUICK = Config(
    small_loops=500,
    slow_loops=200,
    small_repeats=3,
    ohlcv_rows=100_000,
    big_repeats=3,
    slow_repeats=2,
    scale_ns=(1_000, 10_000),
    scale_gets=1_000,
    large_cases=((64 * 2**20, "default"), (64 * 2**20, "none")),
    large_repeats=2,
)
FULL_SCALE_N = 1_000_000


# --------------------------------------------------------------------------- results


@dataclass
class Latency:
    """A per-call latency row of small_get or small_set."""

    case: str
    tool: str
    loops: int
    repeats: int
    median_s: float
    ref: str | None  # the afml-cache row this one is compared with
    target_us: float | None = None  # only on afml-cache rows
    samples_s: list[float] = field(default_factory=list)


@dataclass
class Stored:
    """A row of ohlcv_1m: size on disk, write and read times of one big value."""

    tool: str
    raw_bytes: int
    stored_bytes: int
    write_median_s: float
    read_median_s: float
    repeats: int
    afml: bool
    size_target: float | None = None
    write_samples_s: list[float] = field(default_factory=list)
    read_samples_s: list[float] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        return self.stored_bytes / self.raw_bytes

    @property
    def write_gbps(self) -> float:
        return self.raw_bytes / self.write_median_s / 1e9

    @property
    def read_gbps(self) -> float:
        return self.raw_bytes / self.read_median_s / 1e9


@dataclass
class Bounded:
    """A row of ohlcv_continuous: size on disk beside the least any lossless codec can do."""

    tool: str
    raw_bytes: int
    stored_bytes: int
    bound_bytes: float
    size_target: float | None = None


@dataclass
class Scaled:
    """A row of get_vs_entries: disk-hit latency with n entries in the directory."""

    tool: str
    n: int
    gets: int
    median_s: float
    p95_s: float
    fill_s_per_set: float  # mean seconds per set while filling up to n


WRITE_TARGET_GBPS = 2.0
READ_TARGET_GBPS = 3.0
SIZE_TARGETS = {"default": 0.56, "max": 0.45}
LARGE_SET_TARGET = 0.5  # x np.save
LARGE_GET_TARGET = 0.8  # x np.load
LARGE_MEMORY_TARGET = 0.2  # memory beyond the value, x the value


# --------------------------------------------------------------------------- helpers


class TempDirs:
    """Fresh directories under the default temp dir (one filesystem), removed on exit."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def new(self, label: str) -> str:
        path = tempfile.mkdtemp(prefix=f"afml-bench-{label}-")
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.paths:
            shutil.rmtree(path, ignore_errors=True)
        self.paths.clear()


@contextmanager
def temp_dirs() -> Iterator[TempDirs]:
    dirs = TempDirs()
    try:
        yield dirs
    finally:
        dirs.cleanup()


def tree_bytes(path: str, skip: Callable[[str], bool] = lambda name: False) -> int:
    """Total size of the files under ``path`` whose names ``skip`` does not reject."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            if not skip(name):
                total += os.path.getsize(os.path.join(root, name))
    return total


def check_equal(tool: str, got: object, expected: object) -> None:
    """Warn (don't fail) when a tool gives back something else than it was given."""
    if hasattr(expected, "equals"):
        same = type(got) is type(expected) and bool(expected.equals(got))
    else:
        same = got == expected
    if not same:
        print(f"warning: {tool} returned a different value: {got!r:.200}", file=sys.stderr)


def load_afml() -> Any | None:
    afml = optional_import("afml_cache")
    if afml is not None and not hasattr(afml, "Cache"):
        print("note: afml_cache has no Cache; its rows are skipped", file=sys.stderr)
        return None
    return afml


def _small_value(key: str) -> dict[str, Any]:
    """What the joblib.Memory and cachier anchors compute (once) and then hit."""
    return dict(SMALL_VALUE)


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- small_get


def case_small_get(cfg: Config, afml: Any | None, dirs: TempDirs) -> list[Latency]:
    case = "small_get"
    ref = f"{AFML} get (disk, memory_limit=1)"
    # (name, fn, loops, target µs)
    tools: list[tuple[str, Callable[[], object], int, float | None]] = []
    if afml is not None:
        directory = dirs.new("get")
        cache = afml.Cache(directory)
        cache.set(SMALL_KEY, SMALL_VALUE)
        disk = afml.Cache(directory, memory_limit=1)
        check_equal(AFML, cache.get(SMALL_KEY), SMALL_VALUE)
        check_equal(AFML, disk.get(SMALL_KEY), SMALL_VALUE)
        if cache.stats().get("memory_count", 1) < 1 or disk.stats().get("memory_count", 0) > 0:
            print("warning: afml-cache memory tiers are not as expected", file=sys.stderr)
        tools.append(
            (f"{AFML} get (memory tier)", lambda: cache.get(SMALL_KEY), cfg.small_loops, 5)
        )
        tools.append((ref, lambda: disk.get(SMALL_KEY), cfg.small_loops, 20))
    if (diskcache := optional_import("diskcache")) is not None:
        dc = diskcache.Cache(dirs.new("diskcache"))
        dc.set(SMALL_KEY, SMALL_VALUE)
        check_equal("diskcache", dc.get(SMALL_KEY), SMALL_VALUE)
        tools.append(("diskcache.Cache.get", lambda: dc.get(SMALL_KEY), cfg.small_loops, None))
    if (joblib := optional_import("joblib")) is not None:
        path = os.path.join(dirs.new("joblib"), "small.pkl")
        joblib.dump(SMALL_VALUE, path)
        check_equal("joblib.load", joblib.load(path), SMALL_VALUE)
        tools.append(
            ("joblib.load (small pickle file)", lambda: joblib.load(path), cfg.small_loops, None)
        )
        memory = joblib.Memory(dirs.new("joblib-memory"), verbose=0)
        cached = memory.cache(_small_value)
        cached(SMALL_KEY)  # the miss that stores it
        check_equal("joblib.Memory", cached(SMALL_KEY), SMALL_VALUE)
        tools.append(
            ("joblib.Memory.cache(fn) hit", lambda: cached(SMALL_KEY), cfg.slow_loops, None)
        )
    if (cachier_mod := optional_import("cachier")) is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decorated = cachier_mod.cachier(cache_dir=dirs.new("cachier"))(_small_value)
            decorated(SMALL_KEY)  # the miss that stores it
        check_equal("cachier", decorated(SMALL_KEY), SMALL_VALUE)
        tools.append(("@cachier fn hit", lambda: decorated(SMALL_KEY), cfg.slow_loops, None))

    results = []
    for name, fn, loops, target in tools:
        progress(f"{case}: {name} ...")
        samples = time_loops(fn, loops=loops, repeats=cfg.small_repeats)
        ref_name = ref if afml is not None and name != ref else None
        results.append(
            Latency(
                case, name, loops, cfg.small_repeats, median(samples), ref_name, target, samples
            )
        )
    return results


# --------------------------------------------------------------------------- small_set


def case_small_set(cfg: Config, afml: Any | None, dirs: TempDirs) -> list[Latency]:
    case = "small_set"
    overwrite_ref = f"{AFML} set (overwrite key)"
    new_ref = f"{AFML} set (new key)"
    # (name, fn, loops, target µs, reference row)
    tools: list[tuple[str, Callable[[], object], int, float | None, str | None]] = []
    counter = itertools.count()
    if afml is not None:
        cache = afml.Cache(dirs.new("set"))
        cache.set(SMALL_KEY, SMALL_VALUE)
        tools.append(
            (overwrite_ref, lambda: cache.set(SMALL_KEY, SMALL_VALUE), cfg.small_loops, 50, None)
        )
        tools.append(
            (
                new_ref,
                lambda: cache.set(f"new:{next(counter)}", SMALL_VALUE),
                cfg.slow_loops,
                50,
                None,
            )
        )
    have_afml = afml is not None
    if (diskcache := optional_import("diskcache")) is not None:
        dc = diskcache.Cache(dirs.new("diskcache"))
        dc.set(SMALL_KEY, SMALL_VALUE)
        tools.append(
            (
                "diskcache.Cache.set (overwrite key)",
                lambda: dc.set(SMALL_KEY, SMALL_VALUE),
                cfg.small_loops,
                None,
                overwrite_ref if have_afml else None,
            )
        )
        tools.append(
            (
                "diskcache.Cache.set (new key)",
                lambda: dc.set(f"new:{next(counter)}", SMALL_VALUE),
                cfg.slow_loops,
                None,
                new_ref if have_afml else None,
            )
        )
    if (joblib := optional_import("joblib")) is not None:
        directory = dirs.new("joblib")
        tools.append(
            (
                "joblib.dump (new file)",
                lambda: joblib.dump(SMALL_VALUE, os.path.join(directory, f"{next(counter)}.pkl")),
                cfg.slow_loops,
                None,
                new_ref if have_afml else None,
            )
        )

    results = []
    for name, fn, loops, target, ref in tools:
        progress(f"{case}: {name} ...")
        samples = time_loops(fn, loops=loops, repeats=cfg.small_repeats)
        results.append(
            Latency(case, name, loops, cfg.small_repeats, median(samples), ref, target, samples)
        )
    return results


# --------------------------------------------------------------------------- ohlcv_1m


def make_ohlcv(n: int) -> Any:
    """A realistic 1-minute OHLCV frame: prices a random walk on a 0.25 tick, int64 volume."""
    import pandas as pd

    rng = np.random.default_rng(7)
    tick = 0.25
    close = 4000.0 + tick * np.cumsum(rng.choice([-2, -1, 0, 1, 2], n, p=[0.1, 0.2, 0.4, 0.2, 0.1]))
    open_ = np.empty(n)
    open_[0] = close[0]
    open_[1:] = close[:-1]
    wick = tick * rng.geometric(0.5, (2, n))  # at least one tick above and below the body
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    volume = np.round(rng.lognormal(6.0, 1.0, n)).astype(np.int64)
    index = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


@dataclass
class BigTool:
    name: str
    write: Callable[[], object]
    read: Callable[[], object]
    stored_bytes: Callable[[], int]
    repeats: int
    warmups: int = BIG_WARMUPS
    afml: bool = False
    size_target: float | None = None


def case_ohlcv(cfg: Config, afml: Any | None, dirs: TempDirs) -> list[Stored]:
    case = "ohlcv_1m"
    pd = optional_import("pandas")
    if pd is None:
        print(f"note: {case} needs pandas; case skipped", file=sys.stderr)
        return []
    df = make_ohlcv(cfg.ohlcv_rows)
    raw = int(df.memory_usage(index=True, deep=True).sum())
    key = "ES 1min 2020-2022"
    tools: list[BigTool] = []
    if afml is not None:
        for level in ("none", "fast", "default", "max"):
            directory = dirs.new(f"ohlcv-{level}")
            writer = afml.Cache(directory, compression=level)
            reader = afml.Cache(directory, memory_limit=1)
            tools.append(
                BigTool(
                    f'{AFML} compression="{level}"',
                    lambda w=writer: w.set(key, df),
                    lambda r=reader: r.get(key),
                    lambda w=writer: sum(e["size"] for e in w.entries()),
                    cfg.big_repeats,
                    afml=True,
                    size_target=SIZE_TARGETS.get(level),
                )
            )
    if (diskcache := optional_import("diskcache")) is not None:
        directory = dirs.new("ohlcv-diskcache")
        dc = diskcache.Cache(directory)
        tools.append(
            BigTool(
                "diskcache.Cache.set/get (pickle)",
                lambda: dc.set(key, df),
                lambda: dc.get(key),
                # its value file; the SQLite index (a row per key) is left out
                lambda: tree_bytes(directory, skip=lambda name: name.startswith("cache.db")),
                cfg.big_repeats,
            )
        )
    if (joblib := optional_import("joblib")) is not None:
        variants: list[tuple[str, Any, int]] = [("joblib.dump/load", 0, cfg.big_repeats)]
        variants.append(('joblib.dump/load compress=("zlib", 3)', ("zlib", 3), cfg.slow_repeats))
        if optional_import("lz4") is not None:
            variants.append(('joblib.dump/load compress=("lz4", 3)', ("lz4", 3), cfg.big_repeats))
        for name, compress, repeats in variants:
            path = os.path.join(dirs.new("ohlcv-joblib"), "frame.pkl")
            tools.append(
                BigTool(
                    name,
                    lambda p=path, c=compress: joblib.dump(df, p, compress=c),
                    lambda p=path: joblib.load(p),
                    lambda p=path: os.path.getsize(p),
                    repeats,
                    warmups=SLOW_WARMUPS if compress and compress[0] == "zlib" else BIG_WARMUPS,
                )
            )

    results = []
    for tool in tools:
        progress(f"{case}: {tool.name} write x{tool.repeats} ...")
        writes = time_calls(tool.write, repeats=tool.repeats, warmup=tool.warmups)
        stored = tool.stored_bytes()
        check_equal(tool.name, tool.read(), df)
        progress(f"{case}: {tool.name} read x{tool.repeats} ...")
        reads = time_calls(tool.read, repeats=tool.repeats, warmup=tool.warmups)
        results.append(
            Stored(
                tool.name,
                raw,
                stored,
                median(writes),
                median(reads),
                tool.repeats,
                tool.afml,
                tool.size_target,
                writes,
                reads,
            )
        )
        gc.collect()
    return results


def case_ohlcv_continuous(cfg: Config, afml: Any | None, dirs: TempDirs) -> list[Bounded]:
    """Stored size of full-precision prices beside their entropy (what goal 7's 0.45 asks of)."""
    if afml is None or optional_import("pandas") is None:
        print("note: ohlcv_continuous needs afml_cache and pandas; case skipped", file=sys.stderr)
        return []
    df = continuous_ohlcv(cfg.ohlcv_rows)
    raw = int(df.memory_usage(index=True, deep=True).sum())
    bound = continuous_ohlcv_bound(df)
    results = []
    for level in ("default", "max"):
        progress(f"ohlcv_continuous: {level} ...")
        cache = afml.Cache(dirs.new(f"continuous-{level}"), compression=level)
        cache.set("frame", df)
        check_equal(level, afml.Cache(cache.directory, memory_limit=1).get("frame"), df)
        stored = sum(e["size"] for e in cache.entries())
        name = f'{AFML} compression="{level}"'
        results.append(Bounded(name, raw, stored, bound, SIZE_TARGETS.get(level)))
    return results


def bounded_rows(results: list[Bounded]) -> list[list[str]]:
    rows = [
        [
            r.tool,
            f"{r.stored_bytes / 1e6:.1f} MB",
            f"{r.stored_bytes / r.raw_bytes:.3f}",
            f"{r.stored_bytes / r.bound_bytes:.2f}x",
            "" if r.size_target is None else f"size <= {r.size_target:g}",
            ""
            if r.size_target is None
            else ("ok" if r.stored_bytes / r.raw_bytes <= r.size_target else "MISS"),
        ]
        for r in results
    ]
    bound = results[0]
    rows.append(
        [
            "entropy of the generating process (no lossless codec does better on average)",
            f"{bound.bound_bytes / 1e6:.1f} MB",
            f"{bound.bound_bytes / bound.raw_bytes:.3f}",
            "1.00x",
            "",
            "",
        ]
    )
    return rows


# --------------------------------------------------------------------------- large

# Runs one operation in a fresh interpreter: prints its seconds and peak memory beyond the value.
_LARGE_STEP = """
import json, resource, sys, time
import numpy as np

tool, step, directory, nbytes, level = sys.argv[1:6]
nbytes = int(nbytes)
# Resident bytes now, after resetting the peak (VmHWM) to it: what peak() then reports is
# the coming operation's own high-water mark, not an import's or the set-up's.
def resident():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
def peak():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024
path = directory + "/walk.npy"
if tool == "afml":
    import afml_cache
    cache = afml_cache.Cache(directory + "/cache", compression=level, memory_limit=1,
                             size_limit=4 * nbytes)
if step == "set":
    n = nbytes // 8
    value = np.empty(n)
    rng = np.random.default_rng(7)
    last = 4000.0
    for start in range(0, n, 1 << 22):  # filled in place: the peak so far is the value alone
        part = last + 0.25 * np.cumsum(rng.integers(-2, 3, min(1 << 22, n - start), dtype=np.int8))
        value[start : start + len(part)] = part
        last = part[-1]
    del part
    before = resident()
    t0 = time.perf_counter()
    np.save(path, value) if tool == "np" else cache.set("walk", value)
    seconds = time.perf_counter() - t0
else:
    before = resident()
    t0 = time.perf_counter()
    value = np.load(path) if tool == "np" else cache.get("walk")
    seconds = time.perf_counter() - t0
    before += value.nbytes
    assert value.nbytes == nbytes and value[0] != 0
print(json.dumps([seconds, (peak() - before) / nbytes]))
"""


@dataclass
class Large:
    """A row of large: one size and level, afml-cache beside np.save / np.load."""

    work: str
    nbytes: int
    level: str
    stored_bytes: int
    times: dict[str, list[float]]  # "afml set", "np set", "afml get", "np get" -> seconds
    memory: dict[str, float]  # "afml set", "afml get" -> the worst peak beyond the value


def _large_step(
    tool: str, step: str, directory: str, nbytes: int, level: str
) -> tuple[float, float]:
    import subprocess

    args = [sys.executable, "-c", _LARGE_STEP, tool, step, directory, str(nbytes), level]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"large: {tool} {step} failed:\n{done.stderr[-2000:]}")
    seconds, beyond = json.loads(done.stdout)
    return seconds, beyond


def case_large(cfg: Config, afml: Any | None, dirs: TempDirs) -> list[Large]:
    if afml is None:
        return []
    results = []
    for nbytes, level in cfg.large_cases:
        work = (
            f"{nbytes / 2**30:g} GiB random walk, {level}"
            if nbytes >= 2**30
            else (f"{nbytes / 1e6:.0f} MB random walk, {level}")
        )
        directory = dirs.new("large")
        times: dict[str, list[float]] = {}
        memory: dict[str, float] = {}
        for repeat in range(cfg.large_repeats):
            for step in ("set", "get"):
                for tool in ("np", "afml"):
                    progress(f"large: {work}: {tool} {step} ({repeat + 1}/{cfg.large_repeats}) ...")
                    seconds, beyond = _large_step(tool, step, directory, nbytes, level)
                    times.setdefault(f"{tool} {step}", []).append(seconds)
                    if tool == "afml":
                        memory[f"afml {step}"] = max(memory.get(f"afml {step}", 0.0), beyond)
        stored = tree_bytes(
            os.path.join(directory, "cache"), skip=lambda n: not n.endswith(".entry")
        )
        if stored == 0:  # the entry's file name is the store's business: count every file
            stored = tree_bytes(os.path.join(directory, "cache"))
        results.append(Large(work, nbytes, level, stored, times, memory))
        shutil.rmtree(directory, ignore_errors=True)
    return results


def large_rows(results: list[Large]) -> list[list[str]]:
    rows = []
    for r in results:
        for step, anchor, target in (
            ("set", "np.save", LARGE_SET_TARGET),
            ("get", "np.load", LARGE_GET_TARGET),
        ):
            ours, theirs = median(r.times[f"afml {step}"]), median(r.times[f"np {step}"])
            ratio = theirs / ours  # throughput ratio: afml-cache's GB/s over the anchor's
            beyond = r.memory[f"afml {step}"]
            met = ratio >= target and beyond <= LARGE_MEMORY_TARGET
            rows.append(
                [
                    f"`Cache.{step}`, {r.work}",
                    f"{r.nbytes / ours / 1e9:.2f} GB/s",
                    f"{anchor}: {r.nbytes / theirs / 1e9:.2f} GB/s",
                    f"{ratio:.2f}x",
                    f"+{beyond:.2f}x",
                    f"{r.stored_bytes / r.nbytes:.3f}",
                    f">= {target:g}x, memory <= +{LARGE_MEMORY_TARGET:g}x",
                    "ok" if met else "MISS",
                ]
            )
    return rows


LARGE_HEADERS = [
    "work",
    "afml-cache",
    "anchor (same disk)",
    "ratio",
    "memory beyond the value",
    "size on disk",
    "target",
    "status",
]


# --------------------------------------------------------------------------- get_vs_entries


def time_each(fn: Callable[[str], object], keys: list[str]) -> list[float]:
    """Seconds of each ``fn(key)``, timed one by one (for percentiles), GC off."""
    samples = []
    gc.collect()
    gc.disable()
    try:
        for key in keys:
            t0 = time.perf_counter()
            fn(key)
            samples.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return samples


def case_scaling(cfg: Config, afml: Any | None, dirs: TempDirs) -> list[Scaled]:
    case = "get_vs_entries"
    # (name, fill(key), get(key))
    stores: list[tuple[str, Callable[[str], object], Callable[[str], object]]] = []
    if afml is not None:
        directory = dirs.new("scale")
        filler = afml.Cache(directory, memory_limit=1)
        reader = afml.Cache(directory, memory_limit=1)
        stores.append(
            (
                f"{AFML} get (disk, memory_limit=1)",
                lambda k: filler.set(k, SMALL_VALUE),
                reader.get,
            )
        )
    if (diskcache := optional_import("diskcache")) is not None:
        dc = diskcache.Cache(dirs.new("scale-diskcache"))
        stores.append(("diskcache.Cache.get", lambda k: dc.set(k, SMALL_VALUE), dc.get))

    rng = np.random.default_rng(11)
    results = []
    for name, fill, get in stores:
        filled = 0
        for n in cfg.scale_ns:
            t0 = time.perf_counter()
            step = max(1, (n - filled) // 10)
            for i in range(filled, n):
                fill(f"entry:{i}")
                if (i - filled + 1) % step == 0 and n - filled >= 100_000:
                    progress(f"{case}: {name}: filled {i + 1:,} / {n:,}")
            fill_s = (time.perf_counter() - t0) / (n - filled)
            filled = n
            keys = [f"entry:{i}" for i in rng.integers(0, n, cfg.scale_gets)]
            check_equal(name, get(keys[0]), SMALL_VALUE)
            progress(f"{case}: {name}: {cfg.scale_gets:,} random gets at N={n:,} ...")
            time_each(get, keys[: min(500, len(keys))])  # warm-up
            samples = time_each(get, keys)
            results.append(
                Scaled(name, n, len(keys), median(samples), percentile(samples, 95), fill_s)
            )
    return results


# --------------------------------------------------------------------------- report


def latency_rows(results: list[Latency]) -> list[list[str]]:
    medians = {(r.case, r.tool): r.median_s for r in results}
    rows = []
    for r in results:
        median_cell = f"{fmt_seconds(r.median_s * r.loops)} / {r.loops:,} calls (n={r.repeats})"
        if r.ref is None:
            ratio = "1.00x (ref)" if r.tool.startswith(AFML) else "n/a"
        elif (r.case, r.ref) in medians:
            ratio = fmt_ratio(r.median_s, medians[(r.case, r.ref)])
        else:
            ratio = "n/a"
        target, status = "", ""
        if r.target_us is not None:
            target = f"<= {r.target_us:g} µs"
            status = "ok" if r.median_s * 1e6 <= r.target_us else "MISS"
        rows.append(
            [r.case, r.tool, median_cell, f"{r.median_s * 1e6:.2f} µs", ratio, target, status]
        )
    return rows


def stored_rows(results: list[Stored]) -> list[list[str]]:
    ref = next((r for r in results if r.tool == f'{AFML} compression="default"'), None)
    rows = []
    for r in results:
        if ref is None:
            ratios = "n/a"
        elif r is ref:
            ratios = "ref / ref"
        else:
            ratios = (
                f"{fmt_ratio(r.write_median_s, ref.write_median_s)} / "
                f"{fmt_ratio(r.read_median_s, ref.read_median_s)}"
            )
        target, status = "", ""
        if r.afml:
            checks = [
                (r.write_gbps >= WRITE_TARGET_GBPS, f"write >= {WRITE_TARGET_GBPS:g} GB/s"),
                (r.read_gbps >= READ_TARGET_GBPS, f"read >= {READ_TARGET_GBPS:g} GB/s"),
            ]
            if r.size_target is not None:
                checks.insert(0, (r.size_ratio <= r.size_target, f"size <= {r.size_target:g}"))
            target = ", ".join(label for _, label in checks)
            status = ", ".join("ok" if met else "MISS" for met, _ in checks)
        rows.append(
            [
                r.tool,
                f"{r.stored_bytes / 1e6:.1f} MB",
                f"{r.size_ratio:.3f}",
                f"{fmt_seconds(r.write_median_s)} = {r.write_gbps:.2f} GB/s",
                f"{fmt_seconds(r.read_median_s)} = {r.read_gbps:.2f} GB/s",
                f"n={r.repeats}",
                ratios,
                target,
                status,
            ]
        )
    return rows


def scaled_rows(results: list[Scaled]) -> list[list[str]]:
    first = {}
    for r in results:
        first.setdefault(r.tool, r)
    rows = []
    for r in sorted(results, key=lambda r: (r.n, not r.tool.startswith(AFML))):
        base = first[r.tool]
        growth = r.median_s / base.median_s
        target, status = "", ""
        if r.tool.startswith(AFML):
            target = f"flat (<= {FLAT_FACTOR:g}x N={base.n:,})"
            status = "ok" if growth <= FLAT_FACTOR else "MISS"
        rows.append(
            [
                f"{r.n:,}",
                r.tool,
                f"{r.median_s * 1e6:.2f} µs",
                f"{r.p95_s * 1e6:.2f} µs",
                f"{growth:.2f}x",
                f"{r.fill_s_per_set * 1e6:.1f} µs",
                target,
                status,
            ]
        )
    return rows


SCALED_HEADERS = ["N entries", "tool", "median", "p95", "vs smallest N", "fill", "target", "status"]

CASES: dict[str, Callable[[Config, Any | None, TempDirs], list[Any]]] = {
    "small_get": case_small_get,
    "small_set": case_small_set,
    "ohlcv_1m": case_ohlcv,
    "ohlcv_continuous": case_ohlcv_continuous,
    "large": case_large,
    "get_vs_entries": case_scaling,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument(
        "--full-scale", action="store_true", help="get_vs_entries also at 1,000,000 entries (slow)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", choices=sorted(CASES), help="run a single case")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.full_scale:
        cfg = replace(cfg, scale_ns=(*cfg.scale_ns, FULL_SCALE_N))

    facts = machine_facts(["numpy", "pandas", "afml_cache", "diskcache", "joblib", "cachier"])
    facts["afml_cache build"] = afml_build()
    facts["lz4 (for joblib compress)"] = "installed" if _has("lz4") else "not installed"
    tmp = tempfile.gettempdir()
    facts["cache directories"] = f"fresh mkdtemp dirs under {tmp}, on {filesystem_of(tmp)}"
    title = "# afml-cache store benchmark"
    flags = [f for f, on in (("--quick", args.quick), ("--full-scale", args.full_scale)) if on]
    print(title + (f" ({' '.join(flags)})" if flags else ""))
    print()
    print_facts(facts)
    sys.stdout.flush()

    afml = load_afml()
    results: dict[str, list[Any]] = {}
    for name, case in CASES.items():
        if args.only and name != args.only:
            continue
        with temp_dirs() as dirs:
            t0 = time.perf_counter()
            results[name] = case(cfg, afml, dirs)
            progress(f"{name}: done in {time.perf_counter() - t0:.1f} s; removing its directories")
        gc.collect()

    latency = results.get("small_get", []) + results.get("small_set", [])
    if latency:
        print("## Small values: per-call latency\n")
        print(
            markdown_table(
                ["case", "tool", "median", "per call", "ratio vs afml-cache", "target", "status"],
                latency_rows(latency),
            )
        )
        print(
            "\nratio: small_get rows vs afml-cache's disk hit; small_set rows vs afml-cache's set "
            "of the same kind (overwrite / new key); joblib.dump (new file) vs afml-cache new key."
            "\nafml-cache get/set include fingerprinting the key; the joblib.Memory and cachier "
            "rows include hashing the call's arguments.\n"
        )
    if results.get("ohlcv_1m"):
        rows = results["ohlcv_1m"][0].raw_bytes
        print(f"## OHLCV frame: {cfg.ohlcv_rows:,} rows, {rows / 1e6:.1f} MB raw\n")
        print(
            markdown_table(
                [
                    "tool",
                    "on disk",
                    "size ratio",
                    "write (median)",
                    "read from disk (median)",
                    "repeats",
                    "write / read ratio vs afml default",
                    "target",
                    "status",
                ],
                stored_rows(results["ohlcv_1m"]),
            )
        )
        notes = [
            "size ratio = bytes on disk / raw bytes; throughput = raw bytes / median time.",
            "afml-cache writes: a default Cache (memory tier on); reads: memory_limit=1 (disk).",
            f"{BIG_WARMUPS} warm-ups per timing ({SLOW_WARMUPS} for zlib, which is slow).",
            "cachier: skipped (no direct store API: it only stores a decorated function's result).",
        ]
        if not _has("lz4"):
            notes.append('joblib compress=("lz4", 3): skipped, the lz4 package is not installed.')
        print("\n" + "\n".join(notes) + "\n")
    if results.get("ohlcv_continuous"):
        raw = results["ohlcv_continuous"][0].raw_bytes
        print(
            f"## OHLCV frame of full-precision prices: {cfg.ohlcv_rows:,} rows, "
            f"{raw / 1e6:.1f} MB raw\n"
        )
        print(
            markdown_table(
                ["tool", "on disk", "size ratio", "vs the bound", "target", "status"],
                bounded_rows(results["ohlcv_continuous"]),
            )
        )
        print(
            "\nbenches/_common.py's continuous_ohlcv: a geometric random walk at full float64 "
            "precision.\nThe bound is -log2 of each value's probability under the process that "
            "made it, summed\n(continuous_ohlcv_bound); the low mantissa bits of such prices are "
            "noise no codec removes.\n"
        )
    if results.get("large"):
        print("## Large values: afml-cache beside np.save / np.load on the same disk\n")
        print(markdown_table(LARGE_HEADERS, large_rows(results["large"])))
        print(
            f"\nmedian of {cfg.large_repeats} runs, each operation in a fresh interpreter; ratio = "
            "afml-cache's throughput / the anchor's; memory = peak resident memory beyond the "
            "value (worst run); size = bytes on disk / bytes of the array.\n"
        )
    if results.get("get_vs_entries"):
        print("## Disk-hit get latency vs number of entries\n")
        print(
            markdown_table(
                SCALED_HEADERS,
                scaled_rows(results["get_vs_entries"]),
            )
        )
        print(
            f"\n{cfg.scale_gets:,} gets of random existing keys per N, each timed alone; "
            "fill = mean time per set while filling up to N (afml-cache: memory_limit=1)."
        )
        if not args.full_scale:
            print("N = 1,000,000: run with --full-scale.")
    if args.quick:
        print("\n(--quick: sizes and repeats are smaller than the case names say)")

    if args.json:
        payload = {
            "machine": facts,
            "config": asdict(cfg),
            "quick": args.quick,
            "full_scale": args.full_scale,
            "results": {
                name: [{**asdict(r), **_derived(r)} for r in rows_]
                for name, rows_ in results.items()
            },
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def _derived(r: Any) -> dict[str, float]:
    if isinstance(r, Stored):
        return {"size_ratio": r.size_ratio, "write_gbps": r.write_gbps, "read_gbps": r.read_gbps}
    return {}


def afml_build() -> str:
    """The commit of this checkout (``-dirty`` with uncommitted changes) and when the compiled
    core was built: the store is benchmarked as built, which may lag the source."""
    import subprocess
    from datetime import UTC, datetime

    parts = []
    try:
        parts.append(
            subprocess.run(
                ["git", "describe", "--always", "--dirty"],
                cwd=os.path.dirname(os.path.abspath(__file__)),
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        parts.append("commit unknown")
    try:
        import afml_cache._core as core

        built = datetime.fromtimestamp(os.path.getmtime(core.__file__), UTC)
        parts.append(f"_core built {built:%Y-%m-%d %H:%M:%S} UTC")
    except (ImportError, OSError):
        parts.append("_core not found")
    return ", ".join(parts)


def _has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    raise SystemExit(main())
