"""The store of backtest runs: `BacktestResult`, `WalkForwardSplit`, `BacktestCache` and the
process's `get_backtest_cache`. Imported from `afml_cache.backtest_cache`, the guide's path, which
says how runs are stored and keyed.
"""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import math
import numbers
import re
import time
import types
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from afml_cache import config, forking
from afml_cache._core import SPEC_VERSION, fingerprint
from afml_cache._store import EntryInfo
from afml_cache.cache import Cache, flush_writes
from afml_cache.errors import CacheError, CacheWarning

NAMESPACE = "afml_cache.backtests"
# Each run's equity curve, thinned, as a float Series: what the report draws. Kept apart from
# the run, whose value may refer to the user's classes (backtesting.py keeps the strategy
# object), so that a report made where those do not import never unpickles the run.
CURVES_NAMESPACE = "afml_cache.backtests.curves"
_CURVE_POINTS = 2000
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


# Runs and splits are pickled into entries by class path: the guide's, whatever module defines them.
BacktestResult.__module__ = WalkForwardSplit.__module__ = "afml_cache.backtest_cache"


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
            cache.by_digest.put(run_id, result, metadata=_run_metadata(result, None))
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
        by content), or None: the check before computing, so a run that no longer unpickles is
        a miss (removed with one warning, to be stored again), as a decorated call's is."""
        _check_strategy(strategy_name)
        run_id = _manual_run_id(strategy_name, parameters, data)
        value = self._read(run_id, f"the backtest {strategy_name!r}")
        return value if isinstance(value, BacktestResult) else None

    def get_run(self, run_id: str) -> BacktestResult | None:
        """The run with this id (from ``index``, ``f.last_run_id`` or a ranking), or None.

        Raises `CacheError` if the run is stored but does not unpickle here (its strategy class
        was defined in another script's ``__main__``); the run is kept."""
        found, value, _ = self.cache.by_digest.lookup(run_id, keep_unusable=True)
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
        cache.namespaced(CURVES_NAMESPACE).by_digest.delete(run_id)
        return cache.by_digest.delete(run_id)

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
        try:
            if strategy_name is None:  # also the curves of runs the size limit evicted
                doomed_curves = [entry["digest"] for entry in curves.entries()]
            else:
                doomed_curves = doomed
            for digest in doomed_curves:
                curves.by_digest.delete(digest)
            return sum(cache.by_digest.delete(d) for d in doomed)
        except (CacheError, OSError) as exc:
            warnings.warn(
                f"afml_cache: the stored backtests could not all be removed: {exc}",
                CacheWarning,
                stacklevel=2,
            )
            return 0

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
                found, curve, _ = self.cache.namespaced(CURVES_NAMESPACE).by_digest.lookup(run_id)
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
        try:
            self.cache.by_digest.put(_split_key(split_id, fold), split, metadata=metadata)
        except (CacheError, OSError, ValueError) as exc:
            warnings.warn(
                f"afml_cache: fold {fold} of the split {split_id!r} was not cached: {exc}",
                CacheWarning,
                stacklevel=2,
            )
        return f"{split_id}_fold_{fold}"

    def get_walk_forward_split(self, split_id: str, fold_number: int) -> WalkForwardSplit | None:
        """The stored fold (``.train_data``, ``.test_data``), or None."""
        value = self._read(_split_key(split_id, int(fold_number)), f"the split {split_id!r}")
        return value if isinstance(value, WalkForwardSplit) else None

    def _read(self, key: str, what: str) -> Any:
        """The value stored under ``key``, or None: one the store cannot read (a damaged
        directory) is a miss, with a warning naming ``what``."""
        try:
            found, value, _ = self.cache.by_digest.lookup(key)
        except (CacheError, OSError) as exc:
            warnings.warn(
                f"afml_cache: {what} could not be read from the cache: {exc}",
                CacheWarning,
                stacklevel=3,
            )
            return None
        return value if found else None

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
        listed = self._listed
        try:
            generation = cache.generation()
        except (CacheError, OSError):
            generation = None  # read the entries again, which says what failed
        if (
            listed is None
            or listed[0] is not cache
            or generation is None
            or listed[1] != generation
        ):
            try:
                entries = cache.entries()
            except (CacheError, OSError) as exc:
                # A damaged directory lists nothing, with a warning, as a lookup misses.
                warnings.warn(
                    f"afml_cache: the stored backtests could not be listed: {exc}",
                    CacheWarning,
                    stacklevel=3,
                )
                return []
            found = []
            for entry in entries:
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
            # Cells of the caller's own: a list or dict in one must not change the kept listing.
            params.setdefault(f"param_{name}", [None] * len(metas))[i] = _copied(value)
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
        cache.namespaced(CURVES_NAMESPACE).by_digest.put(run_id, curve.iloc[positions], ttl=ttl)


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


def entries_by_function(cache: Cache) -> dict[str, list[EntryInfo]]:
    """The entries of the runs each decorated function stored (`cached_backtest`), with their
    equity curves, by the function's qualified name: they live in the backtests' namespaces,
    so that `BacktestCache` finds every strategy's, and are its entries for `stats`, `clear`
    and `export --function`."""
    owner: dict[str, str] = {}
    found: dict[str, list[EntryInfo]] = {}
    for entry in cache.scan(NAMESPACE):
        if entry.namespace != NAMESPACE:  # a name shortened to the same file name
            continue
        try:  # a scan does not verify headers: damaged text is no run of a function
            described = json.loads(entry.metadata or "{}").get("metadata")
        except (ValueError, AttributeError):
            continue
        function = described.get("function") if isinstance(described, dict) else None
        if isinstance(function, str):
            owner[entry.digest] = function
            found.setdefault(function, []).append(entry)
    for entry in cache.scan(CURVES_NAMESPACE):
        function = owner.get(entry.digest)
        if entry.namespace == CURVES_NAMESPACE and function is not None:
            found[function].append(entry)
    return found


_global: BacktestCache | None = None
_global_lock = forking.lock()


def get_backtest_cache() -> BacktestCache:
    """The process's `BacktestCache` over the decorators' cache (it follows ``configure``)."""
    global _global
    with _global_lock:
        if _global is None:
            _global = BacktestCache()
        return _global
