"""`afml_cache.Cache` as a user sees it: each method, keys, namespaces, expiry, tags, eviction
policies, the memory tier, statistics, archives, permissions and single-flight locks.

Survivors of an eviction and values written by "another process" are always read through a fresh
`Cache` (or a subprocess), so the files on disk decide, not this process's memory tier.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.entry_bytes import bytes_on_disk, entry_files, locate, stored

import afml_cache
from afml_cache import Cache, CacheError, fingerprint, flush_writes

WORKER = Path(__file__).parent / "helpers" / "cache_worker.py"
MISSING = object()


# --- helpers ------------------------------------------------------------------------------------


def noise(nbytes: int, seed: int) -> np.ndarray:
    """Incompressible bytes, so an entry's size on disk is predictable."""
    return np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The next line ``proc`` prints, failing the test if none comes within ``timeout``."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"the worker printed nothing within {timeout}s")
    return proc.stdout.readline().strip()


def survivors(directory: Path, **options) -> set:
    return set(Cache(directory, **options).keys())


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(directory: Path) -> Cache:
    return Cache(directory)


def in_subprocess(run_python, directory: Path, body: str, namespace: str = "default") -> str:
    """Runs ``body`` in a fresh interpreter with ``cache`` opened on ``directory``."""
    return run_python(
        "import numpy as np\n"
        "import pandas as pd\n"
        "from afml_cache import Cache\n"
        f"cache = Cache({str(directory)!r}, namespace={namespace!r})\n" + body
    )


# --- values -------------------------------------------------------------------------------------


def test_set_get_delete_contains_and_item_access(cache):
    assert cache.get("a") is None
    assert cache.get("a", "fallback") == "fallback"
    assert "a" not in cache
    assert cache.set("a", {"x": 1}) is True
    assert "a" in cache
    assert cache.get("a") == {"x": 1}
    assert cache["a"] == {"x": 1}
    cache["b"] = [1, 2]
    assert cache["b"] == [1, 2]
    del cache["b"]
    assert "b" not in cache
    with pytest.raises(KeyError):
        cache["b"]
    with pytest.raises(KeyError):
        del cache["b"]
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert cache.get("a", MISSING) is MISSING
    assert len(cache) == 0


def test_a_stored_none_is_a_hit_not_a_miss(cache, directory):
    cache.set("nothing", None)
    assert "nothing" in cache
    assert cache.get("nothing", MISSING) is None
    assert Cache(directory).get("nothing", MISSING) is None
    assert cache["nothing"] is None


def test_overwriting_a_key_replaces_its_value_everywhere(cache, directory):
    cache.set("a", 1)
    cache.set("a", 2)
    assert cache.get("a") == 2
    assert Cache(directory).get("a") == 2
    assert len(cache) == 1
    assert len(stored(directory)) == 1
    assert cache.stats()["count"] == 1


KEY_PAIRS = {
    # a key, and an equal key built separately: both must find the same entry
    "str": ("close", "".join(["cl", "ose"])),
    "int": (12345, int("12345")),
    "float": (0.1, 1 / 10),
    "bytes": (b"\x00\x01", bytes([0, 1])),
    "None": (None, None),
    "nested tuple": ((1, ("a", 2.5), None), (1, ("a", 2.5), None)),
    # Insertion order counts (fingerprint spec v2): an equal dict in the same order.
    "dict": ({"pt_sl": (1, 2), "min_ret": 0.01}, dict([("pt_sl", (1, 2)), ("min_ret", 0.01)])),
    "frozenset": (frozenset({1, 2, 3}), frozenset({3, 2, 1})),
    "date": (dt.date(2024, 1, 2), dt.date(2024, 1, 2)),
    "numpy array": (np.arange(1000.0), np.arange(1000.0)),
    "non-contiguous array": (np.arange(2000.0)[::2], np.arange(0.0, 2000.0, 2.0)),
    "2d array": (np.arange(12).reshape(3, 4), np.arange(12).reshape(3, 4).copy(order="F")),
    "DataFrame": (
        pd.DataFrame({"close": [1.0, 2.0, 3.0], "volume": [10, 20, 30]}),
        pd.DataFrame({"close": [1.0, 2.0, 3.0], "volume": [10, 20, 30]}),
    ),
    "Series with DatetimeIndex": (
        pd.Series([1.0, 2.0], index=pd.date_range("2024-01-01", periods=2, tz="UTC")),
        pd.Series([1.0, 2.0], index=pd.date_range("2024-01-01", periods=2, tz="UTC")),
    ),
    "tuple of frame and params": (
        (pd.DataFrame({"a": [1, 2]}), {"window": 5}),
        (pd.DataFrame({"a": [1, 2]}), {"window": 5}),
    ),
}


@pytest.mark.parametrize("name", KEY_PAIRS)
def test_equal_keys_find_the_same_entry(directory, name):
    key, equal_key = KEY_PAIRS[name]
    Cache(directory).set(key, ("value for", name))
    assert Cache(directory).get(equal_key) == ("value for", name)
    assert equal_key in Cache(directory)


def test_keys_of_different_types_or_contents_are_different_entries(cache):
    keys = [
        1,
        "1",
        1.0,
        True,
        b"1",
        (1,),
        [1],
        np.array([1]),
        np.array([1], dtype=np.int32),
        np.array([1.0]),
        pd.DataFrame({"a": [1]}),
        pd.DataFrame({"b": [1]}),
        pd.Series([1]),
    ]
    for i, key in enumerate(keys):
        cache.set(key, i)
    assert len(cache) == len(keys)
    for i, key in enumerate(keys):
        assert cache.get(key) == i, f"key #{i} ({key!r}) found another key's value"


