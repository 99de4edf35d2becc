"""Property-based laws: copies hash alike, any single change hashes differently."""

from __future__ import annotations

import copy
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from afml_cache import fingerprint

# No example database: keeps the working tree clean; failures still print a reproducer.
LAWS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

try:
    import pandas as pd
except ImportError:  # pragma: no cover - pandas is part of the test extra
    pd = None

needs_pandas = pytest.mark.skipif(pd is None, reason="pandas is not installed")

# --------------------------------------------------------------------------- builtin values

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)

VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


def same_leaf(a: Any, b: Any) -> bool:
    """Identical as far as the encoding is concerned: same type and, for floats, same bits."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def leaf_paths(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*path, i))]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in leaf_paths(v, (*path, k))]
    return [path]


def get_at(value: Any, path: tuple) -> Any:
    for step in path:
        value = value[step]
    return value


def replace_at(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        return [replace_at(v, rest, new) if i == head else v for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(replace_at(v, rest, new) if i == head else v for i, v in enumerate(value))
    return {k: replace_at(v, rest, new) if k == head else v for k, v in value.items()}


def canonical(value: Any) -> Any:
    """A structural key that is equal exactly when two values must share a digest."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, canonical(v)) for k, v in value.items())))
    return (type(value).__name__, value)


@LAWS
@given(VALUES)
def test_deep_copy_has_the_same_digest(value):
    assert fingerprint(copy.deepcopy(value)) == fingerprint(value)


@LAWS
@given(VALUES, st.data())
def test_changing_one_leaf_changes_the_digest(value, data):
    paths = leaf_paths(value)
    assume(paths)  # empty containers have no leaf to change
    path = data.draw(st.sampled_from(paths), label="path")
    new_leaf = data.draw(LEAVES, label="new leaf")
    assume(not same_leaf(get_at(value, path), new_leaf))
    assert fingerprint(replace_at(value, path, new_leaf)) != fingerprint(value)


@LAWS
@given(VALUES, VALUES)
def test_structurally_different_values_have_different_digests(a, b):
    assume(canonical(a) != canonical(b))
    assert fingerprint(a) != fingerprint(b)


@LAWS
@given(st.lists(st.text(), unique=True, max_size=40), st.data())
def test_set_digests_ignore_and_dict_digests_follow_construction_order(items, data):
    shuffled = data.draw(st.permutations(items), label="shuffled")
    assert fingerprint(set(items)) == fingerprint(set(shuffled))
    assert fingerprint(frozenset(items)) == fingerprint(frozenset(shuffled))
    # Code iterates dicts in insertion order (spec v2), so it counts.
    as_dict = {k: len(k) for k in items}
    same_order = shuffled == items
    assert (fingerprint(as_dict) == fingerprint({k: len(k) for k in shuffled})) == same_order


# --------------------------------------------------------------------------- numpy arrays

NUMPY_DTYPES = st.sampled_from(
    [
        "bool",
        "int8",
        "int32",
        "int64",
        "uint16",
        "uint64",
        "float32",
        "float64",
        "complex128",
        "datetime64[ns]",
        "timedelta64[ms]",
        "U4",
    ]
).map(np.dtype)


@st.composite
def arrays(draw, min_size: int = 0):
    dtype = draw(NUMPY_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=min_size, max_side=5))
    # NaN is excluded: NaN payload canonicalisation is a separate, documented concern.
    elements = hnp.from_dtype(dtype, allow_nan=False) if dtype.kind in "fc" else None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@LAWS
@given(arrays())
def test_array_copy_has_the_same_digest(a):
    assert fingerprint(np.array(a, copy=True)) == fingerprint(a)


@LAWS
@given(arrays())
def test_array_layout_and_byte_order_do_not_count(a):
    # np.asfortranarray would turn a 0-d array into a 1-d one; np.array(order="F") keeps ndim.
    assert fingerprint(np.array(a, order="F")) == fingerprint(a)
    assert fingerprint(a.astype(a.dtype.newbyteorder(">"))) == fingerprint(a)
    if a.ndim:
        reversed_view = a[::-1]
        assert fingerprint(reversed_view) == fingerprint(np.ascontiguousarray(reversed_view))


@LAWS
@given(arrays(min_size=1), st.data())
def test_changing_one_array_element_changes_the_digest(a, data):
    index = data.draw(st.tuples(*(st.integers(0, n - 1) for n in a.shape)), label="index")
    elements = hnp.from_dtype(a.dtype, allow_nan=False) if a.dtype.kind in "fc" else None
    new = data.draw(hnp.arrays(a.dtype, (), elements=elements), label="new")[()]
    b = a.copy()
    b[index] = new
    assume(b[index].tobytes() != a[index].tobytes())  # a genuinely different element
    assert fingerprint(b) != fingerprint(a)


