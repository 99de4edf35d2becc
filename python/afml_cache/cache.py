"""`Cache`: values on disk keyed by the content of their keys, with a memory tier in front.

`afml_cache._store` owns the disk store and what sits next to it (serialization with large
buffers out of band, the memory tier, the writer thread, archives); this module binds keys to
digests, checks arguments, and decides when the memory tier's copy of an entry is current.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import json
import logging
import math
import numbers
import os
import re
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afml_cache._core import fingerprint
from afml_cache._store import KeyLock, Store
from afml_cache._store.archive import import_archive, write_archive
from afml_cache._store.memory import Accesses, MemoryTier, Remembered
from afml_cache._store.serialize import IMMUTABLE, copy_buffer, serialize

# Values pickled before serialization moved to _store name their datetime arrays' rebuilder here.
from afml_cache._store.serialize import _datetime_array as _datetime_array
from afml_cache._store.serialize import deserialize as _deserialize
from afml_cache._store.writer import WRITER as _WRITER
from afml_cache._store.writer import flush_writes as flush_writes
from afml_cache.errors import CacheError, CacheWarning
from afml_cache.progress import progress_callback

__all__ = [
    "COMPRESSIONS",
    "Cache",
    "check_compression",
    "check_ttl",
    "default_directory",
    "flush_writes",
    "parse_size",
]

COMPRESSIONS = ("none", "fast", "default")
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# The store counts bytes in 64 bits; no disk comes near this.
_MAX_SIZE = 2**63 - 1
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
        self._memory = MemoryTier(parse_size(memory_limit, "memory_limit"))
        self.directory = (
            Path(directory).expanduser() if directory is not None else default_directory()
        )
        self.compression = compression
        self.namespace = namespace
        if trust_group is None:
            trust_group = os.environ.get("AFML_CACHE_TRUST_GROUP", "").strip().lower() in TRUE_WORDS
        self._store = Store(self.directory, limit, eviction_policy, trust_group=trust_group)
        # record_call(function, hit, compute_time, time_saved, latency) adds one call to the
        # shared per-function statistics; the store's own method, as it runs on every call.
        self.record_call = self._store.record_call
        self._accesses = Accesses()
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
                entry.buffers = [(copy_buffer(raw), itemsize) for raw, itemsize in entry.buffers]
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
            stream, buffers = serialize(value)
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
        self.flush_accesses()  # the write may evict: let it see every recent hit
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
                    value = _deserialize(
                        remembered.stream, list(map(copy_buffer, remembered.buffers))
                    )
                except Exception as exc:
                    self._drop_unusable(digest, exc)
                    return False, None, 0.0
                if type(value) in IMMUTABLE:
                    remembered.immutable = (value,)
            self._store.count_hit()
            if self._accesses.note(slot):
                self.flush_accesses()
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
        copies = list(buffers) if copied else [copy_buffer(b) for b in buffers]
        remembered = Remembered(stream, copies, mac, expires, compute_time, generation, nbytes)
        self._memory.put(slot, remembered)

    def flush_accesses(self) -> None:
        """Adds the hits served from memory to their entries' counters (which steer eviction)."""
        for (namespace, digest), (hits, last_ns) in self._accesses.drain().items():
            self._store.record_access(namespace, digest, hits, last_ns)

    def _still_current(self, slot: tuple[str, str], remembered: Remembered) -> bool:
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
        self.flush_accesses()
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
        return self.remove_entries(e for e in self.entries() if tag in e["tags"])

    def invalidate_by_pattern(self, pattern: str | re.Pattern[str]) -> int:
        """Removes the entries whose str key matches ``pattern`` (``re.search``); returns how
        many. Entries stored under keys that are not strings are never matched."""
        regex = re.compile(pattern)
        return self.remove_entries(
            e for e in self.entries() if isinstance(e["key"], str) and regex.search(e["key"])
        )

    def remove_entries(self, entries: Iterable[dict[str, Any]]) -> int:
        """Removes the entries (as listed by ``entries()``) of this namespace; returns how many
        were there."""
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

    def scan(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """The store's record of every entry in the directory (of ``namespace`` and any name
        shortened to the same file name, when given), without loading values: namespace, key
        (the digest), size, created, expires, last_access, hits, ... as the core reports them."""
        return self._store.scan(namespace)

    def function_stats(self) -> list[dict[str, Any]]:
        """The call statistics of every function (namespace) shared through the directory."""
        return self._store.function_stats()

    def reset_function_stats(self) -> None:
        """Sets every function's call statistics back to zero."""
        self._store.reset_function_stats()

    def sizes_by_namespace(self) -> dict[str, int]:
        """Bytes on disk of each namespace's entries."""
        return self._store.sizes_by_namespace()

    def same_store(self, other: Cache) -> bool:
        """True when ``other`` keeps its entries in this cache's directory."""
        return self._store.same_directory(other._store)

    def stats(self, *, wait_for_writes: bool = True) -> dict[str, int]:
        """Counters shared by every process using the directory: hits, misses, sets, deletes,
        evictions, bytes (on disk), count (entries); plus this process's memory tier.
        ``wait_for_writes=False`` counts now, without waiting for values written behind (a
        metrics scrape must not wait on a large write)."""
        if wait_for_writes:
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
        self.flush_accesses()
        entries = [
            e
            for e in self._store.scan(None if every_namespace else self.namespace)
            if every_namespace or e["namespace"] == self.namespace  # shortened names can share
        ]
        return write_archive(self._store, entries, path)

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Adds the entries of an archive written by ``export``; returns how many.

        All or nothing: each entry streams (in bounded memory, whatever its size) into a temp
        file beside its place while it is checked against the archive's key and sealed with this
        cache's; only once every entry has passed are they moved into place. A damaged entry, a
        member that is not a plain file (a link) or a manifest without a key raise
        ``CacheError`` naming it, and nothing is imported.
        """
        imported = import_archive(self._store, path)
        self._memory.clear()
        return imported


def _flush_at_exit(ref: weakref.ReferenceType[Cache]) -> None:
    cache = ref()
    if cache is not None:
        with contextlib.suppress(Exception):  # exiting: the counters are only a hint
            cache.flush_accesses()


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
