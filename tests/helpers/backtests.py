"""Backtests at module level, for the backtest tests' worker processes (joblib, spawn).

A real engine: backtesting.py's SMA-crossover strategy on its bundled GOOG daily bars. Every
function counts its computations by appending a line to the file passed as ``counter`` (an
ignored argument: not part of the key), since globals do not cross processes.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import pandas as pd
from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import GOOG, SMA

import afml_cache
from afml_cache import cached_backtest

GRID = [{"n1": n1, "n2": n2} for n1 in (5, 10, 15) for n2 in (20, 40)]


def mark(counter: str | os.PathLike[str], text: str) -> None:
    """Appends one line to ``counter`` (one small O_APPEND write: whole lines, even when several
    processes write at once)."""
    with open(counter, "a") as fh:
        fh.write(f"{text} pid={os.getpid()}\n")


def computed(counter: str | os.PathLike[str]) -> list[str]:
    """The computations recorded in ``counter``, without the process ids."""
    try:
        with open(counter) as fh:
            return [line.rsplit(" pid=", 1)[0] for line in fh]
    except FileNotFoundError:
        return []


class SmaCross(Strategy):
    n1 = 10
    n2 = 20

    def init(self) -> None:
        self.fast = self.I(SMA, self.data.Close, self.n1)
        self.slow = self.I(SMA, self.data.Close, self.n2)

    def next(self) -> None:
        if crossover(self.fast, self.slow):
            self.position.close()
            self.buy()
        elif crossover(self.slow, self.fast):
            self.position.close()
            self.sell()


# A strategy module a test writes, edits (``size``) and imports again.
STRATEGY_SOURCE = """
from backtesting import Strategy
from backtesting.lib import crossover
from backtesting.test import SMA


class Cross(Strategy):
    n1 = 10
    n2 = 20

    def init(self):
        self.fast = self.I(SMA, self.data.Close, self.n1)
        self.slow = self.I(SMA, self.data.Close, self.n2)

    def next(self):
        if crossover(self.fast, self.slow):
            self.position.close()
            self.buy(size={size})
        elif crossover(self.slow, self.fast):
            self.position.close()
            self.sell()
"""


def sma_backtest(data: pd.DataFrame, params: dict[str, Any]) -> pd.Series:
    """backtesting.py's statistics Series for one parameter set (uncached)."""
    with warnings.catch_warnings():
        # backtesting.py 0.6 uses pandas APIs that pandas 3 deprecates; not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        backtest = Backtest(data, SmaCross, cash=10_000, commission=0.002, finalize_trades=True)
        return backtest.run(**params)


@cached_backtest("sma_cross", ignore=("counter",))
def run_sma(data: pd.DataFrame, params: dict[str, Any], counter: str) -> pd.Series:
    mark(counter, f"sma {params['n1']} {params['n2']}")
    return sma_backtest(data, params)


def sweep_point(directory: str, params: dict[str, Any], counter: str) -> float:
    """A worker entry point: one grid point on GOOG in the cache in ``directory``."""
    afml_cache.configure(directory=directory)
    return float(run_sma(GOOG, params, counter)["Sharpe Ratio"])


def sweep(directory: str, grid: list[dict[str, Any]], counter: str, barrier: Any) -> None:
    """A process entry point: waits for the others, then runs ``grid`` in order."""
    afml_cache.configure(directory=directory)
    barrier.wait(timeout=120)
    for params in grid:
        run_sma(GOOG, params, counter)
