"""Values whose digests are pinned by the golden vectors: one recipe (a Python expression) each.

The expressions build their values deterministically from the names in `evaluate`'s namespace.
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import functools
import pathlib
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
]

OPTIONAL_MODULES = {"pa": "pyarrow", "pl": "polars"}


def evaluate(recipe: str) -> Any:
    namespace: dict[str, Any] = {
        "datetime": datetime,
        "decimal": decimal,
        "fractions": fractions,
        "functools": functools,
        "pathlib": pathlib,
        "uuid": uuid,
        "zoneinfo": zoneinfo,
        "np": np,
        "pd": pd,
    }
    for alias, module in OPTIONAL_MODULES.items():
        if f"{alias}." in recipe:
            namespace[alias] = __import__(module)
    return eval(recipe, namespace)