def test_keys_are_the_original_str_and_int_keys_and_digests_otherwise(cache):
    cache.set("name", 1)
    cache.set(7, 2)
    cache.set((1, 2), 3)
    frame = pd.DataFrame({"a": [1.0]})
    cache.set(frame, 4)
    assert set(cache.keys()) == {"name", 7, fingerprint((1, 2)), fingerprint(frame)}
    assert set(cache) == set(cache.keys())


def test_entries_describe_what_was_stored(cache, directory):
    value = np.arange(100_000, dtype=np.float64)
    cache.set(
        "labels",
        value,
        ttl=100,
        tags=["es", "daily"],
        protect=True,
        metadata={"rows": 100_000},
        compute_time=2.5,
        time_range=(10, 20),
    )
    cache.set(("not", "a", "str"), 1)
    by_digest = {e["digest"]: e for e in cache.entries()}
    assert set(by_digest) == {fingerprint("labels"), fingerprint(("not", "a", "str"))}
    entry = by_digest[fingerprint("labels")]
    assert entry["key"] == "labels"
    assert sorted(entry["tags"]) == ["daily", "es"]
    assert entry["protected"] is True
    assert entry["metadata"] == {"rows": 100_000}
    assert entry["compute_time"] == 2.5
    assert tuple(entry["time_range"]) == (10, 20)
    assert entry["compression"] == "default"
    assert entry["value_size"] >= value.nbytes
    assert entry["size"] == Path(entry["path"]).stat().st_size
    assert Path(entry["path"]) == (
        directory / "entries" / "default" / entry["digest"][:2] / f"{entry['digest']}.afc"
    )
    assert 99 <= entry["expires"] - entry["created"] <= 101
    assert entry["hits"] == 0
    other = by_digest[fingerprint(("not", "a", "str"))]
    packed = locate(directory, ("not", "a", "str"))  # a small entry: a record in its shard's pack
    assert (Path(other["path"]), other["size"]) == (packed.path, packed.length)
    assert packed.path == directory / "entries" / "default" / f"{other['digest'][:2]}.pack"
    assert other["key"] is None
    assert other["expires"] is None
    assert other["protected"] is False
    assert other["tags"] == []
    # A read from disk is recorded on the entry.
    Cache(directory).get("labels")
    (entry,) = [e for e in cache.entries() if e["key"] == "labels"]
    assert entry["hits"] == 1
    assert entry["last_accessed"] is not None and entry["last_accessed"] >= entry["created"]


def test_metadata_must_be_json(cache):
    with pytest.raises(ValueError, match="JSON"):
        cache.set("a", 1, metadata={"when": object()})
    assert "a" not in cache


def test_an_unpicklable_value_raises_cache_error_and_stores_nothing(cache):
    with pytest.raises(CacheError, match="pickle"):
        cache.set("f", lambda: 0)
    assert "f" not in cache
    assert stored(cache.directory) == []


def test_get_many_and_set_many(cache):
    assert cache.set_many({"a": 1, "b": 2}) == 2
    assert cache.set_many([("c", 3), (("d",), 4)], tags=["batch"]) == 2
    assert cache.get_many(["a", "c", ("d",), "missing"]) == {"a": 1, "c": 3, ("d",): 4}
    assert cache.get_many([]) == {}
    assert cache.invalidate_by_tag("batch") == 2
    assert cache.get_many(["a", "b", "c", ("d",)]) == {"a": 1, "b": 2}


def test_get_many_refuses_keys_a_dict_cannot_hold_apart(cache):
    # 1, 1.0 and True are three entries; a dict of them held the last value under the first key.
    for key, value in ((1, "int"), (1.0, "float"), (True, "bool")):
        cache.set(key, value)
    assert [cache.get(k) for k in (1, 1.0, True)] == ["int", "float", "bool"]
    with pytest.raises(ValueError, match=r"1 and 1.0 are one dict key.*cache.get"):
        cache.get_many([1, 1.0, True])
    assert cache.get_many([1, 1, "missing"]) == {1: "int"}
    frame = pd.DataFrame({"x": [1.0]})
    cache.set(frame, "frame")
    with pytest.raises(TypeError, match=r"DataFrame key cannot be a dict key.*cache.get"):
        cache.get_many([frame])
    assert cache.get(frame) == "frame"


def test_set_many_with_ttl(cache):
    assert cache.set_many({"a": 1, "b": 2}, ttl=0.2) == 2
    time.sleep(0.3)
    assert cache.get_many(["a", "b"]) == {}


def test_volume_is_the_bytes_of_the_entry_files(cache, directory):
    assert cache.volume() == 0
    for i in range(5):
        cache.set(i, noise(10_000 * (i + 1), i))
    assert cache.volume() == bytes_on_disk(directory)
    cache.delete(3)
    assert cache.volume() == bytes_on_disk(directory)
    assert cache.clear() == 4
    assert cache.volume() == 0
    assert stored(directory) == []


# --- namespaces ---------------------------------------------------------------------------------


def test_namespaces_isolate_keys(directory):
    features = Cache(directory, namespace="features")
    labels = Cache(directory, namespace="labels")
    features.set("k", "feature value", tags=["t"])
    assert labels.get("k") is None
    assert "k" not in labels
    labels.set("k", "label value", tags=["t"])
    assert features.get("k") == "feature value"
    assert Cache(directory, namespace="features").get("k") == "feature value"
    assert features.keys() == ["k"] and labels.keys() == ["k"]
    assert len(features.entries()) == 1
    assert labels.invalidate_by_tag("t") == 1
    assert features.get("k") == "feature value"
    labels.set("k", "again")
    assert labels.invalidate_by_pattern("k") == 1
    assert features.get("k") == "feature value"
    labels.set("k", "again")
    assert labels.delete("k") is True
    assert Cache(directory, namespace="features").get("k") == "feature value"
    assert Cache(directory).get("k") is None  # the default namespace is another one


