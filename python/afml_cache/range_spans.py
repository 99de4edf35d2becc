"""The time arithmetic of range loaders: moments in ns since the epoch (UTC), half-open spans,
the pieces of a family's coverage, the live edge's clock, and stitching frames by time."""

from __future__ import annotations

import contextlib
import datetime
import functools
import importlib
import uuid
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from pandas.tseries.offsets import BaseOffset, Tick

from afml_cache._core import fingerprint
from afml_cache.errors import FingerprintError

try:
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # an older pandas: parts are stitched by pd.concat
    _from_blocks = None

__all__ = [
    "Clock",
    "Piece",
    "Style",
    "align",
    "as_argument",
    "check_calendar",
    "floor_to_unit",
    "form_of",
    "gaps",
    "in_unit",
    "moment",
    "show",
    "stitch",
]

_NS_PER_MINUTE = 60_000_000_000
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_EARLIEST, _LATEST = pd.Timestamp.min.value, pd.Timestamp.max.value


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


class _Trading(NamedTuple):
    """A calendar's trading minutes and the moments its trading stops (ns, sorted): the end of
    each run of consecutive trading minutes, a session's close or the start of its break."""

    minutes: np.ndarray
    closes: np.ndarray


@functools.cache
def _trading(name: str) -> _Trading:
    """The calendar's trading time (loaded once a process)."""
    calendars = importlib.import_module("exchange_calendars")
    with warnings.catch_warnings():
        # exchange_calendars reads Series.values, which pandas 3.1 deprecates: theirs to fix.
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        calendar = calendars.get_calendar(name)
    minutes = np.asarray(calendar.minutes.asi8, dtype=np.int64)
    last = np.flatnonzero(np.diff(minutes) != _NS_PER_MINUTE)
    return _Trading(minutes, np.append(minutes[last], minutes[-1]) + _NS_PER_MINUTE)


