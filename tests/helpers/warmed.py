"""Cached functions and a Dask worker plugin for the warming and distributed tests.

Worker processes (joblib's loky, Dask, Ray) import these by name, so they live in an importable
module (``helpers.warmed`` with ``tests/`` on the path). Each function counts its computations by
appending a line to the file passed as ``counter`` (an ignored argument: not part of the key).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import afml_cache
from afml_cache import robust_cacheable

try:
    from distributed import WorkerPlugin
except ImportError:  # the Dask tests skip without it
    WorkerPlugin = object


def computed(counter: str | os.PathLike[str]) -> list[str]:
    """The lines ``counter`` holds, sorted (``label 3 pid=...`` without the pid)."""
    path = Path(counter)
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted(line.rsplit(" pid=", 1)[0] for line in lines)


def pids(counter: str | os.PathLike[str]) -> set[int]:
    return {int(line.rsplit("pid=", 1)[1]) for line in Path(counter).read_text().splitlines()}


@robust_cacheable(ignore=("counter",))
def label(x: int, counter: str, scale: int = 1) -> int:
    """``x * x * scale``; raises ValueError for a negative ``x``."""
    with open(counter, "a") as fh:
        fh.write(f"label {x} {scale} pid={os.getpid()}\n")
    if x < 0:
        raise ValueError(f"x must not be negative, got {x}")
    return x * x * scale


def label_uncached(x: int, scale: int = 1) -> int:
    return x * x * scale


class CacheDirectory(WorkerPlugin):  # type: ignore[misc,valid-type]
    """A Dask worker plugin: the worker's decorators use ``base`` (one directory for every
    worker) or, with ``per_worker``, ``base/<worker name>`` (as if each were another machine),
    and the shared ``remote`` prefix ("": none) reached with ``environment`` (AWS_...)."""

    name = "afml-cache-directory"

    def __init__(
        self,
        base: str,
        per_worker: bool,
        remote: str = "",
        environment: dict[str, str] | None = None,
    ) -> None:
        self.base, self.per_worker = base, per_worker
        self.remote, self.environment = remote, dict(environment or {})

    def setup(self, worker: Any) -> None:
        os.environ.update(self.environment)
        directory = Path(self.base)
        if self.per_worker:
            directory = directory / str(worker.name)
        afml_cache.configure(directory=directory, remote=self.remote)