@pytest.mark.parametrize("size", ["small", "large"])  # a packed record, a file of its own
@pytest.mark.parametrize("namespace", ["../escape", "a/b", "\x00", ".hidden", "ü" * 200])
def test_odd_namespaces_stay_inside_the_entries_directory(directory, namespace, size):
    value = 1 if size == "small" else "v" * 10_000
    odd = Cache(directory, namespace=namespace)
    odd.set("k", value)
    assert Cache(directory, namespace=namespace).get("k") == value
    assert Cache(directory).get("k") is None
    (entry,) = stored(directory)
    assert (directory / "entries") in entry.path.parents
    assert entry.path.relative_to(directory / "entries").parts[1:] == (
        (f"{fingerprint('k')[:2]}.pack",)
        if size == "small"
        else (fingerprint("k")[:2], f"{fingerprint('k')}.afc")
    )


def test_clear_removes_every_namespace(directory):
    a = Cache(directory, namespace="a")
    b = Cache(directory, namespace="b")
    a.set("k", 1)
    b.set("k", 2)
    b.set("j", 3)
    assert a.clear() == 3
    assert b.get("k") is None and a.get("k") is None
    assert a.stats()["count"] == 0 and a.volume() == 0


# --- expiry -------------------------------------------------------------------------------------


def test_an_entry_expires_after_its_ttl(cache, directory):
    cache.set("short", 1, ttl=0.5)
    cache.set("long", 2)
    assert cache.get("short") == 1
    time.sleep(0.6)
    assert cache.get("short") is None  # this process's memory copy expires too
    assert Cache(directory).get("short") is None
    assert "short" not in cache
    assert cache.get("long") == 2


def test_expire_removes_expired_entries_and_counts_them(directory):
    writer = Cache(directory)
    for i in range(3):
        writer.set(f"short-{i}", i, ttl=0.2)
    writer.set("long", "stays", ttl=3600)
    writer.set("forever", "stays")
    time.sleep(0.3)
    assert Cache(directory).expire() == 3
    assert sorted(Cache(directory).keys()) == ["forever", "long"]
    assert Cache(directory).volume() == bytes_on_disk(directory)
    assert Cache(directory).expire() == 0


def test_touch_gives_a_new_time_to_live(cache, directory):
    cache.set("t", "value", ttl=0.5)
    assert cache.touch("t", None) is True
    time.sleep(0.6)
    assert cache.get("t") == "value"
    assert Cache(directory).get("t") == "value"
    assert cache.touch("t", 0.5) is True
    assert cache.get("t") == "value"
    time.sleep(0.6)
    assert cache.get("t") is None
    assert Cache(directory).get("t") is None
    assert cache.touch("t", 10) is False
    assert cache.touch("never stored") is False
    assert cache.volume() == bytes_on_disk(directory)


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_a_ttl_must_be_positive(cache, ttl):
    with pytest.raises(ValueError, match="ttl"):
        cache.set("a", 1, ttl=ttl)
    assert "a" not in cache


# --- tags and patterns --------------------------------------------------------------------------


def test_invalidate_by_tag_removes_exactly_the_tagged_entries(cache):
    cache.set("a", 1, tags=["x"])
    cache.set("b", 2, tags=["x", "y"])
    cache.set("c", 3, tags="y")  # one tag given as a str, not its characters
    cache.set("d", 4)
    assert cache.invalidate_by_tag("nope") == 0
    assert cache.invalidate_by_tag("x") == 2
    assert sorted(cache.keys()) == ["c", "d"]
    assert cache.get("a") is None and cache.get("b") is None
    assert cache.invalidate_by_tag("y") == 1
    assert cache.keys() == ["d"]
    assert cache.stats()["count"] == 1


def test_invalidate_by_pattern_matches_str_keys_only(cache):
    for key in ["feat_1", "feat_2", "label_feat", 42, ("feat_3",), "other"]:
        cache.set(key, str(key))
    assert cache.invalidate_by_pattern(r"^feat_\d") == 2
    assert cache.invalidate_by_pattern(re.compile("feat")) == 1  # label_feat
    assert cache.invalidate_by_pattern("42") == 0  # an int key is not matched
    assert set(cache.keys()) == {42, fingerprint(("feat_3",)), "other"}
    assert cache.get(("feat_3",)) == "('feat_3',)"
    assert cache.get("feat_1") is None


# --- eviction -----------------------------------------------------------------------------------

LIMIT = 100_000
ENTRY = 20_000  # four entries fit; a fifth takes the total over LIMIT, and one eviction suffices

# "memory tier on" is how everyone uses Cache; with memory_limit=1 nothing fits in memory, so
# every get reads the disk. A policy must pick the same victim either way.
MEMORY_TIER = pytest.mark.parametrize(
    "memory_limit", ["256MB", 1], ids=["memory-tier-on", "memory-tier-off"]
)


def small_cache(directory: Path, policy: str, memory_limit="256MB") -> Cache:
    return Cache(
        directory,
        size_limit=LIMIT,
        eviction_policy=policy,
        compression="none",
        memory_limit=memory_limit,
    )


@MEMORY_TIER
def test_lru_evicts_the_least_recently_used(directory, memory_limit):
    cache = small_cache(directory, "lru", memory_limit)
    for key in "abcd":
        cache.set(key, noise(ENTRY, ord(key)))
    cache.get("a")  # oldest, but used last
    cache.set("e", noise(ENTRY, 0))
    assert survivors(directory) == {"a", "c", "d", "e"}
    assert cache.stats()["evictions"] == 1


