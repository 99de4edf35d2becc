"""The memory tier in front of the disk store, and the hits it serves that the disk has yet to
count."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from afml_cache import forking


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
    """Recently used values, bounded in bytes, least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[tuple[str, str], Remembered] = OrderedDict()
        self._lock = threading.Lock()
        forking.renew_after_fork(self)

    def after_fork(self) -> None:
        """The values stay for the child to read, but those still being written behind (no
        MAC yet): the parent's writer writes them, and the child cannot tell when, or whether
        the parent cleared them since; a put cut short by the fork may have left the byte
        count off."""
        self._lock = threading.Lock()
        for slot, item in list(self._items.items()):
            if item.mac is None:
                self._items.pop(slot, None)
        self.nbytes = sum(item.nbytes for item in list(self._items.values()))

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

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, slot: tuple[str, str]) -> bool:
        """Whether ``slot`` is held, as a hint: unlike `get`, not counted as a use."""
        return slot in self._items


class Accesses:
    """Hits served from memory, not yet added to their entries' counters (which steer eviction).
    Noted without a lock on the hot path (a hit lost to a race only blurs an eviction hint),
    drained in batches: before writes and listings, every 256 keys or second, and at exit.
    Shared by a cache's namespaced views."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], list[int]] = {}  # slot -> [hits, last access ns]
        self._since = time.time_ns()
        self._lock = threading.Lock()
        forking.renew_after_fork(self)

    def after_fork(self) -> None:
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
