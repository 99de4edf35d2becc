"""`Entries`: the entries of one namespace by digest, over the disk store, the memory tier, the
serializer and the writer thread. `afml_cache.cache.Cache` maps keys to digests over it; the
decorators and integrations, which compute digests themselves, use it directly
(``cache.by_digest``)."""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import json
import logging
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from afml_cache import forking
from afml_cache._store import KeyLock, Store
from afml_cache._store.memory import Accesses, MemoryTier, Remembered
from afml_cache._store.serialize import (
    IMMUTABLE,
    SpareCopies,
    copy_buffer,
    deserialize,
    serialize,
)
from afml_cache._store.writer import WRITER, may_write_behind
from afml_cache.errors import CacheError, CacheWarning

__all__ = ["Entries"]

# Values up to this size are kept in the memory tier as soon as they are written.
_REMEMBER_ON_SET = 8 * 1024 * 1024
# A value read from disk is kept in the memory tier only up to this share of it: its private
# copy costs more than the next read from disk saves (the demo's 252 MB result: 0.72 s to copy
# into fresh memory, 0.29 s to read again), and it would push most of the tier out.
_REMEMBER_ON_READ_SHARE = 4
# Values with this many bytes of buffers are written behind when the caller asks (put(behind=)).
_WRITE_BEHIND_MIN = 1024 * 1024
# ... and below this many: from here the store streams a value into its file chunk by chunk
# (src/store/large.rs, STREAMED), which is written in the call, so that no second copy of a
# value this large, compressed or not, is ever held.
_WRITE_BEHIND_MAX = 64 * 1024 * 1024
# The memory of copies written behind, kept for the next ones: a few values' worth.
SPARE = SpareCopies(_WRITE_BEHIND_MAX)
_log = logging.getLogger("afml_cache")


@dataclass
class _Serialized:
    """A value ready to store: its serialized form and the entry's header fields."""

    slot: tuple[str, str]  # (namespace, digest)
    label: Any
    stream: bytes
    buffers: list[tuple[Any, int]]  # (bytes, item size)
    nbytes: int  # of the stream and the buffers
    expires: float | None
    compute_time: float
    protected: bool
    tags: list[str]
    time_range: tuple[int, int] | None
    metadata: str
    # Written by the writer thread, in a low-priority pool of its own (`Store.put(background=)`),
    # from a copy of the buffers, while the caller goes on.
    behind: bool = False
    # Replaces what the key holds everywhere (`Store.put_replacing`): a value set, not computed.
    replace: bool = False


