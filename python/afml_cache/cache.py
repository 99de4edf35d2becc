"""`Cache`: values on disk keyed by the content of their keys, with a memory tier in front.

Values are pickled (protocol 5) with their large buffers (numpy arrays, DataFrame columns, Arrow
buffers) kept out of band: the Rust store compresses those in parallel and restores them into
fresh writable buffers, so a hit costs little more than reading the file. The disk store does the
heavy lifting (atomic writes, MAC checks, eviction, shared statistics); this module binds keys,
pickles, and keeps the memory tier.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import copyreg
import functools
import io
import json
import logging
import math
import multiprocessing
import multiprocessing.util
import numbers
import os
import pickle
import queue
import re
import struct
import tarfile
import threading
import time
import warnings
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afml_cache._core import KeyLock, StagedImport, Store, fingerprint
from afml_cache.errors import CacheError, CacheWarning, StoreError
from afml_cache.progress import progress, progress_callback

__all__ = [
    "COMPRESSIONS",
    "Cache",
    "check_compression",
    "check_ttl",
    "default_directory",
    "parse_size",
]

COMPRESSIONS = ("none", "fast", "default")
# Buffers smaller than this stay inside the pickle stream: framing and compressing them separately
# costs more than it saves.
_IN_BAND_LIMIT = 64 * 1024
# Starts a stored stream whose buffers repeat (see _serialize).
_REPEATS_MAGIC = b"AFMLREP1"
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# The store counts bytes in 64 bits; no disk comes near this.
_MAX_SIZE = 2**63 - 1
_ARCHIVE_FORMAT = "afml-cache export v1"
# The largest manifest.json an import reads (export writes a few hundred bytes).
_MANIFEST_LIMIT = 64 * 1024
# Values up to this size are kept in the memory tier as soon as they are written.
_REMEMBER_ON_SET = 8 * 1024 * 1024
# Values with this many bytes of buffers are written behind when the caller asks (set_digest).
_WRITE_BEHIND_MIN = 1024 * 1024
_log = logging.getLogger("afml_cache")
# A library's logger stays silent until the application configures logging (a user who does
# sees every store failure at WARNING); users get each failure once through `warnings` instead.
_log.addHandler(logging.NullHandler())


def parse_size(size: int | str, name: str = "size") -> int:
    """Bytes from an int or a string like ``"500MB"``, ``"2GB"``, ``"1.5GiB"`` (KB = 1024 B)."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"{name} must be a number of bytes or a string like '500MB', got {size!r}")
    if isinstance(size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", size.upper())
        if match is None:
            raise ValueError(
                f"{name}={size!r} is not a size; write it like 500MB, 2GB or 1.5GiB, or give bytes"
            )
        size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"{name} must be positive, got {size}")
    if size > _MAX_SIZE:
        raise ValueError(f"{name}={size!r} is more than any disk holds; give at most 8 EiB")
    return size


def check_ttl(ttl: Any) -> float | None:
    """``ttl`` in seconds, or None (the entry stays until it is evicted or removed).

    Refused: nan and inf (they would mean "never" while looking like a time), bools (``True``
    would mean one second), strings, zero and negative numbers.
    """
    if ttl is None:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, numbers.Real)
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise ValueError(
            f"ttl={ttl!r} is not a time to live; give a positive number of seconds (a finite "
            "int or float), or None to keep entries until they are evicted"
        )
    return float(ttl)


def check_compression(compression: Any) -> str:
    """``compression`` if it is one of `COMPRESSIONS`."""
    if compression not in COMPRESSIONS:
        allowed = ", ".join(repr(c) for c in COMPRESSIONS)
        raise ValueError(f"compression={compression!r} is not a level; use one of {allowed}")
    return str(compression)


#: What an environment variable that turns something on may say.
TRUE_WORDS = ("1", "true", "yes", "on")


def default_directory() -> Path:
    """``$AFML_CACHE_DIR``, else ``$AFML_CACHE``, else ``~/.cache/afml_cache``."""
    for variable in ("AFML_CACHE_DIR", "AFML_CACHE"):
        value = os.environ.get(variable)
        if value:
            return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "afml_cache"


def _copy(buffer: Any) -> np.ndarray:
    """A private, writable copy of a buffer. numpy allocates large arrays on huge pages, which
    here makes copying 40 MB take a fifth of the time a bytes copy does (page faults dominate)."""
    return np.frombuffer(buffer, dtype=np.uint8).copy()


