"""Round-trip fidelity: what `Cache.get` returns equals what `Cache.set` stored, exactly.

Every value is read back twice: from a fresh `Cache` on the same directory (the disk path: pickle
stream, out-of-band buffers, codec, MAC) and from the writing `Cache` (the memory tier).
"""

from __future__ import annotations

import datetime as dt
import decimal
import fractions
import math
import pickle
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from afml_cache import Cache

COMPRESSIONS = ["none", "fast", "default", "max"]
OUT_OF_BAND = 64 * 1024  # buffers at least this large travel beside the pickle stream
CHUNK = 512 * 1024  # the codec's chunk size: buffers larger than this are cut into pieces

HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def shared_directory(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("roundtrip")


def round_trips(directory: Path, value, compression: str = "default") -> list:
    """``value`` as read back from disk (a fresh Cache) and from the writer's memory tier."""
    key = uuid.uuid4().hex
    writer = Cache(directory, compression=compression)
    assert writer.set(key, value) is True
    from_disk = Cache(directory).get(key)
    from_memory = writer.get(key)
    return [from_disk, from_memory]


# --- numpy --------------------------------------------------------------------------------------

STRUCTURED = np.dtype([("price", "<f8"), ("size", "<i4"), ("side", "U4"), ("flag", "?")])
PACKED = np.dtype([("a", "<i2"), ("b", "u1")])  # item size 3: no power of two
NESTED = np.dtype([("xy", "<f4", (2,)), ("inner", [("a", ">i8"), ("b", "S3")])])

DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    ">i4",
    ">f8",
    "float16",
    "float32",
    "float64",
    "longdouble",
    "complex64",
    "complex128",
    "clongdouble",
    "datetime64[ns]",
    "datetime64[us]",
    "datetime64[ms]",
    "datetime64[s]",
    "datetime64[m]",
    "datetime64[h]",
    "datetime64[D]",
    "datetime64[W]",
    "datetime64[M]",
    "datetime64[Y]",
    "timedelta64[ns]",
    "timedelta64[s]",
    "timedelta64[D]",
    "U1",
    "U13",
    "S5",
    "V7",
    "object",
    STRUCTURED,
    PACKED,
    NESTED,
]


