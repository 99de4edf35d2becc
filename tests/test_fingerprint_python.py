"""Fingerprints of builtin and standard-library values."""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime as dt
import enum
import functools
import math
import pathlib
import re
import struct
import unicodedata
import uuid
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest

from afml_cache import fingerprint

HEX64 = re.compile(r"[0-9a-f]{64}")
NY = ZoneInfo("America/New_York")
UTC = dt.UTC

NESTED = {
    "ints": [0, 1, -1, 2**64, -(2**100)],
    "floats": (0.5, -0.0, float("inf")),
    "text": ["", "héllo", "日本語", "\U0001f600"],
    "bytes": b"\x00\xff",
    "set": {"a", "b", "c"},
    "frozen": frozenset({1, 2, 3}),
    "nested": {"deeper": [(1, 2), {"k": None}]},
    "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    "amount": Decimal("12.50"),
}


def module_level_add(a, b):
    return a + b


def module_level_mul(a, b):
    return a * b


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "value",
    [None, 0, "x", b"x", 1.5, (1, 2.0, "x"), NESTED],
    ids=["none", "int", "str", "bytes", "float", "tuple", "nested"],
)
def test_digest_is_64_lowercase_hex_chars(value):
    digest = fingerprint(value)
    assert isinstance(digest, str)
    assert HEX64.fullmatch(digest), digest


# --------------------------------------------------------------------------- determinism


def test_same_value_twice_gives_same_digest():
    assert fingerprint(NESTED) == fingerprint(NESTED)


def test_deep_copy_gives_same_digest():
    assert fingerprint(copy.deepcopy(NESTED)) == fingerprint(NESTED)


def test_equal_values_built_independently_give_same_digest():
    # Different object identities (no interning, fresh big ints) must not matter.
    a = ["".join(["ab", "c"]), 10**30 + 1, list(range(5)), {"k": (1, 2)}]
    b = ["abc", int("1" + "0" * 29 + "1"), [0, 1, 2, 3, 4], dict([("k", (1, 2))])]
    assert fingerprint(a) == fingerprint(b)


def test_shared_references_are_not_cycles_and_hash_like_copies():
    inner = [1, 2]
    shared = [inner, inner]
    assert fingerprint(shared) == fingerprint([[1, 2], [1, 2]])


# --------------------------------------------------------------------------- type tags


def test_one_in_each_type_differs(distinct):
    distinct([True, 1, 1.0, "1", b"1", 1 + 0j, [1], (1,), {1}])


def test_empty_and_zero_values_of_each_type_differ(distinct):
    distinct([0, False, 0.0, None, "", b"", (), [], {}, set(), frozenset(), bytearray()])


def test_tuple_and_list_with_same_items_differ():
    assert fingerprint((1, 2, 3)) != fingerprint([1, 2, 3])


def test_bytes_bytearray_and_memoryview_with_same_bytes_differ(distinct):
    distinct([b"abc", bytearray(b"abc"), memoryview(b"abc")])


def test_set_and_frozenset_with_same_items_differ():
    assert fingerprint({1, 2, 3}) != fingerprint(frozenset({1, 2, 3}))


def test_str_and_its_utf8_bytes_differ():
    assert fingerprint("héllo") != fingerprint("héllo".encode())


def test_containers_are_framed_so_boundaries_cannot_shift(distinct):
    # A naive concatenation of child encodings would make these collide.
    distinct(
        [
            ("ab", "c"),
            ("a", "bc"),
            ("abc",),
            (("a",), "bc"),
            ([1], [2, 3]),
            ([1, 2], [3]),
            [[1, 2, 3]],
            [1, [2, 3]],
            [b"ab", b""],
            [b"a", b"b"],
            {"a": "bc"},
            {"ab": "c"},
        ]
    )


# --------------------------------------------------------------------------- ints


@pytest.mark.parametrize("value", [2**64, -(2**100), 10**400, 2**63, -(2**63), 2**63 - 1, 255, -1])
def test_big_and_boundary_ints_are_deterministic(value):
    assert fingerprint(value) == fingerprint(int(str(value)))


