"""Keeping the cache healthy: `maintain_cache` (expired, old, outdated and surplus entries) and
`smart_cache_clear` (entries written by code that has changed since).

Both work entry by entry and are safe while other processes use the cache: an entry another
process is reading stays readable to it (the store replaces and removes files atomically), one
already removed by someone else is skipped, and a failure on one entry is reported in the result's
``errors`` and does not stop the rest. Sizes are in MB of 2**20 bytes, like ``cache_size_mb``
and sizes written like ``"500MB"``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from afml_cache import config
from afml_cache._store import EntryInfo
from afml_cache._store.remote import Remote, brief, client_errors
from afml_cache.cache import Cache
from afml_cache.decorators import cached_functions
from afml_cache.errors import CacheError
from afml_cache.monitoring import names_ending_with
from afml_cache.progress import progress
from afml_cache.report import MB

__all__ = ["maintain_cache", "smart_cache_clear"]

_log = logging.getLogger("afml_cache")
_DAY = 86400.0


class _Removal:
    """Removes entries one at a time (or, in a dry run, only counts them) and keeps the report."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.functions: set[str] = set()
        self.bytes = 0
        self.count = 0
        self.reasons: Counter[str] = Counter()
        self.errors: list[str] = []

    def remove(self, cache: Cache, namespace: str, digest: str, size: int, reason: str) -> bool:
        """Removes one entry; True if it was removed (or would be, in a dry run)."""
        if not self.dry_run:
            try:
                # Making room is this machine's business: a remote tier keeps the entry.
                entries = cache.namespaced(namespace).by_digest
                removed = entries.delete(digest, local_only=reason == "over_max_size")
            except (OSError, CacheError, ValueError) as exc:
                self.errors.append(f"{namespace}: entry {digest} could not be removed: {exc}")
                return False
            if not removed:  # another process removed it first
                return False
        self.functions.add(namespace)
        self.bytes += size
        self.count += 1
        self.reasons[reason] += 1
        return True

    def result(self) -> dict[str, Any]:
        return {
            "cleared_functions": sorted(self.functions),
            "size_cleared_mb": self.bytes / MB,
            "entries_removed": self.count,
            "errors": self.errors,
            "dry_run": self.dry_run,
            "reasons": dict(sorted(self.reasons.items())),
        }


def _engine(fn: Callable[..., Any]) -> Any:
    return fn.__afml_cache__  # type: ignore[attr-defined]


def _current_codes(
    functions: Iterable[Callable[..., Any]], cache: Cache, removal: _Removal
) -> dict[str, set[str] | None]:
    """The code fingerprints of the live decorated functions that keep their entries in
    ``cache``'s directory, by namespace. Every live version of a function counts as current
    (a notebook may hold an old one still): its entries can still be hit. None marks a
    namespace whose code could not be fingerprinted; its entries are left alone."""
    codes: dict[str, set[str] | None] = {}
    for fn in functions:
        engine = _engine(fn)
        view = engine.cache()
        if view is None or not view.same_store(cache):
            continue
        try:
            code = engine.code_fingerprint()
        except Exception as exc:  # user code: anything may fail while it is inspected
            removal.errors.append(
                f"{engine.name}: its code could not be fingerprinted ({exc}); its entries were "
                "left alone"
            )
            codes[engine.name] = None
            continue
        known = codes.setdefault(engine.name, set())
        if known is not None:
            known.add(code)
    return codes


def _stored_code(metadata_text: str | None) -> str | None:
    """The code fingerprint an entry was written with (None for entries of older versions).
    The text is the entry's metadata as `Cache` writes it: ``{"key": ..., "metadata": {...}}``."""
    try:
        described = json.loads(metadata_text or "{}").get("metadata")
    except (ValueError, AttributeError):  # a scan does not verify headers: damaged text
        return None
    return described.get("code") if isinstance(described, dict) else None


def _last_used(entry: EntryInfo) -> float:
    return max(entry.last_accessed or 0.0, entry.created)


