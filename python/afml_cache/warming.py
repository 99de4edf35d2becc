"""Warming a decorated function's cache: ``f.is_cached``, ``f.precache`` and ``f.warm``, and the
warm-ups ``afml-cache warm MODULE:FUNCTION`` runs from cron or CI.

``f.warm(calls)`` computes only the calls whose result is not cached yet. Each call in ``calls``
is one of:

- a tuple: the positional arguments, ``(close, 20)`` (``(close,)`` for one argument);
- a dict: the keyword arguments, ``{"close": close, "window": 20}``;
- ``call(*args, **kwargs)`` (from this module): both, ``call(close, window=20)``.

A pair ``(args, kwargs)`` is not accepted: it reads the same as a call with a tuple and a dict as
its two positional arguments, and a warm-up must never compute a different call than meant.

Where calls compute: in this process (``n_jobs=None`` or 1); in ``n_jobs`` worker processes
(joblib's loky workers; ``-1`` for one per core), which use this process's cache settings; or on
a Dask ``client``, whose workers use their own configuration (``AFML_CACHE_DIR``,
``AFML_CACHE_REMOTE``), as other machines do. A key computing elsewhere (another worker, another
machine sharing the store) is waited for, not computed twice.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from afml_cache import config
from afml_cache.calls import shown

__all__ = [
    "Call",
    "Failure",
    "WarmReport",
    "attach",
    "call",
    "collect_reports",
    "failure_lines",
    "failures",
    "is_cached",
    "load_warmup",
    "precache",
    "run_warmup",
    "summary",
    "warm",
]

# What one call of a warm-up came to (the worker's answer).
COMPUTED, ALREADY_CACHED, FAILED = "computed", "already_cached", "failed"
# How much of a failed call's arguments a report shows.
_SHOWN_ARGUMENTS = 200


@dataclass(frozen=True)
class Call:
    """One call of a function: its positional and keyword arguments."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [shown(a) for a in self.args] + [f"{k}={shown(v)}" for k, v in self.kwargs.items()]
        text = ", ".join(parts)
        return text if len(text) <= _SHOWN_ARGUMENTS else text[: _SHOWN_ARGUMENTS - 3] + "..."


def call(*args: Any, **kwargs: Any) -> Call:
    """A call with positional and keyword arguments, for ``f.warm``:
    ``f.warm([call(close, window=w) for w in (10, 20, 50)])``."""
    return Call(args, kwargs)


class Failure(TypedDict):
    """A call of ``calls`` that did not end up cached: its position, arguments and why."""

    call: int
    arguments: str
    error: str


class WarmReport(TypedDict):
    """What ``f.warm`` did. ``computed``: calls computed now and stored; ``already_cached``:
    calls whose result was cached already (or was computed meanwhile by another process, or
    repeats a call of ``calls`` computed now); ``failed``: the calls that are not cached, by
    position in ``calls``, with the error (the function raised, its result could not be
    stored, or the call cannot be cached; a repeat of such a call too). The three add up to
    the number of calls."""

    function: str
    computed: int
    already_cached: int
    failed: list[Failure]


# The reports of the warms run while `collect_reports` watches (afml-cache warm).
_COLLECTING: contextvars.ContextVar[list[WarmReport] | None] = contextvars.ContextVar(
    "afml_cache_warm_reports", default=None
)


@contextlib.contextmanager
def collect_reports() -> Iterator[list[WarmReport]]:
    """Collects the report of every ``f.warm`` that finishes in this thread inside the block."""
    reports: list[WarmReport] = []
    token = _COLLECTING.set(reports)
    try:
        yield reports
    finally:
        _COLLECTING.reset(token)


def _as_call(item: Any, position: int) -> Call:
    """One item of ``calls`` as a `Call`; a clear error for anything else."""
    if isinstance(item, Call):
        return item
    if isinstance(item, tuple):
        return Call(item, {})
    if isinstance(item, Mapping):
        names = [k for k in item if not isinstance(k, str)]
        if names:
            raise TypeError(
                f"calls[{position}]: keyword arguments are named by strings, got {names[0]!r}"
            )
        return Call((), dict(item))
    raise TypeError(
        f"calls[{position}] is a {type(item).__name__}; give each call as a tuple of positional "
        "arguments ((x,) for one), a dict of keyword arguments, or "
        "afml_cache.warming.call(*args, **kwargs)"
    )