class Clock:
    """Measures the live edge: in wall-clock time, or in a calendar's trading time."""

    def __init__(self, calendar: str | None):
        self.calendar = calendar

    def _trading(self, *moments: int) -> _Trading | None:
        """The calendar's trading time, if it spans ``moments`` (else wall time applies)."""
        if self.calendar is None:
            return None
        trading = _trading(self.calendar)
        minutes = trading.minutes
        if all(minutes[0] <= t <= minutes[-1] for t in moments):
            return trading
        return None

    def window_start(self, computed: int, window: int) -> int:
        """The moment ``window`` (of trading time) before ``computed``."""
        trading = self._trading(computed)
        if trading is None:
            return computed - window
        minutes = trading.minutes
        back = int(np.searchsorted(minutes, computed)) - -(-window // _NS_PER_MINUTE)
        return int(minutes[back]) if back >= 0 else int(minutes[0])

    def expired(self, computed: int, now: int, ttl: int) -> bool:
        """Whether rows still forming at ``computed`` are stale at ``now``: ``ttl`` (of trading
        time) later, or, fetched while the market was open, once that session closed (or broke
        for lunch): its rows up to then exist, however little trading time passed."""
        trading = self._trading(computed, now)
        if trading is None:
            return now - computed >= ttl
        minutes, closes = trading
        passed = np.searchsorted(minutes, now) - np.searchsorted(minutes, computed)
        if int(passed) * _NS_PER_MINUTE >= ttl:
            return True
        last = int(np.searchsorted(minutes, computed, side="right")) - 1
        if last < 0 or computed >= minutes[last] + _NS_PER_MINUTE:
            return False  # fetched while closed: only trading time expires it
        return bool(now >= closes[np.searchsorted(closes, computed, side="right")])


class Piece(NamedTuple):
    """The part ``[start, end)`` of a family's coverage and the entry holding its rows (the
    entry may hold more: a piece cut by a newer one keeps its entry). Rows from ``live_from``
    on were still forming when computed; they expire ``live_ttl`` after ``computed`` (or at
    the close, with a calendar: `Clock.expired`)."""

    start: int
    end: int
    digest: str
    computed: int
    live_from: int | None
    form: str | None  # `form_of` its rows; None when it has none

    def cut(self, low: int, high: int) -> list[Piece]:
        """What is left of this piece outside ``[low, high)``."""
        left = []
        for start, end in ((self.start, min(self.end, low)), (max(self.start, high), self.end)):
            if start < end:
                live = (
                    self.live_from if self.live_from is not None and self.live_from < end else None
                )
                left.append(self._replace(start=start, end=end, live_from=live))
        return left


def form_of(rows: Any) -> str | None:
    """The digest of what a piece's rows carry beside their values, which the function may
    have decided from the rows of its span: type, columns (or name), dtypes (categories
    included), and the index's dtype and name; None for no rows (a holiday's piece is never
    stitched). Pieces of other forms cannot make what one call over their spans returns: a
    column that is float where a span missed a value and int elsewhere, categories found in the
    rows, columns of the symbols that traded, ``attrs`` that name the span."""
    if len(rows) == 0:
        return None
    if isinstance(rows, pd.DataFrame):
        form: tuple[Any, ...] = ("frame", rows.columns, tuple(rows.dtypes))
    else:
        form = ("series", rows.name, rows.dtype)
    if rows.attrs:  # set from the span (``attrs["asked"] = (start, end)``): pd.concat drops them
        try:
            form = (*form, ("attrs", fingerprint(rows.attrs)))
        except FingerprintError:  # unreadable: a form of its own, never stitched
            form = (*form, ("attrs", uuid.uuid4().hex))
    return fingerprint((form, rows.index.dtype, rows.index.name))


class Style(NamedTuple):
    """How a request's bounds were given, which is how the function is given its gaps'
    bounds: the start's time zone (None: naive) and each bound's unit. A family per style,
    as the function may shape its rows by them."""

    zone: datetime.tzinfo | None
    start_unit: str
    end_unit: str

    def key(self) -> tuple[str | None, str, str] | None:
        """The style as the family's key names it, the zone by its type and name (pytz's,
        zoneinfo's and dateutil's Europe/Paris are three: the function's rows carry the one it
        is given); None for a zone whose name is its object's address, which no key can hold."""
        zone = None
        if self.zone is not None:
            zone = f"{type(self.zone).__module__}.{type(self.zone).__qualname__} {self.zone}"
            if " at 0x" in zone:
                return None
            if _named_apart(self.zone):
                zone = f"{zone} {fingerprint(self.zone)}"
        return zone, self.start_unit, self.end_unit


def _named_apart(zone: datetime.tzinfo) -> bool:
    """Whether a zone's name leaves out what it is: a fixed offset given a name of its own
    (``timezone(timedelta(hours=-5), "EXCH")``), dateutil's ``tzlocal()`` (the machine's zone,
    whatever it is). Those are keyed by their fingerprint too; the names of others say it."""
    if isinstance(zone, datetime.timezone):
        return str(zone) != str(datetime.timezone(zone.utcoffset(None) or datetime.timedelta()))
    return type(zone).__name__ == "tzlocal"


def moment(value: Any) -> tuple[int, datetime.tzinfo | None, str]:
    """A start or end as ns since the epoch in UTC (naive counts as UTC), its time zone and its
    unit."""
    if value is None or isinstance(value, bool | int | float):
        raise TypeError(f"not a time: {value!r}")
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise ValueError("NaT is not a time")
    zone = stamp.tzinfo
    if zone is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.as_unit("ns").value), zone, stamp.unit