def _serialize(value: Any) -> tuple[bytes, list[tuple[memoryview, int]]]:
    """The pickle stream and the large out-of-band buffers (bytes, item size) of ``value``.

    A buffer the value holds twice (pandas keeps a Series' index in two objects over one array)
    is stored once: the stream then starts with the order in which ``_deserialize`` hands the
    stored buffers back to pickle.
    """
    buffers: list[tuple[memoryview, int]] = []
    order: list[int] = []
    seen: dict[tuple[int, int], int] = {}

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: leave it in the stream
            return True
        if raw.nbytes < _IN_BAND_LIMIT:
            return True
        where = (np.frombuffer(raw, dtype=np.uint8).ctypes.data, raw.nbytes)
        if where not in seen:
            seen[where] = len(buffers)
            buffers.append((raw, memoryview(buffer).itemsize))
        order.append(seen[where])
        return False

    stream = io.BytesIO()
    pickler = pickle.Pickler(stream, protocol=5, buffer_callback=out_of_band)
    pickler.dispatch_table = _DISPATCH  # type: ignore[assignment]  # typeshed: Mapping
    pickler.dump(value)
    if len(order) == len(buffers):
        return stream.getvalue(), buffers
    header = _REPEATS_MAGIC + struct.pack(f"<I{len(order)}I", len(order), *order)
    return header + stream.getvalue(), buffers


def _deserialize(stream: bytes, buffers: Sequence[Any]) -> Any:
    """The value ``_serialize`` gave ``stream`` and ``buffers`` for."""
    if not stream.startswith(_REPEATS_MAGIC):  # a pickle stream starts with b"\x80"
        return pickle.loads(stream, buffers=buffers)
    start = len(_REPEATS_MAGIC)
    (count,) = struct.unpack_from("<I", stream, start)
    order = struct.unpack_from(f"<{count}I", stream, start + 4)
    body = memoryview(stream)[start + 4 + 4 * count :]
    return pickle.loads(body, buffers=[buffers[i] for i in order])


def _reduce_ndarray(array: np.ndarray) -> Any:
    # numpy pickles datetime64 and timedelta64 arrays in-band, which copies every DatetimeIndex
    # into the stream; their int64 view goes out of band like any other array.
    contiguous = array.flags.c_contiguous or array.flags.f_contiguous
    if array.dtype.kind in "mM" and array.dtype.isnative and contiguous:
        return _datetime_array, (array.view(np.int64), array.dtype.str)
    return array.__reduce_ex__(5)


def _datetime_array(ints: np.ndarray, dtype: str) -> np.ndarray:
    return ints.view(dtype)


# Only exact ndarrays: subclasses (np.matrix, masked arrays) keep their own reductions.
_DISPATCH = {**copyreg.dispatch_table, np.ndarray: _reduce_ndarray}


@dataclass
class _Entry:
    """A value ready to store: its serialized form and the entry's header fields."""

    slot: tuple[str, str]  # (namespace, digest)
    label: Any
    stream: bytes
    buffers: list[tuple[Any, int]]  # (bytes, item size)
    expires: float | None
    compute_time: float
    protected: bool
    tags: list[str]
    time_range: tuple[int, int] | None
    metadata: str

    @property
    def nbytes(self) -> int:
        return len(self.stream) + sum(len(raw) for raw, _ in self.buffers)


# Numbers cannot change in place: the memory tier may hand one object to every hit (strings
# and bytes would be held twice, unaccounted).
_IMMUTABLE = frozenset({int, float, complex, bool, type(None)})


@dataclass
class _Remembered:
    """A value held in memory as its serialized form, never as the live object a caller got;
    once unpickled, a number (`_IMMUTABLE`) is kept too, as ``(value,)``, to spare each later
    hit the unpickling."""

    stream: bytes
    buffers: list[np.ndarray]
    mac: bytes | None  # None while the entry is being written behind
    expires: float | None
    compute_time: float
    generation: int
    nbytes: int
    immutable: tuple[Any] | None = None


