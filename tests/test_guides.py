"""The guides' code, as written, with only ``afml.cache`` renamed to ``afml_cache``.

The code blocks are read from the guides themselves (../shared/seeds/000_*.txt, the usage guide,
and 001_*.txt, the migration guide), compiled under a file name of their own (so their functions
have source, as in a notebook cell) and run on synthetic OHLCV minute bars. Blocks that need what
is not ours (the ``schedule`` package, a tracking server at a made-up address, run ids the guide
invents) or that are not valid Python are left out; each test says which guide lines it runs.
MLflow runs on a sqlite store in the test's directory.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import linecache
import re
import sys
import textwrap
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import afml_cache
from afml_cache.demo import pipeline

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^(#{2,4} [^\n]*)$|^```python\n(.*?)^```", re.M | re.S)
if not SEEDS.is_dir():  # the guides sit beside the project's checkout, not inside it
    pytest.skip(f"the guides are not at {SEEDS}", allow_module_level=True)


def guide_blocks(prefix: str) -> dict[str, list[str]]:
    """The ```python blocks of the guide whose file starts with ``prefix``, by the heading they
    follow, with the package renamed."""
    (path,) = SEEDS.glob(f"{prefix}_*.txt")
    blocks: dict[str, list[str]] = {}
    heading = ""
    for match in _BLOCK.finditer(path.read_text(encoding="utf-8")):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.setdefault(heading, []).append(
                match.group(2).replace("afml.cache", "afml_cache")
            )
    return blocks


USAGE = guide_blocks("000")
MIGRATION = guide_blocks("001")


def run_block(code: str, namespace: dict[str, Any], label: str) -> dict[str, Any]:
    """Runs ``code`` in ``namespace`` as a notebook cell would: its functions have source."""
    filename = f"<guide: {label}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    exec(compile(code, filename, "exec"), namespace)
    return namespace


def up_to(code: str, marker: str) -> str:
    """The lines of ``code`` before the line containing ``marker``."""
    lines = code.splitlines(True)
    return "".join(lines[: next(i for i, line in enumerate(lines) if marker in line)])


def stats_of(function_name: str) -> dict[str, Any]:
    (row,) = [r for name, r in afml_cache.get_cache_stats().items() if name == function_name]
    return row


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    """Two months of synthetic one-minute OHLCV bars from 2024-01-01, UTC."""
    frame = pipeline.synthetic_minute_bars(90_000)
    when = pd.date_range("2024-01-01", periods=len(frame), freq="min", tz="UTC", name="time")
    return frame.set_axis(when)


@pytest.fixture
def cell(cache_dir: Path, bars: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh notebook namespace with the names the guides' snippets take as given."""
    monkeypatch.chdir(tmp_path)  # the guides write their reports into the working directory
    return {
        "__name__": "guide_notebook",
        "pd": pd,
        "np": np,
        "Path": Path,
        "prices": bars,
        "labels": np.sign(bars["close"].diff(20).fillna(0.0)),
        "features": bars["close"].rolling(20).mean().to_frame("sma"),
    }


@pytest.fixture
def afml_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """An importable ``afml.labeling`` with a cached ``triple_barrier``, and an
    ``afml.labeling_fast`` beside it, as the usage guide's examples name them."""
    root = tmp_path / "src"
    (root / "afml").mkdir(parents=True)
    (root / "afml" / "__init__.py").write_text("")
    for name in ("labeling", "labeling_fast"):
        (root / "afml" / f"{name}.py").write_text(
            textwrap.dedent(
                """
                import numpy as np
                from afml_cache import robust_cacheable

                @robust_cacheable
                def triple_barrier(close, pt_sl=(1, 1), horizon=20):
                    move = close.shift(-horizon) / close - 1
                    return np.sign(move.where(move.abs() > 0.001 * pt_sl[0], 0.0))
                """
            )
        )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield importlib.import_module("afml.labeling")
    for name in ("afml.labeling_fast", "afml.labeling", "afml"):
        sys.modules.pop(name, None)


# --- module paths -----------------------------------------------------------------------------


def test_the_guides_module_paths_import_the_same_objects() -> None:
    from afml_cache.cache_monitoring import (
        CacheMonitor,
        analyze_cache_patterns,
        get_cache_efficiency_report,
        get_cache_monitor,
        get_cache_stats,
        print_cache_health,
    )
    from afml_cache.robust_cache_keys import robust_cacheable, time_aware_cacheable
    from afml_cache.selective_cleaner import maintain_cache, smart_cache_clear

    assert robust_cacheable is afml_cache.robust_cacheable
    assert time_aware_cacheable is afml_cache.time_aware_cacheable
    assert print_cache_health is afml_cache.print_cache_health
    assert get_cache_efficiency_report is afml_cache.get_cache_efficiency_report
    assert analyze_cache_patterns is afml_cache.analyze_cache_patterns
    assert get_cache_stats is afml_cache.get_cache_stats
    assert isinstance(get_cache_monitor(), CacheMonitor)
    assert smart_cache_clear is afml_cache.smart_cache_clear
    assert maintain_cache is afml_cache.maintain_cache


def test_the_migration_guides_init_imports_everything_it_names() -> None:
    # Step 2's relative imports, from the package.
    (code,) = MIGRATION["Step 2: Update `__init__.py`"]
    namespace = run_block(code.replace("from .", "from afml_cache."), {}, "001 step 2")
    assert namespace["robust_cacheable"] is afml_cache.robust_cacheable
    assert namespace["get_cache_efficiency_report"] is afml_cache.get_cache_efficiency_report
    assert namespace["mlflow_cached"] is afml_cache.mlflow_cached
    assert namespace["cached_backtest"] is afml_cache.cached_backtest
    assert namespace["MLFLOW_AVAILABLE"] is True
    assert all(name in namespace for name in namespace["__all__"])


# --- the usage guide --------------------------------------------------------------------------


def test_basic_usage_computes_once(cell: dict[str, Any]) -> None:
    run_block(USAGE["Standard Caching (Original System)"][0], cell, "000 basic usage")
    pd.testing.assert_series_equal(cell["labels1"], cell["labels"])
    pd.testing.assert_series_equal(cell["labels2"], cell["labels"])
    row = stats_of("guide_notebook.compute_triple_barrier_labels")
    assert (row["total_calls"], row["cache_hits"], row["cache_misses"]) == (2, 1, 1)


def test_robust_cacheable_hits_equal_frames(cell: dict[str, Any]) -> None:
    run_block(USAGE["Using Robust Cacheable"][0], cell, "000 robust cacheable")
    pd.testing.assert_frame_equal(cell["features2"], cell["features1"])
    row = stats_of("guide_notebook.extract_features")
    assert (row["cache_hits"], row["cache_misses"]) == (1, 1)


def test_time_aware_caching_keeps_months_apart(cell: dict[str, Any]) -> None:
    run_block(USAGE["Time-Series Aware Caching"][0], cell, "000 time-aware")
    prices = cell["prices"]
    january = prices["2024-01-01":"2024-01-31"]
    pd.testing.assert_frame_equal(cell["vol_jan"], january.rolling(20).std())
    pd.testing.assert_frame_equal(
        cell["vol_feb"], prices["2024-02-01":"2024-02-28"].rolling(20).std()
    )
    assert stats_of("guide_notebook.compute_volatility")["cache_misses"] == 2
    # Asked again, January is a hit and equal to the uncached result.
    again = cell["compute_volatility"](january)
    pd.testing.assert_frame_equal(again, cell["compute_volatility"].uncached(january))
    assert stats_of("guide_notebook.compute_volatility")["cache_hits"] == 1


def some_activity(cell: dict[str, Any]) -> None:
    """Calls that give the monitoring blocks something to show: a function that hits and one
    whose arguments never repeat (a high miss rate)."""
    run_block(USAGE["Standard Caching (Original System)"][0], cell, "000 basic usage")
    run_block(
        "from afml_cache import robust_cacheable\n\n"
        "@robust_cacheable\n"
        "def rolling_mean(prices, window):\n"
        "    return prices['close'].rolling(window).mean()\n\n"
        "for window in range(2, 14):\n"
        "    rolling_mean(prices, window)\n",
        cell,
        "activity",
    )


def test_the_monitoring_blocks(cell: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    some_activity(cell)
    run_block(USAGE["Health Report"][0], cell, "000 health report")
    assert "CACHE HEALTH REPORT" in capsys.readouterr().out
    run_block(USAGE["Detailed Analysis"][0], cell, "000 detailed analysis")
    df = cell["df"]
    assert list(df.columns[:8]) == [
        "function",
        "calls",
        "hits",
        "misses",
        "hit_rate",
        "avg_time_ms",
        "cache_size_mb",
        "last_access",
    ]
    printed = capsys.readouterr().out
    assert "guide_notebook.rolling_mean" in printed
    run_block(USAGE["Pattern Analysis"][0], cell, "000 pattern analysis")
    printed = capsys.readouterr().out
    assert "Functions with poor cache performance:" in printed
    assert "  - guide_notebook.rolling_mean: 0.0% hit rate" in printed
    run_block(USAGE["Export Reports"][0], cell, "000 export reports")
    assert pd.read_csv("cache_report.csv")["calls"].sum() == 14
    assert Path("cache_report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_function_specific_analysis(
    cell: dict[str, Any], afml_package: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    close = cell["prices"]["close"]
    first = afml_package.triple_barrier(close)
    pd.testing.assert_series_equal(afml_package.triple_barrier(close), first)
    run_block(USAGE["Function-Specific Analysis"][0], cell, "000 function-specific")
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [
        "Function: afml.labeling.triple_barrier",
        "Total Calls: 2",
        "Hit Rate: 50.0%",
    ]
    # The short name the health report's example uses finds the same function.
    monitor = afml_cache.get_cache_monitor()
    assert monitor.get_function_stats("triple_barrier") == cell["stats"]


def edit(module: types.ModuleType, old: str, new: str) -> None:
    """Edits a module's source and reloads it, as a user editing a file and re-running does."""
    path = Path(str(module.__file__))
    path.write_text(path.read_text().replace(old, new))
    # The edit keeps the size and may keep the second: the bytecode cache would hide it.
    Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
    importlib.reload(module)


def test_cache_maintenance_clears_the_changed_labeling_module(
    cell: dict[str, Any], afml_package: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    fast = importlib.import_module("afml.labeling_fast")
    close = cell["prices"]["close"]
    afml_package.triple_barrier(close)
    fast.triple_barrier(close)
    for module in (afml_package, fast):  # both modules are edited
        edit(module, "0.001", "0.002")
    gc.collect()  # the old versions are gone, as after a kernel restart
    blocks = USAGE["2. Cache Maintenance"][0]
    run_block(blocks, cell, "000 cache maintenance")
    # maintain_cache(auto_clear=True) already removed both modules' outdated entries: this is
    # what the guide prints; smart_cache_clear('labeling') then found nothing left.
    assert capsys.readouterr().out.startswith("Cleared 2 functions\nFreed ")
    assert afml_package.triple_barrier.cache_entries() == []
    assert fast.triple_barrier.cache_entries() == []


def test_smart_cache_clear_labeling_is_afml_labeling_only(
    cell: dict[str, Any], afml_package: types.ModuleType
) -> None:
    fast = importlib.import_module("afml.labeling_fast")
    close = cell["prices"]["close"]
    afml_package.triple_barrier(close)
    fast.triple_barrier(close)
    for module in (afml_package, fast):
        edit(module, "0.001", "0.002")
    gc.collect()
    (imports, *_) = USAGE["2. Cache Maintenance"][0].splitlines(True)  # its import line
    run_block(imports + "smart_cache_clear('labeling')\n", cell, "000 smart_cache_clear")
    assert sys.modules["afml.labeling"].triple_barrier.cache_entries() == []
    assert len(sys.modules["afml.labeling_fast"].triple_barrier.cache_entries()) == 1


def test_monitor_regularly_and_troubleshooting(
    cell: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    some_activity(cell)
    # Up to the `schedule` package's part, which is not ours.
    run_block(up_to(USAGE["3. Monitor Regularly"][0], "import schedule"), cell, "000 monitor")
    assert capsys.readouterr().out.startswith("Hit rate: 7.1% | Tracked functions: 2 |")
    run_block(USAGE["Low Hit Rate?"][0], cell, "000 low hit rate")
    assert [f["function"] for f in cell["patterns"]["high_miss_rate_functions"]] == [
        "guide_notebook.rolling_mean"
    ]
    run_block(USAGE["Cache Too Large?"][0], cell, "000 cache too large")
    assert cell["report"]["errors"] == []
    run_block(USAGE["Cache Not Working?"][0], cell, "000 cache not working")
    printed = capsys.readouterr().out
    assert "guide_notebook.compute_triple_barrier_labels" in printed
    assert f"Cache location: {afml_cache.CACHE_DIRS['joblib']}" in printed
    assert afml_cache.get_cache_stats() == {}


# --- backtests and MLflow in the usage guide --------------------------------------------------


def test_the_backtest_blocks(cell: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # Setup to Walk-Forward Analysis. "Comparing Strategies" looks run ids up with
    # `backtest_cache.index[...]` and runs strategies the guide never defines.
    mt5_data = cell["prices"].iloc[:2_000]
    cell.update(
        mt5_data=mt5_data,
        trades_df=pd.DataFrame({"pnl": [1.0, -0.5]}),
        equity_series=mt5_data["close"] / mt5_data["close"].iloc[0],
        get_train_fold=lambda fold: mt5_data.iloc[fold * 200 : fold * 200 + 1_000],
        get_test_fold=lambda fold: mt5_data.iloc[fold * 200 + 1_000 : fold * 200 + 1_200],
    )
    headings = ["Setup", "Using the Decorator", "Manual Caching"]
    headings += ["Parameter Optimization with Cache", "Walk-Forward Analysis"]
    for heading in headings:
        (code,) = [b for b in USAGE[heading] if "backtest" in b]
        run_block(code, cell, f"000 {heading}")
    uncached = cell["run_momentum_backtest"].uncached(mt5_data, {"lookback": 20, "threshold": 0.02})
    assert cell["metrics2"] == cell["metrics"] == uncached[0]
    pd.testing.assert_frame_equal(cell["trades2"], uncached[1])
    pd.testing.assert_series_equal(cell["equity2"], uncached[2])
    printed = capsys.readouterr().out
    assert "Sharpe Ratio: 1.5\nTotal Trades: 2\n" in printed
    assert "Best Parameter Combinations:" in printed
    backtests = cell["backtest_cache"]
    assert len(cell["best_params"]) == 3
    assert len(backtests.walk_forward_splits("2024_walk_forward")) == 5
    # One run per distinct call: 3 grid points (one of them the first call) and 5 folds.
    assert len(backtests.runs("momentum_strategy")) == 8
    assert len(backtests.runs("mean_reversion")) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")
def test_the_mlflow_blocks(
    cell: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Setup with its own alternative to the made-up server (None: MLflow's configured store), then
    # Basic Experiment Tracking, Manual Experiment Context and Finding Best Runs up to the
    # comparison of run ids the guide makes up.
    pytest.importorskip("mlflow")
    from sklearn.ensemble import RandomForestClassifier

    use_sqlite_mlflow(tmp_path, monkeypatch)
    features = cell["features"].iloc[20:1_020]
    labels = cell["labels"].iloc[20:1_020]
    calls: list[str] = []

    def optimize_parameters(data: Any, grid: list[dict[str, int]]) -> dict[str, Any]:
        calls.append("optimize")
        return {"best_sharpe": float(len(grid)), "best": grid[0]}

    cell.update(
        RandomForestClassifier=RandomForestClassifier,
        mt5_data={"features": features, "labels": labels},
        data=features,
        param_grid=[{"window": 10}, {"window": 20}],
        optimize_parameters=optimize_parameters,
    )
    (setup, _) = USAGE["Setup"]
    setup = setup.replace('"http://localhost:5000"', "None")
    run_block(setup, cell, "000 mlflow setup")
    # The guide's "second call: uses cached result" is wrong for its own code: a forest without
    # random_state draws from numpy's global generator, which the first fit advanced, so a
    # second fit gives another model. The second call computes it, and says why.
    with pytest.warns(afml_cache.CacheWarning, match="draws from numpy's global random generator"):
        run_block(USAGE["Basic Experiment Tracking"][0], cell, "000 basic experiment tracking")
    assert cell["metrics2"] == cell["metrics"]
    assert cell["train_model"].cache_info()["cache_hits"] == 0
    for _ in range(2):
        run_block(USAGE["Manual Experiment Context"][0], cell, "000 manual experiment context")
    assert calls == ["optimize"] and cell["results"]["best_sharpe"] == 2.0
    best = up_to(USAGE["Finding Best Runs"][0], "# Compare multiple runs")
    run_block(best, cell, "000 finding best runs")
    # Both runs have the same metrics: the best is either model.
    predicted = cell["best_model"].predict(features)
    assert any(np.array_equal(predicted, cell[m].predict(features)) for m in ("model", "model2"))


def use_sqlite_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's store for the guides' blocks: sqlite in the test's directory. The variables
    that setting MLflow up sets are put back after the test."""
    with warnings.catch_warnings():  # MLflow warns about its own type hints when importing these
        warnings.simplefilter("ignore")
        importlib.import_module("mlflow.pyfunc")
        importlib.import_module("mlflow.sklearn")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


# --- the migration guide ----------------------------------------------------------------------


def test_phase_2_sorts_the_efficiency_report_by_calls(
    cell: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    some_activity(cell)
    run_block(MIGRATION["Phase 1: Add Monitoring (No code changes)"][0], cell, "001 phase 1")
    assert "CACHE HEALTH REPORT" in capsys.readouterr().out
    run_block(MIGRATION["Phase 2: Upgrade High-Value Functions"][0], cell, "001 phase 2")
    shown = capsys.readouterr().out.splitlines()
    assert "guide_notebook.rolling_mean" in shown[1]  # 12 calls, before the 2 of the other
    ranked = cell["df"].sort_values("calls", ascending=False)
    assert ranked["calls"].tolist() == [12, 2]


def test_verify_nothing_breaks_and_the_patterns(
    cell: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run_block(MIGRATION["Verify Nothing Breaks"][0], cell, "001 backward compatibility")
    assert "Backward compatibility verified" in capsys.readouterr().out
    # The patterns' snippets take their decorators as imported already.
    run_block("from afml_cache import robust_cacheable, time_aware_cacheable\n", cell, "imports")
    for heading in (
        "Pattern 1: DataFrame-Heavy Functions",
        "Pattern 2: Time-Series Functions",
        "Pattern 3: Expensive Labeling",
    ):
        run_block(MIGRATION[heading][0], cell, f"001 {heading}")
    prices = cell["prices"]
    pd.testing.assert_frame_equal(cell["compute_indicators"](prices, 5), prices.rolling(5).mean())
    pd.testing.assert_series_equal(cell["triple_barrier_labels"](prices, None), cell["labels"])
    some_activity(cell)
    run_block(MIGRATION["Issue 3: Cache Performance Degradation"][0], cell, "001 issue 3")
    assert "  guide_notebook.rolling_mean: 0.0%" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")
def test_phase_3_pattern_4_and_issue_2_track_models(
    cell: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from sklearn.ensemble import RandomForestClassifier

    use_sqlite_mlflow(tmp_path, monkeypatch)
    run_block(MIGRATION["Phase 3: Add MLflow for New Projects"][0], cell, "001 phase 3")
    assert afml_cache.get_mlflow_cache().experiment_name == "my_new_project"
    # Pattern 4, before and after: the snippets take their names as imported already.
    cell.update(cacheable=afml_cache.cacheable, RandomForest=RandomForestClassifier)
    run_block(MIGRATION["Pattern 4: Model Training"][0], cell, "001 pattern 4")
    features = cell["features"].iloc[20:520]
    labels = cell["labels"].iloc[20:520]
    params = {"n_estimators": 5, "random_state": 0}
    model, metrics = cell["train_model"](features, labels, params)
    again, metrics_again = cell["train_model"](features, labels, params)
    uncached, uncached_metrics = cell["train_model"].uncached(features, labels, params)
    assert metrics_again == metrics == uncached_metrics
    np.testing.assert_array_equal(again.predict(features), uncached.predict(features))
    np.testing.assert_array_equal(model.predict(features), uncached.predict(features))
    cell["setup_mlflow_cache"] = afml_cache.setup_mlflow_cache
    (_, code) = MIGRATION["Issue 2: MLflow Not Available"]
    run_block(code, cell, "001 issue 2")
    assert afml_cache.get_mlflow_cache().experiment_name == "my_experiment"


def test_phase_4_and_pattern_5_cache_backtests(cell: dict[str, Any]) -> None:
    # Their functions return the metrics, trades and equity of the code they leave out.
    cell.update(metrics={"sharpe_ratio": 1.2}, trades=pd.DataFrame({"pnl": [0.5]}), equity=None)
    run_block(MIGRATION["Phase 4: Add Backtest Caching"][0], cell, "001 phase 4")
    # Pattern 5 from "# AFTER": its "BEFORE" loop calls a function it never defines.
    code = MIGRATION["Pattern 5: Parameter Optimization"][0]
    run_block(code[code.index("# AFTER") :], cell, "001 pattern 5")
    data = cell["prices"].iloc[:500]
    for run in (cell["run_my_backtest"], cell["run_backtest"]):
        got = run(data, {"window": 5})
        assert got[0] == run(data, {"window": 5})[0] == run.uncached(data, {"window": 5})[0]
        assert len(run.runs()) == 1
    assert afml_cache.get_backtest_cache().strategies() == ["my_strategy", "strategy_name"]


def test_issue_4_up_to_the_summary_the_api_does_not_have(cell: dict[str, Any]) -> None:
    some_activity(cell)
    code = MIGRATION["Issue 4: Cache Directory Conflicts"][0]
    run_block(up_to(code, "# Verify clean state"), cell, "001 issue 4")
    assert afml_cache.get_cache_stats() == {}
    with pytest.raises(ImportError, match="get_cache_summary"):
        run_block(code, cell, "001 issue 4, as written")


def test_the_benchmark_script(cell: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    run_block(MIGRATION["Benchmark Script"][0], cell, "001 benchmark")
    out = capsys.readouterr().out
    assert out.count("Speedup:") == 2
    assert [r["decorator"] for r in cell["results"]] == [
        "cacheable (original)",
        "robust_cacheable (new)",
    ]


# --- logging ----------------------------------------------------------------------------------


def readme_block(containing: str) -> str:
    found = [b for b in re.findall(r"^```python\n(.*?)^```", README.read_text(), re.M | re.S)]
    (block,) = [b for b in found if containing in b]
    return block


def test_the_loguru_recipe_with_the_readme_bridge_logs_hits_and_misses(
    tmp_path: Path, run_python: Any
) -> None:
    recipe = up_to(USAGE["5. Debugging Cache Issues"][0], "# Check what's being cached")
    bridge = readme_block("loguru")
    script = "\n".join(
        [
            recipe,
            bridge,
            "import afml_cache",
            f"afml_cache.configure(directory={str(tmp_path / 'cache')!r})",
            "@afml_cache.robust_cacheable",
            "def spread(high, low):",
            "    return high - low",
            "assert spread(3.0, 1.0) == spread(3.0, 1.0) == 2.0",
        ]
    )
    with contextlib.chdir(tmp_path):
        run_python(script)
    log = (tmp_path / "cache_debug.log").read_text()
    lines = [line for line in log.splitlines() if ".spread" in line]
    assert len(lines) == 2, log
    assert "| DEBUG" in lines[0] and "- miss " in lines[0]
    assert "| DEBUG" in lines[1] and "- hit " in lines[1]


def test_without_the_bridge_the_recipe_gets_nothing(tmp_path: Path, run_python: Any) -> None:
    # Why the README's bridge is needed: we log through the standard logging module.
    recipe = up_to(USAGE["5. Debugging Cache Issues"][0], "# Check what's being cached")
    with contextlib.chdir(tmp_path):
        run_python(
            recipe
            + "import afml_cache\n"
            + f"afml_cache.configure(directory={str(tmp_path / 'cache')!r})\n"
            + "@afml_cache.robust_cacheable\ndef spread(high, low):\n    return high - low\n"
            + "spread(3.0, 1.0)\n"
        )
    assert "spread" not in (tmp_path / "cache_debug.log").read_text()


def test_readme_states_the_guide_compatibility() -> None:
    text = README.read_text()
    assert "afml_cache.cache_monitoring" in text and "afml_cache.selective_cleaner" in text