def test_ints_of_arbitrary_size_are_all_distinct(distinct):
    distinct(
        [
            0,
            1,
            -1,
            255,
            256,
            2**63 - 1,
            2**63,
            -(2**63),
            2**64 - 1,
            2**64,
            2**64 + 1,
            -(2**64),
            2**100,
            -(2**100),
            10**400,
            10**400 + 1,
            -(10**400),
        ]
    )


def test_positive_and_negative_int_zero_are_the_same_value():
    assert fingerprint(0) == fingerprint(-0) == fingerprint(int("-0"))


# --------------------------------------------------------------------------- floats


def test_nan_has_one_stable_digest():
    assert fingerprint(float("nan")) == fingerprint(float("nan"))
    assert fingerprint(math.nan) == fingerprint(float("nan"))


def test_nan_payloads_count():
    # Documented choice: exact bits, so a NaN with another payload (or sign) is another value.
    other_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
    assert math.isnan(other_nan)
    assert fingerprint(other_nan) != fingerprint(float("nan"))
    assert fingerprint(-float("nan")) != fingerprint(float("nan"))


def test_inf_and_negative_inf_differ():
    assert fingerprint(float("inf")) != fingerprint(float("-inf"))


def test_zero_and_negative_zero_float_differ():
    # Documented choice: floats are hashed by their exact bits.
    assert fingerprint(0.0) != fingerprint(-0.0)


def test_floats_are_hashed_exactly(distinct):
    distinct([0.1 + 0.2, 0.3, 1.0, math.nextafter(1.0, 2.0), 5e-324, 1e308, float("nan")])


def test_complex_numbers(distinct):
    assert fingerprint(complex(1, 2)) == fingerprint(1 + 2j)
    distinct([complex(1, 2), complex(2, 1), complex(1, 0), 1.0, (1.0, 2.0), complex(1, -0.0)])


# --------------------------------------------------------------------------- strings


@pytest.mark.parametrize(
    "text",
    ["", "ascii", "héllo wörld", "日本語", "\U0001f600 emoji", "\x00nul", "\ud800", "a\udfffb"],
)
def test_any_str_fingerprints_including_lone_surrogates(text):
    assert fingerprint(text) == fingerprint(text)


def test_distinct_strings_differ_including_surrogates_and_normalisation(distinct):
    composed = unicodedata.normalize("NFC", "é")
    decomposed = unicodedata.normalize("NFD", "é")
    distinct(["\ud800", "\udc00", "\ud801", "", "?", "\ufffd", composed, decomposed, "e"])


# --------------------------------------------------------------------------- dicts and sets


def test_dict_insertion_order_counts():
    # pd.DataFrame(features) and most code iterate in insertion order (spec v2).
    assert fingerprint({"a": 1, "b": 2}) != fingerprint({"b": 2, "a": 1})


def test_dict_with_many_keys_counts_insertion_order():
    items = [(f"key{i}", i) for i in range(300)]
    assert fingerprint(dict(items)) == fingerprint(dict(items))
    assert fingerprint(dict(items)) != fingerprint(dict(reversed(items)))


def test_dict_with_mixed_type_keys_fingerprints_in_order():
    # Keys that Python cannot sort against each other are never compared.
    items = [(1, "a"), ("b", 2), (None, 3), ((1, 2), 4), (2.5, 5), (b"x", 6)]
    assert fingerprint(dict(items)) == fingerprint(dict(items))
    assert fingerprint(dict(items)) != fingerprint(dict(reversed(items)))


def test_dict_values_and_keys_count(distinct):
    distinct(
        [
            {"a": 1, "b": 2},
            {"a": 1, "b": 3},
            {"a": 1, "c": 2},
            {"a": 1},
            {1: "a"},
            {"1": "a"},
            {1.0: "a"},
            {True: "a"},
            [("a", 1), ("b", 2)],
        ]
    )


