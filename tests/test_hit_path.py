"""What a hit repeats and what it spares: a number is unpickled once and then handed out from
the memory tier; anything else is still a private copy on every hit. (How long a hit takes is
measured by benches/bench_decorators.py, never here.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afml_cache import robust_cacheable
from afml_cache._store import entries as entries_module


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
