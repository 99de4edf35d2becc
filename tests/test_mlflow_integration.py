"""`@mlflow_cached`, `MLflowCache` and `setup_production_cache` against real MLflow: a sqlite
tracking store under a temporary directory (no server), and once a real `mlflow server`.

Computations are counted in the module-level list ``CALLS``; each tracked function names it in
``ignore_globals`` so that counting does not change its key. A result served from the cache is
compared with the uncached function's: same predictions, same metrics.
"""

from __future__ import annotations

import ast
import concurrent.futures
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")
sklearn_ensemble = pytest.importorskip("sklearn.ensemble")
with warnings.catch_warnings():  # MLflow warns about its own type hints when importing these
    warnings.simplefilter("ignore")
    import mlflow.pyfunc
    import mlflow.sklearn

import afml_cache  # noqa: E402
from afml_cache import (  # noqa: E402
    CacheWarning,
    MLflowCache,
    get_mlflow_cache,
    mlflow_cached,
    setup_mlflow_cache,
    setup_production_cache,
)
from afml_cache.mlflow_integration import (  # noqa: E402
    METRIC_COMPUTE_SECONDS,
    TAG_HIT,
    TAG_KEY,
    TAG_SOURCE_RUN,
)

# MLflow's sqlite store uses a SQLAlchemy loader option that SQLAlchemy deprecates; with
# warnings as errors that would fail MLflow itself, not the code under test.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

CALLS: list[str] = []
# How long the test waits for `mlflow server` to answer before skipping.
SERVER_START_S = 120


def ran(name: str) -> int:
    return CALLS.count(name)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One sqlite tracking store and one cache directory for the module; the working
    directory moves there so that nothing MLflow writes lands in the repository."""
    root = tmp_path_factory.mktemp("mlflow")
    previous_dir, previous_cache = os.getcwd(), afml_cache.CACHE_DIRS["base"]
    # Setting MLflow up sets these for worker processes: other modules' tests must not see them.
    variables = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    os.chdir(root)
    afml_cache.configure(directory=root / "cache")
    yield {
        "root": str(root),
        "uri": f"sqlite:///{root / 'mlflow.db'}",
        "artifacts": str(root / "artifacts"),
    }
    afml_cache.configure(directory=previous_cache)
    os.chdir(previous_dir)
    for name, value in variables.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def tracking(store: dict[str, str], request: pytest.FixtureRequest) -> MLflowCache:
    """The module's store, in an experiment of this test's own."""
    return setup_mlflow_cache(
        request.node.name, tracking_uri=store["uri"], artifact_location=store["artifacts"]
    )


def labelled_frame(seed: int = 0, rows: int = 240) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=rows, freq="h")
    features = pd.DataFrame(rng.normal(size=(rows, 3)), index=index, columns=["sma", "rsi", "vol"])
    labels = pd.Series(np.where(features["sma"] + 0.3 * features["rsi"] > 0, 1, -1), index=index)
    return features, labels


@mlflow_cached(tags={"model": "rf"}, ignore_globals=("CALLS",))
def train_model(features: pd.DataFrame, labels: pd.Series, params: dict[str, Any]) -> Any:
    """The migration guide's "Pattern 4", with a fixed seed."""
    CALLS.append("train_model")
    model = sklearn_ensemble.RandomForestClassifier(**params, random_state=0)
    model.fit(features, labels)
    metrics = {"accuracy": model.score(features, labels), "n_trees": len(model.estimators_)}
    return model, metrics


def run_of(tracker: MLflowCache, run_id: str) -> Any:
    return tracker._client.get_run(run_id)


def runs_by_hit(tracker: MLflowCache) -> tuple[list[Any], list[Any]]:
    runs = tracker._client.search_runs([tracker.experiment_id])
    computed = [r for r in runs if r.data.tags.get(TAG_HIT) == "false"]
    hits = [r for r in runs if r.data.tags.get(TAG_HIT) == "true"]
    return computed, hits


