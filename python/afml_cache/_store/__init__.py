"""The one owner of the Rust store on the Python side: entries by digest in one directory.

`Store` is the only user of ``_core.Store``; its submodules hold what turns values into entries
and back (`serialize`), the memory tier (`memory`), the writer thread (`writer`) and archives
(`archive`). `afml_cache.cache.Cache` binds keys to digests over it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from afml_cache import _core, forking
from afml_cache._core import EntryInfo, FunctionTotals, KeyLock
from afml_cache._store.remote import Remote, RemoteTier

__all__ = ["EntryInfo", "FunctionTotals", "KeyLock", "Store"]


class Store:
    """Entries by ``(namespace, digest)`` in ``directory``, shared by every process using it:
    lookup, put, lock, delete, touch, scan, per-function call statistics, generation."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        size_limit: int,
        eviction_policy: str,
        *,
        trust_group: bool,
        remote: Remote | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.remote = remote
        self._opening = (size_limit, eviction_policy, trust_group)
        self._bind(_core.Store(directory, size_limit, eviction_policy, trust_group=trust_group))
        forking.renew_after_fork(self)

    def _bind(self, core: Any) -> None:
        self._core = core
        self._pid = os.getpid()
        # The core's methods, bound once: a hit calls them with no Python layer in between.
        self.get = core.get
        self.put = core.put
        # A write the caller means to replace what the key holds (`Cache.set`, `precache`), not
        # one more copy of a computed value: the prefix behind takes it too.
        self.put_replacing = core.put
        self.contains = core.contains
        self.current_mac = core.current_mac
        self.generation = core.generation
        self.count_hit = core.count_hit
        self.record_access = core.record_access
        self.record_call = core.record_call
        self.function_stats = core.function_stats
        self.reset_function_stats = core.reset_function_stats
        self.lock = core.lock
        self.delete = self.delete_local = core.delete
        self.touch = core.touch
        self.scan = core.scan
        self.expire = core.expire
        self.clear = core.clear
        self.check = core.check
        self.stats = core.stats
        self.export_entry = core.export_entry
        self.export_reader = core.export_reader
        self.stage_import = core.stage_import
        self.stage_download = core.stage_download
        remote = self.remote
        if remote is not None:
            # A prefix of an object store behind the directory: lookups, writes, deletes and
            # the single-flight lock reach it too.
            tier = RemoteTier(core, remote)
            self.get, self.put, self.contains = tier.get, tier.put, tier.contains
            self.put_replacing = tier.put_replacing
            self.delete, self.clear, self.lock = tier.delete, tier.clear, tier.lock
            self.touch = tier.touch

    @property
    def size_limit(self) -> int:
        return self._core.size_limit

    @property
    def eviction_policy(self) -> str:
        return self._core.eviction_policy

    def same_directory(self, other: Store) -> bool:
        """True when both stores keep their entries in one directory."""
        return other is self or self.directory.resolve() == other.directory.resolve()

    def sizes_by_namespace(self) -> dict[str, int]:
        """Bytes on disk of each namespace's entries (kept by the store: no scan)."""
        return {f.namespace: f.bytes for f in self.function_stats() if f.entries}

    def __repr__(self) -> str:
        return f"Store({str(self.directory)!r})"

    def after_fork(self) -> None:
        """In a forked child: a core of its own. The parent's may hold locks that another of
        the parent's threads took (a pack's index, the counters) and that no thread of the
        child will release; it is left alone, as its teardown could wait on them. Once per
        child: the entries and caches over this store ask too, in any order."""
        if self._pid == os.getpid():
            return
        size_limit, eviction_policy, trust_group = self._opening
        try:
            core = _core.Store(self.directory, size_limit, eviction_policy, trust_group=trust_group)
        except Exception as exc:  # the directory went away: the parent's core, as before
            logging.getLogger("afml_cache").debug("cannot reopen %s after fork: %r", self, exc)
            return
        _INHERITED.append(self._core)
        self._bind(core)


_INHERITED: list[Any] = []  # the parent's cores, never torn down in the child