def attach(function: Callable[..., Any]) -> None:
    """Gives a decorated function ``is_cached``, ``precache`` and ``warm``."""

    def is_cached_(*args: Any, **kwargs: Any) -> bool:
        """Whether ``f(*args, **kwargs)``'s result is cached (nothing is loaded)."""
        return is_cached(function, args, kwargs)

    def precache_(value: Any, /, *args: Any, **kwargs: Any) -> bool:
        """Stores ``value`` as the result of ``f(*args, **kwargs)``."""
        return precache(function, value, args, kwargs)

    def warm_(calls: Iterable[Any], n_jobs: int | None = None, client: Any = None) -> WarmReport:
        """Computes the calls not cached yet; see `afml_cache.warming`."""
        return warm(function, calls, n_jobs=n_jobs, client=client)

    function.is_cached = is_cached_  # type: ignore[attr-defined]
    function.precache = precache_  # type: ignore[attr-defined]
    function.warm = warm_  # type: ignore[attr-defined]


# --- one call ---------------------------------------------------------------------------------


def is_cached(function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the result of ``function(*args, **kwargs)`` is in its cache, without loading it.
    False when the call would run uncached (caching disabled, an argument with no fingerprint,
    arguments the function does not take)."""
    return bool(function.__afml_cache__.is_cached(args, kwargs))  # type: ignore[attr-defined]


def precache(
    function: Callable[..., Any], value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool:
    """Stores ``value`` as the result of ``function(*args, **kwargs)`` (replacing what was there),
    as if the call had computed it; the call must be one the function accepts. Returns whether
    it was stored (False when the call would run uncached; a store failure warns once)."""
    engine = function.__afml_cache__  # type: ignore[attr-defined]
    _bind(engine.signature, Call(args, kwargs), engine.name)
    return bool(engine.precache(value, args, kwargs))


def _bind(signature: inspect.Signature, one: Call, name: str) -> None:
    try:
        signature.bind(*one.args, **one.kwargs)
    except TypeError as exc:
        raise TypeError(f"{name} does not take the call ({one.describe()}): {exc}") from None


# The warm whose cache settings this worker process has taken.
_SETTINGS_OF: str | None = None


def _warm_one(
    function: Callable[..., Any], one: Call, settings: tuple[str, dict[str, Any]] | None
) -> tuple[str, str | None]:
    """Runs one call where it lands (this process or a worker): ``(COMPUTED or ALREADY_CACHED,
    None)``, or ``(FAILED, why)``. ``settings``: the warm's id and the cache settings of the
    process that warms, for its workers to use; None to keep this process's own."""
    global _SETTINGS_OF
    if settings is not None and settings[0] != _SETTINGS_OF:
        config.restore_settings(settings[1])  # once per warm: it reopens the cache
        _SETTINGS_OF = settings[0]
    from afml_cache.decorators import watch_calls  # the decorators import this module

    engine = function.__afml_cache__  # type: ignore[attr-defined]
    try:
        with watch_calls() as seen:
            function(*one.args, **one.kwargs)
    except Exception as exc:
        return FAILED, f"{type(exc).__name__}: {exc}"
    outcome = next((hit for e, hit in reversed(seen) if e is engine), None)
    if outcome is True:
        return ALREADY_CACHED, None
    if outcome is None:
        return FAILED, "it ran uncached (caching is disabled or unusable where it ran)"
    if not engine.is_cached(one.args, dict(one.kwargs)):
        return FAILED, (
            "it was computed but is not cached under its key now: its result could not be "
            "stored, or a value it reads changed as it ran (see the warning)"
        )
    return COMPUTED, None


# --- many calls -------------------------------------------------------------------------------


def warm(
    function: Callable[..., Any],
    calls: Iterable[Any],
    n_jobs: int | None = None,
    client: Any = None,
) -> WarmReport:
    """Computes the calls of ``calls`` whose result is not cached yet (see the module's
    docstring for what a call is and where it runs) and returns a `WarmReport`. The function's
    own exceptions do not stop the warm: they are reported under ``failed``."""
    engine = function.__afml_cache__  # type: ignore[attr-defined]
    if inspect.iscoroutinefunction(engine.fn):
        raise TypeError(
            f"{engine.name} is a coroutine function: warm it by awaiting its calls "
            "(await asyncio.gather(*(f(*args) for args in calls)))"
        )
    if client is not None and n_jobs not in (None, 1):
        raise ValueError("give n_jobs= or client=, not both: a Dask client runs the calls itself")
    if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1):
        raise ValueError(f"n_jobs={n_jobs!r}: give a number of processes, or -1 for every core")
    if isinstance(calls, str | bytes) or not isinstance(calls, Iterable):
        raise TypeError(
            f"{engine.name}.warm takes an iterable of calls (tuples of arguments, dicts of "
            f"keyword arguments, or call(...)), got {type(calls).__name__} {calls!r}"
        )
    every = [_as_call(item, i) for i, item in enumerate(calls)]
    report: WarmReport = {
        "function": engine.name,
        "computed": 0,
        "already_cached": 0,
        "failed": [],
    }

    def fail(position: int, why: str) -> None:
        report["failed"].append(
            {"call": position, "arguments": every[position].describe(), "error": why}
        )

    todo: dict[str, list[int]] = {}  # key -> the positions of its calls, to compute once
    for position, one in enumerate(every):
        try:
            _bind(engine.signature, one, engine.name)
        except TypeError as exc:
            fail(position, str(exc))
            continue
        key = engine.key(one.args, dict(one.kwargs))
        if key is None:
            fail(
                position,
                "the call cannot be cached (caching is disabled, or an argument has "
                "no fingerprint: see the warning)",
            )
        elif key in todo:
            todo[key].append(position)
        elif engine.is_cached(one.args, dict(one.kwargs)):
            report["already_cached"] += 1
        else:
            todo[key] = [position]
    groups = list(todo.values())
    outcomes = _run(function, [every[g[0]] for g in groups], n_jobs, client)
    for (first, *repeats), (outcome, why) in zip(groups, outcomes, strict=True):
        # A repeat of a call fares as the call: cached once it is, failed when it failed.
        if outcome == FAILED:
            for position in (first, *repeats):
                fail(position, why or "")
        else:
            report["computed" if outcome == COMPUTED else "already_cached"] += 1
            report["already_cached"] += len(repeats)
    report["failed"].sort(key=lambda f: f["call"])
    collecting = _COLLECTING.get()
    if collecting is not None:
        collecting.append(report)
    return report


