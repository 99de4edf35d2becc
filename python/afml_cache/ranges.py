"""Loaders by ``[start, end)`` that compute only what is missing:
``@time_aware_cacheable(range=("start", "end"))``.

A *family* is the function, its code (and the globals it reads) and every argument but the
range: ``load_bars("AAPL", ...)`` and ``load_bars("MSFT", ...)`` are two families. A family keeps
a coverage record, one entry holding the intervals it was asked for, each backed by a *piece*:
the entry holding what one computation of the function returned. A request computes only its
gaps in that coverage, under the family's lock, and returns the pieces stitched and sliced to
the request. Intervals are half-open, in nanoseconds since the epoch, UTC (naive times count as
UTC); the function is given the bounds of each gap as Timestamps in the time zone of the
request's start, each in the unit it was given in (a family per zone and units, as the function
may shape its rows by them: `Style`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset
from pandas.tseries.offsets import BaseOffset

from afml_cache import config
from afml_cache._core import fingerprint
from afml_cache._store.entries import Entries
from afml_cache.calls import duration
from afml_cache.decorators import Origin, _Engine, _Options, finish_wrapper
from afml_cache.errors import CacheError
from afml_cache.range_spans import (
    Clock,
    Piece,
    Style,
    align,
    as_argument,
    check_calendar,
    floor_to_unit,
    form_of,
    gaps,
    in_unit,
    moment,
    show,
    stitch,
)

__all__ = ["RangeOptions", "now_ns", "range_loader", "range_options"]

_log = logging.getLogger("afml_cache")
# A family holding more pieces than this has its adjacent settled pieces merged at the end of a
# call that read them, so that reads do not concatenate hundreds of frames.
MERGE_ABOVE = 32
# The coverage record's layout; a record of another layout is read as "nothing covered".
_RECORD_VERSION = 2  # 2: each piece names its form (`form_of`)


def now_ns() -> int:
    """The clock that dates pieces and expires the live ones (tests move it)."""
    return time.time_ns()


@dataclass(frozen=True)
class RangeOptions:
    """What ``time_aware_cacheable(range=...)`` was given, checked."""

    start: str
    end: str
    chunk: BaseOffset | None
    live_window: int  # ns (of trading time with a calendar)
    live_ttl: int  # ns (of trading time with a calendar)
    live_calendar: str | None


def range_options(
    range: Any,
    chunk: Any,
    live_window: Any,
    live_ttl: Any,
    live_calendar: str | None,
) -> RangeOptions:
    """Checks the options of a range loader; ``ValueError`` naming the one that is wrong."""
    if (
        not isinstance(range, tuple | list)
        or len(range) != 2
        or not all(isinstance(n, str) for n in range)
    ):
        raise ValueError(
            f"range= takes the names of the start and end arguments, e.g. ('start', 'end'); "
            f"got {range!r}"
        )
    offset = None
    if chunk is not None:
        try:
            offset = to_offset(chunk)
            day = pd.Timestamp("2024-01-02")
            forward = day + offset > day and day + 2 * offset > day + offset
        except (TypeError, ValueError, OverflowError):
            forward = False
        if not forward:  # a zero or negative step would widen a gap to all of pandas' time
            raise ValueError(
                f"chunk= takes a positive pandas frequency such as '1D', '1h' or '1MS'; "
                f"got {chunk!r}"
            ) from None
    if live_calendar is not None:
        check_calendar(live_calendar)
    return RangeOptions(
        start=range[0],
        end=range[1],
        chunk=offset,
        live_window=_duration_ns("live_window", live_window),
        live_ttl=_duration_ns("live_ttl", live_ttl),
        live_calendar=live_calendar,
    )


def _duration_ns(name: str, value: Any) -> int:
    return int(pd.Timedelta(duration(name, value)).value)


@dataclass(frozen=True)
class _Family:
    entries: Entries
    family: str  # the digest of the family, which names its record and its lock
    kin: str  # the digest of the family less the style: what coverage(...) names


@dataclass(frozen=True)
class _Request(_Family):
    start: int
    end: int
    style: Style  # how the bounds were given: the start's zone, each bound's unit
    bound: inspect.BoundArguments


def range_loader(fn: Callable[..., Any], options: _Options, ranges: RangeOptions) -> Any:
    """Decorates a loader ``fn(..., start, end, ...)`` as ``time_aware_cacheable(range=...)``."""
    if inspect.iscoroutinefunction(fn) or not inspect.isfunction(fn):
        raise TypeError(
            f"time_aware_cacheable(range=...) takes a plain function returning a frame, got {fn!r}"
        )
    parameters = inspect.signature(fn).parameters
    for name in (ranges.start, ranges.end):
        kind = parameters[name].kind if name in parameters else None
        if kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            raise ValueError(
                f"{fn.__qualname__} has no argument {name!r} that range= can name; range= takes "
                f"the names of its start and end arguments, e.g. range=('start', 'end')"
            )
    engine = RangeEngine(fn, options, ranges)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return engine.call(args, kwargs)

    return finish_wrapper(
        wrapper,
        fn,
        engine,
        invalidate=engine.invalidate,
        refresh=engine.refresh,
        coverage=engine.coverage,
    )


class RangeEngine(_Engine):
    """What a range loader does on each call: the decorator engine's keys, locks, statistics
    and warnings, over families of pieces instead of one entry per call."""

    def __init__(
        self,
        fn: Callable[..., Any],
        options: _Options,
        ranges: RangeOptions,
        name: str | None = None,
        origin: Origin | None = None,
    ):
        super().__init__(fn, options, None, name, origin)
        self.ranges = ranges
        self.clock = Clock(ranges.live_calendar)

    def __reduce__(self) -> tuple[Any, ...]:
        _, (fn, options, _, name, origin) = super().__reduce__()
        return (RangeEngine, (fn, options, self.ranges, name, origin))

    # --- calls --------------------------------------------------------------------------------

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        started = self._begin()
        request = self._request(args, kwargs)
        if request is None:
            return self.fn(*args, **kwargs)
        # The values the family's key read by content (see `_Engine._watch`), compared after a
        # miss: a vendor client counting its requests changes them at each fetch.
        watching, self._watching = self._watching, ()
        now = now_ns()  # one moment for the whole read: a tail must not expire midway
        pieces = self._pieces(request)
        if _of_other_forms(pieces):
            return self._unstitchable(request, pieces, None)
        found = self._read(request, pieces, now)
        if found is not None:
            pieces, frames, times, own = found
            parts = self._parts(request, pieces, frames, now)
            result = stitch(parts, request.start, request.end, fresh=own)
            self._record_hit(request.entries, request.family, sum(times.values()), started)
            if len(pieces) > MERGE_ABOVE:
                self._merge_now(request, frames, times)
            return result
        result = self._compute(request, started, refresh=False)
        if watching:
            self._changed_while_running(watching)
        return result

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """A digest of the call's family and span (what warming tells calls apart by); None
        when it would run uncached."""
        request = self._request(args, kwargs)
        return (
            None if request is None else fingerprint((request.family, request.start, request.end))
        )

    def is_cached(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether the call's whole span is covered by pieces on disk, without loading them."""
        request = self._request(args, kwargs)
        if request is None:
            return False
        now = now_ns()
        pieces = self._pieces(request)
        spans = [self._valid(p, now) for p in pieces]
        if not pieces or gaps([(request.start, request.end)], spans):
            return False
        try:
            return all(
                request.entries.contains(p.digest)
                for p, (start, end) in zip(pieces, spans, strict=True)
                if start < end and start < request.end and end > request.start
            )
        except (CacheError, OSError) as exc:
            self._warn_once("store", f"afml_cache: {self.name} computes again: {exc}")
            return False

    def precache(self, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Stores ``value`` as what the call returns for its span (its rows must lie inside
        it), replacing what covered that span; False when the call would run uncached."""
        request = self._request(args, kwargs)
        if request is None:
            return False
        self._check_rows(value, request.start, request.end, request.style.zone is None, True)
        lock = self._lock(request.entries, request.family)
        try:
            recorded = self._pieces(request)
            piece = self._new_piece(request, request.start, request.end, now_ns(), value)
            if not self._store_piece(request, piece, value, 0.0):
                return False
            pieces = [q for p in recorded for q in p.cut(piece.start, piece.end)] + [piece]
            if self._write_record(request, pieces):
                self._drop_unused(request, recorded, pieces)
                return True
            return False
        finally:
            if lock is not None:
                lock.release()

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        """Computes ``[start, end)`` again, whatever is cached, and returns it (the new rows
        replace the old ones in the family's coverage)."""
        started = self._begin()
        request = self._request(args, kwargs)
        if request is None:
            return self.fn(*args, **kwargs)
        return self._compute(request, started, refresh=True)

    def _request(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Request | None:
        """The family and span of a call, or None when it runs uncached: caching is off, the
        call does not bind (the function raises its own error), start/end are not times, the
        span is empty, the start's zone has no name (`Style.key`), or an argument has no
        fingerprint."""
        if not config.cache_enabled():
            return None
        view = self._open()
        if view is None:
            return None
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        try:
            start, zone, start_unit = moment(bound.arguments[self.ranges.start])
            end, _, end_unit = moment(bound.arguments[self.ranges.end])
        except (TypeError, ValueError, OverflowError):
            return None
        style = Style(zone, start_unit, end_unit)
        if start >= end or style.key() is None:
            return None
        kin = self._kin(bound.arguments)
        if kin is None:
            return None
        return _Request(view[2], _family(kin, style), kin, start, end, style, bound)

    def _kin(self, arguments: dict[str, Any]) -> str | None:
        """The engine's key of every argument but the range (less ``ignore=``): the family,
        less the style (time zone and units) of the range given."""
        skip = {self.ranges.start, self.ranges.end} | self.options.ignore
        others = {k: v for k, v in arguments.items() if k not in skip}
        return self._key(others, ("afml-cache range family",))

    # --- coverage records ---------------------------------------------------------------------

    def _pieces(self, request: _Family) -> list[Piece]:
        """The family's pieces, oldest first (none when the record is missing or unreadable)."""
        found, record, _ = self._lookup(request.entries, request.family)
        if not found:
            return []
        try:
            version, pieces = record
            if version != _RECORD_VERSION:
                return []
            return list(map(Piece._make, pieces))
        except (TypeError, ValueError) as exc:
            _log.warning("%s: unreadable coverage record %s: %s", self.name, request.family, exc)
            return []

    def _write_record(self, request: _Family, pieces: list[Piece]) -> bool:
        """Writes the family's record; the pieces it names are already on disk."""
        record = (_RECORD_VERSION, [tuple(p) for p in pieces])
        metadata = {"function": self.name, "code": self.code_fingerprint(), "family": request.kin}
        # Replacing: a record grows and is cut (`invalidate`); a shared prefix must follow.
        return self._put(request, request.family, record, metadata=metadata, replace=True)

    def _put(self, request: _Family, digest: str, value: Any, **details: Any) -> bool:
        """Stores an entry and waits until it is on disk (a record must never name a piece
        that is not); a failure is one warning a function, and False."""
        outcome: list[Exception | None] = []
        written = threading.Event()

        def behind(error: Exception | None, size: int) -> None:
            outcome.append(error)
            written.set()

        request.entries.put(digest, value, behind=behind, **details)
        written.wait()
        if outcome[0] is not None:
            self._not_stored(outcome[0])
            self._report_failures()
            return False
        return True

    def _valid(self, piece: Piece, now: int) -> tuple[int, int]:
        """The part of a piece that may be served now: all of it, less an expired live tail."""
        if piece.live_from is None:
            return piece.start, piece.end
        if not self.clock.expired(piece.computed, now, self.ranges.live_ttl):
            return piece.start, piece.end
        return piece.start, max(piece.start, piece.live_from)

    def _read(
        self, request: _Request, pieces: list[Piece], now: int
    ) -> tuple[list[Piece], dict[str, Any], dict[str, float], Any] | None:
        """The pieces, their frames and the time computing those took (see `_frames`), and
        the frame the call owns (or None), if the request's whole span is covered by pieces
        valid at ``now`` and on disk; else None."""
        spans = [self._valid(p, now) for p in pieces]
        if gaps([(request.start, request.end)], spans) or not pieces:
            return None
        inside = [s for s in spans if s[0] < s[1] and s[1] > request.start and s[0] < request.end]
        # One piece whose valid part lies inside the request is all of it: read as the call's
        # own copy, its frame is the result (`stitch`), where read shared it would be copied
        # there; and from disk, past what the memory tier holds, it is not copied at all.
        whole = len(inside) == 1 and request.start <= inside[0][0] and inside[0][1] <= request.end
        frames, missing, times = self._frames(request, pieces, spans, copy=whole)
        if missing:
            return None
        return pieces, frames, times, next(iter(frames.values())) if whole else None

    def _frames(
        self,
        request: _Request,
        pieces: list[Piece],
        spans: list[tuple[int, int]],
        copy: bool = False,
    ) -> tuple[dict[str, Any], set[str], dict[str, float]]:
        """The frames of the pieces whose valid part overlaps the request, by digest; the
        digests of those whose entry is gone (evicted, expired); the time computing each found
        one took, by digest. ``copy``: each frame is the caller's own; else it may be the
        memory tier's, to be read only."""
        wanted = dict.fromkeys(
            piece.digest
            for piece, (start, end) in zip(pieces, spans, strict=True)
            if start < end and end > request.start and start < request.end
        )
        entries = request.entries

        def read(digest: str) -> tuple[bool, Any, float]:
            # Without a copy the frames are only read into the stitched result (`stitch`),
            # never handed out themselves.
            return self._lookup(entries, digest, copy=copy)

        # Pieces on disk are read side by side: the store decompresses with the GIL released,
        # and pieces too small to be decompressed in parallel would otherwise keep one core.
        namespace, memory = entries.namespace, entries.memory
        on_disk = [d for d in wanted if (namespace, d) not in memory]
        read_ahead: dict[str, tuple[bool, Any, float]] = {}
        if len(on_disk) > 1:
            workers = min(len(on_disk), os.cpu_count() or 1)
            try:
                with ThreadPoolExecutor(workers, thread_name_prefix="afml-cache-pieces") as pool:
                    read_ahead = dict(zip(on_disk, pool.map(read, on_disk), strict=True))
            except RuntimeError:  # the interpreter is exiting (atexit): read them one by one
                read_ahead = {}
        frames: dict[str, Any] = {}
        missing: set[str] = set()
        times: dict[str, float] = {}
        for digest in wanted:
            found, frame, compute_time = read_ahead.get(digest) or read(digest)
            if found:
                frames[digest] = frame
                times[digest] = compute_time
            else:
                missing.add(digest)
        return frames, missing, times

    def _parts(
        self,
        request: _Request,
        pieces: list[Piece],
        frames: dict[str, Any],
        now: int,
        fresh: frozenset[str] = frozenset(),
    ) -> list[tuple[Any, int, int]]:
        """``(frame, low, high)``: the part of each piece valid at ``now`` in the request, all
        of those this call computed (``fresh``, by digest): with ``live_ttl="0s"`` their tail
        expires at once, and yet is what the function just returned."""
        parts = []
        for piece in pieces:
            start, end = (
                (piece.start, piece.end) if piece.digest in fresh else self._valid(piece, now)
            )
            start, end = max(start, request.start), min(end, request.end)
            if start < end:
                parts.append((frames[piece.digest], start, end))
        return sorted(parts, key=lambda part: part[1])

    # --- computing the gaps -------------------------------------------------------------------

    def _compute(self, request: _Request, started: float, refresh: bool) -> Any:
        entries = request.entries
        lock = self._lock(entries, request.family)
        try:
            # Read again under the lock: another process may have filled the gaps meanwhile.
            recorded = self._pieces(request)
            now = now_ns()
            spans = [self._valid(p, now) for p in recorded]
            frames, missing, times = self._frames(request, recorded, spans)
            kept = [(p, s) for p, s in zip(recorded, spans, strict=True) if p.digest not in missing]
            pieces = [p for p, _ in kept]
            wanted = [(request.start, request.end)]
            covered = [] if refresh else [s for _, s in kept]
            missing_spans = gaps(wanted, covered)
            if self.ranges.chunk is not None:
                missing_spans = gaps([align(g, self.ranges.chunk) for g in missing_spans], covered)
            computed = 0.0
            changed = bool(missing)
            unstored: set[str] = set()
            frame = None
            fresh: set[str] = set()
            try:
                for low, high in missing_spans:
                    piece, frame, elapsed = self._compute_gap(request, low, high, unstored)
                    computed += elapsed
                    fresh.add(piece.digest)
                    pieces = [q for p in pieces for q in p.cut(low, high)] + [piece]
                    frames[piece.digest], times[piece.digest] = frame, elapsed
                    changed = True
            finally:
                # The pieces not stored serve this call only; those cut away go once unnamed.
                stored = [p for p in pieces if p.digest not in unstored]
                if changed and self._write_record(request, stored):
                    self._drop_unused(request, recorded, stored)
            unstitchable = _of_other_forms(pieces)
            if not unstitchable:
                parts = self._parts(request, pieces, frames, now, frozenset(fresh))
                result = stitch(parts, request.start, request.end, fresh=frame)
                if len(stored) > MERGE_ABOVE:
                    self._merge(request, stored, frames, times)
        finally:
            if lock is not None:
                lock.release()
        if unstitchable:
            # The function's own frame is the result when its one gap was the whole request.
            whole = missing_spans == [(request.start, request.end)]
            result = self._unstitchable(request, pieces, frame if whole else None)
        if missing_spans:
            self._record_miss(entries, request.family, computed, started)
        else:
            self._record_hit(entries, request.family, 0.0, started)
        return result

    def _compute_gap(
        self, request: _Request, low: int, high: int, unstored: set[str]
    ) -> tuple[Piece, Any, float]:
        """Runs the function over ``[low, high)``, checks its rows and stores them as a piece
        (its digest added to ``unstored`` if the store refused it: the call still returns them)."""
        bound = inspect.BoundArguments(self.signature, request.bound.arguments.copy())
        style = request.style
        bound.arguments[self.ranges.start] = as_argument(low, style.zone, style.start_unit)
        bound.arguments[self.ranges.end] = as_argument(high, style.zone, style.end_unit)
        computed = now_ns()
        computing = time.perf_counter()
        frame = self.fn(*bound.args, **bound.kwargs)
        elapsed = time.perf_counter() - computing
        self._check_rows(frame, low, high, style.zone is None)
        piece = self._new_piece(request, low, high, computed, frame)
        if not self._store_piece(request, piece, frame, elapsed):
            unstored.add(piece.digest)
        return piece, frame, elapsed

    def _new_piece(self, request: _Request, low: int, high: int, computed: int, rows: Any) -> Piece:
        """The piece ``[low, high)`` of ``rows``, computed at ``computed``, with its live
        tail if any."""
        # Floored to the start's unit, so refetching the tail never needs a finer one.
        reach = floor_to_unit(
            self.clock.window_start(computed, self.ranges.live_window), request.style.start_unit
        )
        live_from = max(low, reach) if high > reach else None
        return Piece(low, high, _new_digest(request), computed, live_from, form_of(rows))

    def _unstitchable(self, request: _Request, pieces: list[Piece], own: Any) -> Any:
        """What the call returns when the family's pieces differ in form (`form_of`), so that
        no stitching of them is what one call over the request returns: ``own``, the frame the
        function just returned for the whole request, or else the call computed uncached."""
        spans = sorted({(p.start, p.end, p.form) for p in pieces if p.form is not None})
        shown = "; ".join(f"[{show(start)}, {show(end)})" for start, end, _ in spans[:3])
        self._warn_once(
            "forms",
            f"afml_cache: {self.name} returned rows of other columns, dtypes or attrs for other "
            f"spans ({shown}), so its pieces cannot be stitched into what one call returns: "
            "each call now computes its whole range, uncached. Give every span the same "
            "columns, dtypes and attrs (a CategoricalDtype with the categories listed, float64 "
            "or Int64 for a column with missing values, reindex(columns=...), no attrs naming "
            "the span) to have ranges cached; "
            f"{self.name}.invalidate() forgets the pieces",
        )
        if own is not None:
            return own
        return self.fn(*request.bound.args, **request.bound.kwargs)

    def _store_piece(
        self, request: _Family, piece: Piece, frame: Any, elapsed: float, ttl: Any = None
    ) -> bool:
        """Stores a piece's rows, for ``ttl`` seconds if given, else the function's ``ttl=``."""
        metadata = {"function": self.name, "code": self.code_fingerprint(), "piece": True}
        return self._put(
            request,
            piece.digest,
            frame,
            ttl=self.options.ttl if ttl is None else ttl,
            tags=self.options.tags,
            metadata=metadata,
            compute_time=elapsed,
            time_range=(piece.start, piece.end - 1),
        )

    def _check_rows(
        self, frame: Any, low: int, high: int, naive: bool = False, given: bool = False
    ) -> None:
        """A piece must be a frame or series whose sorted time index lies inside its gap.
        ``naive``: the request's bounds had no time zone; ``given``: the frame is one given to
        `precache`, not the function's."""
        who = "the frame given to precache" if given else self.name
        returned = "holds" if given else "returned"
        if not isinstance(frame, pd.DataFrame | pd.Series):
            raise TypeError(
                f"{who} {'is' if given else 'returned'} a {type(frame).__qualname__}; a range "
                "loader must return a pandas DataFrame or Series on a DatetimeIndex"
            )
        if len(frame) == 0:
            return  # a holiday: no rows, and the span is covered all the same
        index = frame.index
        if not isinstance(index, pd.DatetimeIndex):
            raise TypeError(
                f"{who} {returned} rows on a {type(index).__name__}; a range loader must "
                "return them on a DatetimeIndex (set_index on the time column)"
            )
        if not index.is_monotonic_increasing:
            raise ValueError(
                f"{who} {returned} rows out of time order for [{show(low)}, {show(high)}); "
                "return them sorted (sort_index())"
            )
        first, last = in_unit(index, low, high)
        outside = (index.asi8 < first) | (index.asi8 >= last)
        if outside.any():
            shown = ", ".join(str(t) for t in index[outside][:3])
            fix = (
                "slice it to the span first (frame.loc[start:end] without the end)"
                if given
                else "a range loader returns only rows with start <= time < end"
            )
            if naive and index.tz is not None:
                fix += (
                    "; start and end without a time zone are read as UTC: pass them with the "
                    "zone the loader reads them in (pd.Timestamp(start, tz=...))"
                )
            raise ValueError(
                f"{who} {returned} {int(outside.sum())} row(s) outside the range "
                f"[{show(low)}, {show(high)}) it was for: {shown}; {fix}"
            )

    # --- merging ------------------------------------------------------------------------------

    def _merge_now(self, request: _Family, frames: dict[str, Any], times: dict[str, float]) -> None:
        """Merges after a read, if the family's lock is free now (else a later call will)."""
        try:
            lock = request.entries.lock(request.family, 0.0)
        except (CacheError, OSError):
            return
        if lock is None:
            return
        try:
            self._merge(request, self._pieces(request), frames, times)
        finally:
            lock.release()

    def _merge(
        self,
        request: _Family,
        pieces: list[Piece],
        frames: dict[str, Any],
        times: dict[str, float],
    ) -> None:
        """Under the family's lock: replaces each run of adjacent settled pieces this call has
        read by one piece, written before the record that names it."""
        order = sorted(pieces, key=lambda p: p.start)
        runs: list[list[Piece]] = []
        for piece in order:
            if piece.live_from is not None or piece.digest not in frames:
                runs.append([])
                continue
            if runs and runs[-1] and runs[-1][-1].end == piece.start:
                runs[-1].append(piece)
            else:
                runs.append([piece])
        rows = {digest: len(frame) for digest, frame in frames.items()}
        merged = []
        for run in (r for whole in runs for r in _around_largest(whole, rows) if len(r) > 1):
            ttl = self._ttl_left(run)
            if ttl == 0:
                continue  # rows about to expire are fetched again, not kept longer by a merge
            frame = stitch(
                [(frames[p.digest], p.start, p.end) for p in run], run[0].start, run[-1].end
            )
            computed = min(p.computed for p in run)
            piece = Piece(
                run[0].start, run[-1].end, _new_digest(request), computed, None, form_of(frame)
            )
            elapsed = sum(times.get(digest, 0.0) for digest in {p.digest for p in run})
            if self._store_piece(request, piece, frame, elapsed, ttl):
                merged.append((run, piece))
        if not merged:
            return
        gone = {id(p) for run, _ in merged for p in run}
        kept = [p for p in pieces if id(p) not in gone] + [piece for _, piece in merged]
        if self._write_record(request, kept):
            self._drop_unused(request, pieces, kept)

    def _ttl_left(self, run: list[Piece]) -> float | None:
        """The ``ttl=`` of a piece merged from ``run``: what is left of the first of theirs to
        expire, counted from when it was computed (a merged piece must not keep rows past
        theirs); 0 when none is left; None without ``ttl=``."""
        ttl = self.options.ttl
        if ttl is None:
            return None
        left = (min(p.computed for p in run) - now_ns()) / 1e9 + ttl
        return left if left >= 1 else 0

    def _drop_unused(self, request: _Family, before: list[Piece], after: list[Piece]) -> None:
        """Deletes the entries of pieces the record no longer names (after it was written)."""
        used = {p.digest for p in after}
        for digest in {p.digest for p in before} - used:
            try:
                request.entries.delete(digest)
            except (CacheError, OSError) as exc:  # an orphan is evicted in time; never fail
                _log.debug("could not delete piece %s of %s: %s", digest, self.name, exc)

    # --- what users ask of the function -------------------------------------------------------

    def _families(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[_Family]:
        """The families named by ``args``/``kwargs`` (every argument but the range; one family
        a style of range given), or every family of the function when none is."""
        view = self._open()
        if view is None:
            return []
        entries = view[2]
        kin = None
        if args or kwargs:
            bound = self.signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            skip = (self.ranges.start, self.ranges.end)
            missing = [
                n for n in self.signature.parameters if n not in bound.arguments and n not in skip
            ]
            if missing:
                raise TypeError(
                    f"{self.name}: name a family by every argument but the range; "
                    f"missing {', '.join(missing)}"
                )
            kin = self._kin(bound.arguments)
            if kin is None:  # named, but by arguments that have no key: no family, not all
                others = {k: v for k, v in bound.arguments.items() if k not in skip}
                raise TypeError(
                    f"{self.name}: no family is named by {self._culprit(others, ())}, which "
                    "has no fingerprint; name a family by the arguments its calls are given"
                )
        found = []
        for entry in entries.listing():
            family = (entry.get("metadata") or {}).get("family")
            if family is not None and (kin is None or family == kin):
                found.append(_Family(entries, entry["digest"], family))
        return found

    def coverage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """What a family has cached: its intervals (UTC), each with the number of pieces it
        holds, when they were computed and whether the interval ends in a live tail."""
        rows: list[dict[str, Any]] = []
        now = now_ns()
        for request in self._families(args, kwargs):
            for piece in sorted(self._pieces(request), key=lambda p: p.start):
                start, end = self._valid(piece, now)
                if start >= end:
                    continue
                last = rows[-1] if rows else None
                if last is not None and last["_family"] == request.family and last["_end"] == start:
                    last["_end"] = end
                    last["pieces"] += 1
                    last["computed"].append(show(piece.computed))
                    last["live"] = piece.live_from is not None
                    continue
                rows.append(
                    {
                        "_family": request.family,
                        "_end": end,
                        "start": show(start),
                        "pieces": 1,
                        "computed": [show(piece.computed)],
                        "live": piece.live_from is not None,
                    }
                )
        return [
            {
                "start": r["start"],
                "end": show(r["_end"]),
                "pieces": r["pieces"],
                "computed": r["computed"],
                "live": r["live"],
            }
            for r in rows
        ]

    def invalidate(self, *args: Any, after: Any = None, **kwargs: Any) -> int:  # type: ignore[override]
        """Forgets what a family (or every family, when none is named) holds after ``after``
        (a vendor revised the data), or all of it without ``after``: the next request
        computes it again. Returns how many pieces were cut or removed."""
        try:
            after_ns = moment(after)[0] if after is not None else -_FOREVER
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{self.name}.invalidate(after={after!r}): not a time ({exc}); give a date, a "
                "datetime, a Timestamp or a string like '2024-03-01'"
            ) from None
        changed = 0
        for request in self._families(args, kwargs):
            lock = self._lock(request.entries, request.family)
            try:
                pieces = self._pieces(request)
                kept = [q for p in pieces for q in p.cut(after_ns, _FOREVER)]
                touched = sum(1 for p in pieces if p.end > after_ns)
                if touched and self._write_record(request, kept):
                    self._drop_unused(request, pieces, kept)
                    changed += touched
            finally:
                if lock is not None:
                    lock.release()
        return changed


_FOREVER = np.iinfo(np.int64).max


def _around_largest(run: list[Piece], rows: dict[str, int]) -> list[list[Piece]]:
    """A run of pieces to merge, split around a piece with more rows than all the others
    together: merging days appended to years of bars would otherwise rewrite the years each time
    the family passes MERGE_ABOVE; left alone, each row is rewritten a few times at most."""
    sizes = [rows[p.digest] for p in run]
    largest = max(range(len(run)), key=sizes.__getitem__, default=0)
    if run and 2 * sizes[largest] > sum(sizes):
        return [run[:largest], run[largest + 1 :]]
    return [run]


def _family(kin: str, style: Style) -> str:
    return fingerprint(("afml-cache range family", kin, style.key()))


def _of_other_forms(pieces: list[Piece]) -> bool:
    """Whether the family's pieces with rows differ in form (see `form_of`)."""
    return len({p.form for p in pieces if p.form is not None}) > 1


def _new_digest(request: _Family) -> str:
    """A fresh piece's digest: each computation is its own entry."""
    return fingerprint(("afml-cache range piece", request.family, uuid.uuid4().hex))
