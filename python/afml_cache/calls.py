"""What the decorators read from a call: its arguments by parameter name (`FastBinder`, with
the function's defaults as they are now: `Defaults`), and for ``time_aware_cacheable`` the
time ranges of its inputs (`time_ranges`) and how long an entry whose data are still forming
may live (`live_ttl`)."""

from __future__ import annotations

import datetime
import inspect
import math
import operator
import reprlib
import sys
import time
import types
import warnings
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NO_RANGES",
    "Call",
    "Defaults",
    "FastBinder",
    "TimeOptions",
    "TimeRange",
    "live_ttl",
    "time_ranges",
    "to_ns",
]


@dataclass(frozen=True)
class TimeOptions:
    """The options of ``time_aware_cacheable`` that say where a call's time ranges are."""

    time_column: str | None = None
    start_args: tuple[str, ...] = ("start", "start_date")
    end_args: tuple[str, ...] = ("end", "end_date")
    live_window: datetime.timedelta = datetime.timedelta(days=1)
    live_ttl: datetime.timedelta = datetime.timedelta(minutes=15)


@dataclass
class TimeRange:
    """The first and last moment (ns since the epoch, UTC) of one input's data."""

    argument: str
    start_ns: int
    end_ns: int
    rows: int | None
    freq: str | None

    def describe(self) -> dict[str, Any]:
        import pandas as pd

        return {
            "argument": self.argument,
            "start": pd.Timestamp(self.start_ns, tz="UTC").isoformat(),
            "end": pd.Timestamp(self.end_ns, tz="UTC").isoformat(),
            "rows": self.rows,
            "freq": self.freq,
        }


@dataclass(frozen=True)
class Call:
    """What the entry of a call records beside its value: its inputs' time ranges."""

    ranges: list[TimeRange]


NO_RANGES = Call([])


class Defaults:
    """Whether a function's default values were replaced since they were last read
    (``f.__defaults__ = (10,)``, ``f.__kwdefaults__["y"] = 10``): a call that relies on a
    default must be keyed with the one the function will use."""

    def __init__(self, fn: Any) -> None:
        # Where `inspect.signature` reads them: past `__wrapped__`, a bound method's function.
        holder = inspect.unwrap(fn)
        holder = getattr(holder, "__func__", holder)
        self._holder = holder if isinstance(holder, types.FunctionType) else None
        self._seen = self._now()

    def _now(self) -> tuple[Any, Any, tuple[Any, ...]]:
        if self._holder is None:
            return None, None, ()
        keywords = self._holder.__kwdefaults__
        return self._holder.__defaults__, keywords, tuple(keywords.values()) if keywords else ()

    def changed(self) -> bool:
        """Whether they changed since the last call of this (or since made)."""
        holder = self._holder
        if holder is None:
            return False
        defaults, keywords, values = self._seen
        if holder.__defaults__ is defaults and holder.__kwdefaults__ is keywords:
            if not keywords:
                return False
            now = tuple(keywords.values())
            if len(now) == len(values) and all(map(operator.is_, now, values)):
                return False
        self._seen = self._now()
        return True


