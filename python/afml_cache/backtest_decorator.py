"""`cached_backtest`: a backtest function whose runs are cached, keyed like `robust_cacheable`.
Imported from `afml_cache.backtest_cache`, the guide's path.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd

from afml_cache import config
from afml_cache.backtest_runs import (
    NAMESPACE,
    BacktestCache,
    BacktestResult,
    _check_strategy,
    _data_range,
    _frame,
    _parts,
    _range_stamps,
    _run_metadata,
    _store_curve,
    _without_trades,
)
from afml_cache.cache import Cache, check_ttl
from afml_cache.decorators import _Engine, _Options, _outlines
from afml_cache.errors import CacheError, CacheWarning

_log = logging.getLogger("afml_cache")
# How long a call waits for another process running the same backtest before running it too.
LOCK_TIMEOUT = 600.0


# --- the decorator ----------------------------------------------------------------------------


def cached_backtest(
    strategy_name: str,
    save_trades: bool = True,
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    ignore: Iterable[str] = (),
    ignore_globals: Iterable[str] = (),
    version: Any = None,
    cache: Cache | None = None,
    strict: bool = False,
) -> Callable[[Callable[..., Any]], BacktestFunction]:
    """Caches a backtest ``f(data, params, *args, **kwargs)`` as a run of ``strategy_name``.

    The key is the strategy name and what `robust_cacheable` keys a call on: the function's code
    (transitively: editing the strategy class runs it again), the globals it reads by content,
    and every bound argument by content. A call returns exactly
    what the function returned, on a miss and on a hit, except that with ``save_trades=False``
    the trades are not stored and a hit has None in their place. The run's metrics come from the
    result: a dict of numbers, the dict of a ``(metrics, trades, equity)`` tuple, or a statistics
    Series like backtesting.py's ``Backtest.run()``. Concurrent calls with equal arguments, in
    threads or processes (joblib, multiprocessing, Dask), run the backtest once.

    ``f.last_run_id`` is the run id of this thread's last call; ``f.runs()`` lists the runs.
    The other options are `robust_cacheable`'s: ``ttl``, ``tags``, ``ignore``,
    ``ignore_globals``, ``version``, ``cache`` and ``strict``.
    """
    _check_strategy(strategy_name)
    save_trades = bool(save_trades)
    # The decorators' options: their engine names and keys each call. The version holds what
    # else a run depends on, and keeps runs apart from robust_cacheable's entries.
    options = _Options(
        ttl=check_ttl(ttl),
        tags=tuple([tags] if isinstance(tags, str) else tags),
        ignore=frozenset([ignore] if isinstance(ignore, str) else ignore),
        version=("afml_cache.cached_backtest", strategy_name, save_trades, version),
        cache=cache,
        strict=strict,
        ignore_globals=frozenset(
            [ignore_globals] if isinstance(ignore_globals, str) else ignore_globals
        ),
    )

    def decorate(fn: Callable[..., Any]) -> BacktestFunction:
        if not inspect.isfunction(fn):
            raise TypeError(f"cached_backtest decorates a function, got {fn!r}")
        return BacktestFunction(_Engine(fn, options, None), strategy_name, save_trades)

    return decorate


class BacktestFunction:
    """A function decorated with `cached_backtest`: call it as the function itself."""

    def __init__(self, engine: _Engine, strategy: str, save_trades: bool) -> None:
        functools.update_wrapper(self, engine.fn)
        self.uncached = engine.fn
        # robust_cacheable's engine: the function's name, its keys and its cache; this class
        # keeps its own lookup, lock and store, as runs are kept apart from other entries.
        self._engine = engine
        self._strategy = strategy
        self._save_trades = save_trades
        self._name = engine.name
        names = list(engine.signature.parameters)
        # A method's data comes after its instance; neither is a parameter of the run.
        instance = names[:1] if names[:1] in (["self"], ["cls"]) else []
        self._data_name: str | None = names[len(instance)] if names[len(instance) :] else None
        self._not_parameters = {*instance, self._data_name, *engine.options.ignore}
        self._local = threading.local()
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"<cached_backtest({self._strategy!r}) {self._name}>"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else types.MethodType(self, instance)

    def __reduce__(self) -> Any:
        # By reference where an importable module holds this object, as pickle does for
        # functions. Else by value, with the engine, for workers that rebuild it: a script's or
        # notebook's `__main__` is not the workers' (cloudpickle sends the code).
        qualname: str = self.uncached.__qualname__
        found: Any = sys.modules.get(self.__module__)
        for part in qualname.split("."):
            found = getattr(found, part, None)
        if found is self and self.__module__ != "__main__":
            return _decorated, (self.__module__, qualname)
        return BacktestFunction, (self._engine, self._strategy, self._save_trades)

    @property
    def last_run_id(self) -> str | None:
        """The run id of this thread's last call (None before one, or if it was not cached)."""
        return getattr(self._local, "run_id", None)

    def runs(self) -> pd.DataFrame:
        """This function's runs, oldest first, as ``BacktestCache.runs`` shows them."""
        cache = self._cache()
        if cache is None:
            return _frame([])
        return BacktestCache(cache).runs(self._strategy, function=self._name)

    def _cache(self) -> Cache | None:
        view = self._engine.cache()
        return None if view is None else view.namespaced(NAMESPACE)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        called = time.perf_counter()
        self._local.run_id = None
        fn = self.uncached
        cache = self._cache() if config.cache_enabled() else None
        run_id = None if cache is None else self._engine.key(args, kwargs)
        if cache is None or run_id is None:
            return fn(*args, **kwargs)
        engine = self._engine
        watching, engine._watching = engine._watching, ()
        stored = self._lookup(cache, run_id, called)
        if stored is not None:
            self._local.run_id = run_id
            return stored.value
        lock = self._lock(cache, run_id)
        try:
            if lock is not None:  # another worker may have run it while this one waited
                stored = self._lookup(cache, run_id, called)
                if stored is not None:
                    self._local.run_id = run_id
                    return stored.value
            before = engine._generators_before()
            outlines = _outlines(args, kwargs)
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            elapsed = time.perf_counter() - start
            # A run that changed its data in place (data["signal"] = ...) is not stored, as a
            # hit would leave the caller's frame without it: as robust_cacheable's.
            if engine._changes_arguments(outlines):
                return result
            # A run that drew from numpy's global generator inside a library (a strategy's
            # `df.sample()`) is stored under that generator's state, as robust_cacheable's are.
            run_id = engine._key_after_miss(run_id, before)
            if self._record(cache, run_id, args, kwargs, result, elapsed):
                self._local.run_id = run_id
        finally:
            if lock is not None:
                lock.release()
        # In the function's statistics (get_cache_stats, afml-cache stats), as its other calls.
        engine._record_miss(cache.by_digest, run_id, elapsed, called)
        if watching:
            engine._changed_while_running(watching)
        return result

    def _parameters(self, arguments: dict[str, Any]) -> Any:
        """What a run records as its parameters (``param_<name>`` in rankings): the argument
        named params (the guides', whatever else the function takes: a model is no
        parameter), or else every argument after the data by name (``run(data, fast, slow)``;
        ``**options`` by their own names; a lone dict by its keys), the ignored ones aside."""
        if "params" in arguments:
            return arguments["params"]
        kinds = self._engine.signature.parameters
        skipped = self._not_parameters
        rest: dict[str, Any] = {}
        for name, value in arguments.items():
            if name in skipped:
                continue
            if kinds[name].kind is inspect.Parameter.VAR_KEYWORD:
                rest.update((key, item) for key, item in value.items() if key not in skipped)
            else:
                rest[name] = value
        if len(rest) == 1 and isinstance(only := next(iter(rest.values())), Mapping):
            return dict(only)
        return rest or None

    def _lookup(self, cache: Cache, run_id: str, called: float) -> BacktestResult | None:
        """The stored run (a hit, counted in the function's statistics), or None."""
        try:
            found, value, compute_time = cache.by_digest.lookup(run_id)
        except (CacheError, OSError) as exc:  # an unreadable entry is a miss
            self._warn_once("read", f"afml_cache: {self._name} could not read its run: {exc}")
            return None
        if not (found and isinstance(value, BacktestResult)):
            return None
        self._engine._record_hit(cache.by_digest, run_id, compute_time, called)
        return value

    def _lock(self, cache: Cache, run_id: str) -> Any:
        try:
            return cache.by_digest.lock(run_id, LOCK_TIMEOUT)
        except (CacheError, OSError) as exc:
            self._warn_once("lock", f"afml_cache: {self._name} runs without its lock: {exc}")
            return None

    def _record(
        self,
        cache: Cache,
        run_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        result: Any,
        elapsed: float,
    ) -> bool:
        """Stores the run; on any failure warns once and returns False (the result stands)."""
        options = self._engine.options
        try:
            bound = self._engine.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            metrics, trades, equity = _parts(result)
            value = result if self._save_trades else _without_trades(result)
            data = arguments.get(self._data_name) if self._data_name else None
            parameters = self._parameters(arguments)
            run = BacktestResult(
                run_id=run_id,
                strategy=self._strategy,
                parameters=parameters,
                metrics=metrics,
                trades=trades if self._save_trades else None,
                equity_curve=equity,
                data_range=_range_stamps(_data_range(data)),
                value=value,
            )
            metadata = _run_metadata(run, self._name)
            cache.by_digest.put(
                run_id,
                run,
                ttl=options.ttl,
                tags=options.tags,
                metadata=metadata,
                compute_time=elapsed,
            )
            _store_curve(cache, run_id, equity, options.ttl)
        except Exception as exc:  # the backtest ran: never lose its result over the cache
            _log.warning("the backtest %s was returned but not cached: %s", self._name, exc)
            self._warn_once(
                "store", f"afml_cache: the backtest {self._name} was returned but not cached: {exc}"
            )
            return False
        return True

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, CacheWarning, stacklevel=3)


def _decorated(module: str, qualname: str) -> Any:
    """A decorated function found by name (how workers receive it)."""
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found