def test_ordered_dict_order_counts():
    # OrderedDicts with different orders compare unequal and iterate differently, so sharing
    # a digest would be a wrong cache hit (e.g. for a function returning list(od)).
    first = collections.OrderedDict([("a", 1), ("b", 2)])
    second = collections.OrderedDict([("b", 2), ("a", 1)])
    assert first != second
    assert fingerprint(first) != fingerprint(second)


def test_dict_keys_and_values_are_not_interchangeable():
    assert fingerprint({"a": "b"}) != fingerprint({"b": "a"})


def test_set_of_many_strings_ignores_insertion_order():
    words = [f"word-{i}-{'x' * (i % 7)}" for i in range(500)]
    forward = set(words)
    backward = set(reversed(words))
    # Grow-and-shrink changes the internal table layout (and thus iteration order).
    churned = set(words + [f"junk{i}" for i in range(2000)])
    churned -= {f"junk{i}" for i in range(2000)}
    assert fingerprint(forward) == fingerprint(backward) == fingerprint(churned)
    assert fingerprint(frozenset(words)) == fingerprint(frozenset(reversed(words)))


def test_set_with_mixed_types_ignores_order():
    items = [1, "a", None, (1, 2), 2.5, b"x", frozenset({3})]
    assert fingerprint(set(items)) == fingerprint(set(reversed(items)))


def test_set_contents_count(distinct):
    distinct([{"a", "b"}, {"a", "c"}, {"a"}, set(), ["a", "b"], ("a", "b")])


# --------------------------------------------------------------------------- range, slice


def test_ranges(distinct):
    assert fingerprint(range(10)) == fingerprint(range(0, 10, 1))
    distinct([range(10), range(11), range(1, 10), range(0, 10, 2), list(range(10))])


def test_slices(distinct):
    assert fingerprint(slice(1, 5)) == fingerprint(slice(1, 5, None))
    distinct([slice(1, 5), slice(1, 6), slice(None), slice(0, None), slice(1, 5, 2), (1, 5, None)])
    assert fingerprint(slice(0, 3)) != fingerprint(range(0, 3))


# --------------------------------------------------------------------------- datetime


def test_naive_datetime_fields_count(distinct):
    base = dt.datetime(2024, 1, 2, 3, 4, 5, 6)
    assert fingerprint(base) == fingerprint(dt.datetime(2024, 1, 2, 3, 4, 5, 6))
    distinct([base, base.replace(microsecond=7), base.replace(year=2025), base.date()])


def test_naive_and_aware_datetimes_differ():
    naive = dt.datetime(2024, 1, 2, 3, 4, 5)
    assert fingerprint(naive) != fingerprint(naive.replace(tzinfo=UTC))


def test_same_instant_in_different_timezones_differs(distinct):
    utc = dt.datetime(2024, 1, 2, 15, 0, tzinfo=UTC)
    ny = utc.astimezone(NY)
    fixed = utc.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    toronto = utc.astimezone(ZoneInfo("America/Toronto"))
    assert utc == ny == fixed == toronto  # same instant ...
    distinct([utc, ny, fixed, toronto], labels=["utc", "new_york", "fixed-5h", "toronto"])


def test_aware_datetime_is_deterministic():
    a = dt.datetime(2024, 7, 1, 9, 30, tzinfo=NY)
    b = dt.datetime(2024, 7, 1, 9, 30, tzinfo=ZoneInfo("America/New_York"))
    assert fingerprint(a) == fingerprint(b)


def test_fold_distinguishes_repeated_wall_time_in_dst_transition():
    # 01:30 happens twice on 2024-11-03 in New York; fold picks EDT (0) or EST (1).
    first = dt.datetime(2024, 11, 3, 1, 30, tzinfo=NY, fold=0)
    second = dt.datetime(2024, 11, 3, 1, 30, tzinfo=NY, fold=1)
    assert first.utcoffset() != second.utcoffset()
    assert fingerprint(first) != fingerprint(second)