def as_argument(ns: int, zone: datetime.tzinfo | None, unit: str) -> pd.Timestamp:
    """A gap's bound as the function is given it: a Timestamp in the zone and unit the request
    gave (a finer unit if that one cannot hold it)."""
    stamp = pd.Timestamp(ns, unit="ns")
    with contextlib.suppress(ValueError):
        stamp = stamp.as_unit(unit, round_ok=False)
    if zone is None:
        return stamp
    try:
        return stamp.tz_localize("UTC").tz_convert(zone)
    except (OverflowError, ValueError):  # beyond what pandas holds in that zone: in UTC
        return stamp.tz_localize("UTC")


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


def _fixed_step(chunk: BaseOffset) -> pd.Timedelta | None:
    """The duration of a `DateOffset` of hours, minutes or finer (a fixed step within a day),
    or None."""
    fields = getattr(chunk, "kwds", None)
    if type(chunk) is not pd.DateOffset or not fields or not set(fields) <= _TIME_FIELDS:
        return None
    step = pd.Timedelta(**fields) * chunk.n
    return step if pd.Timedelta(0) < step <= pd.Timedelta(days=1) else None


_TIME_FIELDS = frozenset({"hours", "minutes", "seconds", "milliseconds", "microseconds"})
# Steps from a day's start to a boundary of `chunk`, at most (a minute's DateOffset: 1,440).
_MOST_STEPS = 10_000


def align(gap: tuple[int, int], chunk: BaseOffset) -> tuple[int, int]:
    """A gap widened to ``chunk`` boundaries (in UTC), or to the earliest (latest) time pandas
    holds where the boundary lies beyond it: an open-ended request, to Timestamp.max."""
    return _boundary(gap[0], chunk, down=True), _boundary(gap[1], chunk, down=False)


