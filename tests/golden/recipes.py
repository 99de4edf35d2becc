"""Values whose digests are pinned by the golden vectors: one recipe (a Python expression) each.

The expressions build their values deterministically from the names in `evaluate`'s namespace.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import decimal
import fractions
import functools
import operator
import pathlib
import re
import types
import uuid
import zoneinfo
from typing import Any

import numpy as np
import pandas as pd

RECIPES: list[tuple[str, str]] = [
    ("none", "None"),
    ("true", "True"),
    ("false", "False"),
    ("int zero", "0"),
    ("int one", "1"),
    ("int negative", "-1"),
    ("int 2**63", "2**63"),
    ("int -2**100", "-(2**100)"),
    ("float one", "1.0"),
    ("float negative zero", "-0.0"),
    ("float nan", "float('nan')"),
    ("float inf", "float('inf')"),
    ("complex", "complex(1, -2)"),
    ("str empty", "''"),
    ("str", "'close'"),
    ("str non-ascii", "'naïve ✓ 价格'"),
    ("str lone surrogate", "'\\ud800'"),
    ("bytes", "b'abc'"),
    ("bytearray", "bytearray(b'abc')"),
    ("memoryview", "memoryview(b'abc')"),
    ("tuple empty", "()"),
    ("tuple of scalars", "(42, 3.14, 'close')"),
    ("list nested", "[1, [2, [3, []]]]"),
    ("dict", "{'window': 20, 'pt_sl': (1, 2), 'symbols': ['ES', 'NQ']}"),
    ("set", "{'ES', 'NQ', 'CL'}"),
    ("frozenset", "frozenset({1, 2, 3})"),
    ("range", "range(0, 10, 2)"),
    ("slice", "slice(1, None, 2)"),
    ("datetime naive", "datetime.datetime(2024, 1, 2, 3, 4, 5, 6)"),
    ("datetime utc", "datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)"),
    (
        "datetime new york",
        "datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=zoneinfo.ZoneInfo('America/New_York'))",
    ),
    ("date", "datetime.date(2024, 1, 2)"),
    ("time", "datetime.time(9, 30)"),
    ("timedelta", "datetime.timedelta(days=1, seconds=5)"),
    ("decimal", "decimal.Decimal('1.10')"),
    ("fraction", "fractions.Fraction(1, 3)"),
    ("uuid", "uuid.UUID('12345678-1234-5678-1234-567812345678')"),
    ("path", "pathlib.PurePosixPath('data/bars.parquet')"),
    ("partial of a builtin", "functools.partial(max, 1)"),
    ("class", "int"),
    ("numpy int64 arange", "np.arange(10, dtype=np.int64)"),
    ("numpy float64 matrix", "np.arange(12.0).reshape(3, 4)"),
    ("numpy fortran matrix", "np.asfortranarray(np.arange(6.0).reshape(2, 3))"),
    ("numpy big-endian", "np.arange(5, dtype='>i4')"),
    ("numpy bool", "np.array([True, False, True])"),
    ("numpy complex128", "np.array([1 + 2j, 3 - 4j])"),
    ("numpy datetime64[ns]", "np.array([0, 1, 2], dtype='M8[ns]')"),
    ("numpy timedelta64[s]", "np.array([0, 1, 2], dtype='m8[s]')"),
    ("numpy unicode", "np.array(['ES', 'NQ', 'CL'])"),
    ("numpy bytes", "np.array([b'ES', b'NQ'])"),
    ("numpy objects", "np.array([1, 'a', None], dtype=object)"),
    ("numpy 0-d", "np.array(3.0)"),
    ("numpy empty", "np.zeros((0, 3), dtype=np.float32)"),
    ("numpy scalar", "np.float64(1.5)"),
    ("numpy structured", "np.array([(1, 2.0)], dtype=[('a', '<i4'), ('b', '<f8')])"),
    ("pandas series", "pd.Series([1.0, 2.0, 3.0], name='close')"),
    ("pandas range index", "pd.RangeIndex(5, name='i')"),
    (
        "pandas ohlcv frame",
        "pd.DataFrame({'open': [1.0, 2.0, 3.0], 'close': [1.5, 2.5, 3.5], 'volume': [10, 20, 30]},"
        " index=pd.date_range('2024-01-02 09:30', periods=3, freq='min', tz='America/New_York',"
        " name='ts'))",
    ),
    ("pandas multiindex", "pd.MultiIndex.from_tuples([('ES', 1), ('NQ', 2)], names=['sym', 'n'])"),
    ("pandas categorical", "pd.Categorical(['b', 'a', 'b'], categories=['a', 'b'], ordered=True)"),
    ("pandas nullable ints", "pd.array([1, None, 3], dtype='Int64')"),
    ("pandas nullable bools", "pd.array([True, None], dtype='boolean')"),
    ("pandas period index", "pd.period_range('2024-01', periods=3, freq='M')"),
    ("pandas timestamp", "pd.Timestamp('2024-01-02 09:30', tz='UTC')"),
    ("pandas timedelta", "pd.Timedelta('1h')"),
    ("pandas period", "pd.Period('2024-01', freq='M')"),
    ("pandas NaT", "pd.NaT"),
    ("pandas NA", "pd.NA"),
    ("pandas object strings", "pd.Series(['a', None], dtype=object)"),
    ("pyarrow array", "pa.array([1, None, 3])"),
    ("pyarrow chunked strings", "pa.chunked_array([['a', None], ['ccc']])"),
    ("pyarrow table", "pa.table({'a': [1, 2], 's': ['x', None]})"),
    ("pyarrow dictionary", "pa.array(['x', 'y', 'x']).dictionary_encode()"),
    ("pyarrow list", "pa.array([[1, 2], None, []])"),
    ("polars frame", "pl.DataFrame({'a': [1, 2], 's': ['x', None]})"),
    ("polars series", "pl.Series('x', [1.0, None, 2.0])"),
    # Spec v2: each recipe below pins a rule that v1 left out (docs/fingerprint.md).
    ("dict reordered", "{'symbols': ['ES', 'NQ'], 'pt_sl': (1, 2), 'window': 20}"),
    (
        "datetime pytz EDT",
        "pytz.timezone('America/New_York').localize(datetime.datetime(2021, 11, 7, 1, 30),"
        " is_dst=True)",
    ),
    (
        "datetime pytz EST",
        "pytz.timezone('America/New_York').localize(datetime.datetime(2021, 11, 7, 1, 30),"
        " is_dst=False)",
    ),
    (
        "time pytz EST",
        "datetime.time(1, 30, tzinfo=pytz.timezone('America/New_York').localize("
        "datetime.datetime(2021, 11, 7, 1, 30), is_dst=False).tzinfo)",
    ),
    ("timezone named offset", "datetime.timezone(datetime.timedelta(hours=2), 'desk')"),
    (
        "pandas index named offset",
        "pd.DatetimeIndex(['2024-01-01T00:00Z']).tz_convert("
        "datetime.timezone(datetime.timedelta(hours=2), 'desk'))",
    ),
    (
        "pandas custom business day",
        "pd.offsets.CustomBusinessDay(holidays=['2024-01-03'], weekmask='Mon Tue Wed Thu')",
    ),
    ("pandas business hour", "pd.offsets.BusinessHour(start='10:00', end='18:00')"),
    (
        "pandas index custom business days",
        "pd.date_range('2024-01-01', periods=3,"
        " freq=pd.offsets.CustomBusinessDay(holidays=['2024-01-03']))",
    ),
    ("numpy busdaycalendar", "np.busdaycalendar(weekmask='1111100', holidays=['2024-01-03'])"),
    (
        "numpy masked fill and hard mask",
        "np.ma.array([1.0, 2.0], mask=[False, True], fill_value=-1.0, hard_mask=True)",
    ),
    ("numpy subclass attribute", "Tagged(np.arange(3), 'usd')"),
    ("dataclass extra attribute", "with_attributes(Config(20), scale=2.0)"),
    ("str subclass slot", "with_attributes(Symbol('ES'), exchange='CME')"),
    ("defaultdict subclass", "Counts(float, a=1.0)"),
    (
        "pandas frame flags",
        "pd.DataFrame({'a': [1, 2]}).set_flags(allows_duplicate_labels=False)",
    ),
    (
        "pyarrow dictionary ordered unused",
        "pa.DictionaryArray.from_arrays(pa.array([1, 0, 1], pa.int8()), ['x', 'y', 'z'],"
        " ordered=True)",
    ),
    (
        "pyarrow chunked dictionaries",
        "pa.chunked_array([pa.array(['x', 'y']).dictionary_encode(),"
        " pa.array(['y', 'z']).dictionary_encode()])",
    ),
    ("pyarrow field metadata", "pa.field('px', pa.float64(), metadata={'unit': 'usd'})"),
    (
        "pyarrow schema long metadata",
        "pa.schema([('a', pa.int64())], metadata={'note': 'x' * 200})",
    ),
    ("pyarrow struct type", "pa.struct([pa.field('a', pa.int64(), metadata={'unit': 'usd'})])"),
    ("pyarrow time64 ns scalar", "pa.scalar(1, pa.time64('ns'))"),
    ("simple namespace", "types.SimpleNamespace(window=20, symbols=['ES', 'NQ'])"),
    ("argparse namespace", "argparse.Namespace(window=20, symbols=['ES', 'NQ'])"),
    ("regex pattern", "re.compile(r'^(ES|NQ)[HMUZ]\\d$')"),
    ("regex pattern flags", "re.compile(rb'es', re.IGNORECASE)"),
    ("operator itemgetter", "operator.itemgetter('close', 1)"),
    ("operator attrgetter", "operator.attrgetter('index.freq', 'name')"),
    ("operator methodcaller", "operator.methodcaller('rolling', 20, min_periods=5)"),
    # Spec v3: bulk data of several 1 MiB pieces, whole, strided, masked and chunked.
    ("numpy array of pieces", "np.arange(300_000, dtype=np.float64)"),
    ("numpy strided view of pieces", "np.arange(900_000, dtype=np.int32).reshape(3, -1).T"),
    (
        "pandas frame of pieces",
        "pd.DataFrame({'a': np.arange(300_000.0), 'b': np.arange(300_000)},"
        " index=pd.date_range('2024-01-01', periods=300_000, freq='s', tz='UTC'))",
    ),
    ("pandas nullable of pieces", "pd.Series(pd.array(np.arange(200_000), dtype='Int64'))"),
    (
        "pyarrow chunked of pieces",
        "pa.chunked_array([np.arange(150_001), np.arange(150_001, 300_000)])",
    ),
]

OPTIONAL_MODULES = {"pa": "pyarrow", "pl": "polars", "pytz": "pytz"}


class Tagged(np.ndarray):
    """An ndarray subclass that only holds data (an attribute): one with methods would count
    their code too (docs/fingerprint.md), which is Python's bytecode, not a golden vector."""


def tagged(values: Any, info: str) -> Tagged:
    """The recipes' ``Tagged(values, info)``."""
    return with_attributes(np.asarray(values).view(Tagged), info=info)


@dataclasses.dataclass
class Config:
    window: int


class Symbol(str):
    __slots__ = ("exchange",)


class Counts(collections.defaultdict):
    pass


def with_attributes(obj: Any, **attributes: Any) -> Any:
    for name, value in attributes.items():
        setattr(obj, name, value)
    return obj


def evaluate(recipe: str) -> Any:
    namespace: dict[str, Any] = {
        "argparse": argparse,
        "datetime": datetime,
        "decimal": decimal,
        "fractions": fractions,
        "functools": functools,
        "operator": operator,
        "pathlib": pathlib,
        "re": re,
        "types": types,
        "uuid": uuid,
        "zoneinfo": zoneinfo,
        "np": np,
        "pd": pd,
        "Tagged": tagged,
        "Config": Config,
        "Symbol": Symbol,
        "Counts": Counts,
        "with_attributes": with_attributes,
    }
    for alias, module in OPTIONAL_MODULES.items():
        if f"{alias}." in recipe:
            namespace[alias] = __import__(module)
    return eval(recipe, namespace)