@MEMORY_TIER
def test_lfu_evicts_the_least_frequently_used(directory, memory_limit):
    cache = small_cache(directory, "lfu", memory_limit)
    for key in "abcd":
        cache.set(key, noise(ENTRY, ord(key)))
    for key, hits in {"a": 3, "c": 2, "d": 1}.items():
        for _ in range(hits):
            assert cache.get(key) is not None
    cache.set("e", noise(ENTRY, 0))
    assert survivors(directory) == {"a", "c", "d", "e"}


def test_fifo_evicts_the_oldest_whatever_its_use(directory):
    cache = small_cache(directory, "fifo", memory_limit=1)
    for key in "abcd":
        cache.set(key, noise(ENTRY, ord(key)))
    for _ in range(3):
        cache.get("a")
    cache.set("e", noise(ENTRY, 0))
    assert survivors(directory) == {"b", "c", "d", "e"}


def test_size_evicts_the_largest(directory):
    cache = small_cache(directory, "size")
    for key, nbytes in {"a": 10_000, "b": 35_000, "c": 15_000, "d": 20_000}.items():
        cache.set(key, noise(nbytes, ord(key)))
    cache.set("e", noise(25_000, 0))
    assert survivors(directory) == {"a", "c", "d", "e"}


@MEMORY_TIER
def test_hybrid_evicts_the_cheapest_to_recompute_per_byte(directory, memory_limit):
    cache = small_cache(directory, "hybrid", memory_limit)
    # score = compute_time * (hits + 1) / bytes; equal sizes, so compute time and hits decide.
    cache.set("costly", noise(ENTRY, 1), compute_time=10.0)
    cache.set("cheap", noise(ENTRY, 2), compute_time=0.01)  # score 0.01: the victim
    cache.set("medium", noise(ENTRY, 3), compute_time=1.0)
    cache.set("popular", noise(ENTRY, 4), compute_time=0.004)  # 0.004 * (4 + 1) = 0.02
    for _ in range(4):
        assert cache.get("popular") is not None
    cache.set("new", noise(ENTRY, 5), compute_time=5.0)
    assert survivors(directory) == {"costly", "medium", "popular", "new"}


def test_hybrid_prefers_to_evict_large_entries_of_equal_cost(directory):
    cache = small_cache(directory, "hybrid")
    cache.set("small", noise(10_000, 1), compute_time=1.0)
    cache.set("large", noise(40_000, 2), compute_time=1.0)
    cache.set("mid", noise(25_000, 3), compute_time=1.0)
    cache.set("new", noise(25_000, 4), compute_time=1.0)  # over the limit now
    assert survivors(directory) == {"small", "mid", "new"}


def test_hits_served_from_memory_are_recorded_on_the_entry(cache, directory):
    cache.set("k", np.arange(10))
    for _ in range(3):
        cache.get("k")
    # Memory hits reach the entry's counters in batches (writing each through would cost more
    # than the hit): at the owner's next listing, write, or exit, or after a second.
    (entry,) = cache.entries()
    assert entry["hits"] == 3, "gets answered by the memory tier never reach the entry's counters"
    assert entry["last_accessed"] is not None
    (seen_by_another,) = Cache(directory).entries()
    assert seen_by_another["hits"] == 3


def test_eviction_brings_the_volume_under_90_percent_of_the_limit(directory):
    cache = small_cache(directory, "lru")
    for i in range(12):
        cache.set(i, noise(ENTRY, i))
        assert cache.volume() == bytes_on_disk(directory)
        assert bytes_on_disk(directory) <= LIMIT
    assert bytes_on_disk(directory) <= 0.9 * LIMIT
    assert cache.stats()["evictions"] == 12 - len(stored(directory))
    assert cache.stats()["count"] == len(stored(directory))


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "size", "hybrid"])
def test_protected_entries_are_never_evicted(directory, policy):
    cache = small_cache(directory, policy)
    keep = noise(30_000, 99)  # the oldest, largest, cheapest, never used: first in every policy
    cache.set("keep", keep, protect=True, compute_time=0.0)
    for i in range(10):
        cache.set(i, noise(ENTRY, i), compute_time=1.0)
    assert "keep" in survivors(directory)
    np.testing.assert_array_equal(Cache(directory).get("keep"), keep)
    assert cache.stats()["evictions"] > 0
    assert bytes_on_disk(directory) <= LIMIT


def test_a_value_larger_than_the_limit_warns_is_not_stored_and_evicts_nothing(directory):
    cache = small_cache(directory, "lru")
    cache.set("a", noise(ENTRY, 1))
    cache.set("b", noise(ENTRY, 2))
    before = stored(directory)
    with pytest.warns(UserWarning, match="size_limit"):
        assert cache.set("huge", noise(150_000, 3)) is False
    assert "huge" not in cache
    assert cache.get("huge") is None
    assert Cache(directory).get("huge") is None
    assert stored(directory) == before
    assert survivors(directory) == {"a", "b"}
    stats = cache.stats()
    assert stats["evictions"] == 0 and stats["sets"] == 2 and stats["count"] == 2


def test_a_value_larger_than_the_limit_removes_the_value_it_was_to_replace(directory):
    cache = small_cache(directory, "lru")
    cache.set("a", "old")
    with pytest.warns(UserWarning, match="the value stored before was removed"):
        assert cache.set("a", noise(150_000, 3)) is False
    assert "a" not in cache
    assert cache.get("a") is None
    assert Cache(directory).get("a") is None


def test_a_value_set_after_one_written_behind_is_the_one_kept(directory):
    # A computed result waits for the writer thread; a set of its key right after must not be
    # replaced by it once the writer gets to it.
    cache = Cache(directory)
    for i in range(5):
        key = ("k", i)
        cache.by_digest.put(fingerprint(key), np.full(1_000_000, 1.0), behind=lambda e, n: None)
        cache.set(key, "new")
        flush_writes()
        assert cache.get(key) == "new"
        assert Cache(directory).get(key) == "new"


