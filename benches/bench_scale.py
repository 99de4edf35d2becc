"""`get` latency against the number of entries in a store: afml-cache beside diskcache, in one run.

    python benches/bench_scale.py            # N = 1,000; 10,000; 100,000 (a few minutes)
    python benches/bench_scale.py --full     # also N = 1,000,000 (an idle machine; tens of minutes)
    python benches/bench_scale.py --quick    # smoke test: N = 1,000 and 10,000, fewer gets

Each tool's store is filled with N small entries (a dict of ~100 pickled bytes under the key
``"entry:<i>"``), through ``Cache(directory, memory_limit=1).set`` for afml-cache and
``diskcache.Cache.set`` for diskcache, growing one store from one N to the next. At each N, a
fresh reader (``Cache(directory, memory_limit=1)``: every hit comes from disk, through the whole
public ``get``: key fingerprint, file read, MAC check, unpickling) gets random existing keys,
timed one by one (wall and CPU time); the table shows p50 and p95 per N, and each over the
first N's (flat is 1.00). ``set`` of new keys at each N is timed the same way. Reads come from
the page cache, as repeated reads of a recently written cache do in practice.

The target (issue 15, goal 8): afml-cache's p50 and p95 flat (within the machine's noise) from
10^3 to 10^6 entries. Wall-clock percentiles on a shared machine are noisy: the load average is
printed in the header.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from _common import (
    filesystem_of,
    fmt_seconds,
    machine_facts,
    markdown_table,
    optional_import,
    percentile,
    print_facts,
)

AFML = "afml-cache"
VALUE = {"window": 20, "threshold": 0.01, "column": "close", "ids": list(range(8))}


@dataclass
class Point:
    """One tool at one N: (p50, p95) of wall and CPU seconds, per get and per set."""

    tool: str
    n: int
    get_wall: tuple[float, float]
    get_cpu: tuple[float, float]
    set_wall: tuple[float, float]
    set_cpu: tuple[float, float]
    fill_seconds: float


def p50_p95(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 50), percentile(samples, 95)


@dataclass
class Tool:
    name: str
    set: Callable[[str, Any], object]
    # A fresh reader per N: nothing a reader kept from earlier reads helps it.
    reader: Callable[[], Callable[[str], Any]]


def timed_each(fn: Callable[[str], object], keys: list[str]) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each ``fn(key)``, timed one by one, with the garbage collector
    off. CPU time (this thread's) stays meaningful when other work shares the machine."""
    wall, cpu = [], []
    gc.collect()
    gc.disable()
    try:
        for key in keys:
            cpu_start = time.thread_time()
            start = time.perf_counter()
            fn(key)
            wall.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - cpu_start)
    finally:
        gc.enable()
    return wall, cpu


def tools(directory: str) -> list[Tool]:
    import afml_cache

    found = []
    writer = afml_cache.Cache(f"{directory}/afml", memory_limit=1)
    found.append(
        Tool(
            AFML,
            writer.set,
            lambda: afml_cache.Cache(f"{directory}/afml", memory_limit=1).get,
        )
    )
    if (diskcache := optional_import("diskcache")) is not None:
        dc = diskcache.Cache(f"{directory}/diskcache")
        found.append(
            Tool(
                "diskcache",
                dc.set,
                lambda: diskcache.Cache(f"{directory}/diskcache").get,
            )
        )
    return found


def measure(tool: Tool, ns: list[int], gets: int, rng: np.random.Generator) -> list[Point]:
    points = []
    filled = 0
    for n in ns:
        print(f"  {tool.name}: filling to {n:,} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        for i in range(filled, n):
            tool.set(f"entry:{i}", VALUE)
        fill_seconds = (time.perf_counter() - start) / (n - filled)
        filled = n
        get = tool.reader()
        keys = [f"entry:{i}" for i in rng.integers(0, n, gets)]
        if get(keys[0]) != VALUE:
            raise SystemExit(f"{tool.name}: a get returned something other than what was set")
        timed_each(get, keys[: gets // 10])  # warm-up: the reader's first calls
        get_wall, get_cpu = timed_each(get, keys)
        # New keys, beyond the N being measured: the next N's fill continues after them.
        new = [f"entry:{i}" for i in range(n, n + gets // 4)]
        set_wall, set_cpu = timed_each(lambda key: tool.set(key, VALUE), new)
        filled += len(new)
        points.append(
            Point(
                tool.name,
                n,
                p50_p95(get_wall),
                p50_p95(get_cpu),
                p50_p95(set_wall),
                p50_p95(set_cpu),
                fill_seconds,
            )
        )
    return points


def table(points: list[Point]) -> str:
    first = {p.tool: p for p in reversed(points)}  # each tool's smallest N

    def pair(times: tuple[float, float]) -> str:
        return f"{fmt_seconds(times[0])} / {fmt_seconds(times[1])}"

    def flat(times: tuple[float, float], base: tuple[float, float]) -> str:
        return f"{times[0] / base[0]:.2f} / {times[1] / base[1]:.2f}"

    rows = []
    for p in points:
        base = first[p.tool]
        rows.append(
            [
                p.tool,
                f"{p.n:,}",
                pair(p.get_wall),
                flat(p.get_wall, base.get_wall),
                pair(p.get_cpu),
                flat(p.get_cpu, base.get_cpu),
                pair(p.set_wall),
                pair(p.set_cpu),
                fmt_seconds(p.fill_seconds),
            ]
        )
    headers = [
        "tool",
        "entries",
        "get p50 / p95",
        "vs first N",
        "get CPU p50 / p95",
        "vs first N",
        "set p50 / p95 (new key)",
        "set CPU p50 / p95",
        "fill, per entry",
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also 1,000,000 entries")
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 entries only")
    parser.add_argument("--gets", type=int, default=None, help="timed gets per N")
    parser.add_argument(
        "--directory", default=None, help="where to make the stores (default: TMPDIR)"
    )
    args = parser.parse_args(argv)
    ns = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    if args.full:
        ns.append(1_000_000)
    gets = args.gets or (1_000 if args.quick else 5_000)
    directory = tempfile.mkdtemp(prefix="afml-bench-scale-", dir=args.directory)
    print("# afml-cache: get latency against entries in the store\n")
    facts = machine_facts(["afml_cache", "diskcache"])
    facts["cache directories"] = f"{directory}, on {filesystem_of(directory)}"
    print_facts(facts)
    points: list[Point] = []
    try:
        rng = np.random.default_rng(7)
        for tool in tools(directory):
            points.extend(measure(tool, ns, gets, rng))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(table(points))
    print(
        f"\n{gets:,} random gets of existing keys and {gets // 4:,} sets of new keys per N, "
        "each timed alone; afml-cache reads from disk (memory_limit=1), with key fingerprint, "
        "MAC check and unpickling; diskcache from its SQLite database (it keeps small values "
        "inline). CPU: the calling thread's CPU time, which other load on the machine does not "
        "inflate as much as wall time."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
