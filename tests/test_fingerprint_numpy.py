"""Fingerprints of numpy arrays and scalars."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from afml_cache import fingerprint

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
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "datetime64[ns]",
    "datetime64[ms]",
    "timedelta64[ns]",
    "timedelta64[s]",
    "S5",
    "U5",
    "object",
]

BASE = [0, 1, 2, 3, 4, 5]
CHANGED = [0, 1, 3, 3, 4, 5]  # element 2 differs (also for bool: 2 -> False, 3 -> True)


def sample(dtype: str, values=BASE):
    """An array of ``dtype`` whose logical content is derived from ``values``."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return np.array([v % 2 == 1 for v in values], dtype=dtype)
    if kind in "SU":
        return np.array([f"v{v}" for v in values], dtype=dtype)
    if kind == "O":
        # Mixed Python objects; element 2 is an int so CHANGED changes it.
        out = np.empty(len(values), dtype=object)
        mixed = [values[0], "one", values[2], None, (values[4], "t"), {"k": [values[5]]}]
        for i, v in enumerate(mixed):
            out[i] = v
        return out
    if kind in "mM":
        return np.array(values, dtype=np.int64).astype(dtype)
    return np.array(values).astype(dtype)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", DTYPES)
def test_array_of_every_dtype_is_deterministic_and_copy_stable(dtype):
    a = sample(dtype)
    assert fingerprint(a) == fingerprint(sample(dtype))
    assert fingerprint(a) == fingerprint(a.copy())
    assert fingerprint(a) == fingerprint(copy.deepcopy(a))


@pytest.mark.parametrize("dtype", DTYPES)
def test_array_of_every_dtype_changes_when_one_element_changes(dtype):
    assert fingerprint(sample(dtype)) != fingerprint(sample(dtype, CHANGED))


def test_same_integer_values_in_different_dtypes_all_differ(distinct):
    arrays = [np.arange(6).astype(d) for d in DTYPES if d != "object"]
    arrays.append(np.array(list(range(6)), dtype=object))
    distinct(arrays, labels=[str(a.dtype) for a in arrays])


def test_datetime64_units_count_even_with_equal_integers():
    ints = np.array([1, 2, 3], dtype=np.int64)
    assert fingerprint(ints.astype("datetime64[ns]")) != fingerprint(ints.astype("datetime64[ms]"))
    assert fingerprint(ints.astype("timedelta64[ns]")) != fingerprint(ints.astype("datetime64[ns]"))
    assert fingerprint(ints.astype("datetime64[ns]")) != fingerprint(ints)


def test_dtype_counts_for_identical_bytes():
    a = np.arange(4, dtype=np.int64)
    assert a.tobytes() == a.view(np.float64).tobytes()
    assert fingerprint(a) != fingerprint(a.view(np.float64))
    assert fingerprint(a) != fingerprint(a.view(np.uint64))


def test_string_dtype_width_and_kind_count(distinct):
    distinct(
        [
            np.array(["ab", "c"], dtype="U5"),
            np.array(["ab", "c"], dtype="U6"),
            np.array([b"ab", b"c"], dtype="S5"),
            np.array(["ab", "c"], dtype=object),
            np.array(["ab", "d"], dtype="U5"),
        ]
    )


# --------------------------------------------------------------------------- object arrays


def test_object_array_hashes_contents_not_pointers():
    # Equal but distinct Python objects: only their values may count.
    a = np.array(["".join(["ab", "c"]), 10**30, (1, "x")], dtype=object)
    b = np.empty(3, dtype=object)
    b[0], b[1], b[2] = "abc", int("1" + "0" * 30), (1, "x")
    assert fingerprint(a) == fingerprint(b)


def test_object_array_differs_from_list_with_same_items():
    items = [1, "a", 2.5]
    assert fingerprint(np.array(items, dtype=object)) != fingerprint(items)


def test_object_array_element_types_count():
    assert fingerprint(np.array([1, 2], dtype=object)) != fingerprint(
        np.array([1.0, 2.0], dtype=object)
    )


def test_numpy_variable_width_string_arrays():
    # StringDType stores pointers: elements must be hashed by content, not by address.
    T = np.dtypes.StringDType()
    words = ["a", "bb", "a string long enough to live outside the array buffer"]
    a = np.array(words, dtype=T)
    assert fingerprint(a) == fingerprint(np.array(list(words), dtype=T))
    assert fingerprint(a) == fingerprint(a.copy())
    assert fingerprint(a[::-1]) == fingerprint(np.ascontiguousarray(a[::-1]))
    assert fingerprint(a) != fingerprint(a.astype("U60"))
    changed = a.copy()
    changed[1] = "bc"
    assert fingerprint(changed) != fingerprint(a)


def test_numpy_nan_payloads_count_in_arrays():
    nan = np.array([np.nan])
    assert fingerprint(nan) == fingerprint(np.array([float("nan")]))
    assert fingerprint(nan) != fingerprint(-nan)


# --------------------------------------------------------------------------- shapes


def test_zero_dimensional_arrays(distinct):
    distinct([np.array(5), np.array(6), np.array([5]), np.array([[5]]), 5, np.int64(5)])
    assert fingerprint(np.array(5)) == fingerprint(np.array(5))