class _MemoryTier:
    """Recently used values, bounded in bytes, least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, slot: tuple[str, str]) -> _Remembered | None:
        # No lock on the hot path: each OrderedDict operation is atomic under the GIL.
        found = self._items.get(slot)
        if found is not None:
            # Dropped meanwhile by another thread? suppress() would cost a tenth of a hit.
            try:  # noqa: SIM105
                self._items.move_to_end(slot)
            except KeyError:
                pass
        return found

    def put(self, slot: tuple[str, str], item: _Remembered) -> None:
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


class _Accesses:
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


class Cache:
    """A disk cache keyed by the content of its keys (any value ``fingerprint`` accepts).

    ``size_limit`` and ``memory_limit`` take bytes or strings like ``"500MB"``. When a write takes
    the directory over ``size_limit``, entries are evicted by ``eviction_policy`` (``lru``,
    ``lfu``, ``fifo``, ``size``, or ``hybrid``: keep what is expensive to recompute per byte) until
    it is under 90% of the limit; protected entries are never evicted. ``compression`` is
    ``none``, ``fast`` (lz4) or ``default`` (byte shuffle + lz4). Several processes may share one
    directory. ``namespace`` separates families of keys (the decorators use one per function).

    A directory, ``entries/`` or ``mac.key`` that another user could write (or read the key of)
    is refused with a ``CacheError`` naming the fix: whoever can write the directory can make
    this process unpickle. ``trust_group=True`` (default: ``AFML_CACHE_TRUST_GROUP=1``) accepts a
    directory its group can write, for a team cache on one machine; world-writable never.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        size_limit: int | str = "2GB",
        eviction_policy: str = "lru",
        compression: str = "default",
        memory_limit: int | str = "256MB",
        *,
        namespace: str = "default",
        trust_group: bool | None = None,
    ) -> None:
        check_compression(compression)
        # Every argument is checked before anything touches the disk.
        limit = parse_size(size_limit, "size_limit")
        self._memory = _MemoryTier(parse_size(memory_limit, "memory_limit"))
        self.directory = (
            Path(directory).expanduser() if directory is not None else default_directory()
        )
        self.compression = compression
        self.namespace = namespace
        if trust_group is None:
            trust_group = os.environ.get("AFML_CACHE_TRUST_GROUP", "").strip().lower() in TRUE_WORDS
        self._store = Store(self.directory, limit, eviction_policy, trust_group=trust_group)
        self._accesses = _Accesses()
        # Namespaces whose values stopped unpickling, warned once (shared by namespaced views).
        self._unpickle_warned: set[str] = set()
        atexit.register(_flush_at_exit, weakref.ref(self))

    def __repr__(self) -> str:
        return (
            f"Cache({str(self.directory)!r}, size_limit={self.size_limit}, "
            f"eviction_policy={self.eviction_policy!r}, namespace={self.namespace!r})"
        )

    @property
    def size_limit(self) -> int:
        return self._store.size_limit

    @property
    def eviction_policy(self) -> str:
        return self._store.eviction_policy

    @property
    def memory_limit(self) -> int:
        return self._memory.limit

    # --- values -------------------------------------------------------------------------------

    def set(
        self,
        key: Any,
        value: Any,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        protect: bool = False,
        metadata: Mapping[str, Any] | None = None,
        *,
        compute_time: float = 0.0,
        time_range: tuple[int, int] | None = None,
    ) -> bool:
        """Stores ``value`` under ``key``; False (with a warning) if it is larger than the
        whole size limit. ``ttl`` is in seconds; ``protect=True`` exempts it from eviction.

        Raises ``CacheError`` if the value cannot be pickled or the metadata is not JSON, and
        ``StoreError`` (an ``OSError``) if the disk refuses the write; entries already stored
        are never harmed.
        """
        return self.set_digest(
            fingerprint(key),
            value,
            ttl=ttl,
            tags=tags,
            protect=protect,
            metadata=metadata,
            compute_time=compute_time,
            time_range=time_range,
            label=key,
        )

    def set_digest(
        self,
        digest: str,
        value: Any,
        *,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        protect: bool = False,
        metadata: Mapping[str, Any] | None = None,
        compute_time: float = 0.0,
        time_range: tuple[int, int] | None = None,
        label: Any = None,
        behind: Callable[[Exception | None, int], None] | None = None,
    ) -> bool:
        """``set`` for a key's fingerprint (for callers that have computed it already, like the
        decorators); ``label`` is the key as shown by ``keys()`` and ``entries()``.

        With ``behind``, the outcome goes to ``behind(None, size on disk)`` or
        ``behind(error, 0)``, called exactly once, and nothing is raised. A value of a megabyte
        or more is written behind: its buffers are copied now (the caller may mutate the
        original) and the process's writer thread compresses and writes the copy, then calls
        ``behind``; a smaller value is written before this returns.
        """
        if behind is None:
            return self._write(
                self._entry(
                    digest, value, ttl, tags, protect, metadata, compute_time, time_range, label
                )
            )
        try:
            entry = self._entry(
                digest, value, ttl, tags, protect, metadata, compute_time, time_range, label
            )
            if sum(raw.nbytes for raw, _ in entry.buffers) >= _WRITE_BEHIND_MIN:
                # The copy doubles as the memory tier's, so a hit right after needs no disk.
                entry.buffers = [(_copy(raw), itemsize) for raw, itemsize in entry.buffers]
                self._remember(
                    entry.slot,
                    entry.stream,
                    [copy for copy, _ in entry.buffers],
                    None,
                    entry.expires,
                    entry.compute_time,
                    self._store.generation(),
                    copied=True,
                )
                _WRITER.submit(functools.partial(self._write_behind, entry, behind))
                return True
        except Exception as exc:
            behind(exc, 0)
            return False
        return self._write_behind(entry, behind)

    def _entry(
        self,
        digest: str,
        value: Any,
        ttl: float | None,
        tags: Iterable[str],
        protect: bool,
        metadata: Mapping[str, Any] | None,
        compute_time: float,
        time_range: tuple[int, int] | None,
        label: Any,
    ) -> _Entry:
        ttl = check_ttl(ttl)
        try:
            stream, buffers = _serialize(value)
        except Exception as exc:
            raise CacheError(
                f"cannot store a {type(value).__qualname__} under {_describe(label)}: it cannot "
                f"be pickled ({exc}); store something picklable"
            ) from exc
        return _Entry(
            slot=(self.namespace, digest),
            label=label,
            stream=stream,
            buffers=buffers,
            expires=time.time() + ttl if ttl is not None else None,
            compute_time=float(compute_time),
            protected=bool(protect),
            tags=[tags] if isinstance(tags, str) else list(tags),
            time_range=time_range,
            metadata=_metadata_text(label, metadata),
        )

    def _put(self, entry: _Entry) -> tuple[bool, int, bytes, int]:
        """Writes an entry: (stored, size on disk, MAC, the generation before the write)."""
        self._flush_accesses()  # the write may evict: let it see every recent hit
        generation = self._store.generation()
        stored, size, mac = self._store.put(
            *entry.slot,
            entry.stream,
            entry.buffers,
            compression=self.compression,
            expires=entry.expires,
            compute_time=entry.compute_time,
            protected=entry.protected,
            tags=entry.tags,
            time_range=entry.time_range,
            metadata=entry.metadata,
        )
        return stored, size, mac, generation

    def _keep(self, entry: _Entry, mac: bytes, generation: int) -> None:
        """Remembers a value just written, unless it is large: copying it would cost the write
        a tenth of its time, and the first read remembers it instead."""
        if entry.nbytes <= _REMEMBER_ON_SET:
            raws = [raw for raw, _ in entry.buffers]
            self._remember(
                entry.slot, entry.stream, raws, mac, entry.expires, entry.compute_time, generation
            )
        else:
            self._memory.drop(entry.slot)

    def _write(self, entry: _Entry) -> bool:
        stored, size, mac, generation = self._put(entry)
        if not stored:
            self._memory.drop(entry.slot)
            warnings.warn(
                f"afml_cache: the value for {_describe(entry.label)} takes {size:,} bytes on "
                f"disk, more than the whole size_limit ({self.size_limit:,} bytes), so it was "
                "not stored",
                CacheWarning,
                stacklevel=3,
            )
            return False
        self._keep(entry, mac, generation)
        return True

    def _write_behind(self, entry: _Entry, behind: Callable[[Exception | None, int], None]) -> bool:
        """Writes an entry for ``set_digest(behind=...)`` (on the writer thread if its buffers
        were copied) and reports the outcome to ``behind``."""
        error: Exception | None = None
        size = 0
        try:
            stored, size, mac, generation = self._put(entry)
            if not stored:
                error = CacheError(
                    f"the value takes {size:,} bytes on disk, more than the whole size_limit "
                    f"({self.size_limit:,} bytes)"
                )
            else:
                remembered = self._memory.get(entry.slot)
                if remembered is not None and remembered.stream is entry.stream:
                    remembered.mac = mac  # written behind: from now on checked against the file
                else:
                    self._keep(entry, mac, generation)
        except Exception as exc:  # reported through behind(), never lost on the writer thread
            error = exc
        if error is not None:
            self._memory.drop(entry.slot)
        behind(error, 0 if error is not None else size)
        return error is None

    def get(self, key: Any, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``. Each call returns a fresh object:
        mutating it never changes what later calls return."""
        found, value, _ = self.lookup(fingerprint(key))
        return value if found else default

    def lookup(self, digest: str) -> tuple[bool, Any, float]:
        """``(found, value, compute_time)`` for a key's fingerprint (for callers that have
        computed it already, like the decorators)."""
        slot = (self.namespace, digest)
        remembered = self._memory.get(slot)
        if remembered is not None and self._still_current(slot, remembered):
            if remembered.immutable is not None:
                value = remembered.immutable[0]
            else:
                try:
                    value = _deserialize(remembered.stream, list(map(_copy, remembered.buffers)))
                except Exception as exc:
                    self._drop_unusable(digest, exc)
                    return False, None, 0.0
                if type(value) in _IMMUTABLE:
                    remembered.immutable = (value,)
            self._store.count_hit()
            if self._accesses.note(slot):
                self._flush_accesses()
            return True, value, remembered.compute_time
        # Read before the lookup: a change made meanwhile by another process must make this
        # memory copy look stale, not current.
        generation = self._store.generation()
        loaded = self._store.get(self.namespace, digest)
        if loaded is None:
            return False, None, 0.0
        stream, buffers, mac, expires, compute_time = loaded
        self._remember(slot, stream, buffers, mac, expires, compute_time, generation)
        try:
            return True, _deserialize(stream, buffers), compute_time
        except Exception as exc:
            self._drop_unusable(digest, exc)
            return False, None, 0.0

    def _drop_unusable(self, digest: str, error: Exception) -> None:
        """Removes an entry whose value no longer unpickles, from memory and disk alike. The
        bytes are intact (the MAC verified) but the code they refer to changed, e.g. a class was
        renamed: the entry is useless, so it goes, and the lookup is a miss."""
        self.delete_digest(digest)
        message = (
            f"afml_cache: removed an entry of {self.namespace!r} whose value no longer "
            f"unpickles ({type(error).__name__}: {error}); it is computed again. A class or "
            "function the value refers to was probably renamed or moved"
        )
        _log.warning("%s (entry %s)", message, digest)
        if self.namespace not in self._unpickle_warned:
            self._unpickle_warned.add(self.namespace)
            warnings.warn(message, CacheWarning, stacklevel=4)

    def _remember(
        self,
        slot: tuple[str, str],
        stream: bytes,
        buffers: Sequence[Any],
        mac: bytes | None,
        expires: float | None,
        compute_time: float,
        generation: int,
        *,
        copied: bool = False,
    ) -> None:
        """Keeps a private copy of a value's serialized form, if it fits in the memory tier (the
        caller's buffers may be mutated later; copying what cannot be kept would be wasted).
        ``copied``: the buffers are private copies already. ``mac`` is None while the entry is
        being written behind."""
        nbytes = len(stream) + sum(len(b) for b in buffers)
        if nbytes > self._memory.limit:
            self._memory.drop(slot)
            return
        copies = list(buffers) if copied else [_copy(b) for b in buffers]
        remembered = _Remembered(stream, copies, mac, expires, compute_time, generation, nbytes)
        self._memory.put(slot, remembered)

    def _flush_accesses(self) -> None:
        for (namespace, digest), (hits, last_ns) in self._accesses.drain().items():
            self._store.record_access(namespace, digest, hits, last_ns)

    def _still_current(self, slot: tuple[str, str], remembered: _Remembered) -> bool:
        if remembered.expires is not None and remembered.expires <= time.time():
            self._memory.drop(slot)
            return False
        generation = self._store.generation()
        if generation == remembered.generation:
            return True  # nothing in the directory changed since this copy was made
        if self._store.current_mac(*slot) == remembered.mac:
            remembered.generation = generation
            return True
        self._memory.drop(slot)
        return False

    def generation(self) -> int:
        """A number that changes whenever any entry of the directory changes, in any process:
        what was read from this cache at generation g is current while this still returns g."""
        return self._store.generation()

    def namespaced(self, namespace: str, compression: str | None = None) -> Cache:
        """A view of this cache for another namespace, sharing its directory, memory tier and
        limits (the decorators keep one namespace per function); ``compression`` (None: this
        cache's) is the level of the entries the view writes."""
        view = copy.copy(self)
        view.namespace = namespace
        if compression is not None:
            view.compression = check_compression(compression)
        return view

    def __contains__(self, key: Any) -> bool:
        _WRITER.flush()
        return self._store.contains(self.namespace, fingerprint(key))

    def __getitem__(self, key: Any) -> Any:
        found, value, _ = self.lookup(fingerprint(key))
        if not found:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Any) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def delete(self, key: Any) -> bool:
        """Removes the entry for ``key``; False if there was none."""
        return self.delete_digest(fingerprint(key))

    def delete_digest(self, digest: str) -> bool:
        _WRITER.flush()  # a pending write must not bring the entry back
        self._memory.drop((self.namespace, digest))
        return self._store.delete(self.namespace, digest)

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """The stored values of those ``keys`` that are present, as ``{key: value}``."""
        missing = object()
        found = {}
        for key in keys:
            value = self.get(key, missing)
            if value is not missing:
                found[key] = value
        return found

    def set_many(
        self,
        items: Mapping[Any, Any] | Iterable[tuple[Any, Any]],
        ttl: float | None = None,
        tags: Iterable[str] = (),
    ) -> int:
        """Stores every ``(key, value)``; returns how many were stored."""
        check_ttl(ttl)  # refused before anything is stored
        pairs = items.items() if isinstance(items, Mapping) else items
        tags = list(tags)
        return sum(self.set(key, value, ttl=ttl, tags=tags) for key, value in pairs)

    def touch(self, key: Any, ttl: float | None = None) -> bool:
        """Gives an entry a new time to live (``None``: never expires); False if absent."""
        ttl = check_ttl(ttl)
        digest = fingerprint(key)
        expires = time.time() + ttl if ttl is not None else None
        _WRITER.flush()
        self._memory.drop((self.namespace, digest))
        return self._store.touch(self.namespace, digest, expires)

    def lock(self, key: Any, timeout: float = 60.0) -> contextlib.AbstractContextManager[bool]:
        """The single-flight lock of ``key``: ``with cache.lock(key) as held:`` waits up to
        ``timeout`` seconds while another thread or process holds it, then enters with ``held``
        True, or False if it is still held (compute anyway, or give up). A lock whose holder
        died is free at once."""
        return self.lock_digest(fingerprint(key), timeout)

    def lock_digest(
        self, digest: str, timeout: float = 60.0
    ) -> contextlib.AbstractContextManager[bool]:
        """``lock`` for a key's fingerprint."""
        return _held(self.acquire_digest(digest, timeout))

    def acquire_digest(self, digest: str, timeout: float = 60.0) -> KeyLock | None:
        """The key's lock, held until its ``release()`` (or None if still held elsewhere after
        ``timeout`` seconds), for callers that hand it on, like the decorators."""
        return self._store.lock(self.namespace, digest, timeout)

    # --- many entries -------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every entry in this namespace, without loading values: key (the original
        key when it was a str or int, else None), digest, size (bytes on disk), value_size,
        created, expires, last_access, hits, compute_time, tags, protected, time_range, metadata,
        compression."""
        _WRITER.flush()
        self._flush_accesses()
        found = []
        for raw in self._store.scan(self.namespace):
            if raw["namespace"] != self.namespace:
                continue
            described = json.loads(raw.pop("metadata") or "{}")
            raw["digest"] = raw.pop("key")
            raw["key"] = described.get("key")
            raw["metadata"] = described.get("metadata")
            raw["path"] = str(raw["path"])
            found.append(raw)
        return found

    def keys(self) -> list[Any]:
        """The keys of this namespace: the original key where it was a str or int, else its
        fingerprint."""
        return [e["key"] if e["key"] is not None else e["digest"] for e in self.entries()]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.entries())

    def invalidate_by_tag(self, tag: str) -> int:
        """Removes the entries carrying ``tag``; returns how many."""
        return self._remove(e for e in self.entries() if tag in e["tags"])

    def invalidate_by_pattern(self, pattern: str | re.Pattern[str]) -> int:
        """Removes the entries whose str key matches ``pattern`` (``re.search``); returns how
        many. Entries stored under keys that are not strings are never matched."""
        regex = re.compile(pattern)
        return self._remove(
            e for e in self.entries() if isinstance(e["key"], str) and regex.search(e["key"])
        )

    def _remove(self, entries: Iterable[dict[str, Any]]) -> int:
        return sum(self.delete_digest(e["digest"]) for e in list(entries))

    def expire(self) -> int:
        """Removes expired entries (of every namespace); returns how many."""
        _WRITER.flush()
        self._memory.clear()
        return self._store.expire()

    def clear(self) -> int:
        """Removes every entry of every namespace in the directory; returns how many."""
        _WRITER.flush()  # a value pending behind must not reappear after the clear
        self._memory.clear()
        return self._store.clear()

    def stats(self) -> dict[str, int]:
        """Counters shared by every process using the directory: hits, misses, sets, deletes,
        evictions, bytes (on disk), count (entries); plus this process's memory tier."""
        _WRITER.flush()
        counts = dict(self._store.stats())
        counts["memory_bytes"] = self._memory.nbytes
        counts["memory_count"] = len(self._memory)
        return counts

    def volume(self) -> int:
        """Bytes of entries on disk."""
        _WRITER.flush()
        return int(self._store.stats()["bytes"])

    def check(self, fix: bool = False) -> list[dict[str, Any]]:
        """Verifies every entry (MAC, framing, location) and reports problems as dicts with
        ``path``, ``problem`` and ``fixed``. With ``fix=True`` bad entries and abandoned temp
        files are removed and the shared size counters are rebuilt from the files."""
        _WRITER.flush()
        if fix:
            self._memory.clear()
        problems = self._store.check(fix, progress_callback("check"))
        return [dict(p, path=str(p["path"])) for p in problems]

    # --- archives -----------------------------------------------------------------------------

    def export(self, path: str | os.PathLike[str], *, every_namespace: bool = False) -> int:
        """Writes every entry of this namespace (of the whole directory with
        ``every_namespace=True``) into one archive file; returns how many."""
        _WRITER.flush()
        archive_key = os.urandom(32)
        self._flush_accesses()
        entries = [
            e
            for e in self._store.scan(None if every_namespace else self.namespace)
            if every_namespace or e["namespace"] == self.namespace  # shortened names can share
        ]
        count = 0
        with tarfile.open(path, "w") as archive:
            manifest = {"format": _ARCHIVE_FORMAT, "key": archive_key.hex(), "count": len(entries)}
            _add_member(archive, "manifest.json", json.dumps(manifest).encode())
            for entry in progress(entries, "export"):
                sealed = self._store.export_entry(entry["namespace"], entry["key"], archive_key)
                if sealed is not None:  # None: removed by another process meanwhile
                    _add_member(archive, f"entries/{count:09d}.afc", sealed)
                    count += 1
        return count

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Adds the entries of an archive written by ``export``; returns how many.

        All or nothing: each entry streams (in bounded memory, whatever its size) into a temp
        file beside its place while it is checked against the archive's key and sealed with this
        cache's; only once every entry has passed are they moved into place. A damaged entry, a
        member that is not a plain file (a link) or a manifest without a key raise
        ``CacheError`` naming it, and nothing is imported.
        """
        try:
            with tarfile.open(path, "r") as archive:
                staged = self._stage_archive(path, archive)
        except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
            # Not a tar archive, damaged between members, or this cache's disk failed.
            raise CacheError(f"could not import {path}: {exc}; nothing was imported") from None
        for entry in staged:
            entry.commit()
        self._memory.clear()
        return len(staged)

    def _stage_archive(
        self, path: str | os.PathLike[str], archive: tarfile.TarFile
    ) -> list[StagedImport]:
        """Every entry of an archive, verified and staged; after a failure none stays staged."""
        staged: list[StagedImport] = []
        try:
            members = archive.getmembers()
            for member in members:
                if not member.isfile():
                    raise CacheError(
                        f"could not import {path}: its member {member.name} is "
                        f"{_member_kind(member)}, not a file (export writes only files); "
                        "nothing was imported"
                    )
            archive_key = _archive_key(path, archive, members)
            entries = [m for m in members if m.name.startswith("entries/")]
            for member in progress(entries, "import"):
                staged.append(self._stage_member(path, archive, member, archive_key))
        except BaseException:
            for entry in staged:
                entry.discard()
            raise
        return staged

    def _stage_member(
        self,
        path: str | os.PathLike[str],
        archive: tarfile.TarFile,
        member: tarfile.TarInfo,
        archive_key: bytes,
    ) -> StagedImport:
        try:
            return self._store.stage_import(archive.extractfile(member), archive_key)
        except StoreError:
            raise  # this cache's disk failed, not the archive; the message names the file
        except (CacheError, OSError, EOFError, tarfile.TarError, zlib.error) as exc:
            raise CacheError(
                f"could not import {path}: its member {member.name} is damaged ({exc}); "
                "nothing was imported"
            ) from None


class _Writer:
    """The process's writer thread for values written behind (``set_digest(behind=...)``):
    jobs run one at a time, in order. ``flush`` waits for every job submitted so far; it runs at
    exit, before listings, and at the end of multiprocessing workers (which skip atexit)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="afml-cache-writer", daemon=True
                )
                self._thread.start()
                if multiprocessing.parent_process() is not None:
                    # A multiprocessing child leaves through os._exit: atexit never runs there.
                    multiprocessing.util.Finalize(None, self.flush, exitpriority=100)
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # jobs report their own failures; this is a last resort
                _log.exception("afml_cache: a background write failed")
            finally:
                self._jobs.task_done()

    def flush(self) -> None:
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._jobs.join()

    def after_fork(self) -> None:
        """In a forked child: the parent's jobs and thread are the parent's (a job's lock, held
        through an inherited descriptor, must not be released here)."""
        self._jobs = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()