# --- what importing and decorating do ---------------------------------------------------------


def test_import_and_decorating_touch_neither_mlflow_nor_the_disk(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import os, sys
        import afml_cache
        afml_cache.configure(directory="cache")

        @afml_cache.mlflow_cached(tags={"model": "rf"})
        def train(data, params):
            return data

        print("mlflow" in sys.modules, afml_cache.MLFLOW_AVAILABLE, sorted(os.listdir(".")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split(None, 2) == ["False", "True", "[]\n"]


def test_without_mlflow_it_caches_and_warns_once(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys, warnings

        class NoMLflow:
            def find_spec(self, name, path=None, target=None):
                if name == "mlflow" or name.startswith("mlflow."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoMLflow())
        import afml_cache
        afml_cache.configure(directory="cache")
        calls = []

        @afml_cache.mlflow_cached(tags={"model": "rf"}, ignore_globals=("calls",))
        def train(data, params):
            calls.append(1)
            return sum(data) * params["scale"], {"score": 1.0}

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = train([1, 2, 3], {"scale": 2})
            second = train([1, 2, 3], {"scale": 2})
            other = train([1, 2, 4], {"scale": 2})
        print(afml_cache.MLFLOW_AVAILABLE, first == second, other, len(calls))
        print(len(caught), caught[0].message if caught else "")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    first, second = out.stdout.splitlines()
    assert first == "False True (14, {'score': 1.0}) 2"
    assert second.startswith("1 afml_cache: MLflow is not installed")
    assert "pip install 'afml-cache[mlflow]'" in second


# --- a model trained once, tracked, found again ------------------------------------------------


def test_a_model_is_trained_once_and_its_run_has_params_metrics_tags_and_model(
    tracking: MLflowCache,
) -> None:
    features, labels = labelled_frame()
    before = ran("train_model")
    model, metrics = train_model(features, labels, {"n_estimators": 15, "max_depth": 3})
    again, metrics_again = train_model(features, labels, {"n_estimators": 15, "max_depth": 3})
    assert ran("train_model") == before + 1
    assert metrics_again == metrics
    uncached, uncached_metrics = train_model.uncached(
        features, labels, {"n_estimators": 15, "max_depth": 3}
    )
    assert uncached_metrics == metrics
    np.testing.assert_array_equal(again.predict(features), uncached.predict(features))

    [computed], [hit] = runs_by_hit(tracking)
    params, tags = computed.data.params, computed.data.tags
    assert params["n_estimators"] == "15" and params["max_depth"] == "3"
    assert params["features.shape"] == "(240, 3)"
    assert params["features.digest"] == afml_cache.fingerprint(features)
    assert params["labels.digest"] == afml_cache.fingerprint(labels)
    assert "DataFrame" not in params.values()
    assert computed.data.metrics["accuracy"] == metrics["accuracy"]
    assert computed.data.metrics["n_trees"] == 15
    assert METRIC_COMPUTE_SECONDS in computed.data.metrics
    assert tags["model"] == "rf" and tags["afml_cache.function"].endswith(".train_model")
    # The key tagged is the entry's.
    assert tags[TAG_KEY] in {e["digest"] for e in train_model.cache_entries()}
    logged = tracking.load_model_from_run(computed.info.run_id)
    np.testing.assert_array_equal(logged.predict(features), model.predict(features))

    # The hit's run says so, names the run that computed it and carries its metrics.
    assert hit.data.tags[TAG_SOURCE_RUN] == computed.info.run_id
    assert hit.data.tags[TAG_KEY] == tags[TAG_KEY] and hit.data.tags["model"] == "rf"
    assert hit.data.metrics["accuracy"] == metrics["accuracy"]
    assert hit.data.params == computed.data.params
    assert hit.info.run_name == computed.info.run_name == "train_model"


def test_new_data_or_arguments_retrain(tracking: MLflowCache) -> None:
    features, labels = labelled_frame(seed=1)
    flipped = labels.copy()
    flipped.iloc[7] = -flipped.iloc[7]
    shifted = features.copy()
    shifted.iloc[3, 1] += 1e-9
    before = ran("train_model")
    results = [
        train_model(features, labels, {"n_estimators": 5}),
        train_model(features, flipped, {"n_estimators": 5}),
        train_model(shifted, labels, {"n_estimators": 5}),
        train_model(features, labels, {"n_estimators": 6}),
        train_model(features, flipped, {"n_estimators": 5}),
    ]
    assert ran("train_model") == before + 4
    model, metrics = results[-1]
    uncached, uncached_metrics = train_model.uncached(features, flipped, {"n_estimators": 5})
    assert metrics == uncached_metrics
    np.testing.assert_array_equal(model.predict(features), uncached.predict(features))
    computed, hits = runs_by_hit(tracking)
    assert (len(computed), len(hits)) == (4, 1)
    assert len({r.data.tags[TAG_KEY] for r in computed}) == 4


def test_the_best_run_gives_back_a_model_that_predicts_like_the_returned_one(
    tracking: MLflowCache,
) -> None:
    features, labels = labelled_frame(seed=2)
    returned = {
        depth: train_model(features, labels, {"n_estimators": 8, "max_depth": depth})
        for depth in (1, 2, 6)
    }
    train_model(features, labels, {"n_estimators": 8, "max_depth": 6})  # a hit run, same metric
    best_depth = max(returned, key=lambda d: returned[d][1]["accuracy"])
    worst_depth = min(returned, key=lambda d: returned[d][1]["accuracy"])

    best = tracking.get_best_run("accuracy", maximize=True)
    assert run_of(tracking, best).data.tags[TAG_HIT] == "false"
    assert run_of(tracking, best).data.params["max_depth"] == str(best_depth)
    model = tracking.load_model_from_run(best)
    np.testing.assert_array_equal(
        model.predict(features), returned[best_depth][0].predict(features)
    )
    worst = tracking.get_best_run("accuracy", maximize=False)
    assert run_of(tracking, worst).data.params["max_depth"] == str(worst_depth)

    computed, hits = runs_by_hit(tracking)
    # A hit run's model is its source run's.
    from_hit = tracking.load_model_from_run(hits[0].info.run_id)
    np.testing.assert_array_equal(from_hit.predict(features), returned[6][0].predict(features))
    table = tracking.compare_runs(
        [r.info.run_id for r in computed], metrics=["accuracy", "sharpe_ratio"]
    )
    assert list(table.columns) == ["accuracy", "sharpe_ratio"]
    assert table.index.name == "run_id" and table["sharpe_ratio"].isna().all()
    assert sorted(table["accuracy"]) == sorted(m["accuracy"] for _, m in returned.values())
    assert set(tracking.runs().index) == {r.info.run_id for r in computed + hits}
    with pytest.raises(LookupError, match=r"sharpe_ratio.*accuracy"):
        tracking.get_best_run("sharpe_ratio")
    # An id the store does not have: MLflow's own exception and traceback came through.
    with pytest.raises(KeyError, match=r"has the id\(s\) abc123; runs\(\) lists"):
        tracking.compare_runs([best, "abc123"], metrics=["accuracy"])
    with pytest.raises(KeyError, match=r"has the id\(s\) abc123"):
        tracking.load_model_from_run("abc123")
    with pytest.raises(KeyError, match=r"has the id\(s\) abc def"):
        tracking.compare_runs(["abc def"])


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[float], params: Any = None) -> list[float]:
        return [x * 2 for x in model_input]


def triple(x: Any) -> Any:
    return x * 3.0


@mlflow_cached(ignore_globals=("CALLS",))
def fit_pipeline(features: pd.DataFrame, labels: pd.Series) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    CALLS.append("fit_pipeline")
    # A function of the user's in the pipeline: skops would not load it without trusting it.
    pipeline = make_pipeline(FunctionTransformer(triple), LogisticRegression())
    return {"model": pipeline.fit(features, labels), "pyfunc": Doubler()}


@mlflow_cached
def python_model(scale: int) -> Any:
    return Doubler(), {"scale": scale}


def test_every_model_logged_loads_back(tracking: MLflowCache) -> None:
    features, labels = labelled_frame(seed=3)
    pipeline = fit_pipeline(features, labels)["model"]
    [computed], _ = runs_by_hit(tracking)
    loaded = tracking.load_model_from_run(computed.info.run_id)
    np.testing.assert_array_equal(loaded.predict(features), pipeline.predict(features))

    python_model(2)
    run_id = tracking.get_best_run("scale")
    assert tracking.load_model_from_run(run_id).predict([1.0, 2.0]) == [2.0, 4.0]


def test_a_parameter_sweep_in_worker_processes_logs_to_the_same_experiment(
    tracking: MLflowCache, store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers (spawned: fresh processes, no workers kept for other tests) import this module
    # by name and open the same cache directory.
    monkeypatch.setenv("AFML_CACHE_DIR", str(Path(store["root"]) / "cache"))
    features, labels = labelled_frame(seed=6)
    grid = [{"n_estimators": n} for n in (3, 4)]
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as workers:
        swept = list(workers.map(train_model, [features] * 2, [labels] * 2, grid))
    computed, _ = runs_by_hit(tracking)
    assert sorted(r.data.params["n_estimators"] for r in computed) == ["3", "4"]
    # Here, each point is a hit of what the workers computed.
    before = ran("train_model")
    for params, (model, metrics) in zip(grid, swept, strict=True):
        again, again_metrics = train_model(features, labels, params)
        assert again_metrics == metrics
        np.testing.assert_array_equal(again.predict(features), model.predict(features))
    assert ran("train_model") == before


def test_log_hits_false_records_no_run_for_a_hit(tracking: MLflowCache) -> None:
    @mlflow_cached(log_hits=False, log_model=False)
    def score(values: np.ndarray, window: int = 3) -> dict[str, float]:
        return {"mean": float(np.convolve(values, np.ones(window) / window, "valid").mean())}

    values = np.arange(50.0)
    assert score(values) == score(values, window=3) == score.uncached(values)
    computed, hits = runs_by_hit(tracking)
    assert (len(computed), len(hits)) == (1, 0)
    assert computed[0].data.params["window"] == "3"
    assert computed[0].data.params["values.shape"] == "(50,)"


def test_a_script_function_is_tagged_with_the_name_its_entries_have(
    tracking: MLflowCache,
) -> None:
    code = (
        "from afml_cache import mlflow_cached\n"
        "@mlflow_cached(log_model=False)\n"
        "def score(n):\n"
        "    return {'total': float(n)}\n"
    )
    defined: dict[str, Any] = {"__name__": "__main__", "__file__": "/home/ana/train.py"}
    exec(code, defined)
    score = defined["score"]
    assert score(3) == score.uncached(3) == {"total": 3.0}
    [computed], _ = runs_by_hit(tracking)
    name = "__main__[/home/ana/train.py].score"
    assert computed.data.tags["afml_cache.function"] == name == score.__afml_cache__.name


def test_experiment_run_as_the_guide_writes_it(tracking: MLflowCache) -> None:
    param_grid = [{"window": w} for w in (5, 10, 20)]
    data = pd.Series(np.sin(np.arange(200) / 7.0))

    def optimize_parameters(data: pd.Series, grid: list[dict[str, int]]) -> dict[str, Any]:
        CALLS.append("optimize_parameters")
        sharpes = [float(data.rolling(g["window"]).mean().std()) for g in grid]
        return {"best_sharpe": max(sharpes), "best": grid[int(np.argmax(sharpes))]}

    before = ran("optimize_parameters")
    mlflow_cache = get_mlflow_cache()
    assert mlflow_cache is tracking
    for _ in range(2):
        with mlflow_cache.experiment_run("parameter_optimization") as ctx:
            # Check cache
            cached = ctx.get_cached("opt_results_v1")
            if cached:
                results = cached
            else:
                # Run optimization
                results = optimize_parameters(data, param_grid)
                # Cache for next time
                ctx.cache_result("opt_results_v1", results)
            # Log metrics
            ctx.log_metric("best_sharpe", results["best_sharpe"])
            ctx.log_param("param_grid_size", len(param_grid))
            assert mlflow.active_run().info.run_id == ctx.run_id
    assert ran("optimize_parameters") == before + 1
    assert results == optimize_parameters(data, param_grid)
    runs = tracking.runs()
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert set(runs["tags.mlflow.runName"]) == {"parameter_optimization"}
    assert set(runs["params.param_grid_size"]) == {"3"}
    assert set(runs["metrics.best_sharpe"]) == {results["best_sharpe"]}
    # Keys are content: an equal tuple finds it, another experiment does not.
    with mlflow_cache.experiment_run() as ctx:
        ctx.cache_result(("grid", (5, 10, 20)), 42)
        assert ctx.get_cached(("grid", (5, 10, 20))) == 42
        assert ctx.get_cached(("grid", (5, 10, 21))) is None
    with pytest.raises(RuntimeError, match="boom"), mlflow_cache.experiment_run("fails") as ctx:
        raise RuntimeError("boom")
    assert run_of(tracking, ctx.run_id).info.status == "FAILED"


def test_mlflow_failing_still_returns_and_caches_with_one_warning(
    tracking: MLflowCache, store: dict[str, str]
) -> None:
    @mlflow_cached(ignore_globals=("CALLS",))
    def label_count(labels: pd.Series) -> dict[str, float]:
        CALLS.append("label_count")
        return {"positives": float((labels > 0).sum())}

    _, labels = labelled_frame(seed=4)
    tracking._client.delete_experiment(tracking.experiment_id)  # MLflow now refuses runs
    before = ran("label_count")
    with pytest.warns(UserWarning, match="MLflow failed while starting a run") as caught:
        first = label_count(labels)
        second = label_count(labels)
        label_count(labels.iloc[:-1])
    assert len(caught) == 1
    assert first == second == label_count.uncached(labels)
    assert ran("label_count") == before + 3  # 2 computations + the uncached call
    # Set up again, tracking resumes.
    tracking._client.restore_experiment(tracking.experiment_id)
    again = setup_mlflow_cache(tracking.experiment_name, store["uri"])
    label_count(labels)
    _, [hit] = runs_by_hit(again)
    assert TAG_SOURCE_RUN not in hit.data.tags  # computed while MLflow was failing


def test_refused_params_a_failure_mid_run_and_odd_arguments_leave_no_run_active(
    tracking: MLflowCache,
) -> None:
    # MLflow refuses a param named like a path: the run is tracked without params, and ends.
    @mlflow_cached(ignore_globals=("CALLS",))
    def blend(weights: dict[str, float]) -> dict[str, float]:
        return {"sharpe": sum(weights.values())}

    with pytest.warns(UserWarning, match="MLflow refused the params"):
        assert blend({"data/eurusd/": 0.5, "SPY": 0.5}) == {"sharpe": 1.0}
    assert mlflow.active_run() is None
    [run] = tracking._client.search_runs([tracking.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["sharpe"] == 1.0

    # An argument whose `shape` is no shape, and a metric no float can hold, are not errors.
    @mlflow_cached(ignore_globals=("CALLS",))
    def odd(x: Any, big: int) -> dict[str, Any]:
        return {"sharpe": 2.0, "big": big}

    class Shaped:
        def shape(self) -> int:
            return 3

        def __cache_key__(self) -> str:
            return "shaped"

    assert odd(Shaped(), 10**400) == {"sharpe": 2.0, "big": 10**400}
    assert mlflow.active_run() is None

    # MLflow failing while the run is open stops tracking, and still ends the run.
    @mlflow_cached(ignore_globals=("CALLS",))
    def scored(x: int) -> dict[str, float]:
        return {"sharpe": float(x)}

    original = tracking._client.log_batch

    def failing(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("metrics"):
            raise mlflow.exceptions.MlflowException("the store went away")
        original(*args, **kwargs)

    tracking._client.log_batch = failing
    try:
        with pytest.warns(UserWarning, match="MLflow failed while logging"):
            assert scored(3) == {"sharpe": 3.0}
    finally:
        del tracking._client.log_batch
    assert mlflow.active_run() is None
    with mlflow.start_run():  # the user's own run starts
        pass
    statuses = {r.info.status for r in tracking._client.search_runs([tracking.experiment_id])}
    assert statuses == {"FINISHED"}


def test_a_hit_run_has_what_the_function_logged_itself(tracking: MLflowCache) -> None:
    @mlflow_cached(ignore_globals=("CALLS",))
    def backtest(window: int) -> dict[str, float]:
        mlflow.log_metric("sharpe", 1.5 + window / 100)  # as MLflow's own tutorials log
        mlflow.log_param("universe", "EURUSD")
        return {"total_return": 0.4}

    assert backtest(20) == backtest(20) == {"total_return": 0.4}
    _, [hit] = runs_by_hit(tracking)
    assert hit.data.metrics == {"sharpe": 1.7, "total_return": 0.4}
    assert hit.data.params == {"window": "20", "universe": "EURUSD"}


def test_a_tracking_uri_changed_after_setup_tracks_nothing_elsewhere(
    tracking: MLflowCache, store: dict[str, str], tmp_path: Path
) -> None:
    @mlflow_cached(ignore_globals=("CALLS",))
    def sharpe(window: int) -> dict[str, float]:
        return {"sharpe": window / 10}

    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)
    try:
        with pytest.warns(UserWarning, match="tracking URI is now"):
            assert sharpe(5) == {"sharpe": 0.5}
        assert mlflow.active_run() is None
        assert mlflow.MlflowClient(other).search_runs(["0", "1"]) == []
    finally:
        mlflow.set_tracking_uri(store["uri"])
    assert tracking._client.search_runs([tracking.experiment_id]) == []
    assert sharpe(6) == {"sharpe": 0.6}  # tracked again under the URI it was set up with
    assert len(tracking._client.search_runs([tracking.experiment_id])) == 1
    # The result computed untracked is a hit now: its run logs that call's params and metrics.
    assert sharpe(5) == {"sharpe": 0.5}
    _, [hit] = runs_by_hit(tracking)
    assert (hit.data.params, hit.data.metrics) == ({"window": "5"}, {"sharpe": 0.5})
    assert tracking.get_best_run("sharpe") != hit.info.run_id  # 0.6, the computed one


class _ClosedHandle:
    """An h5py-like handle whose ``shape`` raises, as a closed dataset's does."""

    @property
    def shape(self) -> Any:
        raise ValueError("Not a dataset (not a valid identifier)")

    def __cache_key__(self) -> str:
        return "closed handle"


def test_arguments_that_fail_to_describe_themselves_are_logged_by_type(
    tracking: MLflowCache,
) -> None:
    @mlflow_cached(ignore_globals=("CALLS",))
    def score(handle: Any, n: int) -> dict[str, float]:
        return {"sharpe": 1.0}

    assert score(_ClosedHandle(), 10**5000) == {"sharpe": 1.0}
    [run] = tracking._client.search_runs([tracking.experiment_id])
    assert run.data.params["handle.type"].endswith("_ClosedHandle")


def test_a_hit_whose_params_mlflow_refuses_leaves_tracking_on(
    tracking: MLflowCache, store: dict[str, str], tmp_path: Path
) -> None:
    @mlflow_cached(ignore_globals=("CALLS",))
    def blend(weights: dict[str, float]) -> dict[str, float]:
        return {"sharpe": sum(weights.values())}

    @mlflow_cached(ignore_globals=("CALLS",))
    def other(window: int) -> dict[str, float]:
        return {"sharpe": window / 10}

    weights = {"data/eurusd/": 0.5, "SPY": 0.5}  # a key MLflow refuses as a param's name
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with pytest.warns(UserWarning, match="tracking URI is now"):
            blend(weights)  # untracked: computed, its params kept
    finally:
        mlflow.set_tracking_uri(store["uri"])
    with pytest.warns(UserWarning, match="MLflow refused the params"):
        assert blend(weights) == {"sharpe": 1.0}  # a hit: its run logs without them
    assert tracking._broken is None
    other(3)
    computed, hits = runs_by_hit(tracking)
    assert len(computed) == 1 and len(hits) == 1
    assert hits[0].data.metrics == {"sharpe": 1.0}


def test_a_hit_in_another_tracking_store_names_no_run_of_the_first(
    tracking: MLflowCache, store: dict[str, str], tmp_path: Path
) -> None:
    features, labels = labelled_frame(seed=7)
    train_model(features, labels, {"n_estimators": 3})  # computed, its model logged here
    other = setup_mlflow_cache("elsewhere", tracking_uri=f"sqlite:///{tmp_path / 'other.db'}")
    train_model(features, labels, {"n_estimators": 3})  # a hit, run there
    best = other.get_best_run("accuracy")
    assert run_of(other, best).data.tags[TAG_HIT] == "true"
    with pytest.raises(LookupError, match="went to another store"):
        other.load_model_from_run(best)


def test_a_notebook_function_is_sent_to_joblib_workers(tmp_path: Path, run_python) -> None:
    # A function defined in __main__ goes to loky's workers by value (cloudpickle).
    out = run_python(
        f"""
        import warnings
        warnings.simplefilter("ignore")
        import afml_cache
        from joblib import Parallel, delayed
        from afml_cache import mlflow_cached, setup_mlflow_cache

        afml_cache.configure(directory={str(tmp_path / "cache")!r})
        setup_mlflow_cache("sweep", tracking_uri="sqlite:///{tmp_path / "mlflow.db"}")

        @mlflow_cached
        def tracked(window):
            return {{"sharpe": window / 10}}

        print(Parallel(n_jobs=2)(delayed(tracked)(w) for w in (5, 10)))
        """,
        timeout=300,
    )
    assert out.strip().splitlines()[-1] == "[{'sharpe': 0.5}, {'sharpe': 1.0}]"


# --- setup_production_cache --------------------------------------------------------------------


def test_setup_production_cache_as_the_guide_writes_it(
    store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    components = setup_production_cache(
        enable_mlflow=True,
        mlflow_experiment="my_project",
        max_cache_size_mb=2000,
        tracking_uri=store["uri"],
    )
    assert components["cache"].size_limit == 2000 * 2**20
    assert components["mlflow_cache"] is get_mlflow_cache()
    assert components["mlflow_cache"].experiment_name == "my_project"
    assert components["maintenance"]["errors"] == []
    assert isinstance(components["monitor"], type(afml_cache.get_cache_monitor()))
    # Without the backtest module (older versions), or without MLflow asked for: None.
    monkeypatch.setitem(sys.modules, "afml_cache.backtest_cache", None)
    bare = setup_production_cache(enable_mlflow=False)
    assert bare["mlflow_cache"] is None and bare["backtest_cache"] is None
    with pytest.raises(ValueError, match="max_cache_size_mb"):
        setup_production_cache(max_cache_size_mb=-1)


def test_an_unreachable_tracking_server_is_said_at_once(tmp_path: Path, run_python) -> None:
    # MLflow's client retried the refused connection with back-off: setup_production_cache
    # returned after four minutes, then the first decorated call set up again for four more.
    # The child's timeout is the guard against that wait, not a measure of speed.
    out = run_python(
        f"""
        import warnings, afml_cache
        from afml_cache import mlflow_cached, setup_production_cache
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ready = setup_production_cache(
                tracking_uri="http://127.0.0.1:{free_port()}", mlflow_experiment="x"
            )

            @mlflow_cached
            def train(a):
                return {{"accuracy": a / 10}}

            print([train(1), train(1), train(2)], ready["mlflow_cache"])
        print([str(w.message) for w in caught if "MLflow" in str(w.message)])
        """,
        env={"AFML_CACHE_DIR": str(tmp_path / "cache")},
        timeout=120,
    )
    results, warned = out.splitlines()[-2:]
    assert results == "[{'accuracy': 0.1}, {'accuracy': 0.1}, {'accuracy': 0.2}] None"
    [warning] = ast.literal_eval(warned)
    assert "cannot be reached" in warning and "runs are not tracked" in warning


# --- a real tracking server --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = open(root / "server.log", "wb")  # noqa: SIM115 - open while the server runs
    process = subprocess.Popen(command, cwd=root, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"mlflow server did not start: see {root / 'server.log'}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_against_a_real_tracking_server(
    server: str, store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    previous = mlflow.get_tracking_uri()
    try:
        tracker = setup_mlflow_cache("mt5_strategy_optimization", tracking_uri=server)
        features, labels = labelled_frame(seed=5)
        before = ran("train_model")
        model, _ = train_model(features, labels, {"n_estimators": 4})
        train_model(features, labels, {"n_estimators": 4})
        assert ran("train_model") == before + 1
        best = tracker.get_best_run("accuracy")
        loaded = tracker.load_model_from_run(best)
        np.testing.assert_array_equal(loaded.predict(features), model.predict(features))
        computed, hits = runs_by_hit(tracker)
        assert (len(computed), len(hits)) == (1, 1)
    finally:
        mlflow.set_tracking_uri(previous)
        setup_mlflow_cache(tracking_uri=store["uri"])


def test_a_tracking_server_that_stops_answering_costs_a_call_seconds_not_minutes(
    server: str, store: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that accepted connections and never answered held a tracked call for MLflow's
    # default of 120 s a try, seven tries: 11 minutes and more, without a warning.
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    previous = mlflow.get_tracking_uri()
    relay = _Relay(urlsplit(server).port)
    try:
        setup_mlflow_cache("silent_server", tracking_uri=relay.url)
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
        # The same bounds, shorter, so the test does not wait 36 s: the call goes on untracked.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        relay.answering = False
        features, labels = labelled_frame(seed=9)
        with pytest.warns(CacheWarning, match="MLflow failed while starting a run"):
            model, metrics = train_model(features, labels, {"n_estimators": 3})
        assert metrics["accuracy"] > 0.5
        again, _ = train_model(features, labels, {"n_estimators": 3})  # cached, untracked
        np.testing.assert_array_equal(again.predict(features), model.predict(features))
    finally:
        relay.close()
        mlflow.set_tracking_uri(previous)
        setup_mlflow_cache(tracking_uri=store["uri"])


class _Relay:
    """A TCP relay to a local server on ``port`` that, once ``answering`` is False, still
    accepts connections and requests but never passes an answer back: a server that hangs."""

    def __init__(self, port: int | None) -> None:
        self.answering = True
        self._port = port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._held.append(client)
            upstream = socket.create_connection(("127.0.0.1", self._port))
            self._held.append(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, asking: bool) -> None:
        try:
            while data := source.recv(65536):
                if asking or self.answering:
                    target.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self._listener.close()
        for held in self._held:
            held.close()


def test_tracked_results_are_pickled_under_the_guides_module_path() -> None:
    # A tracked function's entry holds a _Computed pickled by class path: it must stay the
    # guide's module, whichever module defines the class, or written entries stop loading.
    import pickle

    from afml_cache.mlflow_integration import _Computed

    computed = _Computed([1.0], "run", {"a": "1"}, {"m": 1.0}, "k" * 64)
    stream = pickle.dumps(computed, protocol=5)
    assert b"afml_cache.mlflow_integration" in stream
    assert b"afml_cache.mlflow_tracking" not in stream
    assert pickle.loads(stream) == computed
