"""This machine at a glance: afml-cache beside joblib.Memory, diskcache and cachier.

Medians of repeats: fingerprinting a 1,000,000-row frame, storing and reading a small value and
a 100 MB array (from disk), and a decorated function's hit with scalar arguments. Peers are
optional: those not installed are left out of the table. The caches live in a temporary
directory inside --dir (default: the system's temporary directory), removed afterwards, so the
disk measured is the one --dir is on.

    python benches/bench_machine.py [--quick] [--json] [--dir PATH]

(This was ``afml-cache bench``; a harness that imports peers belongs here, not in the library.)
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import fmt_seconds, median_seconds

import afml_cache
from afml_cache import Cache
from afml_cache.demo.pipeline import synthetic_minute_bars


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller frame (200,000 rows) and array (10 MB), fewer repeats",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--dir", metavar="PATH", help="where the temporary caches go")
    args = parser.parse_args(argv)
    parent = Path(args.dir).expanduser() if args.dir else None
    if parent is not None and not parent.is_dir():
        parser.error(f"{parent} is not a directory; give an existing one with --dir")
    with tempfile.TemporaryDirectory(prefix="afml-cache-bench-", dir=parent) as directory:
        document = run_bench(Path(directory), quick=args.quick)
        afml_cache.flush_writes()  # before the directory goes
    sys.stdout.write(
        json.dumps(document, indent=2, allow_nan=False) + "\n"
        if args.json
        else _bench_text(document)
    )
    return 0


_AFML = "afml-cache"


def _bench_scalars(window: int, threshold: float, column: str) -> float:
    """The function cached in the decorated-hit case: cheap, so the time measured is the
    cache's."""
    return window * threshold + len(column)


