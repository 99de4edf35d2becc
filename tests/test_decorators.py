"""Behaviour of `@robust_cacheable` (alias `@cacheable`) and `@time_aware_cacheable`.

What a call computes is counted inside the function (a list here, a file for other processes), so
every test says exactly how many computations a sequence of calls must cost. Each test that
counts uses its own cache directory (the ``cache_dir`` fixture); worker processes share it.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import json
import logging
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from helpers import decorated
from helpers.entry_bytes import locate

import afml_cache
from afml_cache import (
    cache_status,
    cacheable,
    disabled,
    get_cache_stats,
    robust_cacheable,
    time_aware_cacheable,
)
from afml_cache._core import LATENCY_BOUNDS
from afml_cache._store.entries import Entries
from afml_cache.monitoring import latency_percentiles

TESTS_DIR = Path(__file__).parent
# How long a test waits for worker processes before calling them hung.
WORKER_TIMEOUT_S = 60


@pytest.fixture
def worker_env(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for other processes: the same cache directory, and ``helpers`` importable."""
    monkeypatch.setenv("AFML_CACHE_DIR", str(cache_dir))
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR) + (os.pathsep + path if path else ""))
    monkeypatch.delenv("AFML_CACHE_DISABLE", raising=False)
    return dict(os.environ)


def counted(counter: Path) -> list[str]:
    """The computations recorded in a counter file, by what was computed (pids dropped)."""
    if not counter.exists():
        return []
    return [line.rsplit(" pid=", 1)[0] for line in counter.read_text().splitlines()]


def user_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def daily_frame(start: str, periods: int = 10, tz: str | None = None) -> pd.DataFrame:
    index = pd.date_range(start, periods=periods, freq="D", tz=tz)
    return pd.DataFrame({"value": np.arange(periods, dtype=np.float64)}, index=index)


# --- binding arguments to the key ----------------------------------------------------------------


