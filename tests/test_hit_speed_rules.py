"""What a hit spares, and that sparing it never makes a hit wrong (issue 15, goal 5).

A call whose arguments are all exact scalars given by position has its key remembered per code
fingerprint; a function whose walk is its own node is checked without the walk. Each law below
compares the cached result with the uncached one; the call counts pin what a hit no longer
repeats. (How long a hit takes is measured by benches/bench_decorators.py, never here.)
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afml_cache import decorators, robust_cacheable

Loader = Callable[..., types.ModuleType]


def hits(fn: Any) -> int:
    return int(fn.cache_info()["cache_hits"])


def exact(value: Any) -> tuple[str, str]:
    """A value as only an identical one shows: 1, 1.0 and True apart, and 0.0 and -0.0."""
    return type(value).__name__, repr(value) if not isinstance(value, float) else value.hex()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the engine fingerprints and walks code (the real functions do the work)."""
    counts = {"fingerprint": 0, "code_state": 0}

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    for name in counts:
        monkeypatch.setattr(decorators, name, counting(name, getattr(decorators, name)))
    return counts


def test_a_repeated_scalar_call_is_neither_walked_nor_fingerprinted_again(
    cache_dir: Path, counted: dict[str, int]
) -> None:
    @robust_cacheable
    def score(window: int, threshold: float, column: str) -> float:
        return window * threshold + len(column)

    assert score(20, 0.01, "close") == 20 * 0.01 + 5
    assert score(20, 0.01, "close") == 20 * 0.01 + 5
    before = dict(counted)
    assert [score(20, 0.01, "close") for _ in range(5)] == [20 * 0.01 + 5] * 5
    assert counted == before
    assert hits(score) == 6


def test_a_function_reading_a_global_fingerprints_only_that_global_on_a_hit(
    cache_dir: Path, load: Loader, counted: dict[str, int]
) -> None:
    module = load("""
    from afml_cache import robust_cacheable

    PARAMS = {"p": 3.0}

    @robust_cacheable
    def score(window, threshold):
        return window * threshold + PARAMS["p"]
    """)
    assert module.score(20, 0.5) == 13.0
    assert module.score(20, 0.5) == 13.0
    before = dict(counted)
    assert module.score(20, 0.5) == 13.0
    assert counted == {"fingerprint": before["fingerprint"] + 1, "code_state": before["code_state"]}
    module.PARAMS["p"] = 4.0
    assert module.score(20, 0.5) == 14.0  # a miss: the global's content is in the key
    assert hits(module.score) == 2


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=2),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, math.nan, math.inf, 2.0**53, 2.0**53 + 2]),
    st.sampled_from(["", "a", "0", "1"]),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=st.lists(st.tuples(scalars, scalars), min_size=2, max_size=12))
def test_remembered_keys_keep_equal_but_different_scalars_apart(
    cache_dir: Path, calls: list[tuple[Any, Any]]
) -> None:
    # 1 == 1.0 == True and 0.0 == -0.0, yet each is its own argument: the cached result is
    # always the uncached one, called in any order, repeated or not.
    def both(x: Any, y: Any) -> tuple[tuple[str, str], tuple[str, str]]:
        return exact(x), exact(y)

    cached = robust_cacheable(both)
    for x, y in calls:
        assert cached(x, y) == both(x, y)
        assert cached(x, y) == both(x, y)


def test_remembered_keys_are_forgotten_when_the_code_changes(cache_dir: Path, load: Loader) -> None:
    module = load("""
    from afml_cache import robust_cacheable

    SCALE = 2

    @robust_cacheable
    def scaled(x):
        return x * SCALE
    """)
    assert [module.scaled(3) for _ in range(3)] == [6] * 3
    module.SCALE = 5  # a constant: part of the code fingerprint
    assert [module.scaled(3) for _ in range(2)] == [15] * 2
    module.scaled.uncached.__code__ = (lambda x: x - SCALE).__code__  # noqa: F821
    assert module.scaled(3) == 3 - 5
    module.SCALE = 2
    assert module.scaled(3) == 3 - 2
    assert hits(module.scaled) == 3


def test_a_default_is_read_at_each_call_not_remembered(cache_dir: Path, load: Loader) -> None:
    module = load("""
    from afml_cache import robust_cacheable

    @robust_cacheable
    def total(x, extra=[1]):
        return x + sum(extra)
    """)
    assert [module.total(1) for _ in range(2)] == [2, 2]
    module.total.uncached.__defaults__[0].append(10)  # the default list, edited in place
    assert module.total(1) == 12
    assert module.total(1, [1]) == 2
    assert module.total(1) == 12


def test_keyword_calls_and_positional_calls_share_one_entry(cache_dir: Path) -> None:
    @robust_cacheable
    def pair(a: int, b: str) -> str:
        return f"{a}{b}"

    assert pair(1, "x") == "1x"
    assert pair(a=1, b="x") == "1x"
    assert pair(1, b="x") == "1x"
    assert hits(pair) == 2
