"""Warming: ``f.is_cached``, ``f.precache`` and ``f.warm`` (in this process and in joblib worker
processes), and ``afml-cache warm MODULE:FUNCTION``.

Computations are counted in files (see helpers/warmed.py); results after a warm are compared with
the uncached function's.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import warmed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import afml_cache
from afml_cache import robust_cacheable
from afml_cache.cli import main
from afml_cache.warming import call


@pytest.fixture
def counter(tmp_path: Path) -> str:
    return str(tmp_path / "computed.txt")


def test_is_cached_follows_the_key_rules_and_loads_nothing(cache_dir, counter):
    f = warmed.label
    assert not f.is_cached(3, counter)
    assert f(3, counter) == 9
    # One key for f(3, c), f(3, c, 1), f(x=3, ...): the binding rules of the key.
    assert f.is_cached(3, counter) and f.is_cached(3, counter, 1)
    assert f.is_cached(x=3, counter="elsewhere", scale=1)  # counter is ignored
    assert not f.is_cached(3, counter, scale=2) and not f.is_cached(4, counter)
    assert warmed.computed(counter) == ["label 3 1"]
    stats = f.cache_info()
    assert (stats["cache_hits"], stats["cache_misses"]) == (0, 1)  # no call was counted


def test_is_cached_is_false_when_the_call_would_run_uncached(cache_dir, counter):
    assert not warmed.label.is_cached(3)  # counter missing: the function would raise
    with afml_cache.disabled():
        assert not warmed.label.is_cached(3, counter)


def test_precache_stores_a_known_result_that_calls_then_return(cache_dir, counter):
    f = warmed.label
    assert f.precache(49, 7, counter) is True
    assert f.is_cached(7, counter, scale=1)
    assert f(7, counter) == 49 == warmed.label_uncached(7)
    assert warmed.computed(counter) == []  # never computed
    # A known result replaces what was there (a corrected value).
    f(8, counter)
    f.precache(-1, x=8, counter=counter)
    assert f(8, counter) == -1
    with pytest.raises(TypeError, match=r"does not take the call \(7, nope=1\)"):
        f.precache(0, 7, nope=1)


def test_warm_computes_only_what_is_missing_and_reports_it(cache_dir, counter):
    f = warmed.label
    f(1, counter)
    calls = [
        (1, counter),  # cached before
        (2, counter),
        {"x": 3, "counter": counter},
        call(4, counter, scale=2),
        (2, counter),  # repeats the second call
        (-1, counter),  # the function raises
        (5,),  # missing an argument
    ]
    report = f.warm(calls)
    assert report["function"] == f.__afml_cache__.name
    assert (report["computed"], report["already_cached"]) == (3, 2)
    assert [(x["call"], x["error"]) for x in report["failed"]] == [
        (5, "ValueError: x must not be negative, got -1"),
        (
            6,
            f"{f.__afml_cache__.name} does not take the call (5): missing a required argument: "
            "'counter'",
        ),
    ]
    assert warmed.computed(counter) == [
        "label -1 1",
        "label 1 1",
        "label 2 1",
        "label 3 1",
        "label 4 2",
    ]
    # Now every call that can be cached is a hit, equal to the uncached result.
    assert [f(x, counter) for x in (1, 2, 3)] == [warmed.label_uncached(x) for x in (1, 2, 3)]
    assert f(4, counter, scale=2) == warmed.label_uncached(4, 2)
    assert len(warmed.computed(counter)) == 5
    again = f.warm(calls[:5])
    assert (again["computed"], again["already_cached"], again["failed"]) == (0, 5, [])


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(xs=st.lists(st.integers(-2, 12), max_size=12), scale=st.sampled_from([1, 2]))
def test_warm_accounts_for_every_call_and_leaves_the_uncached_results(
    cache_dir, counter, xs, scale
):
    f = warmed.label
    before = {x for x in set(xs) if f.is_cached(x, counter, scale)}
    report = f.warm([call(x, counter, scale=scale) for x in xs])
    fresh = {x for x in xs if x >= 0} - before
    assert report["computed"] == len(fresh)
    assert [c["call"] for c in report["failed"]] == [i for i, x in enumerate(xs) if x < 0]
    assert report["computed"] + report["already_cached"] + len(report["failed"]) == len(xs)
    done = len(warmed.computed(counter))
    assert [f(x, counter, scale) for x in xs if x >= 0] == [
        warmed.label_uncached(x, scale) for x in xs if x >= 0
    ]
    assert len(warmed.computed(counter)) == done  # all hits


def test_warm_in_worker_processes_uses_this_process_cache(cache_dir, counter):
    # cache_dir is set with configure(), not in the environment: the workers must get it.
    f = warmed.label
    report = f.warm([(x, counter) for x in range(6)] + [(-2, counter)], n_jobs=2)
    assert (report["computed"], report["already_cached"]) == (6, 0)
    assert [x["call"] for x in report["failed"]] == [6]
    assert os.getpid() not in warmed.pids(counter)  # computed in the workers
    assert all(f.is_cached(x, counter) for x in range(6))
    assert [f(x, counter) for x in range(6)] == [warmed.label_uncached(x) for x in range(6)]
    assert len(warmed.computed(counter)) == 7  # nothing computed again here
    assert f.warm([(x, counter) for x in range(6)], n_jobs=2)["already_cached"] == 6


def test_bad_calls_and_options_are_refused_clearly(cache_dir, counter):
    f = warmed.label
    with pytest.raises(TypeError, match=r"calls\[1\] is a int; give each call as a tuple"):
        f.warm([(1, counter), 5])
    with pytest.raises(TypeError, match=r"calls\[0\] is a list"):
        f.warm([[1, counter]])
    with pytest.raises(TypeError, match=r"warm takes an iterable of calls.*got int 5"):
        f.warm(5)
    with pytest.raises(ValueError, match="n_jobs=0"):
        f.warm([], n_jobs=0)
    with pytest.raises(ValueError, match="not both"):
        f.warm([], n_jobs=2, client=object())
    assert warmed.computed(counter) == []

    @robust_cacheable
    async def later(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="is a coroutine function: warm it by awaiting"):
        later.warm([(1,)])


# --- afml-cache warm ---------------------------------------------------------------------------

WARMUPS = """
    from afml_cache import robust_cacheable

    @robust_cacheable
    def power(x, n=2):
        if x == 13:
            raise RuntimeError("unlucky")
        return x**n

    def nightly():
        power.warm([(x,) for x in range(5)])
        power.warm([{"x": x, "n": 3} for x in range(3)])

    def with_failures():
        power.warm([(12,), (13,)])

    def broken():
        raise OSError("the data vendor is down")
