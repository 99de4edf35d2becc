"""Features over frames that grew: ``@time_aware_cacheable(incremental=True, lookback=N)``.

For ``f(frame, **params)`` whose output row r depends on the input rows up to ``lookback``
before r (a number of rows, or a fixed time offset like ``"20D"``) and on none after it (or up to
``lookahead`` after it, for labels that look forward). When a call's frame extends a frame
computed before -- the same leading rows, byte for byte -- only the new rows are computed, fed
with ``lookback`` rows before them, and the last ``lookahead`` rows of the old result are
computed again; the result is the stored prefix plus that tail.

Which frames were computed is found by content, never by sampling: every call hashes its frame
in blocks of ``BLOCK_ROWS`` rows, and each stored result keeps its frame's block digests in an
index of its family's frames that start with the same first row (one per symbol, say). A frame
extends a stored one when the stored frame's whole blocks have the same digests and its last,
partial block hashes the same in the new frame; a change anywhere in the old rows is a full
computation. A family is what makes two frames' results comparable: the function, its code,
every argument but the frame, and the frame's columns (with their names), dtypes and index
kind.

A result computed from a stored one is stored as its rows from the first one computed again,
beside the key of the whole result whose rows before them it keeps (stitched on read), while
those rows are at most MAX_TAIL_SHARE of it: each day appended then writes about a day of rows,
not the years before it again.
"""

from __future__ import annotations

import copy
import functools
import inspect
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from afml_cache._core import fingerprint
from afml_cache._store.writer import flush_writes
from afml_cache.calls import NO_RANGES, TimeOptions, is_number, time_span, to_ns
from afml_cache.decorators import Origin, _Engine, _Options, finish_wrapper
from afml_cache.errors import CacheError, FingerprintError
from afml_cache.range_spans import own_categories, own_labels

if TYPE_CHECKING:
    from afml_cache._store import KeyLock
    from afml_cache._store.entries import Entries

__all__ = ["BLOCK_ROWS", "FeatureEngine", "Window", "check_window", "feature_function"]

# Rows hashed per block digest: few digests per frame, and at most one block (the stored frame's
# last, partial one) hashed again per stored prefix tried.
BLOCK_ROWS = 262144
# Stored frames kept per index (a family's frames with one first row), newest first: a frame
# that grows each day needs one.
MAX_PREFIXES = 8
# Floating-point results of running-window code (pandas' rolling sums, variances) drift from a
# fresh computation of the same window by up to ~1e-4 relative at price level; verify= calls a
# difference beyond this, relative to the column's scale, a mismatch.
NOISE = 1e-3
# The largest share of a result's rows stored as its own rows beside a whole result it extends;
# a larger one is stored whole, so a result's rows are read from at most two entries.
MAX_TAIL_SHARE = 0.25
# The first item of a stored result that is a whole result's first rows plus its own (`_Parts`).
_STITCHED = "afml-cache stitched result"


@dataclass(frozen=True)
class Window:
    """How far a function's output rows reach into its input: ``lookback`` rows (an int) or a
    fixed time span (a Timedelta) before each row, ``lookahead`` after it; ``verify`` is the
    fraction of incremental calls checked against a full computation."""

    lookback: int | pd.Timedelta
    lookahead: int | pd.Timedelta = 0
    verify: float = 0.0


def check_window(
    incremental: bool, lookback: Any, lookahead: Any, verify: Any, loader_range: Any = None
) -> Window:
    """The `Window` of ``time_aware_cacheable(incremental=True, lookback=, lookahead=,
    verify=)``; ``ValueError``/``TypeError`` naming the option and what it takes."""
    if not incremental:
        given = [
            f"{name}="
            for name, value in (
                ("lookback", lookback),
                ("lookahead", lookahead),
                ("verify", verify),
            )
            if value is not None
        ]
        raise TypeError(
            f"{', '.join(given)} apply to time_aware_cacheable(incremental=True, ...): add "
            "incremental=True, or leave them out"
        )
    if loader_range is not None:
        raise TypeError(
            "time_aware_cacheable takes range=(...) for a loader or incremental=True for a "
            "feature of a frame, not both"
        )
    if lookback is None:
        raise TypeError(
            "time_aware_cacheable(incremental=True) needs lookback=: how many rows (an int) or "
            "how much time (like '20D' or '390min') before a row its output depends on"
        )
    verify_fraction = 0.0 if verify is None else verify
    if (
        isinstance(verify_fraction, bool)
        or not isinstance(verify_fraction, (int, float))
        or not 0 <= verify_fraction <= 1
    ):
        raise ValueError(
            f"verify={verify!r}: give the fraction of incremental calls to check against a full "
            "computation, between 0 and 1 (e.g. 0.01), or None"
        )
    return Window(
        _reach("lookback", lookback),
        _reach("lookahead", 0 if lookahead is None else lookahead),
        float(verify_fraction),
    )