_WRITER = _Writer()
atexit.register(_WRITER.flush)
os.register_at_fork(after_in_child=_WRITER.after_fork)


def flush_writes() -> None:
    """Waits until every value this process wrote behind is on disk."""
    _WRITER.flush()


def _flush_at_exit(ref: weakref.ReferenceType[Cache]) -> None:
    cache = ref()
    if cache is not None:
        with contextlib.suppress(Exception):  # exiting: the counters are only a hint
            cache._flush_accesses()


def _metadata_text(key: Any, metadata: Mapping[str, Any] | None) -> str:
    described: dict[str, Any] = {}
    if type(key) in (str, int):
        described["key"] = key
    if metadata is not None:
        described["metadata"] = dict(metadata)
    try:
        return json.dumps(described)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"metadata must be JSON-serialisable (str keys, plain values): {exc}"
        ) from None


def _describe(key: Any) -> str:
    if key is None:  # stored by fingerprint alone (the decorators)
        return "its key"
    return f"key {key!r}" if type(key) in (str, int) else f"a {type(key).__qualname__} key"


@contextlib.contextmanager
def _held(lock: Any) -> Iterator[bool]:
    try:
        yield lock is not None
    finally:
        if lock is not None:
            lock.release()


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname}"
    if member.islnk():
        return f"a hard link to {member.linkname}"
    return "a directory" if member.isdir() else "a device, fifo or other special file"