@LAWS
@given(arrays(min_size=1))
def test_reshaping_to_a_different_shape_changes_the_digest(a):
    new_shape = (a.size,) if a.shape != (a.size,) else (1, a.size)
    assert fingerprint(a.reshape(new_shape)) != fingerprint(a)


# --------------------------------------------------------------------------- pandas frames

COLUMN_KINDS = {
    "int64": st.integers(-1000, 1000),
    "float64": st.floats(-1e6, 1e6, allow_nan=False),
    "bool": st.booleans(),
    "str": st.text(alphabet="abcxyz", max_size=4),
}
TIMEZONES = [None, "UTC", "America/New_York", "Asia/Tokyo"]
FREQS = ["min", "h", "D"]


@st.composite
def frames(draw):
    n_rows = draw(st.integers(1, 6))
    names = draw(
        st.lists(
            st.text(alphabet="abcdefgh", min_size=1, max_size=3), min_size=1, max_size=4
        ).filter(lambda xs: len(set(xs)) == len(xs))
    )
    index = pd.date_range(
        start=pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=draw(st.integers(0, 10_000))),
        periods=n_rows,
        freq=draw(st.sampled_from(FREQS)),
        tz=draw(st.sampled_from(TIMEZONES)),
    )
    columns = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(COLUMN_KINDS)))
        values = draw(st.lists(COLUMN_KINDS[kind], min_size=n_rows, max_size=n_rows))
        columns[name] = pd.Series(values, dtype=kind, index=index)
    return pd.DataFrame(columns, index=index)


def changed_cell(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return not value
    if isinstance(value, str):
        return value + "q"
    return value + 1


@needs_pandas
@LAWS
@given(frames())
def test_frame_copy_has_the_same_digest(df):
    assert fingerprint(df.copy()) == fingerprint(df)
    assert fingerprint(copy.deepcopy(df)) == fingerprint(df)


@needs_pandas
@LAWS
@given(frames(), st.data())
def test_changing_one_cell_changes_the_frame_digest(df, data):
    row = data.draw(st.integers(0, len(df) - 1), label="row")
    col = data.draw(st.integers(0, df.shape[1] - 1), label="col")
    changed = df.copy()
    changed.iloc[row, col] = changed_cell(df.iloc[row, col])
    assert fingerprint(changed) != fingerprint(df)


@needs_pandas
@LAWS
@given(frames(), st.data())
def test_renaming_one_column_changes_the_frame_digest(df, data):
    old = data.draw(st.sampled_from(list(df.columns)), label="column")
    assert fingerprint(df.rename(columns={old: old + "_renamed"})) != fingerprint(df)


@needs_pandas
@LAWS
@given(frames(), st.data())
def test_changing_one_column_dtype_changes_the_frame_digest(df, data):
    col = data.draw(st.sampled_from(list(df.columns)), label="column")
    target = {"int64": "float64", "float64": "float32", "bool": "int64", "str": "object"}
    changed = df.astype({col: target[str(df[col].dtype)]})
    assert fingerprint(changed) != fingerprint(df)


@needs_pandas
@LAWS
@given(frames(), st.data())
def test_changing_one_index_label_changes_the_frame_digest(df, data):
    # Drop the freq on both sides first so that only the label differs.
    base = df.set_axis(pd.DatetimeIndex(list(df.index)), axis=0)
    row = data.draw(st.integers(0, len(df) - 1), label="row")
    labels = list(base.index)
    labels[row] = labels[row] + pd.Timedelta("1s")
    changed = base.set_axis(pd.DatetimeIndex(labels), axis=0)
    assert fingerprint(changed) != fingerprint(base)


@needs_pandas
@LAWS
@given(frames())
def test_changing_the_index_timezone_changes_the_frame_digest(df):
    idx = df.index
    other = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("Europe/Paris")
    assert fingerprint(df.set_axis(other, axis=0)) != fingerprint(df)


@needs_pandas
@LAWS
@given(frames())
def test_dropping_the_index_freq_changes_the_frame_digest(df):
    without_freq = df.set_axis(pd.DatetimeIndex(list(df.index)), axis=0)
    assert without_freq.index.freq is None and df.index.freq is not None
    assert fingerprint(without_freq) != fingerprint(df)


@needs_pandas
@LAWS
@given(frames(), st.booleans())
def test_changing_the_shape_changes_the_frame_digest(df, drop_row):
    if drop_row:
        changed = df.iloc[:-1]
    elif df.shape[1] > 1:
        changed = df.iloc[:, :-1]
    else:
        changed = df.assign(extra=0)
    assert changed.shape != df.shape
    assert fingerprint(changed) != fingerprint(df)
