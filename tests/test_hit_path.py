"""What a hit repeats and what it spares: a number is unpickled once and then handed out from
the memory tier; anything else is still a private copy on every hit. What a miss spares: a large
value written behind copies into the memory of an earlier one's copy, once nothing refers to it.
(How long a hit or a miss takes is measured by benches/bench_decorators.py, never here.)"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afml_cache import Cache, robust_cacheable
from afml_cache._store import entries as entries_module
from afml_cache._store.memory import _COUNTS_HOLDERS
from afml_cache._store.writer import WRITER, flush_writes

# Above the size the memory tier keeps once written (8 MiB), within what it can hold.
LARGE = 9 * 1024 * 1024 // 8
# Where reference counts cannot tell that nothing else holds a copy, none is reused.
reuses_copies = pytest.mark.skipif(not _COUNTS_HOLDERS, reason="copies are never reused here")


@pytest.fixture
def unpickled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each value the cache unpickles, in order (the real `deserialize` does the work)."""
    values: list[Any] = []
    real = entries_module.deserialize

    def counting(stream: bytes, buffers: Any) -> Any:
        value = real(stream, buffers)
        values.append(value)
        return value

    monkeypatch.setattr(entries_module, "deserialize", counting)
    return values


def test_a_number_result_is_unpickled_once_then_handed_out_from_memory(
    cache_dir: Path, unpickled: list[Any]
) -> None:
    calls = []

    @robust_cacheable
    def score(window: int, threshold: float) -> float:
        calls.append(window)
        return window * threshold

    assert [score(20, 0.01) for _ in range(3)] == [20 * 0.01] * 3
    before = len(unpickled)
    assert [score(20, 0.01) for _ in range(10)] == [20 * 0.01] * 10
    assert len(unpickled) == before
    assert calls == [20]


def test_a_list_result_is_still_a_private_copy_on_every_hit(
    cache_dir: Path, unpickled: list[Any]
) -> None:
    @robust_cacheable
    def window(n: int) -> list[int]:
        return list(range(n))

    window(3)
    first = window(3)
    first.append(99)  # the caller's copy
    before = len(unpickled)
    assert window(3) == [0, 1, 2]
    assert window(3) is not window(3)
    assert len(unpickled) == before + 3


numbers = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True, allow_infinity=True),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=numbers)
def test_a_number_hits_exactly_as_it_was_computed(cache_dir: Path, value: Any) -> None:
    @robust_cacheable
    def echo(x: Any) -> Any:
        return x

    for _ in range(3):  # the miss, the first hit (unpickled), a hit from what memory keeps
        got = echo(value)
        assert type(got) is type(value)
        assert repr(got) == repr(value)  # -0.0 and 0.0, nan, 1 and True stay apart


@pytest.fixture
def written_from(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """For each entry written, the addresses of the buffers it was written from."""
    addresses: list[list[int]] = []
    real = entries_module.Entries._put

    def noting(self: entries_module.Entries, entry: Any) -> Any:
        addresses.append([np.frombuffer(raw, np.uint8).ctypes.data for raw, _ in entry.buffers])
        return real(self, entry)

    monkeypatch.setattr(entries_module.Entries, "_put", noting)
    return addresses


@reuses_copies
def test_a_large_miss_copies_into_the_memory_of_an_earlier_copy_and_every_hit_is_right(
    cache_dir: Path, written_from: list[list[int]]
) -> None:
    calls = []

    def compute(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).random(LARGE)

    @robust_cacheable
    def walk(seed: int) -> np.ndarray:
        calls.append(seed)
        return compute(seed)

    first = walk(1)
    first[:] = -1.0  # the caller's object: the copy written behind must not see this
    flush_writes()
    walk(2)
    flush_writes()
    assert len(written_from) == 2
    assert written_from[1] == written_from[0]  # fresh memory would fault in every page
    for seed in (1, 2, 1, 2):
        np.testing.assert_array_equal(walk(seed), compute(seed))
    assert calls == [1, 2]


@reuses_copies
def test_a_copy_something_still_reads_is_never_reused(
    tmp_path: Path, written_from: list[list[int]]
) -> None:
    entries = Cache(tmp_path / "cache").by_digest
    gate = threading.Event()
    WRITER.submit(gate.wait)  # holds the writer: the next value stays pending, in memory
    outcomes: list[Exception | None] = []
    entries.put("a1" * 32, np.full(LARGE, 1.0), behind=lambda error, _: outcomes.append(error))
    found, pending, _ = entries.lookup("a1" * 32, copy=False)  # over the copy itself
    assert found
    gate.set()
    entries.put("b2" * 32, np.full(LARGE, 2.0), behind=lambda error, _: outcomes.append(error))
    flush_writes()
    entries.put("c3" * 32, np.full(LARGE, 3.0), behind=lambda error, _: outcomes.append(error))
    flush_writes()
    assert outcomes == [None, None, None]
    assert len(written_from) == 3
    assert written_from[0] not in written_from[1:]
    assert written_from[2] == written_from[1]  # nothing reads that one
    np.testing.assert_array_equal(pending, np.full(LARGE, 1.0))
    for digest, fill in (("a1", 1.0), ("b2", 2.0), ("c3", 3.0)):
        np.testing.assert_array_equal(entries.lookup(digest * 32)[1], np.full(LARGE, fill))


def test_values_waiting_to_be_written_never_hold_more_than_the_memory_limit(
    tmp_path: Path,
) -> None:
    # A writer slower than the caller (a busy machine) must not let copies pile up without end:
    # past the limit, a value is written in the call, from the caller's own buffers.
    entries = Cache(tmp_path / "cache", memory_limit=3 * LARGE * 8 + 4096).by_digest
    gate = threading.Event()
    WRITER.submit(gate.wait)
    outcomes: list[str] = []
    for i, name in enumerate(("a1", "b2", "c3", "d4")):
        value = np.full(LARGE, float(i))
        entries.put(name * 32, value, behind=lambda error, _, n=name: outcomes.append(n))
    written_in_the_call = list(outcomes)
    gate.set()
    flush_writes()
    assert written_in_the_call == ["d4"]
    assert sorted(outcomes) == ["a1", "b2", "c3", "d4"]
    for i, name in enumerate(("a1", "b2", "c3", "d4")):
        np.testing.assert_array_equal(entries.lookup(name * 32)[1], np.full(LARGE, float(i)))


@reuses_copies
def test_spares_of_several_sizes_each_serve_their_own_size(
    tmp_path: Path, written_from: list[list[int]]
) -> None:
    entries = Cache(tmp_path / "cache").by_digest
    sizes = {"a1": LARGE, "b2": LARGE + 512, "c3": LARGE + 512, "d4": LARGE}
    for i, (name, size) in enumerate(sizes.items()):
        entries.put(name * 32, np.full(size, float(i)), behind=lambda error, _: None)
        flush_writes()
    assert written_from[2] == written_from[1]
    assert written_from[3] == written_from[0]
    for i, (name, size) in enumerate(sizes.items()):
        np.testing.assert_array_equal(entries.lookup(name * 32)[1], np.full(size, float(i)))