def test_an_int_key_too_long_for_json_is_stored(directory):
    cache = Cache(directory)
    assert cache.set(10**5000, "v") is True
    assert cache.get(10**5000) == "v"
    assert cache.get(10**5000 + 1) is None
    cache.set(10**100, "w")
    cache.set(10**700, "x")
    assert 10**100 in list(cache.keys())  # listed as itself, where any process reads it back
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)  # the least a process may set
    try:
        assert len(list(cache.keys())) == 3
    finally:
        sys.set_int_max_str_digits(limit)


def test_a_value_computed_too_large_leaves_what_another_writer_stored(cache_dir):
    # A computed value replaces nothing: a precache landing while it was computed stays.
    small = Cache(cache_dir / "small", size_limit="1MB")
    started, release = threading.Event(), threading.Event()

    @afml_cache.robust_cacheable(cache=small, ignore_globals=("started", "release"))
    def feature(n: int) -> np.ndarray:
        started.set()
        release.wait()
        return np.random.default_rng(0).random(500_000)  # too large for the limit

    worker = threading.Thread(target=feature, args=(3,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", afml_cache.CacheWarning)  # the result was not stored
        worker.start()
        started.wait()
        assert feature.precache(np.full(3, 7.0), 3) is True
        release.set()
        worker.join()
        afml_cache.flush_writes()
        np.testing.assert_array_equal(feature(3), np.full(3, 7.0))


def test_a_namespace_is_a_non_empty_str(directory):
    # An empty one would be named on disk as "\x00" is, and the two would share a directory.
    with pytest.raises(ValueError, match="namespace must be a non-empty str"):
        Cache(directory, namespace="")


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size_limit": -1}, "size_limit must be positive"),
        ({"size_limit": 0}, "size_limit must be positive"),
        ({"size_limit": "lots"}, "not a size"),
        ({"size_limit": "-5MB"}, "size_limit must be positive, got '-5MB'"),
        ({"size_limit": "5 parsecs"}, "not a size"),
        ({"memory_limit": -10}, "memory_limit must be positive"),
        ({"memory_limit": "1.5XB"}, "not a size"),
        ({"eviction_policy": "random"}, "'lru', 'lfu', 'fifo', 'size', 'hybrid'"),
        ({"eviction_policy": "LRU "}, "'lru', 'lfu', 'fifo', 'size', 'hybrid'"),
        ({"compression": "zstd"}, "'none', 'fast', 'default'"),
    ],
    ids=lambda x: repr(x) if isinstance(x, dict) else "",
)
def test_bad_configuration_is_a_value_error_naming_what_is_allowed(directory, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Cache(directory, **options)


@pytest.mark.parametrize(
    "options",
    [
        {"size_limit": -1},
        {"memory_limit": -10},
        {"memory_limit": "lots"},
        {"eviction_policy": "random"},
        {"compression": "zstd"},
    ],
    ids=repr,
)
def test_a_rejected_configuration_leaves_no_trace_on_disk(directory, options):
    with pytest.raises(ValueError):
        Cache(directory, **options)
    assert not directory.exists(), "a rejected configuration still created the cache directory"


@pytest.mark.parametrize(
    ("size", "nbytes"),
    [(1000, 1000), ("500KB", 500 * 1024), ("2GB", 2 * 1024**3), ("1.5GiB", 1536 * 1024**2)],
)
def test_sizes_are_parsed(directory, size, nbytes):
    assert Cache(directory, size_limit=size).size_limit == nbytes
    assert Cache(directory, memory_limit=size).memory_limit == nbytes


def test_eviction_policy_and_compression_are_kept(directory):
    cache = Cache(directory, eviction_policy="hybrid", compression="fast")
    assert cache.eviction_policy == "hybrid"
    cache.set("a", np.zeros(100_000))
    assert cache.entries()[0]["compression"] == "fast"


# --- statistics ---------------------------------------------------------------------------------


def test_stats_count_a_scripted_sequence_exactly(directory):
    cache = Cache(directory)
    other = Cache(directory)  # another handle: its own memory tier, the same shared counters
    cache.set("a", 1)
    cache.set("b", np.arange(50_000))
    cache.set("a", 3)  # sets: 3, count: 2
    assert cache.get("a") == 3  # hit (memory)
    assert cache.get("zz") is None  # miss
    assert other.get("b") is not None  # hit (disk)
    assert other.get("b") is not None  # hit (memory)
    assert cache.delete("b") is True  # deletes: 1
    assert cache.delete("b") is False  # nothing deleted, not counted
    assert cache.get("b") is None  # miss
    assert other.get("b") is None  # miss: its memory copy is gone from disk
    stats = cache.stats()
    assert {k: stats[k] for k in ("hits", "misses", "sets", "deletes", "evictions", "count")} == {
        "hits": 3,
        "misses": 3,
        "sets": 3,
        "deletes": 1,
        "evictions": 0,
        "count": 1,
    }
    assert stats["bytes"] == bytes_on_disk(directory)
    assert stats["memory_count"] == 1  # "a"
    assert 0 < stats["memory_bytes"] < 1000
    assert other.stats()["memory_count"] == 0
    shared = {k: v for k, v in other.stats().items() if not k.startswith("memory")}
    assert shared == {k: v for k, v in stats.items() if not k.startswith("memory")}


def test_stats_are_shared_with_other_processes(directory, run_python):
    cache = Cache(directory)
    cache.set("a", 1)
    out = in_subprocess(
        run_python,
        directory,
        "assert cache.get('a') == 1\n"
        "assert cache.get('b') is None\n"
        "cache.set('c', 2)\n"
        "print(cache.stats()['sets'])\n",
    )
    assert out.strip() == "2"
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["sets"], stats["count"]) == (1, 1, 2, 2)