def _reach(option: str, value: Any) -> int | pd.Timedelta:
    """Rows (a non-negative int) or a fixed, non-negative span of time."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{option}={value}: give a number of rows >= 0")
        return value
    if isinstance(value, str) and is_number(value):
        number = value.strip()
        raise ValueError(
            f"{option}={value!r}: a number in a string has no unit (pandas would read it as "
            f"nanoseconds); give rows as an int ({option}={number}) or a span of time with its "
            f"unit ('{number}min', '{number}s')"
        )
    span = time_span(value)
    if span is None:
        raise ValueError(
            f"{option}={value!r}: give a number of rows (an int) or a fixed span of time like "
            "'20D', '390min' or pd.Timedelta(hours=6) (not a calendar offset like a month)"
        )
    return span


def feature_function(
    fn: Callable[..., Any], options: _Options, time_options: TimeOptions, window: Window
) -> Any:
    """Decorates ``fn(frame, ...)`` as ``time_aware_cacheable(incremental=True, ...)``."""
    if inspect.iscoroutinefunction(fn) or not inspect.isfunction(fn):
        raise TypeError(
            f"time_aware_cacheable(incremental=True) takes a plain function of a frame, got "
            f"{fn!r}; await the data first and pass the frame to one"
        )
    engine = FeatureEngine(fn, options, time_options, window)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return engine.call(args, kwargs)

    return finish_wrapper(wrapper, fn, engine, invalidate=engine.invalidate)


class _Prefix(NamedTuple):
    """A stored result and the frame it was computed from: that frame's rows and block digests
    (whole blocks, then the last partial block's, if any), and the key of the whole result it
    is stored beside ("" when it is whole; None in an index written before bases were named).
    Kept in the family's index as a plain tuple, so the index unpickles whatever this module
    becomes."""

    rows: int
    digests: tuple[str, ...]
    key: str
    base_key: str | None


class _Parts(NamedTuple):
    """A stored result: the rows before ``cut`` of the whole result stored under ``base_key``
    (``base``, read without a copy), then ``tail``'s rows; ``tail`` is None when the result is
    ``base`` itself. Stored as ``(_STITCHED, base_key, cut, tail)`` when ``tail`` is not None."""

    base_key: str
    base: Any
    cut: int
    tail: Any


@dataclass(frozen=True)
class _Grown:
    """One call: the frame (the argument ``frame_name``; `_sliceable`), its block digests, the
    key of its result, and the key of the index of the stored frames it may extend."""

    entries: Entries
    frame: pd.DataFrame | pd.Series
    frame_name: str
    sliceable: tuple[Any, list[Any]]
    digests: tuple[str, ...]
    key: str
    index_key: str


class FeatureEngine(_Engine):
    """What a function with ``incremental=True`` does on each call: the decorator engine's keys,
    locks, statistics and warnings, with a result per frame that extends the stored result of
    the longest frame it grew from."""

    def __init__(
        self,
        fn: Callable[..., Any],
        options: _Options,
        time_options: TimeOptions | None,
        window: Window,
        name: str | None = None,
        origin: Origin | None = None,
    ):
        super().__init__(fn, options, time_options, name, origin)
        self.window = window
        self._random = random.Random()

    def __reduce__(self) -> tuple[Any, ...]:
        _, (fn, options, time_options, name, origin) = super().__reduce__()
        return (FeatureEngine, (fn, options, time_options, self.window, name, origin))

    # --- calls --------------------------------------------------------------------------------

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        start = self._begin()
        grown = self._grown(args, kwargs)
        if grown is None:
            return self.fn(*args, **kwargs)
        entries, key = grown.entries, grown.key
        watching, self._watching = self._watching, ()  # see `_Engine._watch`
        found, value, compute_time = self._stored_result(grown)
        if found:
            self._record_hit(entries, key, compute_time, start)
            return value
        lock = self._lock(entries, key)
        try:
            if lock is not None:  # another caller may have computed it while this one waited
                found, value, compute_time = self._stored_result(grown)
                if found:
                    self._record_hit(entries, key, compute_time, start)
                    return value
            computing = time.perf_counter()
            result, fed_rows, stored = self._compute(grown, args, kwargs)
            elapsed = time.perf_counter() - computing
            self._keep(grown, stored, elapsed, fed_rows, lock)
            lock = None
        finally:
            if lock is not None:
                lock.release()
        self._remember_prefix(grown, stored[1] if _is_stitched(stored) else "")
        self._record_miss(entries, key, elapsed, start)
        if watching:
            self._changed_while_running(watching)
        return result

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The key of the call's result (its family and every block of its frame); None when
        it would run uncached."""
        grown = self._grown(args, kwargs)
        return None if grown is None else grown.key

    def is_cached(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether the result for this very frame is stored, and the whole result it is stored
        beside, if any, without loading them (the family's index names that one)."""
        grown = self._grown(args, kwargs)
        if grown is None:
            return False
        entries = grown.entries
        try:
            if not entries.contains(grown.key):
                return False
            named = (p.base_key for p in self._prefixes(grown) if p.key == grown.key)
            base_key = next(named, None)
            if base_key is None:  # an index of before bases were named: read the entry
                found, stored, _ = self._lookup(entries, grown.key, copy=False)
                if not found:
                    return False
                base_key = stored[1] if _is_stitched(stored) else ""
            return not base_key or entries.contains(base_key)
        except (CacheError, OSError) as exc:
            self._warn_once("store", f"afml_cache: {self.name} computes again: {exc}")
            return False

    def precache(self, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Stores ``value`` as the call's result (one row per row of its frame), which later
        frames grown from it extend; False when the call would run uncached or the value could
        not be stored (said in one warning)."""
        grown = self._grown(args, kwargs)
        if grown is None:
            return False
        self._check_sorted(grown, 0)
        self._check_aligned(value, grown.frame)
        failures = self._unstored
        self._keep(grown, value, 0.0, 0, None, replace=True)
        flush_writes()  # its outcome, before answering, as the decorators' precache does
        self._report_failures()
        if self._unstored != failures:
            return False
        self._remember_prefix(grown, "")
        return True

    # --- what the call is ---------------------------------------------------------------------

    def _grown(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Grown | None:
        """The call's frame, family, digests and key; None when it runs uncached."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:  # the function, called, raises Python's own error
            return None
        bound.apply_defaults()
        frame_name = next(iter(bound.arguments))
        frame = bound.arguments[frame_name]
        if not isinstance(frame, (pd.DataFrame, pd.Series)):
            raise TypeError(
                f"{self.name}: incremental=True takes a pandas DataFrame or Series as the first "
                f"argument ({frame_name!r}), got {type(frame).__qualname__}; pass the frame "
                "first, or use time_aware_cacheable without incremental="
            )
        self._check_index(frame, frame_name)
        # The family: the usual key of the call with the frame's kind in place of its rows.
        bound.arguments[frame_name] = _FrameKind(frame, self.window)
        prepared = self._prepare(bound.args, bound.kwargs)
        if prepared is None:
            return None
        entries, family, _ = prepared
        sliceable = _sliceable(frame)
        digests = _block_digests(sliceable, 0, len(frame))
        key = fingerprint(("afml-cache incremental result", family, len(frame), digests))
        # A family's index is per first row: every frame grown from a stored one starts with its
        # first row, and a sweep over many symbols keeps an index (and its slots) per symbol.
        first_row = _block_digests(sliceable, 0, min(1, len(frame)))
        index_key = fingerprint(("afml-cache incremental prefixes", family, first_row))
        return _Grown(entries, frame, frame_name, sliceable, digests, key, index_key)

    def _check_index(self, frame: pd.DataFrame | pd.Series, frame_name: str) -> None:
        index = frame.index
        by_time = isinstance(self.window.lookback, pd.Timedelta) or isinstance(
            self.window.lookahead, pd.Timedelta
        )
        if by_time and not isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
            raise TypeError(
                f"{self.name}: lookback/lookahead given as time need a DatetimeIndex on "
                f"{frame_name!r}, which has a {type(index).__name__}; give them in rows instead"
            )

    def _check_sorted(self, grown: _Grown, first: int) -> None:
        """Refuses a frame whose index is not sorted from row ``first`` on (the rows before it
        are a stored frame's, checked when it was stored)."""
        if not grown.frame.index[first:].is_monotonic_increasing:
            raise ValueError(
                f"{self.name}: the index of {grown.frame_name!r} is not sorted ascending; "
                "incremental=True finds the rows a frame gained at its end: sort it first "
                "(frame.sort_index())"
            )

    # --- computing ----------------------------------------------------------------------------

    def _compute(
        self, grown: _Grown, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, int, Any]:
        """The result for the call's frame, how many of its rows the function was given, and
        what to store: the result, or its rows from the first one computed again with the key
        of the whole result that has the rows before them."""
        frame = grown.frame
        found = self._longest_prefix(grown)
        self._check_sorted(grown, 0 if found is None else found[0].rows - 1)
        if found is not None:
            prefix, parts = found
            first, fed = self._tail_start(frame, prefix.rows)
            if first > 0:
                new = self._run_on(frame, fed, args, kwargs).iloc[first - fed :]
                # Rows before `first` stay as stored: the whole result's before `cut`, then those
                # of the stored result's own rows that come before `first`.
                cut = min(first, parts.cut)
                tail = new
                if first > parts.cut:
                    tail = _stitch(parts.tail, new, first - parts.cut, frame.index[parts.cut :])
                result = None if tail is None else _stitch(parts.base, tail, cut, frame.index)
                if result is not None:
                    stored: Any = result
                    if len(tail) <= MAX_TAIL_SHARE * len(frame):
                        stored = (_STITCHED, parts.base_key, cut, tail)
                    if self.window.verify and self._random.random() < self.window.verify:
                        verified = self._verified(result, frame, args, kwargs)
                        if verified is not result:
                            result = stored = verified
                    return result, len(frame) - fed, stored
        result = self._run_on(frame, 0, args, kwargs)
        return result, len(frame), result

    def _tail_start(self, frame: pd.DataFrame | pd.Series, old_rows: int) -> tuple[int, int]:
        """(the first row to compute again, the first row to feed the function) for a frame
        whose first ``old_rows`` rows have a stored result."""
        index, ahead, back = frame.index, self.window.lookahead, self.window.lookback
        if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
            ahead, back = _in_unit(ahead, index.unit), _in_unit(back, index.unit)
        if isinstance(ahead, int):
            first = max(0, old_rows - ahead)
        else:
            # Rows whose look ahead reaches the last old row: the first bar at or after t + ahead
            # (a vertical barrier) may be a new one, across a night or a weekend, and a window
            # up to t + ahead holds the new rows stamped as the last old one (ticks).
            before = _earlier(index[old_rows - 1], ahead)
            first = 0 if before is None else int(index.searchsorted(before, side="left"))
        if isinstance(back, int):
            return first, max(0, first - back)
        # From the last bar at or before t - back (as of t minus a day, over a weekend: Friday),
        # and every row stamped as it.
        before = _earlier(index[first], back)
        last = -1 if before is None else int(index.searchsorted(before, side="right")) - 1
        return first, 0 if last < 0 else int(index.searchsorted(index[last], side="left"))

    def _run_on(
        self,
        frame: pd.DataFrame | pd.Series,
        first: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """The function on the rows of ``frame`` from ``first`` on, its result checked."""
        bound = self.signature.bind(*args, **kwargs)
        fed = frame.iloc[first:] if first else frame
        bound.arguments[next(iter(bound.arguments))] = fed
        result = self.fn(*bound.args, **bound.kwargs)
        self._check_aligned(result, fed)
        return result

    def _check_aligned(self, result: Any, fed: pd.DataFrame | pd.Series) -> None:
        if isinstance(result, (pd.DataFrame, pd.Series)) and result.index.equals(fed.index):
            return
        got = (
            f"{len(result)} rows on another index"
            if isinstance(result, (pd.DataFrame, pd.Series))
            else f"a {type(result).__qualname__}"
        )
        raise ValueError(
            f"{self.name} returned {got} for {len(fed)} input rows: incremental=True needs a "
            "DataFrame or Series with one row per input row, on the input's index; drop or "
            "reindex rows after the call, or use it without incremental="
        )

    def _verified(
        self,
        result: Any,
        frame: pd.DataFrame | pd.Series,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """``result``, or the full computation when they differ beyond noise (with a warning)."""
        full = self._run_on(frame, 0, args, kwargs)
        differing = _rows_differing(result, full)
        if differing is None:
            return result
        self._warn_once(
            "verify",
            f"afml_cache: {self.name}: the incremental result differs from the full computation "
            f"from row {differing} of {len(frame)} ({frame.index[differing]}); the full result "
            "is used. Its output reaches further back (or ahead) than lookback= (lookahead=) "
            "says: raise them",
        )
        return full

    # --- the family's stored prefixes ---------------------------------------------------------

    def _longest_prefix(self, grown: _Grown) -> tuple[_Prefix, _Parts] | None:
        """The longest stored frame that the call's frame extends, with its stored result."""
        rows = len(grown.frame)
        for prefix in self._prefixes(grown):
            if not 0 < prefix.rows < rows:
                continue
            whole = prefix.rows // BLOCK_ROWS
            if prefix.digests[:whole] != grown.digests[:whole]:
                continue
            if prefix.rows % BLOCK_ROWS and prefix.digests[whole:] != _block_digests(
                grown.sliceable, whole * BLOCK_ROWS, prefix.rows
            ):
                continue
            # No copy: the stored result is only read into the stitched one (`_stitch`).
            found, stored, _ = self._lookup(grown.entries, prefix.key, copy=False)
            parts = self._parts(grown.entries, prefix.key, stored) if found else None
            if parts is not None:
                return prefix, parts
        return None

    def _stored_result(self, grown: _Grown) -> tuple[bool, Any, float]:
        """``_lookup`` of the call's result; one stored as its own rows beside a whole result
        is stitched to that result's rows (a miss when that result is gone)."""
        found, value, compute_time = self._lookup(grown.entries, grown.key)
        if found and _is_stitched(value):
            parts = self._parts(grown.entries, grown.key, value)
            value = None
            if parts is not None:
                value = _stitch(parts.base, parts.tail, parts.cut, grown.frame.index)
            found = value is not None
        return found, value, compute_time

    def _parts(self, entries: Entries, key: str, stored: Any) -> _Parts | None:
        """A stored result (of ``key``) as `_Parts`; None when it is rows beside a whole result
        that is gone (evicted, invalidated)."""
        if not _is_stitched(stored):
            return _Parts(key, stored, len(stored), None)
        _, base_key, cut, tail = stored
        found, base, _ = self._lookup(entries, base_key, copy=False)
        if not found or _is_stitched(base) or not 0 < cut <= len(base):
            return None
        return _Parts(base_key, base, cut, tail)

    def _prefixes(self, grown: _Grown) -> list[_Prefix]:
        found, prefixes, _ = self._lookup(grown.entries, grown.index_key)
        return sorted(_parsed(prefixes), key=lambda p: -p.rows) if found else []

    def _remember_prefix(self, grown: _Grown, base_key: str) -> None:
        """Adds the call's frame to its family's index, with the key of the whole result its
        result is stored beside ("" if none), under the index's lock (other processes add
        theirs); the newest MAX_PREFIXES are kept."""
        entries, index_key = grown.entries, grown.index_key
        prefix = _Prefix(len(grown.frame), grown.digests, grown.key, base_key)
        lock = self._lock(entries, index_key)
        try:
            found, prefixes, _ = self._lookup(entries, index_key)
            kept = [p for p in _parsed(prefixes) if p.key != prefix.key] if found else []
            newest = [tuple(p) for p in [prefix, *kept][:MAX_PREFIXES]]
            metadata = {"function": self.name, "code": self.code_fingerprint()}
            entries.put(index_key, newest, metadata=metadata, replace=True)
        except (CacheError, OSError) as exc:
            self._warn_once("store", f"afml_cache: {self.name}: {exc}")
        finally:
            if lock is not None:
                lock.release()

    def _keep(
        self,
        grown: _Grown,
        stored: Any,
        elapsed: float,
        fed_rows: int,
        lock: KeyLock | None,
        replace: bool = False,
    ) -> None:
        """Stores a result (or its `_Parts` form); releases ``lock`` once it is on disk (or the
        attempt failed). ``replace``: a value given (`precache`), as `_Engine._store` says."""
        frame = grown.frame
        time_range = None
        if isinstance(frame.index, pd.DatetimeIndex) and len(frame):
            # The whole frame's span, so invalidate(after=) takes the stitched results of a
            # whole result it takes.
            time_range = (to_ns(frame.index[0]), to_ns(frame.index[-1]))
        self._store(
            grown.entries,
            grown.key,
            stored,
            elapsed,
            NO_RANGES,
            lock,
            extra={"rows": len(frame), "computed_rows": fed_rows},
            time_range=time_range,
            detail=f" ({fed_rows:,} of {len(frame):,} rows computed)",
            replace=replace,
        )


class _FrameKind:
    """What of a frame makes results of one family comparable, in the family's key: its
    columns (and their names), dtypes, index kind and attributes, and the window; not its
    rows."""

    def __init__(self, frame: pd.DataFrame | pd.Series, window: Window) -> None:
        # The objects themselves, fingerprinted, not their text: str() of a business-day
        # frequency omits its holidays, of a zone its library (pytz or zoneinfo, which a hit
        # would hand on), of a categorical dtype its categories, of the columns their dtype.
        index = frame.index
        if isinstance(frame, pd.DataFrame):
            columns: Any = (frame.columns, list(frame.columns.names), list(frame.dtypes))
        else:
            columns = (frame.name, frame.dtype)
        self.parts = (
            type(frame).__name__,
            columns,
            type(index).__name__,
            index.dtype,
            list(index.names),
            getattr(index, "freq", None),
            frame.attrs,
            window,
            BLOCK_ROWS,
        )

    def __cache_key__(self) -> Any:
        return self.parts


# Spans and times past what the index's unit can count (centuries on nanoseconds).
_OUT_OF_BOUNDS = (OverflowError, pd.errors.OutOfBoundsDatetime, pd.errors.OutOfBoundsTimedelta)


def _earlier(moment: Any, span: pd.Timedelta | None) -> Any:
    """``moment - span``, or None when that lies before the index's unit can count, or
    ``span`` is None (longer than it can count): before every row."""
    if span is None:
        return None
    try:
        return moment - span
    except _OUT_OF_BOUNDS:
        return None


def _in_unit(reach: int | pd.Timedelta, unit: str) -> int | pd.Timedelta | None:
    """A span of time rounded up to a whole ``unit`` of the index, which cannot hold a finer
    one: reaching further than the function does is safe, less is not. None for a span
    longer than the unit can count (``pd.Timedelta.max`` in microseconds)."""
    if isinstance(reach, int):
        return reach
    try:
        return reach.ceil(unit).as_unit(unit)
    except _OUT_OF_BOUNDS:
        return None


def _parsed(prefixes: Any) -> list[_Prefix]:
    """A family's index as stored; an index this code cannot read counts as empty (a miss)."""
    try:
        return [
            _Prefix(int(rows), tuple(digests), str(key), None if not base else str(base[0]))
            for rows, digests, key, *base in prefixes
        ]
    except (TypeError, ValueError):
        return []


def _sliceable(frame: pd.DataFrame | pd.Series) -> tuple[Any, list[Any]]:
    """The frame's index labels and column values, each sliceable by row without a copy."""
    index = frame.index
    if isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        labels: Any = index.asi8  # unit and tz are in the family
    elif isinstance(index.dtype, np.dtype) and index.dtype.kind in "biuf":
        labels = index.to_numpy()
    elif isinstance(index, pd.MultiIndex):
        # Its rows' values, level by level: a slice of a MultiIndex keeps every level of the
        # whole, which counts where rows do not use it, and yesterday's panel lists fewer.
        labels = _Levels(index)
    else:
        labels = index
    columns = (
        [frame]
        if isinstance(frame, pd.Series)
        else [frame.iloc[:, j] for j in range(frame.shape[1])]
    )
    return labels, [_values(c) for c in columns]


class _Levels:
    """A MultiIndex's rows as its names and the values of each level, sliced by rows."""

    __slots__ = ("names", "values")

    def __init__(self, index: pd.MultiIndex) -> None:
        self.names = list(index.names)
        self.values = [index.get_level_values(i) for i in range(index.nlevels)]

    def __getitem__(self, rows: slice) -> tuple[Any, ...]:
        return (self.names, [values[rows] for values in self.values])


def _block_digests(sliceable: tuple[Any, list[Any]], start: int, stop: int) -> tuple[str, ...]:
    """The digests of rows ``start:stop`` of a frame (`_sliceable`) in blocks of BLOCK_ROWS (the
    last may be short), each over every value of its rows and their index. ``start`` is a block
    boundary."""
    labels, values = sliceable
    return tuple(
        fingerprint(
            (
                labels[a : min(a + BLOCK_ROWS, stop)],
                [v[a : min(a + BLOCK_ROWS, stop)] for v in values],
            )
        )
        for a in range(start, stop, BLOCK_ROWS)
    )


def _values(column: pd.Series) -> Any:
    """A column's values, as a numpy array where they are one (sliced without a copy)."""
    dtype = column.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
        return column.to_numpy()
    return column.array


def _is_stitched(stored: Any) -> bool:
    return isinstance(stored, tuple) and len(stored) == 4 and stored[0] == _STITCHED


def _stitch(head: Any, tail: Any, cut: int, index: pd.Index) -> Any:
    """``head``'s rows before ``cut``, then ``tail``'s, on ``index`` (the grown frame's rows
    from the head's first on); None when they do not fit together (other columns, dtypes, or
    an index the function renamed). A fresh frame (both parts have rows, so concat copies them):
    ``head`` may be the memory tier's own (``copy=False``)."""
    if (
        type(head) is not type(tail)
        or not 0 < cut <= len(head)
        or not len(tail)
        or cut + len(tail) != len(index)
    ):
        return None
    if isinstance(head, pd.DataFrame):
        if not head.columns.equals(tail.columns) or not head.dtypes.equals(tail.dtypes):
            return None
    elif head.name != tail.name or head.dtype != tail.dtype:
        return None
    # Attributes the function set from the rows it saw (the last bar's time) differ between
    # the parts: which the whole frame would give cannot be told, so it is computed.
    if not _same_attrs(head, tail):
        return None
    # Both parts are on the frame's rows (checked when computed): the frame's own index is the
    # result's, without concatenating another copy of it.
    if (
        tail.index.names != index.names
        or type(tail.index) is not type(index)
        or type(head.index) is not type(index)
        or tail.index.dtype != index.dtype
        or getattr(tail.index, "freq", None) != getattr(index[cut:], "freq", None)
    ):
        return None
    # pandas compares the parts' attrs with == (NaN is unequal, arrays raise): the head's are
    # the result's, as checked, and a copy, as are the columns (np.asarray hands theirs out
    # writable), for the head may be the memory tier's.
    result = pd.concat([_without_attrs(head.iloc[:cut]), _without_attrs(tail)], ignore_index=True)
    result.index = index
    if isinstance(result, pd.DataFrame):
        result.columns = own_labels(result.columns)
    result.attrs = copy.deepcopy(head.attrs)
    return own_categories(result)


def _same_attrs(head: Any, tail: Any) -> bool:
    """Whether the parts' attrs are equal as digests (NaN as NaN, arrays whole); False where
    they cannot be read."""
    if not head.attrs and not tail.attrs:
        return True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read through a pickle or not, only equality counts
        try:
            return bool(fingerprint(head.attrs) == fingerprint(tail.attrs))
        except FingerprintError:
            return False


def _without_attrs(part: Any) -> Any:
    bare = part.copy(deep=False)
    bare.attrs = {}
    return bare


def _rows_differing(result: Any, full: Any) -> int | None:
    """The first row where ``result`` differs from ``full`` beyond floating-point noise (NOISE
    of the column's median magnitude), None when they agree (NaN where the other has NaN)."""
    if type(result) is not type(full) or not result.index.equals(full.index):
        return 0
    if isinstance(full, pd.Series):
        pairs = [(result, full)]
    elif result.columns.equals(full.columns) and result.dtypes.equals(full.dtypes):
        pairs = [(result.iloc[:, j], full.iloc[:, j]) for j in range(full.shape[1])]
    else:
        return 0
    first: int | None = None
    for mine, theirs in pairs:
        if mine.dtype != theirs.dtype:
            return 0
        if isinstance(theirs.dtype, np.dtype) and theirs.dtype.kind in "fc":
            a, b = mine.to_numpy(), theirs.to_numpy()
            # The column's typical size, not its largest: an inf (a zero-volume bar's return)
            # or one outlier would make every finite difference look like noise.
            finite = np.abs(b[np.isfinite(b)])
            scale = float(np.median(finite)) if finite.size else 0.0
            same = np.isclose(a, b, rtol=NOISE, atol=NOISE * scale, equal_nan=True)
        else:
            same = (mine.isna() & theirs.isna()).to_numpy() | (mine == theirs).to_numpy(
                dtype=bool, na_value=False
            )
        if not same.all():
            row = int(np.argmin(same))
            first = row if first is None else min(first, row)
    return first