class Entries:
    """The entries of ``namespace`` in ``store`` by digest: lookup, put (now or behind), lock,
    delete, touch, listing. Views of other namespaces (`namespaced`) share the store, the memory
    tier (``memory``) and the hits it served that the disk has yet to count."""

    def __init__(self, store: Store, memory_limit: int, namespace: str, compression: str) -> None:
        self._store = store
        self.memory = MemoryTier(memory_limit)
        self.namespace = namespace
        self.compression = compression
        # The values written behind and not yet on disk, by slot (shared by the views): a lookup
        # the memory tier cannot serve decodes them or waits for them.
        self._writing: dict[tuple[str, str], _Serialized] = {}
        # record_call(function, hit, compute_time, time_saved, latency) adds one call to the
        # shared per-function statistics; the store's own method, as it runs on every call.
        self.record_call = store.record_call
        forking.renew_after_fork(self)
        self._accesses = Accesses()
        # Namespaces whose values stopped unpickling, warned once (shared by the views).
        self._unpickle_warned: set[str] = set()
        atexit.register(_flush_at_exit, weakref.ref(self))

    def namespaced(self, namespace: str, compression: str | None = None) -> Entries:
        """The entries of ``namespace`` in the same store, sharing this memory tier;
        ``compression`` (None: this view's) is the level of the entries the view writes."""
        view = copy.copy(self)
        forking.renew_after_fork(view)
        view.namespace = namespace
        if compression is not None:
            view.compression = compression
        return view

    # --- one entry ----------------------------------------------------------------------------

    def after_fork(self) -> None:
        self._store.after_fork()
        self.record_call = self._store.record_call
        # The writer thread stayed in the parent, which writes what it had queued: here those
        # values are neither waiting nor known to be on disk, so the disk is read for them (a
        # copy kept as pending would outlive a clear() the parent made of it). The memory tier
        # drops its copies of them likewise.
        self._writing.clear()

    def lookup(
        self, digest: str, *, copy: bool = True, keep_unusable: bool = False
    ) -> tuple[bool, Any, float]:
        """``(found, value, compute_time)``; the value is a fresh object on every call.

        A value that no longer unpickles (a class renamed, or defined in another process's
        ``__main__``) is a miss and its entry goes (`_drop_unusable`); with ``keep_unusable``,
        for a read by id that has nothing to compute again, the entry stays and a `CacheError`
        says why.

        ``copy=False`` spares the copy of the value's buffers when it comes from the memory
        tier (and keeps a value read from disk there without copying it), and hands every such
        lookup one object while the entry is remembered, if it holds numbers and times only: the
        caller must neither mutate it nor hand it (or a view of it) to anyone; it may only read
        it into a fresh object."""
        slot = (self.namespace, digest)
        remembered = self.memory.get(slot)
        if remembered is not None and self._still_current(slot, remembered):
            if remembered.immutable is not None:
                value = remembered.immutable[0]
            elif not copy and remembered.shared is not None:
                value = remembered.shared[0]
            else:
                try:
                    buffers = remembered.buffers
                    value = deserialize(
                        remembered.stream, list(map(copy_buffer, buffers)) if copy else buffers
                    )
                except Exception as exc:
                    return self._unusable(digest, exc, keep_unusable)
                if type(value) in IMMUTABLE:
                    remembered.immutable = (value,)
                elif not copy and _only_buffers(value):
                    remembered.shared = (value,)
            self._store.count_hit()
            if self._accesses.note(slot):
                self.flush_accesses()
            return True, value, remembered.compute_time
        pending = self._writing.get(slot)
        if pending is not None:
            found = self._pending_value(pending)
            if found is not None:
                return found
            WRITER.flush()  # on disk once written
        # Read before the lookup: a change made meanwhile by another process must make this
        # memory copy look stale, not current.
        generation = self._store.generation()
        loaded = self._store.get(self.namespace, digest)
        if loaded is None:
            return False, None, 0.0
        stream, buffers, mac, expires, compute_time = loaded
        self._remember(
            slot,
            stream,
            buffers,
            mac,
            expires,
            compute_time,
            generation,
            copied=not copy,
            limit=self.memory.limit // _REMEMBER_ON_READ_SHARE,
        )
        try:
            return True, deserialize(stream, buffers), compute_time
        except Exception as exc:
            return self._unusable(digest, exc, keep_unusable)

    def put(
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
        replace: bool = False,
    ) -> bool:
        """Stores ``value`` under ``digest``; False (with a warning) if it is larger than the
        whole size limit. ``ttl`` (seconds, checked by the caller) or None; ``label`` is the key
        as ``listing()`` shows it (kept when it is a str or int).

        Without ``behind``, raises ``CacheError`` if the value cannot be pickled or the metadata
        is not JSON, and ``StoreError`` (an ``OSError``) if the disk refuses the write. With
        ``behind``, the outcome goes to ``behind(None, size on disk)`` or ``behind(error, 0)``,
        called exactly once, and nothing is raised. A value from 1 MiB to 64 MiB is then written
        behind by the process's writer thread (not in a pool's worker: `may_write_behind`),
        which calls ``behind``, unless the values waiting for it would then hold more than the
        memory tier's limit. As the caller may mutate the
        original once this returns, the writer works from a copy of the buffers made now, which
        up to 8 MiB the memory tier keeps (a copy on huge pages costs a fifth of compressing in
        the call: 1 ms against 4.7 ms for 16 MB here). Any other value is written before this
        returns: small ones cost little, and a larger one is streamed from the caller's buffers
        into its file.
        """
        if (self.namespace, digest) in self._writing:
            # A value of this key still waits for the writer: it must land before this one,
            # or it would replace it (a precache or set right after the call computed it).
            WRITER.flush()
        if behind is None:
            entry = self._serialize(
                digest, value, ttl, tags, protect, metadata, compute_time, time_range, label
            )
            entry.replace = replace
            return self._write(entry)
        try:
            entry = self._serialize(
                digest, value, ttl, tags, protect, metadata, compute_time, time_range, label
            )
            entry.replace = replace
            if (
                _WRITE_BEHIND_MIN <= entry.nbytes < _WRITE_BEHIND_MAX
                and may_write_behind()
                and self._hold(entry)
            ):
                entry.behind = True
                self._writing[entry.slot] = entry
                WRITER.submit(functools.partial(self._write_behind, entry, behind), entry.nbytes)
                return True
        except Exception as exc:
            behind(exc, 0)
            return False
        return self._write_behind(entry, behind)

    def _hold(self, entry: _Serialized) -> bool:
        """Makes ``entry`` independent of the caller's buffers, for the writer, with a copy of
        them, if it fits beside the values already waiting for it (see put)."""
        if entry.nbytes > self.memory.limit - WRITER.pending:
            return False
        # A copy the memory tier keeps is its own; any other goes back to SPARE once written.
        copy = copy_buffer if entry.nbytes <= _REMEMBER_ON_SET else SPARE.copy
        entry.buffers = [(copy(raw), size) for raw, size in entry.buffers]
        if entry.nbytes <= _REMEMBER_ON_SET:
            # The copy doubles as the memory tier's until it is written (see _write_behind).
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
        return True

    def _pending_value(self, entry: _Serialized) -> tuple[bool, Any, float] | None:
        """A lookup's result from ``entry``, still waiting for the writer (too large for the
        memory tier): a copy of its copy rather than a wait (the writer runs at a low
        priority); None when it has expired, or another write of its key is on disk (then the
        lookup waits and reads the disk)."""
        if entry.expires is not None and entry.expires <= time.time():
            return None
        try:
            if self._store.current_mac(*entry.slot) is not None:
                return None
            value = deserialize(entry.stream, [copy_buffer(raw) for raw, _ in entry.buffers])
        except Exception:  # the disk's copy, once written, is the one to read
            return None
        self._store.count_hit()
        if self._accesses.note(entry.slot):
            self.flush_accesses()
        return True, value, entry.compute_time

    def lock(self, digest: str, timeout: float = 60.0) -> KeyLock | None:
        """The entry's single-flight lock, held until its ``release()``, or None if another
        thread or process still holds it after ``timeout`` seconds."""
        return self._store.lock(self.namespace, digest, timeout)

    def contains(self, digest: str) -> bool:
        """Whether the entry is stored and not expired, without loading it (its MAC is checked
        when it is read)."""
        WRITER.flush()  # a value written behind is stored
        return self._store.contains(self.namespace, digest)

    def delete(self, digest: str, *, local_only: bool = False) -> bool:
        """Removes the entry; False if there was none. ``local_only``: from this machine's
        directory only, to make room, leaving it in the remote tier for every machine."""
        WRITER.flush()  # a pending write must not bring the entry back
        self.memory.drop((self.namespace, digest))
        if local_only:
            return self._store.delete_local(self.namespace, digest)
        return self._store.delete(self.namespace, digest)

    def touch(self, digest: str, ttl: float | None) -> bool:
        """Gives the entry a new time to live (seconds, checked by the caller; None: never
        expires); False if absent."""
        expires = time.time() + ttl if ttl is not None else None
        WRITER.flush()
        self.memory.drop((self.namespace, digest))
        return self._store.touch(self.namespace, digest, expires)

    # --- every entry of the namespace ---------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Metadata of every entry of this namespace, without loading values (see
        ``Cache.entries``)."""
        WRITER.flush()
        self.flush_accesses()
        found = []
        for info in self._store.scan(self.namespace):
            if info.namespace != self.namespace:  # shortened names can share a directory
                continue
            described = json.loads(info.metadata or "{}")
            found.append(
                {
                    "namespace": info.namespace,
                    "key": described.get("key"),
                    "digest": info.digest,
                    "path": str(info.path),
                    "size": info.size,
                    "value_size": info.value_size,
                    "created": info.created,
                    "expires": info.expires,
                    "last_accessed": info.last_accessed,
                    "hits": info.hits,
                    "compute_time": info.compute_time,
                    "tags": info.tags,
                    "protected": info.protected,
                    "time_range": info.time_range,
                    "metadata": described.get("metadata"),
                    "compression": info.compression,
                }
            )
        return found

    def remove(self, entries: Iterable[dict[str, Any]]) -> int:
        """Removes the entries (as listed by ``listing()``); returns how many were there."""
        return sum(self.delete(e["digest"]) for e in list(entries))

    def flush_accesses(self) -> None:
        """Adds the hits served from memory to their entries' counters (which steer eviction)."""
        for (namespace, digest), (hits, last_ns) in self._accesses.drain().items():
            self._store.record_access(namespace, digest, hits, last_ns)

    def generation(self) -> int:
        """A number that changes whenever any entry of the directory changes, in any process:
        what was read at generation g is current while this still returns g."""
        return self._store.generation()

    # --- writing ------------------------------------------------------------------------------

    def _serialize(
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
    ) -> _Serialized:
        try:
            stream, buffers = serialize(value)
        except Exception as exc:
            raise CacheError(
                f"cannot store a {type(value).__qualname__} under {_describe(label)}: it cannot "
                f"be pickled ({exc}); store something picklable"
            ) from exc
        return _Serialized(
            slot=(self.namespace, digest),
            label=label,
            stream=stream,
            buffers=buffers,
            nbytes=len(stream) + sum(len(raw) for raw, _ in buffers),
            expires=time.time() + ttl if ttl is not None else None,
            compute_time=float(compute_time),
            protected=bool(protect),
            tags=[tags] if isinstance(tags, str) else list(tags),
            time_range=time_range,
            metadata=_metadata_text(label, metadata),
        )

    def _put(self, entry: _Serialized) -> tuple[bool, int, bytes, int]:
        """Writes an entry: (stored, size on disk, MAC, the generation before the write)."""
        self.flush_accesses()  # the write may evict: let it see every recent hit
        generation = self._store.generation()
        put = self._store.put_replacing if entry.replace else self._store.put
        stored, size, mac, _ = put(
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
            background=entry.behind,
        )
        return stored, size, mac, generation

    def _keep(self, entry: _Serialized, mac: bytes, generation: int) -> None:
        """Remembers a value just written, unless it is large: copying it would cost the write
        a tenth of its time, and the first read remembers it instead (if it is at most a
        quarter of the tier, `_REMEMBER_ON_READ_SHARE`)."""
        if entry.nbytes <= _REMEMBER_ON_SET:
            raws = [raw for raw, _ in entry.buffers]
            self._remember(
                entry.slot, entry.stream, raws, mac, entry.expires, entry.compute_time, generation
            )
        else:
            self.memory.drop(entry.slot)

    def _write(self, entry: _Serialized) -> bool:
        stored, size, mac, generation = self._put(entry)
        if not stored:
            self.memory.drop(entry.slot)
            earlier = self._forget_replaced(entry)
            warnings.warn(
                f"afml_cache: the value for {_describe(entry.label)} takes {size:,} bytes on "
                f"disk, more than the whole size_limit ({self._store.size_limit:,} bytes), so "
                f"it was not stored{' (the value stored before was removed)' if earlier else ''}",
                CacheWarning,
                stacklevel=4,
            )
            return False
        self._keep(entry, mac, generation)
        return True

    def _forget_replaced(self, entry: _Serialized) -> bool:
        """After a value that replaces (a set, a precache) is refused as larger than the size
        limit: the key's earlier value must not be read as if it had not happened, here or
        through a remote prefix. A computed value replaces nothing: what another writer stored
        for its key meanwhile stays."""
        return entry.replace and bool(self._store.delete(*entry.slot))

    def _write_behind(
        self, entry: _Serialized, behind: Callable[[Exception | None, int], None]
    ) -> bool:
        """Writes an entry for ``put(behind=...)`` (on the writer thread if it was made
        independent of the caller's buffers) and reports the outcome to ``behind``."""
        error: Exception | None = None
        size = 0
        try:
            stored, size, mac, generation = self._put(entry)
            if not stored:
                error = CacheError(
                    f"the value takes {size:,} bytes on disk, more than the whole size_limit "
                    f"({self._store.size_limit:,} bytes)"
                )
                self._forget_replaced(entry)
            else:
                remembered = self.memory.get(entry.slot)
                if remembered is not None and remembered.stream is entry.stream:
                    remembered.mac = mac  # written behind: from now on checked against the file
                else:
                    self._keep(entry, mac, generation)
        except Exception as exc:  # reported through behind(), never lost on the writer thread
            error = exc
        finally:
            self._writing.pop(entry.slot, None)
        if entry.behind and entry.nbytes > _REMEMBER_ON_SET:
            copies = [copy for copy, _ in entry.buffers]
            entry.buffers = []  # a lookup that still holds the entry reads the disk instead
            SPARE.give_back(copies)
        if error is not None:
            self.memory.drop(entry.slot)
        behind(error, 0 if error is not None else size)
        return error is None

    # --- the memory tier ----------------------------------------------------------------------

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
        limit: int | None = None,
    ) -> None:
        """Keeps a private copy of a value's serialized form, if it is at most ``limit`` bytes
        (the memory tier's limit if None; the caller's buffers may be mutated later; copying
        what cannot be kept would be wasted). ``copied``: the buffers are private copies
        already. ``mac`` is None while the entry is being written behind."""
        nbytes = len(stream) + sum(len(b) for b in buffers)
        if nbytes > (self.memory.limit if limit is None else limit):
            self.memory.drop(slot)
            return
        copies = list(buffers) if copied else [copy_buffer(b) for b in buffers]
        remembered = Remembered(stream, copies, mac, expires, compute_time, generation, nbytes)
        self.memory.put(slot, remembered)

    def _still_current(self, slot: tuple[str, str], remembered: Remembered) -> bool:
        if remembered.expires is not None and remembered.expires <= time.time():
            self.memory.drop(slot)
            return False
        generation = self._store.generation()
        if generation == remembered.generation:
            return True  # nothing in the directory changed since this copy was made
        if self._store.current_mac(*slot) == remembered.mac:
            remembered.generation = generation
            return True
        self.memory.drop(slot)
        return False

    def _unusable(self, digest: str, error: Exception, keep: bool) -> tuple[bool, Any, float]:
        if keep:
            raise CacheError(
                f"the entry {digest} of {self.namespace!r} is stored intact but does not unpickle "
                f"in this process ({type(error).__name__}: {error}); import or define the "
                "classes and functions it refers to (a class defined in the __main__ of the "
                "script that stored it must be defined here too) and read it again; it was kept"
            ) from error
        self._drop_unusable(digest, error)
        return False, None, 0.0

    def _drop_unusable(self, digest: str, error: Exception) -> None:
        """Removes an entry whose value no longer unpickles, from memory and disk alike. The
        bytes are intact (the MAC verified) but the code they refer to changed, e.g. a class was
        renamed: the entry is useless, so it goes, and the lookup is a miss."""
        self.delete(digest)
        message = (
            f"afml_cache: removed an entry of {self.namespace!r} whose value no longer "
            f"unpickles ({type(error).__name__}: {error}); it is computed again. A class or "
            "function the value refers to was probably renamed or moved"
        )
        _log.warning("%s (entry %s)", message, digest)
        if self.namespace not in self._unpickle_warned:
            self._unpickle_warned.add(self.namespace)
            warnings.warn(message, CacheWarning, stacklevel=4)