def sample(dtype, n: int, seed: int = 0) -> np.ndarray:
    """``n`` varied values of ``dtype``, including the awkward ones (NaN, NaT, -0.0, extremes)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dtype.kind == "O":
        pool = [1, "two", 3.5, None, (4, "five"), [6, {"seven": 8}], b"nine", 10**30, float("nan")]
        out = np.empty(n, dtype=object)
        for i in range(n):
            out[i] = pool[i % len(pool)]
        return out
    if dtype.kind == "U":
        chars = "abcxyzé€😀 "
        return np.array(
            ["".join(rng.choice(list(chars), size=dtype.itemsize // 4)) for _ in range(n)],
            dtype=dtype,
        )
    if dtype.kind in "MmbiucfSV" or dtype.names:
        raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8)
        out = raw.view(dtype).copy()
        if dtype.names and "side" in dtype.names:
            out["side"] = np.array(["buy", "sell", "", "€😀"])[np.arange(n) % 4]
        if dtype.kind == "b":
            out = raw[:n] % 2 == 1
        if dtype.kind in "fc" and n >= 4:
            out[:4] = [np.nan, -0.0, np.inf, -np.inf]
        if dtype.kind in "Mm" and n >= 1:
            out[0] = np.datetime64("NaT") if dtype.kind == "M" else np.timedelta64("NaT")
        return out
    raise AssertionError(f"no sample for {dtype}")


def assert_identical_arrays(got, expected: np.ndarray) -> None:
    """``got`` is exactly what pickle itself gives back for ``expected`` (numpy's own pickling
    turns a non-contiguous big-endian array native-endian; the cache may do no worse)."""
    reference = pickle.loads(pickle.dumps(expected, protocol=5))
    assert type(got) is type(expected)
    assert got.dtype == reference.dtype, f"{got.dtype} != {reference.dtype}"
    assert got.dtype.str == reference.dtype.str
    assert got.shape == expected.shape
    if expected.dtype.hasobject:
        assert [repr(x) for x in got.ravel(order="K")] == [
            repr(x) for x in expected.ravel(order="K")
        ]
    else:
        assert got.tobytes() == reference.tobytes(), "the elements differ"
    assert got.flags.writeable, "a returned array must be writable"


def dtype_id(dtype) -> str:
    return (
        str(np.dtype(dtype)) if not np.dtype(dtype).names else f"struct{np.dtype(dtype).itemsize}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", [0, 1, 37, "large"])
def test_numpy_arrays_of_every_dtype(shared_directory, dtype, n):
    if n == "large":
        n = OUT_OF_BAND // np.dtype(dtype).itemsize + 1001
    expected = sample(dtype, n)
    for got in round_trips(shared_directory, expected):
        assert_identical_arrays(got, expected)
        assert got.dtype.str == expected.dtype.str


def layouts() -> dict:
    base = np.arange(60 * 70, dtype=np.float64).reshape(60, 70) * 1.5
    big = np.arange(300 * 400, dtype=np.int64).reshape(300, 400)  # 960 KB: out of band
    return {
        "C": base,
        "F": np.asfortranarray(base),
        "F large": np.asfortranarray(big),
        "transposed": big.T,
        "strided": base[::3, 1::2],
        "reversed": big[::-1],
        "column of F": np.asfortranarray(big)[:, 5],
        "row of C large": big[7],
        "broadcast (stride 0)": np.broadcast_to(np.arange(5.0), (1000, 5)),
        "0-d": np.array(3.25),
        "empty 2-d": np.empty((4, 0)),
        "3-d F": np.asfortranarray(np.arange(2 * 3 * 40_000).reshape(2, 3, 40_000)),
        "read-only": np.frombuffer(b"\x01" * 100_000, dtype=np.uint8),
        "masked": np.ma.masked_array(np.arange(10.0), mask=[0, 1] * 5, fill_value=-9.0),
        "recarray": np.rec.array(sample(STRUCTURED, 50)),
    }


@pytest.mark.parametrize("name", list(layouts()))
def test_numpy_memory_orders(shared_directory, name):
    expected = layouts()[name]
    for got in round_trips(shared_directory, expected):
        assert type(got) is type(expected)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        # Writable, except where pickle itself keeps a read-only array read-only.
        assert got.flags.writeable == pickle.loads(pickle.dumps(expected, 5)).flags.writeable
        if expected.flags.f_contiguous and not expected.flags.c_contiguous:
            assert got.flags.f_contiguous, "Fortran order was lost"
        if isinstance(expected, np.ma.MaskedArray):
            np.testing.assert_array_equal(got.mask, expected.mask)
            assert got.fill_value == expected.fill_value


LARGE_DTYPES = ["uint8", "int16", PACKED, "float32", "float64", "U3", "complex128", "U10"]


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("dtype", LARGE_DTYPES, ids=dtype_id)
@pytest.mark.parametrize(
    "nbytes", [OUT_OF_BAND, CHUNK + 5, 2 * CHUNK + 3 * 7 * 11 * 13], ids=["64K", "chunk+", "3ch"]
)
def test_large_arrays_at_every_compression(tmp_path, compression, dtype, nbytes):
    itemsize = np.dtype(dtype).itemsize
    n = -(-nbytes // itemsize)  # at least nbytes, so it goes out of band
    half = n // 2
    if np.dtype(dtype).kind == "U":
        expected = sample(dtype, n, seed=n)
    else:
        # Half smooth (compresses well), half noise (stored raw by the codec).
        smooth = np.arange(half * itemsize, dtype=np.uint64).astype(np.uint8)
        noisy = np.random.default_rng(n).integers(0, 256, (n - half) * itemsize, dtype=np.uint8)
        expected = np.concatenate([smooth, noisy]).view(dtype)
    for got in round_trips(tmp_path, expected, compression):
        assert_identical_arrays(got, expected)
    (entry,) = Cache(tmp_path).entries()
    assert entry["compression"] == compression
    if compression != "none" and np.dtype(dtype).kind != "U":
        assert entry["size"] < expected.nbytes, "the smooth half did not compress"


@HYPOTHESIS
@given(
    array=hnp.arrays(
        dtype=st.one_of(
            hnp.scalar_dtypes(),
            hnp.byte_string_dtypes(),
            hnp.unicode_string_dtypes(),
            hnp.array_dtypes(),
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
    ),
    order=st.sampled_from(["C", "F", "strided"]),
)
def test_hypothesis_numpy_arrays_round_trip(shared_directory, array, order):
    if order == "F":
        array = np.asfortranarray(array)
    elif order == "strided" and array.ndim:
        array = array[::2]
    for got in round_trips(shared_directory, array):
        assert_identical_arrays(got, array)


@HYPOTHESIS
@given(
    dtype=st.sampled_from(["uint8", "<i2", ">i4", "<f8", "<c16", "V3", "V5", "M8[ms]"]),
    extra=st.integers(min_value=0, max_value=2 * CHUNK),
    seed=st.integers(0, 2**32 - 1),
    repeats=st.integers(1, 1000),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_hypothesis_large_buffers_round_trip(
    shared_directory, dtype, extra, seed, repeats, compression
):
    itemsize = np.dtype(dtype).itemsize
    n = (OUT_OF_BAND + extra) // itemsize
    rng = np.random.default_rng(seed)
    # Runs of repeated random bytes: anything between incompressible and very compressible.
    raw = np.repeat(rng.integers(0, 256, -(-n * itemsize // repeats), dtype=np.uint8), repeats)
    expected = raw[: n * itemsize].view(dtype)
    for got in round_trips(shared_directory, expected, compression):
        assert_identical_arrays(got, expected)


def test_an_array_is_returned_as_a_fresh_writable_array_from_both_tiers(tmp_path):
    expected = np.arange(100_000, dtype=np.float64)
    writer = Cache(tmp_path)
    writer.set("a", expected)
    for got in (Cache(tmp_path).get("a"), writer.get("a"), writer.get("a")):
        assert got.flags.writeable
        got[:10] = -1.0  # works, and changes nothing stored
    np.testing.assert_array_equal(Cache(tmp_path).get("a"), expected)


# --- plain Python values ------------------------------------------------------------------------

plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False)
    | st.fractions()
    | st.complex_numbers(allow_nan=False)
    | st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
        | st.frozensets(st.integers() | st.text(max_size=3), max_size=4)
    ),
    max_leaves=20,
)


def type_tree(value):
    if isinstance(value, (list, tuple)):
        return (type(value), [type_tree(v) for v in value])
    if isinstance(value, dict):
        return (dict, sorted((repr(k), type_tree(k), type_tree(v)) for k, v in value.items()))
    if isinstance(value, frozenset):
        return (frozenset, sorted(repr(type_tree(v)) for v in value))
    return type(value)


@HYPOTHESIS
@given(value=plain)
def test_hypothesis_plain_python_values_round_trip(shared_directory, value):
    for got in round_trips(shared_directory, value):
        assert got == value
        assert type_tree(got) == type_tree(value)  # same types all the way down (1, 1.0, True)


def test_awkward_python_values(tmp_path):
    value = {
        "nan": float("nan"),
        "neg zero": -0.0,
        "big int": 2**200 + 1,
        "decimal": decimal.Decimal("-0.000"),
        "fraction": fractions.Fraction(1, 3),
        "large bytearray": bytearray(np.random.default_rng(1).bytes(200_000)),
        "large bytes": bytes(150_000),
        "set": {1, "a", (2, 3)},
        "tz datetime": dt.datetime(2024, 3, 10, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        "range": range(3, 100, 7),
        "slice": slice(1, None, 2),
        "ellipsis": ...,
        "type": np.float32,
    }
    for got in round_trips(tmp_path, value):
        assert math.isnan(got["nan"])
        assert math.copysign(1.0, got["neg zero"]) == -1.0
        assert str(got["decimal"]) == "-0.000"
        assert type(got["large bytearray"]) is bytearray
        for key in value:
            if key != "nan":
                assert got[key] == value[key], key


# --- pandas -------------------------------------------------------------------------------------


def assert_identical_frames(got, expected) -> None:
    assert type(got) is type(expected)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected, check_exact=True, check_freq=True)
        assert list(got.dtypes) == list(expected.dtypes)
        assert got.columns.equals(expected.columns) and got.columns.names == expected.columns.names
    else:
        pd.testing.assert_series_equal(got, expected, check_exact=True, check_freq=True)
        assert got.name == expected.name
    assert got.index.equals(expected.index)
    assert type(got.index) is type(expected.index)
    assert got.index.names == expected.index.names
    assert getattr(got.index, "freq", None) == getattr(expected.index, "freq", None)
    assert getattr(got.index, "tz", None) == getattr(expected.index, "tz", None)
    assert got.attrs == expected.attrs
    assert got.flags.allows_duplicate_labels == expected.flags.allows_duplicate_labels


def bars(n: int, tz: str | None = "America/New_York", freq: str = "min") -> pd.DataFrame:
    rng = np.random.default_rng(n)
    index = pd.date_range("2024-03-08 09:30", periods=n, freq=freq, tz=tz, name="timestamp")
    close = 100 + np.cumsum(rng.normal(0, 0.1, n))
    return pd.DataFrame(
        {
            "close": close,
            "volume": rng.integers(1, 10_000, n),
            "float32": close.astype(np.float32),
            "up": np.diff(close, prepend=close[:1]) > 0,
            "symbol": pd.Categorical(
                np.array(["ES", "NQ", "YM"])[np.arange(n) % 3],
                categories=["YM", "NQ", "ES", "RTY"],  # an unused category and a chosen order
                ordered=True,
            ),
            "note": np.array(["", "roll", "é€😀", "gap"], dtype=object)[np.arange(n) % 4],
            "label": pd.array([1, None, -1, 0] * (n // 4) + [1] * (n % 4), dtype="Int64"),
            "hit": pd.array([True, None, False, True] * (n // 4) + [True] * (n % 4), "boolean"),
            "tag": pd.array(["a", None, "b", "c"] * (n // 4) + ["a"] * (n % 4), "string"),
            "exit": index + pd.to_timedelta(rng.integers(0, 10**9, n), unit="ns"),
            "hold": pd.to_timedelta(rng.integers(0, 10**6, n), unit="s"),
            "utc": pd.date_range("2020-01-01", periods=n, freq="s", tz="UTC"),
        },
        index=index,
    )


@pytest.mark.parametrize("n", [8, 40_000], ids=["small", "out-of-band"])
@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_dataframe_with_tz_aware_datetime_index_and_freq(tmp_path, n, compression):
    expected = bars(n)
    expected.attrs = {"source": "test", "params": {"window": 5, "pt_sl": (1, 2)}}
    assert expected.index.freq is not None
    for got in round_trips(tmp_path, expected, compression):
        assert_identical_frames(got, expected)
        assert str(got.index.tz) == "America/New_York"
        assert got.index.freqstr == "min"
        assert got["symbol"].cat.categories.tolist() == ["YM", "NQ", "ES", "RTY"]
        assert got["symbol"].cat.ordered
        assert got["label"].isna().sum() == expected["label"].isna().sum()
        # The frame is usable in place: its buffers are writable.
        got.iloc[0, 0] = -1.0
        got.loc[got.index[1], "volume"] = 0
        got["close"].to_numpy(copy=True)[:] = 0


@pytest.mark.parametrize(
    "index",
    [
        pd.date_range("2024-01-01", periods=50, freq="B"),
        pd.date_range("2024-01-01", periods=50, freq="15min", tz="UTC"),
        pd.date_range("2024-01-31", periods=50, freq="ME", tz="Asia/Tokyo"),
        pd.date_range("2024-03-10", periods=50, freq="h", tz="America/Chicago"),  # DST
        pd.DatetimeIndex(["2024-01-01", "2024-01-03", "2024-01-02"]),  # no freq
        pd.period_range("2024-01", periods=50, freq="M"),
        pd.timedelta_range(0, periods=50, freq="s"),
        pd.RangeIndex(5, 105, 2),
        pd.Index(np.arange(50) * 1.5, name="x"),
        pd.CategoricalIndex(list("abcde") * 10),
        pd.IntervalIndex.from_breaks(np.arange(51)),
    ],
    ids=lambda ix: f"{type(ix).__name__}-{getattr(ix, 'freqstr', None)}-{getattr(ix, 'tz', None)}",
)
def test_series_keeps_its_index_type_freq_and_tz(tmp_path, index):
    expected = pd.Series(np.arange(len(index), dtype=float), index=index, name="signal")
    expected.attrs["unit"] = "bp"
    for got in round_trips(tmp_path, expected):
        assert_identical_frames(got, expected)


def test_multiindex_rows_and_columns(tmp_path):
    rows = pd.MultiIndex.from_product(
        [["ES", "NQ"], pd.date_range("2024-01-01", periods=3000, freq="min", tz="UTC")],
        names=["symbol", "time"],
    )
    columns = pd.MultiIndex.from_tuples(
        [("price", "bid"), ("price", "ask"), ("size", "bid")], names=["field", "side"]
    )
    rng = np.random.default_rng(3)
    expected = pd.DataFrame(rng.normal(size=(len(rows), 3)), index=rows, columns=columns)
    expected[("size", "bid")] = rng.integers(0, 100, len(rows))
    for got in round_trips(tmp_path, expected):
        assert_identical_frames(got, expected)
        assert got.index.names == ["symbol", "time"]
        assert got.index.levels[1].tz is not None


def test_nullable_and_extension_dtypes(tmp_path):
    n = 20_000
    expected = pd.DataFrame(
        {
            "Int8": pd.array([1, None] * (n // 2), dtype="Int8"),
            "UInt64": pd.array([2**63, None] * (n // 2), dtype="UInt64"),
            "Float64": pd.array([0.5, None] * (n // 2), dtype="Float64"),
            "boolean": pd.array([True, None] * (n // 2), dtype="boolean"),
            "string[python]": pd.array(["x", None] * (n // 2), dtype="string[python]"),
            "period": pd.period_range("2024-01-01", periods=n, freq="D"),
            "interval": pd.arrays.IntervalArray.from_breaks(np.arange(n + 1)),
            "sparse": pd.arrays.SparseArray([0.0, 0.0, 1.5, 0.0] * (n // 4)),
            "category of ints": pd.Categorical([3, 1, 2, 1] * (n // 4)),
            "tz datetime": pd.date_range("2024-01-01", periods=n, freq="s", tz="Europe/London"),
        }
    )
    for got in round_trips(tmp_path, expected):
        assert_identical_frames(got, expected)


def test_arrow_backed_dtypes(tmp_path):
    pa = pytest.importorskip("pyarrow")
    n = 20_000
    expected = pd.DataFrame(
        {
            "int": pd.array(range(n), dtype=pd.ArrowDtype(pa.int64())),
            "str": pd.array(
                [f"s{i}" if i % 7 else None for i in range(n)], dtype="string[pyarrow]"
            ),
            "large_str": pd.array(["é€"] * n, dtype=pd.ArrowDtype(pa.large_string())),
            "ts": pd.array(
                pd.date_range("2024-01-01", periods=n, freq="ms", tz="UTC"),
                dtype=pd.ArrowDtype(pa.timestamp("ms", tz="UTC")),
            ),
            "list": pd.array(
                [[i, i + 1] for i in range(n)], dtype=pd.ArrowDtype(pa.list_(pa.int32()))
            ),
            "struct": pd.array(
                [{"a": i, "b": "x"} for i in range(n)],
                dtype=pd.ArrowDtype(pa.struct([("a", pa.int64()), ("b", pa.string())])),
            ),
            "decimal": pd.array(
                [decimal.Decimal("1.25")] * n, dtype=pd.ArrowDtype(pa.decimal128(10, 2))
            ),
            "dictionary": pd.array(
                ["a", "b"] * (n // 2), dtype=pd.ArrowDtype(pa.dictionary(pa.int8(), pa.string()))
            ),
        }
    )
    for got in round_trips(tmp_path, expected):
        assert_identical_frames(got, expected)


def test_attrs_and_flags_survive(tmp_path):
    expected = pd.DataFrame({"a": [1, 2]}).set_flags(allows_duplicate_labels=False)
    expected.attrs = {"nested": {"list": [1, 2.5, "x"]}, "when": pd.Timestamp("2024-01-01")}
    series = pd.Series([1.0], name=("tuple", "name"))
    series.attrs = {"k": "v"}
    for got_frame, got_series in zip(
        round_trips(tmp_path, expected), round_trips(tmp_path, series), strict=True
    ):
        assert_identical_frames(got_frame, expected)
        assert got_frame.flags.allows_duplicate_labels is False
        assert_identical_frames(got_series, series)


@HYPOTHESIS
@given(
    n=st.integers(0, 300),
    tz=st.sampled_from([None, "UTC", "America/New_York", "Asia/Kolkata"]),
    freq=st.sampled_from(["s", "min", "h", "D", "B", "W-FRI", "ME"]),
)
def test_hypothesis_bars_round_trip(shared_directory, n, tz, freq):
    expected = bars(n, tz=tz, freq=freq)
    for got in round_trips(shared_directory, expected):
        assert_identical_frames(got, expected)


# --- polars and pyarrow -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 50_000], ids=["small", "large"])
def test_polars_frames(tmp_path, n):
    pl = pytest.importorskip("polars")
    rng = np.random.default_rng(n)
    expected = pl.DataFrame(
        {
            "ts": pl.datetime_range(
                dt.datetime(2024, 1, 1),
                dt.datetime(2024, 1, 1) + dt.timedelta(seconds=n - 1),
                interval="1s",
                time_zone="America/New_York",
                eager=True,
            ),
            "close": rng.normal(size=n),
            "volume": rng.integers(0, 1000, n),
            "symbol": pl.Series(["ES", "NQ", None, "YM", "ES"] * (n // 5), dtype=pl.Categorical),
            "note": [None if i % 3 == 0 else f"n{i}" for i in range(n)],
            "legs": [[i, i + 1] for i in range(n)],
            "meta": [{"a": i, "b": str(i)} for i in range(n)],
            "flag": [True, None, False, True, False] * (n // 5),
        }
    )
    for got in round_trips(tmp_path, expected):
        assert isinstance(got, pl.DataFrame)
        assert got.schema == expected.schema
        assert got.equals(expected, null_equal=True)
    lazy_series = expected["close"].rename("close price")
    for got in round_trips(tmp_path, lazy_series):
        assert got.name == "close price" and got.equals(lazy_series)


@pytest.mark.parametrize("n", [7, 100_000], ids=["small", "out-of-band"])
def test_pyarrow_tables_batches_and_sliced_arrays(tmp_path, n):
    pa = pytest.importorskip("pyarrow")
    rng = np.random.default_rng(n)
    table = pa.table(
        {
            "ts": pa.array(np.arange(n, dtype="int64"), pa.timestamp("us", tz="UTC")),
            "close": pa.array(rng.normal(size=n)),
            "maybe": pa.array([None if i % 5 == 0 else i for i in range(n)], pa.int32()),
            "str": pa.array([f"row{i}" for i in range(n)]),
            "list": pa.array([[i % 1000] * (i % 3) for i in range(n)], pa.list_(pa.int16())),
            "dict": pa.array(["a", "b", "c"] * (n // 3) + ["a"] * (n % 3)).dictionary_encode(),
        },
        metadata={"source": "test"},
    )
    chunked = pa.concat_tables([table, table.slice(1, max(n - 3, 0))])
    values = {
        "table": table,
        "two chunks": chunked,
        "sliced table": table.slice(n // 3, n // 2),
        "record batch": table.to_batches()[0],
        "sliced array": table.column("maybe").chunk(0).slice(1, n - 2),
        "chunked array": chunked.column("str"),
    }
    for name, expected in values.items():
        for got in round_trips(tmp_path, expected):
            assert type(got) is type(expected), name
            assert got.equals(expected), name
            if hasattr(expected, "schema"):
                assert got.schema.equals(expected.schema, check_metadata=True), name


# --- what research functions return -------------------------------------------------------------


def test_metrics_trades_equity_tuple(tmp_path):
    trades = bars(5_000, tz="UTC").iloc[::7]
    equity = (1 + trades["close"].pct_change().fillna(0)).cumprod().rename("equity")
    equity.index.freq = None
    daily = pd.Series(
        np.linspace(1, 2, 400), index=pd.date_range("2023-01-01", periods=400, freq="D", tz="UTC")
    )
    metrics = {
        "sharpe": np.float64(1.25),
        "max_drawdown": -0.125,
        "trades": np.int64(len(trades)),
        "by_year": {2023: 0.1, 2024: float("-inf")},
        "params": ("triple_barrier", {"pt_sl": (1, 2)}),
        "weights": np.linspace(0, 1, 20_000),
    }
    expected = (metrics, trades, (equity, daily))
    for got in round_trips(tmp_path, expected):
        assert isinstance(got, tuple) and len(got) == 3
        got_metrics, got_trades, (got_equity, got_daily) = got
        assert set(got_metrics) == set(metrics)
        assert type(got_metrics["sharpe"]) is np.float64 and got_metrics["sharpe"] == 1.25
        assert type(got_metrics["trades"]) is np.int64
        assert got_metrics["by_year"] == metrics["by_year"]
        assert got_metrics["params"] == metrics["params"]
        assert_identical_arrays(got_metrics["weights"], metrics["weights"])
        assert_identical_frames(got_trades, trades)
        assert_identical_frames(got_equity, equity)
        assert_identical_frames(got_daily, daily)
        assert got_daily.index.freqstr == "D"


def test_shared_objects_stay_shared(tmp_path):
    frame = pd.DataFrame({"a": np.arange(20_000)})
    array = np.arange(100_000)
    for got in round_trips(tmp_path, {"x": frame, "y": frame, "arrays": [array, array]}):
        assert got["x"] is got["y"]
        assert got["arrays"][0] is got["arrays"][1]
        pd.testing.assert_frame_equal(got["x"], frame)


def test_a_fitted_scikit_learn_estimator(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 5))
    y = (x[:, 0] + rng.normal(scale=0.5, size=500) > 0).astype(int)
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y)
    for got in round_trips(tmp_path, model):
        assert type(got) is RandomForestClassifier
        assert got.get_params() == model.get_params()
        np.testing.assert_array_equal(got.predict_proba(x), model.predict_proba(x))
