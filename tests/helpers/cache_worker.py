"""Worker processes for the cache reliability tests, run as ``python cache_worker.py MODE ...``.

The values a worker writes describe themselves (which key, which writer or version), and the
functions that build them are imported by the tests too, so a reader can tell exactly which
written value it got back, or that it got something nobody wrote.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from afml_cache import Cache

# --- the SIGKILLed writer ------------------------------------------------------------------------


def versioned_value(k: int, version: int) -> tuple[int, int, np.ndarray]:
    """The value of key ``k`` at ``version``: 80 KB to 1.7 MB of incompressible int64s, so it
    goes out of band, through the codec, and takes long enough to write to be killed mid-way."""
    n = 10_000 + (k * 7_919 + version * 104_729) % 200_000
    data = np.random.default_rng([k, version]).integers(0, 2**62, size=n, dtype=np.int64)
    return (k, version, data)


def writer_key(k: int) -> str:
    return f"key-{k}"


def run_writer(directory: str, keys: int, versions: int) -> None:
    """Sets every key to each of its versions in turn, forever (until killed)."""
    values = {(k, v): versioned_value(k, v) for k in range(keys) for v in range(versions)}
    cache = Cache(directory, size_limit="1GB")
    print("ready", flush=True)
    for round_ in itertools.count():
        for k in range(keys):
            cache.set(writer_key(k), values[k, (round_ + k) % versions])


def overwritten_value(i: int, padding: int) -> object:
    """The ``i``-th value of the overwritten key: ``i`` itself, or with ``padding`` bytes beside
    it (enough to put the entry in a file of its own instead of a pack)."""
    return (i, b"x" * padding) if padding else i


def run_overwriter(directory: str, count: int, padding: int) -> None:
    """Overwrites one key ``count`` times with values 0, 1, 2, ...: it always has an entry."""
    cache = Cache(directory)
    print("ready", flush=True)
    for i in range(count):
        cache.set("always", overwritten_value(i, padding))


# --- many processes, mixed operations ------------------------------------------------------------


def mixed_value(key: int, writer: int, seq: int) -> tuple[int, int, int, np.ndarray]:
    """1 KB to 20 KB of random bytes, determined by who wrote it for which key, and when."""
    rng = np.random.default_rng([key, writer, seq])
    size = int(rng.integers(1_000, 20_001))
    return (key, writer, seq, rng.integers(0, 256, size=size, dtype=np.uint8))


def check_mixed_value(key: int, got: object) -> str | None:
    """None when ``got`` is exactly a value some writer wrote for ``key``, else what is wrong."""
    if not (isinstance(got, tuple) and len(got) == 4):
        return f"key {key}: not a written value: {type(got).__name__}"
    got_key, writer, seq, data = got
    if got_key != key:
        return f"key {key}: got the value written for key {got_key}"
    expected = mixed_value(key, writer, seq)[3]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == expected.dtype
        and np.array_equal(data, expected)
    ):
        return f"key {key}: the bytes of writer {writer}'s value #{seq} differ"
    return None


def run_mixed(directory: str, writer: int, operations: int, keys: int, size_limit: int) -> None:
    cache = Cache(directory, size_limit=size_limit)
    rng = np.random.default_rng([writer, 2024])
    counts = {"gets": 0, "sets": 0, "deletes": 0, "found": 0, "not_stored": 0}
    problems = []
    for seq in range(operations):
        key = int(rng.integers(0, keys))
        op = rng.random()
        if op < 0.5:
            counts["gets"] += 1
            got = cache.get(key)
            if got is not None:
                counts["found"] += 1
                problem = check_mixed_value(key, got)
                if problem:
                    problems.append(problem)
        elif op < 0.9:
            counts["sets"] += 1
            if not cache.set(key, mixed_value(key, writer, seq)):
                counts["not_stored"] += 1
        else:
            counts["deletes"] += 1
            cache.delete(key)
    print(json.dumps({"counts": counts, "problems": problems[:20]}), flush=True)


# --- single-flight locks ---------------------------------------------------------------------


def run_lock_counter(directory: str, counter_file: str, rounds: int) -> None:
    """Read-modify-write of a counter file under the key's lock: lost updates mean no exclusion."""
    cache = Cache(directory)
    path = Path(counter_file)
    for _ in range(rounds):
        with cache.lock("counter", timeout=60) as held:
            if not held:
                raise SystemExit("lock not acquired within 60 s")
            value = int(path.read_text() or 0)
            time.sleep(0.002)  # widen the window another holder would need to slip in
            path.write_text(str(value + 1))


def run_lock_holder(directory: str) -> None:
    cache = Cache(directory)
    with cache.lock("held", timeout=5) as held:
        print("locked" if held else "not-locked", flush=True)
        time.sleep(600)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "writer":
        run_writer(args[0], int(args[1]), int(args[2]))
    elif mode == "overwrite":
        run_overwriter(args[0], int(args[1]), int(args[2]))
    elif mode == "mixed":
        run_mixed(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
    elif mode == "lock-counter":
        run_lock_counter(args[0], args[1], int(args[2]))
    elif mode == "lock-holder":
        run_lock_holder(args[0])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
