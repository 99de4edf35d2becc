"""Backtests: `cached_backtest`, `BacktestCache`, best parameters and walk-forward splits.

A backtest run is one entry of the cache's ``afml_cache.backtests`` namespace: the value is a
`BacktestResult` (metrics, trades, equity curve, ... and, for a decorated function, exactly what
it returned), and the entry's metadata holds the strategy, the parameters, the metrics as plain
numbers and the data's time range. Listing, ranking and comparing runs read metadata only and
never unpickle; the files are the truth, so processes sweeping one directory never lose a run.

The run id is the digest of what the run depends on. For ``BacktestCache.cache_backtest``: the
strategy name, the parameters and the data, each by full content. For ``@cached_backtest``: the
strategy name and what `robust_cacheable` keys a call on: the function's code (transitively), the
values it reads that count by their content at the call (mutable globals, closure cells), the code
of classes passed as arguments, and every bound argument by content.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import importlib
import inspect
import logging
import math
import numbers
import re
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from afml_cache import config
from afml_cache._core import SPEC_VERSION, fingerprint
from afml_cache.cache import Cache, check_ttl, flush_writes
from afml_cache.decorators import _Engine, _Options
from afml_cache.errors import CacheError, CacheWarning

__all__ = [
    "NAMESPACE",
    "BacktestCache",
    "BacktestResult",
    "WalkForwardSplit",
    "cached_backtest",
    "get_backtest_cache",
]

#: The namespace of the shared cache that holds runs and walk-forward splits.
NAMESPACE = "afml_cache.backtests"
# Each run's equity curve, thinned, as a float Series: what the report draws. Kept apart from
# the run, whose value may refer to the user's classes (backtesting.py keeps the strategy
# object), so that a report made where those do not import never unpickles the run.
CURVES_NAMESPACE = "afml_cache.backtests.curves"
_CURVE_POINTS = 2000
# How long a call waits for another process running the same backtest before running it too.
LOCK_TIMEOUT = 600.0
_RUN, _SPLIT = "run", "walk_forward_split"
_log = logging.getLogger("afml_cache")


@dataclass
class BacktestResult:
    """One cached backtest run. ``value`` is what a `cached_backtest` function returned (None for
    runs stored with ``BacktestCache.cache_backtest``). ``created`` is seconds since the epoch;
    ``data_range`` the first and last time of the data's index (None if it has none)."""

    run_id: str
    strategy: str
    parameters: Any
    metrics: Mapping[str, Any]
    trades: Any = None
    equity_curve: Any = None
    positions: Any = None
    diagnostics: Any = None
    created: float = field(default_factory=time.time)
    data_range: tuple[pd.Timestamp, pd.Timestamp] | None = None
    value: Any = None


@dataclass
class WalkForwardSplit:
    """One fold of a walk-forward analysis, as stored by ``cache_walk_forward_split``."""

    split_id: str
    fold_number: int
    total_folds: int
    train_data: Any
    test_data: Any
    created: float = field(default_factory=time.time)


# --- plain values for metadata (JSON) ---------------------------------------------------------


def _number(value: Any) -> int | float | None:
    """``value`` as a Python int or float if it is a real number of any type (numpy scalars,
    float32, Decimal, Fraction), else None. Booleans are not metrics."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (np.float16, np.float32)):
        return float(str(value))  # 0.1 stays 0.1, not 0.10000000149011612
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _plain(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of a parameter value: numbers as numbers, containers as lists and
    dicts, times as ISO text, anything else as its (shortened) repr. Never raises."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    number = _number(value)
    if number is not None:
        return number
    if depth < 8:
        if isinstance(value, Mapping):
            return {str(k): _plain(v, depth + 1) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
            return [_plain(v, depth + 1) for v in items]
    if isinstance(value, (datetime.date, datetime.time, pd.Timestamp)):
        return value.isoformat()
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not fail the run
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= 200 else text[:199] + "…"


def _metrics_of(metrics: Any) -> dict[str, int | float]:
    """The numeric metrics, by name, as plain numbers (others stay in the stored value only)."""
    if not isinstance(metrics, Mapping):
        return {}
    found = {}
    for name, value in metrics.items():
        number = _number(value)
        if number is not None:
            found[str(name)] = number
    return found


def _flatten(parameters: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; a non-dict under the name ``prefix``."""
    if type(parameters) is not dict:  # metadata: parameters as JSON gave them back
        return {prefix or "value": parameters}
    flat: dict[str, Any] = {}
    for name, value in parameters.items():
        key = f"{prefix}.{name}" if prefix else name
        if type(value) is dict and value:
            flat.update(_flatten(value, key))
        else:
            flat[key] = value
    return flat