def test_a_value_read_from_disk_is_remembered_only_up_to_a_quarter_of_the_memory_tier(directory):
    # Its private copy would cost more than the next read from disk saves, and push most of the
    # tier out. Both values are over 8 MiB: the write does not remember them, the read decides.
    cache = Cache(directory, memory_limit="40MB")
    cache.set("small", 1)
    under, over = noise(9_600_000, 1), noise(11_000_000, 2)  # a quarter of the tier: 10.5 MB
    cache.set("under", under)
    cache.set("over", over)
    assert cache.stats()["memory_count"] == 1  # "small"
    np.testing.assert_array_equal(cache.get("over"), over)
    assert cache.stats()["memory_count"] == 1
    np.testing.assert_array_equal(cache.get("under"), under)
    assert cache.stats()["memory_count"] == 2
    np.testing.assert_array_equal(cache.get("over"), over)  # read from disk again, whole
    np.testing.assert_array_equal(cache.get("under"), under)  # from memory, a fresh copy
    assert cache.get("small") == 1
    assert cache.stats()["memory_count"] == 2


def test_memory_tier_stays_within_its_limit(directory):
    cache = Cache(directory, memory_limit="100KB")
    for i in range(6):
        cache.set(i, noise(40_000, i))
        assert cache.stats()["memory_bytes"] <= 100 * 1024
    assert 1 <= cache.stats()["memory_count"] <= 2
    for i in range(6):
        np.testing.assert_array_equal(cache.get(i), noise(40_000, i))


# --- the memory tier: never changed by callers, never stale -------------------------------------


@pytest.mark.parametrize("n", [100, 100_000], ids=["in-band", "out-of-band"])
def test_mutating_a_result_or_the_stored_array_never_changes_later_results(cache, n):
    original = np.arange(n, dtype=np.float64)
    stored = original.copy()
    cache.set("a", stored)
    stored[:] = -1  # the caller keeps using the array it stored
    first = cache.get("a")
    np.testing.assert_array_equal(first, original)
    assert first.flags.writeable
    first[:] = -2
    second = cache.get("a")
    np.testing.assert_array_equal(second, original)
    assert not np.shares_memory(second, stored)
    third = cache.get("a")
    assert not np.shares_memory(second, third)