def _boundary(ns: int, chunk: BaseOffset, down: bool) -> int:
    """The last ``chunk`` boundary at or before (``down``), or the first at or after, ``ns``;
    ``ns`` itself for an offset whose boundaries lie too far apart to step through."""
    stamp = pd.Timestamp(ns, unit="ns")
    try:
        step = _fixed_step(chunk)
        if isinstance(chunk, Tick):
            found = stamp.floor(chunk) if down else stamp.ceil(chunk)
        elif step is not None:  # `DateOffset(seconds=10)`: whole steps from the day's start
            day = stamp.normalize()
            found = day + ((stamp - day) // step) * step
            if not down and found < stamp:
                found = found + step
        else:
            found = chunk.rollback(stamp.normalize())
            # Offsets finer than a day (business hours, `DateOffset(hours=6)`) have boundaries
            # between midnight and ``stamp``: step to the last one at or before it.
            for _ in range(_MOST_STEPS):
                after = found + chunk
                if after > stamp:
                    break
                found = after
            else:
                return ns
            if not down and found < stamp:
                found = found + chunk
        return int(found.as_unit("ns").value)
    except (OverflowError, ValueError):  # pandas' OutOfBoundsDatetime is a ValueError
        return _EARLIEST if down else _LATEST


def in_unit(index: pd.DatetimeIndex, low: int, high: int) -> tuple[int, int]:
    """``[low, high)`` (ns) in the index's unit, so its ``asi8`` (UTC when it has a zone)
    compares without a conversion: a moment t is inside when low <= t < high."""
    return _in_steps(low, high, _UNIT_NS[index.unit])


def _in_steps(low: int, high: int, step: int) -> tuple[int, int]:
    """``[low, high)`` (ns) in units of ``step`` ns, rounded up (see `in_unit`)."""
    return -(-low // step), -(-high // step)


@dataclass(slots=True)
class _Shape:
    """What stitching reads of a frame, learnt once per frame object (`_shape`): parts read
    from the memory tier are the same objects on every read, and a read stitched from a hundred
    of them would otherwise inspect each one's index, blocks and columns again. It refers to
    them weakly, so that it keeps alive nothing that a frame changed since drops."""

    frame: weakref.ref[Any]
    # What it was learnt from: whatever changes what is learnt of a frame gives it another
    # index, other blocks or other columns (a column inserted is a block more), and it is
    # learnt again.
    index: weakref.ref[Any]
    blocks: tuple[weakref.ref[Any], ...] | None
    columns: weakref.ref[Any] | None
    rows: int
    step: int  # ns a unit of its DatetimeIndex (0: no rows, or another index)
    first: int  # its first and last time, in that unit
    last: int
    # See `_layout`; learnt when first stacked (a frame read whole is never stacked).
    layout: tuple[Any, ...] | _Unknown | None


_SHAPES: dict[int, _Shape] = {}  # by id() of the frame, while it lives
_LAYOUTS: dict[tuple[Any, ...], tuple[Any, ...]] = {}


def _shape(frame: Any, index: Any, blocks: Any, columns: Any) -> _Shape:
    """What is learnt of ``frame``, whose index, blocks and columns these are."""
    key = id(frame)
    known = _SHAPES.get(key)
    if (
        known is not None
        and known.frame() is frame
        and known.index() is index
        and _same(known.columns, columns)
        and _same_blocks(known.blocks, blocks)
    ):
        return known
    step = first = last = 0
    if isinstance(index, pd.DatetimeIndex) and len(index):
        step = _UNIT_NS[index.unit]
        times = index.asi8
        first, last = int(times[0]), int(times[-1])
    shape = _Shape(
        weakref.ref(frame, functools.partial(_forget, key)),
        weakref.ref(index),
        None if blocks is None else tuple(map(weakref.ref, blocks)),
        None if columns is None else weakref.ref(columns),
        len(index),
        step,
        first,
        last,
        _UNKNOWN,
    )
    _SHAPES[key] = shape
    return shape


def _same(ref: weakref.ref[Any] | None, thing: Any) -> bool:
    return thing is None if ref is None else ref() is thing


def _same_blocks(refs: tuple[weakref.ref[Any], ...] | None, blocks: Any) -> bool:
    if refs is None or blocks is None:
        return refs is None and blocks is None
    return len(refs) == len(blocks) and all(
        ref() is block for ref, block in zip(refs, blocks, strict=True)
    )


def _forget(key: int, gone: weakref.ref[Any]) -> None:
    known = _SHAPES.get(key)
    if known is not None and known.frame is gone:
        del _SHAPES[key]


class _Unknown:
    """A layout not learnt yet."""


_UNKNOWN = _Unknown()


class _Cut(NamedTuple):
    """The rows ``start:stop`` of a part, ``whole`` when they are all of it."""

    frame: Any
    index: Any
    blocks: Any
    shape: _Shape
    start: int
    stop: int
    whole: bool

    def rows(self) -> Any:
        return self.frame if self.whole else self.frame.iloc[self.start : self.stop]

    def index_rows(self) -> Any:
        return self.index if self.whole else self.index[self.start : self.stop]

    def times(self) -> np.ndarray:
        times = self.index.asi8
        return times if self.whole else times[self.start : self.stop]

    def block(self, i: int) -> np.ndarray:
        """The rows of the part's ``i``th block of numbers (laid out columns by rows)."""
        values = self.blocks[i].values
        return values if self.whole else values[:, self.start : self.stop]


def _cut(frame: Any, low: int, high: int) -> _Cut:
    """The rows of ``frame`` within ``[low, high)`` (ns)."""
    index = frame.index
    blocks = getattr(getattr(frame, "_mgr", None), "blocks", None)
    shape = _shape(frame, index, blocks, getattr(frame, "columns", None))
    step, rows = shape.step, shape.rows
    every_row = _Cut(frame, index, blocks, shape, 0, rows, True)
    if not step:  # no rows, or no times (only a frame without rows has another index)
        return every_row
    first, last = _in_steps(low, high, step)
    if first <= shape.first and shape.last < last:
        return every_row  # a piece read whole, as most are
    start, stop = np.searchsorted(index.asi8, (first, last))
    return _Cut(frame, index, blocks, shape, int(start), int(stop), start == 0 and stop == rows)


def stitch(parts: list[tuple[Any, int, int]], start: int, end: int, fresh: Any = None) -> Any:
    """The rows of ``(frame, low, high)`` parts within ``[start, end)``, in time order, with
    the index frequency the parts share (as the function would have given it): a fresh frame
    that shares no buffer with the parts, which may be the memory tier's own (read with
    ``lookup(copy=False)``). ``fresh``, a frame the function has just returned and the call
    owns, is the result itself when it is all of it, as an uncached call's would be."""
    cuts = [_cut(frame, max(low, start), min(high, end)) for frame, low, high in parts]
    rows = [cut for cut in cuts if cut.stop > cut.start]
    if len(rows) <= 1:
        only = (rows or cuts)[0].rows()
        if only is fresh:
            return only
        # A deep copy keeps the buffers of the index and the columns, which np.asarray hands
        # out writable: written, they would change every later read of the piece.
        copied = only.copy(deep=True)
        copied.index = own_labels(copied.index)
        if isinstance(copied, pd.DataFrame):
            copied.columns = own_labels(copied.columns)
        return own_categories(copied)
    result = _stacked(rows)
    if result is None:
        result = pd.concat([cut.rows() for cut in rows])
    if isinstance(result, pd.DataFrame):
        # Both hand the result the first part's columns object, which may be the memory tier's:
        # a caller renaming the result's columns in place, or writing np.asarray(its columns),
        # must not change a part's.
        result.columns = own_labels(result.columns)
    result = own_categories(result)
    freqs = {cut.index.freq for cut in rows}
    if len(freqs) == 1 and None not in freqs and result.index.freq is None:
        # pandas before 3.0 keeps no frequency when concatenating; pieces that do not join on
        # that grid keep none, as pandas would say.
        with contextlib.suppress(ValueError):
            result.index = pd.DatetimeIndex(result.index, freq=freqs.pop())
    return result


def own_labels(labels: pd.Index) -> pd.Index:
    """A copy of an index or columns that shares no buffer with them (np.asarray hands those
    out writable). pandas' deep copy of a MultiIndex keeps the tuples it listed, and of a
    RangeIndex the numbers it listed, so those are built again."""
    if isinstance(labels, pd.RangeIndex):
        return pd.RangeIndex(labels.start, labels.stop, labels.step, name=labels.name)
    if isinstance(labels, pd.CategoricalIndex):  # whose dtype a copy keeps, categories and all
        return pd.CategoricalIndex(_own_categorical(labels.array), name=labels.name)
    copied = labels.copy(deep=True)
    if isinstance(copied, pd.MultiIndex):
        return pd.MultiIndex(
            levels=copied.levels,
            codes=copied.codes,
            names=copied.names,
            sortorder=copied.sortorder,
            verify_integrity=False,
        )
    return copied


def own_categories(result: Any) -> Any:
    """``result`` (a frame or series of the caller's) with categories of its own: a copy, or
    pd.concat, keeps the parts' dtype, whose categories np.asarray hands out writable."""
    if isinstance(result, pd.Series):
        if not isinstance(result.dtype, pd.CategoricalDtype):
            return result
        values = _own_categorical(result.array)
        owned = pd.Series(values, index=result.index, name=result.name, copy=False)
        owned.attrs = result.attrs
        return owned.set_flags(allows_duplicate_labels=result.flags.allows_duplicate_labels)
    for i, dtype in enumerate(result.dtypes):
        if isinstance(dtype, pd.CategoricalDtype):
            result.isetitem(i, _own_categorical(result.iloc[:, i].array))
    return result


def _own_categorical(values: pd.Categorical) -> pd.Categorical:
    """``values`` with categories of their own (their codes copied too)."""
    dtype = pd.CategoricalDtype(own_labels(values.categories), ordered=values.ordered)
    return pd.Categorical.from_codes(values.codes.copy(), dtype=dtype, validate=False)


def _stacked(rows: list[_Cut]) -> pd.DataFrame | None:
    """``pd.concat`` of the rows of frames laid out alike in numpy blocks of numbers, stacked
    one block at a time, for a fraction of what pd.concat spends reconciling each part's
    columns and blocks (tens of µs a part: milliseconds for a read stitched from a hundred).
    None for any other parts."""
    first = rows[0].frame
    layout = _layout_of(rows[0])
    if layout is None or _from_blocks is None:
        return None
    # The columns' names, which a caller may set in place, are read on each call.
    label = "names" if isinstance(first.columns, pd.MultiIndex) else "name"
    names = getattr(first.columns, label)
    for cut in rows:
        part = cut.frame
        laid = _layout_of(cut)
        if (
            (laid is not layout and laid != layout)
            or part.attrs
            or not part.flags.allows_duplicate_labels
            or getattr(part.columns, label) != names
        ):
            return None
    blocks = [
        (np.concatenate([cut.block(i) for cut in rows], axis=1), block.mgr_locs.as_array)
        for i, block in enumerate(rows[0].blocks)
    ]
    return _from_blocks(blocks, index=_joined_index(rows), columns=first.columns)


def _joined_index(rows: list[_Cut]) -> pd.DatetimeIndex:
    """pd.concat's index of parts whose indexes share a dtype (`_layout`): its name, zone
    and unit, and its frequency."""
    first = rows[0].index
    if first.freq is not None:  # pandas' append keeps it if the parts join on its grid
        indexes = [cut.index_rows() for cut in rows]
        return indexes[0].append(indexes[1:])
    # Else made of the times alone (in the unit, since the epoch in UTC): append spends µs on
    # each part.
    names = {cut.index.name for cut in rows}
    return pd.DatetimeIndex(
        np.concatenate([cut.times() for cut in rows]),
        dtype=first.dtype,
        name=first.name if len(names) == 1 else None,
        copy=False,
    )


def _unique(columns: pd.Index) -> bool:
    """``columns.is_unique``, without the hash table pandas builds for it (tens of µs for a
    frame read from disk, each piece's its own) when the labels are a few plain strings."""
    labels = tuple(columns)
    if len(labels) <= 64 and all(type(label) is str for label in labels):
        return len(set(labels)) == len(labels)
    return bool(columns.is_unique)


def _layout_of(cut: _Cut) -> tuple[Any, ...] | None:
    shape = cut.shape
    if isinstance(shape.layout, _Unknown):
        shape.layout = _layout(cut.frame, cut.blocks)
    return shape.layout


def _layout(part: Any, blocks: Any) -> tuple[Any, ...] | None:
    """The dtype and columns of each numpy block of a plain frame of numbers, the dtype of its
    DatetimeIndex, and its column labels (unique) with their type and dtype; else None. What
    pd.concat would also carry over may change in place, and is checked on each call instead
    (`_stacked`: attrs, flags, the columns' names)."""
    if (
        type(part) is not pd.DataFrame
        or type(part.index) is not pd.DatetimeIndex
        or blocks is None  # pandas' block manager is internal: without it, pd.concat
        or not _unique(part.columns)
    ):
        return None
    layout = []
    for block in blocks:
        values = block.values
        if type(values) is not np.ndarray or values.dtype.kind not in "biufc":
            return None
        locs = block.mgr_locs.indexer
        where = (locs.start, locs.stop, locs.step) if isinstance(locs, slice) else locs.tobytes()
        layout.append((values.dtype, where))
    columns = part.columns
    found = (tuple(layout), part.index.dtype, type(columns), columns.dtype, tuple(columns))
    # One object for equal layouts, so that parts laid out alike compare by identity.
    if len(_LAYOUTS) > 1024:
        _LAYOUTS.clear()
    try:
        return _LAYOUTS.setdefault(found, found)
    except TypeError:  # a label that cannot be hashed
        return found