class FastBinder:
    """Binds calls of plain signatures (named parameters, no ``*args``/``**kwargs``) in a
    fraction of ``Signature.bind``'s time, which matters on a cache hit."""

    def __init__(self, names: tuple[str, ...], positional: int, defaults: dict[str, Any]):
        self.names, self.positional, self.defaults = names, positional, defaults

    @classmethod
    def for_signature(cls, signature: inspect.Signature) -> FastBinder | None:
        names: list[str] = []
        positional, defaults = 0, {}
        for p in signature.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                return None
            if p.kind is p.POSITIONAL_OR_KEYWORD:
                positional += 1
            names.append(p.name)
            if p.default is not p.empty:
                defaults[p.name] = p.default
        return cls(tuple(names), positional, defaults)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The arguments by name in parameter order, or None to let inspect decide."""
        if not kwargs and len(args) == self.positional == len(self.names):  # all by position
            return dict(zip(self.names, args, strict=True))
        if len(args) > self.positional:
            return None
        given = dict(zip(self.names, args, strict=False))
        for name, value in kwargs.items():
            if name in given or name not in self.names:
                return None
            given[name] = value
        bound = {}
        for name in self.names:
            if name in given:
                bound[name] = given[name]
            elif name in self.defaults:
                bound[name] = self.defaults[name]
            else:
                return None  # a missing argument: inspect raises the usual TypeError
        return bound


def time_ranges(arguments: dict[str, Any], options: TimeOptions) -> list[TimeRange]:
    found = []
    for name, value in arguments.items():
        span = _range_of(value, options.time_column)
        if span is not None:
            found.append(TimeRange(name, *span))
    starts = [arguments[n] for n in options.start_args if arguments.get(n) is not None]
    ends = [arguments[n] for n in options.end_args if arguments.get(n) is not None]
    if starts or ends:
        try:
            start = to_ns(starts[0]) if starts else to_ns(ends[0])
            end = to_ns(ends[0]) if ends else to_ns(starts[0])
        except (TypeError, ValueError, OverflowError):
            # `start="latest"`, or a value the function reads its own way: the call is keyed
            # by its arguments as usual; it just has no time range.
            return found
        found.append(TimeRange("start/end", start, end, None, None))
    return found


def _range_of(value: Any, time_column: str | None) -> tuple[int, int, int, str | None] | None:
    pd = sys.modules.get("pandas")
    if pd is not None:
        index = value.index if isinstance(value, (pd.Series, pd.DataFrame)) else value
        if isinstance(index, pd.DatetimeIndex):
            if len(index) == 0:
                return None
            return to_ns(index.min()), to_ns(index.max()), len(index), index.freqstr
    pl = sys.modules.get("polars")
    if (
        pl is not None
        and time_column is not None
        and isinstance(value, pl.DataFrame)
        and time_column in value.columns
        and value.height
    ):
        column = value[time_column]
        return to_ns(column.min()), to_ns(column.max()), value.height, None
    return None


def time_span(value: Any) -> Any:
    """``value`` as a fixed, non-negative span of time (a ``pd.Timedelta``): a timedelta,
    numpy's, a fixed pandas offset, or a string with its unit (``"15min"``); None for anything
    else. A bare number, or one in a string, is None: pandas reads it as nanoseconds, where
    ``ttl=`` counts seconds, and either reading would be a guess. So is a unit pandas
    deprecates ("MS": milliseconds, or a month's start?)."""
    import numpy as np
    import pandas as pd

    if isinstance(value, str) and is_number(value):
        return None
    if not isinstance(value, str | datetime.timedelta | np.timedelta64 | pd.offsets.Tick):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            span = pd.Timedelta(value)
        except (ValueError, Warning):
            return None
    if span is pd.NaT or span < pd.Timedelta(0):
        return None
    return span


def is_number(text: str) -> bool:
    """Whether ``text`` is a finite number and nothing else ("900", " 1.5 ")."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def duration(name: str, value: Any) -> datetime.timedelta:
    """A ``live_window=``/``live_ttl=`` option as a timedelta (`time_span`)."""
    span = time_span(value)
    if span is None:
        raise ValueError(
            f"{name}={value!r} is not a duration; give a timedelta or a string with a unit "
            "pandas reads without a warning, like '15min', '1h' or '1D' (a bare number could be "
            "seconds or nanoseconds)"
        )
    return span.to_pytimedelta()  # as the defaults are (microseconds: finer means nothing)


def to_ns(t: Any) -> int:
    """Nanoseconds since the epoch in UTC; naive times count as UTC."""
    import pandas as pd

    stamp = pd.Timestamp(t)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.as_unit("ns").value)


def live_ttl(end_ns: int, options: TimeOptions | None) -> float | None:
    """``live_ttl`` in seconds if the data end within ``live_window`` of now, else None."""
    if options is None:
        return None
    now_ns = time.time_ns()
    if end_ns >= now_ns - options.live_window.total_seconds() * 1e9:
        return options.live_ttl.total_seconds()
    return None


def shown(value: Any) -> str:
    """An argument on one short line, for messages and reports: an array, Series or frame by
    its type, shape and dtype (``Series[1000 float64]``: its repr spans lines and hides the
    arguments after it), anything else by its shortened repr."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    name = type(value).__name__
    if isinstance(shape, tuple) and shape and all(isinstance(n, int) for n in shape):
        if dtype is not None:
            return f"{name}[{' x '.join(map(str, shape))} {dtype}]"
        if hasattr(value, "columns"):  # a frame: its columns' dtypes differ
            return f"{name}[{' x '.join(map(str, shape))}]"
    return " ".join(reprlib.repr(value).split())