@pytest.mark.parametrize("n", [10, 20_000], ids=["in-band", "out-of-band"])
def test_mutating_a_returned_dataframe_never_changes_later_results(cache, n):
    original = pd.DataFrame(
        {"close": np.linspace(1, 2, n), "volume": np.arange(n), "side": ["buy", "sell"] * (n // 2)},
        index=pd.date_range("2024-01-01", periods=n, freq="min"),
    )
    stored = original.copy(deep=True)
    cache.set("frame", stored)
    stored.iloc[0, 0] = -1.0
    stored["volume"] = 0
    first = cache.get("frame")
    pd.testing.assert_frame_equal(first, original)
    first.iloc[0, 0] = 99.0
    first.loc[first.index[1], "volume"] = -5
    first["close"] *= 2
    first["extra"] = 1
    first.index.name = "changed"
    first.attrs["x"] = 1
    second = cache.get("frame")
    pd.testing.assert_frame_equal(second, original)
    assert second.attrs == {}


def test_a_memory_copy_made_by_set_sees_another_process_overwrite_and_delete(directory, run_python):
    cache = Cache(directory)
    cache.set("k", np.arange(10))
    np.testing.assert_array_equal(cache.get("k"), np.arange(10))  # now served from memory
    in_subprocess(run_python, directory, "cache.set('k', np.arange(10) + 100)\n")
    np.testing.assert_array_equal(cache.get("k"), np.arange(10) + 100)
    in_subprocess(run_python, directory, "assert cache.delete('k')\n")
    assert cache.get("k") is None
    assert "k" not in cache


def test_a_memory_copy_made_by_get_sees_another_process_overwrite(directory, run_python):
    Cache(directory).set("frame", pd.DataFrame({"a": np.arange(100_000)}))
    reader = Cache(directory)
    assert reader.get("frame")["a"].iloc[-1] == 99_999  # read from disk, kept in memory
    assert reader.get("frame")["a"].iloc[-1] == 99_999  # from memory
    in_subprocess(
        run_python, directory, "cache.set('frame', pd.DataFrame({'a': np.arange(100_000) * 2}))\n"
    )
    assert reader.get("frame")["a"].iloc[-1] == 2 * 99_999
    in_subprocess(run_python, directory, "cache.clear()\n")
    assert reader.get("frame") is None


def test_a_memory_copy_sees_another_process_touch_expire_it(directory, run_python):
    cache = Cache(directory)
    cache.set("k", "value")
    assert cache.get("k") == "value"
    in_subprocess(run_python, directory, "assert cache.touch('k', 0.1)\n")
    time.sleep(0.2)
    assert cache.get("k") is None


def test_a_memory_copy_sees_another_process_import_a_new_value(directory, tmp_path, run_python):
    source = Cache(tmp_path / "source")
    source.set("k", "imported")
    source.export(tmp_path / "archive.tar")
    cache = Cache(directory)
    cache.set("k", "local")
    assert cache.get("k") == "local"
    in_subprocess(run_python, directory, f"cache.import_({str(tmp_path / 'archive.tar')!r})\n")
    assert cache.get("k") == "imported"


def test_a_cache_directory_wiped_and_recreated_by_another_process(directory, run_python):
    # A long-running kernel keeps its Cache while someone runs `rm -rf` on the directory and a
    # new process fills it again: the kernel must see the new entries, not its old memory
    # copies, and must not treat the new entries (sealed with the new mac.key) as corrupt.
    cache = Cache(directory)
    cache.set("k", "before the wipe")
    assert cache.get("k") == "before the wipe"
    run_python(
        "import shutil\n"
        "from afml_cache import Cache\n"
        f"shutil.rmtree({str(directory)!r})\n"
        f"Cache({str(directory)!r}).set('k', 'after the wipe')\n"
    )
    assert cache.get("k") == "after the wipe"
    assert Cache(directory).get("k") == "after the wipe", "the new entry was destroyed"
    cache.set("j", "written by the old handle")
    assert Cache(directory).get("j") == "written by the old handle"


class _StoreInterleaving:
    """Wraps a Cache's store so that another writer runs right after one store call returns and
    before the Cache makes its memory copy: an interleaving two processes can always produce."""

    def __init__(self, store, method: str, other_writer) -> None:
        self._store, self._method, self._other_writer = store, method, other_writer

    def __getattr__(self, name):
        attribute = getattr(self._store, name)
        if name != self._method:
            return attribute

        def then_another_write(*args, **kwargs):
            result = attribute(*args, **kwargs)
            self._other_writer()
            return result

        return then_another_write


def test_a_write_by_another_process_just_after_our_set_is_not_hidden_by_memory(directory):
    ours = Cache(directory)
    theirs = Cache(directory)  # stands for another process: own memory tier, same files
    real = ours.by_digest._store
    # `set` writes through put_replacing: a value set replaces what the key holds.
    ours.by_digest._store = _StoreInterleaving(
        real, "put_replacing", lambda: theirs.set("k", "theirs")
    )
    ours.set("k", "ours")
    ours.by_digest._store = real
    assert Cache(directory).get("k") == "theirs"
    assert ours.get("k") == "theirs", "our memory copy hides the newer entry on disk"


def test_a_write_by_another_process_just_after_our_disk_read_is_not_hidden_by_memory(directory):
    Cache(directory).set("k", "old")
    ours = Cache(directory)
    theirs = Cache(directory)
    real = ours.by_digest._store
    ours.by_digest._store = _StoreInterleaving(real, "get", lambda: theirs.set("k", "new"))
    assert ours.get("k") == "old"  # read before the other write: fine
    ours.by_digest._store = real
    assert Cache(directory).get("k") == "new"
    assert ours.get("k") == "new", "our memory copy hides the newer entry on disk"


def test_an_entry_evicted_by_its_own_write_is_not_served_from_memory(directory):
    cache = small_cache(directory, "size")
    cache.set("a", noise(30_000, 1))
    cache.set("b", noise(30_000, 2))
    cache.set("largest", noise(45_000, 3))  # over the limit; the size policy evicts it at once
    assert "largest" not in survivors(directory)
    assert "largest" not in cache
    assert cache.get("largest") is None, "memory serves an entry that is no longer on disk"


# --- archives -----------------------------------------------------------------------------------


def archive_values() -> dict:
    return {
        "array": np.arange(200_000, dtype=np.float64),
        7: {"nested": (1, 2.5, "x")},
        ("tuple", "key"): pd.DataFrame(
            {"a": np.arange(1000), "b": np.linspace(0, 1, 1000)},
            index=pd.date_range("2024-01-01", periods=1000, freq="h", tz="UTC"),
        ),
        "small": b"bytes",
    }


def assert_same_value(got, expected):
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype
    elif isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    else:
        assert got == expected


def test_export_and_import_into_another_directory(tmp_path):
    source = Cache(tmp_path / "source", namespace="research")
    for key, value in archive_values().items():
        source.set(key, value, tags=["exported"], metadata={"k": str(key)})
    Cache(tmp_path / "source", namespace="elsewhere").set("array", "not exported")
    archive = tmp_path / "cache.tar"
    assert source.export(archive) == 4
    target = Cache(tmp_path / "target", namespace="research")
    assert target.import_(archive) == 4
    assert (tmp_path / "source" / "mac.key").read_bytes() != (
        tmp_path / "target" / "mac.key"
    ).read_bytes()
    reader = Cache(tmp_path / "target", namespace="research")
    for key, value in archive_values().items():
        assert_same_value(reader.get(key), value)
    assert all(e["tags"] == ["exported"] for e in reader.entries())
    assert {e["metadata"]["k"] for e in reader.entries()} == {str(k) for k in archive_values()}
    assert Cache(tmp_path / "target", namespace="elsewhere").get("array") is None
    assert reader.check() == []
    assert reader.volume() == bytes_on_disk(tmp_path / "target")


def rewrite_archive(source: Path, target: Path, change) -> None:
    """Copies a tar archive, passing each member's (name, bytes) through ``change``."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old.getmembers():
            data = change(member.name, old.extractfile(member).read())
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            new.addfile(info, io.BytesIO(data))


def flip_in_the_middle(data: bytes) -> bytes:
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    return bytes(bad)


@pytest.mark.parametrize("target_member", ["first", "last", "every", "manifest-key"])
def test_importing_a_tampered_archive_raises_and_stores_nothing_bad(tmp_path, target_member):
    source = Cache(tmp_path / "source")
    values = archive_values()
    for key, value in values.items():
        source.set(key, value)
    archive = tmp_path / "cache.tar"
    source.export(archive)
    with tarfile.open(archive) as tar:
        names = sorted(n for n in tar.getnames() if n.startswith("entries/"))

    def change(name: str, data: bytes) -> bytes:
        if target_member == "manifest-key" and name == "manifest.json":
            manifest = json.loads(data)
            manifest["key"] = os.urandom(32).hex()
            return json.dumps(manifest).encode()
        chosen = {"first": names[:1], "last": names[-1:], "every": names}.get(target_member, [])
        return flip_in_the_middle(data) if name in chosen else data

    tampered = tmp_path / "tampered.tar"
    rewrite_archive(archive, tampered, change)
    target = Cache(tmp_path / "target")
    with pytest.raises(CacheError):
        target.import_(tampered)
    reader = Cache(tmp_path / "target")
    assert reader.check() == []
    for key, value in values.items():
        got = reader.get(key, MISSING)
        if got is not MISSING:
            assert_same_value(got, value)
    if target_member != "last":
        assert stored(tmp_path / "target") == []


def test_importing_something_that_is_not_an_archive_raises_cache_error(tmp_path):
    archive = tmp_path / "foreign.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("entries/000000000.afc")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"junk"))
    with pytest.raises(CacheError, match="manifest"):
        Cache(tmp_path / "target").import_(archive)
    assert stored(tmp_path / "target") == []


# --- permissions --------------------------------------------------------------------------------


def test_the_cache_directory_and_mac_key_are_owner_only(tmp_path):
    directory = tmp_path / "new" / "cache"
    old_umask = os.umask(0o022)
    try:
        cache = Cache(directory)
        cache.set("a", np.arange(100_000))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    key = directory / "mac.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    (entry,) = entry_files(directory)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    for parent in entry.parents:
        if parent == directory:
            break
        assert stat.S_IMODE(parent.stat().st_mode) == 0o700, parent
    Cache(tmp_path / "other")
    assert (tmp_path / "other" / "mac.key").read_bytes() != key.read_bytes()


def test_a_second_handle_reuses_the_mac_key(directory):
    Cache(directory).set("a", 1)
    key = (directory / "mac.key").read_bytes()
    assert Cache(directory).get("a") == 1
    assert (directory / "mac.key").read_bytes() == key


# --- single-flight locks ------------------------------------------------------------------------


def test_lock_is_exclusive_within_a_process_and_released_on_exit(directory):
    cache = Cache(directory)
    other = Cache(directory)
    with cache.lock("k") as held:
        assert held is True
        with other.lock("k", timeout=0.05) as also:
            assert also is False
        with other.lock("another key", timeout=0) as unrelated:
            assert unrelated is True
        with Cache(directory, namespace="other").lock("k", timeout=0) as elsewhere:
            assert elsewhere is True
    with other.lock("k", timeout=0) as held_now:
        assert held_now is True


def test_lock_is_released_when_the_block_raises(directory):
    cache = Cache(directory)
    with pytest.raises(RuntimeError), cache.lock("k") as held:
        assert held
        raise RuntimeError("boom")
    with Cache(directory).lock("k", timeout=0) as held:
        assert held


def test_lock_excludes_other_processes(directory, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    Cache(directory)  # create the directory before the workers race to
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "lock-counter", str(directory), str(counter), "40"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    assert int(counter.read_text()) == 120, "updates made under the lock were lost"


def test_the_lock_of_a_killed_holder_is_free_at_once(directory):
    cache = Cache(directory)
    holder = subprocess.Popen(
        [sys.executable, str(WORKER), "lock-holder", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(holder, timeout=60) == "locked"
        with cache.lock("held", timeout=0.1) as held:
            assert held is False
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        holder.stdout.close()
    with cache.lock("held", timeout=0) as held:
        assert held is True


# --- check --------------------------------------------------------------------------------------


def test_check_reports_and_fixes_bad_entries_and_abandoned_temp_files(cache, directory):
    for i in range(3):
        cache.set(i, noise(5_000, i))
    victim = Path(next(e["path"] for e in cache.entries() if e["key"] == 1))
    data = bytearray(victim.read_bytes())
    data[-40] ^= 1
    victim.write_bytes(bytes(data))
    # A temp file of a writer that no longer exists (pids never reach 4e9).
    abandoned = victim.with_name(f".{victim.name}.4000000000.0.tmp")
    abandoned.write_bytes(b"partial")
    problems = cache.check()
    assert {p["path"] for p in problems} == {str(victim), str(abandoned)}
    assert not any(p["fixed"] for p in problems)
    assert victim.exists() and abandoned.exists()
    fixed = cache.check(fix=True)
    assert {p["path"] for p in fixed} == {str(victim), str(abandoned)}
    assert all(p["fixed"] for p in fixed)
    assert not victim.exists() and not abandoned.exists()
    assert cache.check() == []
    assert cache.stats()["count"] == 2
    assert cache.volume() == bytes_on_disk(directory)
    assert Cache(directory).get(1) is None
    np.testing.assert_array_equal(Cache(directory).get(2), noise(5_000, 2))


def test_check_finds_an_entry_stored_under_another_keys_path(cache, directory):
    # Entries in files of their own (above the packing limit); tests/test_packed_entries.py
    # frames a record as another key's.
    a, b = "a" * 5_000, "b" * 5_000
    cache.set("a", a)
    cache.set("b", b)
    path_a = Path(next(e["path"] for e in cache.entries() if e["key"] == "a"))
    path_b = Path(next(e["path"] for e in cache.entries() if e["key"] == "b"))
    path_b.write_bytes(path_a.read_bytes())
    assert [p["path"] for p in cache.check()] == [str(path_b)]
    assert Cache(directory).get("b") is None  # a's bytes at b's path are not b's value
    assert Cache(directory).get("a") == a


def test_a_relative_directory_stays_where_it_was_given(tmp_path, monkeypatch):
    # Resolved against the current directory at each operation, the cache moved with
    # os.chdir: a notebook that changed directory lost every entry.
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    cache = Cache("relative")
    cache.set("k", "v")
    monkeypatch.chdir(tmp_path / "two")
    assert cache.get("k") == "v"
    assert cache.directory == tmp_path / "one" / "relative"
    assert not (tmp_path / "two" / "relative").exists()
