"""The Prometheus collector: exact values after known calls, cumulative latency buckets, reading
the directory at each scrape (other processes' calls show), and the message when
prometheus_client is missing.

Each test scrapes a fresh `CollectorRegistry`. Latencies are recorded through the store's shared
counters (``record_call``), so each one's bucket is known.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import afml_cache
from afml_cache.cache import Cache
from afml_cache.prometheus import LATENCY_BUCKET_BOUNDS, CacheCollector, register_collector

CHILD_TIMEOUT_S = 120
F = "research.labels.triple_barrier"
G = "research.features.rolling"


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def restore_configuration() -> Iterator[None]:
    previous = afml_cache.CACHE_DIRS["base"]
    yield
    afml_cache.configure(directory=previous)


def hide_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``import prometheus_client`` (and its submodules) fail, as when not installed."""
    loaded = [n for n in sys.modules if n.split(".")[0] == "prometheus_client"]
    for name in {"prometheus_client", *loaded}:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "afml_cache.prometheus", raising=False)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counters_gauges_and_latency_of_recorded_calls(cache, registry):
    store = cache._store
    store.record_call(F, True, 0.0, 2.5, 3e-6)  # a hit in (2.83 µs, 3.36 µs]
    store.record_call(F, True, 0.0, 1.5, 0.003)  # a hit in (2.9 ms, 3.4 ms]
    store.record_call(F, False, 4.0, 0.0, 100.0)  # a miss in (94.9 s, 112.9 s]
    store.record_call(F, False, 1.0, 0.0, 1e7)  # a miss beyond the last finite bound
    store.record_call(G, False, 0.5, 0.0, 0.2)
    register_collector(cache, registry)

    assert value(registry, "afml_cache_hits_total", function=F) == 2
    assert value(registry, "afml_cache_misses_total", function=F) == 2
    assert value(registry, "afml_cache_hit_rate", function=F) == 0.5
    assert value(registry, "afml_cache_time_saved_seconds_total", function=F) == 4.0
    assert value(registry, "afml_cache_hits_total", function=G) == 0
    assert value(registry, "afml_cache_hit_rate", function=G) == 0.0
    assert value(registry, "afml_cache_evictions_total") == 0

    def bucket(le: str, result: str) -> float | None:
        return value(
            registry, "afml_cache_latency_seconds_bucket", function=F, result=result, le=le
        )

    # Cumulative: a bucket counts every call at or under its bound.
    assert bucket("2e-06", "hit") == 0
    assert bucket("4e-06", "hit") == 1
    assert bucket("0.002048", "hit") == 1
    assert bucket("0.004096", "hit") == 2
    assert bucket("+Inf", "hit") == 2
    assert bucket("67.108864", "miss") == 0
    assert bucket("134.217728", "miss") == 1
    assert bucket(repr(LATENCY_BUCKET_BOUNDS[-1]), "miss") == 1
    assert bucket("+Inf", "miss") == 2
    assert value(registry, "afml_cache_latency_seconds_count", function=F, result="hit") == 2
    assert value(
        registry, "afml_cache_latency_seconds_sum", function=F, result="miss"
    ) == pytest.approx(100.0 + 1e7)


def test_the_histogram_has_power_of_two_buckets_from_one_microsecond(cache, registry):
    cache._store.record_call(F, True, 0.0, 0.0, 1e-3)
    register_collector(cache, registry)
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    latency = families["afml_cache_latency_seconds"]
    assert latency.type == "histogram"
    hits = [
        s for s in latency.samples if s.name.endswith("_bucket") and s.labels["result"] == "hit"
    ]
    bounds = [float(s.labels["le"]) for s in hits]
    assert bounds[-1] == math.inf
    assert bounds[:-1] == [1e-6 * 2**k for k in range(len(bounds) - 1)]
    assert bounds[-2] >= 3600  # the buckets reach past an hour
    counts = [s.value for s in hits]
    assert counts == sorted(counts)  # cumulative
    assert {s.name for s in latency.samples} == {
        f"afml_cache_latency_seconds_{part}" for part in ("bucket", "count", "sum")
    }


def test_sizes_and_evictions_come_from_the_directory(tmp_path, registry):
    cache = Cache(tmp_path / "cache", size_limit=40_000)
    for i in range(8):
        cache.set(f"k{i}", os.urandom(10_000))  # incompressible: 8 of them exceed the limit
    cache.namespaced(F).set("x", "a value")
    register_collector(cache, registry)
    scanned = cache._store.scan(None)
    for namespace in ("default", F):
        size = sum(e.size for e in scanned if e.namespace == namespace)
        assert value(registry, "afml_cache_size_bytes", function=namespace) == size
    evictions = cache.stats()["evictions"]
    assert evictions > 0
    assert value(registry, "afml_cache_evictions_total") == evictions


def test_decorated_calls_show_and_each_scrape_reads_the_directory_anew(cache, registry):
    @afml_cache.robust_cacheable(cache=cache)
    def square(x: int) -> int:
        return x * x

    name = square.__afml_cache__.name
    square(3), square(3), square(4)
    register_collector(cache, registry)
    assert value(registry, "afml_cache_hits_total", function=name) == 1
    assert value(registry, "afml_cache_misses_total", function=name) == 2
    assert (
        value(
            registry, "afml_cache_latency_seconds_bucket", function=name, result="miss", le="+Inf"
        )
        == 2
    )

    # Another process calls a function with this directory: the next scrape shows it.
    code = f"""
        import afml_cache
        cache = afml_cache.Cache({str(cache.directory)!r})
        store = cache._store
        store.record_call({G!r}, True, 0.0, 1.0, 0.01)
        store.record_call({G!r}, False, 1.0, 0.0, 0.5)
        store.record_call({name!r}, True, 0.0, 0.0, 1e-5)
    """
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=True, timeout=CHILD_TIMEOUT_S
    )
    assert value(registry, "afml_cache_hits_total", function=name) == 2
    assert value(registry, "afml_cache_hits_total", function=G) == 1
    assert value(registry, "afml_cache_misses_total", function=G) == 1


def test_a_directory_or_the_configured_cache(tmp_path, registry, restore_configuration):
    Cache(tmp_path / "a")._store.record_call(F, True, 0.0, 0.0, 1e-3)
    Cache(tmp_path / "b")._store.record_call(G, True, 0.0, 0.0, 1e-3)
    by_directory = CacheCollector(tmp_path / "a")
    assert by_directory.cache is not None
    assert by_directory.cache.directory == tmp_path / "a"

    register_collector(None, registry)  # follows configure(), scrape by scrape
    afml_cache.configure(directory=tmp_path / "a")
    assert value(registry, "afml_cache_hits_total", function=F) == 1
    assert value(registry, "afml_cache_hits_total", function=G) is None
    afml_cache.configure(directory=tmp_path / "b")
    assert value(registry, "afml_cache_hits_total", function=F) is None
    assert value(registry, "afml_cache_hits_total", function=G) == 1


def test_a_second_collector_of_the_same_metrics_is_refused(tmp_path, registry):
    collector = register_collector(Cache(tmp_path / "cache"), registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register_collector(Cache(tmp_path / "cache"), registry)
    registry.unregister(collector)
    register_collector(Cache(tmp_path / "cache"), registry)


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch):
    hide_prometheus_client(monkeypatch)
    with pytest.raises(ImportError, match=r'pip install "afml-cache\[prometheus\]"'):
        importlib.import_module("afml_cache.prometheus")
