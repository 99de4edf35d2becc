"""Values a function tells apart get different digests: each pair below shared one, so a cached
function returned the first value's result for the second. Each case names the function that
tells them apart, and the test checks that it does, then that the digests differ."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import weakref
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import afml_cache
from afml_cache import fingerprint
from afml_cache.errors import FingerprintError


class Ticker(str):
    def __str__(self) -> str:
        return self.upper()


class Active(list):
    def __iter__(self) -> Any:
        return (x for x in list.__iter__(self) if x)


class Price(float):
    def __float__(self) -> float:
        return float(round(float.__float__(self), 0))


class Bar(collections.namedtuple("Bar", "open close")):
    pass  # no __slots__: instances carry a __dict__


def _bar(symbol: str) -> Bar:
    bar = Bar(1.0, 2.0)
    bar.symbol = symbol  # type: ignore[attr-defined]
    return bar


def _multiindex(level: list[Any]) -> pd.DataFrame:
    index = pd.MultiIndex(levels=[level, ["a"]], codes=[[0, -1], [0, 0]], names=["id", "k"])
    return pd.DataFrame({"x": [10, 20]}, index=index)


def _sparse(**options: Any) -> pd.Series:
    return pd.Series(pd.arrays.SparseArray(**options))


def _sparse_storing_a_fill_value() -> pd.Series:
    """[0, 0, 1] with the middle 0 stored as a value, not left to the fill value."""
    sparse = pd.arrays.SparseArray
    if hasattr(sparse, "from_indices"):  # pandas 3.1
        return pd.Series(sparse.from_indices([0, 1], [1, 2], length=3, fill_value=0))
    from pandas._libs.sparse import IntIndex

    stored = IntIndex(3, np.array([1, 2], np.int32))
    return pd.Series(sparse([0, 1], sparse_index=stored, fill_value=0))


@dataclasses.dataclass(eq=False)  # hashable by identity: a weak set holds it
class Instrument:
    multiplier: int


# Held here: a weak mapping shows only what something else keeps alive.
_ES, _NQ = Instrument(50), Instrument(20)


def _settings(scale: int) -> threading.local:
    settings = threading.local()
    settings.scale = scale
    return settings


_ALIGNED = np.dtype([("a", "u1"), ("b", "i4")], align=True)
_AT_THE_SAME_OFFSETS = np.dtype(
    {"names": ["a", "b"], "formats": ["u1", "i4"], "offsets": [0, 4], "itemsize": 8}
)


def _cases() -> list[tuple[str, Any, Any, Callable[[Any], Any]]]:
    pytz = pytest.importorskip("pytz")
    scipy_special = pytest.importorskip("scipy.special")
    pl = pytest.importorskip("polars")
    new_york = "America/New_York"
    return [
        ("array dtype metadata", np.zeros(3, np.dtype("f8", metadata={"unit": "m"})),
         np.zeros(3), lambda a: a.dtype.metadata),
        ("aligned structured array", np.zeros(2, _ALIGNED), np.zeros(2, _AT_THE_SAME_OFFSETS),
         lambda a: a.dtype.isalignedstruct),
        ("stat_result beyond its tuple", os.stat_result((1,) * 10, {"st_mtime_ns": 1_000}),
         os.stat_result((1,) * 10, {"st_mtime_ns": 1_500}), lambda s: s.st_mtime_ns),
        ("struct_time zone", time.struct_time((2024, 1, 1, 12, 0, 0, 0, 1, 0, "EST", -18000)),
         time.struct_time((2024, 1, 1, 12, 0, 0, 0, 1, 0, "UTC", 0)), lambda t: t.tm_gmtoff),
        ("string array missing value", pd.array(["a", "b"], dtype=pd.StringDtype("python")),
         pd.array(["a", "b"], dtype=pd.StringDtype("python", na_value=np.nan)),
         lambda a: repr((a == None)[0])),  # noqa: E711
        ("string array and object array", pd.array(["a"], dtype=pd.StringDtype("python")),
         pd.arrays.NumpyExtensionArray(np.array(["a"], dtype=object)), lambda a: str(a.dtype)),
        ("polars sorted flag", pl.Series("x", [3, 1, 2]), pl.Series("x", [3, 1, 2]).set_sorted(),
         lambda s: s.max()),
        ("polars frame column sorted flag", pl.DataFrame({"x": [3, 1, 2]}),
         pl.DataFrame({"x": pl.Series([3, 1, 2]).set_sorted()}), lambda f: f["x"].max()),
        ("dict items view", {"mom": 1.0, "vol": 2.0}.items(), {"mom": 1.0, "vol": 10.0}.items(),
         lambda v: sum(w for _, w in v)),
        ("dict keys view order", {"a": 1, "b": 2}.keys(), {"b": 2, "a": 1}.keys(), list),
        ("ordered dict values view", collections.OrderedDict(a=1.0, b=2.0).values(),
         collections.OrderedDict(a=1.0, b=10.0).values(), sum),
        ("threading.local", _settings(2), _settings(5), lambda s: s.scale),
        ("weak value mapping", weakref.WeakValueDictionary({"ES": _ES}),
         weakref.WeakValueDictionary({"ES": _NQ}), lambda d: d["ES"].multiplier),
        ("weak set", weakref.WeakSet([_ES]), weakref.WeakSet([_NQ]),
         lambda s: [i.multiplier for i in s]),
        ("numpy flat iterator", np.array([1.0, 2.0]).flat, np.array([100.0, 2.0]).flat,
         lambda f: f[0]),
        ("ufunc of another library", np.log1p, scipy_special.log1p,
         lambda f: f(np.array([1.0], dtype=np.float16)).dtype),
        ("pytz and zoneinfo zone of one name",
         pd.Series(pd.date_range("2021-07-01", periods=2, tz=pytz.timezone(new_york))),
         pd.Series(pd.date_range("2021-07-01", periods=2, tz=zoneinfo.ZoneInfo(new_york))),
         lambda s: dt.datetime(2021, 7, 1, tzinfo=s.dt.tz).utcoffset()),
        ("a missing code's level dtype", _multiindex([1]), _multiindex([1.0]),
         lambda f: str(f.index.levels[0].dtype)),
        ("subarray dtypes", np.dtype(("<f8", (2, 3))), np.dtype(("<i4", (12,))),
         lambda d: np.zeros(1, dtype=d).shape),
        ("dtype metadata", np.dtype("f8", metadata={"unit": "USD"}), np.dtype("f8"),
         lambda d: d.metadata),
        ("str subclass with its own __str__", Ticker("aapl"), Ticker("AAPL"),
         lambda t: t == t.lower()),
        ("list subclass with its own __iter__", Active([1, 0, 0]), Active([1]), len),
        ("float subclass with its own __float__", Price(100.2), Price(100.4), lambda p: p * 2),
        ("sparse positions stored", _sparse(data=[0, 0, 1], fill_value=0),
         _sparse_storing_a_fill_value(),
         lambda s: s.array.npoints),
        ("sparse kind", _sparse(data=[0, 0, 1], fill_value=0),
         _sparse(data=[0, 0, 1], fill_value=0, kind="block"), lambda s: s.array.kind),
        ("named tuple attributes", _bar("ES"), _bar("NQ"), lambda b: b.symbol),
        ("memoryview writable", memoryview(b"ab"), memoryview(bytearray(b"ab")),
         lambda m: m.readonly),
        ("masked array nomask", np.ma.array([1, 2]), np.ma.array([1, 2], mask=[False, False]),
         lambda a: a.mask is np.ma.nomask),
        ("uuid is_safe", uuid.UUID(int=1, is_safe=uuid.SafeUUID.safe), uuid.UUID(int=1),
         lambda u: u.is_safe),
    ]  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize(("label", "a", "b", "tell"), CASES, ids=[c[0] for c in CASES])
def test_values_a_function_tells_apart_get_different_digests(
    label: str, a: Any, b: Any, tell: Callable[[Any], Any]
) -> None:
    assert tell(a) != tell(b), f"the case {label} does not show a difference"
    assert fingerprint(a) != fingerprint(b)


NEW_CASES = [c for c in CASES if c[0] in {
    "array dtype metadata", "aligned structured array", "stat_result beyond its tuple",
    "struct_time zone", "string array missing value", "string array and object array",
    "polars sorted flag", "dict items view", "threading.local", "weak value mapping",
    "numpy flat iterator",
}]  # fmt: skip


@pytest.mark.parametrize(("label", "a", "b", "tell"), NEW_CASES, ids=[c[0] for c in NEW_CASES])
def test_a_cached_call_on_the_second_value_returns_its_own_result(
    cache_dir: Path, label: str, a: Any, b: Any, tell: Callable[[Any], Any]
) -> None:
    cached = afml_cache.cacheable(lambda value: repr(tell(value)))
    assert cached(a) == repr(tell(a))
    assert cached(b) == repr(tell(b)) != repr(tell(a))


def test_what_holds_a_client_or_a_lock_counts_it_by_type_and_the_rest_by_content() -> None:
    # A session kept per thread made the whole threading.local unreadable: the function that
    # read it ran uncached.
    def settings(scale: int) -> threading.local:
        held = _settings(scale)
        held.lock = threading.Lock()
        return held

    assert fingerprint(settings(2)) == fingerprint(settings(2)) != fingerprint(settings(5))
    registry = weakref.WeakValueDictionary({"lock": threading.Lock})
    assert fingerprint(registry) == fingerprint(
        weakref.WeakValueDictionary({"lock": threading.Lock})
    )


def test_a_sorted_claim_the_data_bears_out_changes_no_digest() -> None:
    # Sorted in memory or read back from a file (which drops the flag): the same data.
    pl = pytest.importorskip("polars")
    assert fingerprint(pl.Series("x", [1, 2, 3]).set_sorted()) == fingerprint(
        pl.Series("x", [1, 2, 3])
    )
    frame = pl.DataFrame({"t": [1, 2, 3], "v": [3.0, 1.0, 2.0]})
    assert fingerprint(frame.sort("t")) == fingerprint(frame)


def test_the_masked_constant_has_a_fingerprint() -> None:
    # Reading its fill_value raised (numpy sets an attribute on it): a call ran uncached.
    assert fingerprint(np.ma.masked) == fingerprint(np.ma.masked)
    assert fingerprint(np.ma.masked) != fingerprint(np.ma.array([0], mask=[True]))


def test_a_cached_function_returns_each_values_own_result(cache_dir: Path) -> None:
    scipy_special = pytest.importorskip("scipy.special")

    @afml_cache.cacheable
    def transform(x: np.ndarray, fn: Any) -> list[float]:
        return fn(x).tolist()

    x = np.array([-0.8959280000000001, -0.88982])
    assert transform(x, np.exp2) == np.exp2(x).tolist()
    assert transform(x, scipy_special.exp2) == scipy_special.exp2(x).tolist()
    assert np.exp2(x).tolist() != scipy_special.exp2(x).tolist()


def test_a_zone_read_from_a_file_has_no_fingerprint() -> None:
    # ZoneInfo counted its key: from_file gives None, or any key its caller names.
    with open(zoneinfo.TZPATH[0] + "/Europe/Lisbon", "rb") as data:
        lisbon = zoneinfo.ZoneInfo.from_file(data, key="Europe/London")
    with pytest.raises(FingerprintError, match="a ZoneInfo read with from_file"):
        fingerprint(lisbon, strict=True)
    fingerprint(zoneinfo.ZoneInfo("Europe/London"), strict=True)


def test_the_local_zone_of_dateutil_counts_the_machines_zone() -> None:
    pytest.importorskip("dateutil")
    setup = """
        import dateutil.tz, pandas as pd
        s = pd.Series(pd.to_datetime(["2021-07-01 12:00"], utc=True))
        """
    value = "s.dt.tz_convert(dateutil.tz.tzlocal())"
    digests = {
        _digest_in_a_new_process(setup, value, {"TZ": zone})
        for zone in ("America/New_York", "Europe/London")
    }
    assert len(digests) == 2


def test_a_ufunc_is_at_home_in_its_library_whatever_else_imports_it(load: Any) -> None:
    # The first module in sys.modules exposing it was its home: a script importing
    # `from scipy.special import expit` made the script its home, the key changing with imports.
    scipy_special = pytest.importorskip("scipy.special")
    from afml_cache import fingerprinting

    fingerprinting._ufunc_homes.clear()
    before = fingerprint(scipy_special.expit)
    load("from scipy.special import expit\n", name="aaa_research_helpers")
    fingerprinting._ufunc_homes.clear()
    assert fingerprinting._ufunc_home(scipy_special.expit)[0] == "scipy.special"
    assert fingerprint(scipy_special.expit) == before


def test_a_zone_loaded_by_its_key_keeps_its_fingerprint_after_the_cache_is_cleared() -> None:
    london = zoneinfo.ZoneInfo("Europe/London")
    before = fingerprint(london, strict=True)
    zoneinfo.ZoneInfo.clear_cache()
    assert fingerprint(london, strict=True) == before
    assert fingerprint(zoneinfo.ZoneInfo.no_cache("Europe/London"), strict=True) == before


# --- the same value, the same digest in every process --------------------------------------------


def _digest_in_a_new_process(setup: str, value: str, env: dict[str, str]) -> str:
    script = (
        textwrap.dedent(setup)
        + f"\nfrom afml_cache import fingerprint\nprint(fingerprint({value}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "Warning" not in done.stderr, done.stderr
    return done.stdout.strip()


STABLE = [
    pytest.param(
        """
        import attrs

        @attrs.frozen
        class Barrier:
            pt: float = 1.0

            def upper(self, p):
                return p * (1 + 0.01 * self.pt)
        """,
        "Barrier(2.0)",
        "attrs",
        id="attrs frozen class (its __hash__ holds hash() of a string)",
    ),
    pytest.param(
        """
        import numba

        @numba.njit
        def kernel(a):
            return a.sum()
        """,
        "{'sum': kernel}",
        "numba",
        id="numba dispatcher (its pickle holds a random id)",
    ),
    pytest.param(
        """
        import attrs

        @attrs.frozen(cache_hash=True)
        class Params:
            window: int

        params = Params(5)
        seen = {params}  # fills its cached hash, hash() of its fields
        """,
        "params",
        "attrs",
        id="attrs instance with a cached hash",
    ),
    pytest.param(
        """
        import scipy.stats

        class Triangle(scipy.stats.rv_continuous):
            def _pdf(self, x):
                return 2 * x

        triangle = Triangle(a=0, b=1, name="triangle")
        """,
        "(triangle, triangle.freeze(), scipy.stats.poisson(3))",
        "scipy",
        id="a user's scipy distribution, a discrete one",
    ),
    pytest.param(
        "import scipy.stats",
        "(scipy.stats.t, scipy.stats.norm(loc=0, scale=0.01))",
        "scipy",
        id="scipy.stats distributions (numpy's global generator, seeded afresh)",
    ),
    pytest.param(
        "import datetime, dateutil.tz, pandas as pd, pytz",
        "(pd.Timestamp('2024-03-08 10:00', tz=dateutil.tz.gettz('America/New_York')),"
        " pd.Timestamp('2024-03-08 10:00', tz=pytz.FixedOffset(-300)),"
        " datetime.datetime(2024, 3, 8, 10, tzinfo=dateutil.tz.tzutc()),"
        " dateutil.tz.tzoffset('desk', 7200))",
        "dateutil",
        id="dateutil zones and pytz fixed offsets (no pickle reduction, no warning)",
    ),
]


@pytest.mark.parametrize(("setup", "value", "needs"), STABLE)
def test_a_value_has_one_digest_in_every_process(setup: str, value: str, needs: str) -> None:
    pytest.importorskip(needs)
    first, second = (
        _digest_in_a_new_process(setup, value, {"PYTHONHASHSEED": seed}) for seed in ("1", "2")
    )
    assert first == second
