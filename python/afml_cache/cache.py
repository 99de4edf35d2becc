"""`Cache`: values on disk keyed by the content of their keys, with a memory tier in front.

`afml_cache._store` owns the disk store and what sits next to it: the entries by digest
(`Entries`: lookup, put, lock, delete, with the memory tier, serialization and the writer thread)
and archives. This module checks arguments and maps keys to digests over it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import numbers
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afml_cache import forking
from afml_cache._core import fingerprint
from afml_cache._store import EntryInfo, FunctionTotals, Store
from afml_cache._store.archive import import_archive, write_archive
from afml_cache._store.entries import Entries
from afml_cache._store.remote import Remote, open_remote

# Values pickled before serialization moved to _store name their datetime arrays' rebuilder here.
from afml_cache._store.serialize import _datetime_array as _datetime_array
from afml_cache._store.writer import flush_writes as flush_writes
from afml_cache.errors import CacheWarning
from afml_cache.progress import progress_callback

__all__ = [
    "COMPRESSIONS",
    "Cache",
    "CacheAddress",
    "check_compression",
    "check_ttl",
    "default_directory",
    "flush_writes",
    "parse_size",
]

COMPRESSIONS = ("none", "fast", "default", "max")
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# The store counts bytes in 64 bits; no disk comes near this.
_MAX_SIZE = 2**63 - 1
_log = logging.getLogger("afml_cache")
# A library's logger stays silent until the application configures logging (a user who does
# sees every store failure at WARNING); users get each failure once through `warnings` instead.
_log.addHandler(logging.NullHandler())


def parse_size(size: int | str, name: str = "size") -> int:
    """Bytes from an int or a string like ``"500MB"``, ``"2GB"``, ``"1.5GiB"`` (KB = 1024 B)."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"{name} must be a number of bytes or a string like '500MB', got {size!r}")
    given = size
    if isinstance(size, str):
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", size.upper())
        if match is None:
            raise ValueError(
                f"{name}={size!r} is not a size; write it like 500MB, 2GB or 1.5GiB, or give bytes"
            )
        size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"{name} must be positive, got {given!r}")
    if size > _MAX_SIZE:
        raise ValueError(f"{name}={size!r} is more than any disk holds; give at most 8 EiB")
    return size


def _check_namespace(namespace: Any) -> None:
    """A namespace a user names: a non-empty str (an empty one would be written as the name
    of "\\x00", and the two would share it). Views of the names found on disk (the command's
    clear, the server's) are not checked: an earlier version may have written one."""
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")


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
        if value and re.match(r"^[a-z][a-z0-9+.-]*://", value):
            # Read as a path it made a local folder named `s3:`: a prefix is a remote tier.
            warnings.warn(
                f"afml_cache: {variable}={value} names an object store, not a directory; set "
                f"AFML_CACHE_REMOTE={value} for a shared prefix, and {variable} to the local "
                "directory in front of it (it is left out: the default directory is used)",
                CacheWarning,
                stacklevel=2,
            )
        elif value:
            return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "afml_cache"