def _run(
    function: Callable[..., Any], calls: list[Call], n_jobs: int | None, client: Any
) -> list[tuple[str, str | None]]:
    """The outcome of each call, in order."""
    if not calls:
        return []
    if client is not None:
        futures = client.map(
            _warm_one, [function] * len(calls), calls, [None] * len(calls), pure=False
        )
        return [_result(future) for future in futures]
    if n_jobs is None or n_jobs == 1:
        return [_warm_one(function, one, None) for one in calls]
    try:
        from joblib import Parallel, delayed
    except ImportError:
        raise ImportError(
            "f.warm(n_jobs=...) runs the calls in joblib's worker processes: pip install joblib "
            "(or warm on a Dask client=)"
        ) from None
    settings = (uuid.uuid4().hex, config.settings())
    outcomes: list[tuple[str, str | None]] = Parallel(n_jobs=n_jobs)(
        delayed(_warm_one)(function, one, settings) for one in calls
    )
    return outcomes


def _result(future: Any) -> tuple[str, str | None]:
    """A Dask future's outcome; a task the cluster lost (a worker died) is a failed call."""
    try:
        outcome: tuple[str, str | None] = future.result()
    except Exception as exc:
        return FAILED, f"the cluster could not run it: {type(exc).__name__}: {exc}"
    return outcome


# --- warm-ups (afml-cache warm) ----------------------------------------------------------------


def load_warmup(spec: str) -> Callable[[], Any]:
    """The function named by ``MODULE:FUNCTION`` (``my_project.warmups:nightly``), imported with
    the current directory on the path as ``python -m`` does; ``ValueError`` naming what is
    wrong otherwise."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"{spec!r}: name the warm-up as MODULE:FUNCTION, e.g. warmups:nightly")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"{spec!r}: cannot import {module_name!r} ({exc}); run from the directory that "
            "holds it, or install it"
        ) from None
    found: Any = module
    for part in name.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ValueError(f"{spec!r}: {module_name} has no {name!r}")
    if not callable(found):
        raise ValueError(f"{spec!r}: {name} is a {type(found).__name__}, not a function")
    return found  # type: ignore[no-any-return]


def run_warmup(warmup: Callable[[], Any]) -> list[WarmReport]:
    """Runs a warm-up function (no arguments) and returns the reports of the ``f.warm`` calls it
    made. Its exceptions propagate."""
    with collect_reports() as reports:
        warmup()
    return reports


def failures(reports: Iterable[WarmReport]) -> int:
    """How many calls failed in all of ``reports``."""
    return sum(len(r["failed"]) for r in reports)


def summary(reports: Iterable[WarmReport]) -> str:
    """One line per report: what each ``f.warm`` computed."""
    return "".join(
        f"{r['function']}: {r['computed']:,} computed, {r['already_cached']:,} already cached, "
        f"{len(r['failed']):,} failed\n"
        for r in reports
    )


def failure_lines(reports: Iterable[WarmReport]) -> str:
    """One line per failed call: the function, the call's position and arguments, and why."""
    return "".join(
        f"afml-cache warm: {r['function']} call {f['call']} ({f['arguments']}): {f['error']}\n"
        for r in reports
        for f in r["failed"]
    )
