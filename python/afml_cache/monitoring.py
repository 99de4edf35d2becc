"""Per-function statistics of the decorators, under the original AFML cache's names.

The counts live in the cache directory (shared counters updated atomically by every process), so
they are correct across processes and restarts: every hit and miss is counted, none is lost at
exit.
"""

from __future__ import annotations

from typing import Any

from afml_cache import config
from afml_cache.cache import Cache

__all__ = [
    "cache_status",
    "function_row",
    "function_stats",
    "get_cache_monitor",
    "get_cache_stats",
]

_FIELDS = (
    "function_name",
    "total_calls",
    "cache_hits",
    "cache_misses",
    "hit_rate",
    "avg_computation_time",
    "time_saved",
    "cache_size_mb",
    "last_accessed",
)


def _empty(name: str, size_bytes: int = 0) -> dict[str, Any]:
    return {
        **dict.fromkeys(_FIELDS, 0),
        "function_name": name,
        "last_accessed": None,
        "hit_rate": 0.0,
        "cache_size_mb": size_bytes / 1e6,
    }


def _row(raw: dict[str, Any], size_bytes: int) -> dict[str, Any]:
    calls, hits, misses = raw["calls"], raw["hits"], raw["misses"]
    return {
        "function_name": raw["namespace"],
        "total_calls": calls,
        "cache_hits": hits,
        "cache_misses": misses,
        "hit_rate": hits / calls if calls else 0.0,
        "avg_computation_time": raw["compute_time"] / misses if misses else 0.0,
        "time_saved": raw["time_saved"],
        "cache_size_mb": size_bytes / 1e6,
        "last_accessed": raw["last_accessed"],
    }


def get_cache_stats() -> dict[str, dict[str, Any]]:
    """Statistics of every cached function, by qualified name: ``function_name``,
    ``total_calls``, ``cache_hits``, ``cache_misses``, ``hit_rate``, ``avg_computation_time``
    (seconds per miss), ``time_saved`` (seconds), ``cache_size_mb``, ``last_accessed`` (seconds
    since the epoch)."""
    cache = config.shared_cache()
    if cache is None:
        return {}
    sizes: dict[str, int] = {}
    for entry in cache._store.scan(None):
        sizes[entry["namespace"]] = sizes.get(entry["namespace"], 0) + entry["size"]
    return {
        raw["namespace"]: _row(raw, sizes.get(raw["namespace"], 0))
        for raw in cache._store.function_stats()
        if raw["calls"]
    }


def function_row(cache: Cache | None, name: str, size_bytes: int) -> dict[str, Any]:
    """The statistics of the cached function ``name`` kept in ``cache``'s directory, given the
    bytes its entries take (zeros if it was never called, or there is no usable cache)."""
    if cache is None:
        return _empty(name, size_bytes)
    for raw in cache._store.function_stats():
        if raw["namespace"] == name:
            return _row(raw, size_bytes)
    return _empty(name, size_bytes)


def function_stats(name: str) -> dict[str, Any]:
    """The statistics of one cached function of the configured cache."""
    cache = config.shared_cache()
    size = sum(e["size"] for e in cache._store.scan(name)) if cache is not None else 0
    return function_row(cache, name, size)


def cache_status() -> str:
    """One line: ``Hit rate: 82.5% | Tracked functions: 15 | Saved: 3.2 h``."""
    stats = get_cache_stats().values()
    calls = sum(s["total_calls"] for s in stats)
    hits = sum(s["cache_hits"] for s in stats)
    rate = 100.0 * hits / calls if calls else 0.0
    saved = sum(s["time_saved"] for s in stats)
    return f"Hit rate: {rate:.1f}% | Tracked functions: {len(stats)} | Saved: {_duration(saved)}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


class CacheMonitor:
    """Reads the per-function statistics (the full monitor with reports comes later)."""

    def get_function_stats(self, name: str) -> dict[str, Any]:
        return function_stats(name)

    def get_all_function_stats(self) -> dict[str, dict[str, Any]]:
        return get_cache_stats()


def get_cache_monitor() -> CacheMonitor:
    return CacheMonitor()