def _optional(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _per_call(fn: Callable[[], object], loops: int, repeats: int) -> float:
    """The median over ``repeats`` of the time per call of ``loops`` calls, after a warm-up."""
    fn()
    return median_seconds(lambda: [fn() for _ in range(loops)], repeats) / loops


def run_bench(directory: Path, *, quick: bool = False) -> dict[str, Any]:
    """Measures afml-cache (and joblib, diskcache, cachier where installed) with caches in
    ``directory``; returns the machine's facts and one result per case and tool."""
    rows, megabytes, repeats, loops = (
        (200_000, 10, 3, 1_000) if quick else (1_000_000, 100, 7, 10_000)
    )
    joblib, diskcache, cachier = (_optional(n) for n in ("joblib", "diskcache", "cachier"))
    results: list[dict[str, Any]] = []

    def measure(case: str, tool: str, seconds: float, nbytes: int | None = None) -> None:
        if sys.stderr.isatty():  # progress only when a person watches
            sys.stderr.write(f"bench_machine: {case}, {tool}: {fmt_seconds(seconds)}\n")
        results.append({"case": case, "tool": tool, "median_seconds": seconds, "bytes": nbytes})

    bars = synthetic_minute_bars(rows)
    frame_bytes = int(bars.memory_usage(index=True, deep=True).sum())
    measure(
        "fingerprint_frame",
        _AFML,
        median_seconds(lambda: afml_cache.fingerprint(bars), repeats),
        frame_bytes,
    )
    if joblib is not None:
        hashed = median_seconds(lambda: joblib.hash(bars), repeats)
        measure("fingerprint_frame", "joblib.hash", hashed, frame_bytes)

    small = {"window": 20, "threshold": 0.01, "column": "close"}
    rng = np.random.default_rng(5)
    array = np.cumsum(rng.normal(0, 1e-4, megabytes * 1024 * 1024 // 8)) + 4500.0
    # A memory tier that holds nothing: reads come from the disk store, as in a new process.
    stores: dict[str, Any] = {_AFML: Cache(directory / "afml-store", memory_limit=1)}
    if diskcache is not None:
        stores["diskcache.Cache"] = diskcache.Cache(str(directory / "diskcache-store"))
    for tool, store in stores.items():
        for case, value, count in (("small", small, loops // 10), ("array", array, 1)):
            store.set(case, value)
            write = _per_call(functools.partial(store.set, case, value), count, repeats)
            measure(f"set_{case}", tool, write, _nbytes(value))
            read = _per_call(functools.partial(store.get, case), count, repeats)
            measure(f"get_{case}", tool, read, _nbytes(value))

    decorators: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
        _AFML: afml_cache.robust_cacheable(cache=Cache(directory / "afml-decorated"))
    }
    if joblib is not None:
        decorators["joblib.Memory"] = joblib.Memory(str(directory / "joblib"), verbose=0).cache
    if diskcache is not None:
        memo = diskcache.Cache(str(directory / "diskcache"))
        stores["diskcache.memoize"] = memo
        decorators["diskcache.memoize"] = memo.memoize()
    if cachier is not None:
        decorators["cachier"] = cachier.cachier(cache_dir=str(directory / "cachier"))
    for tool, decorate in decorators.items():
        cached = decorate(_bench_scalars)
        hit = _per_call(functools.partial(cached, 20, 0.01, "close"), loops, repeats)
        measure("decorated_hit_scalars", tool, hit)
    for store in stores.values():
        if hasattr(store, "close"):  # diskcache's SQLite connections
            store.close()

    order = list(_CASES)
    results.sort(key=lambda r: order.index(r["case"]))  # stable: afml-cache first in each case
    return {
        "afml_cache": afml_cache.__version__,
        "machine": _machine(directory),
        "quick": quick,
        "repeats": repeats,
        "frame_rows": rows,
        "array_bytes": int(array.nbytes),
        "results": results,
    }


def _nbytes(value: Any) -> int | None:
    return int(value.nbytes) if isinstance(value, np.ndarray) else None


def _machine(directory: Path) -> dict[str, Any]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 0
    versions = {}
    for name in ("numpy", "pandas", "joblib", "diskcache", "cachier"):
        module = sys.modules.get(name) or _optional(name)
        versions[name] = getattr(module, "__version__", None) if module is not None else None
    return {
        "cpus": cpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "directory": str(directory),
        "versions": versions,
    }


_CASES = {
    "fingerprint_frame": "fingerprint a {rows:,}-row frame",
    "set_small": "store a small dict",
    "get_small": "read a small dict (from disk)",
    "set_array": "store a {mb:,.0f} MB float64 array",
    "get_array": "read a {mb:,.0f} MB float64 array (from disk)",
    "decorated_hit_scalars": "decorated hit, f(20, 0.01, 'close')",
}


def _bench_text(document: dict[str, Any]) -> str:
    machine = document["machine"]
    installed = [f"{n} {v}" for n, v in machine["versions"].items() if v is not None]
    lines = [
        f"afml-cache {document['afml_cache']} on {machine['cpus']} CPUs, {machine['platform']}, "
        f"Python {machine['python']} ({', '.join(installed)})",
        f"caches in {machine['directory']} (removed); medians of {document['repeats']} repeats",
        "",
        f"  {'case':<44} {'tool':<18} {'median':>10} {'rate':>10} {'time vs afml':>14}",
    ]
    reference = {r["case"]: r["median_seconds"] for r in document["results"] if r["tool"] == _AFML}
    array_mb = document["array_bytes"] / 2**20
    previous = None
    for r in document["results"]:
        label = _CASES[r["case"]].format(rows=document["frame_rows"], mb=array_mb)
        if r["case"] == previous:
            label = ""
        previous = r["case"]
        rate = f"{r['bytes'] / r['median_seconds'] / 1e9:.2f} GB/s" if r["bytes"] else ""
        ratio = r["median_seconds"] / reference[r["case"]]
        versus = "" if r["tool"] == _AFML else f"{ratio:.2f}x"
        lines.append(
            f"  {label:<44} {r['tool']:<18} {fmt_seconds(r['median_seconds']):>10} {rate:>10} "
            f"{versus:>14}"
        )
    missing = [n for n in ("joblib", "diskcache", "cachier") if machine["versions"][n] is None]
    if missing:
        lines.append(f"\n(not installed, so not compared: {', '.join(missing)})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
