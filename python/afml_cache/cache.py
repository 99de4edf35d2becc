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
import io
import json
import logging
import os
import pickle
import re
import sys
import tarfile
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afml_cache._core import Store, fingerprint
from afml_cache.errors import CacheError

__all__ = ["COMPRESSIONS", "Cache", "default_directory", "parse_size"]

COMPRESSIONS = ("none", "fast", "default")
# Buffers smaller than this stay inside the pickle stream: framing and compressing them separately
# costs more than it saves.
_IN_BAND_LIMIT = 64 * 1024
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_ARCHIVE_FORMAT = "afml-cache export v1"
# Values up to this size are kept in the memory tier as soon as they are written.
_REMEMBER_ON_SET = 8 * 1024 * 1024
_log = logging.getLogger("afml_cache")


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
    return size


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
    """The pickle stream and the large out-of-band buffers (bytes, item size) of ``value``."""
    buffers: list[tuple[memoryview, int]] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: leave it in the stream
            return True
        if raw.nbytes < _IN_BAND_LIMIT:
            return True
        buffers.append((raw, memoryview(buffer).itemsize))
        return False

    return pickle.dumps(value, protocol=5, buffer_callback=out_of_band), buffers


@dataclass
class _Remembered:
    """A value held in memory as its serialized form, never as the live object a caller got."""

    stream: bytes
    buffers: list[np.ndarray]
    mac: bytes
    expires: float | None
    compute_time: float
    generation: int
    nbytes: int


