"""Prometheus metrics of a cache directory, for ``prometheus_client`` (an optional dependency:
``pip install "afml-cache[prometheus]"``).

    import prometheus_client
    from afml_cache.prometheus import register_collector

    register_collector()  # the configured cache, in prometheus_client's default registry
    prometheus_client.start_http_server(9464)

or, without writing code, ``afml-cache serve``. Each scrape reads the counters kept in the cache
directory, so the calls of every process using that directory show, not only this one's.

Metrics, labelled by ``function`` (the cached function's qualified name, or the namespace of a
plain `Cache`):

- ``afml_cache_hits_total``, ``afml_cache_misses_total``: decorated calls (counters);
- ``afml_cache_latency_seconds``: whole decorated calls, a histogram also labelled by
  ``result`` (``hit`` or ``miss``), with buckets at the powers of two from 1 µs (every fourth of
  the store's latency buckets, to keep the series few), with ``_sum`` and ``_count``;
- ``afml_cache_hit_rate``: hits / calls (gauge);
- ``afml_cache_size_bytes``: bytes of the function's entries on disk (gauge);
- ``afml_cache_time_saved_seconds_total``: compute time its hits saved (counter);
- ``afml_cache_evictions_total``: entries evicted from the whole directory (counter, no label).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the package
    raise ImportError(
        f"afml_cache.prometheus needs the prometheus_client package ({exc}); install it with: "
        'pip install "afml-cache[prometheus]"'
    ) from exc

from afml_cache import config
from afml_cache._core import LATENCY_BOUNDS
from afml_cache.cache import Cache

__all__ = ["LATENCY_BUCKET_BOUNDS", "CacheCollector", "exposition", "register_collector"]

# Every fourth bound of the store's buckets (4 per doubling): the powers of two from 1 µs.
_EVERY_FOURTH = range(0, len(LATENCY_BOUNDS) - 1, 4)
#: The finite upper bounds (seconds) of ``afml_cache_latency_seconds``'s buckets; +Inf follows.
LATENCY_BUCKET_BOUNDS: tuple[float, ...] = tuple(LATENCY_BOUNDS[i] for i in _EVERY_FOURTH)
_LE = [floatToGoString(bound) for bound in LATENCY_BUCKET_BOUNDS] + ["+Inf"]


class CacheCollector(Collector):
    """Collects the metrics of one cache directory at each scrape.

    ``cache`` is a `Cache`, a cache directory, or None for the cache the decorators use (looked
    up at each scrape, so ``afml_cache.configure(directory=...)`` later is followed).
    """

    def __init__(self, cache: Cache | str | os.PathLike[str] | None = None) -> None:
        if cache is None or isinstance(cache, Cache):
            self._cache = cache
        else:
            self._cache = Cache(cache)

    @property
    def cache(self) -> Cache | None:
        """The cache scraped now (None when the configured one cannot be used)."""
        return self._cache if self._cache is not None else config.shared_cache()

    def describe(self) -> list[Metric]:
        # Names only, so registering checks for clashes without reading the directory.
        return list(_families())

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        if cache is None:
            return
        families = _families()
        hits, misses, latency, hit_rate, size, saved, evictions = families
        # Functions called or with entries, sorted by name; a row never called counts zeros.
        for raw in cache.function_stats():
            if not (raw.calls or raw.entries):
                continue
            name = raw.namespace
            hits.add_metric([name], raw.hits)
            misses.add_metric([name], raw.misses)
            latency.add_metric([name, "hit"], _cumulative(raw.hit_latency), raw.hit_latency_sum)
            latency.add_metric([name, "miss"], _cumulative(raw.miss_latency), raw.miss_latency_sum)
            hit_rate.add_metric([name], raw.hits / raw.calls if raw.calls else 0.0)
            size.add_metric([name], raw.bytes)
            saved.add_metric([name], raw.time_saved)
        evictions.add_metric([], cache.stats(wait_for_writes=False)["evictions"])
        yield from families


def _families() -> tuple[Any, ...]:
    function = ["function"]
    return (
        CounterMetricFamily(
            "afml_cache_hits", "Calls of cached functions answered from the cache.", labels=function
        ),
        CounterMetricFamily(
            "afml_cache_misses", "Calls of cached functions that computed.", labels=function
        ),
        HistogramMetricFamily(
            "afml_cache_latency_seconds",
            "Duration of whole calls of cached functions, by result (hit or miss).",
            labels=["function", "result"],
            unit="seconds",
        ),
        GaugeMetricFamily(
            "afml_cache_hit_rate", "Hits per call of cached functions (0 to 1).", labels=function
        ),
        GaugeMetricFamily(
            "afml_cache_size_bytes",
            "Bytes of the function's entries on disk.",
            labels=function,
            unit="bytes",
        ),
        CounterMetricFamily(
            "afml_cache_time_saved_seconds",
            "Compute time the hits of cached functions saved.",
            labels=function,
            unit="seconds",
        ),
        CounterMetricFamily(
            "afml_cache_evictions", "Entries evicted from the cache directory.", labels=[]
        ),
    )


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """The store's counts per bucket as Prometheus buckets: calls at or under each bound."""
    buckets, running, taken = [], 0, 0
    for le, upto in zip(_LE, [*_EVERY_FOURTH, len(counts) - 1], strict=True):
        running += sum(counts[taken : upto + 1])
        taken = upto + 1
        buckets.append((le, float(running)))
    return buckets


def register_collector(
    cache: Cache | str | os.PathLike[str] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> CacheCollector:
    """Registers a `CacheCollector` of ``cache`` (a `Cache`, a cache directory, or None for the
    configured cache) in ``registry`` (default: prometheus_client's global one) and returns it;
    ``registry.unregister(collector)`` removes it."""
    collector = CacheCollector(cache)
    registry.register(collector)
    return collector


def exposition(
    cache: Cache | str | os.PathLike[str] | None = None, accept: str = ""
) -> tuple[bytes, str]:
    """The metrics of ``cache`` as a scrape answer: the body and its content type, in the
    format the ``Accept`` header ``accept`` asks for (Prometheus text, or OpenMetrics)."""
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
