"""Cache failures cost a recomputation and one warning, never the user's run (issue 11), and bad
options are refused where they are given.

Every test compares what a decorated call returns with what the function computes, and counts
the computations.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import afml_cache
from afml_cache import Cache, robust_cacheable, time_aware_cacheable
from afml_cache._store.writer import WRITER

# --- an entry that cannot be opened ----------------------------------------------------------


def _twice(calls: list[int]) -> Callable[[int], int]:
    def twice(x: int) -> int:
        calls.append(x)
        return 2 * x

    return twice


def test_an_entry_that_cannot_be_opened_is_computed_with_one_warning(tmp_path: Path) -> None:
    calls: list[int] = []
    function = _twice(calls)
    # Two processes' views of one directory: the second has nothing in its memory tier.
    writer = robust_cacheable(cache=Cache(tmp_path / "c"))(function)
    reader = robust_cacheable(cache=Cache(tmp_path / "c"))(function)
    assert writer(3) == 6
    path = Path(writer.cache_entries()[0]["path"])
    path.unlink()
    path.mkdir()  # opening the entry now fails with EISDIR: a StoreError from the store
    with pytest.warns(
        UserWarning, match="twice computes again: .*a directory, not a file"
    ) as caught:
        assert reader(3) == 6
        assert calls == [3, 3]
        assert reader(3) == 6  # computed again, or read back if the store could replace it
    assert len(caught) == 1
    assert reader(4) == 8  # other keys are unharmed
    assert reader(4) == 8
    assert calls.count(4) == 1


# --- a value that no longer unpickles ---------------------------------------------------------

_BROKEN = threading.Event()


def _rebuild(value: int) -> Any:
    if _BROKEN.is_set():
        raise AttributeError("Holder was renamed")  # what unpickling a renamed class raises
    return _Holder(value)


class _Holder:
    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.value,)


@pytest.fixture
def broken() -> Iterator[threading.Event]:
    _BROKEN.clear()
    yield _BROKEN
    _BROKEN.clear()


@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_a_value_that_no_longer_unpickles_is_dropped_and_recomputed_in_either_tier(
    tmp_path: Path, broken: threading.Event, tier: str
) -> None:
    calls: list[int] = []

    def hold(x: int) -> _Holder:
        calls.append(x)
        return _Holder(x)

    writer = robust_cacheable(cache=Cache(tmp_path / "c"))(hold)
    # The memory tier serves the writer's own later calls; a fresh Cache reads the disk.
    reader = writer if tier == "memory" else robust_cacheable(cache=Cache(tmp_path / "c"))(hold)
    assert writer(1).value == 1
    assert calls == [1]
    broken.set()
    with pytest.warns(UserWarning, match="no longer unpickles") as caught:
        first = reader(1)
        second = reader(1)
    assert len(caught) == 1
    assert (first.value, second.value) == (1, 1)
    assert calls == [1, 1, 1]  # the stored value cannot be served: computed each time
    broken.clear()
    assert reader(1).value == 1  # the code is back: the last computed value is a hit again
    assert calls == [1, 1, 1]


def test_cache_get_of_a_value_that_no_longer_unpickles_is_a_miss(
    tmp_path: Path, broken: threading.Event
) -> None:
    cache = Cache(tmp_path / "c")
    cache.set("k", _Holder(5))
    broken.set()
    with pytest.warns(UserWarning, match="no longer unpickles"):
        assert cache.get("k", "missing") == "missing"
    assert "k" not in cache


# --- values written behind do not outlive what removes them ---------------------------------

_LARGE = 300_000  # float64s: 2.4 MB, so the result is written behind


@pytest.fixture
def held_writer() -> Iterator[threading.Event]:
    """Holds the process's writer thread until the event is set, so that writes behind stay
    pending; released by a timer, so that whatever waits for them can go on."""
    release = threading.Event()
    WRITER.submit(release.wait)
    yield release
    release.set()
    afml_cache.flush_writes()


def _release_soon(release: threading.Event) -> None:
    threading.Timer(0.2, release.set).start()


def _ones(calls: list[int]) -> Callable[[int], np.ndarray]:
    def ones(x: int) -> np.ndarray:
        calls.append(x)
        return np.full(_LARGE, float(x))

    return ones


REMOVALS: dict[str, Callable[[Any, Cache], object]] = {
    "Cache.clear": lambda f, cache: cache.clear(),
    "clear_afml_cache": lambda f, cache: afml_cache.clear_afml_cache(warn=False),
    "f.cache_clear": lambda f, cache: f.cache_clear(),
    "invalidate_by_tag": lambda f, cache: f.__afml_cache__.cache().invalidate_by_tag("t"),
}


@pytest.mark.parametrize("removal", list(REMOVALS))
def test_a_value_pending_behind_does_not_reappear_after_it_is_removed(
    cache_dir: Path, held_writer: threading.Event, removal: str
) -> None:
    calls: list[int] = []
    f = robust_cacheable(tags=("t",))(_ones(calls))
    cache = afml_cache.initialize_cache_system()
    assert np.array_equal(f(1), np.full(_LARGE, 1.0))  # its write is pending behind
    _release_soon(held_writer)
    REMOVALS[removal](f, cache)
    afml_cache.flush_writes()
    assert f.cache_entries() == []
    assert np.array_equal(f(1), np.full(_LARGE, 1.0))
    assert calls == [1, 1]


@pytest.mark.parametrize(
    "removal",
    [
        lambda cache: cache.delete("k"),
        lambda cache: cache.invalidate_by_pattern("^k$"),
        lambda cache: cache.invalidate_by_tag("t"),
    ],
    ids=["delete", "invalidate_by_pattern", "invalidate_by_tag"],
)
def test_a_value_pending_behind_does_not_reappear_after_it_is_deleted(
    tmp_path: Path, held_writer: threading.Event, removal: Callable[[Cache], object]
) -> None:
    cache = Cache(tmp_path / "c")
    outcomes: list[Exception | None] = []
    digest = afml_cache.fingerprint("k")
    cache.by_digest.put(
        digest, np.ones(_LARGE), tags=["t"], label="k", behind=lambda e, *_: outcomes.append(e)
    )
    _release_soon(held_writer)
    removal(cache)
    afml_cache.flush_writes()
    assert outcomes == [None]
    assert cache.get("k") is None
    assert len(cache) == 0


# --- bad options are refused where they are given --------------------------------------------

BAD_TTLS = [math.nan, math.inf, -math.inf, True, False, "10", 0, -5, [10]]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_a_bad_ttl_is_refused_by_the_decorators(ttl: Any) -> None:
    with pytest.raises(ValueError, match=r"ttl=.*positive number of seconds") as raised:
        robust_cacheable(ttl=ttl)
    assert repr(ttl) in str(raised.value)
    with pytest.raises(ValueError, match="ttl="):
        time_aware_cacheable(ttl=ttl)


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_a_bad_ttl_is_refused_by_cache_set_and_touch(tmp_path: Path, ttl: Any) -> None:
    cache = Cache(tmp_path / "c")
    with pytest.raises(ValueError, match=r"ttl=.*positive number of seconds") as raised:
        cache.set("k", 1, ttl=ttl)
    assert repr(ttl) in str(raised.value)
    with pytest.raises(ValueError, match="ttl="):
        cache.set_many({"a": 1}, ttl=ttl)
    cache.set("k", 1)
    with pytest.raises(ValueError, match="ttl="):
        cache.touch("k", ttl=ttl)
    assert cache.get("k") == 1  # a refused option changed nothing
    assert len(cache) == 1


@pytest.mark.parametrize("ttl", [0.5, 10, 3600.0, np.float64(2.5), None])
def test_good_ttls_are_taken(tmp_path: Path, ttl: Any) -> None:
    cache = Cache(tmp_path / "c")
    assert cache.set("k", 1, ttl=ttl)
    assert cache.get("k") == 1
    robust_cacheable(ttl=ttl)


@pytest.mark.parametrize("size", [2**70, "99999999999TB"])
def test_a_size_beyond_any_disk_is_a_value_error(tmp_path: Path, size: Any) -> None:
    with pytest.raises(ValueError, match="size_limit"):
        Cache(tmp_path / "c", size_limit=size)
    with pytest.raises(ValueError, match="size_limit"):
        afml_cache.configure(size_limit=size)
    with pytest.raises(ValueError, match="memory_limit"):
        Cache(tmp_path / "c", memory_limit=size)
    assert not (tmp_path / "c").exists()  # checked before anything touched the disk


@pytest.mark.parametrize("enabled", ["no", "false", 0, 1, "yes"])
def test_configure_enabled_takes_a_bool_only(enabled: Any) -> None:
    before = afml_cache.config.settings()
    with pytest.raises(TypeError, match="enabled"):
        afml_cache.configure(enabled=enabled)
    assert afml_cache.config.settings() == before


def test_configure_enabled_false_turns_caching_off(cache_dir: Path) -> None:
    calls: list[int] = []
    f = robust_cacheable(_twice(calls))
    afml_cache.configure(enabled=False)
    try:
        assert (f(2), f(2)) == (4, 4)
        assert calls == [2, 2]
    finally:
        afml_cache.configure(enabled=True)


# --- the decorators' compression= ---------------------------------------------------------------


@pytest.mark.parametrize("level", ["none", "fast", "default"])
def test_the_decorators_compression_is_the_level_of_the_functions_entries(
    tmp_path: Path, level: str
) -> None:
    calls: list[int] = []
    cache = Cache(tmp_path / "c", compression="default")
    f = robust_cacheable(compression=level, cache=cache)(_ones(calls))
    g = robust_cacheable(cache=cache)(_twice(calls))  # no option: the cache's level
    assert np.array_equal(f(3), np.full(_LARGE, 3.0))
    assert g(3) == 6
    afml_cache.flush_writes()
    assert [e["compression"] for e in f.cache_entries()] == [level]
    assert [e["compression"] for e in g.cache_entries()] == ["default"]
    fresh = robust_cacheable(compression=level, cache=Cache(tmp_path / "c"))(_ones(calls))
    assert np.array_equal(fresh(3), np.full(_LARGE, 3.0))
    assert calls == [3, 3]


@pytest.mark.parametrize("level", ["lz4", "zstd", "", b"fast", 3])
def test_an_unknown_compression_is_refused_when_the_decorator_is_applied(level: Any) -> None:
    with pytest.raises(ValueError, match=r"compression=.*'none', 'fast', 'default'"):
        robust_cacheable(compression=level)
    with pytest.raises(ValueError, match="compression="):
        time_aware_cacheable(compression=level)
    with pytest.raises(ValueError, match="compression="):
        robust_cacheable(compression=level)(lambda x: x)


@pytest.mark.parametrize(
    "environment",
    [
        {"AFML_CACHE_REMOTE": "notaurl"},
        {"AFML_CACHE_REMOTE": "s3:/bucket/prefix"},
        {"AFML_CACHE_REMOTE": "file:///nowhere", "AFML_CACHE_KEY": "zz"},
    ],
    ids=["not-a-url", "one-slash", "bad-key"],
)
def test_bad_remote_settings_in_the_environment_run_calls_uncached(
    run_python, tmp_path, environment
):
    # Set for another job perhaps: every decorated call raised ValueError.
    out = run_python(
        """
        import warnings
        from afml_cache import CacheWarning, robust_cacheable

        @robust_cacheable
        def f(x):
            return x + 1

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(f(1), f(1))
        messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
        print(len(messages), "AFML_CACHE_REMOTE" in messages[0])
        """,
        env={"AFML_CACHE_DIR": str(tmp_path / "cache"), **environment},
    )
    assert out.splitlines() == ["2 2", "1 True"]
