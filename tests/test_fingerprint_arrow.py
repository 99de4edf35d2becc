"""Fingerprints of pyarrow and polars data: logical content, not physical layout."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pytest

from afml_cache import fingerprint

pa = pytest.importorskip("pyarrow")


@pytest.fixture
def pl():
    return pytest.importorskip("polars")


N = 100


def fresh(arr):
    """The same logical values in a brand-new array (no offset, new buffers). A dictionary
    array keeps its dictionary, which counts (spec v2)."""
    if pa.types.is_dictionary(arr.type):
        indices = pa.array(arr.indices.to_pylist(), type=arr.type.index_type)
        return pa.DictionaryArray.from_arrays(indices, arr.dictionary)
    return pa.array(arr.to_pylist(), type=arr.type)


def validity(*valid: bool):
    bits = sum(1 << i for i, v in enumerate(valid) if v)
    return pa.py_buffer(bits.to_bytes((len(valid) + 7) // 8, "little"))


SAMPLES = {
    "int64": lambda: pa.array([i if i % 7 else None for i in range(N)], type=pa.int64()),
    "float64": lambda: pa.array([i / 3 if i % 5 else None for i in range(N)], type=pa.float64()),
    "string": lambda: pa.array([f"s{i}" * (i % 3) if i % 4 else None for i in range(N)]),
    "large_string": lambda: pa.array([f"t{i}" for i in range(N)], type=pa.large_string()),
    "binary": lambda: pa.array([bytes([i]) * (i % 4) for i in range(N)], type=pa.binary()),
    "bool": lambda: pa.array([i % 3 == 0 if i % 5 else None for i in range(N)]),
    "timestamp_tz": lambda: pa.array(
        [1_700_000_000_000_000 + i for i in range(N)],
        type=pa.timestamp("us", tz="America/New_York"),
    ),
    "date32": lambda: pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(N)]),
    "decimal": lambda: pa.array(
        [decimal.Decimal(i) / 4 for i in range(N)], type=pa.decimal128(10, 2)
    ),
    "list": lambda: pa.array(
        [list(range(i % 4)) if i % 6 else None for i in range(N)], type=pa.list_(pa.int64())
    ),
    "struct": lambda: pa.array(
        [{"a": i, "b": f"x{i % 3}"} if i % 9 else None for i in range(N)],
        type=pa.struct([("a", pa.int64()), ("b", pa.string())]),
    ),
    "string_view": lambda: pa.array(
        # Longer than 12 bytes: stored out of line in the view's data buffers.
        [f"a-long-string-value-{i:03d}" if i % 3 else "s" for i in range(N)],
        type=pa.string_view(),
    ),
    "large_list": lambda: pa.array(
        [list(range(i % 3)) if i % 5 else None for i in range(N)], type=pa.large_list(pa.int64())
    ),
    "fixed_size_list": lambda: pa.array(
        [[i, -i] if i % 5 else None for i in range(N)], type=pa.list_(pa.int64(), 2)
    ),
    "map": lambda: pa.array(
        [[(f"k{i % 4}", i)] if i % 6 else None for i in range(N)],
        type=pa.map_(pa.string(), pa.int64()),
    ),
    "list_of_struct": lambda: pa.array(
        [[{"x": i}, None] if i % 4 else [] for i in range(N)],
        type=pa.list_(pa.struct([("x", pa.int64())])),
    ),
    "dictionary": lambda: pa.array(
        [f"k{i % 5}" if i % 8 else None for i in range(N)],
        type=pa.dictionary(pa.int32(), pa.string()),
    ),
}


# --------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("kind", SAMPLES)
def test_array_is_deterministic(kind):
    assert fingerprint(SAMPLES[kind]()) == fingerprint(SAMPLES[kind]())


@pytest.mark.parametrize("kind", SAMPLES)
def test_array_equals_a_fresh_rebuild_of_itself(kind):
    arr = SAMPLES[kind]()
    assert fingerprint(arr) == fingerprint(fresh(arr))


@pytest.mark.parametrize("kind", SAMPLES)
def test_slice_equals_a_fresh_array_without_offset(kind):
    sliced = SAMPLES[kind]().slice(10, 50)
    assert sliced.offset == 10
    rebuilt = fresh(sliced)
    assert rebuilt.offset == 0 and rebuilt.to_pylist() == sliced.to_pylist()
    assert fingerprint(sliced) == fingerprint(rebuilt)


@pytest.mark.parametrize("kind", SAMPLES)
def test_slices_at_different_positions_differ(kind):
    arr = SAMPLES[kind]()
    assert not arr.slice(10, 50).equals(arr.slice(11, 50))
    assert fingerprint(arr.slice(10, 50)) != fingerprint(arr.slice(11, 50))


def test_values_matter(distinct):
    distinct(
        [
            pa.array([1, 2, 3]),
            pa.array([1, 2, 4]),
            pa.array([1, 2]),
            pa.array([1, None, 3]),
            pa.array([1, 0, 3]),
        ]
    )


def test_types_matter(distinct):
    distinct(
        [
            pa.array([1, 2, 3], type=pa.int64()),
            pa.array([1, 2, 3], type=pa.int32()),
            pa.array([1, 2, 3], type=pa.uint64()),
            pa.array([1, 2, 3], type=pa.float64()),
            pa.array([1, 2, 3], type=pa.timestamp("ns")),
            pa.array([1, 2, 3], type=pa.timestamp("us")),
            pa.array([1, 2, 3], type=pa.timestamp("us", tz="UTC")),
            pa.array([1, 2, 3], type=pa.timestamp("us", tz="America/New_York")),
            pa.array([1, 2, 3], type=pa.duration("us")),
        ],
        labels=["i64", "i32", "u64", "f64", "ts ns", "ts us", "ts us UTC", "ts us NY", "dur us"],
    )


def test_string_and_list_type_widths_matter(distinct):
    distinct(
        [
            pa.array(["a", "b"], type=pa.string()),
            pa.array(["a", "b"], type=pa.large_string()),
            pa.array([b"a", b"b"], type=pa.binary()),
        ]
    )
    assert fingerprint(pa.array([[1], [2, 3]], type=pa.list_(pa.int64()))) != fingerprint(
        pa.array([[1], [2, 3]], type=pa.large_list(pa.int64()))
    )


def test_list_boundaries_and_null_lists_count(distinct):
    t = pa.list_(pa.int64())
    distinct(
        [
            pa.array([[1, 2], [3]], type=t),
            pa.array([[1], [2, 3]], type=t),
            pa.array([[1, 2, 3], []], type=t),
            pa.array([[1, 2, 3], None], type=t),
        ]
    )


def test_struct_field_names_and_values_count(distinct):
    distinct(
        [
            pa.array([{"a": 1, "b": "x"}]),
            pa.array([{"a": 1, "b": "y"}]),
            pa.array([{"a": 2, "b": "x"}]),
            pa.array([{"a": 1, "c": "x"}]),
            pa.array([None], type=pa.struct([("a", pa.int64()), ("b", pa.string())])),
        ]
    )


# --------------------------------------------------------------------------- null slots


def test_int64_null_slot_contents_do_not_count():
    valid = validity(True, False, True)
    a = pa.Array.from_buffers(
        pa.int64(), 3, [valid, pa.py_buffer(np.array([1, 2, 3], dtype=np.int64).tobytes())]
    )
    b = pa.Array.from_buffers(
        pa.int64(), 3, [valid, pa.py_buffer(np.array([1, 99, 3], dtype=np.int64).tobytes())]
    )
    assert a.to_pylist() == b.to_pylist() == [1, None, 3]
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) == fingerprint(pa.array([1, None, 3], type=pa.int64()))


def test_string_null_slot_contents_do_not_count():
    valid = validity(True, False, True)
    offsets_a = pa.py_buffer(np.array([0, 1, 3, 4], dtype=np.int32).tobytes())
    offsets_b = pa.py_buffer(np.array([0, 1, 1, 2], dtype=np.int32).tobytes())
    a = pa.Array.from_buffers(pa.string(), 3, [valid, offsets_a, pa.py_buffer(b"aXXb")])
    b = pa.Array.from_buffers(pa.string(), 3, [valid, offsets_b, pa.py_buffer(b"ab")])
    assert a.to_pylist() == b.to_pylist() == ["a", None, "b"]
    assert fingerprint(a) == fingerprint(b)


def test_bool_null_slot_contents_do_not_count():
    valid = validity(True, False, True)
    a = pa.Array.from_buffers(pa.bool_(), 3, [valid, pa.py_buffer(bytes([0b101]))])
    b = pa.Array.from_buffers(pa.bool_(), 3, [valid, pa.py_buffer(bytes([0b111]))])
    assert a.to_pylist() == b.to_pylist() == [True, None, True]
    assert fingerprint(a) == fingerprint(b)


def test_list_null_slot_contents_do_not_count():
    # Entry 1 is null; in `a` its offsets still span two child values, in `b` none.
    valid = validity(True, False)
    offsets_a = pa.py_buffer(np.array([0, 2, 4], dtype=np.int32).tobytes())
    offsets_b = pa.py_buffer(np.array([0, 2, 2], dtype=np.int32).tobytes())
    t = pa.list_(pa.int64())
    a = pa.Array.from_buffers(t, 2, [valid, offsets_a], children=[pa.array([1, 2, 3, 4])])
    b = pa.Array.from_buffers(t, 2, [valid, offsets_b], children=[pa.array([1, 2])])
    assert a.to_pylist() == b.to_pylist() == [[1, 2], None]
    assert fingerprint(a) == fingerprint(b)


def test_struct_null_slot_contents_do_not_count():
    mask = pa.array([False, True, False])
    a = pa.StructArray.from_arrays(
        [pa.array([1, 2, 3]), pa.array(["x", "y", "z"])], names=["a", "b"], mask=mask
    )
    b = pa.StructArray.from_arrays(
        [pa.array([1, 99, 3]), pa.array(["x", "other", "z"])], names=["a", "b"], mask=mask
    )
    assert a.to_pylist() == b.to_pylist()
    assert fingerprint(a) == fingerprint(b)


def test_all_valid_bitmap_counts_like_no_bitmap():
    values = pa.py_buffer(np.array([1, 2, 3], dtype=np.int64).tobytes())
    with_bitmap = pa.Array.from_buffers(pa.int64(), 3, [validity(True, True, True), values])
    without = pa.Array.from_buffers(pa.int64(), 3, [None, values])
    assert fingerprint(with_bitmap) == fingerprint(without)


@pytest.mark.parametrize("offset", [1, 3, 5, 7, 9, 13])
def test_boolean_slices_at_odd_offsets_equal_fresh_arrays(offset):
    # Booleans are bit-packed: a slice starts in the middle of a byte.
    rng = np.random.default_rng(offset)
    bits = rng.integers(0, 2, 200).astype(bool).tolist()
    arr = pa.array([b if i % 11 else None for i, b in enumerate(bits)], type=pa.bool_())
    sliced = arr.slice(offset, 50)
    assert fingerprint(sliced) == fingerprint(fresh(sliced))


# --------------------------------------------------------------------------- chunking


def test_chunked_array_chunking_does_not_count():
    values = [1, 2, None, 4, 5, 6]
    one = pa.chunked_array([values], type=pa.int64())
    three = pa.chunked_array([values[:1], values[1:4], values[4:]], type=pa.int64())
    with_empty = pa.chunked_array([[], values[:3], [], values[3:], []], type=pa.int64())
    assert three.num_chunks == 3
    assert fingerprint(one) == fingerprint(three) == fingerprint(with_empty)


def test_chunked_array_values_matter():
    a = pa.chunked_array([[1, 2], [3]], type=pa.int64())
    b = pa.chunked_array([[1, 2], [4]], type=pa.int64())
    assert fingerprint(a) != fingerprint(b)


def test_empty_chunked_array_with_and_without_chunks():
    assert fingerprint(pa.chunked_array([], type=pa.int64())) == fingerprint(
        pa.chunked_array([[]], type=pa.int64())
    )


def test_chunked_string_array_equals_single_chunk():
    words = [f"w{i}" * (i % 4) for i in range(200)]
    one = pa.chunked_array([words])
    many = pa.chunked_array([words[i : i + 17] for i in range(0, 200, 17)])
    assert fingerprint(one) == fingerprint(many)


def test_dictionary_chunks_with_different_dictionaries_differ_from_one_chunk():
    # Spec v2: the dictionaries decide pandas' categories, so they count each time they change.
    t = pa.dictionary(pa.int32(), pa.string())
    chunk1 = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), ["b", "a"])
    chunk2 = pa.DictionaryArray.from_arrays(pa.array([1, 0, 2], pa.int32()), ["a", "b", "c"])
    split = pa.chunked_array([chunk1, chunk2], type=t)
    whole = pa.chunked_array([pa.array(["b", "a", "b", "b", "a", "c"], type=t)])
    assert split.to_pylist() == whole.to_pylist()
    assert fingerprint(split) != fingerprint(whole)


def test_dictionary_chunks_sharing_one_dictionary_equal_one_chunk():
    whole = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0, 2], pa.int32()), ["b", "a", "c"])
    split = pa.chunked_array([whole.slice(0, 3), whole.slice(3, 1)])
    assert fingerprint(split) == fingerprint(pa.chunked_array([whole]))


def test_unused_dictionary_entries_count():
    used_only = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), ["a", "b"])
    extra = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), ["a", "b", "zzz"])
    assert fingerprint(used_only) != fingerprint(extra)
    changed = pa.DictionaryArray.from_arrays(pa.array([0, 1, 1], pa.int32()), ["a", "b"])
    assert fingerprint(used_only) != fingerprint(changed)


# --------------------------------------------------------------------------- tables, batches


def make_table(n: int = 1_000):
    return pa.table(
        {
            "i": pa.array(range(n), type=pa.int64()),
            "f": pa.array([i / 7 if i % 13 else None for i in range(n)], type=pa.float64()),
            "s": pa.array([f"r{i % 17}" for i in range(n)]),
            "b": pa.array([i % 2 == 0 for i in range(n)]),
        }
    )


def test_table_rechunking_does_not_count():
    table = make_table()
    batch = table.combine_chunks().to_batches()[0]
    from_one_batch = pa.Table.from_batches([batch])
    pieces = pa.concat_tables([table.slice(0, 1), table.slice(1, 333), table.slice(334)])
    assert pieces.column("i").num_chunks == 3
    assert fingerprint(from_one_batch) == fingerprint(pieces)
    assert fingerprint(pieces) == fingerprint(pieces.combine_chunks())
    many_batches = pa.Table.from_batches(table.to_batches(max_chunksize=99))
    assert fingerprint(many_batches) == fingerprint(from_one_batch)


def test_table_values_names_order_and_types_count(distinct):
    table = make_table(50)
    changed_value = table.set_column(0, "i", pa.array([*range(49), 1000], type=pa.int64()))
    distinct(
        [
            table,
            changed_value,
            table.rename_columns(["i", "f", "s", "flag"]),
            table.select(["f", "i", "s", "b"]),
            table.select(["i", "f", "s"]),
            table.set_column(0, "i", table.column("i").cast(pa.int32())),
            table.slice(0, 49),
        ],
        labels=["base", "value", "names", "order", "dropped", "int32", "shorter"],
    )


def test_record_batch(distinct):
    batch = pa.record_batch({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    assert fingerprint(batch) == fingerprint(
        pa.record_batch({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    )
    distinct(
        [
            batch,
            pa.record_batch({"x": [1, 2, 4], "y": ["a", "b", "c"]}),
            pa.record_batch({"z": [1, 2, 3], "y": ["a", "b", "c"]}),
            pa.record_batch({"y": ["a", "b", "c"], "x": [1, 2, 3]}),
        ]
    )


def test_sliced_record_batch_equals_fresh_batch():
    batch = make_table(200).combine_chunks().to_batches()[0]
    sliced = batch.slice(37, 101)
    rebuilt = pa.RecordBatch.from_pylist(sliced.to_pylist(), schema=sliced.schema)
    assert fingerprint(sliced) == fingerprint(rebuilt)


# --------------------------------------------------------------------------- polars


def test_pyarrow_table_and_polars_frame_with_same_data_differ(pl):
    data = {"a": [1, 2, 3], "b": ["x", "y", "z"]}
    assert fingerprint(pa.table(data)) != fingerprint(pl.DataFrame(data))


def make_polars(pl):
    return pl.DataFrame(
        {
            "i": list(range(10)),
            "f": [i / 4 for i in range(10)],
            "s": [f"name-{i % 3}" for i in range(10)],
            "n": [None if i % 4 == 0 else i for i in range(10)],
        }
    )


def test_polars_equal_frames_share_a_digest(pl):
    assert fingerprint(make_polars(pl)) == fingerprint(make_polars(pl))
    assert fingerprint(make_polars(pl)) == fingerprint(make_polars(pl).clone())


def test_polars_chunking_does_not_count(pl):
    df = make_polars(pl)
    split = pl.concat([df[:5], df[5:]], rechunk=False)
    assert split.n_chunks() > 1
    assert fingerprint(split) == fingerprint(df)
    assert fingerprint(split) == fingerprint(split.rechunk())


def test_polars_values_names_and_dtypes_count(pl, distinct):
    df = make_polars(pl)
    distinct(
        [
            df,
            df.with_columns(pl.when(pl.col("i") == 9).then(99).otherwise(pl.col("i")).alias("i")),
            df.rename({"s": "sym"}),
            df.select(["f", "i", "s", "n"]),
            df.with_columns(pl.col("i").cast(pl.Int32)),
            df.with_columns(pl.col("i").cast(pl.Float64)),
            df[:9],
        ],
        labels=["base", "value", "name", "order", "Int32", "Float64", "shorter"],
    )


def test_polars_slice_equals_rebuilt_frame(pl):
    df = make_polars(pl)
    sliced = df[3:8].clone()
    rebuilt = pl.from_arrow(df[3:8].to_arrow())
    assert rebuilt.schema == sliced.schema and rebuilt.equals(sliced)
    assert fingerprint(sliced) == fingerprint(rebuilt)
    assert fingerprint(df[3:8]) == fingerprint(rebuilt)


def test_polars_nulls(pl):
    a = pl.DataFrame({"x": [1, None, 3], "y": ["a", None, "c"]})
    b = pl.DataFrame({"x": [1, None, 3], "y": ["a", None, "c"]})
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(pl.DataFrame({"x": [1, 0, 3], "y": ["a", None, "c"]}))
    assert fingerprint(a) != fingerprint(pl.DataFrame({"x": [1, None, 3], "y": ["a", "", "c"]}))


def test_polars_null_slot_contents_do_not_count(pl):
    valid = validity(True, False, True)
    a = pa.Array.from_buffers(
        pa.int64(), 3, [valid, pa.py_buffer(np.array([1, 2, 3], dtype=np.int64).tobytes())]
    )
    b = pa.Array.from_buffers(
        pa.int64(), 3, [valid, pa.py_buffer(np.array([1, 99, 3], dtype=np.int64).tobytes())]
    )
    assert fingerprint(pl.from_arrow(a)) == fingerprint(pl.from_arrow(b))


def test_polars_series(pl, distinct):
    s = pl.Series("x", [1, 2, 3])
    assert fingerprint(s) == fingerprint(pl.Series("x", [1, 2, 3]))
    distinct(
        [
            s,
            pl.Series("y", [1, 2, 3]),
            pl.Series("x", [1, 2, 4]),
            pl.Series("x", [1, 2, 3], dtype=pl.Int32),
            s.to_frame(),
            pa.array([1, 2, 3]),
        ],
        labels=["base", "name", "value", "Int32", "frame", "pyarrow"],
    )
    chunked = pl.concat([pl.Series("x", [1]), pl.Series("x", [2, 3])], rechunk=False)
    assert fingerprint(chunked) == fingerprint(s)


def test_polars_datetime_timezone_counts(pl):
    ts = [dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 2, 12)]
    utc = pl.Series("t", ts, dtype=pl.Datetime("us", "UTC"))
    ny = utc.dt.convert_time_zone("America/New_York")
    assert fingerprint(utc) != fingerprint(ny)
    assert fingerprint(utc) != fingerprint(utc.dt.replace_time_zone(None))


def test_polars_and_pandas_frames_with_same_data_differ(pl):
    pd = pytest.importorskip("pandas")
    data = {"a": [1, 2, 3]}
    assert fingerprint(pl.DataFrame(data)) != fingerprint(pd.DataFrame(data))


# --------------------------------------------------------------------------- strict mode


def test_strict_mode_accepts_arrow_objects():
    table = make_table(10)
    for value in (table, table.to_batches()[0], table.column("s"), table.column("s").chunk(0)):
        assert fingerprint(value, strict=True) == fingerprint(value), type(value)


def test_strict_mode_accepts_polars_objects(pl):
    df = make_polars(pl)
    for value in (df, df["s"]):
        assert fingerprint(value, strict=True) == fingerprint(value), type(value)