def _check_limit(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0 or None, got {value!r}")


def maintain_cache(
    auto_clear: bool = True,
    max_size_mb: float | None = None,
    max_age_days: float | None = None,
    remote_max_size_mb: float | None = None,
) -> dict[str, Any]:
    """Tidies the configured cache directory and reports what was removed.

    In order, it removes entries that have expired; entries created more than ``max_age_days``
    days ago; entries of decorated functions alive in this process whose code has changed
    since they were stored (they can never be hit again; see `smart_cache_clear`); then, while
    the directory holds more than ``max_size_mb`` MB, the least recently used entries. Protected
    entries are only removed once expired. With a remote tier (``configure(remote=...)``),
    ``max_age_days`` also removes the prefix's entries written longer ago, and
    ``remote_max_size_mb`` bounds the prefix: its oldest writes go first (object stores keep
    no access times), whichever machine wrote them. With ``auto_clear=False`` nothing is
    removed: the report says what would be.

    Returns ``cleared_functions`` (namespaces that lost entries, sorted), ``size_cleared_mb``,
    ``entries_removed``, ``errors`` (one message per entry or function that failed; it never
    raises half-way), ``dry_run``, and ``reasons`` (entries per reason: ``expired``,
    ``older_than_max_age``, ``code_changed``, ``over_max_size``, ``remote_over_max_size``).
    """
    _check_limit("max_size_mb", max_size_mb)
    _check_limit("max_age_days", max_age_days)
    _check_limit("remote_max_size_mb", remote_max_size_mb)
    removal = _Removal(dry_run=not auto_clear)
    cache = config.shared_cache()
    if cache is None:
        removal.errors.append(
            f"no usable cache directory ({config.CACHE_DIRS['base']}); nothing was maintained"
        )
        return removal.result()
    cache.flush_accesses()  # least recently used must count this process's memory hits
    try:
        entries = cache.scan(None)
    except (OSError, CacheError) as exc:
        removal.errors.append(f"cannot list the entries of {cache.directory}: {exc}")
        return removal.result()
    codes = _current_codes(cached_functions(), cache, removal)
    now = time.time()
    oldest = now - max_age_days * _DAY if max_age_days is not None else None
    kept = []
    for entry in progress(entries, "maintain"):
        reason = _reason(entry, now, oldest, codes.get(entry.namespace))
        if reason is None or not removal.remove(
            cache, entry.namespace, entry.digest, entry.size, reason
        ):
            kept.append(entry)
    if max_size_mb is not None:
        _shrink(cache, kept, max_size_mb, removal)
    if cache.remote is not None and (max_age_days, remote_max_size_mb) != (None, None):
        _prune_remote(cache.remote, remote_max_size_mb, max_age_days, removal)
    if removal.count and not removal.dry_run:
        _log.info(
            "afml_cache: maintenance removed %d entries (%.1f MB) from %s",
            removal.count,
            removal.bytes / MB,
            cache.directory,
        )
    return removal.result()


def _reason(
    entry: EntryInfo, now: float, oldest: float | None, current: set[str] | None
) -> str | None:
    """Why maintenance removes an entry (a scanned one), or None to keep it. ``current`` is the
    live code fingerprints of its function, if any."""
    if entry.expires is not None and entry.expires <= now:
        return "expired"
    if entry.protected:
        return None
    if oldest is not None and entry.created < oldest:
        return "older_than_max_age"
    if current and _stored_code(entry.metadata) not in current:
        return "code_changed"
    return None


def _shrink(cache: Cache, kept: list[EntryInfo], max_size_mb: float, removal: _Removal) -> None:
    """Removes the least recently used unprotected entries until ``kept`` fits the limit."""
    limit = max_size_mb * MB
    total = sum(e.size for e in kept)
    for entry in sorted((e for e in kept if not e.protected), key=_last_used):
        if total <= limit:
            break
        if removal.remove(cache, entry.namespace, entry.digest, entry.size, "over_max_size"):
            total -= entry.size
    if total > limit:
        removal.errors.append(
            f"{total / MB:,.2f} MB remain, more than max_size_mb={max_size_mb}: the rest is "
            "protected entries or entries that could not be removed"
        )


def _prune_remote(
    remote: Remote, max_size_mb: float | None, max_age_days: float | None, removal: _Removal
) -> None:
    """Removes the prefix's entries written more than ``max_age_days`` ago, then its oldest
    writes until it holds at most ``max_size_mb``."""
    max_age = max_age_days * _DAY if max_age_days is not None else None
    max_size = int(max_size_mb * MB) if max_size_mb is not None else None
    try:
        doomed, _left = remote.prune(max_size, max_age, dry_run=removal.dry_run)
    except client_errors() as exc:
        removal.errors.append(f"cannot prune the remote cache {remote.url}: {brief(exc)}")
        return
    cutoff = time.time() - max_age if max_age is not None else None
    for entry in doomed:
        old = cutoff is not None and entry.written < cutoff
        removal.functions.add(entry.namespace)
        removal.bytes += entry.size
        removal.count += 1
        removal.reasons["older_than_max_age" if old else "remote_over_max_size"] += 1


def _targets(module_or_function: Any) -> list[Callable[..., Any]]:
    """The decorated functions ``smart_cache_clear`` looks at."""
    if module_or_function is None:
        return cached_functions()
    if callable(module_or_function) and hasattr(module_or_function, "__afml_cache__"):
        return [module_or_function]
    if isinstance(module_or_function, types.ModuleType):
        name = module_or_function.__name__
    elif isinstance(module_or_function, str):
        name = module_or_function
    else:
        raise TypeError(
            "smart_cache_clear takes a decorated function, a module, a module's name or None "
            f"(every decorated function), got {module_or_function!r}"
        )
    live = cached_functions()
    if isinstance(module_or_function, str):
        # The guide's smart_cache_clear('labeling'): a module named by its last components,
        # when they name one module with decorated functions ('afml.labeling', never
        # 'afml.labeling_fast').
        imported = {fn.__module__ for fn in live if fn.__module__ in sys.modules}
        named = names_ending_with(name, imported)
        if len(named) > 1:
            raise ValueError(
                f"smart_cache_clear({name!r}): {name!r} names several modules: "
                f"{', '.join(named)}; give the one you mean in full"
            )
        if not named and name not in sys.modules:
            raise ValueError(
                f"smart_cache_clear({name!r}): no module of that name is imported; give the "
                "module's name as in its import (e.g. 'afml.labeling'), after importing it"
            )
        name = named[0] if named else name
    return [fn for fn in live if fn.__module__ == name]


def smart_cache_clear(module_or_function: Any = None) -> dict[str, Any]:
    """Removes the entries whose code fingerprint no longer matches the current code of their
    function: entries that can never be hit again, since the code is part of every key.

    ``module_or_function`` is a decorated function, a module to cover its decorated functions
    (or its name: in full, or its last components when they name one module with decorated
    functions, so ``'labeling'`` is ``afml.labeling``; several raise ValueError listing them),
    or None for every decorated function alive in this process.
    Entries stored without a code fingerprint (by older versions) count as outdated. If several
    versions of a function are alive (a notebook redefined it), entries of any of them stay.

    Returns a report like `maintain_cache`'s: ``cleared_functions``, ``size_cleared_mb``,
    ``entries_removed``, ``errors``, ``dry_run`` (False) and ``reasons``.
    """
    targets = _targets(module_or_function)
    removal = _Removal(dry_run=False)
    everything = cached_functions()
    done: set[tuple[Path, str]] = set()
    for fn in targets:
        engine = _engine(fn)
        view = engine.cache()
        if view is None:
            removal.errors.append(f"{engine.name}: no usable cache directory; nothing cleared")
            continue
        slot = (Path(view.directory), engine.name)
        if slot in done:
            continue
        done.add(slot)
        same_name = [f for f in everything if _engine(f).name == engine.name]
        current = _current_codes(same_name, view, removal).get(engine.name)
        if current is None:
            continue  # not fingerprinted: the error is reported, its entries stay
        try:
            entries = view.entries()
        except (OSError, CacheError) as exc:
            removal.errors.append(f"{engine.name}: cannot list its entries: {exc}")
            continue
        for entry in entries:
            metadata = entry["metadata"] if isinstance(entry["metadata"], dict) else {}
            if metadata.get("code") not in current:
                removal.remove(view, engine.name, entry["digest"], entry["size"], "code_changed")
    return removal.result()