def test_positional_keyword_and_default_arguments_are_one_entry(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    def rolling_mean(df: pd.DataFrame, window: int = 5) -> pd.DataFrame:
        calls.append(window)
        return df.rolling(window).mean()

    df = daily_frame("2024-01-01", periods=30)
    expected = df.rolling(5).mean()
    results = [
        rolling_mean(df, 5),
        rolling_mean(df, window=5),
        rolling_mean(df),
        rolling_mean(df=df, window=5),
        rolling_mean(window=5, df=df),
    ]
    assert calls == [5]
    assert len(rolling_mean.cache_entries()) == 1
    for result in results:
        pd.testing.assert_frame_equal(result, expected)


def test_ignored_arguments_share_an_entry(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable(ignore=("verbose",))
    def total(values: list[int], verbose: bool = False) -> int:
        calls.append((tuple(values), verbose))
        return sum(values)

    assert total([1, 2, 3], verbose=True) == 6
    assert total([1, 2, 3], verbose=False) == 6
    assert total([1, 2, 3]) == 6
    assert total([1, 2, 3], True) == 6
    assert calls == [((1, 2, 3), True)]
    # The ignored argument is the only one that is ignored.
    assert total([1, 2, 4], verbose=True) == 7
    assert len(calls) == 2


def test_ignore_naming_no_parameter_is_refused(cache_dir: Path) -> None:
    # A typo left the argument meant in the key, without a word: every verbose call computed.
    with pytest.raises(ValueError, match=r"ignore= names 'verbos', which .*total does not take"):

        @robust_cacheable(ignore=("verbos",))
        def total(values: list[int], verbose: bool = False) -> int:
            return sum(values)

    @robust_cacheable(ignore=("verbose",))
    def loose(values: list[int], **options: object) -> int:  # any name may come through here
        return sum(values)

    assert loose([1, 2], verbose=True) == loose([1, 2], verbose=False) == 3
    assert loose.cache_info()["cache_hits"] == 1

    def logged(fn):  # a wrapper that takes one more keyword than the function it shows
        @functools.wraps(fn)
        def wrapper(*args, log_level="INFO", **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    @robust_cacheable(ignore=("log_level",))
    @logged
    def features(x: int) -> int:
        return x * 2

    assert [features(1, log_level="DEBUG"), features(1, log_level="INFO"), features(1)] == [2] * 3
    assert features.cache_info()["cache_hits"] == 2  # the wrapper's keyword left out
    # Behind a wrapper that takes **kwargs the name may be one of its own: said, not refused.
    with pytest.warns(afml_cache.CacheWarning, match="ignore= names 'verbos'.*may take it"):

        @robust_cacheable(ignore=("verbos",))
        @logged
        def typo(x: int, verbose: bool = False) -> int:
            return x


def test_version_bump_recomputes(cache_dir: Path) -> None:
    calls = []

    def make(version: int):
        @robust_cacheable(version=version)
        def feature(x: int) -> int:
            calls.append(x)
            return x * 3

        return feature

    first = make(1)
    assert first(4) == 12
    assert first(4) == 12
    assert make(1)(4) == 12  # the same function and version, decorated again: still one entry
    assert calls == [4]
    bumped = make(2)
    assert bumped(4) == 12
    assert calls == [4, 4]
    assert bumped(4) == 12
    assert calls == [4, 4]
    assert len(bumped.cache_entries()) == 2  # both versions' entries, one function


def test_different_argument_values_are_different_entries(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    def describe(value: object) -> str:
        calls.append(value)
        return repr(value)

    df = daily_frame("2024-01-01")
    changed_value = df.copy()
    changed_value.iloc[3, 0] = 99.0
    renamed = df.rename(columns={"value": "close"})
    shifted = daily_frame("2024-01-02")
    values = [
        1,
        2,
        "1",
        1.0,
        (1, 2),
        (2, 1),
        [1, 2],
        None,
        np.arange(5, dtype=np.int64),
        np.arange(5, dtype=np.int32),
        np.arange(1, 6, dtype=np.int64),
        df,
        changed_value,
        renamed,
        shifted,
    ]
    for value in values:
        describe(value)
    assert len(calls) == len(values)
    assert len(describe.cache_entries()) == len(values)
    for value in values:  # each one is now a hit on its own entry
        assert describe(value) == repr(value)
    assert len(calls) == len(values)


# --- what a hit returns --------------------------------------------------------------------------


def rich_result(seed: int) -> dict[str, object]:
    """Frames and arrays whose every detail a hit must reproduce; some buffers are large enough
    to be stored out of band, some small enough to stay in the pickle stream."""
    rng = np.random.default_rng(seed)
    n = 20_000
    index = pd.date_range("2024-03-08 09:30", periods=n, freq="min", tz="America/New_York")
    frame = pd.DataFrame(
        {
            "f64": rng.normal(size=n),
            "f32": rng.normal(size=n).astype(np.float32),
            "i8": rng.integers(-100, 100, size=n, dtype=np.int8),
            "u64": rng.integers(0, 2**63, size=n, dtype=np.uint64),
            "flag": rng.random(n) > 0.5,
            "side": pd.Categorical(rng.choice(["buy", "sell"], size=n), categories=["sell", "buy"]),
            "venue": pd.array(rng.choice(["X", "Y", None], size=n), dtype="string"),
            "qty": pd.array(rng.integers(0, 10, size=n), dtype="Int64"),
            "ts": pd.date_range("2020-01-01", periods=n, freq="s", tz="UTC"),
            "lag": pd.to_timedelta(rng.integers(0, 10**9, size=n), unit="ns"),
        },
        index=index,
    )
    frame.loc[frame.index[::7], "qty"] = pd.NA
    frame.attrs["source"] = "test"
    small = pd.Series([1.5, np.nan, -0.0], index=pd.date_range("2024-01-01", periods=3, freq="h"))
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324])
    special_nan = special.view(np.uint64).copy()
    special_nan[2] = 0x7FF8_0000_DEAD_BEEF  # a NaN with a payload: bytes, not values, must match
    return {
        "frame": frame,
        "small": small,
        "big": rng.normal(size=(300, 200)),
        "fortran": np.asfortranarray(rng.integers(0, 1000, size=(200, 100))),
        "special": special_nan.view(np.float64),
        "dates": np.arange("2024-01-01", "2024-03-01", dtype="datetime64[s]"),
        "list": [1, 2, 3],
    }


def assert_same_result(got: dict[str, object], expected: dict[str, object]) -> None:
    assert got.keys() == expected.keys()
    frame, want = got["frame"], expected["frame"]
    assert frame.equals(want)
    pd.testing.assert_frame_equal(frame, want, check_exact=True, check_freq=True)
    assert frame.dtypes.equals(want.dtypes)
    assert frame.index.freq == want.index.freq
    assert str(frame.index.tz) == str(want.index.tz) == "America/New_York"
    assert frame["side"].cat.categories.tolist() == ["sell", "buy"]
    assert frame.attrs == {"source": "test"}
    pd.testing.assert_series_equal(got["small"], expected["small"], check_freq=True)
    assert got["small"].index.freq == expected["small"].index.freq
    for name in ("big", "fortran", "special", "dates"):
        array, want_array = got[name], expected[name]
        assert array.dtype == want_array.dtype, name
        assert array.shape == want_array.shape, name
        assert array.tobytes(order="A") == want_array.tobytes(order="A"), name
        assert array.flags.f_contiguous == want_array.flags.f_contiguous, name
        assert array.flags.writeable, name
    assert got["list"] == [1, 2, 3]


def test_hits_return_equal_values(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    def build(seed: int) -> dict[str, object]:
        calls.append(seed)
        return rich_result(seed)

    expected = rich_result(7)
    assert_same_result(build(7), expected)  # the miss
    assert_same_result(build(7), expected)  # a hit from this process's memory
    afml_cache.configure(directory=cache_dir)  # forget everything held in memory
    assert_same_result(build(7), expected)  # a hit read from disk
    assert calls == [7]


def test_mutating_a_returned_value_never_changes_later_hits(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    def build(seed: int) -> dict[str, object]:
        calls.append(seed)
        return rich_result(seed)

    def vandalise(result: dict[str, object]) -> None:
        result["frame"].iloc[0, 0] = 1e9
        result["frame"]["i8"] = 0
        result["frame"].attrs["source"] = "changed"
        result["small"].iloc[0] = -1.0
        result["big"][:] = 0.0
        result["fortran"][0, 0] = -5
        result["special"][:] = 1.0
        result["list"].append(4)

    expected = rich_result(11)
    vandalise(build(11))  # the object the miss returned
    first_hit = build(11)
    assert_same_result(first_hit, expected)
    vandalise(first_hit)
    assert_same_result(build(11), expected)
    afml_cache.configure(directory=cache_dir)
    from_disk = build(11)
    assert_same_result(from_disk, expected)
    vandalise(from_disk)
    assert_same_result(build(11), expected)
    assert calls == [11]


# --- failures ------------------------------------------------------------------------------------


class PricingError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def test_exceptions_propagate_unchanged_and_nothing_is_stored(cache_dir: Path) -> None:
    calls = []
    raised = []

    @robust_cacheable
    def price(x: int) -> int:
        calls.append(x)
        error = PricingError(f"no quote for {x}", code=x)
        raised.append(error)
        raise error

    for attempt in range(1, 4):
        with pytest.raises(PricingError, match=r"^no quote for 3$") as info:
            price(3)
        assert info.value is raised[-1]
        assert info.value.code == 3
        assert type(info.value) is PricingError
        assert len(calls) == attempt  # exactly once per call, and every call runs again
    assert price.cache_entries() == []


def test_a_call_that_raised_does_not_block_a_later_success(cache_dir: Path) -> None:
    calls = []
    fail = [True]

    @robust_cacheable
    def flaky(x: int) -> int:
        calls.append(x)
        if fail[0]:
            raise KeyError(f"missing {x}")
        return x + 1

    with pytest.raises(KeyError, match="missing 5"):
        flaky(5)
    fail[0] = False
    assert flaky(5) == 6
    assert flaky(5) == 6
    assert calls == [5, 5]

    # Another thread can take the key's lock afterwards (the failed call released it).
    fail[0] = True
    with pytest.raises(KeyError):
        flaky(8)
    fail[0] = False
    results = []
    thread = threading.Thread(target=lambda: results.append(flaky(8)))
    thread.start()
    thread.join(timeout=WORKER_TIMEOUT_S)
    assert not thread.is_alive(), "the key's lock was not released by the call that raised"
    assert results == [9]


def test_unpicklable_results_are_returned_with_one_warning_per_function(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    def make_scaler(k: int):
        calls.append(("scaler", k))
        return lambda x: x * k

    @robust_cacheable
    def make_guard(name: str) -> dict[str, object]:
        calls.append(("guard", name))
        return {"name": name, "lock": threading.Lock()}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scalers = [make_scaler(2), make_scaler(2), make_scaler(3), make_scaler(2)]
        guards = [make_guard("a"), make_guard("a"), make_guard("b")]
    assert [s(10) for s in scalers] == [20, 20, 30, 20]
    assert [g["name"] for g in guards] == ["a", "a", "b"]
    assert all(type(g["lock"]) is type(threading.Lock()) for g in guards)
    assert len(calls) == 7  # nothing was stored, so every call computed
    messages = user_warnings(caught)
    assert len(messages) == 2, messages
    scaler_message = next(m for m in messages if "make_scaler" in m)
    guard_message = next(m for m in messages if "make_guard" in m)
    assert "function" in scaler_message  # names the type that could not be stored
    assert "lock" in guard_message
    assert make_scaler.cache_entries() == []
    assert make_guard.cache_entries() == []


@pytest.mark.parametrize("n", [50, 2_000], ids=["packed", "file"])
def test_a_corrupt_entry_is_recomputed_replaced_and_logged(
    cache_dir: Path, caplog: pytest.LogCaptureFixture, n: int
) -> None:
    calls = []

    @robust_cacheable
    def series(n: int) -> list[int]:
        calls.append(n)
        return list(range(n))

    assert series(n) == list(range(n))
    (entry,) = series.cache_entries()
    path = Path(entry["path"])
    assert path.is_file()
    assert cache_dir in path.parents
    where = locate(cache_dir, digest=entry["digest"], namespace=series.__afml_cache__.name)
    assert (where.path, where.packed) == (path, n == 50)
    where.flip(-48, 0x5A)  # in the payload, under the MAC (the last 32 bytes)
    afml_cache.configure(directory=cache_dir)  # a process that never saw the value
    with caplog.at_level(logging.WARNING, logger="afml_cache"):
        assert series(n) == list(range(n))
    assert calls == [n, n]
    records = [r for r in caplog.records if r.name == "afml_cache"]
    assert records, "the corrupt entry was not logged on logger 'afml_cache'"
    assert any(str(path) in r.getMessage() for r in records), [r.getMessage() for r in records]
    # Replaced: the new entry is intact and is a hit, also for a process that never saw it.
    (replaced,) = series.cache_entries()
    assert replaced["path"] == str(path)
    afml_cache.configure(directory=cache_dir)
    assert series(n) == list(range(n))
    assert calls == [n, n]


def test_an_unusable_cache_directory_warns_once_and_functions_still_run(
    cache_dir: Path, tmp_path: Path
) -> None:
    calls = []

    @robust_cacheable
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    @cacheable
    def triple(x: int) -> int:
        calls.append(x)
        return 3 * x

    not_a_directory = tmp_path / "occupied"
    not_a_directory.write_text("a regular file where the cache directory should be")
    afml_cache.configure(directory=not_a_directory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [double(4), double(4), triple(4), triple(5), double(4)]
        assert double.cache_entries() == []
        assert get_cache_stats() == {}
    assert results == [8, 8, 12, 15, 8]
    assert calls == [4, 4, 4, 5, 4]  # uncached: every call ran
    messages = user_warnings(caught)
    assert len(messages) == 1, messages
    assert str(not_a_directory) in messages[0]
    assert not_a_directory.read_text().startswith("a regular file")

    # Configuring a usable directory again brings caching back (the fixture restores too).
    afml_cache.configure(directory=cache_dir)
    assert double(4) == 8
    assert double(4) == 8
    assert calls == [4, 4, 4, 5, 4, 4]


# --- switching caching off -----------------------------------------------------------------------


def test_inside_disabled_the_function_always_runs(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    def inc(x: int) -> int:
        calls.append(x)
        return x + 1

    assert inc(1) == 2
    with disabled():
        assert [inc(1), inc(1), inc(2), inc(2)] == [2, 2, 3, 3]
        with disabled():
            assert inc(1) == 2
        assert inc(1) == 2
        # Only this thread: another thread still uses the cache.
        other = []
        thread = threading.Thread(target=lambda: other.append(inc(1)))
        thread.start()
        thread.join(timeout=WORKER_TIMEOUT_S)
        assert other == [2]
    assert calls == [1, 1, 1, 2, 2, 1, 1]
    assert len(inc.cache_entries()) == 1  # nothing was stored inside the block
    assert inc(1) == 2  # cached again after it
    assert calls == [1, 1, 1, 2, 2, 1, 1]
    assert inc(2) == 3
    assert calls == [1, 1, 1, 2, 2, 1, 1, 2]


def test_afml_cache_disable_env_turns_caching_off(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    @robust_cacheable
    def inc(x: int) -> int:
        calls.append(x)
        return x + 1

    assert inc(1) == 2
    monkeypatch.setenv("AFML_CACHE_DISABLE", "1")
    assert [inc(1), inc(1), inc(3)] == [2, 2, 4]
    assert calls == [1, 1, 1, 3]
    assert len(inc.cache_entries()) == 1
    monkeypatch.delenv("AFML_CACHE_DISABLE")
    assert inc(1) == 2
    assert calls == [1, 1, 1, 3]


# --- what can be decorated -----------------------------------------------------------------------


def test_generator_functions_are_refused_at_decoration() -> None:
    def numbers(n: int):
        yield from range(n)

    async def stream(n: int):
        for i in range(n):
            yield i

    with pytest.raises(TypeError, match="generator"):
        robust_cacheable(numbers)
    with pytest.raises(TypeError, match="generator"):
        robust_cacheable(ttl=60)(numbers)
    with pytest.raises(TypeError, match="generator"):
        time_aware_cacheable(numbers)
    with pytest.raises(TypeError, match="generator"):
        robust_cacheable(stream)


def test_async_functions_are_cached(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    async def fetch(symbol: str, limit: int = 3) -> list[str]:
        calls.append(symbol)
        await asyncio.sleep(0)
        return [symbol] * limit

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch("AAPL")) == ["AAPL"] * 3
    assert asyncio.run(fetch("AAPL", limit=3)) == ["AAPL"] * 3
    assert asyncio.run(fetch("MSFT")) == ["MSFT"] * 3
    assert calls == ["AAPL", "MSFT"]

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(fetch("AAPL"), fetch("MSFT")))

    assert asyncio.run(both()) == [["AAPL"] * 3, ["MSFT"] * 3]
    assert calls == ["AAPL", "MSFT"]


def test_async_exceptions_propagate_and_are_not_stored(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    async def fetch(symbol: str) -> str:
        calls.append(symbol)
        raise LookupError(f"unknown symbol {symbol}")

    for attempt in (1, 2):
        with pytest.raises(LookupError, match=r"^unknown symbol XYZ$"):
            asyncio.run(fetch("XYZ"))
        assert len(calls) == attempt
    assert fetch.cache_entries() == []


def test_methods_key_on_the_instance_cache_key(cache_dir: Path) -> None:
    calls = []

    class Model:
        def __init__(self, name: str, scale: float) -> None:
            self.name = name
            self.scale = scale

        def __cache_key__(self) -> tuple[str, float]:
            return (self.name, self.scale)

        @robust_cacheable
        def predict(self, x: float) -> float:
            calls.append((self.name, x))
            return x * self.scale

    a, b, a_again = Model("a", 2.0), Model("b", 3.0), Model("a", 2.0)
    assert a.predict(1.0) == 2.0
    assert b.predict(1.0) == 3.0  # another key: its own entry
    assert calls == [("a", 1.0), ("b", 1.0)]
    assert a_again.predict(1.0) == 2.0  # the same key, another instance: shared
    assert a.predict(x=1.0) == 2.0
    assert Model.predict(a_again, 1.0) == 2.0
    assert calls == [("a", 1.0), ("b", 1.0)]
    assert a.predict(2.0) == 4.0
    assert len(calls) == 3
    assert len(Model.predict.cache_entries()) == 3


def test_classmethods_and_staticmethods_in_either_order(cache_dir: Path) -> None:
    calls = []

    class Loader:
        base = 100

        @classmethod
        @robust_cacheable
        def under_classmethod(cls, x: int) -> int:
            calls.append(("under_classmethod", x))
            return cls.base + x

        @robust_cacheable
        @classmethod
        def over_classmethod(cls, x: int) -> int:
            calls.append(("over_classmethod", x))
            return cls.base + x

        @staticmethod
        @robust_cacheable
        def under_staticmethod(x: int) -> int:
            calls.append(("under_staticmethod", x))
            return -x

        @robust_cacheable
        @staticmethod
        def over_staticmethod(x: int) -> int:
            calls.append(("over_staticmethod", x))
            return -x

    for _ in range(3):
        assert Loader.under_classmethod(1) == 101
        assert Loader().over_classmethod(1) == 101
        assert Loader.under_staticmethod(2) == -2
        assert Loader().over_staticmethod(2) == -2
    assert calls == [
        ("under_classmethod", 1),
        ("over_classmethod", 1),
        ("under_staticmethod", 2),
        ("over_staticmethod", 2),
    ]
    assert isinstance(inspect.getattr_static(Loader, "over_classmethod"), classmethod)
    assert isinstance(inspect.getattr_static(Loader, "over_staticmethod"), staticmethod)
    assert Loader.over_classmethod(5) == 105
    assert len(calls) == 5


def test_decorated_functions_keep_name_doc_and_signature() -> None:
    def original(df: pd.DataFrame, window: int = 5, *, verbose: bool = False) -> pd.DataFrame:
        """Rolling mean of ``df``."""
        return df.rolling(window).mean()

    async def fetch(symbol: str, limit: int = 3) -> list[str]:
        """Fetches ``symbol``."""
        return [symbol] * limit

    decorated_variants = [
        robust_cacheable(original),
        cacheable(original),
        robust_cacheable(ignore=("verbose",), version=2)(original),
        time_aware_cacheable(original),
        time_aware_cacheable(live_ttl=datetime.timedelta(seconds=1))(original),
    ]
    for wrapped in decorated_variants:
        assert wrapped.__name__ == "original"
        assert wrapped.__qualname__ == original.__qualname__
        assert wrapped.__module__ == original.__module__
        assert wrapped.__doc__ == "Rolling mean of ``df``."
        assert inspect.signature(wrapped) == inspect.signature(original)
        assert wrapped.__wrapped__ is original
    cached_fetch = robust_cacheable(fetch)
    assert cached_fetch.__name__ == "fetch"
    assert cached_fetch.__doc__ == "Fetches ``symbol``."
    assert inspect.signature(cached_fetch) == inspect.signature(fetch)

    class Model:
        @robust_cacheable
        def predict(self, x: float) -> float:
            """Predicts."""
            return x

    assert Model.predict.__name__ == "predict"
    assert Model.predict.__doc__ == "Predicts."
    assert list(inspect.signature(Model().predict).parameters) == ["x"]


# --- other processes -----------------------------------------------------------------------------


def test_joblib_workers_share_the_cache(worker_env: dict[str, str], tmp_path: Path) -> None:
    counter = str(tmp_path / "computed.txt")
    directory = worker_env["AFML_CACHE_DIR"]
    assert decorated.square(7, counter) == 49  # the warm-up, in this process
    parallel = joblib.Parallel(
        n_jobs=2,
        backend="loky",
        initializer=afml_cache.configure,
        initargs=(directory,),
    )
    results = parallel(joblib.delayed(decorated.square)(7, counter) for _ in range(8))
    assert results == [49] * 8
    assert counted(Path(counter)) == ["square 7"]

    results = parallel(joblib.delayed(decorated.square)(x, counter) for x in [1, 2, 3] * 3)
    assert results == [1, 4, 9] * 3
    assert sorted(counted(Path(counter))) == ["square 1", "square 2", "square 3", "square 7"]
    # What the workers stored is a hit here too.
    assert [decorated.square(x, counter) for x in (1, 2, 3)] == [1, 4, 9]
    assert len(counted(Path(counter))) == 4


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_multiprocessing_pool_workers_share_the_cache(
    context: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    counter = str(tmp_path / "computed.txt")
    directory = worker_env["AFML_CACHE_DIR"]
    assert decorated.square(6, counter) == 36  # the warm-up, in this process
    ctx = multiprocessing.get_context(context)
    # spawn: configured by the initializer; fork: inherits this process's configuration.
    options = {"initializer": afml_cache.configure, "initargs": (directory,)}
    with ctx.Pool(2, **(options if context == "spawn" else {})) as pool:
        warm = pool.starmap_async(decorated.square, [(6, counter)] * 6, chunksize=1)
        assert warm.get(timeout=WORKER_TIMEOUT_S) == [36] * 6
        assert counted(Path(counter)) == ["square 6"]
        fresh = pool.starmap_async(decorated.square, [(x, counter) for x in [4, 5] * 4])
        assert fresh.get(timeout=WORKER_TIMEOUT_S) == [16, 25] * 4
    assert sorted(counted(Path(counter))) == ["square 4", "square 5", "square 6"]
    assert [decorated.square(x, counter) for x in (4, 5, 6)] == [16, 25, 36]
    assert len(counted(Path(counter))) == 3


def test_fork_workers_after_this_process_hashed_a_large_array(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """A forked worker fingerprints a large argument after its parent already did: the parent's
    parallel hashing must not leave the child unable to hash (or hang)."""
    counter = str(tmp_path / "computed.txt")
    rng = np.random.default_rng(3)
    arrays = [rng.normal(size=1_000_000) for _ in range(3)]
    assert decorated.column_total(arrays[0], counter) == float(arrays[0].sum())  # warm-up
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pending = pool.starmap_async(decorated.column_total, [(a, counter) for a in arrays])
        try:
            results = pending.get(timeout=WORKER_TIMEOUT_S / 3)
        except multiprocessing.TimeoutError:
            pytest.fail(
                f"forked workers hashing a large array did not finish in "
                f"{WORKER_TIMEOUT_S / 3:.0f}s (deadlocked)"
            )
    assert results == [float(a.sum()) for a in arrays]
    assert len(counted(Path(counter))) == 3


def test_single_flight_across_threads(cache_dir: Path) -> None:
    calls = []
    barrier = threading.Barrier(8)

    @robust_cacheable
    def slow(x: int) -> dict[str, int]:
        calls.append(x)
        time.sleep(0.3)
        return {"x": x, "squared": x * x}

    results: list[object] = []

    def worker() -> None:
        barrier.wait(timeout=WORKER_TIMEOUT_S)
        results.append(slow(9))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WORKER_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads)
    assert calls == [9]
    assert results == [{"x": 9, "squared": 81}] * 8
    stats = get_cache_stats()[slow.__module__ + "." + slow.__qualname__]
    assert (stats["total_calls"], stats["cache_hits"], stats["cache_misses"]) == (8, 7, 1)


def test_single_flight_across_spawned_processes(worker_env: dict[str, str], tmp_path: Path) -> None:
    counter = str(tmp_path / "computed.txt")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    processes = [
        ctx.Process(
            target=decorated.call_together,
            args=(worker_env["AFML_CACHE_DIR"], barrier, results, 12, counter),
        )
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    got = [results.get(timeout=WORKER_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join(timeout=WORKER_TIMEOUT_S)
    assert [p.exitcode for p in processes] == [0] * 4
    assert sorted(pid for pid, _ in got) == sorted(p.pid for p in processes)
    assert [value for _, value in got] == [144] * 4
    assert counted(Path(counter)) == ["slow_square 12"]


# --- writing behind ------------------------------------------------------------------------------
# Results of a megabyte or more are copied at the call and written by a background thread, which
# holds the key's lock until the entry is on disk.


def test_a_result_written_behind_is_a_private_copy(cache_dir: Path, tmp_path: Path) -> None:
    counter = str(tmp_path / "computed.txt")
    result = decorated.big_block(3, counter)
    result[:] = -1.0  # at once, while the write may still be in flight
    afml_cache.flush_writes()
    (entry,) = decorated.big_block.cache_entries()
    assert Path(entry["path"]).is_file()
    afml_cache.configure(directory=cache_dir)  # a fresh process's view: nothing in memory
    again = decorated.big_block(3, counter)
    assert np.array_equal(again, np.full(512 * 1024, 3.0))
    assert counted(Path(counter)) == ["big_block 3"]


def test_a_call_waiting_on_a_write_behind_finds_the_entry(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = str(tmp_path / "computed.txt")
    put = Entries._put

    def slow_put(self: Entries, entry: object) -> object:
        time.sleep(0.5)  # the writer thread dawdles; the next caller must wait, not recompute
        return put(self, entry)

    monkeypatch.setattr(Entries, "_put", slow_put)
    decorated.big_block(4, counter)
    afml_cache.configure(directory=cache_dir)  # no memory tier: only the disk can answer
    assert np.array_equal(decorated.big_block(4, counter), np.full(512 * 1024, 4.0))
    assert counted(Path(counter)) == ["big_block 4"]
    info = decorated.big_block.cache_info()
    assert (info["cache_hits"], info["cache_misses"]) == (1, 1)


def test_a_failed_write_behind_is_logged_warned_once_and_frees_the_key(
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    counter = str(tmp_path / "computed.txt")

    def full_disk(self: Entries, entry: object) -> object:
        raise afml_cache.StoreError(28, "No space left on device", str(cache_dir))

    monkeypatch.setattr(Entries, "_put", full_disk)
    with caplog.at_level(logging.WARNING, logger="afml_cache"):
        assert decorated.big_block(5, counter)[0] == 5.0
        afml_cache.flush_writes()
    name = "helpers.decorated.big_block"
    assert [r.getMessage() for r in caplog.records] == [
        f"the result of {name} was returned but not cached: [Errno 28] No space left on device: "
        f"'{cache_dir}'"
    ]
    with pytest.warns(UserWarning, match="big_block was returned but not cached") as caught:
        assert decorated.big_block(5, counter)[0] == 5.0  # the lock was released: no wait
        afml_cache.flush_writes()
        decorated.big_block(6, counter)
        afml_cache.flush_writes()
        decorated.big_block(7, counter)
    assert len(user_warnings(caught)) == 1
    assert caught[0].filename == __file__
    assert counted(Path(counter)) == ["big_block 5"] * 2 + ["big_block 6", "big_block 7"]
    assert decorated.big_block.cache_entries() == []


def test_a_small_result_that_cannot_be_stored_warns_at_the_call(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(self: Entries, entry: object) -> object:
        raise afml_cache.StoreError(30, "Read-only file system", str(cache_dir))

    @robust_cacheable
    def double(x: int) -> int:
        return 2 * x

    monkeypatch.setattr(Entries, "_put", read_only)
    with pytest.warns(UserWarning, match="double was returned but not cached") as caught:
        assert [double(1), double(1), double(2)] == [2, 2, 4]
    assert len(user_warnings(caught)) == 1
    assert caught[0].filename == __file__
    assert double.cache_info()["cache_misses"] == 3


@pytest.mark.parametrize("how", ["spawn", "fork", "script"])
def test_processes_finish_their_writes_before_they_exit(
    how: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    counter = str(tmp_path / "computed.txt")
    directory = worker_env["AFML_CACHE_DIR"]
    if how != "script":  # forked multiprocessing workers leave through os._exit, skipping atexit
        with multiprocessing.get_context(how).Pool(1) as pool:
            total = pool.apply(decorated.big_block_sum, (directory, 8, counter, 0.5))
            assert total == 8.0 * 512 * 1024
            pool.close()
            pool.join()
    else:
        script = (
            "import sys; from helpers import decorated; "
            "decorated.big_block_sum(sys.argv[2], 8, sys.argv[1], 0.5)"
        )
        subprocess.run(
            [sys.executable, "-c", script, counter, directory],
            env=worker_env,
            check=True,
            timeout=WORKER_TIMEOUT_S,
        )
    afml_cache.configure(directory=directory)
    assert decorated.big_block(8, counter)[0] == 8.0
    assert counted(Path(counter)) == ["big_block 8"]


@pytest.mark.parametrize("how", ["spawn", "fork"])
def test_workers_of_a_pool_left_by_with_finish_their_writes(
    how: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    # `with Pool() as pool:` ends with terminate(): SIGTERM killed the workers still writing
    # behind, and their results were lost without a word.
    counter = str(tmp_path / "computed.txt")
    directory = worker_env["AFML_CACHE_DIR"]
    with multiprocessing.get_context(how).Pool(2) as pool:
        arguments = [(directory, seed, counter, 0.5) for seed in (1, 2, 3)]
        assert pool.starmap(decorated.big_block_sum, arguments) == [
            seed * 512 * 1024 for seed in (1, 2, 3)
        ]
    afml_cache.configure(directory=directory)
    for seed in (1, 2, 3):
        assert decorated.big_block(seed, counter)[0] == seed
    assert sorted(counted(Path(counter))) == ["big_block 1", "big_block 2", "big_block 3"]


# --- code changes --------------------------------------------------------------------------------

MODULE_SOURCE = """\
import os

from afml_cache import robust_cacheable


def g(x):
    return x + 1


def unrelated():
    return "original"


@robust_cacheable
def f(x):
    with open(os.environ["MARKER"], "a") as fh:
        fh.write("computed\\n")
    return g(x) * 10
"""

CHILD = """
import json
import features
print(json.dumps({"result": features.f(2), "info": features.f.cache_info()}, default=str))
"""


def test_code_changes_recompute_exactly_what_they_must(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    module_dir = tmp_path / "project"
    module_dir.mkdir()
    module = module_dir / "features.py"
    marker = tmp_path / "computations.txt"
    env = {
        **worker_env,
        "MARKER": str(marker),
        "PYTHONPATH": str(module_dir),
        "PYTHONDONTWRITEBYTECODE": "1",  # an edit within the same second must not hit a stale .pyc
    }

    def run() -> tuple[int, dict[str, object], int]:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=WORKER_TIMEOUT_S,
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        computations = len(marker.read_text().splitlines()) if marker.exists() else 0
        return out["result"], out["info"], computations

    module.write_text(MODULE_SOURCE)
    result, info, computed = run()
    assert (result, computed) == (30, 1)
    assert (info["total_calls"], info["cache_hits"], info["cache_misses"]) == (1, 0, 1)

    result, info, computed = run()  # a new process: a hit
    assert (result, computed) == (30, 1)
    assert (info["total_calls"], info["cache_hits"], info["cache_misses"]) == (2, 1, 1)

    module.write_text(MODULE_SOURCE.replace("return x + 1", "return x + 2"))  # the helper changed
    result, info, computed = run()
    assert (result, computed) == (40, 2)
    assert (info["cache_hits"], info["cache_misses"]) == (1, 2)

    module.write_text(
        MODULE_SOURCE.replace("return x + 1", "return x + 2").replace('"original"', '"edited"')
    )  # a function f does not use changed
    result, info, computed = run()
    assert (result, computed) == (40, 2)
    assert (info["cache_hits"], info["cache_misses"]) == (2, 2)

    module.write_text(
        MODULE_SOURCE.replace("return x + 1", "# a comment\n    return x + 2").replace(
            '"original"', '"edited"'
        )
    )  # only a comment in the helper changed
    result, info, computed = run()
    assert (result, computed) == (40, 2)
    assert (info["cache_hits"], info["cache_misses"]) == (3, 2)


# --- statistics ----------------------------------------------------------------------------------

STAT_FIELDS = {
    "function_name",
    "total_calls",
    "cache_hits",
    "cache_misses",
    "hit_rate",
    "avg_computation_time",
    "time_saved",
    "cache_size_mb",
    "last_accessed",
    "hit_latency_p50",
    "hit_latency_p95",
    "hit_latency_p99",
    "miss_latency_p50",
    "miss_latency_p95",
    "miss_latency_p99",
}


def test_statistics_of_a_scripted_sequence(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable
    def slow_add(x: int, y: int = 1) -> int:
        calls.append(x)
        time.sleep(0.02)
        return x + y

    @robust_cacheable
    def other(x: int) -> int:
        return x

    name = f"{slow_add.__module__}.{slow_add.__qualname__}"
    assert get_cache_stats() == {}
    before = time.time()
    # miss, hit, miss, hit, hit, miss: 6 calls, 3 hits, 3 misses.
    for x, y in [(1, 1), (1, 1), (2, 1), (2, 1), (1, 1), (1, 2)]:
        slow_add(x, y)
    after = time.time()
    other(0)
    stats = get_cache_stats()
    assert set(stats) == {name, f"{other.__module__}.{other.__qualname__}"}
    row = stats[name]
    assert set(row) == STAT_FIELDS
    assert row["function_name"] == name
    assert (row["total_calls"], row["cache_hits"], row["cache_misses"]) == (6, 3, 3)
    assert row["hit_rate"] == pytest.approx(0.5)
    entries = slow_add.cache_entries()
    assert len(entries) == 3
    # Each miss's compute time is stored with its entry; each hit saved its entry's.
    assert sorted(e["hits"] for e in entries) == [0, 1, 2]
    computed = sum(e["compute_time"] for e in entries)
    assert row["avg_computation_time"] == pytest.approx(computed / 3, abs=1e-6)
    saved = sum(e["hits"] * e["compute_time"] for e in entries)
    assert row["time_saved"] == pytest.approx(saved, abs=1e-6)
    assert row["cache_size_mb"] == pytest.approx(sum(e["size"] for e in entries) / 2**20)
    assert row["cache_size_mb"] > 0
    assert before - 1 <= row["last_accessed"].timestamp() <= after + 1
    assert len(calls) == 3
    # Every call landed in its latency histogram, and the percentiles are read from those.
    (raw,) = [
        r for r in slow_add.__afml_cache__.cache()._store.function_stats() if r.namespace == name
    ]
    assert (sum(raw.hit_latency), sum(raw.miss_latency)) == (3, 3)
    for result, histogram in (("hit", raw.hit_latency), ("miss", raw.miss_latency)):
        expected = latency_percentiles(histogram, LATENCY_BOUNDS)
        got = tuple(row[f"{result}_latency_p{q}"] for q in (50, 95, 99))
        assert got == expected

    info = slow_add.cache_info()
    assert {k: info[k] for k in STAT_FIELDS} == {k: row[k] for k in STAT_FIELDS}
    assert info["entries"] == 3

    status = cache_status()
    match = re.fullmatch(
        r"Hit rate: (\d+\.\d)% \| Tracked functions: (\d+) \| Saved: \d+\.\d (s|min|h)", status
    )
    assert match, status
    assert match.group(1) == f"{100 * 3 / 7:.1f}"
    assert match.group(2) == "2"


def test_cache_info_clear_and_entries_are_per_function(cache_dir: Path) -> None:
    calls = []

    @robust_cacheable(tags=("features",))
    def first(x: int) -> int:
        calls.append(("first", x))
        return x

    @robust_cacheable
    def second(x: int) -> int:
        calls.append(("second", x))
        return -x

    never_called = robust_cacheable(lambda x: x)
    for x in (1, 2, 3):
        first(x)
    second(1)
    second(2)
    first(1)
    entries = first.cache_entries()
    assert len(entries) == 3
    for entry in entries:
        assert entry["metadata"]["function"] == f"{first.__module__}.{first.__qualname__}"
        assert entry["tags"] == ["features"]
        assert Path(entry["path"]).is_file()
    info = first.cache_info()
    assert (info["total_calls"], info["cache_hits"], info["cache_misses"]) == (4, 1, 3)
    assert info["entries"] == 3
    empty = never_called.cache_info()
    assert (empty["total_calls"], empty["entries"]) == (0, 0)

    assert first.cache_clear() == 3
    assert first.cache_entries() == []
    assert len(second.cache_entries()) == 2  # the other function's entries are untouched
    calls.clear()
    first(1)
    second(1)
    second(2)
    assert calls == [("first", 1)]
    assert first.cache_clear() == 1
    assert first.cache_clear() == 0


def test_statistics_add_up_across_processes(worker_env: dict[str, str], tmp_path: Path) -> None:
    counter = str(tmp_path / "computed.txt")
    directory = worker_env["AFML_CACHE_DIR"]
    code = (
        "from helpers import decorated; "
        f"decorated.call_square_many({directory!r}, {counter!r}, calls=300, distinct=5)"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=worker_env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for child in children:
        _, stderr = child.communicate(timeout=WORKER_TIMEOUT_S)
        assert child.returncode == 0, stderr
    computations = counted(Path(counter))
    assert sorted(computations) == [f"square {i}" for i in range(5)]  # single-flight
    row = get_cache_stats()["helpers.decorated.square"]
    assert row["total_calls"] == 600
    assert row["cache_misses"] == 5
    assert row["cache_hits"] == 595
    assert decorated.square.cache_info()["total_calls"] == 600
    decorated.square(0, counter)
    assert get_cache_stats()["helpers.decorated.square"]["cache_hits"] == 596


# --- time-aware caching --------------------------------------------------------------------------


def test_time_aware_frames_with_different_ranges_both_compute(cache_dir: Path) -> None:
    calls = []

    @time_aware_cacheable
    def process_time_series(df: pd.DataFrame) -> float:
        calls.append(df.index[0])
        return df["value"].mean()

    df1 = pd.DataFrame({"value": range(10)}, index=pd.date_range("2024-01-01", periods=10))
    df2 = pd.DataFrame({"value": range(10)}, index=pd.date_range("2024-02-01", periods=10))
    assert process_time_series(df1) == process_time_series(df2) == 4.5
    assert len(calls) == 2
    assert process_time_series(df1.copy()) == 4.5
    assert process_time_series(df2.copy()) == 4.5
    assert len(calls) == 2


def test_time_aware_loader_keys_by_start_and_end(cache_dir: Path) -> None:
    calls = []

    @time_aware_cacheable
    def load_prices(symbol: str, start: str, end: str) -> pd.Series:
        calls.append((symbol, start, end))
        index = pd.date_range(start, end, freq="D")
        return pd.Series(np.arange(len(index), dtype=float), index=index, name=symbol)

    load_prices("SPY", "2024-01-01", "2024-01-31")
    load_prices("SPY", start="2024-01-01", end="2024-01-31")
    assert len(calls) == 1
    load_prices("SPY", "2024-01-01", "2024-02-29")
    load_prices("SPY", "2023-12-01", "2024-01-31")
    load_prices("QQQ", "2024-01-01", "2024-01-31")
    assert len(calls) == 4
    by_range = {
        (r["start"], r["end"])
        for e in load_prices.cache_entries()
        for r in e["metadata"]["time_ranges"]
        if r["argument"] == "start/end"
    }
    assert by_range == {
        ("2024-01-01T00:00:00+00:00", "2024-01-31T00:00:00+00:00"),
        ("2024-01-01T00:00:00+00:00", "2024-02-29T00:00:00+00:00"),
        ("2023-12-01T00:00:00+00:00", "2024-01-31T00:00:00+00:00"),
    }


def test_time_aware_entries_show_their_time_ranges(cache_dir: Path) -> None:
    @time_aware_cacheable
    def mean(df: pd.DataFrame) -> float:
        return float(df["value"].mean())

    mean(daily_frame("2024-01-01", periods=10))
    mean(daily_frame("2024-03-01", periods=10, tz="America/New_York"))
    entries = sorted(mean.cache_entries(), key=lambda e: e["time_range"][0])
    assert len(entries) == 2
    january, march = (e["metadata"]["time_ranges"] for e in entries)
    assert january == [
        {
            "argument": "df",
            "start": "2024-01-01T00:00:00+00:00",
            "end": "2024-01-10T00:00:00+00:00",
            "rows": 10,
            "freq": "D",
        }
    ]
    assert march == [
        {
            "argument": "df",
            "start": "2024-03-01T05:00:00+00:00",  # midnight in New York, EST
            "end": "2024-03-10T05:00:00+00:00",
            "rows": 10,
            "freq": "D",
        }
    ]
    assert list(entries[0]["time_range"]) == [
        pd.Timestamp("2024-01-01", tz="UTC"),
        pd.Timestamp("2024-01-10", tz="UTC"),
    ]


def test_invalidate_overlapping_removes_exactly_the_entries_that_touch(cache_dir: Path) -> None:
    calls = []

    @time_aware_cacheable
    def mean(df: pd.DataFrame) -> float:
        calls.append(df.index[0].month if isinstance(df.index, pd.DatetimeIndex) else 0)
        return float(df["value"].mean())

    frames = {m: daily_frame(f"2024-{m:02d}-01", periods=10) for m in (1, 2, 3)}  # 1st..10th

    def fill() -> None:
        for frame in frames.values():
            mean(frame)
        mean(pd.DataFrame({"value": [1.0, 2.0]}))  # no time range: never invalidated by time

    def recomputed(action) -> list[int]:
        calls.clear()
        fill()
        calls.clear()
        action()
        fill()
        return sorted(calls)

    assert recomputed(lambda: mean.invalidate(overlapping=("2024-02-05", "2024-02-06"))) == [2]
    # Touching counts at both ends: January ends at 2024-01-10 00:00, March starts 2024-03-01.
    assert recomputed(lambda: mean.invalidate(overlapping=("2024-01-10", "2024-01-10"))) == [1]
    assert recomputed(lambda: mean.invalidate(overlapping=("2024-02-20", "2024-03-01"))) == [3]
    assert recomputed(lambda: mean.invalidate(overlapping=("2024-01-11", "2024-01-31"))) == []
    assert recomputed(lambda: mean.invalidate(overlapping=("2023-06-01", "2025-01-01"))) == [
        1,
        2,
        3,
    ]
    # Timezone-aware bounds are compared in UTC.
    late = pd.Timestamp("2024-01-10 01:00", tz="Europe/Berlin")  # 2024-01-10 00:00 UTC
    assert recomputed(lambda: mean.invalidate(overlapping=(late, late))) == [1]
    fill()
    assert mean.invalidate(overlapping=("2024-02-05", "2024-03-05")) == 2
    assert mean.invalidate(overlapping=("2024-02-05", "2024-03-05")) == 0
    assert len(mean.cache_entries()) == 2


def test_invalidate_after_removes_exactly_the_entries_that_reach_past(cache_dir: Path) -> None:
    calls = []

    @time_aware_cacheable
    def mean(df: pd.DataFrame) -> float:
        calls.append(df.index[0].month)
        return float(df["value"].mean())

    frames = [daily_frame(f"2024-{m:02d}-01", periods=10) for m in (1, 2, 3)]
    for frame in frames:
        mean(frame)
    assert mean.invalidate(after="2024-02-10") == 2  # February ends exactly then: it touches
    calls.clear()
    for frame in frames:
        mean(frame)
    assert calls == [2, 3]
    assert mean.invalidate(after="2024-03-10 00:00:00.000000001") == 0
    assert mean.invalidate(after=pd.Timestamp("2024-01-05", tz="UTC")) == 3
    with pytest.raises(ValueError):
        mean.invalidate()
    with pytest.raises(ValueError):
        mean.invalidate(after="2024-01-01", overlapping=("2024-01-01", "2024-01-02"))


def test_live_edge_entries_expire_and_past_entries_do_not(cache_dir: Path) -> None:
    calls = []

    @time_aware_cacheable(live_ttl=datetime.timedelta(seconds=0.3))
    def close_sum(df: pd.DataFrame) -> float:
        calls.append(df.index[-1].year)
        return float(df["close"].sum())

    now = pd.Timestamp.now(tz="UTC").floor("min")
    live = pd.DataFrame(
        {"close": np.arange(5.0)}, index=pd.date_range(end=now, periods=5, freq="min")
    )
    past = pd.DataFrame(
        {"close": np.arange(5.0)},
        index=pd.date_range("2020-06-01", periods=5, freq="min", tz="UTC"),
    )
    assert close_sum(live) == close_sum(past) == 10.0
    assert close_sum(live) == close_sum(past) == 10.0
    assert sorted(calls) == [2020, now.year]
    expires = {e["time_range"][1] == now: e["expires"] for e in close_sum.cache_entries()}
    assert expires[False] is None  # the 2020 entry never expires by age
    assert expires[True] is not None
    time.sleep(0.5)
    calls.clear()
    assert close_sum(live) == 10.0
    assert close_sum(past) == 10.0
    assert calls == [now.year]  # only the live entry expired


@pytest.mark.parametrize("option", ["live_window", "live_ttl"])
def test_live_options_are_durations_checked_when_decorating(cache_dir: Path, option: str) -> None:
    @time_aware_cacheable(**{option: "2h"})  # as range loaders spell them
    def today(start: pd.Timestamp, end: pd.Timestamp) -> float:
        return 1.0

    now = pd.Timestamp.now(tz="UTC")
    assert today(now - pd.Timedelta("1h"), now) == 1.0  # live data: read the option
    time_aware_cacheable(**{option: np.timedelta64(15, "m")})  # a number with its unit
    for bare in (900, np.int64(900), "900"):  # pandas would read each as nanoseconds
        with pytest.raises(ValueError, match=f"{option}=.* is not a duration"):
            time_aware_cacheable(**{option: bare})
        with pytest.raises(ValueError, match=f"{option}=.* is not a duration"):
            time_aware_cacheable(range=("start", "end"), **{option: bare})


def test_cache_info_reads_the_cache_the_function_uses(tmp_path):
    # A function given its own Cache counts its calls there, not in the configured cache.
    own = afml_cache.Cache(tmp_path / "own")

    @afml_cache.robust_cacheable(cache=own)
    def doubled(x):
        return 2 * x

    doubled(3)
    doubled(3)
    info = doubled.cache_info()
    assert (info["total_calls"], info["cache_hits"], info["cache_misses"]) == (2, 1, 1)
    assert info["entries"] == 1
    assert info["cache_size_mb"] > 0


def test_a_cache_directory_variable_naming_an_object_store_is_said_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # AFML_CACHE_DIR=s3://bucket/prefix made a local folder `./s3:/bucket/prefix`, silently.
    from afml_cache.cache import default_directory

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("AFML_CACHE_DIR", "s3://bucket/prefix")
    with pytest.warns(afml_cache.CacheWarning, match="set AFML_CACHE_REMOTE=s3://bucket/prefix"):
        assert default_directory() == tmp_path / "xdg" / "afml_cache"
