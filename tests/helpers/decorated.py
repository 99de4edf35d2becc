"""Cached functions at module level, for the decorator tests' worker processes.

Worker processes (joblib, multiprocessing with spawn or fork, plain subprocesses) import these by
name, so they must live in an importable module (``helpers.decorated`` with ``tests/`` on the
path). Globals do not cross processes, so every function counts its computations by appending a
line to the file passed as ``counter`` (an ignored argument: it is not part of the key).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

import afml_cache
from afml_cache import robust_cacheable
from afml_cache._store.entries import Entries


def mark(counter: str | os.PathLike[str], text: str) -> None:
    """Appends one line to ``counter`` (one small O_APPEND write: whole lines, even when several
    processes write at once)."""
    with open(counter, "a") as fh:
        fh.write(f"{text} pid={os.getpid()}\n")


@robust_cacheable(ignore=("counter",))
def square(x: int, counter: str) -> int:
    mark(counter, f"square {x}")
    return x * x


@robust_cacheable(ignore=("counter", "delay"))
def slow_square(x: int, counter: str, delay: float = 0.3) -> int:
    mark(counter, f"slow_square {x}")
    time.sleep(delay)
    return x * x


@robust_cacheable(ignore=("counter",))
def column_total(data: np.ndarray, counter: str) -> float:
    mark(counter, "column_total")
    return float(data.sum())


def call_together(directory: str, barrier: Any, results: Any, x: int, counter: str) -> None:
    """A process entry point: uses the cache in ``directory``, waits until every process is
    ready, then calls ``slow_square`` at the same moment as the others."""
    afml_cache.configure(directory=directory)
    barrier.wait(timeout=120)
    results.put((os.getpid(), slow_square(x, counter)))


def call_square_many(directory: str, counter: str, calls: int, distinct: int) -> None:
    """A subprocess entry point: ``calls`` calls of ``square`` over ``distinct`` arguments."""
    afml_cache.configure(directory=directory)
    for i in range(calls):
        assert square(i % distinct, counter) == (i % distinct) ** 2


@robust_cacheable(ignore=("counter",))
def big_block(seed: int, counter: str) -> np.ndarray:
    """A 4 MB result: large enough to be written behind."""
    mark(counter, f"big_block {seed}")
    return np.full(512 * 1024, float(seed))


def big_block_sum(directory: str, seed: int, counter: str, write_delay: float = 0.0) -> float:
    """A worker entry point: ``big_block`` in the cache in ``directory``; its write behind
    takes ``write_delay`` seconds longer, so the process ends while it is still in flight."""
    afml_cache.configure(directory=directory)
    if write_delay:
        put = Entries._put

        def slow_put(self: Entries, entry: Any) -> Any:
            time.sleep(write_delay)
            return put(self, entry)

        Entries._put = slow_put  # type: ignore[method-assign]
    return float(big_block(seed, counter).sum())
