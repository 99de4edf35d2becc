"""Where the decorators keep their entries, how much, and whether caching is on.

The decorators share one `Cache` per process, opened on first use from these settings:
``configure(...)`` changes them (arguments are checked at once, so a bad value fails where it is
written, not at the first cached call); ``AFML_CACHE_DIR`` (or ``AFML_CACHE``) picks the directory;
``AFML_CACHE_DISABLE=1`` or ``with disabled():`` turns caching off. If the directory cannot be used,
caching is disabled for the process with one warning, and functions still run.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from afml_cache import forking
from afml_cache._store.remote import Remote, open_remote
from afml_cache.cache import TRUE_WORDS, Cache, check_compression, default_directory, parse_size
from afml_cache.errors import CacheError, CacheWarning

__all__ = [
    "CACHE_DIRS",
    "cache_enabled",
    "clear_afml_cache",
    "configure",
    "disabled",
    "initialize_cache_system",
    "shared_cache",
]

EVICTION_POLICIES = ("lru", "lfu", "fifo", "size", "hybrid")
_log = logging.getLogger("afml_cache")

_settings: dict[str, Any] = {
    "directory": None,
    "size_limit": "2GB",
    "eviction_policy": "lru",
    "compression": "default",
    "memory_limit": "256MB",
    "enabled": True,
    "trust_group": None,  # None: AFML_CACHE_TRUST_GROUP decides
    "verbose": None,  # None: AFML_CACHE_VERBOSE decides
    "remote": None,  # None: AFML_CACHE_REMOTE decides
}
_lock = forking.lock()
_shared: Cache | None = None
# Whether this process's own code called `configure`: then the settings decorated functions
# bring from the process that sent them (`adopt`) leave it alone.
_own = False
_unusable: str | None = None  # why the directory could not be opened, once warned
_disabled_depth: contextvars.ContextVar[int] = contextvars.ContextVar(
    "afml_cache_disabled", default=0
)

#: The directories in use (updated in place by ``configure``). ``joblib`` names the entries
#: directory, for code written against the original AFML cache.
CACHE_DIRS: dict[str, Path] = {}


def _directory() -> Path:
    directory = _settings["directory"]
    return Path(directory).expanduser() if directory is not None else default_directory()


def _refresh_dirs() -> None:
    base = _directory()
    CACHE_DIRS.clear()
    CACHE_DIRS.update(
        base=base, entries=base / "entries", functions=base / "functions", joblib=base / "entries"
    )


_refresh_dirs()


def configure(
    directory: str | os.PathLike[str] | None = None,
    size_limit: int | str | None = None,
    eviction_policy: str | None = None,
    enabled: bool | None = None,
    *,
    memory_limit: int | str | None = None,
    compression: str | None = None,
    verbose: int | None = None,
    trust_group: bool | None = None,
    remote: str | Remote | None = None,
) -> None:
    """Changes the decorators' cache settings; arguments left as None keep their value.

    ``remote`` (default ``AFML_CACHE_REMOTE``; ``""`` for none): a prefix of an object store
    shared by many machines behind the local directory, ``"s3://bucket/prefix"`` or a `Remote`
    (README: "A cache for a team: S3").

    ``verbose`` (default 0, or ``AFML_CACHE_VERBOSE``): 1 writes one line on stderr per miss
    (the function, how long it computed, the size stored), 2 one per hit too. ``trust_group``
    (default ``AFML_CACHE_TRUST_GROUP``): accept a directory its group can write, for a team
    cache; every member of the group can then make every other unpickle (docs/store.md)."""
    if verbose is not None:
        _check_verbose(verbose)
    if size_limit is not None:
        parse_size(size_limit, "size_limit")
    if memory_limit is not None:
        parse_size(memory_limit, "memory_limit")
    if eviction_policy is not None and eviction_policy not in EVICTION_POLICIES:
        allowed = ", ".join(repr(p) for p in EVICTION_POLICIES)
        raise ValueError(
            f"eviction_policy={eviction_policy!r} is not a policy; use one of {allowed}"
        )
    if compression is not None:
        check_compression(compression)
    if enabled is not None and not isinstance(enabled, bool):
        # "no" or 0 would silently mean something: only True and False do.
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    if trust_group is not None and not isinstance(trust_group, bool):
        raise TypeError(f"trust_group must be True or False, got {trust_group!r}")
    if remote is not None:
        remote = open_remote(remote) or ""  # a bad URL or a missing client fails here
    if directory is not None:  # where it is now: a later os.chdir must not move the cache
        directory = Path(directory).expanduser().absolute()
    global _shared, _unusable, _own
    with _lock:
        _own = True
        for name, value in (
            ("directory", directory),
            ("size_limit", size_limit),
            ("eviction_policy", eviction_policy),
            ("enabled", enabled),
            ("memory_limit", memory_limit),
            ("compression", compression),
            ("trust_group", trust_group),
            ("remote", remote),
            ("verbose", None if verbose is None else int(verbose)),
        ):
            if value is not None:
                _settings[name] = value
        _shared, _unusable = None, None
        _refresh_dirs()


def settings() -> dict[str, Any]:
    """A copy of the current settings (``directory`` is None for the default one), to put back
    later with `restore_settings`, as test harnesses do."""
    with _lock:
        return dict(_settings)


def travelling() -> dict[str, Any]:
    """What a decorated function sent by value carries to the worker it lands in (see
    `decorators.Origin`): the address of this process's cache when its code chose the directory
    or the remote (else the worker's own configuration decides), whether caching is on in
    this thread now (``configure(enabled=False)``, ``AFML_CACHE_DISABLE``; ``disabled()`` holds
    for the thread that pickles), and the host and process it comes from."""
    from afml_cache.cache import CacheAddress

    with _lock:
        chosen = _settings["directory"] is not None or _settings["remote"] is not None
    cache = shared_cache() if chosen else None
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "address": CacheAddress.of(cache) if cache is not None else None,
        "enabled": cache_enabled(),
    }


def configured_here() -> bool:
    """Whether this process's own code called `configure`: then what functions bring from the
    process that sent them (`travelling`) does not override it."""
    return _own


def restore_settings(saved: Mapping[str, Any]) -> None:
    """Puts back settings taken with `settings()`; the cache reopens at the next cached call."""
    global _shared, _unusable
    with _lock:
        _settings.update(saved)
        _shared, _unusable = None, None
        _refresh_dirs()


def cache_enabled() -> bool:
    """False inside ``disabled()``, with ``AFML_CACHE_DISABLE=1``, or after
    ``configure(enabled=False)``."""
    if not _settings["enabled"] or _disabled_depth.get():
        return False
    if _ENVIRON_BYTES is not None:
        raw = _ENVIRON_BYTES.get(b"AFML_CACHE_DISABLE")
        return raw is None or raw.strip().lower() not in _TRUE_BYTES
    return os.environ.get("AFML_CACHE_DISABLE", "").strip().lower() not in _TRUE


# Every cached call asks whether AFML_CACHE_DISABLE is set, and may see it set or unset at run
# time. os.environ decodes the name and value on each lookup (a fifth of a cached hit's time);
# on POSIX its own dict of bytes, which it keeps in step with every change, answers directly.
_ENVIRON_BYTES: dict[bytes, bytes] | None = (
    getattr(os.environ, "_data", None) if os.name == "posix" else None
)
_TRUE = TRUE_WORDS
_TRUE_BYTES = tuple(t.encode() for t in _TRUE)


VERBOSITY = (0, 1, 2)
# AFML_CACHE_VERBOSE as last read (bytes on POSIX, as for AFML_CACHE_DISABLE), and its level.
_env_verbose: tuple[bytes | str | None, int] = (None, 0)


def _check_verbose(level: object) -> None:
    if level in VERBOSITY and isinstance(level, (bool, int)):  # True and False count as 1 and 0
        return
    raise ValueError(
        f"verbose={level!r} is not a verbosity; use 0 (quiet), 1 (a line per miss) or 2 (a line "
        "per miss and per hit)"
    )


def verbosity() -> int:
    """How much the decorators write on stderr: ``configure(verbose=)``, else
    ``AFML_CACHE_VERBOSE``, else 0."""
    level = _settings["verbose"]
    if level is not None:
        return level
    global _env_verbose
    if _ENVIRON_BYTES is not None:
        raw: bytes | str | None = _ENVIRON_BYTES.get(b"AFML_CACHE_VERBOSE")
    else:
        raw = os.environ.get("AFML_CACHE_VERBOSE")
    if raw == _env_verbose[0]:
        return _env_verbose[1]
    text = os.fsdecode(raw or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        level = 0
    elif text in _TRUE or text == "2":
        level = 2 if text == "2" else 1
    else:
        level = 0
        warnings.warn(
            f"afml_cache: AFML_CACHE_VERBOSE={text!r} is not a verbosity; use 0 (quiet), 1 (a "
            "line per miss) or 2 (a line per miss and per hit). Staying quiet",
            CacheWarning,
            stacklevel=3,
        )
    _env_verbose = (raw, level)
    return level


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Runs cached functions without the cache inside the block (this thread or task only)."""
    token = _disabled_depth.set(_disabled_depth.get() + 1)
    try:
        yield
    finally:
        _disabled_depth.reset(token)


def shared_cache() -> Cache | None:
    """The decorators' cache, opened on first use; None if its directory cannot be used."""
    global _shared, _unusable
    cache = _shared
    if cache is not None or _unusable is not None:
        return cache
    with _lock:
        if _shared is None and _unusable is None:
            try:
                _shared = Cache(
                    _directory(),
                    size_limit=_settings["size_limit"],
                    eviction_policy=_settings["eviction_policy"],
                    compression=_settings["compression"],
                    memory_limit=_settings["memory_limit"],
                    trust_group=_settings["trust_group"],
                    remote=_settings["remote"],
                )
            except (CacheError, OSError) as exc:
                _unusable = str(exc)
                warnings.warn(
                    f"afml_cache: the cache directory {_directory()} cannot be used ({exc}); "
                    "caching is disabled for this process and functions run uncached. Fix the "
                    "directory or choose another with afml_cache.configure(directory=...)",
                    CacheWarning,
                    stacklevel=3,
                )
            except ValueError as exc:
                if _settings["remote"] is not None:  # configure(remote=...): the caller's error
                    raise
                # AFML_CACHE_REMOTE or AFML_CACHE_KEY, set for another job perhaps: each call
                # runs as if uncached rather than failing.
                _unusable = str(exc)
                warnings.warn(
                    f"afml_cache: the cache settings in the environment cannot be used ({exc}); "
                    "caching is disabled for this process and functions run uncached. Fix or "
                    "unset AFML_CACHE_REMOTE and AFML_CACHE_KEY",
                    CacheWarning,
                    stacklevel=3,
                )
        return _shared


def initialize_cache_system() -> Cache:
    """Opens (creating if needed) the cache directory now rather than at the first cached call,
    and returns the cache. Raises if the directory cannot be used."""
    cache = shared_cache()
    if cache is None:
        raise CacheError(f"the cache directory {_directory()} cannot be used: {_unusable}")
    _log.info("afml_cache: cache ready in %s (limit %d bytes)", cache.directory, cache.size_limit)
    return cache


def clear_afml_cache(warn: bool = True) -> int:
    """Removes every cached entry and resets the per-function statistics; returns how many
    entries were removed. ``warn=True`` logs what was cleared (logger ``afml_cache``)."""
    cache = shared_cache()
    if cache is None:
        return 0
    removed = cache.clear()
    cache.reset_function_stats()
    if warn:
        _log.warning("afml_cache: cleared %d entries from %s", removed, cache.directory)
    return removed
