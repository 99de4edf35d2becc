"""Benchmark ``afml_cache.fingerprint`` against the usual anchors, in one run.

Run from the repository root (with ``afml_cache`` importable, e.g. after ``maturin develop``)::

    python benches/bench_fingerprint.py            # full run (512 MiB array, 2M-row frame)
    python benches/bench_fingerprint.py --quick    # smoke test: 64 MiB, 250k rows, fewer repeats
    python benches/bench_fingerprint.py --only ohlcv_2m --json results.json

Cases and tools:

- ``array_512mb``: 512 MiB float64 array -- afml_cache.fingerprint, joblib.hash,
  blake3 (all threads, over the array's buffer, no copy).
- ``ohlcv_2m``: 2,000,000 one-minute OHLCV bars with a tz-aware DatetimeIndex --
  afml_cache.fingerprint, joblib.hash, pandas.util.hash_pandas_object(df, index=True).
- ``small_tuple``: ``(42, 3.14, "close")`` -- afml_cache.fingerprint, joblib.hash.
- ``goals`` (issue 15): each row times afml-cache and its anchor alternately, call by call, so
  both see the same machine load: the OHLCV frame and the 512 MiB array against blake3-py over
  the same bytes as one buffer with all threads, and a decorated hit with a 1M-row frame
  argument (bench_decorators' bars and function) against blake3-py over the argument's bytes.
  It prints its own table: work | afml-cache | anchor | ratio | goal.

Each tool gets warm-up calls (3 for the big cases: freshly built inputs of 100 MB and more run
slowly for their first few passes on this VM) and then the median over repeats (7 for the big cases;
joblib.hash on the array gets 3 because it is slow). GB means 1e9 bytes. A frame's size is
``df.memory_usage(index=True, deep=True).sum()``. The ratio column says how many times slower
or faster each anchor is than afml-cache on the same input object. The target is the goal for
afml-cache, and only afml-cache's rows are marked ok / MISS against it.
Tools that are not installed are skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from _common import (
    continuous_ohlcv,
    fmt_ratio,
    fmt_seconds,
    machine_facts,
    markdown_table,
    median,
    optional_import,
    print_facts,
    time_calls,
    time_loops,
)

# Warm-up calls before timing a big case; the first passes over a fresh 100 MB+ input are slow.
BIG_WARMUPS = 3
AFML = "afml_cache.fingerprint"
MIB = 2**20


@dataclass(frozen=True)
class Config:
    array_bytes: int
    ohlcv_rows: int
    big_repeats: int
    slow_repeats: int  # joblib.hash on the big array
    small_loops: int
    small_repeats: int


FULL = Config(
    array_bytes=512 * MIB,
    ohlcv_rows=2_000_000,
    big_repeats=7,
    slow_repeats=3,
    small_loops=20_000,
    small_repeats=7,
)
QUICK = Config(
    array_bytes=64 * MIB,
    ohlcv_rows=250_000,
    big_repeats=3,
    slow_repeats=2,
    small_loops=2_000,
    small_repeats=3,
)


@dataclass(frozen=True)
class Target:
    """Either a minimum throughput (GB/s) or a maximum per-call latency (µs)."""

    kind: str  # "gbps" (higher is better) or "us" (lower is better)
    value: float

    def label(self) -> str:
        return f">= {self.value:g} GB/s" if self.kind == "gbps" else f"<= {self.value:g} µs"

    def met(self, result: Result) -> bool:
        if self.kind == "gbps":
            return result.gbps is not None and result.gbps >= self.value
        return result.median_s * 1e6 <= self.value


TARGETS: dict[str, Target] = {
    "array_512mb": Target("gbps", 12.0),
    "ohlcv_2m": Target("gbps", 10.0),
    "small_tuple": Target("us", 2.0),
}


@dataclass
class Result:
    case: str
    tool: str
    repeats: int
    loops: int  # calls per timed repeat
    median_s: float  # median seconds per call
    nbytes: int | None  # input size, for throughput cases
    samples_s: list[float] = field(default_factory=list)

    @property
    def gbps(self) -> float | None:
        return self.nbytes / self.median_s / 1e9 if self.nbytes else None


@dataclass
class Tool:
    name: str
    fn: Callable[[], object]
    repeats: int


def load_afml() -> Any | None:
    afml = optional_import("afml_cache")
    if afml is not None and not hasattr(afml, "fingerprint"):
        print("note: afml_cache has no fingerprint(); its rows are skipped", file=sys.stderr)
        return None
    return afml


def check_digest(tool: str, digest: object) -> None:
    """Warn (don't fail) if afml_cache.fingerprint does not return a 64-hex string."""
    ok = isinstance(digest, str) and len(digest) == 64
    if ok:
        try:
            int(digest, 16)
        except ValueError:
            ok = False
    if not ok:
        print(f"warning: {tool} returned {digest!r}, expected a 64-hex str", file=sys.stderr)


# --------------------------------------------------------------------------- inputs


def make_array(nbytes: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(nbytes // 8)


# --------------------------------------------------------------------------- cases


def key_anchors(obj: Any, repeats: int) -> list[Tool]:
    """How cachier and diskcache.memoize turn the same argument into a cache key.

    cachier hashes ``pickle.dumps((args, sorted kwargs))`` with SHA-256 (its default hash
    function); diskcache.memoize builds a key tuple from the arguments and pickles it (with
    ``pickletools.optimize``) to look it up in SQLite, at its default protocol.
    """
    tools: list[Tool] = []
    if (cachier_config := optional_import("cachier.config")) is not None:
        hash_func = cachier_config._default_hash_func
        tools.append(Tool("cachier key (pickle+sha256)", lambda: hash_func((obj,), {}), repeats))
    if (diskcache_core := optional_import("diskcache.core")) is not None:
        disk = diskcache_core.Disk(tempfile.gettempdir(), pickle_protocol=pickle.HIGHEST_PROTOCOL)

        def diskcache_key() -> object:
            key = diskcache_core.args_to_key(("f",), (obj,), {}, False, set())
            return disk.put(key)

        tools.append(Tool("diskcache.memoize key (pickle)", diskcache_key, repeats))
    return tools


def case_array(cfg: Config, afml: Any | None) -> Iterator[Result]:
    case = "array_512mb"
    arr = make_array(cfg.array_bytes)
    tools: list[Tool] = []
    if afml is not None:
        check_digest(AFML, afml.fingerprint(arr))
        tools.append(Tool(AFML, lambda: afml.fingerprint(arr), cfg.big_repeats))
    if (joblib := optional_import("joblib")) is not None:
        tools.append(Tool("joblib.hash", lambda: joblib.hash(arr), cfg.slow_repeats))
    if (blake3 := optional_import("blake3")) is not None:
        buf = memoryview(arr).cast("B")  # zero-copy byte view (blake3 rejects format "d")

        def blake3_all() -> str:
            return blake3.blake3(buf, max_threads=blake3.blake3.AUTO).hexdigest()

        tools.append(Tool("blake3 (AUTO threads)", blake3_all, cfg.big_repeats))
    tools += key_anchors(arr, cfg.slow_repeats)
    yield from run_big(case, tools, arr.nbytes)


def case_ohlcv(cfg: Config, afml: Any | None) -> Iterator[Result]:
    case = "ohlcv_2m"
    pd = optional_import("pandas")
    if pd is None:
        print(f"note: {case} needs pandas; case skipped", file=sys.stderr)
        return
    df = continuous_ohlcv(cfg.ohlcv_rows)
    nbytes = int(df.memory_usage(index=True, deep=True).sum())
    tools: list[Tool] = []
    if afml is not None:
        check_digest(AFML, afml.fingerprint(df))
        tools.append(Tool(AFML, lambda: afml.fingerprint(df), cfg.big_repeats))
    if (joblib := optional_import("joblib")) is not None:
        tools.append(Tool("joblib.hash", lambda: joblib.hash(df), cfg.big_repeats))
    tools.append(
        Tool(
            "pd.util.hash_pandas_object",
            lambda: pd.util.hash_pandas_object(df, index=True),
            cfg.big_repeats,
        )
    )
    tools += key_anchors(df, cfg.big_repeats)
    yield from run_big(case, tools, nbytes)


def case_small(cfg: Config, afml: Any | None) -> Iterator[Result]:
    case = "small_tuple"
    obj = (42, 3.14, "close")
    tools: list[Tool] = []
    if afml is not None:
        check_digest(AFML, afml.fingerprint(obj))
        tools.append(Tool(AFML, lambda: afml.fingerprint(obj), cfg.small_repeats))
    if (joblib := optional_import("joblib")) is not None:
        tools.append(Tool("joblib.hash", lambda: joblib.hash(obj), cfg.small_repeats))
    tools += key_anchors(obj, cfg.small_repeats)
    for tool in tools:
        print(f"  {case}: {tool.name} ...", file=sys.stderr, flush=True)
        samples = time_loops(tool.fn, loops=cfg.small_loops, repeats=tool.repeats)
        yield Result(case, tool.name, tool.repeats, cfg.small_loops, median(samples), None, samples)


def run_big(case: str, tools: list[Tool], nbytes: int) -> Iterator[Result]:
    for tool in tools:
        print(f"  {case}: {tool.name} x{tool.repeats} ...", file=sys.stderr, flush=True)
        samples = time_calls(tool.fn, repeats=tool.repeats, warmup=BIG_WARMUPS)
        yield Result(case, tool.name, tool.repeats, 1, median(samples), nbytes, samples)


CASES: dict[str, Callable[[Config, Any | None], Iterator[Result]]] = {
    "array_512mb": case_array,
    "ohlcv_2m": case_ohlcv,
    "small_tuple": case_small,
}


# --------------------------------------------------------------------------- goals (issue 15)


def alternating(
    work: Callable[[], object], anchor: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``work`` and ``anchor``, timed in turn after warm-ups."""
    for _ in range(BIG_WARMUPS):
        work()
        anchor()
    work_s: list[float] = []
    anchor_s: list[float] = []
    for _ in range(repeats):
        gc.collect()
        for fn, samples in ((work, work_s), (anchor, anchor_s)):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return median(work_s), median(anchor_s)


def one_buffer(frame: Any) -> np.ndarray:
    """A frame's index and column bytes, concatenated: what blake3-py hashes in one call."""
    parts = [np.ascontiguousarray(frame.index.asi8).view(np.uint8)]
    parts += [np.ascontiguousarray(frame[c].to_numpy()).view(np.uint8) for c in frame.columns]
    return np.concatenate(parts)


Timing = Callable[[np.ndarray], Callable[[], object]]


def goal_rows(cfg: Config, afml: Any, blake3: Any) -> list[list[str]]:
    def blake3_of(buf: np.ndarray) -> Callable[[], object]:
        return lambda: blake3.blake3(buf, max_threads=blake3.blake3.AUTO).digest()

    repeats = 3 * cfg.big_repeats  # alternating pairs: more of them steady the medians
    rows = []
    # One input at a time: each row's function drops its input before the next is built.
    for row in (frame_row, array_row, decorated_hit_row):
        rows.append(row(cfg, afml, blake3_of, repeats))
        gc.collect()
    return rows


def frame_row(cfg: Config, afml: Any, blake3_of: Timing, repeats: int) -> list[str]:
    frame = continuous_ohlcv(cfg.ohlcv_rows)
    buf = one_buffer(frame)
    work, anchor = alternating(lambda: afml.fingerprint(frame), blake3_of(buf), repeats)
    return [
        f"fingerprint, {cfg.ohlcv_rows:,}-row OHLCV frame ({buf.nbytes / 1e6:.0f} MB)",
        f"{buf.nbytes / work / 1e9:.2f} GB/s",
        f"blake3-py, same bytes as one buffer, all threads: {buf.nbytes / anchor / 1e9:.2f} GB/s",
        f"{anchor / work:.2f}x",
        ">= 0.9x",
    ]


def array_row(cfg: Config, afml: Any, blake3_of: Timing, repeats: int) -> list[str]:
    arr = make_array(cfg.array_bytes)
    work, anchor = alternating(
        lambda: afml.fingerprint(arr), blake3_of(arr.view(np.uint8)), repeats
    )
    return [
        f"fingerprint, {arr.nbytes / MIB:.0f} MiB float64 array",
        f"{arr.nbytes / work / 1e9:.2f} GB/s",
        f"blake3-py, all threads: {arr.nbytes / anchor / 1e9:.2f} GB/s",
        f"{anchor / work:.2f}x",
        ">= 1.0x",
    ]


def decorated_hit_row(cfg: Config, afml: Any, blake3_of: Timing, repeats: int) -> list[str]:
    from bench_decorators import make_bars, returns

    rows = cfg.ohlcv_rows // 2
    bars = make_bars(rows)
    directory = tempfile.mkdtemp(prefix="afml-bench-fp-")
    try:
        afml.configure(directory=directory)
        cached = afml.robust_cacheable(returns)
        cached(bars.iloc[:1000])  # one-time costs (opening the store) on other data
        cached(bars)
        buf = one_buffer(bars)
        work, anchor = alternating(lambda: cached(bars), blake3_of(buf), repeats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return [
        f"decorated hit, {rows:,}-row frame argument",
        f"{work * 1e3:.1f} ms",
        f"blake3-py over the input ({buf.nbytes / 1e6:.0f} MB): {anchor * 1e3:.1f} ms",
        f"{work / anchor:.2f}x the hash",
        "<= 1.15x",
    ]


# --------------------------------------------------------------------------- report


def table_rows(results: list[Result]) -> list[list[str]]:
    reference = {r.case: r.median_s for r in results if r.tool == AFML}
    rows = []
    for r in results:
        if r.gbps is not None:
            median_cell = f"{fmt_seconds(r.median_s)} (n={r.repeats})"
            throughput = f"{r.gbps:.2f} GB/s"
        else:
            median_cell = f"{fmt_seconds(r.median_s * r.loops)} / {r.loops:,} calls (n={r.repeats})"
            throughput = f"{r.median_s * 1e6:.2f} µs/call"
        if r.tool == AFML:
            ratio = "1.00x (ref)"
        elif r.case in reference:
            ratio = fmt_ratio(r.median_s, reference[r.case])
        else:
            ratio = "n/a"
        # Targets are afml-cache's; anchors are there to compare against, not to pass.
        target, status = "", ""
        if r.tool == AFML:
            target = TARGETS[r.case].label()
            status = "ok" if TARGETS[r.case].met(r) else "MISS"
        rows.append([r.case, r.tool, median_cell, throughput, ratio, target, status])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", choices=[*sorted(CASES), "goals"], help="run a single case")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    facts = machine_facts(["numpy", "pandas", "afml_cache", "joblib", "blake3"])
    print("# afml-cache fingerprint benchmark" + (" (--quick)" if args.quick else ""))
    print()
    print_facts(facts)
    sys.stdout.flush()

    afml = load_afml()
    results: list[Result] = []
    for name, case in CASES.items():
        if args.only and name != args.only:
            continue
        results.extend(case(cfg, afml))
        gc.collect()  # drop this case's input (e.g. the 512 MiB array) before the next

    if results:
        print(
            markdown_table(
                ["case", "tool", "median", "throughput", "ratio vs afml-cache", "target", "status"],
                table_rows(results),
            )
        )
    blake3 = optional_import("blake3")
    if afml is not None and blake3 is not None and args.only in (None, "goals"):
        print("\n## Issue 15 goals (afml-cache and its anchor timed alternately)\n")
        print(
            markdown_table(
                ["work", "afml-cache", "anchor in the same run", "ratio", "goal"],
                goal_rows(cfg, afml, blake3),
            )
        )
    if args.quick:
        print("\n(--quick: sizes are smaller than the case names say)")
    print(
        f"\nmedian over n repeats after {BIG_WARMUPS} warm-ups (big cases); GB = 1e9 bytes; "
        f"joblib.hash on the array uses n={cfg.slow_repeats} (slow)"
    )

    if args.json:
        payload = {
            "machine": facts,
            "config": asdict(cfg),
            "quick": args.quick,
            "results": [
                {**asdict(r), "gbps": r.gbps, "target": TARGETS[r.case].label()} for r in results
            ],
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