def _archive_key(
    path: str | os.PathLike[str], archive: tarfile.TarFile, members: list[tarfile.TarInfo]
) -> bytes:
    """The key an archive's entries are sealed with, from its manifest."""
    manifest = next((m for m in members if m.name == "manifest.json"), None)
    if manifest is None:
        raise CacheError(
            f"could not import {path}: it is not an afml-cache archive (no manifest.json)"
        )
    where = f"could not import {path}: its manifest.json"
    if manifest.size > _MANIFEST_LIMIT:
        raise CacheError(f"{where} takes {manifest.size:,} bytes; export writes a few hundred")
    source = archive.extractfile(manifest)
    try:
        info = json.loads(source.read() if source is not None else b"")
    except ValueError as exc:
        raise CacheError(f"{where} is not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise CacheError(f"{where} is not a JSON object")
    if info.get("format") != _ARCHIVE_FORMAT:
        raise CacheError(f"{where} names format {info.get('format')!r}, not {_ARCHIVE_FORMAT!r}")
    key = info.get("key")
    if not isinstance(key, str) or re.fullmatch(r"[0-9a-fA-F]{64}", key) is None:
        raise CacheError(
            f'{where} has no archive key (64 hex digits under "key"), so its entries cannot be '
            "verified; nothing was imported. Export the archive again"
        )
    return bytes.fromhex(key)
