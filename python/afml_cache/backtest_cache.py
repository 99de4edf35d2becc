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

The code: `afml_cache.backtest_runs` (the store of runs) and `afml_cache.backtest_decorator`
(`cached_backtest`); this module, the guide's import path, re-exports both and holds the
``afml-cache backtests`` command.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

# `x as x`: re-exported, for code that imports it from the guide's path.
from afml_cache.backtest_decorator import LOCK_TIMEOUT as LOCK_TIMEOUT
from afml_cache.backtest_decorator import BacktestFunction as BacktestFunction
from afml_cache.backtest_decorator import cached_backtest
from afml_cache.backtest_runs import (
    _FIXED,
    NAMESPACE,
    BacktestCache,
    BacktestResult,
    WalkForwardSplit,
    _plain,
    get_backtest_cache,
)
from afml_cache.backtest_runs import CURVES_NAMESPACE as CURVES_NAMESPACE

__all__ = [
    "NAMESPACE",
    "BacktestCache",
    "BacktestResult",
    "WalkForwardSplit",
    "cached_backtest",
    "get_backtest_cache",
]


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
