"""The memory tier in front of the disk store, and the hits it serves that the disk has yet to
count."""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

# Whether sys.getrefcount counts every holder as recycle() expects: from 3.14 the interpreter
# may borrow references it does not count, and a free-threaded build splits counts. Unsure: no
# buffer is ever reused.
_COUNTS_HOLDERS = sys.version_info < (3, 14) and getattr(sys, "_is_gil_enabled", lambda: True)()


@dataclass
class Remembered:
    """A value held in memory as its serialized form, never as the live object a caller got;
    once unpickled, a number (`serialize.IMMUTABLE`) is kept too, as ``(value,)``, to spare each
    later hit the unpickling. ``shared`` is the object unpickled over ``buffers`` themselves (if
    it holds numbers and times only), handed to every ``lookup(copy=False)`` (whose callers
    only read it), sparing them the unpickling too: a frame stitched from a hundred pieces would
    rebuild a hundred frames."""

    stream: bytes
    buffers: list[np.ndarray]
    mac: bytes | None  # None while the entry is being written behind
    expires: float | None
    compute_time: float
    generation: int
    nbytes: int
    immutable: tuple[Any] | None = None
    shared: tuple[Any] | None = None


class MemoryTier:
    """Recently used values, bounded in bytes, least recently used dropped first; and spare
    buffers (at most a quarter of ``limit``), the copies of values written behind that nothing
    refers to any more, for the next copies of the same size: fresh memory costs its page
    faults, several times the copy itself."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[tuple[str, str], Remembered] = OrderedDict()
        self._lock = threading.Lock()
        self._spares: list[np.ndarray] = []  # oldest first
        self._spare_bytes = 0

    def get(self, slot: tuple[str, str]) -> Remembered | None:
        # No lock on the hot path: each OrderedDict operation is atomic under the GIL.
        found = self._items.get(slot)
        if found is not None:
            # Dropped meanwhile by another thread? suppress() would cost a tenth of a hit.
            try:  # noqa: SIM105
                self._items.move_to_end(slot)
            except KeyError:
                pass
        return found

    def put(self, slot: tuple[str, str], item: Remembered) -> None:
        with self._lock:
            self._drop_locked(slot)
            if item.nbytes > self.limit:
                return
            self._items[slot] = item
            self.nbytes += item.nbytes
            while self.nbytes > self.limit:
                _, oldest = self._items.popitem(last=False)
                self.nbytes -= oldest.nbytes

    def drop(self, slot: tuple[str, str]) -> None:
        with self._lock:
            self._drop_locked(slot)

    def _drop_locked(self, slot: tuple[str, str]) -> None:
        old = self._items.pop(slot, None)
        if old is not None:
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0
            self._spares.clear()
            self._spare_bytes = 0

    def copy(self, buffer: Any) -> np.ndarray:
        """A private, writable copy of a buffer, in a spare of its size if there is one."""
        source = np.frombuffer(buffer, dtype=np.uint8)
        with self._lock:
            found = [i for i, s in enumerate(self._spares) if s.nbytes == source.nbytes]
            spare = self._spares.pop(found[0]) if found else None
            if spare is not None:
                self._spare_bytes -= spare.nbytes
        if spare is None:
            return source.copy()
        np.copyto(spare, source)
        return spare

    def recycle(self, slot: tuple[str, str], item: Remembered) -> None:
        """Drops ``item`` (if ``slot`` still holds it) and keeps its buffers as spares, unless
        anything else still refers to it or them: a lookup reading it, or a value unpickled
        over its buffers (``lookup(copy=False)``)."""
        with self._lock:
            if self._items.get(slot) is item:
                self._drop_locked(slot)
        # The caller's name, this one and getrefcount's argument: any more is a reader.
        if not _COUNTS_HOLDERS or sys.getrefcount(item) > 3 or item.shared is not None:
            return
        buffers, item.buffers = item.buffers, []
        room = self.limit // 4
        for buffer in buffers:
            # The list, the loop's name and getrefcount's argument: any more is a view.
            if sys.getrefcount(buffer) > 3 or not buffer.flags.owndata or buffer.nbytes > room:
                continue
            with self._lock:
                self._spares.append(buffer)
                self._spare_bytes += buffer.nbytes
                while self._spare_bytes > room:
                    self._spare_bytes -= self._spares.pop(0).nbytes

    def __len__(self) -> int:
        return len(self._items)


class Accesses:
    """Hits served from memory, not yet added to their entries' counters (which steer eviction).
    Noted without a lock on the hot path (a hit lost to a race only blurs an eviction hint),
    drained in batches: before writes and listings, every 256 keys or second, and at exit.
    Shared by a cache's namespaced views."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], list[int]] = {}  # slot -> [hits, last access ns]
        self._since = time.time_ns()
        self._lock = threading.Lock()

    def note(self, slot: tuple[str, str]) -> bool:
        """Notes a hit; True when a drain is due."""
        now = time.time_ns()
        counts = self._counts.get(slot)
        if counts is None:
            self._counts[slot] = [1, now]
        else:
            counts[0] += 1
            counts[1] = now
        return len(self._counts) >= 256 or now - self._since >= 1_000_000_000

    def drain(self) -> dict[tuple[str, str], list[int]]:
        """The hits noted since the last drain: slot -> [hits, last access ns]."""
        with self._lock:
            counts, self._counts = self._counts, {}
            self._since = time.time_ns()
        return counts
