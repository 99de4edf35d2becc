"""`mlflow_cached`: a function cached like `robust_cacheable` whose misses and hits are tracked as
MLflow runs. Imported from `afml_cache.mlflow_integration`, the guide's path.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from afml_cache.decorators import robust_cacheable
from afml_cache.mlflow_tracking import (
    _check_tags,
    _Computed,
    _Function,
    _metrics,
    _params,
    _tracker,
)

F = TypeVar("F", bound=Callable[..., Any])

# --- the decorator ----------------------------------------------------------------------------


class _Call:
    """One call of a tracked function: whether its function ran (a miss) or not (a hit)."""

    def __init__(self, function: _Function) -> None:
        self.function = function
        self.ran = False

    def compute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Computed:
        self.ran = True
        function = self.function
        tracker = _tracker(function)
        params = _params(function, args, kwargs)
        if tracker is None:
            # Untracked now (MLflow paused or refused): the params and metrics are kept all the
            # same, for the runs of hits once tracking is back to log.
            result = function.fn(*args, **kwargs)
            return _Computed(result, None, params, _metrics(result), None)
        key = function.engine.key(args, kwargs)
        run_id = tracker._start_computing(function, params, key)
        start = time.perf_counter()
        try:
            result = function.fn(*args, **kwargs)
        except BaseException as exc:
            tracker._end_run(run_id, "FAILED")
            _explain_nested_run(exc)
            raise
        seconds = time.perf_counter() - start
        metrics = _metrics(result)
        if run_id is not None:
            try:
                logged = tracker._finish_computing(run_id, function, result, metrics, seconds)
            except BaseException:  # Ctrl-C while the model was being logged
                tracker._end_run(run_id, "KILLED")
                raise
            params, metrics = {**logged[0], **params}, {**logged[1], **metrics}
        return _Computed(result, run_id, params, metrics, key)


def _explain_nested_run(exc: BaseException) -> None:
    """Notes on MLflow's "Run ... is already active" raised by a function that starts its own
    run (as MLflow's tutorials write it) why one is active: the decorator's."""
    if "already active" in str(exc) and "start_run" in str(exc):
        exc.add_note(
            "afml_cache: @mlflow_cached runs the function inside a run of its own, which is the "
            "active one; log with mlflow.log_* directly, or start yours with "
            "mlflow.start_run(nested=True)"
        )


_calls: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "afml_cache_mlflow_call", default=None
)


def mlflow_cached(
    fn: F | None = None,
    /,
    *,
    tags: Mapping[str, Any] | None = None,
    log_model: bool = True,
    log_hits: bool = True,
    **options: Any,
) -> Any:
    """Caches a function like `robust_cacheable` and tracks it in MLflow.

    A miss runs the function inside an MLflow run (of `get_mlflow_cache`'s experiment) that logs
    the arguments as params (scalars, strings, short tuples and flat dicts by value, flattened to
    their keys; arrays and frames by shape and fingerprint), the metrics in the result (a dict of
    numbers, or the dict in a ``(model, metrics)`` tuple), ``tags``, the cache key and the compute
    time, and the model in the result (a scikit-learn estimator or an MLflow ``PythonModel``) when
    ``log_model``. A hit returns the cached result without running the function and, when
    ``log_hits``, records a run tagged ``afml_cache.hit=true`` with ``afml_cache.source_run``
    naming the run that computed it, and its params and metrics. Other options (``ttl``,
    ``ignore``, ``ignore_globals``, ``version``, ``compression``, ``cache``, ``strict``) are
    `robust_cacheable`'s.
    """
    run_tags = _check_tags(tags)
    version = options.pop("version", None)
    ignore = options.get("ignore", ())
    ignored = frozenset([ignore] if isinstance(ignore, str) else ignore)
    # Entries hold a _Computed, not the bare result: their own version keeps them apart from
    # robust_cacheable's entries of the same function, whatever the code fingerprint sees.
    cacheable = robust_cacheable(version=("afml_cache.mlflow_cached", version), **options)

    def decorate(fn: F) -> F:
        if not inspect.isfunction(fn) or inspect.iscoroutinefunction(fn):
            raise TypeError(f"mlflow_cached takes a (non-async) function, got {fn!r}")
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{fn.__qualname__} is a generator function: its values are produced lazily "
                "and cannot be cached; cache a function that returns a list instead"
            )
        function = _Function(fn, run_tags, bool(log_model), bool(log_hits), ignored)
        cached = cacheable(_computing(fn))
        function.engine = cached.__afml_cache__

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return _tracked_call(function, cached, args, kwargs)

        for name in ("cache_info", "cache_clear", "cache_entries", "__afml_cache__"):
            setattr(wrapper, name, getattr(cached, name))
        wrapper.uncached = fn  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def _tracked_call(
    function: _Function, cached: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """A call of a tracked function. Module-level, so that a wrapper defined in a notebook and
    sent by value to joblib's workers (cloudpickle) holds nothing unpicklable (`_calls`)."""
    call = _Call(function)
    token = _calls.set(call)
    try:
        computed: _Computed = cached(*args, **kwargs)
    finally:
        _calls.reset(token)
    if not call.ran and function.log_hits:
        tracker = _tracker(function)
        if tracker is not None:
            tracker._record_hit(function, computed)
    return computed.result


def _computing(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What the cache runs on a miss: ``fn`` inside the current call's run. It wraps ``fn``
    (``__wrapped__``), so the cache binds arguments by ``fn``'s signature and names entries
    after ``fn``; ``fn`` is in its closure, so its code counts in the key."""

    @functools.wraps(fn)
    def compute(*args: Any, **kwargs: Any) -> _Computed:
        return _compute_in_call(fn, args, kwargs)

    return compute


def _compute_in_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    call = _calls.get()
    if call is None:  # called by other means than the tracked function: untracked
        return _Computed(fn(*args, **kwargs), None, {}, {}, None)
    return call.compute(args, kwargs)