"""


@pytest.fixture
def warmups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    module = f"warmups_{os.getpid()}_{id(tmp_path)}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(WARMUPS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / module


def test_warm_command_runs_a_warm_up_and_reports(warmups, cache_dir, capsys):
    module = warmups.name
    assert main(["warm", f"{module}:nightly", "--dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"{module}.power: 5 computed, 0 already cached, 0 failed\n"
        f"{module}.power: 3 computed, 0 already cached, 0 failed\n"
    )
    assert main(["warm", f"{module}:nightly", "--dir", str(cache_dir), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["failed"] == 0
    assert [(r["computed"], r["already_cached"]) for r in document["reports"]] == [(0, 5), (0, 3)]


def test_warm_command_exits_1_on_failures_and_2_on_a_bad_name(warmups, cache_dir, capsys):
    module = warmups.name
    assert main(["warm", f"{module}:with_failures", "--dir", str(cache_dir)]) == 1
    err = capsys.readouterr().err
    assert f"{module}.power call 1 (13): RuntimeError: unlucky" in err
    assert main(["warm", f"{module}:broken", "--dir", str(cache_dir)]) == 1
    assert "raised OSError: the data vendor is down" in capsys.readouterr().err
    assert main(["warm", f"{module}:nowhere"]) == 2
    assert f"{module} has no 'nowhere'" in capsys.readouterr().err
    assert main(["warm", "no_such_module_here:f"]) == 2
    assert "cannot import 'no_such_module_here'" in capsys.readouterr().err
    assert main(["warm", "nocolon"]) == 2
    assert "MODULE:FUNCTION" in capsys.readouterr().err


def test_precache_of_a_function_defined_here(cache_dir):
    @robust_cacheable
    def slow(x: int) -> int:
        raise AssertionError("precached: never computed")

    slow.precache(10, 5)
    assert slow(5) == 10


def test_precache_right_after_a_computed_result_is_the_one_kept(cache_dir):
    # The computed result (8 MB) waits for the writer thread when precache replaces it.
    @robust_cacheable
    def feature(n: int) -> np.ndarray:
        return np.full(n, 1.0)

    for n in range(1_000_000, 1_000_005):
        feature(n)
        feature.precache(np.zeros(3), n)
        afml_cache.flush_writes()
        np.testing.assert_array_equal(feature(n), np.zeros(3))


def test_a_precache_too_large_for_the_cache_removes_the_value_it_was_to_replace(cache_dir):
    # As a refused set does: the call computes again rather than read the replaced value.
    small = afml_cache.Cache(cache_dir / "small", size_limit="1MB")
    calls = []

    @robust_cacheable(cache=small, ignore_globals=("calls",))
    def feature(n: int) -> np.ndarray:
        calls.append(n)
        return np.full(n, 1.0)

    feature(3)
    with pytest.warns(afml_cache.CacheWarning):
        assert feature.precache(np.random.default_rng(0).random(500_000), 3) is False
    afml_cache.flush_writes()
    np.testing.assert_array_equal(feature(3), np.full(3, 1.0))
    assert calls == [3, 3]


def test_a_failed_call_is_reported_with_each_argument_on_one_short_line(cache_dir):
    # A Series' repr filled the report's 200 characters across lines, and the argument that
    # told the calls apart (k) was never shown.
    import pandas as pd

    @robust_cacheable
    def labels(close, k):
        if k == 2:
            raise ValueError("k=2 is not supported")
        return close * k

    close = pd.Series(np.linspace(1, 2, 1000), index=pd.date_range("2024", periods=1000, freq="h"))
    report = labels.warm([(close, 1), call(close, k=2)])
    (failed,) = report["failed"]
    assert failed["arguments"] == "Series[1000 float64], k=2"
    assert failed["error"] == "ValueError: k=2 is not supported"