class Cache:
    """A disk cache keyed by the content of its keys (any value ``fingerprint`` accepts).

    ``size_limit`` and ``memory_limit`` take bytes or strings like ``"500MB"``. When a write takes
    the directory over ``size_limit``, entries are evicted by ``eviction_policy`` (``lru``,
    ``lfu``, ``fifo``, ``size``, or ``hybrid``: keep what is expensive to recompute per byte) until
    it is under 90% of the limit; protected entries are never evicted. ``compression`` is
    ``none``, ``fast`` (lz4), ``default`` (byte shuffle + lz4) or ``max`` (delta coding + byte
    shuffle + zstd: smallest, slowest). Several processes may share one directory.
    ``namespace`` separates families of keys (the decorators use one per function).

    A directory, ``entries/`` or ``mac.key`` that another user could write (or read the key of)
    is refused with a ``CacheError`` naming the fix: whoever can write the directory can make
    this process unpickle. ``trust_group=True`` (default: ``AFML_CACHE_TRUST_GROUP=1``) accepts a
    directory its group can write, for a team cache on one machine; world-writable never.

    ``remote`` (default: ``$AFML_CACHE_REMOTE``; ``""`` for none) puts a prefix of an object
    store behind the directory, shared by many machines: ``"s3://bucket/prefix"`` or a
    `Remote` (docs/store.md, "Shared store on object storage").
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
        remote: str | Remote | None = None,
    ) -> None:
        check_compression(compression)
        _check_namespace(namespace)
        # Every argument is checked before anything touches the disk.
        limit = parse_size(size_limit, "size_limit")
        memory = parse_size(memory_limit, "memory_limit")
        # Absolute: a relative directory would follow the process's os.chdir.
        self.directory = (
            Path(directory).expanduser() if directory is not None else default_directory()
        ).absolute()
        if trust_group is None:
            trust_group = os.environ.get("AFML_CACHE_TRUST_GROUP", "").strip().lower() in TRUE_WORDS
        shared = open_remote(remote)
        self._store = Store(
            self.directory, limit, eviction_policy, trust_group=trust_group, remote=shared
        )
        self._entries = Entries(self._store, memory, namespace, compression)

    @property
    def record_call(self) -> Any:
        """``record_call(function, hit, compute_time, time_saved, latency)`` adds one call to
        the shared per-function statistics (the store's, which a forked child opens anew)."""
        return self._store.record_call

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
        return self._entries.memory.limit

    @property
    def namespace(self) -> str:
        return self._entries.namespace

    @property
    def compression(self) -> str:
        """The level of the entries this cache writes."""
        return self._entries.compression

    @property
    def remote(self) -> Remote | None:
        """The prefix of an object store behind the directory, if any."""
        return self._store.remote

    @property
    def by_digest(self) -> Entries:
        """This namespace's entries by digest (lookup, put, lock, delete, touch), for callers
        that compute the digests themselves: the decorators and integrations."""
        return self._entries

    def namespaced(self, namespace: str, compression: str | None = None) -> Cache:
        """A view of this cache for another namespace, sharing its directory, memory tier and
        limits (the decorators keep one namespace per function); ``compression`` (None: this
        cache's) is the level of the entries the view writes."""
        if compression is not None:
            check_compression(compression)
        view = copy.copy(self)
        view._entries = self._entries.namespaced(namespace, compression)
        return view

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
        return self._entries.put(
            fingerprint(key),
            value,
            ttl=check_ttl(ttl),
            tags=tags,
            protect=protect,
            metadata=metadata,
            compute_time=compute_time,
            time_range=time_range,
            label=key,
            replace=True,  # a value set replaces what the key holds, on every tier
        )

    def get(self, key: Any, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``. Each call returns a fresh object:
        mutating it never changes what later calls return."""
        found, value, _ = self._entries.lookup(fingerprint(key))
        return value if found else default

    def __contains__(self, key: Any) -> bool:
        flush_writes()
        return self._store.contains(self.namespace, fingerprint(key))

    def __getitem__(self, key: Any) -> Any:
        found, value, _ = self._entries.lookup(fingerprint(key))
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
        return self._entries.delete(fingerprint(key))

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """The stored values of those ``keys`` that are present, as ``{key: value}``. Keys a
        dict cannot hold apart (``1``, ``1.0`` and ``True`` are one dict key, but three entries
        here) or at all (a DataFrame) are a ``ValueError`` or ``TypeError``: read them with
        ``get``."""
        found: dict[Any, Any] = {}
        digests: dict[Any, str] = {}
        for key in keys:
            digest = fingerprint(key)
            try:
                earlier = digests.setdefault(key, digest)
            except TypeError:
                raise TypeError(
                    f"get_many returns {{key: value}}, and a {type(key).__qualname__} key cannot "
                    "be a dict key; read it with cache.get(key)"
                ) from None
            if earlier != digest:
                other = next(k for k in digests if k == key)
                raise ValueError(
                    f"get_many returns {{key: value}}, where {other!r} and {key!r} are one dict "
                    "key, but they are two entries here; read them with cache.get(key)"
                )
            present, value, _ = self._entries.lookup(digest)
            if present:
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
        return self._entries.touch(fingerprint(key), check_ttl(ttl))

    def lock(self, key: Any, timeout: float = 60.0) -> contextlib.AbstractContextManager[bool]:
        """The single-flight lock of ``key``: ``with cache.lock(key) as held:`` waits up to
        ``timeout`` seconds while another thread or process holds it, then enters with ``held``
        True, or False if it is still held (compute anyway, or give up). A lock whose holder
        died is free at once."""
        return _held(self._entries.lock(fingerprint(key), timeout))

    def flush_accesses(self) -> None:
        """Adds the hits served from memory to their entries' counters (which steer eviction)."""
        self._entries.flush_accesses()

    def generation(self) -> int:
        """A number that changes whenever any entry of the directory changes, in any process:
        what was read from this cache at generation g is current while this still returns g."""
        return self._store.generation()

    # --- many entries -------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Metadata of every entry in this namespace, without loading values: key (the original
        key when it was a str or int, else None), digest, size (bytes on disk), value_size,
        created, expires, last_accessed, hits, compute_time, tags, protected, time_range, metadata,
        compression."""
        return self._entries.listing()

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
        return self._entries.remove(entries)

    def expire(self) -> int:
        """Removes expired entries (of every namespace); returns how many."""
        flush_writes()
        self._entries.memory.clear()
        return self._store.expire()

    def clear(self) -> int:
        """Removes every entry of every namespace in the directory; returns how many."""
        flush_writes()  # a value pending behind must not reappear after the clear
        self._entries.memory.clear()
        return self._store.clear()

    def scan(self, namespace: str | None = None) -> list[EntryInfo]:
        """The store's record of every entry in the directory (of ``namespace`` and any name
        shortened to the same file name, when given), without loading values: namespace,
        digest, path, size, created, expires, last_accessed, hits, ... (`EntryInfo`). Values
        still being written behind are waited for: a listing misses nothing this process put."""
        flush_writes()
        return self._store.scan(namespace)

    def function_stats(self) -> list[FunctionTotals]:
        """The call statistics and entry sizes of every function (namespace) of the directory
        that was called or has entries, sorted by namespace."""
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
            flush_writes()
        counts = dict(self._store.stats())
        counts["memory_bytes"] = self._entries.memory.nbytes
        counts["memory_count"] = len(self._entries.memory)
        return counts

    def volume(self) -> int:
        """Bytes of entries on disk."""
        flush_writes()
        return int(self._store.stats()["bytes"])

    def check(self, fix: bool = False) -> list[dict[str, Any]]:
        """Verifies every entry (MAC, framing, location) and reports problems as dicts with
        ``path``, ``problem`` and ``fixed``. With ``fix=True`` bad entries and abandoned temp
        files are removed and the shared size counters are rebuilt from the files."""
        flush_writes()
        if fix:
            self._entries.memory.clear()
        problems = self._store.check(fix, progress_callback("check"))
        return [dict(p, path=str(p["path"])) for p in problems]

    # --- archives -----------------------------------------------------------------------------

    def export(
        self,
        path: str | os.PathLike[str],
        *,
        every_namespace: bool = False,
        entries: Iterable[EntryInfo] | None = None,
    ) -> int:
        """Writes every entry of this namespace (of the whole directory with
        ``every_namespace=True``; or the given ``entries``, from `scan`) into one archive file;
        returns how many."""
        flush_writes()
        self.flush_accesses()
        if entries is None:
            entries = [
                e
                for e in self._store.scan(None if every_namespace else self.namespace)
                if every_namespace or e.namespace == self.namespace  # shortened names can share
            ]
        return write_archive(self._store, list(entries), path)

    def import_(self, path: str | os.PathLike[str]) -> int:
        """Adds the entries of an archive written by ``export``; returns how many.

        All or nothing: each entry streams (in bounded memory, whatever its size) into a temp
        file beside its place while it is checked against the archive's key and sealed with this
        cache's; only once every entry has passed are they moved into place. A damaged entry, a
        member that is not a plain file (a link) or a manifest without a key raise
        ``CacheError`` naming it, and nothing is imported.
        """
        imported = import_archive(self._store, path)
        self._entries.memory.clear()
        return imported


@contextlib.contextmanager
def _held(lock: Any) -> Iterator[bool]:
    try:
        yield lock is not None
    finally:
        if lock is not None:
            lock.release()


@dataclass(frozen=True)
class CacheAddress:
    """Where a `Cache` given as ``cache=`` is, and its settings: what travels with a function
    pickled by value, to open the same directory where it lands."""

    directory: str
    size_limit: int
    eviction_policy: str
    compression: str
    memory_limit: int
    remote: str  # the URL of its remote tier, "" for none

    @classmethod
    def of(cls, cache: Cache) -> CacheAddress:
        return cls(
            str(cache.directory),
            cache.size_limit,
            cache.eviction_policy,
            cache.compression,
            cache.memory_limit,
            cache.remote.url if cache.remote is not None else "",
        )

    def open(self) -> Cache:
        """The process's one `Cache` at this address (every function that lands with it
        shares its memory tier and store)."""
        with _OPENED_LOCK:
            cache = _OPENED.get(self)
            if cache is None:
                cache = _OPENED[self] = Cache(
                    self.directory,
                    self.size_limit,
                    self.eviction_policy,
                    self.compression,
                    self.memory_limit,
                    remote=self.remote,
                )
            return cache


_OPENED: dict[CacheAddress, Cache] = {}
_OPENED_LOCK = forking.lock()
