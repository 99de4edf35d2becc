"""Fingerprints of pandas objects."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from afml_cache import fingerprint

pd = pytest.importorskip("pandas")


def make_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "px": [100.0, 101.5, 99.25, 102.0],
            "qty": np.array([10, 20, 30, 40], dtype=np.int64),
            "sym": ["AAA", "BBB", "AAA", "CCC"],
            "flag": [True, False, True, True],
        },
        index=pd.Index([10, 11, 12, 13], name="bar"),
    )


# --------------------------------------------------------------------------- Series


def test_series_is_deterministic_and_copy_stable():
    s = pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"], name="x")
    assert fingerprint(s) == fingerprint(
        pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"], name="x")
    )
    assert fingerprint(s) == fingerprint(s.copy())
    assert fingerprint(s) == fingerprint(copy.deepcopy(s))


def test_series_values_name_index_and_dtype_count(distinct):
    base = pd.Series([1, 2, 3], index=["a", "b", "c"], name="x")
    distinct(
        [
            base,
            pd.Series([1, 2, 4], index=["a", "b", "c"], name="x"),
            pd.Series([1, 2, 3], index=["a", "b", "c"], name="y"),
            pd.Series([1, 2, 3], index=["a", "b", "c"]),
            pd.Series([1, 2, 3], index=["a", "b", "d"], name="x"),
            pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"], name="x"),
            base.to_frame(),
            base.to_numpy(),
            base.to_dict(),
        ],
        labels=[
            "base",
            "value",
            "name y",
            "no name",
            "index label",
            "float64",
            "to_frame",
            "ndarray",
            "dict",
        ],
    )


# --------------------------------------------------------------------------- DataFrame


def test_frame_and_its_copy_share_a_digest():
    df = make_frame()
    assert fingerprint(df) == fingerprint(df.copy())
    assert fingerprint(df) == fingerprint(df.copy(deep=True))
    assert fingerprint(df) == fingerprint(make_frame())


def test_frame_rebuilt_column_by_column_equals_consolidated_original():
    # A single consolidated 2-D float block vs one block per column: layout must not count.
    df = pd.DataFrame(
        np.arange(40, dtype=np.float64).reshape(10, 4),
        columns=["a", "b", "c", "d"],
        index=pd.date_range("2024-01-01", periods=10, freq="D", name="day"),
    )
    rebuilt = pd.DataFrame({c: df[c] for c in df.columns}, index=df.index)
    inserted = pd.DataFrame(index=df.index)
    for c in df.columns:
        inserted[c] = df[c].to_numpy().copy()
    assert len(inserted._mgr.blocks) == 4  # really a different layout
    assert fingerprint(rebuilt) == fingerprint(df)
    assert fingerprint(inserted) == fingerprint(df)


def test_frame_from_fortran_and_c_ordered_arrays_share_a_digest():
    values = np.arange(12, dtype=np.float64).reshape(4, 3)
    c_frame = pd.DataFrame(values, columns=["a", "b", "c"])
    f_frame = pd.DataFrame(np.asfortranarray(values), columns=["a", "b", "c"])
    assert fingerprint(c_frame) == fingerprint(f_frame)


def test_column_names_and_order_count(distinct):
    df = make_frame()
    distinct(
        [
            df,
            df.rename(columns={"px": "price"}),
            df[["qty", "px", "sym", "flag"]],
            df[["px", "qty", "sym"]],
        ],
        labels=["base", "renamed", "reordered", "dropped"],
    )


def test_column_dtype_counts_even_with_equal_values():
    a = pd.DataFrame({"x": np.array([1, 2, 3], dtype=np.int64)})
    b = pd.DataFrame({"x": np.array([1, 2, 3], dtype=np.float64)})
    c = pd.DataFrame({"x": np.array([1, 2, 3], dtype=np.int32)})
    assert (a["x"] == b["x"]).all() and (a["x"] == c["x"]).all()
    assert len({fingerprint(a), fingerprint(b), fingerprint(c)}) == 3


def test_index_values_and_names_count(distinct):
    df = make_frame()
    distinct(
        [
            df,
            df.rename_axis("other"),
            df.rename_axis(None),
            df.set_axis(pd.Index([10, 11, 12, 14], name="bar"), axis=0),
            df.reset_index(drop=True),
        ],
        labels=["base", "index renamed", "index unnamed", "index label", "RangeIndex"],
    )


def test_one_changed_cell_differs():
    df = make_frame()
    for col, value in [("px", 101.0), ("qty", 21), ("sym", "ZZZ"), ("flag", True)]:
        changed = df.copy()
        assert changed.loc[11, col] != value
        changed.loc[11, col] = value
        assert fingerprint(changed) != fingerprint(df), col


def test_frame_differs_from_series_and_dict_with_same_data(distinct):
    df = pd.DataFrame({"a": [1, 2, 3]})
    distinct([df, df["a"], {"a": [1, 2, 3]}, df.to_dict(), df.to_numpy()])


def test_empty_frames_with_different_columns_differ(distinct):
    distinct(
        [
            pd.DataFrame(),
            pd.DataFrame(columns=["a"]),
            pd.DataFrame(columns=["b"]),
            pd.DataFrame({"a": pd.Series([], dtype="float64")}),
        ],
        labels=["empty", "columns=[a] (object)", "columns=[b]", "a: float64"],
    )


def test_large_frame_with_datetime_index_changed_in_one_cell_differs():
    n = 100_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {"open": rng.random(n), "close": rng.random(n), "volume": rng.integers(0, 1000, n)},
        index=pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC"),
    )
    before = fingerprint(df)
    for row in (0, n // 2, n - 1):
        changed = df.copy()
        changed.iloc[row, 1] += 1.0
        assert fingerprint(changed) != before, row
    changed_index = df.copy()
    changed_index.index = df.index.delete(n - 1).append(
        pd.DatetimeIndex([df.index[-1] + pd.Timedelta("1s")])
    )
    assert fingerprint(changed_index) != before


# --------------------------------------------------------------------------- Index types


def test_index_types(distinct):
    distinct(
        [
            pd.Index([1, 2, 3]),
            pd.Index([1, 2, 4]),
            pd.Index([1, 2, 3], name="n"),
            pd.Index([1.0, 2.0, 3.0]),
            pd.Index(["1", "2", "3"]),
            [1, 2, 3],
        ]
    )


def test_range_index(distinct):
    assert fingerprint(pd.RangeIndex(10)) == fingerprint(pd.RangeIndex(0, 10, 1))
    distinct(
        [
            pd.RangeIndex(10),
            pd.RangeIndex(11),
            pd.RangeIndex(0, 10, 2),
            pd.RangeIndex(1, 11),
            pd.RangeIndex(10, name="i"),
        ]
    )


def test_multi_index(distinct):
    tuples = [("a", 1), ("a", 2), ("b", 1)]
    mi = pd.MultiIndex.from_tuples(tuples, names=["k", "n"])
    assert fingerprint(mi) == fingerprint(pd.MultiIndex.from_tuples(tuples, names=["k", "n"]))
    distinct(
        [
            mi,
            pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 2)], names=["k", "n"]),
            pd.MultiIndex.from_tuples(list(reversed(tuples)), names=["k", "n"]),
            pd.MultiIndex.from_tuples(tuples, names=["k", "m"]),
            pd.MultiIndex.from_tuples(tuples),
        ],
        labels=["base", "value", "order", "names", "no names"],
    )


def test_multi_index_levels_count_where_the_values_do_not_decide_them():
    # Slicing keeps levels that no row uses any more, which `index.levels` lists and code
    # iterates: they count. Levels sorted and all used are what the values give, and count as
    # the values (so an index made either way has one digest).
    mi = pd.MultiIndex.from_tuples([("a", 1), ("b", 2), ("c", 3)])
    head = mi[:2]
    trimmed = head.remove_unused_levels()
    assert len(head.levels[0]) != len(trimmed.levels[0]) and head.equals(trimmed)
    assert fingerprint(head) != fingerprint(trimmed)
    assert fingerprint(trimmed) == fingerprint(pd.MultiIndex.from_tuples([("a", 1), ("b", 2)]))
    unsorted = pd.MultiIndex(levels=[["b", "a"], [1, 2]], codes=[[1, 0], [0, 1]])
    assert list(unsorted) == list(trimmed)
    assert fingerprint(unsorted) != fingerprint(trimmed)


def test_frame_with_multi_index_rows_and_columns_is_copy_stable():
    rows = pd.MultiIndex.from_product([["x", "y"], [1, 2]], names=["a", "b"])
    cols = pd.MultiIndex.from_product([["p", "q"], ["lo", "hi"]])
    df = pd.DataFrame(np.arange(16.0).reshape(4, 4), index=rows, columns=cols)
    assert fingerprint(df) == fingerprint(df.copy())
    other = df.copy()
    other.iloc[3, 3] = -1.0
    assert fingerprint(other) != fingerprint(df)


def test_datetime_index_tz_counts(distinct):
    utc = pd.date_range("2024-01-01", periods=5, freq="min", tz="UTC")
    ny = utc.tz_convert("America/New_York")
    naive = utc.tz_localize(None)
    assert (utc == ny).all()  # same instants
    distinct([utc, ny, naive], labels=["UTC", "New York", "naive"])


def test_datetime_index_freq_counts():
    with_freq = pd.date_range("2024-01-01", periods=5, freq="min")
    without = pd.DatetimeIndex(list(with_freq))
    assert with_freq.equals(without) and without.freq is None
    assert fingerprint(with_freq) != fingerprint(without)
    assert fingerprint(with_freq) == fingerprint(pd.date_range("2024-01-01", periods=5, freq="min"))


def test_datetime_index_freq_counts_inside_a_frame():
    idx = pd.date_range("2024-01-01", periods=5, freq="min", tz="UTC")
    a = pd.DataFrame({"v": range(5)}, index=idx)
    b = pd.DataFrame({"v": range(5)}, index=pd.DatetimeIndex(list(idx)))
    assert b.index.freq is None and a.index.equals(b.index)
    assert fingerprint(a) != fingerprint(b)


def test_period_index(distinct):
    months = pd.period_range("2024-01", periods=3, freq="M")
    assert fingerprint(months) == fingerprint(pd.period_range("2024-01", periods=3, freq="M"))
    distinct(
        [
            months,
            pd.period_range("2024-02", periods=3, freq="M"),
            pd.PeriodIndex.from_ordinals(months.asi8, freq="D"),
            pd.date_range("2024-01-01", periods=3, freq="MS"),
            months.asi8,
        ],
        labels=["months", "shifted", "same ordinals, freq=D", "DatetimeIndex", "ordinals"],
    )


# --------------------------------------------------------------------------- Categorical


def test_categorical_categories_codes_and_ordered_count(distinct):
    base = pd.Categorical(["a", "b", "a"], categories=["a", "b"])
    assert fingerprint(base) == fingerprint(pd.Categorical(["a", "b", "a"], categories=["a", "b"]))
    distinct(
        [
            base,
            pd.Categorical(["a", "b", "b"], categories=["a", "b"]),
            pd.Categorical(["a", "b", "a"], categories=["a", "b", "c"]),
            pd.Categorical(["a", "b", "a"], categories=["b", "a"]),
            pd.Categorical(["a", "b", "a"], categories=["a", "b"], ordered=True),
            pd.Series(["a", "b", "a"], dtype=object).to_numpy(),
        ],
        labels=["base", "codes", "extra category", "category order", "ordered", "object"],
    )


def test_categorical_series_and_object_series_differ():
    values = ["x", "y", "x"]
    assert fingerprint(pd.Series(values, dtype="category")) != fingerprint(
        pd.Series(values, dtype=object)
    )


# --------------------------------------------------------------------------- nullable dtypes


def test_int64_values_hidden_under_na_do_not_count():
    mask = np.array([False, True, False])
    a = pd.arrays.IntegerArray(np.array([1, 2, 3]), mask)
    b = pd.arrays.IntegerArray(np.array([1, 99, 3]), mask.copy())
    assert a.equals(b)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(pd.Series(a, name="s")) == fingerprint(pd.Series(b, name="s"))
    assert fingerprint(pd.DataFrame({"c": a})) == fingerprint(pd.DataFrame({"c": b}))


def test_boolean_values_hidden_under_na_do_not_count():
    mask = np.array([False, True, False])
    a = pd.arrays.BooleanArray(np.array([True, False, True]), mask)
    b = pd.arrays.BooleanArray(np.array([True, True, True]), mask.copy())
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(pd.Series(a)) == fingerprint(pd.Series(b))


def test_nullable_dtypes_with_na(distinct):
    assert fingerprint(pd.array([1, None, 3], dtype="Int64")) == fingerprint(
        pd.array([1, pd.NA, 3], dtype="Int64")
    )
    distinct(
        [
            pd.array([1, None, 3], dtype="Int64"),
            pd.array([1, 2, 3], dtype="Int64"),
            pd.array([1, 0, 3], dtype="Int64"),
            pd.array([1, None, 3], dtype="Int32"),
            pd.array([1, None, 3], dtype="Float64"),
            np.array([1.0, np.nan, 3.0]),
        ],
        labels=["Int64 NA", "Int64 2", "Int64 0", "Int32 NA", "Float64 NA", "float64 nan"],
    )


def test_extension_array_dtype_counts(distinct):
    distinct(
        [
            pd.array(["a", "b"], dtype="string"),
            pd.arrays.NumpyExtensionArray(np.array(["a", "b"], dtype=object)),
            pd.array([1, 2], dtype="int64"),
            pd.array([1, 2], dtype="Int64"),
            np.array([1, 2], dtype=np.int64),
        ],
        labels=["string", "numpy object", "numpy int64 (pandas)", "Int64", "ndarray int64"],
    )


def test_nullable_boolean_and_string_with_na(distinct):
    assert fingerprint(pd.array(["a", None], dtype="string")) == fingerprint(
        pd.array(["a", pd.NA], dtype="string")
    )
    distinct(
        [
            pd.array([True, None], dtype="boolean"),
            pd.array([True, False], dtype="boolean"),
            pd.array([True, True], dtype="boolean"),
            pd.array(["a", None], dtype="string"),
            pd.array(["a", ""], dtype="string"),
            pd.array(["a", "b"], dtype="string"),
        ]
    )


# --------------------------------------------------------------------------- scalars


def test_pandas_scalars(distinct):
    ts = pd.Timestamp("2024-01-01 09:30")
    assert fingerprint(ts) == fingerprint(pd.Timestamp("2024-01-01 09:30"))
    assert fingerprint(pd.NaT) == fingerprint(pd.NaT)
    assert fingerprint(pd.NA) == fingerprint(pd.NA)
    distinct(
        [
            ts,
            ts.tz_localize("UTC"),
            ts.tz_localize("America/New_York"),
            ts + pd.Timedelta(1, "ns"),
            pd.Timedelta(1, "ns"),
            pd.Timedelta(2, "ns"),
            pd.Timedelta("1D"),
            pd.Period("2024-01", freq="M"),
            pd.Period("2024-02", freq="M"),
            pd.Period("2024-01-01", freq="D"),
            pd.NaT,
            pd.NA,
            None,
            float("nan"),
        ],
        labels=[
            "ts",
            "ts UTC",
            "ts NY",
            "ts+1ns",
            "1ns",
            "2ns",
            "1D",
            "Period M",
            "Period M+1",
            "Period D",
            "NaT",
            "NA",
            "None",
            "nan",
        ],
    )


def test_timestamp_nanoseconds_count():
    # A datetime-based encoding would drop the nanoseconds.
    a = pd.Timestamp("2024-01-01 00:00:00.000000001")
    b = pd.Timestamp("2024-01-01 00:00:00.000000002")
    assert fingerprint(a) != fingerprint(b)


# --------------------------------------------------------------------------- other column kinds


def test_mixed_column_kinds_are_copy_stable_and_change_sensitive():
    df = pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=3, freq="h", tz="Europe/London"),
            "delta": pd.to_timedelta([1, 2, 3], unit="s"),
            "period": pd.period_range("2024-01", periods=3, freq="M"),
            "cat": pd.Categorical(["a", "b", "a"]),
            "obj": pd.Series([1, "two", (3,)], dtype=object),
            "nullable": pd.array([1, None, 3], dtype="Int64"),
        }
    )
    assert fingerprint(df) == fingerprint(df.copy())
    changed = df.copy()
    changed["delta"] = pd.to_timedelta([1, 2, 4], unit="s")
    assert fingerprint(changed) != fingerprint(df)
    changed = df.copy()
    changed["obj"] = pd.Series([1, "two", (4,)], dtype=object)
    assert fingerprint(changed) != fingerprint(df)


# --------------------------------------------------------------------------- arrow-backed dtypes


def test_arrow_backed_int_series():
    pa = pytest.importorskip("pyarrow")
    dtype = pd.ArrowDtype(pa.int64())
    s = pd.Series([1, 2, None], dtype=dtype)
    assert fingerprint(s) == fingerprint(pd.Series([1, 2, None], dtype=dtype))
    assert fingerprint(s) == fingerprint(s.copy())
    assert fingerprint(s) != fingerprint(pd.Series([1, 3, None], dtype=dtype))
    assert fingerprint(s) != fingerprint(pd.Series([1, 2, 0], dtype=dtype))
    assert fingerprint(s) != fingerprint(pd.Series([1, 2, None], dtype="Int64"))
    assert fingerprint(s) != fingerprint(pd.Series([1, 2, None], dtype=pd.ArrowDtype(pa.int32())))


def test_arrow_backed_series_chunking_does_not_count():
    pa = pytest.importorskip("pyarrow")
    one = pd.Series(
        pd.arrays.ArrowExtensionArray(pa.chunked_array([[1, 2, 3, None]], type=pa.int64()))
    )
    three = pd.Series(
        pd.arrays.ArrowExtensionArray(pa.chunked_array([[1], [2, 3], [None]], type=pa.int64()))
    )
    assert fingerprint(one) == fingerprint(three)


def test_pyarrow_string_series():
    pytest.importorskip("pyarrow")
    s = pd.Series(["a", "bb", None], dtype="string[pyarrow]")
    assert fingerprint(s) == fingerprint(pd.Series(["a", "bb", None], dtype="string[pyarrow]"))
    assert fingerprint(s) != fingerprint(pd.Series(["a", "bc", None], dtype="string[pyarrow]"))
    assert fingerprint(s) != fingerprint(pd.Series(["a", "bb", ""], dtype="string[pyarrow]"))
    frame = pd.DataFrame({"s": s, "i": pd.Series([1, 2, 3], dtype="int64[pyarrow]")})
    assert fingerprint(frame) == fingerprint(frame.copy())


# --------------------------------------------------------------------------- strict mode


def test_strict_mode_accepts_pandas_objects():
    df = make_frame()
    values = [
        df,
        df["px"],
        df.index,
        pd.RangeIndex(3),
        pd.MultiIndex.from_tuples([("a", 1)]),
        pd.date_range("2024-01-01", periods=2, freq="D", tz="UTC"),
        pd.period_range("2024-01", periods=2, freq="M"),
        pd.Categorical(["a"]),
        pd.array([1, None], dtype="Int64"),
        pd.Timestamp("2024-01-01"),
        pd.Timedelta(1),
        pd.Period("2024-01", freq="M"),
        pd.NaT,
        pd.NA,
    ]
    for value in values:
        assert fingerprint(value, strict=True) == fingerprint(value), type(value)