def test_dates_times_and_timedeltas(distinct):
    distinct(
        [
            dt.date(2024, 1, 1),
            dt.date(2024, 1, 2),
            dt.datetime(2024, 1, 1),
            dt.time(12, 0),
            dt.time(12, 0, 1),
            dt.time(12, 0, tzinfo=UTC),
            dt.time(12, 0, tzinfo=NY),
            dt.timedelta(days=1),
            dt.timedelta(days=-1),
            dt.timedelta(microseconds=1),
            86400.0,
        ]
    )


def test_equal_timedeltas_share_a_digest():
    assert fingerprint(dt.timedelta(days=1)) == fingerprint(dt.timedelta(seconds=86400))


# --------------------------------------------------------------------------- numbers


def test_decimal_keeps_its_exponent(distinct):
    # Decimal("1.0") == Decimal("1.00") but they are different values for a computation.
    distinct(
        [
            Decimal("1"),
            Decimal("1.0"),
            Decimal("1.00"),
            Decimal("0"),
            Decimal("-0"),
            Decimal("1E+2"),
            Decimal("100"),
            1,
            1.0,
        ]
    )
    assert fingerprint(Decimal("NaN")) == fingerprint(Decimal("NaN"))
    assert fingerprint(Decimal("1.10")) == fingerprint(Decimal("1.10"))


def test_fractions(distinct):
    assert fingerprint(Fraction(1, 3)) == fingerprint(Fraction(2, 6))
    distinct([Fraction(1, 3), Fraction(1, 4), Fraction(-1, 3), Fraction(1, 2), 0.5, Fraction(2)])
    assert fingerprint(Fraction(2)) != fingerprint(2)


# --------------------------------------------------------------------------- uuid, paths


def test_uuid(distinct):
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert fingerprint(u) == fingerprint(uuid.UUID(str(u)))
    distinct([u, uuid.UUID(int=u.int + 1), str(u), u.bytes, u.int])


def test_paths(distinct):
    assert fingerprint(pathlib.Path("a/b")) == fingerprint(pathlib.Path("a") / "b")
    distinct(
        [
            pathlib.Path("a/b"),
            pathlib.Path("a/c"),
            pathlib.PurePosixPath("a/b"),
            pathlib.PureWindowsPath("a/b"),
            "a/b",
        ],
        labels=["Path(a/b)", "Path(a/c)", "PurePosixPath(a/b)", "PureWindowsPath(a/b)", "'a/b'"],
    )


# --------------------------------------------------------------------------- enums


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Shape(enum.Enum):
    CIRCLE = 1


class Level(enum.IntEnum):
    LOW = 1


def test_enum_members():
    assert fingerprint(Color.RED) == fingerprint(Color(1))
    digests = [fingerprint(v) for v in (Color.RED, Color.GREEN, Shape.CIRCLE, Level.LOW, 1, "RED")]
    assert len(set(digests)) == len(digests), digests


def test_int_enum_differs_from_plain_int():
    # IntEnum is an int subclass; it must not be flattened to the int.
    assert fingerprint(Level.LOW) != fingerprint(1)


# --------------------------------------------------------------------------- dataclasses


@dataclasses.dataclass
class Params:
    window: int
    name: str
    weights: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class OtherParams:
    window: int
    name: str
    weights: list = dataclasses.field(default_factory=list)


def test_dataclass_fields_count():
    base = Params(20, "ema", [0.5, 0.5])
    assert fingerprint(base) == fingerprint(Params(20, "ema", [0.5, 0.5]))
    assert fingerprint(base) == fingerprint(copy.deepcopy(base))
    variants = [
        base,
        Params(21, "ema", [0.5, 0.5]),
        Params(20, "sma", [0.5, 0.5]),
        Params(20, "ema", [0.5, 0.25]),
        OtherParams(20, "ema", [0.5, 0.5]),
        dataclasses.asdict(base),
    ]
    digests = [fingerprint(v) for v in variants]
    assert len(set(digests)) == len(digests), digests


# --------------------------------------------------------------------------- named tuples


class Point(NamedTuple):
    x: int
    y: int


