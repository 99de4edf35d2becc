"""The time arithmetic of range loaders: moments in ns since the epoch (UTC), half-open spans,
the pieces of a family's coverage, the live edge's clock, and stitching frames by time."""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.offsets import BaseOffset, Tick

try:
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # an older pandas: parts are stitched by pd.concat
    _from_blocks = None

__all__ = [
    "Clock",
    "Piece",
    "align",
    "as_argument",
    "check_calendar",
    "floor_to_unit",
    "gaps",
    "in_unit",
    "moment",
    "show",
    "stitch",
]

_NS_PER_MINUTE = 60_000_000_000
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def check_calendar(name: str) -> None:
    try:
        calendars = importlib.import_module("exchange_calendars")
    except ImportError:
        raise ModuleNotFoundError(
            f"live_calendar={name!r} needs the exchange_calendars package: "
            "pip install 'afml-cache[calendars]' (or drop live_calendar= to measure the live "
            "window in wall-clock time)"
        ) from None
    if name not in calendars.get_calendar_names(include_aliases=True):
        raise ValueError(
            f"live_calendar={name!r} is not an exchange_calendars calendar; use a name such as "
            "'XNYS', 'XLON' or 'CMES' (exchange_calendars.get_calendar_names() lists them)"
        )


@functools.cache
def _trading_minutes(name: str) -> np.ndarray:
    """The calendar's trading minutes, as sorted ns since the epoch (loaded once a process)."""
    calendars = importlib.import_module("exchange_calendars")
    with warnings.catch_warnings():
        # exchange_calendars reads Series.values, which pandas 3.1 deprecates: theirs to fix.
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        calendar = calendars.get_calendar(name)
    return np.asarray(calendar.minutes.asi8, dtype=np.int64)


class Clock:
    """Measures the live edge: in wall-clock time, or in a calendar's trading time."""

    def __init__(self, calendar: str | None):
        self.calendar = calendar

    def _minutes(self, *moments: int) -> np.ndarray | None:
        """The trading minutes, if the calendar spans ``moments`` (else wall time applies)."""
        if self.calendar is None:
            return None
        minutes = _trading_minutes(self.calendar)
        if all(minutes[0] <= t <= minutes[-1] for t in moments):
            return minutes
        return None

    def window_start(self, computed: int, window: int) -> int:
        """The moment ``window`` (of trading time) before ``computed``."""
        minutes = self._minutes(computed)
        if minutes is None:
            return computed - window
        back = int(np.searchsorted(minutes, computed)) - -(-window // _NS_PER_MINUTE)
        return int(minutes[back]) if back >= 0 else int(minutes[0])

    def elapsed(self, since: int, until: int) -> int:
        """The time (of trading) from ``since`` to ``until``."""
        minutes = self._minutes(since, until)
        if minutes is None:
            return until - since
        count = np.searchsorted(minutes, until) - np.searchsorted(minutes, since)
        return int(count) * _NS_PER_MINUTE


@dataclass(frozen=True)
class Piece:
    """The part ``[start, end)`` of a family's coverage and the entry holding its rows (the
    entry may hold more: a piece cut by a newer one keeps its entry). Rows from ``live_from``
    on were still forming when computed; they expire ``live_ttl`` after ``computed``."""

    start: int
    end: int
    digest: str
    computed: int
    live_from: int | None

    def cut(self, low: int, high: int) -> list[Piece]:
        """What is left of this piece outside ``[low, high)``."""
        left = []
        for start, end in ((self.start, min(self.end, low)), (max(self.start, high), self.end)):
            if start < end:
                live = (
                    self.live_from if self.live_from is not None and self.live_from < end else None
                )
                left.append(replace(self, start=start, end=end, live_from=live))
        return left


def moment(value: Any) -> tuple[int, tuple[str | None, str]]:
    """A start or end as ns since the epoch in UTC (naive counts as UTC), and its style: its
    time zone and unit."""
    if value is None or isinstance(value, bool | int | float):
        raise TypeError(f"not a time: {value!r}")
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError("NaT is not a time")
    zone = None
    if stamp.tzinfo is not None:
        zone = str(stamp.tz)
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.as_unit("ns").value), (zone, stamp.unit)


def as_argument(ns: int, style: tuple[str | None, str]) -> pd.Timestamp:
    """A gap's bound as the function is given it: a Timestamp in the request's zone and unit
    (a finer unit if that one cannot hold it)."""
    zone, unit = style
    stamp = pd.Timestamp(ns, unit="ns")
    with contextlib.suppress(ValueError):
        stamp = stamp.as_unit(unit, round_ok=False)
    return stamp if zone is None else stamp.tz_localize("UTC").tz_convert(zone)


def floor_to_unit(ns: int, unit: str) -> int:
    """``ns`` floored to a whole ``unit`` (s, ms, us or ns)."""
    step = _UNIT_NS[unit]
    return ns - ns % step


def show(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, unit="ns", tz="UTC")