def test_empty_arrays_of_different_shapes_differ(distinct):
    distinct(
        [
            np.empty((0,)),
            np.empty((0, 3)),
            np.empty((3, 0)),
            np.empty((0, 0)),
            np.empty((0,), dtype=np.int64),
        ],
        labels=["(0,) f8", "(0, 3) f8", "(3, 0) f8", "(0, 0) f8", "(0,) i8"],
    )


def test_shape_counts(distinct):
    a = np.arange(12)
    distinct([a, a.reshape(3, 4), a.reshape(4, 3), a.reshape(2, 6), a.reshape(2, 3, 2)])


# --------------------------------------------------------------------------- memory layout


@pytest.mark.parametrize(
    "dtype",
    [
        "int16",
        "int32",
        "int64",
        "uint32",
        "float32",
        "float64",
        "complex128",
        "datetime64[ns]",
        "U5",
    ],
)
def test_big_endian_array_equals_its_little_endian_copy(dtype):
    a = sample(dtype)
    swapped = a.astype(a.dtype.newbyteorder(">"))
    assert swapped.dtype.byteorder == ">" and swapped.tobytes() != a.tobytes()
    assert fingerprint(swapped) == fingerprint(a)


def test_fortran_order_array_equals_its_c_copy():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    f = np.asfortranarray(a)
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    assert fingerprint(f) == fingerprint(a)


def test_big_endian_fortran_array_equals_native_c_array():
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    odd = np.asfortranarray(a.astype(">i4"))
    assert fingerprint(odd) == fingerprint(a)


_BASE_2D = np.arange(60, dtype=np.float64).reshape(6, 10)

VIEWS = {
    "step": lambda a: a[::2],
    "transpose": lambda a: a.T,
    "column": lambda a: a[:, 1],
    "reversed": lambda a: a[::-1],
    "reversed_columns": lambda a: a[:, ::-1],
    "offset_contiguous": lambda a: a[2:4],
    "mixed": lambda a: a[1:, ::3],
    "broadcast": lambda a: np.broadcast_to(a[0], (4, 10)),
}


@pytest.mark.parametrize("view", VIEWS.values(), ids=VIEWS.keys())
def test_non_contiguous_view_equals_its_contiguous_copy(view):
    v = view(_BASE_2D)
    assert fingerprint(v) == fingerprint(np.ascontiguousarray(v))


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_large_array_changed_in_one_element_differs(position):
    # 8 MB of float64: a sampling hasher would miss single-element edits.
    a = np.arange(1_000_000, dtype=np.float64)
    index = {"first": 0, "middle": a.size // 2, "last": a.size - 1}[position]
    b = a.copy()
    b[index] += 0.5
    assert fingerprint(a) != fingerprint(b)


def test_large_array_differs_from_its_prefix():
    a = np.arange(1_000_000, dtype=np.float64)
    assert fingerprint(a) != fingerprint(a[:-1])


# --------------------------------------------------------------------------- scalars


def test_numpy_scalar_types_count(distinct):
    distinct(
        [
            np.float64(1.0),
            1.0,
            np.float32(1.0),
            np.float16(1.0),
            np.array(1.0),
            np.int64(1),
            np.int32(1),
            np.uint8(1),
            1,
            np.bool_(True),
            True,
            np.complex128(1.0),
        ],
        labels=[
            "np.float64",
            "float",
            "np.float32",
            "np.float16",
            "0-d float64 array",
            "np.int64",
            "np.int32",
            "np.uint8",
            "int",
            "np.bool_",
            "bool",
            "np.complex128",
        ],
    )


def test_numpy_scalars_are_deterministic_and_value_sensitive():
    assert fingerprint(np.float64(1.5)) == fingerprint(np.float64(1.5))
    assert fingerprint(np.float64(np.nan)) == fingerprint(np.float64(np.nan))
    assert fingerprint(np.float64(1.5)) != fingerprint(np.float64(2.5))
    assert fingerprint(np.int64(-3)) != fingerprint(np.int64(3))


def test_numpy_datetime_scalars_keep_their_unit():
    assert fingerprint(np.datetime64(1, "ns")) != fingerprint(np.datetime64(1, "ms"))
    assert fingerprint(np.datetime64("2024-01-01", "D")) == fingerprint(
        np.datetime64("2024-01-01", "D")
    )


# --------------------------------------------------------------------------- strict mode


@pytest.mark.parametrize("dtype", DTYPES)
def test_strict_mode_accepts_arrays_of_every_dtype(dtype):
    a = sample(dtype)
    assert fingerprint(a, strict=True) == fingerprint(a)


def test_strict_mode_accepts_numpy_scalars():
    for value in (np.float64(1), np.int8(1), np.bool_(False), np.datetime64(1, "s")):
        assert fingerprint(value, strict=True) == fingerprint(value)


@pytest.mark.parametrize(
    "view",
    [
        lambda a: np.asfortranarray(a),
        lambda a: a[::3],
        lambda a: a[:, ::-2],
        lambda a: a.T,
    ],
    ids=["fortran", "row-step", "reversed-column-step", "transpose"],
)
def test_large_non_contiguous_arrays_hash_like_their_c_order_copies(view):
    # Large enough to take the block-copy path (several 8 MiB blocks), with a row count that
    # does not divide into whole blocks.
    base = np.random.default_rng(3).standard_normal((300_007, 7))
    v = view(base)
    assert fingerprint(v) == fingerprint(np.ascontiguousarray(v))
    changed = np.array(v)
    changed[-1, -1] += 1.0
    assert fingerprint(changed) != fingerprint(v)