class _MemoryTier:
    """Recently used values, bounded in bytes, least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._items: OrderedDict[tuple[str, str], _Remembered] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, slot: tuple[str, str]) -> _Remembered | None:
        with self._lock:
            found = self._items.get(slot)
            if found is not None:
                self._items.move_to_end(slot)
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


class Cache:
    """A disk cache keyed by the content of its keys (any value ``fingerprint`` accepts).

    ``size_limit`` and ``memory_limit`` take bytes or strings like ``"500MB"``. When a write takes
    the directory over ``size_limit``, entries are evicted by ``eviction_policy`` (``lru``,
    ``lfu``, ``fifo``, ``size``, or ``hybrid``: keep what is expensive to recompute per byte) until
    it is under 90% of the limit; protected entries are never evicted. ``compression`` is
    ``none``, ``fast`` (lz4) or ``default`` (byte shuffle + lz4). Several processes may share one
    directory. ``namespace`` separates families of keys (the decorators use one per function).
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
    ) -> None:
        if compression not in COMPRESSIONS:
            allowed = ", ".join(repr(c) for c in COMPRESSIONS)
            raise ValueError(f"compression={compression!r} is not a level; use one of {allowed}")
        # Every argument is checked before anything touches the disk.
        limit = parse_size(size_limit, "size_limit")
        self._memory = _MemoryTier(parse_size(memory_limit, "memory_limit"))
        self.directory = (
            Path(directory).expanduser() if directory is not None else default_directory()
        )
        self.compression = compression
        self.namespace = namespace
        self._store = Store(self.directory, limit, eviction_policy)
        # Hits served from memory, not yet added to their entries' counters (which steer
        # eviction): slot -> [hits, last access ns]. Flushed in batches, before writes and
        # listings, and at exit.
        self._pending: dict[tuple[str, str], list[int]] = {}
        self._pending_since = time.monotonic()
        self._pending_lock = threading.Lock()
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
    ) -> bool:
        """``set`` for a key's fingerprint (for callers that have computed it already, like the
        decorators); ``label`` is the key as shown by ``keys()`` and ``entries()``."""
        key = label
        try:
            stream, buffers = _serialize(value)
        except Exception as exc:
            raise CacheError(
                f"cannot store a {type(value).__qualname__} under {_describe(key)}: it cannot "
                f"be pickled ({exc}); store something picklable"
            ) from exc
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl}")
        expires = time.time() + ttl if ttl is not None else None
        tags = [tags] if isinstance(tags, str) else list(tags)
        self._flush_accesses()  # the write may evict: let it see every recent hit
        generation = self._store.generation()
        stored, size, mac = self._store.put(
            self.namespace,
            digest,
            stream,
            buffers,
            compression=self.compression,
            expires=expires,
            compute_time=float(compute_time),
            protected=bool(protect),
            tags=tags,
            time_range=time_range,
            metadata=_metadata_text(key, metadata),
        )
        slot = (self.namespace, digest)
        if not stored:
            self._memory.drop(slot)
            warnings.warn(
                f"afml_cache: the value for {_describe(key)} takes {size:,} bytes on disk, more "
                f"than the whole size_limit ({self.size_limit:,} bytes), so it was not stored",
                UserWarning,
                stacklevel=2,
            )
            return False
        if len(stream) + sum(raw.nbytes for raw, _ in buffers) <= _REMEMBER_ON_SET:
            raws = [raw for raw, _ in buffers]
            self._remember(slot, stream, raws, mac, expires, float(compute_time), generation)
        else:
            # Copying a large value costs the write a tenth of its time; the first read
            # remembers it instead.
            self._memory.drop(slot)
        return True

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
            self._store.count_hit()
            self._note_access(slot)
            value = pickle.loads(remembered.stream, buffers=[_copy(b) for b in remembered.buffers])
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
            return True, pickle.loads(stream, buffers=buffers), compute_time
        except Exception as exc:
            # The bytes are intact (the MAC verified) but the code they refer to changed, e.g. a
            # class was renamed: the entry is useless, so it goes, and this is a miss.
            self.delete_digest(digest)
            _log.warning(
                "removed cache entry %s of namespace %r: its value no longer unpickles (%s)",
                digest,
                self.namespace,
                exc,
            )
            return False, None, 0.0

    def _remember(
        self,
        slot: tuple[str, str],
        stream: bytes,
        buffers: list[memoryview] | list[bytearray],
        mac: bytes,
        expires: float | None,
        compute_time: float,
        generation: int,
    ) -> None:
        """Keeps a private copy of a value's serialized form, if it fits in the memory tier (the
        caller's buffers may be mutated later; copying what cannot be kept would be wasted)."""
        nbytes = len(stream) + sum(len(b) for b in buffers)
        if nbytes > self._memory.limit:
            self._memory.drop(slot)
            return
        copies = [_copy(b) for b in buffers]
        remembered = _Remembered(stream, copies, mac, expires, compute_time, generation, nbytes)
        self._memory.put(slot, remembered)

    def _note_access(self, slot: tuple[str, str]) -> None:
        with self._pending_lock:
            counts = self._pending.setdefault(slot, [0, 0])
            counts[0] += 1
            counts[1] = time.time_ns()
            due = len(self._pending) >= 256 or time.monotonic() - self._pending_since >= 1.0
        if due:
            self._flush_accesses()

    def _flush_accesses(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
            self._pending_since = time.monotonic()
        for (namespace, digest), (hits, last_ns) in pending.items():
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

    def namespaced(self, namespace: str) -> Cache:
        """A view of this cache for another namespace, sharing its directory, memory tier and
        limits (the decorators keep one namespace per function)."""
        view = copy.copy(self)
        view.namespace = namespace
        return view

    def __contains__(self, key: Any) -> bool:
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
        pairs = items.items() if isinstance(items, Mapping) else items
        tags = list(tags)
        return sum(self.set(key, value, ttl=ttl, tags=tags) for key, value in pairs)

    def touch(self, key: Any, ttl: float | None = None) -> bool:
        """Gives an entry a new time to live (``None``: never expires); False if absent."""
        digest = fingerprint(key)
        expires = time.time() + ttl if ttl is not None else None
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
        return _held(self._store.lock(self.namespace, digest, timeout))

    # --- many entries -------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every entry in this namespace, without loading values: key (the original
        key when it was a str or int, else None), digest, size (bytes on disk), value_size,
        created, expires, last_access, hits, compute_time, tags, protected, time_range, metadata,
        compression."""
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
        self._memory.clear()
        return self._store.expire()

    def clear(self) -> int:
        """Removes every entry of every namespace in the directory; returns how many."""
        self._memory.clear()
        return self._store.clear()

    def stats(self) -> dict[str, int]:
        """Counters shared by every process using the directory: hits, misses, sets, deletes,
        evictions, bytes (on disk), count (entries); plus this process's memory tier."""
        counts = dict(self._store.stats())
        counts["memory_bytes"] = self._memory.nbytes
        counts["memory_count"] = len(self._memory)
        return counts

    def volume(self) -> int:
        """Bytes of entries on disk."""
        return int(self._store.stats()["bytes"])

    def check(self, fix: bool = False) -> list[dict[str, Any]]:
        """Verifies every entry (MAC, framing, location) and reports problems as dicts with
        ``path``, ``problem`` and ``fixed``. With ``fix=True`` bad entries and abandoned temp
        files are removed and the shared size counters are rebuilt from the files."""
        if fix:
            self._memory.clear()
        return [dict(p, path=str(p["path"])) for p in self._store.check(fix)]

    # --- archives -----------------------------------------------------------------------------

    def export(self, path: str | os.PathLike[str]) -> int:
        """Writes every entry of this namespace into one archive file; returns how many."""
        archive_key = os.urandom(32)
        entries = self.entries()
        progress = _Progress("export", len(entries))
        count = 0
        with tarfile.open(path, "w") as archive:
            manifest = {"format": _ARCHIVE_FORMAT, "key": archive_key.hex(), "count": len(entries)}
            _add_member(archive, "manifest.json", json.dumps(manifest).encode())
            for entry in entries:
                sealed = self._store.export_entry(self.namespace, entry["digest"], archive_key)
                if sealed is not None:
                    _add_member(archive, f"entries/{count:09d}.afc", sealed)
                    count += 1
                progress.step()
        progress.done()
        return count

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Adds the entries of an archive written by ``export``; returns how many. Each entry
        is verified against the archive's key before it is stored."""
        with tarfile.open(path, "r") as archive:
            manifest = _read_member(archive, "manifest.json")
            if manifest is None:
                raise CacheError(f"{path} is not an afml-cache archive (no manifest.json)")
            info = json.loads(manifest)
            if info.get("format") != _ARCHIVE_FORMAT:
                raise CacheError(
                    f"{path} has archive format {info.get('format')!r}, not {_ARCHIVE_FORMAT!r}"
                )
            archive_key = bytes.fromhex(info["key"])
            members = [m for m in archive.getmembers() if m.name.startswith("entries/")]
            progress = _Progress("import", len(members))
            for member in members:
                data = archive.extractfile(member)
                if data is None:
                    raise CacheError(f"{path}: {member.name} is not a file")
                self._store.import_entry(data.read(), archive_key)
                progress.step()
            progress.done()
        self._memory.clear()
        return len(members)


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


def _read_member(archive: tarfile.TarFile, name: str) -> bytes | None:
    try:
        member = archive.extractfile(name)
    except KeyError:
        return None
    return member.read() if member is not None else None


class _Progress:
    """A one-line progress bar on stderr for long exports and imports (after 1 s)."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total, self.done_count = what, total, 0
        self.start = time.monotonic()
        self.shown = False

    def step(self) -> None:
        self.done_count += 1
        if time.monotonic() - self.start < 1.0 or not self.total:
            return
        self.shown = True
        width = 30
        filled = width * self.done_count // self.total
        sys.stderr.write(
            f"\rafml-cache {self.what}: [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done_count}/{self.total}"
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