def _data_range(data: Any) -> tuple[str, str] | None:
    """The first and last time of a frame's or series' DatetimeIndex, as ISO text."""
    index = getattr(data, "index", None)
    if not isinstance(index, pd.DatetimeIndex) or len(index) == 0:
        return None
    return index.min().isoformat(), index.max().isoformat()


def _normal(name: str) -> str:
    """``Sharpe Ratio`` and ``sharpe_ratio`` alike: a metric's name as users type it."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _metric_value(metrics: Mapping[str, Any], name: str) -> float:
    """A run's value of ``name``: by exact name, else by the name as typed (``sharpe_ratio``
    finds ``Sharpe Ratio``); NaN when the run has no such metric."""
    if name in metrics:
        return float(metrics[name])
    wanted = _normal(name)
    for key, value in metrics.items():
        if _normal(key) == wanted:
            return float(value)
    return math.nan


# --- results of decorated functions -----------------------------------------------------------


def _parts(result: Any) -> tuple[dict[str, int | float], Any, Any]:
    """(metrics, trades, equity curve) of what a backtest function returned: a dict of
    metrics; a ``(metrics, trades, equity)`` tuple; or a statistics Series like backtesting.py's
    ``Backtest.run()`` (numeric fields, ``_trades``, ``_equity_curve``)."""
    if isinstance(result, Mapping):
        return _metrics_of(result), None, None
    if isinstance(result, tuple) and result and isinstance(result[0], Mapping):
        trades = result[1] if len(result) > 1 else None
        equity = result[2] if len(result) > 2 else None
        return _metrics_of(result[0]), trades, equity
    if isinstance(result, pd.Series) and result.index.is_unique:
        numeric = {k: v for k, v in result.items() if not str(k).startswith("_")}
        return _metrics_of(numeric), result.get("_trades"), result.get("_equity_curve")
    return {}, None, None


def _without_trades(result: Any) -> Any:
    """What is stored for ``save_trades=False``: the result with its trades left out."""
    if isinstance(result, tuple) and len(result) > 1 and isinstance(result[0], Mapping):
        return (result[0], None, *result[2:])
    if isinstance(result, pd.Series) and "_trades" in result.index and result.index.is_unique:
        kept = result.copy(deep=False)
        kept["_trades"] = None
        return kept
    return result


# --- the store --------------------------------------------------------------------------------


class BacktestCache:
    """Backtest runs and walk-forward splits in the decorators' cache (one directory, one size
    limit, one trust model), or in ``directory`` when given.

    ``index`` maps each run id to its strategy, parameters, metrics, created and data_range,
    read from the entries (again whenever any entry changed).
    """

    def __init__(self, directory: str | Path | Cache | None = None) -> None:
        if isinstance(directory, Cache):
            self._fixed: Cache | None = directory.namespaced(NAMESPACE)
        elif directory is not None:
            self._fixed = Cache(directory, namespace=NAMESPACE)
        else:
            self._fixed = None  # follows configure(): the decorators' cache at each use
        self._view: tuple[Cache, Cache] | None = None  # (the decorators' cache, its view)
        # The last listing, the view it was read from and its generation then (see _entries).
        self._listed: tuple[Cache, int, list[tuple[dict[str, Any], dict[str, Any]]]] | None = None

    def __repr__(self) -> str:
        where = self._fixed.directory if self._fixed is not None else "the configured cache"
        return f"BacktestCache({str(where)!r})"

    @property
    def cache(self) -> Cache:
        """The cache view that holds the runs."""
        if self._fixed is not None:
            return self._fixed
        shared = config.shared_cache()
        if shared is None:
            raise CacheError(
                f"the cache directory {config.CACHE_DIRS['base']} cannot be used, so backtests "
                "cannot be cached; fix it or choose another with afml_cache.configure(directory=)"
            )
        view = self._view
        if view is None or view[0] is not shared:  # the first use, or configure() changed it
            view = self._view = (shared, shared.namespaced(NAMESPACE))
        return view[1]

    # --- runs ---------------------------------------------------------------------------------

    def cache_backtest(
        self,
        strategy_name: str,
        parameters: Any,
        data: Any,
        metrics: Mapping[str, Any],
        trades: Any = None,
        equity_curve: Any = None,
        positions: Any = None,
        diagnostics: Any = None,
    ) -> str:
        """Stores a run and returns its id (the same strategy, parameters and data replace an
        earlier run). If it cannot be stored (a value that cannot be pickled, a full disk) it
        warns and the id names no run."""
        _check_strategy(strategy_name)
        if not isinstance(metrics, Mapping):
            raise TypeError(
                f"metrics must be a dict of metric name to number, got a "
                f"{type(metrics).__qualname__}"
            )
        run_id = _manual_run_id(strategy_name, parameters, data)
        result = BacktestResult(
            run_id=run_id,
            strategy=strategy_name,
            parameters=parameters,
            metrics=metrics,
            trades=trades,
            equity_curve=equity_curve,
            positions=positions,
            diagnostics=diagnostics,
            data_range=_range_stamps(_data_range(data)),
        )
        try:
            cache = self.cache
            cache.set_digest(run_id, result, metadata=_run_metadata(result, None))
            _store_curve(cache, run_id, equity_curve)
        except (CacheError, OSError, ValueError) as exc:
            warnings.warn(
                f"afml_cache: the backtest {strategy_name!r} was not cached: {exc}",
                CacheWarning,
                stacklevel=2,
            )
        return run_id

    def get_cached_backtest(
        self, strategy_name: str, parameters: Any, data: Any
    ) -> BacktestResult | None:
        """The run stored by ``cache_backtest`` for this strategy, parameters and data (equal
        by content), or None."""
        _check_strategy(strategy_name)
        return self.get_run(_manual_run_id(strategy_name, parameters, data))

    def get_run(self, run_id: str) -> BacktestResult | None:
        """The run with this id (from ``index``, ``f.last_run_id`` or a ranking), or None."""
        found, value, _ = self.cache.lookup(run_id)
        return value if found and isinstance(value, BacktestResult) else None

    @property
    def index(self) -> Mapping[str, dict[str, Any]]:
        """``run_id -> {strategy, parameters, metrics, created, data_range}``, read-only."""
        return types.MappingProxyType(
            {
                entry["digest"]: {
                    "strategy": meta["strategy"],
                    "parameters": _copied(meta["parameters"]),
                    "metrics": dict(meta["metrics"]),
                    "created": meta["created"],
                    "data_range": _copied(meta["data_range"]),
                }
                for entry, meta in self._entries(_RUN)
            }
        )

    def runs(self, strategy_name: str | None = None, function: str | None = None) -> pd.DataFrame:
        """Every run (of a strategy, of a decorated function), oldest first, as a DataFrame
        indexed by run_id: strategy, created, start, end, ``param_<name>`` columns, metrics."""
        return _frame(self._run_rows(strategy_name, function))

    def _run_rows(
        self, strategy_name: str | None = None, function: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """(run id, metadata) of the runs, oldest first."""
        rows = [
            (entry["digest"], meta)
            for entry, meta in self._entries(_RUN)
            if (strategy_name is None or meta["strategy"] == strategy_name)
            and (function is None or meta.get("function") == function)
        ]
        rows.sort(key=lambda row: row[1]["created"])
        return rows

    def strategies(self) -> list[str]:
        """The strategies that have runs, by name."""
        return sorted({meta["strategy"] for _, meta in self._entries(_RUN)})

    def find_best_parameters(
        self,
        strategy_name: str,
        metric: str = "sharpe_ratio",
        maximize: bool = True,
        top_n: int = 5,
    ) -> pd.DataFrame:
        """The ``top_n`` runs of a strategy by ``metric`` (largest first with ``maximize``),
        as ``runs()`` shows them; runs without the metric or with NaN rank last. ``metric`` is
        a metric's name as stored or as typed in lower case (``sharpe_ratio`` finds
        backtesting.py's ``Sharpe Ratio``)."""
        _check_strategy(strategy_name)
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise ValueError(f"top_n must be a positive int, got {top_n!r}")
        rows = self._run_rows(strategy_name)
        if not rows:
            return _frame([])
        values = [_metric_value(meta["metrics"], metric) for _, meta in rows]
        if all(math.isnan(v) for v in values):
            known = sorted({name for _, meta in rows for name in meta["metrics"]})
            raise KeyError(
                f"no run of {strategy_name!r} has the metric {metric!r}; its runs have: "
                + (", ".join(known) or "no metrics")
            )
        # Ranked from the metadata; only the top runs become a frame. Ties keep created order.
        sign = -1.0 if maximize else 1.0
        order = sorted(range(len(rows)), key=lambda i: (math.isnan(values[i]), sign * values[i]))
        top = order[:top_n]
        best = _frame([rows[i] for i in top])
        if metric not in best.columns:
            best[metric] = [values[i] for i in top]
        return best

    def compare_runs(
        self, run_ids: Iterable[str], metrics: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The runs ``run_ids`` side by side, indexed by run_id, with all their metrics or only
        ``metrics`` (each found as ``find_best_parameters`` finds it). Unknown ids raise
        ``KeyError`` naming them."""
        wanted = list(run_ids)
        known = {entry["digest"]: meta for entry, meta in self._entries(_RUN)}
        unknown = [r for r in wanted if r not in known]
        if unknown:
            raise KeyError(f"no cached backtest run has the id(s) {', '.join(map(str, unknown))}")
        frame = _frame([(r, known[r]) for r in wanted])
        if metrics is None:
            return frame
        fixed = [c for c in frame.columns if c in _FIXED or c.startswith("param_")]
        frame = frame[fixed].copy()
        for name in metrics:
            frame[name] = [_metric_value(known[r]["metrics"], name) for r in wanted]
        return frame

    def delete_run(self, run_id: str) -> bool:
        """Removes one run; False if there was none."""
        cache = self.cache
        cache.namespaced(CURVES_NAMESPACE).delete_digest(run_id)
        return cache.delete_digest(run_id)

    def clear(self, strategy_name: str | None = None) -> int:
        """Removes the runs of ``strategy_name``, or every run and walk-forward split; returns
        how many entries were removed."""
        cache = self.cache
        doomed = [
            entry["digest"]
            for entry, meta in self._entries(None)
            if strategy_name is None or meta.get("strategy") == strategy_name
        ]
        curves = cache.namespaced(CURVES_NAMESPACE)
        if strategy_name is None:  # also the curves of runs the size limit evicted
            doomed_curves = [entry["digest"] for entry in curves.entries()]
        else:
            doomed_curves = doomed
        for digest in doomed_curves:
            curves.delete_digest(digest)
        return sum(cache.delete_digest(d) for d in doomed)

    def report(
        self,
        path: str | Path,
        strategy_name: str | None = None,
        metric: str = "sharpe_ratio",
        top_n: int = 5,
    ) -> Path:
        """Writes one self-contained HTML page (no network): per strategy, its runs ranked by
        ``metric``, the top ``top_n`` runs' equity curves overlaid, and a heatmap of the metric
        when two parameters vary. Returns the path written."""
        from afml_cache.backtest_report import report_html

        names = [strategy_name] if strategy_name is not None else self.strategies()
        sections = []
        for name in names:
            rows = self._run_rows(name)
            runs = _frame(rows)
            key = pd.Series(
                [_metric_value(meta["metrics"], metric) for _, meta in rows],
                index=runs.index,
                dtype=float,
            )
            order = key.sort_values(ascending=False, na_position="last", kind="mergesort").index
            ranked = runs.loc[order].drop(columns=[metric], errors="ignore")
            ranked.insert(0, metric, key.loc[order])
            curves = {}
            for run_id in ranked.index[:top_n]:
                found, curve, _ = self.cache.namespaced(CURVES_NAMESPACE).lookup(run_id)
                if found and isinstance(curve, pd.Series):
                    curves[run_id] = curve
            sections.append((name, ranked, curves))
        target = Path(path)
        target.write_text(report_html(sections, metric, str(self.cache.directory)), "utf-8")
        return target

    # --- walk-forward splits ------------------------------------------------------------------

    def cache_walk_forward_split(
        self,
        split_id: str,
        train_data: Any,
        test_data: Any,
        fold_number: int,
        total_folds: int,
    ) -> str:
        """Stores the train and test data of fold ``fold_number`` (counted from 0) of
        ``split_id``, replacing an earlier one; returns the fold's key. Empty folds are fine."""
        if not isinstance(split_id, str) or not split_id:
            raise TypeError(f"split_id must be a non-empty str, got {split_id!r}")
        for name, value in (("fold_number", fold_number), ("total_folds", total_folds)):
            if isinstance(value, bool) or _number(value) is None or int(value) != value:
                raise TypeError(f"{name} must be an int, got {value!r}")
        fold, total = int(fold_number), int(total_folds)
        if not 0 <= fold < total:
            raise ValueError(
                f"fold_number={fold} is not a fold of total_folds={total}: folds count from 0 "
                f"to {total - 1}"
            )
        split = WalkForwardSplit(split_id, fold, total, train_data, test_data)
        metadata = {
            "kind": _SPLIT,
            "split_id": split_id,
            "fold": fold,
            "total_folds": total,
            "train_range": _data_range(train_data),
            "test_range": _data_range(test_data),
            "train_rows": _rows(train_data),
            "test_rows": _rows(test_data),
            "created": split.created,
        }
        self.cache.set_digest(_split_key(split_id, fold), split, metadata=metadata)
        return f"{split_id}_fold_{fold}"

    def get_walk_forward_split(self, split_id: str, fold_number: int) -> WalkForwardSplit | None:
        """The stored fold (``.train_data``, ``.test_data``), or None."""
        found, value, _ = self.cache.lookup(_split_key(split_id, int(fold_number)))
        return value if found and isinstance(value, WalkForwardSplit) else None

    def walk_forward_splits(self, split_id: str) -> pd.DataFrame:
        """The stored folds of ``split_id``, indexed by fold: total_folds, the train and test
        start/end and row counts, created."""
        rows = []
        for _, meta in self._entries(_SPLIT):
            if meta["split_id"] != split_id:
                continue
            train, test = meta["train_range"] or (None, None), meta["test_range"] or (None, None)
            rows.append(
                {
                    "fold": meta["fold"],
                    "total_folds": meta["total_folds"],
                    "train_start": _stamp(train[0]),
                    "train_end": _stamp(train[1]),
                    "test_start": _stamp(test[0]),
                    "test_end": _stamp(test[1]),
                    "train_rows": meta["train_rows"],
                    "test_rows": meta["test_rows"],
                    "created": pd.Timestamp(meta["created"], unit="s", tz="UTC"),
                }
            )
        columns = ["fold", "total_folds", "train_start", "train_end", "test_start", "test_end"]
        columns += ["train_rows", "test_rows", "created"]
        return pd.DataFrame(rows, columns=columns).sort_values("fold").set_index("fold")

    # --- entries ------------------------------------------------------------------------------

    def _entries(self, kind: str | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(entry, metadata) of the namespace's entries of ``kind`` (every kind for None).

        Listing reads every entry's header; the listing is kept until the store's generation,
        which every change to any entry by any process bumps, moves on."""
        cache = self.cache
        flush_writes()  # values this process is still writing behind count
        generation = cache.generation()
        listed = self._listed
        if listed is None or listed[0] is not cache or listed[1] != generation:
            found = []
            for entry in cache.entries():
                meta = entry.get("metadata")
                if isinstance(meta, dict) and "kind" in meta:
                    found.append((entry, meta))
            listed = self._listed = (cache, generation, found)
        return [(e, m) for e, m in listed[2] if kind is None or m["kind"] == kind]


_FIXED = ("strategy", "created", "start", "end")


def _frame(rows: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Runs as a DataFrame indexed by run_id: strategy, created, start, end, ``param_<name>``
    columns (nested parameters flattened with dots), then the metrics."""
    metas = [meta for _, meta in rows]
    ranges = [meta["data_range"] or (None, None) for meta in metas]
    columns: dict[str, Any] = {
        "strategy": [meta["strategy"] for meta in metas],
        "created": pd.to_datetime([meta["created"] for meta in metas], unit="s", utc=True),
        "start": _stamps([r[0] for r in ranges]),
        "end": _stamps([r[1] for r in ranges]),
    }
    params: dict[str, list[Any]] = {}
    metrics: dict[str, list[float]] = {}
    for i, meta in enumerate(metas):
        for name, value in _flatten(meta["parameters"]).items():
            params.setdefault(f"param_{name}", [None] * len(metas))[i] = value
        for name, number in meta["metrics"].items():
            metrics.setdefault(name, [math.nan] * len(metas))[i] = number
    columns.update(params)
    columns.update(
        (name, pd.to_numeric(values, errors="coerce")) for name, values in metrics.items()
    )
    return pd.DataFrame(columns, index=pd.Index([r for r, _ in rows], name="run_id", dtype=object))


def _stamps(texts: list[str | None]) -> Any:
    """ISO times as datetimes (NaT for None); a list of Timestamps when their zones differ."""
    try:
        return pd.to_datetime(texts, format="ISO8601")
    except (TypeError, ValueError):
        return [_stamp(t) for t in texts]


def _copied(value: Any) -> Any:
    """A copy of a JSON value, so that callers never change a kept listing."""
    if type(value) is dict:
        return {k: _copied(v) for k, v in value.items()}
    if type(value) is list:
        return [_copied(v) for v in value]
    return value


def _stamp(text: str | None) -> pd.Timestamp | None:
    return pd.Timestamp(text) if text is not None else None


def _range_stamps(data_range: tuple[str, str] | None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    return (
        None if data_range is None else (pd.Timestamp(data_range[0]), pd.Timestamp(data_range[1]))
    )


def _rows(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


def _equity_values(curve: Any) -> pd.Series | None:
    """An equity curve as a float Series: a Series, or a frame's ``Equity`` (backtesting.py) or
    first numeric column."""
    if isinstance(curve, pd.DataFrame):
        numeric = curve.select_dtypes("number")
        if "Equity" in numeric.columns:
            curve = numeric["Equity"]
        elif len(numeric.columns):
            curve = numeric.iloc[:, 0]
        else:
            return None
    if not isinstance(curve, pd.Series) or len(curve) < 2:
        return None
    values = pd.to_numeric(curve, errors="coerce").astype(float)
    return values if values.notna().any() else None


def _store_curve(cache: Cache, run_id: str, equity_curve: Any, ttl: float | None = None) -> None:
    """Stores a run's equity curve, thinned to about ``_CURVE_POINTS``, for the report."""
    curve = _equity_values(equity_curve)
    if curve is not None:
        positions = list(range(0, len(curve), max(1, len(curve) // _CURVE_POINTS)))
        if positions[-1] != len(curve) - 1:
            positions.append(len(curve) - 1)
        cache.namespaced(CURVES_NAMESPACE).set_digest(run_id, curve.iloc[positions], ttl=ttl)


def _check_strategy(strategy_name: Any) -> None:
    if not isinstance(strategy_name, str) or not strategy_name:
        raise TypeError(f"strategy_name must be a non-empty str, got {strategy_name!r}")


def _manual_run_id(strategy_name: str, parameters: Any, data: Any) -> str:
    return fingerprint(("afml-cache backtest run", SPEC_VERSION, strategy_name, parameters, data))


def _split_key(split_id: str, fold: int) -> str:
    return fingerprint(("afml-cache walk-forward split", SPEC_VERSION, split_id, fold))


def _run_metadata(result: BacktestResult, function: str | None) -> dict[str, Any]:
    range_text = None
    if result.data_range is not None:
        range_text = [t.isoformat() for t in result.data_range]
    return {
        "kind": _RUN,
        "strategy": result.strategy,
        "parameters": _plain(result.parameters),
        "metrics": _metrics_of(result.metrics),
        "created": result.created,
        "data_range": range_text,
        "function": function,
    }


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
        self._data_name: str | None = names[0] if names else None
        # The parameters: an argument named params (the guides'), else the second one.
        self._params_name: str | None = "params" if "params" in names else None
        if self._params_name is None and len(names) > 1:
            self._params_name = names[1]
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
        self._local.run_id = None
        fn = self.uncached
        cache = self._cache() if config.cache_enabled() else None
        run_id = None if cache is None else self._engine.key(args, kwargs)
        if cache is None or run_id is None:
            return fn(*args, **kwargs)
        stored = self._lookup(cache, run_id)
        if stored is not None:
            self._local.run_id = run_id
            return stored.value
        lock = self._lock(cache, run_id)
        try:
            if lock is not None:  # another worker may have run it while this one waited
                stored = self._lookup(cache, run_id)
                if stored is not None:
                    self._local.run_id = run_id
                    return stored.value
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            elapsed = time.perf_counter() - start
            if self._record(cache, run_id, args, kwargs, result, elapsed):
                self._local.run_id = run_id
        finally:
            if lock is not None:
                lock.release()
        return result

    def _lookup(self, cache: Cache, run_id: str) -> BacktestResult | None:
        try:
            found, value, _ = cache.lookup(run_id)
        except (CacheError, OSError) as exc:  # an unreadable entry is a miss
            self._warn_once("read", f"afml_cache: {self._name} could not read its run: {exc}")
            return None
        return value if found and isinstance(value, BacktestResult) else None

    def _lock(self, cache: Cache, run_id: str) -> Any:
        try:
            return cache.acquire_digest(run_id, LOCK_TIMEOUT)
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
            parameters = arguments.get(self._params_name) if self._params_name else None
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
            cache.set_digest(
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


_global: BacktestCache | None = None
_global_lock = threading.Lock()


def get_backtest_cache() -> BacktestCache:
    """The process's `BacktestCache` over the decorators' cache (it follows ``configure``)."""
    global _global
    with _global_lock:
        if _global is None:
            _global = BacktestCache()
        return _global


# --- the `afml-cache backtests` command -------------------------------------------------------


def backtests_command(
    backtests: BacktestCache,
    strategy_name: str | None = None,
    best: str | None = None,
    top: int = 10,
    report: str | None = None,
) -> tuple[dict[str, Any], str]:
    """What ``afml-cache backtests`` prints: (the JSON document, the text). Lists each
    strategy's newest ``top`` runs, or with ``best`` its ``top`` runs by that metric; with
    ``report`` writes the HTML page instead. Raises ``KeyError`` for an unknown strategy or a
    metric no run has, ``ValueError`` for a bad ``top``."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"--top must be a positive number of runs, got {top!r}")
    names = backtests.strategies()
    if strategy_name is not None and strategy_name not in names:
        known = ", ".join(names) or "none"
        raise KeyError(
            f"no cached runs of strategy {strategy_name!r}; strategies with runs: {known}"
        )
    directory = str(backtests.cache.directory)
    if report is not None:
        written = backtests.report(report, strategy_name, metric=best or "sharpe_ratio")
        text = f"Wrote the backtest report of {directory} to {written}.\n"
        return {"directory": directory, "file": str(written)}, text
    chosen = [strategy_name] if strategy_name is not None else names
    frames = {}
    for name in chosen:
        if best is None:
            frames[name] = backtests.runs(name).tail(top)
            continue
        try:
            frames[name] = backtests.find_best_parameters(name, best, top_n=top)
        except KeyError:
            if strategy_name is not None:
                raise
    if best is not None and chosen and not frames:
        raise KeyError(f"no cached run of any strategy has the metric {best!r}")
    counts = {name: len(backtests._run_rows(name)) for name in frames}
    document: dict[str, Any] = {
        "directory": directory,
        "metric": best,
        "strategies": {
            name: {"runs": counts[name], "shown": _records(frame)} for name, frame in frames.items()
        },
    }
    return document, _command_text(directory, frames, counts, best)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        if isinstance(value, pd.Timestamp):
            return value.isoformat()
        if isinstance(value, float) and math.isnan(value):
            return None
        return _plain(value)

    return [
        {"run_id": run_id, **{str(k): plain(v) for k, v in row.items()}}
        for run_id, row in frame.iterrows()
    ]


def _command_text(
    directory: str, frames: Mapping[str, pd.DataFrame], counts: Mapping[str, int], best: str | None
) -> str:
    if not frames:
        return f"No backtest runs are cached in {directory}.\n"
    lines = [f"Backtest runs in {directory}"]
    for name, frame in frames.items():
        what = f"top {len(frame)} by {best}" if best else f"newest {len(frame)}"
        lines += ["", f"{name}: {counts[name]:,} runs ({what})"]
        params = [c for c in frame.columns if c.startswith("param_")]
        metrics = [c for c in frame.columns if c not in _FIXED and c not in params]
        if best in metrics:  # the ranked metric first; the JSON document has every one
            metrics.remove(best)
            metrics.insert(0, best)
        shown = frame[["created", "start", "end", *params, *metrics[:_TEXT_METRICS]]].copy()
        shown.index = pd.Index([str(r)[:12] for r in shown.index], name="run")
        shown["created"] = shown["created"].dt.strftime("%Y-%m-%d %H:%M")
        shown.columns = [str(c).removeprefix("param_") for c in shown.columns]
        lines.append(shown.to_string(float_format=_number_text, na_rep="-"))
    return "\n".join(lines) + "\n"


# Metrics shown per run in the command's text (the JSON document has every one).
_TEXT_METRICS = 6


def _number_text(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
