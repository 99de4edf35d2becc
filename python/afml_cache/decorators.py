"""`@robust_cacheable`, `@cacheable` and `@time_aware_cacheable`.

The key of a call is the fingerprint of: the function's name (`function_name`: its module and
qualified name, with the script's or notebook's path for ``__main__``), its code fingerprint
(its own code and, transitively, the helpers, classes and constants it uses; see codehash/),
the content of the mutable globals and closure cells that code reads, as of the call (less
``ignore_globals=``), the ``version=`` option, the code of the user classes among its arguments,
and its arguments bound to parameter names with defaults applied (so ``f(df, 5)``,
``f(df, window=5)`` and ``f(df)`` with ``window=5`` by default are one entry), less the
``ignore=`` ones; time-aware functions add the time ranges of their inputs. The rules are in
docs/code_fingerprint.md.

On a miss the function runs under the key's single-flight lock: concurrent identical calls, in
threads or processes, compute once and the others read the result. The function's exceptions
propagate unchanged and it runs exactly once per call. When the cache fails (a result that
cannot be pickled, a full disk, an unusable directory), the result is returned anyway with one
warning per function.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import errno
import functools
import inspect
import logging
import os
import socket
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

from afml_cache import config, warming
from afml_cache._core import SPEC_VERSION, fingerprint
from afml_cache._store import KeyLock
from afml_cache._store.entries import Entries
from afml_cache._store.writer import flush_writes
from afml_cache.cache import Cache, CacheAddress, check_compression, check_ttl
from afml_cache.calls import (
    NO_RANGES,
    Call,
    Defaults,
    FastBinder,
    TimeOptions,
    duration,
    live_ttl,
    time_ranges,
    to_ns,
)
from afml_cache.codehash import (
    argument_expressions,
    arguments_code,
    code_fingerprint,
    code_state,
    imported_code,
    reading_classes,
)
from afml_cache.codehash.walk import (
    LiveValues,
    global_generators,
    lone_code_state,
    seeds_a_global_generator,
)
from afml_cache.errors import CacheError, CacheWarning, FingerprintError, caller_stacklevel
from afml_cache.files import file_contents
from afml_cache.report import format_latency, format_size

__all__ = [
    "cacheable",
    "cached_functions",
    "caller_stacklevel",
    "function_name",
    "robust_cacheable",
    "time_aware_cacheable",
    "watch_calls",
]

F = TypeVar("F", bound=Callable[..., Any])
_log = logging.getLogger("afml_cache")
# What a directory this process may only read answers a write (a read-only mount, another
# user's cache).
_READ_ONLY = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# How long a call waits for another process computing the same key before computing itself.
LOCK_TIMEOUT = 600.0
# Argument types whose equal values (same type, ==) always fingerprint alike, but for the float
# zeros (0.0 == -0.0): the key of a call with only these, given by position, is remembered.
_SCALAR_TYPES = frozenset({int, float, str, bool, type(None)})
# Keys remembered per function and code fingerprint; forgotten all at once beyond this.
_REMEMBERED_KEYS = 4096
# What `_Engine._state` reads on each call.
_State = tuple[tuple[str, str, dict[Any, str]], LiveValues]
_Lone = tuple[str, Callable[[Any], object], Callable[[], LiveValues] | None]


class _Read(NamedTuple):
    """What a miss's key read that may change from outside the call while it runs (see
    `_Engine._read_now`): file digests; and, while other threads live, how long each has run
    (`_run_times`), the digest of the globals its code reads and numpy's global generator's
    state."""

    files: tuple[tuple[str, Any], ...]
    threaded: tuple[dict[int, int], Any, tuple[str, ...]] | None


def _run_times() -> dict[int, int]:
    """Nanoseconds each thread besides this one has run (Linux's schedstat), by native id, for
    the non-daemon ones (a thread pool's, an event loop's, a user's; a notebook kernel's and
    afml-cache's own are daemons). A thread that ran during a call may have changed what it
    read; one that stayed blocked (an idle pool a library keeps) did not. -1 where the time
    cannot be read: such a thread counts as having run."""
    current = threading.current_thread()
    times = {}
    for thread in threading.enumerate():
        if thread.daemon or thread is current or thread.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat", "rb") as stat:
                times[thread.native_id] = int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):
            times[thread.native_id] = -1
    return times


def _ran(before: dict[int, int], after: dict[int, int]) -> bool:
    """Whether a thread other than the caller's ran between the two readings."""
    return any(
        before.get(tid) != after.get(tid) or after.get(tid, -1) < 0 for tid in {*before, *after}
    )


def _outlines(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(argument, value, outline)`` of each argument whose change in place by the call can be
    seen cheaply (`_outline`), before a miss runs."""
    found = []
    for where, value in (*enumerate(args), *kwargs.items()):
        outline = _outline(value)
        if outline is not None:
            found.append((str(where), value, outline))
    return found


def _outline(value: Any) -> tuple[Any, ...] | None:
    """What a change of a frame or series in place shows without reading its data: its shape,
    by identity its columns (or name) and index (a column added or dropped, rows sorted or
    renamed in place), and their names; None for other values. Values written into what is there
    (``df["a"] = ...`` over a column, ``df.iloc[0, 0] = x``) do not show: a frame's blocks are
    no sign, as pandas 2 consolidates them in place on some reads. A list or dict an argument
    gives is left alone: counting calls into one (``calls.append(1)``) is how a test tells a
    hit, which must not do it again."""
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(value, pd.DataFrame | pd.Series):
        return None
    frame = isinstance(value, pd.DataFrame)
    columns = value.columns if frame else value.name
    # The labels' names too: `df.index.name = "date"` renames the same object.
    names = (tuple(value.index.names), tuple(value.columns.names) if frame else ())
    return (value.shape, columns, value.index, names)


def _changed_in_place(outlines: list[tuple[str, Any, Any]]) -> str | None:
    """The first argument whose outline a call changed, or None."""
    for where, value, (shape, *held) in outlines:
        now, *holds = _outline(value) or ((),)
        if now != shape or not all(map(_same_labels, holds, held)):
            return where
    return None


def _same_labels(now: Any, before: Any) -> bool:
    """Whether a frame's columns or index (or a series' name) are what they were: the same
    object, or, when an operation in place that changed nothing made another
    (``dropna(inplace=True)`` on a frame without gaps, a sort of sorted rows), equal to it."""
    if now is before:
        return True
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(now, pd.Index) or not isinstance(before, pd.Index):
        try:  # a series' name: a label
            return type(now) is type(before) and bool(now == before)
        except Exception:
            return False
    return (
        now.dtype == before.dtype and list(now.names) == list(before.names) and now.equals(before)
    )


# Every decorated function alive in this process, for maintenance (smart_cache_clear).
_DECORATED: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


# The outcomes of cached calls in this thread or task, while `watch_calls` collects them.
_WATCHING: contextvars.ContextVar[list[tuple[_Engine, bool]] | None] = contextvars.ContextVar(
    "afml_cache_watching", default=None
)


@contextlib.contextmanager
def watch_calls() -> Iterator[list[tuple[_Engine, bool]]]:
    """Collects ``(engine, hit)`` for each cached call that finishes in this thread or task
    inside the block, inner calls before the outer ones; a call that ran uncached adds nothing.
    The pytest plugin judges one call by it, whatever other threads and processes do."""
    seen: list[tuple[_Engine, bool]] = []
    token = _WATCHING.set(seen)
    try:
        yield seen
    finally:
        _WATCHING.reset(token)


def cached_functions() -> list[Callable[..., Any]]:
    """The decorated functions alive in this process, by qualified name. Each has
    ``__afml_cache__``, its engine: ``name``, ``code_fingerprint()`` and ``cache()``."""
    return sorted(_DECORATED, key=lambda f: f.__afml_cache__.name)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Options:
    ttl: float | None = None
    tags: tuple[str, ...] = ()
    ignore: frozenset[str] = frozenset()
    version: Any = None
    compression: str | None = None
    cache: Cache | CacheAddress | None = None  # an address once the function has travelled
    strict: bool = False
    ignore_globals: frozenset[str] = frozenset()


def robust_cacheable(
    fn: F | None = None,
    /,
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    ignore: Iterable[str] = (),
    version: Any = None,
    compression: str | None = None,
    cache: Cache | None = None,
    strict: bool = False,
    ignore_globals: Iterable[str] = (),
) -> Any:
    """Caches a function's results on disk, keyed by the content of its arguments and its code.

    Use bare (``@robust_cacheable``) or with options: ``ttl`` (seconds), ``tags``, ``ignore``
    (argument names that do not affect the result, e.g. ``("verbose",)``), ``version`` (bump by
    hand), ``compression``, ``cache`` (a `Cache` to use instead of the configured one), and
    ``strict`` (raise `FingerprintError` for arguments with no fingerprint rule instead of
    fingerprinting their pickle reduction), and ``ignore_globals`` (names of globals whose
    content must not count, e.g. ``("CALLS", "cfg.LOG")`` for a counter or log it only writes).
    """
    options = _Options(
        ttl=check_ttl(ttl),
        tags=tuple([tags] if isinstance(tags, str) else tags),
        ignore=frozenset([ignore] if isinstance(ignore, str) else ignore),
        version=version,
        compression=None if compression is None else check_compression(compression),
        cache=cache,
        strict=strict,
        ignore_globals=_global_names(ignore_globals),
    )
    if fn is None:
        return functools.partial(_decorate, options=options, time_options=None)
    return _decorate(fn, options, None)


def _global_names(names: Iterable[str]) -> frozenset[str]:
    found = frozenset([names] if isinstance(names, str) else names)
    for name in found:
        if not isinstance(name, str):
            raise TypeError(
                f"ignore_globals takes names of globals as strings (e.g. ('CALLS',)), got {name!r}"
            )
    return found


#: The original name of `robust_cacheable`: existing code keeps working.
cacheable = robust_cacheable


def time_aware_cacheable(
    fn: F | None = None,
    /,
    *,
    time_column: str | None = None,
    start_args: Iterable[str] = ("start", "start_date"),
    end_args: Iterable[str] = ("end", "end_date"),
    live_window: datetime.timedelta = datetime.timedelta(days=1),
    live_ttl: datetime.timedelta = datetime.timedelta(minutes=15),
    range: tuple[str, str] | None = None,
    chunk: str | None = None,
    live_calendar: str | None = None,
    incremental: bool = False,
    lookback: Any = None,
    lookahead: Any = None,
    verify: float | None = None,
    **options: Any,
) -> Any:
    """`robust_cacheable` for functions over time-indexed data and loaders with start/end
    arguments: the time range of each input (a DatetimeIndex, a polars ``time_column``, or
    start/end style arguments) is recorded with the entry and is part of the key.

    ``range=("start", "end")`` makes a loader that computes only what is missing of the
    requested ``[start, end)`` (gaps aligned to ``chunk=``, e.g. ``"1D"``; ``live_calendar=``
    measures the live window in an exchange's trading time): see `afml_cache.ranges`.

    ``incremental=True, lookback=N`` makes a feature ``f(frame, ...)`` that, given a frame that
    grew, computes only the new rows (fed the ``lookback`` rows or span before them, and
    recomputing the last ``lookahead`` of the stored ones); ``verify=`` is the fraction of such
    calls checked against a full computation: see `afml_cache.incremental`.

    ``f.invalidate(overlapping=(t0, t1))`` and ``f.invalidate(after=t)`` remove the entries whose
    data touch those times (a vendor revised the data). An entry whose range ends within
    ``live_window`` of when it was computed expires after ``live_ttl``: its last bars were still
    forming. Entries wholly in the past never expire by age.
    """
    time_options = TimeOptions(
        time_column=time_column,
        start_args=tuple(start_args),
        end_args=tuple(end_args),
        live_window=duration("live_window", live_window),
        live_ttl=duration("live_ttl", live_ttl),
    )
    wrap = robust_cacheable(**options)
    if incremental or lookback is not None or lookahead is not None or verify is not None:
        # incremental builds on this module's engine, so it is imported when a feature asks for it.
        from afml_cache.incremental import check_window, feature_function

        window = check_window(incremental, lookback, lookahead, verify, range)

        def decorate_feature(feature: Any) -> Any:
            return feature_function(feature, wrap.keywords["options"], time_options, window)

        return decorate_feature if fn is None else decorate_feature(fn)
    if range is not None:
        # ranges builds on this module's engine, so it is imported when a loader asks for it.
        from afml_cache.ranges import range_loader, range_options

        checked = range_options(range, chunk, live_window, live_ttl, live_calendar)

        def decorate_loader(loader: Any) -> Any:
            return range_loader(loader, wrap.keywords["options"], checked)

        return decorate_loader if fn is None else decorate_loader(fn)
    if chunk is not None or live_calendar is not None:
        raise ValueError(
            "chunk= and live_calendar= are options of range loaders: give range=('start', 'end') "
            "too"
        )
    decorate = functools.partial(
        _decorate, options=wrap.keywords["options"], time_options=time_options
    )
    return decorate if fn is None else decorate(fn)


def _decorate(fn: Any, options: _Options, time_options: TimeOptions | None) -> Any:
    if isinstance(fn, (classmethod, staticmethod)):
        return type(fn)(_decorate(fn.__func__, options, time_options))
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"{fn.__qualname__} is a generator function: its values are produced lazily and "
            "cannot be cached; cache a function that returns a list (or other value) instead"
        )
    if not inspect.isfunction(fn):
        raise TypeError(f"cacheable decorators take a function, got {fn!r}")
    _check_ignored(fn, options.ignore)
    engine = _Engine(fn, options, time_options)
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await engine.call_async(args, kwargs)

    else:

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return engine.call(args, kwargs)

    methods = {"invalidate": engine.invalidate} if time_options is not None else {}
    return finish_wrapper(wrapper, fn, engine, **methods)


def _check_ignored(fn: Callable[..., Any], ignore: frozenset[str]) -> None:
    """A name in ``ignore=`` that is no parameter of ``fn`` (a typo: ``"verbos"``) would leave the
    argument meant in the key, silently: refused, unless ``fn`` takes ``**kwargs`` (where
    ``ignore=`` leaves out the keyword arguments of that name)."""
    parameters = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    # A wrapper's own keywords too (functools.wraps shows the wrapped one's): `log_level=`,
    # which calls drop before binding (`_Engine._bound`).
    own = inspect.signature(fn, follow_wrapped=False).parameters
    unknown = sorted(ignore - set(parameters) - set(own))
    if not unknown:
        return
    names = ", ".join(repr(name) for name in unknown)
    said = (
        f"ignore= names {names}, which {fn.__qualname__} does not take; its parameters are "
        f"{', '.join(parameters) or 'none'}"
    )
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
        # The wrapper under the decorator takes any keyword (`kwargs.pop("verbose")`): it may
        # be one of those. A typo costs misses, not wrong hits.
        warnings.warn(
            f"afml_cache: {said}, though the wrapper under the decorator may take it (it takes "
            "**kwargs); if it is a typo, the argument meant stays in the key",
            CacheWarning,
            stacklevel=caller_stacklevel(),
        )
        return
    raise ValueError(said)


def finish_wrapper(
    wrapper: Any, fn: Callable[..., Any], engine: _Engine, **methods: Callable[..., Any]
) -> Any:
    """Gives a decorated function's wrapper what every one has (``cache_info``, ``cache_clear``,
    ``cache_entries``, ``uncached``, ``is_cached``, ``precache``, ``warm``), plus ``methods``,
    and registers it for maintenance."""
    wrapper.cache_info = engine.cache_info
    wrapper.cache_clear = engine.cache_clear
    wrapper.cache_entries = engine.cache_entries
    wrapper.uncached = fn
    wrapper.__afml_cache__ = engine
    for name, method in methods.items():
        setattr(wrapper, name, method)
    warming.attach(wrapper)  # is_cached, precache, warm
    _DECORATED.add(wrapper)
    return wrapper


class Origin(NamedTuple):
    """What a decorated function sent by value brings from the process that sent it: its code
    fingerprint there, what its code reaches in modules imported by name (`imported_code`),
    and the decorators' settings (`config.travelling`)."""

    code: str
    imported: str | None
    settings: dict[str, Any]


class _Engine:
    """What a decorated function does on each call."""

    def __init__(
        self,
        fn: Callable[..., Any],
        options: _Options,
        time_options: TimeOptions | None,
        name: str | None = None,
        origin: Origin | None = None,
    ):
        self.fn = fn
        self.options = options
        self.time_options = time_options
        self.name = name if name is not None else function_name(fn)
        self._defaults = Defaults(fn)
        self._signature = inspect.signature(fn)
        self._warned: set[str] = set()
        # (base cache, this function's view of it, the view's entries by digest)
        self._view: tuple[Cache, Cache, Entries] | None = None
        self._binder = FastBinder.for_signature(self._signature)
        # Ignored keywords that only a wrapper under this decorator takes (`log_level=`).
        self._wrapper_keywords = frozenset(options.ignore) - set(self.signature.parameters)
        # The name of its `**kwargs`, whose keys `ignore=` may name too.
        self._var_keyword = next(
            (
                p.name
                for p in self.signature.parameters.values()
                if p.kind is inspect.Parameter.VAR_KEYWORD
            ),
            None,
        )
        # (code fingerprint, identity, the keys of scalar calls under it: see _remembered_key)
        self._known_identity: tuple[str, str, dict[Any, str]] | None = None
        # While the function's walk is its own node alone: `lone_code_state`'s answer.
        self._lone: _Lone | None = None
        self._not_lone = ""  # the code fingerprint last found not to be its own node alone
        # Whether the next call notes the digests of the values it reads by content (see
        # `_watch`): its first call under a code fingerprint, and the one after a miss that
        # changed them; those digests, which that call compares after a miss; and the values
        # a miss changed, as it left them.
        self._watch_next = True
        self._watching: tuple[tuple[str, str], ...] = ()
        self._left: dict[str, str] = {}
        # The argument a miss changed in place (`_changes_arguments`): it runs uncached since.
        self._changes_in_place: str | None = None
        # How many arguments a call gives by position when its key may be remembered: all of
        # them (defaults, which may be mutable, never enter); -1 for none.
        binder = self._binder
        self._remembering = (
            len(binder.names)
            if binder is not None
            and binder.positional == len(binder.names)
            and time_options is None
            else -1
        )
        # Failures to store results, found on the writer thread, warned at the next call, and
        # how many there have been.
        self._failures: list[str] = []
        self._unstored = 0
        # Whether a call was seen drawing from numpy's global generator in code no walk reads
        # (a library's: `df.sample()`); then every key holds its state (`_with_generators`),
        # and the state the last miss left it in.
        self._draws = False
        self._generators_left: tuple[str, ...] = ()
        # Landed by value: (the code fingerprint here on landing, the origin's). What the code
        # reaches was rebuilt by value too and may fingerprint differently here (IPython's
        # `open` does); while it is as it landed, it is the code the origin fingerprinted, and
        # the origin's entries are this function's. Unless what it reaches in modules this
        # process imports by name differs from the origin's (a helper edited and reloaded
        # there, an attribute set there): then it computes other results, under its own keys.
        self._landed = None
        # Whether the process that sent it had caching on when it did (its `configure(enabled=
        # False)` reaches the workers it sends functions to, which keep their own settings).
        self._enabled_at_origin = True
        self._adopted: tuple[CacheAddress, str] | None = None  # the cache it came with
        if origin is not None:
            if _imported_code(fn) == origin.imported:
                self._landed = (code_fingerprint(fn), origin.code)
            self._take_settings(origin.settings)

    def _take_settings(self, travelled: dict[str, Any]) -> None:
        """Caches where the process that sent this function does, and not at all while its
        caching was off, unless this process configured itself (`config.travelling`): for this
        function only. The directory only on that process's host."""
        if travelled["pid"] == os.getpid() or config.configured_here():
            return  # a copy made where it was sent from, or a worker with its own settings
        self._enabled_at_origin = bool(travelled["enabled"])
        address = travelled["address"]
        if address is not None and self.options.cache is None:
            self._adopted = (address, travelled["host"])  # sent on as it came (`__reduce__`)
            if travelled["host"] != socket.gethostname():
                address = replace(address, directory=str(config.CACHE_DIRS["base"]))
            self.options = replace(self.options, cache=address)

    def __reduce__(self) -> tuple[Any, ...]:
        # A function of __main__ (a script, a notebook) travels by value with its engine
        # (cloudpickle: loky, Dask): what it is travels, its open cache, locks and pending
        # warnings stay behind and are rebuilt where it lands. The name travels as it is: there,
        # __main__ is another program.
        options = self.options
        if isinstance(options.cache, Cache):
            options = replace(options, cache=CacheAddress.of(options.cache))
        travelled = config.travelling()
        # Sent on from a worker: the first sender's cache (its host's directory) and whether
        # its caching was on, not this worker's.
        travelled["enabled"] = travelled["enabled"] and self._enabled_at_origin
        if self._adopted is not None:
            options = replace(options, cache=None)
            travelled["address"], travelled["host"] = self._adopted
        code = self._as_origin(code_fingerprint(self.fn))
        origin = Origin(code, _imported_code(self.fn), travelled)
        return (_Engine, (self.fn, options, self.time_options, self.name, origin))

    def _as_origin(self, code: str) -> str:
        """``code``, a code fingerprint computed in this process, as the process the function
        came from computed it (see ``_landed``)."""
        landed = self._landed
        return landed[1] if landed is not None and code == landed[0] else code

    # --- keys ---------------------------------------------------------------------------------

    @property
    def signature(self) -> inspect.Signature:
        """The function's signature, with its defaults as they are now."""
        if self._defaults.changed():
            self._signature = inspect.signature(self.fn)
            self._binder = FastBinder.for_signature(self._signature)
        return self._signature

    def _bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The arguments by name, defaults applied; None for a call the function rejects.
        Ignored keywords only a wrapper under the decorator takes are dropped first."""
        signature = self.signature  # first: it reads the defaults again if they changed
        dropped = self._wrapper_keywords
        if dropped and kwargs and not dropped.isdisjoint(kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k not in dropped}
        arguments = self._binder.bind(args, kwargs) if self._binder is not None else None
        if arguments is None:  # an unusual signature or call: inspect binds
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:  # the function, called uncached, raises Python's own error
                return None
            bound.apply_defaults()
            arguments = dict(bound.arguments)
        ignore = self.options.ignore
        if ignore:
            kept = {k: v for k, v in arguments.items() if k not in ignore}
            extra = self._var_keyword
            if extra is not None and isinstance(kept.get(extra), dict):  # `**options` too
                kept[extra] = {k: v for k, v in kept[extra].items() if k not in ignore}
            return kept
        return arguments

    def _state(self) -> _State:
        """``(code fingerprint, identity, remembered keys)``: what makes this function's keys its
        own (its name, code and ``version=``; the identity is recomputed, and the keys
        forgotten, only when the code fingerprint changes); and the values its code reads that
        count by their content now (mutable globals, closure cells), less ``ignore_globals``.
        Raises `FingerprintError` when such a value cannot be read."""
        lone = self._lone
        if lone is not None and lone[1](self.fn) is not None:
            code, live = lone[0], (lone[2]() if lone[2] is not None else ())
        else:
            code, live = code_state(self.fn)
            if code != self._not_lone:  # look again only after a change
                lone = self._lone = lone_code_state(self.fn)
                self._not_lone = "" if lone is not None else code
        if self._landed is not None:
            code = self._as_origin(code)
        known = self._known_identity
        if known is None or known[0] != code:
            own = ("afml-cache call", SPEC_VERSION, self.name, code, self.options.version)
            known = self._known_identity = (code, fingerprint(own), {})
            self._watch_next = True
        ignored = self.options.ignore_globals
        if live and ignored:
            # "os.environ" leaves out every variable, as 'os.environ["K"]' leaves out one.
            every_variable = "os.environ" in ignored
            live = tuple(
                item
                for item in live
                if item[0] not in ignored
                and not (every_variable and item[0].startswith("os.environ["))
            )
        return known, live

    def _key(
        self, arguments: dict[str, Any], ranges: tuple[Any, ...], state: _State | None = None
    ) -> str | None:
        """The digest of: the function's identity (``state``, read now if None: see `_state`);
        the code of the user classes among the arguments (or their instances' classes); the
        arguments; the time ranges; the contents of the files that ``Path`` arguments name
        (`file_contents`); then, if its code reads values that count by content, the
        digest of that digest and those values. None when it runs uncached."""
        live: LiveValues = ()
        try:
            known, live = self._state() if state is None else state
            classes = arguments_code(arguments.values())
            material = (known[1], (), classes, tuple(arguments.items()), ranges)
            files = file_contents(arguments)
            if files:  # the keys of calls without paths stay as they were
                material = (*material, files)
            expressions = self._expressions(arguments)
            if expressions:  # and those of calls without a query's @NAME too
                material = (*material, ("expressions", expressions))
            with reading_classes():
                key = fingerprint(material, strict=self.options.strict)
        except FingerprintError as exc:
            self._unkeyed(exc, arguments, live)
            return None
        return self._with_live(key, live, arguments) if live else key

    def _expressions(self, arguments: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        """The globals that strings among the arguments name for pandas to read
        (`argument_expressions`), with their values now."""
        fn = self.fn
        for _ in range(16):  # to the user's function under wrappers
            if type(fn) is types.FunctionType:
                return argument_expressions(fn, arguments.values())
            fn = getattr(fn, "__wrapped__", None)
        return ()

    def _with_live(self, key: str, live: LiveValues, arguments: dict[str, Any]) -> str | None:
        """The key of a call to a function that reads ``live`` values by content: that of the
        same call without them (which may be remembered, see `_remembered_key`) and them."""
        try:
            if self._watch_next:
                self._watch(live)
            return fingerprint(("afml-cache live values", key, live), strict=self.options.strict)
        except FingerprintError as exc:
            self._unkeyed(exc, arguments, live)
            return None

    def _watch(self, live: LiveValues) -> None:
        """Notes the digest of each value the function reads by content (at its first call
        under a code fingerprint), for `_changed_while_running` to compare after a miss. When
        the miss before changed some (`_left`) and this call reads them as that miss left
        them, nothing reset them between the calls (a counter, a session's request count, a
        random generator not seeded again): each such call misses, and that warns once."""
        self._watch_next = False
        self._watching = tuple((name, fingerprint(value)) for name, value in live)
        left, self._left = self._left, {}
        carried = [name for name, digest in self._watching if left.get(name) == digest]
        if carried:
            names = ", ".join(repr(name) for name in carried)
            self._warn_once(
                "changed globals",
                f"afml_cache: {self.name} changed {names} as it ran, and this call reads "
                f"{'it' if len(carried) == 1 else 'them'} as that call left "
                f"{'it' if len(carried) == 1 else 'them'}: each such call is a miss, as what "
                "the function reads counts in its key. Reset that state between calls (seed "
                "the random generator) to have hits, or, if it does not decide the result (a "
                f"counter, a session, a client), list it in ignore_globals=({names},)",
            )

    def _changed_while_running(self, watching: tuple[tuple[str, str], ...]) -> None:
        """After a miss whose key noted ``watching`` (see `_watch`): notes the values the call
        changed, as it left them, for the next call's `_watch` to compare."""
        try:
            now = dict(self._state()[1])
            left = {name: fingerprint(now[name]) for name, _ in watching if name in now}
        except FingerprintError:
            return
        self._left = {
            name: left[name] for name, digest in watching if left.get(name, digest) != digest
        }
        if self._left:
            self._watch_next = True

    def _unkeyed(self, error: Exception, arguments: dict[str, Any], live: LiveValues) -> None:
        """Raises (strict) or warns once that the call runs uncached, naming what has no
        fingerprint."""
        culprit = self._culprit(arguments, live)
        if self.options.strict:
            raise FingerprintError(f"{self.name}: {culprit}: {error}") from None
        remedy = "give its type a __cache_key__() or register_fingerprint()"
        if culprit.startswith("argument"):
            remedy += ", or list the argument in ignore="
        self._warn_once(
            "key",
            f"afml_cache: {self.name} runs uncached: {culprit} cannot be fingerprinted "
            f"({error}); {remedy}",
        )

    def _culprit(self, arguments: dict[str, Any], live: tuple[tuple[str, Any], ...]) -> str:
        for name, value in arguments.items():
            try:
                fingerprint(value, strict=self.options.strict)
            except FingerprintError:
                return f"argument {name!r}"
        for name, value in live:
            try:
                fingerprint(value, strict=self.options.strict)
            except FingerprintError:
                return f"global {name!r} (list it in ignore_globals= if it must not count)"
        return "an argument"

    # --- calls --------------------------------------------------------------------------------

    def is_cached(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether the call's result is stored, without loading it; False when it would run
        uncached."""
        prepared = self._prepare(args, kwargs)
        if prepared is None:
            return False
        entries, key, _ = prepared
        try:
            return entries.contains(key)
        except (CacheError, OSError) as exc:
            self._warn_once("store", f"afml_cache: {self.name} computes again: {exc}")
            return False

    def precache(self, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Stores ``value`` as the call's result, as a miss would (compute time 0), replacing
        what the call had stored, on every tier; False when the call would run uncached or the
        value could not be stored (said in one warning)."""
        prepared = self._prepare(args, kwargs)
        if prepared is None:
            return False
        entries, key, call = prepared
        failures = self._unstored
        self._store(entries, key, value, 0.0, call, replace=True)
        flush_writes()  # its outcome, before answering
        self._report_failures()
        return self._unstored == failures

    def code_fingerprint(self) -> str:
        """The fingerprint of the function's current code (what its entries record)."""
        return self._as_origin(code_fingerprint(self.fn))

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The key of the call ``f(*args, **kwargs)``; None when it would run uncached."""
        prepared = self._prepare(args, kwargs)
        return None if prepared is None else prepared[1]

    def cache(self) -> Cache | None:
        """This function's view of its cache (None while caching is unusable)."""
        view = self._open()
        return None if view is None else view[1]

    def _open(self) -> tuple[Cache, Cache, Entries] | None:
        """The cache, this function's view of it and the view's entries by digest (None while
        caching is unusable)."""
        base = self.options.cache
        if base is None:
            base = config.shared_cache()
        elif isinstance(base, CacheAddress):
            try:
                base = base.open()
            except (CacheError, OSError) as exc:
                self._warn_once("open", f"afml_cache: {self.name} runs uncached: {exc}")
                return None
        if base is None:
            return None
        view = self._view
        if view is None or view[0] is not base:  # the first call, or configure() changed it
            mine = base.namespaced(self.name, self.options.compression)
            view = self._view = (base, mine, mine.by_digest)
        return view

    def _prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Entries, str, Call] | None:
        """The entries, key and details of a call, or None when it must run uncached: also
        when keying it failed inside afml-cache, which warns once and never stops the call."""
        try:
            return self._keyed(args, kwargs)
        except (FingerprintError, Warning):  # strict=True, or warnings made errors: asked for
            raise
        except Exception as exc:
            self._warn_once(
                "internal",
                f"afml_cache: {self.name} runs uncached: keying its call failed inside "
                f"afml-cache ({type(exc).__name__}: {exc}); please report this with the "
                "function's code",
            )
            return None

    def _keyed(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Entries, str, Call] | None:
        """`_prepare`, letting an unexpected exception through."""
        if (
            not config.cache_enabled()
            or not self._enabled_at_origin
            or self._changes_in_place is not None
        ):
            return None
        self._watching = ()  # only the digests this call's key notes count for it
        view = self._open()
        if view is None:
            return None
        try:
            state: _State | None = self._state()
        except FingerprintError:
            state = None  # `_key` reads it again and says what failed
        if state is not None and len(args) == self._remembering and not kwargs:
            key = self._remembered_key(args, state[0])
            if key is not None and state[1]:
                key = self._with_live(key, state[1], {})
                if key is None:
                    return None
            if key is not None:
                return view[2], self._with_generators(key), NO_RANGES
        arguments = self._bound(args, kwargs)
        if arguments is None:
            return None
        call, ranges = NO_RANGES, ()
        if self.time_options is not None:
            call = Call(time_ranges(arguments, self.time_options))
            ranges = tuple((r.argument, r.start_ns, r.end_ns, r.rows, r.freq) for r in call.ranges)
        key = self._key(arguments, ranges, state)
        return None if key is None else (view[2], self._with_generators(key), call)

    def _with_generators(self, key: str, states: tuple[str, ...] | None = None) -> str:
        """The key of a call to a function seen drawing from numpy's global generator inside
        code it does not own (`_key_after_miss`): the call's key and the generator's state
        (``states``, or now). A call that finds it as the last miss left it warns once: each
        such call misses until something seeds it again."""
        if not self._draws:
            return key
        if states is None:
            states = global_generators()
            if states == self._generators_left and "changed globals" not in self._warned:
                self._warn_once(
                    "generators",
                    f"afml_cache: {self.name} draws from numpy's global random generator "
                    "(inside a library call: df.sample(), a model or a split without "
                    "random_state), so its results count the generator's state, and "
                    "this call finds it as the last call left it: each such call is a miss. "
                    "Seed it before each call (np.random.seed(...)) or pass random_state= to "
                    "have hits",
                )
        return fingerprint(("afml-cache global generators", key, states))

    def _generators_before(self) -> tuple[str, ...] | None:
        """Before a miss runs: numpy's global generator's state, for `_key_after_miss`; None
        once the function is known to draw (its key holds it)."""
        return None if self._draws else global_generators()

    def _key_after_miss(self, key: str, before: tuple[str, ...] | None) -> str:
        """The key to store a miss under. A call that changed numpy's global generator's state
        without seeding it (a draw inside a library: nothing in the walk of its code says so)
        depended on that state: it and the calls after count the state (`_with_generators`), as
        the walk makes a direct ``np.random.normal`` count it."""
        fn = self.fn
        if (
            before is not None
            and global_generators() != before
            and not (isinstance(fn, types.FunctionType) and seeds_a_global_generator(fn))
        ):
            self._draws = True
            key = self._with_generators(key, before)
        if self._draws:
            self._generators_left = global_generators()
        return key

    def _remembered_key(
        self, args: tuple[Any, ...], known: tuple[str, str, dict[Any, str]]
    ) -> str | None:
        """The key, without live values, of a call whose arguments are all given by position
        and all exact scalars (`_SCALAR_TYPES`, no float zero): computed once per code
        fingerprint (``known``, see `_state`), then remembered, so a hit spares binding and
        fingerprinting them. None for other calls."""
        kinds = tuple(map(type, args))
        if not _SCALAR_TYPES.issuperset(kinds) or 0.0 in args:
            return None
        remembered = known[2]
        key = remembered.get((args, kinds))
        if key is None:
            arguments = self._bound(args, {})
            if arguments is None or self._expressions(arguments):
                return None  # a global a query string names counts as it is at each call
            key = self._key(arguments, (), (known, ()))
            if key is not None:
                if len(remembered) >= _REMEMBERED_KEYS:
                    remembered.clear()
                remembered[(args, kinds)] = key
        return key

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        start = self._begin()
        prepared = self._prepare(args, kwargs)
        if prepared is None:
            return self.fn(*args, **kwargs)
        entries, key, call = prepared
        watching, self._watching = self._watching, ()
        found, value, compute_time = self._lookup(entries, key)
        if found:
            self._record_hit(entries, key, compute_time, start)
            return value
        lock = self._lock(entries, key)
        try:
            if lock is not None:
                # Another thread or process may have computed it while this one waited.
                found, value, compute_time = self._lookup(entries, key)
                if found:
                    self._record_hit(entries, key, compute_time, start)
                    return value
            before = self._generators_before()
            outlines = _outlines(args, kwargs)
            read = self._read_now(args, kwargs)
            computing = time.perf_counter()
            result = self.fn(*args, **kwargs)
            elapsed = time.perf_counter() - computing
            # A result that cannot be stored as this key's is returned, counted as a miss.
            if not (self._changes_arguments(outlines) or self._read_changed(read, args, kwargs)):
                key = self._key_after_miss(key, before)
                # A value written behind keeps the lock until it is on disk: whoever waits for
                # the key then finds it there.
                self._store(entries, key, result, elapsed, call, lock)
                lock = None
        finally:
            if lock is not None:
                lock.release()
        self._record_miss(entries, key, elapsed, start)
        if watching:
            self._changed_while_running(watching)
        return result

    def _read_now(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Read | None:
        """Before a miss runs: what its key read that may change while it runs, from outside
        the call: the contents of the files its ``Path`` arguments name (a download rewrites
        one); and, while other threads run, the values its code reads by content and numpy's
        global generator (another thread edits a global, or draws). None when there is none."""
        files = self._files_read(args, kwargs)
        times = _run_times()
        if not times:
            return _Read(files, None) if files else None
        return _Read(files, (times, *self._globals_read()))

    def _files_read(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[str, Any], ...]:
        arguments = self._bound(args, kwargs)
        return file_contents(arguments) if arguments is not None else ()

    def _globals_read(self) -> tuple[Any, tuple[str, ...]]:
        """The digest of the globals the code reads (by identity, an int rebound, and by
        content), and numpy's global generator's state (even for a function that seeds it
        itself: another thread may seed or draw between)."""
        try:
            known, live = self._state()
            read: Any = fingerprint((known[1], live))
        except FingerprintError:
            read = None
        return read, global_generators()

    def _read_changed(
        self, read: _Read | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bool:
        """After a miss: whether what `_read_now` noted changed while it ran. Its result may
        then be another state's than the one its key holds, and stored, it would be that
        state's hit for good: it is returned, not stored, with one warning."""
        if read is None:
            return False
        changed = []
        if self._files_read(args, kwargs) != read.files:
            changed.append("the files its Path arguments name")
        # Unless another thread ran, the changes are this call's own (a counter, its draws).
        threaded = read.threaded
        ran = threaded is not None and _ran(threaded[0], _run_times())
        if threaded is not None and ran:
            globals_read, generators = self._globals_read()
            if globals_read != threaded[1]:
                changed.append("the globals it reads")
            if generators != threaded[2]:
                changed.append("numpy's global random generator")
        if not changed:
            return False
        self._warn_once(
            "read changed",
            f"afml_cache: {self.name}: {' and '.join(changed)} changed while it ran"
            f"{' (another thread ran meanwhile)' if ran else ''}, so its "
            "result may not be the one its key's values give: it was returned, not stored; "
            "keep them unchanged while it runs (pass values as arguments; give each thread its "
            "own np.random.default_rng(seed))",
        )
        return True

    def _changes_arguments(self, outlines: list[tuple[str, Any, Any]]) -> bool:
        """After a miss: whether it changed an argument in place (`_outline`). A hit returns the
        result without doing that again (``events["trgt"] = ...; return events`` would leave
        the caller's ``events`` without the column), so the result is not stored, and the
        function runs uncached from then on, which one warning says."""
        where = _changed_in_place(outlines) if outlines else None
        if where is None:
            return False
        self._changes_in_place = where
        names = list(self.signature.parameters)
        if where.isdigit() and int(where) < len(names):
            where = names[int(where)]
        what = f"argument {where!r}"
        self._warn_once(
            "changes arguments",
            f"afml_cache: {self.name} changed its {what} in place, which a cached result "
            "cannot do again, so it runs uncached: return what it computes and leave its "
            "arguments as they came (events = events.assign(trgt=...)), or copy them first",
        )
        return True

    def _lookup(self, entries: Entries, key: str, *, copy: bool = True) -> tuple[bool, Any, float]:
        """``entries.lookup``, where an entry that cannot be read (permission denied, a
        directory in its place) is a miss with one warning: the call computes."""
        try:
            return entries.lookup(key, copy=copy)
        except (CacheError, OSError) as exc:
            self._warn_once("store", f"afml_cache: {self.name} computes again: {exc}")
            return False, None, 0.0

    def _lock(self, entries: Entries, key: str) -> KeyLock | None:
        """The key's single-flight lock; None if another caller kept it past LOCK_TIMEOUT or
        the lock cannot be taken (then this call computes unguarded)."""
        try:
            return entries.lock(key, LOCK_TIMEOUT)
        except (CacheError, OSError) as exc:
            if getattr(exc, "errno", None) in _READ_ONLY:
                # A directory this process may only read: its results cannot be stored either,
                # and one warning says both (the store's, then, is not repeated).
                self._warn_once(
                    "store",
                    f"afml_cache: {self.name} computes without its lock ({exc}): in a "
                    "directory it may only read, its results are returned but not cached",
                )
            else:
                self._warn_once("lock", f"afml_cache: {self.name} computes without its lock: {exc}")
            return None

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        start = self._begin()
        prepared = self._prepare(args, kwargs)
        if prepared is None:
            return await self.fn(*args, **kwargs)
        entries, key, call = prepared
        watching, self._watching = self._watching, ()
        found, value, compute_time = self._lookup(entries, key)
        if found:
            self._record_hit(entries, key, compute_time, start)
            return value
        # No cross-task lock: awaiting a blocking file lock would stall the event loop.
        before = self._generators_before()
        outlines = _outlines(args, kwargs)
        computing = time.perf_counter()
        result = await self.fn(*args, **kwargs)
        elapsed = time.perf_counter() - computing
        if self._changes_arguments(outlines):
            return result
        key = self._key_after_miss(key, before)
        self._store(entries, key, result, elapsed, call)
        self._record_miss(entries, key, elapsed, start)
        if watching:
            self._changed_while_running(watching)
        return result

    def _store(
        self,
        entries: Entries,
        key: str,
        result: Any,
        elapsed: float,
        call: Call,
        lock: KeyLock | None = None,
        *,
        extra: dict[str, Any] | None = None,
        time_range: tuple[int, int] | None = None,
        detail: str = "",
        replace: bool = False,
    ) -> None:
        """Stores a result; releases ``lock`` once it is on disk (or the attempt failed).
        ``extra`` adds to the entry's metadata, ``time_range`` is the data's when no argument
        gives one (`call.ranges`), ``detail`` ends the verbose line, ``replace`` makes a
        value given (`precache`) replace what a shared prefix holds for the key."""
        ttl = self.options.ttl
        # The code fingerprint lets smart_cache_clear find entries of code that has changed.
        metadata: dict[str, Any] = {"function": self.name, "code": self.code_fingerprint()}
        metadata.update(extra or {})
        if call.ranges:
            metadata["time_ranges"] = [r.describe() for r in call.ranges]
            time_range = (min(r.start_ns for r in call.ranges), max(r.end_ns for r in call.ranges))
            forming = live_ttl(time_range[1], self.time_options)
            if forming is not None:
                ttl = forming if ttl is None else min(ttl, forming)

        def behind(error: Exception | None, size: int) -> None:  # on the writer thread if behind
            if lock is not None:
                lock.release()
            if error is not None:
                self._not_stored(error)
            if config.verbosity() >= 1:
                stored = "not stored" if error is not None else f"stored {format_size(size)}"
                _say(f"miss {self.name}: computed in {format_latency(elapsed)}, {stored}{detail}")

        entries.put(
            key,
            result,
            ttl=ttl,
            tags=self.options.tags,
            metadata=metadata,
            compute_time=elapsed,
            time_range=time_range,
            behind=behind,
            replace=replace,
        )
        if self._failures:  # written now and failed: warn at this call
            self._report_failures()

    def _begin(self) -> float:
        """How every call opens: its start (for its latency), then the warning of results that
        could not be stored since the last call (found on the writer thread)."""
        start = time.perf_counter()
        if self._failures:
            self._report_failures()
        return start

    def _not_stored(self, error: Exception) -> None:
        """Notes a failure to store a result: logged now, warned once on the user's thread."""
        message = f"the result of {self.name} was returned but not cached: {error}"
        _log.warning("%s", message)
        self._failures.append(message)
        self._unstored += 1

    def _report_failures(self) -> None:
        failures, self._failures = self._failures, []
        if failures:
            self._warn_once("store", f"afml_cache: {failures[0]}")

    def _record_hit(self, entries: Entries, key: str, saved: float, start: float) -> None:
        latency = time.perf_counter() - start
        self._record(entries, True, 0.0, saved, latency)
        if config.verbosity() >= 2:
            took = format_latency(saved)
            _say(f"hit {self.name} in {format_latency(latency)} (computing took {took})")
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("hit %s [%s] in %.6f s", self.name, key[:16], latency)

    def _record_miss(self, entries: Entries, key: str, compute: float, start: float) -> None:
        latency = time.perf_counter() - start
        self._record(entries, False, compute, 0.0, latency)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("miss %s [%s]: computed in %.6f s", self.name, key[:16], compute)

    def _record(
        self, entries: Entries, hit: bool, compute: float, saved: float, latency: float
    ) -> None:
        watching = _WATCHING.get()
        if watching is not None:
            watching.append((self, hit))
        try:
            entries.record_call(self.name, hit, compute, saved, latency)
        except OSError as exc:  # statistics are a convenience; never fail a call over them
            _log.debug("could not count a call of %s: %s", self.name, exc)

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, CacheWarning, stacklevel=caller_stacklevel())

    # --- the function's own cache --------------------------------------------------------------

    def cache_info(self) -> dict[str, Any]:
        """Calls, hits, misses, hit rate, compute and saved time, and the entries kept."""
        from afml_cache.monitoring import function_row

        cache = self.cache()
        entries = cache.entries() if cache is not None else []  # waits for writes behind
        return {**function_row(cache, self.name), "entries": len(entries)}

    def cache_clear(self) -> int:
        """Removes this function's entries; returns how many."""
        cache = self.cache()
        return 0 if cache is None else cache.remove_entries(cache.entries())

    def cache_entries(self) -> list[dict[str, Any]]:
        """This function's entries, with their metadata (and, if time-aware, ``time_range``:
        the first and last moment of their data, as UTC ``pd.Timestamp``s)."""
        cache = self.cache()
        entries = [] if cache is None else cache.entries()
        for entry in entries:
            if entry.get("time_range") is not None:  # stored as ns since the epoch
                import pandas as pd

                start, end = entry["time_range"]
                entry["time_range"] = (pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC"))
        return entries

    def invalidate(self, *, overlapping: tuple[Any, Any] | None = None, after: Any = None) -> int:
        """Removes the entries whose data range touches ``overlapping=(t0, t1)`` or reaches past
        ``after=t``; returns how many."""
        if (overlapping is None) == (after is None):
            raise ValueError("invalidate takes exactly one of overlapping=(t0, t1) or after=t")
        try:
            if overlapping is not None:
                low, high = (to_ns(t) for t in overlapping)
            else:
                low, high = to_ns(after), None
        except (TypeError, ValueError) as exc:
            given = (
                f"overlapping={overlapping!r}" if overlapping is not None else f"after={after!r}"
            )
            raise ValueError(
                f"{self.name}.invalidate({given}): not a time ({exc}); give dates, datetimes, "
                "Timestamps or strings like '2024-03-01'"
            ) from None
        cache = self.cache()
        if cache is None:
            return 0

        def touches(entry: dict[str, Any]) -> bool:
            span = entry.get("time_range")
            if span is None:
                return False
            start, end = span
            return end >= low and (high is None or start <= high)

        return cache.remove_entries(e for e in cache.entries() if touches(e))


def _imported_code(fn: Callable[..., Any]) -> str | None:
    """`imported_code` of a function; None for another callable, or one that cannot be read
    (then no worker takes its origin's fingerprint for its own)."""
    try:
        return imported_code(fn) if type(fn) is types.FunctionType else None
    except Exception:
        return None


def function_name(fn: Callable[..., Any]) -> str:
    """The name a decorated function's entries and statistics are kept under: its module and
    qualified name, and for a function of ``__main__`` the path of the script or notebook that
    defines it (``__main__[/home/ana/labels.ipynb].load_data``), so that two programs' functions
    of one name never share entries, statistics or maintenance. ``__main__`` without a known
    path (a REPL, ``python -c``) keeps the plain name."""
    module = fn.__module__
    # A script's functions are __mp_main__'s in the processes multiprocessing spawns.
    if module not in ("__main__", "__mp_main__"):
        return f"{module}.{fn.__qualname__}"
    # A wrapper made with functools.wraps (mlflow_cached's) names the program of what it wraps.
    path = _program_path(getattr(inspect.unwrap(fn), "__globals__", {}))
    where = "" if path is None else f"[{path}]"
    return f"__main__{where}.{fn.__qualname__}"


def _program_path(namespace: dict[str, Any]) -> str | None:
    """The file ``__main__`` runs: the notebook as the kernel reports it (VS Code, then Jupyter's
    session name), else the script."""
    for marker in ("__vsc_ipynb_file__", "__session__", "__file__"):
        path = namespace.get(marker)
        if isinstance(path, str) and path:
            return os.path.realpath(path)
    path = os.environ.get("JPY_SESSION_NAME")  # a Jupyter kernel that does not set __session__
    return os.path.realpath(path) if path else None


def _say(line: str) -> None:
    """One line of ``verbose`` output, on stderr as it is now (pytest's capture, a notebook's)."""
    with contextlib.suppress(OSError, ValueError):  # a closed stderr: the call goes on
        print(f"[afml_cache] {line}", file=sys.stderr, flush=True)
