"""What a hit repeats and what it spares: a number is unpickled once and then handed out from
the memory tier; anything else is still a private copy on every hit. What a miss spares: a value
over 8 MiB written behind is compressed in the call, so the writer holds its compressed bytes,
never a copy of it; from 64 MiB it is written in the call. (How long a hit or a miss takes is
measured by benches/bench_decorators.py, never here.)"""

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
from afml_cache._store.writer import WRITER, flush_writes

MIB = 1024 * 1024
# Float64 items: above the size the memory tier keeps once written (8 MiB), so compressed in
# the call when written behind; and the size from which a value is written in the call.
LARGE = 9 * MIB // 8
STREAMED = 64 * MIB // 8


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


def test_a_value_over_8_mib_written_behind_is_held_as_a_copy_and_never_sees_a_later_mutation(
    tmp_path: Path,
) -> None:
    entries = Cache(tmp_path / "cache").by_digest
    value = np.repeat(np.arange(LARGE // 64, dtype=np.float64), 64)
    expected = value.copy()
    gate = threading.Event()
    WRITER.submit(gate.wait)  # holds the writer: the value stays pending
    outcomes: list[Exception | None] = []
    entries.put("a1" * 32, value, behind=lambda error, _: outcomes.append(error))
    pending = WRITER.pending
    value[:] = -1.0  # the caller's object, once put() returned
    gate.set()
    flush_writes()
    assert outcomes == [None]
    # A copy of its buffers beside its pickle stream (compressed on the writer thread).
    assert value.nbytes <= pending < value.nbytes + 4096
    assert len(entries.memory) == 0  # too large to be remembered on set
    np.testing.assert_array_equal(entries.lookup("a1" * 32)[1], expected)


def test_a_lookup_of_a_large_value_still_waiting_for_the_writer_does_not_wait(
    tmp_path: Path,
) -> None:
    # The writer runs at a low priority: a caller of the same key must not wait behind it (and
    # behind everything queued before it) for a value whose copy is at hand.
    entries = Cache(tmp_path / "cache").by_digest
    value = np.random.default_rng(1).random(LARGE)
    expected = value.copy()
    gate = threading.Event()
    WRITER.submit(gate.wait)
    opener = threading.Timer(10, gate.set)  # a lookup that waits for the writer gets through
    opener.start()
    try:
        entries.put("b2" * 32, value, behind=lambda error, _: None)
        value[:] = -1.0  # the caller's own array, changed once the call returned
        found, got, _ = entries.lookup("b2" * 32)
        assert not gate.is_set() and len(entries.memory) == 0  # copied, not waited for
        assert found
        np.testing.assert_array_equal(got, expected)
        assert not entries._store.contains(entries.namespace, "b2" * 32)  # not on disk yet
    finally:
        opener.cancel()
        gate.set()
    WRITER.flush()
    found, got, _ = entries.lookup("b2" * 32)
    assert found
    np.testing.assert_array_equal(got, expected)


def test_copies_written_behind_reuse_the_memory_of_earlier_ones_not_held_elsewhere(
    tmp_path: Path,
) -> None:
    # Fresh memory cost this VM 1-14 ms per 8 MB copied: the writer's copies go back to SPARE
    # once written, unless something still holds them.
    from afml_cache._store.entries import SPARE

    entries = Cache(tmp_path / "cache").by_digest
    rng = np.random.default_rng(4)
    values = [rng.random(LARGE) for _ in range(3)]
    flush_writes()
    entries.put("a1" * 32, values[0].copy(), behind=lambda error, _: None)
    flush_writes()
    gate = threading.Event()
    WRITER.submit(gate.wait)
    try:
        second = values[1].copy()
        entries.put("b2" * 32, second, behind=lambda error, _: None)
        second[:] = -1.0
        (held, _), *_ = entries._writing[("default", "b2" * 32)].buffers
        assert held.base is not None  # a view into the memory the first value's copy used
        np.testing.assert_array_equal(entries.lookup("b2" * 32)[1], values[1])
    finally:
        gate.set()
    flush_writes()
    assert all(spare is not held.base for spare in SPARE._spare)  # held here: not taken back
    entries.put("c3" * 32, values[2].copy(), behind=lambda error, _: None)
    flush_writes()
    np.testing.assert_array_equal(held.view(np.float64), values[1])  # never written over
    entries.memory.clear()
    for name, value in zip(("a1", "b2", "c3"), values, strict=True):
        np.testing.assert_array_equal(entries.lookup(name * 32)[1], value)


def test_spare_memory_held_elsewhere_is_never_taken_back() -> None:
    from afml_cache._store.serialize import SpareCopies

    pool = SpareCopies(64 * MIB)
    pool.give_back([np.zeros(MIB, np.uint8)])
    copies = [pool.copy(np.ones(MIB, np.uint8))]  # a view into that spare memory
    held = copies[0].base  # and something holds the spare array itself
    pool.give_back(copies)
    assert all(spare is not held for spare in pool._spare)
    pool.copy(np.full(MIB, 7, np.uint8))
    assert (held == 1).all()


def test_a_large_miss_hits_right_after_its_caller_mutated_it(cache_dir: Path) -> None:
    calls = []

    def compute(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).random(LARGE)

    @robust_cacheable
    def walk(seed: int) -> np.ndarray:
        calls.append(seed)
        return compute(seed)

    walk(1)[:] = -1.0  # mutated while it may still be waiting for the writer
    walk(2)[:] = -2.0
    for seed in (1, 2, 1, 2):
        np.testing.assert_array_equal(walk(seed), compute(seed))
    assert calls == [1, 2]


def test_a_value_of_64_mib_or_more_is_written_in_the_call(tmp_path: Path) -> None:
    entries = Cache(tmp_path / "cache", memory_limit="1GB").by_digest
    gate = threading.Event()
    WRITER.submit(gate.wait)  # a value written behind would wait for this
    outcomes: list[Exception | None] = []
    try:
        entries.put("c3" * 32, np.zeros(STREAMED), behind=lambda error, _: outcomes.append(error))
        assert outcomes == [None]  # before put() returned
    finally:
        gate.set()
    assert entries.lookup("c3" * 32)[1].shape == (STREAMED,)


@pytest.mark.parametrize(
    ("items", "dtype"),
    [(2 * MIB // 8, np.float64), (9 * MIB, np.uint8)],
    ids=["copied", "compressed in the call"],
)
def test_values_waiting_to_be_written_never_hold_more_than_the_memory_limit(
    tmp_path: Path, items: int, dtype: type
) -> None:
    # A writer slower than the caller (a busy machine) must not let what it holds pile up
    # without end: past the limit, a value is written in the call. Random bytes do not
    # compress, so each value held compressed takes its own size too.
    rng = np.random.default_rng(2)
    values = [rng.integers(0, 255, items).astype(dtype) for _ in range(4)]
    entries = Cache(tmp_path / "cache", memory_limit=3 * values[0].nbytes + MIB).by_digest
    flush_writes()  # what an earlier test of this worker left for the writer counts against it
    gate = threading.Event()
    WRITER.submit(gate.wait)
    outcomes: list[str] = []
    for name, value in zip(("a1", "b2", "c3", "d4"), values, strict=True):
        entries.put(name * 32, value, behind=lambda error, _, n=name: outcomes.append(n))
    written_in_the_call = list(outcomes)
    gate.set()
    flush_writes()
    assert written_in_the_call == ["d4"]
    assert sorted(outcomes) == ["a1", "b2", "c3", "d4"]
    for name, value in zip(("a1", "b2", "c3", "d4"), values, strict=True):
        np.testing.assert_array_equal(entries.lookup(name * 32)[1], value)