PointNT = collections.namedtuple("PointNT", ["x", "y"])


def test_named_tuple_differs_from_plain_tuple():
    assert fingerprint(Point(1, 2)) == fingerprint(Point(1, 2))
    variants = [Point(1, 2), Point(2, 1), PointNT(1, 2), (1, 2)]
    digests = [fingerprint(v) for v in variants]
    assert len(set(digests)) == len(digests), digests


# --------------------------------------------------------------------------- functools.partial


def test_partial_arguments_count():
    p = functools.partial(module_level_add, 1)
    assert fingerprint(p) == fingerprint(functools.partial(module_level_add, 1))
    variants = [
        p,
        functools.partial(module_level_add, 2),
        functools.partial(module_level_mul, 1),
        functools.partial(module_level_add, b=1),
        functools.partial(module_level_add, b=2),
        module_level_add,
    ]
    digests = [fingerprint(v) for v in variants]
    assert len(set(digests)) == len(digests), digests


# --------------------------------------------------------------------------- functions


def test_same_function_gives_same_digest():
    assert fingerprint(module_level_add) == fingerprint(module_level_add)
    assert fingerprint([module_level_add, 1]) == fingerprint([module_level_add, 1])


def test_functions_with_different_code_differ():
    assert fingerprint(module_level_add) != fingerprint(module_level_mul)


def test_lambdas_with_different_bodies_differ():
    # Same name (<lambda>), same bytecode shape; only a constant differs.
    add_one = lambda x: x + 1  # noqa: E731
    add_two = lambda x: x + 2  # noqa: E731
    assert fingerprint(add_one) != fingerprint(add_two)
    assert fingerprint(add_one) != fingerprint(lambda x: x * 1)


def test_builtin_functions_differ_by_identity():
    assert fingerprint(len) == fingerprint(len)
    assert fingerprint(len) != fingerprint(abs)


# --------------------------------------------------------------------------- strict mode


STRICT_OK = [
    None,
    True,
    12,
    10**400,
    1.5,
    1j,
    "s\ud800",
    b"b",
    bytearray(b"b"),
    memoryview(b"b"),
    (1,),
    [1],
    {"a": 1},
    {1},
    frozenset({1}),
    range(3),
    slice(1, 2),
    dt.datetime(2024, 1, 1, tzinfo=NY),
    dt.date(2024, 1, 1),
    dt.time(1, 2),
    dt.timedelta(3),
    Decimal("1.0"),
    Fraction(1, 3),
    uuid.UUID(int=5),
    pathlib.Path("a/b"),
    pathlib.PurePosixPath("a/b"),
    Color.RED,
    Level.LOW,
    Params(1, "x"),
    OtherParams(1, "x"),
    Point(1, 2),
    PointNT(1, 2),
    functools.partial(module_level_add, 1),
    module_level_add,
    lambda x: x,
    len,
    collections.OrderedDict(a=1),
    NESTED,
]


@pytest.mark.parametrize("value", STRICT_OK, ids=lambda v: type(v).__name__)
def test_strict_mode_accepts_builtin_and_stdlib_values(value):
    assert fingerprint(value, strict=True) == fingerprint(value)


class _Expiry(dt.date):
    """A date that carries more than its day."""


class _Tick(Decimal):
    """A price increment that carries more than its value."""


@pytest.mark.filterwarnings("ignore:afml_cache. .*has no fingerprint rule")
def test_attributes_a_pickle_reduction_leaves_out_count():
    # date's and Decimal's reductions hold the value alone: a subclass's attributes were lost,
    # so arguments that differ only in them shared a key.
    for make, attribute in ((lambda: _Expiry(2024, 3, 15), "roll"), (lambda: _Tick("0.25"), "n")):
        one, other, bare = make(), make(), make()
        setattr(one, attribute, 1)
        setattr(other, attribute, 2)
        assert len({fingerprint(one), fingerprint(other), fingerprint(bare)}) == 3
        setattr(other, attribute, 1)
        assert fingerprint(one) == fingerprint(other)