def _only_buffers(value: Any) -> bool:
    """Whether ``value`` is an array, Series or DataFrame of numbers and times only, held in its
    buffers: a copy of it then holds no object a caller could change in place (a list in a
    cell), so one unpickled object may serve every ``lookup(copy=False)``."""
    dtypes = [value.dtype] if hasattr(value, "dtype") else getattr(value, "dtypes", None)
    return dtypes is not None and all(getattr(t, "kind", "O") in "biufcmM" for t in dtypes)


def _flush_at_exit(ref: weakref.ReferenceType[Entries]) -> None:
    entries = ref()
    if entries is not None:
        with contextlib.suppress(Exception):  # exiting: the counters are only a hint
            entries.flush_accesses()


def _fits_in_text(number: int) -> bool:
    """Whether any process reads ``number`` back from JSON's text: under 640 digits, the
    least limit a process may set on them (sys.set_int_max_str_digits)."""
    return number.bit_length() <= 2_000  # < 10**602


def _metadata_text(key: Any, metadata: Mapping[str, Any] | None) -> str:
    described: dict[str, Any] = {}
    if type(key) is str or (type(key) is int and _fits_in_text(key)):
        described["key"] = key  # as listings show it
    if metadata is not None:
        described["metadata"] = dict(metadata)
    try:
        return json.dumps(described)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"metadata must be JSON-serialisable (str keys, plain values): {exc}"
        ) from None


def _describe(key: Any) -> str:
    if key is None:  # stored by digest alone (the decorators)
        return "its key"
    return f"key {key!r}" if type(key) in (str, int) else f"a {type(key).__qualname__} key"