def gaps(
    wanted: Iterable[tuple[int, int]], covered: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The parts of ``wanted`` that ``covered`` misses, sorted and disjoint."""
    spans = sorted((s, e) for s, e in covered if s < e)
    gaps = []
    for low, high in sorted(wanted):
        cursor = low
        for start, end in spans:
            if end <= cursor or start >= high:
                continue
            if start > cursor:
                gaps.append((cursor, start))
            cursor = max(cursor, end)
            if cursor >= high:
                break
        if cursor < high:
            gaps.append((cursor, high))
    return gaps


def align(gap: tuple[int, int], chunk: BaseOffset) -> tuple[int, int]:
    """A gap widened to ``chunk`` boundaries (in UTC)."""
    low, high = (pd.Timestamp(t, unit="ns") for t in gap)
    if isinstance(chunk, Tick):
        return int(low.floor(chunk).value), int(high.ceil(chunk).value)
    floor = chunk.rollback(low.normalize())
    start = floor if floor <= low else floor - chunk
    end = chunk.rollback(high.normalize())
    if end < high:
        end = end + chunk
    return int(start.as_unit("ns").value), int(end.as_unit("ns").value)


def in_unit(index: pd.DatetimeIndex, low: int, high: int) -> tuple[int, int]:
    """``[low, high)`` (ns) in the index's unit, so its ``asi8`` (UTC when it has a zone)
    compares without a conversion: a moment t is inside when low <= t < high."""
    step = _UNIT_NS[index.unit]
    return -(-low // step), -(-high // step)


def _slice(frame: Any, low: int, high: int) -> Any:
    index = frame.index
    if len(frame) == 0 or not isinstance(index, pd.DatetimeIndex):
        return frame
    times = index.asi8
    first, last = in_unit(index, low, high)
    if first <= times[0] and times[-1] < last:
        return frame  # a piece read whole, as most are
    first, last = np.searchsorted(times, (first, last))
    return frame if first == 0 and last == len(frame) else frame.iloc[first:last]


def stitch(parts: list[tuple[Any, int, int]], start: int, end: int, fresh: Any = None) -> Any:
    """The rows of ``(frame, low, high)`` parts within ``[start, end)``, in time order, with
    the index frequency the parts share (as the function would have given it): a fresh frame
    that shares no buffer with the parts, which may be the memory tier's own (read with
    ``lookup(copy=False)``). ``fresh``, a frame the function has just returned and the call
    owns, is the result itself when it is all of it, as an uncached call's would be."""
    slices = [_slice(frame, max(low, start), min(high, end)) for frame, low, high in parts]
    rows = [s for s in slices if len(s)]
    if len(rows) <= 1:
        only = (rows or slices)[0]
        return only if only is fresh else only.copy(deep=True)
    result = _stacked(rows)
    if result is None:
        result = pd.concat(rows)
    if isinstance(result, pd.DataFrame):
        # Both hand the result the first part's columns object, which may be the memory tier's:
        # a caller renaming the result's columns in place must not rename a part's.
        result.columns = result.columns.copy()
    freqs = {s.index.freq for s in rows}
    if len(freqs) == 1 and None not in freqs:
        # Pieces that do not join on that grid keep no frequency, as pandas would say.
        with contextlib.suppress(ValueError):
            result.index = pd.DatetimeIndex(result.index, freq=freqs.pop())
    return result


def _stacked(rows: list[Any]) -> pd.DataFrame | None:
    """``pd.concat(rows)`` of frames laid out alike in numpy blocks of numbers, stacked one
    block at a time, for a fraction of what pd.concat spends reconciling each part's columns
    and blocks (tens of µs a part: milliseconds for a read stitched from a hundred). None for
    any other parts."""
    first = rows[0]
    layout = _layout(first)
    if layout is None or _from_blocks is None or not first.columns.is_unique:
        return None
    columns = first.columns
    for part in rows[1:]:
        names = part.columns
        if names is not columns and (
            names.dtype != columns.dtype
            or names.names != columns.names
            or not names.equals(columns)
        ):
            return None
        if _layout(part) != layout:
            return None
    blocks = [
        (
            np.concatenate([part._mgr.blocks[i].values for part in rows], axis=1),
            block.mgr_locs.as_array,
        )
        for i, block in enumerate(first._mgr.blocks)
    ]
    # pd.concat's own index: name, zone, unit and frequency.
    index = first.index.append([part.index for part in rows[1:]])
    return _from_blocks(blocks, index=index, columns=columns)


def _layout(part: Any) -> tuple[Any, ...] | None:
    """The dtype and columns of each numpy block of a plain frame of numbers with nothing
    pd.concat would carry over (attrs, flags) and a DatetimeIndex; else None."""
    if (
        type(part) is not pd.DataFrame
        or part.attrs
        or not part.flags.allows_duplicate_labels
        or type(part.index) is not pd.DatetimeIndex
    ):
        return None
    # pandas' block manager is internal: a pandas without it stitches by pd.concat.
    blocks = getattr(getattr(part, "_mgr", None), "blocks", None)
    if blocks is None:
        return None
    layout = []
    for block in blocks:
        values = block.values
        if type(values) is not np.ndarray or values.dtype.kind not in "biufc":
            return None
        locs = block.mgr_locs.indexer
        where = (locs.start, locs.stop, locs.step) if isinstance(locs, slice) else locs.tobytes()
        layout.append((values.dtype, where))
    return tuple(layout)
