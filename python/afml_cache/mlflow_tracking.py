"""The MLflow side of `mlflow_cached`: `MLflowCache` (an experiment, its runs and models),
`ExperimentRun`, the process's tracker (`setup_mlflow_cache`, `get_mlflow_cache`) and what a run
logs. Imported from `afml_cache.mlflow_integration`, the guide's path, which says how.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import numbers
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, NamedTuple
from urllib.parse import urlsplit

from afml_cache import config, forking
from afml_cache._core import fingerprint
from afml_cache.decorators import function_name
from afml_cache.errors import CacheError, CacheWarning, FingerprintError, caller_stacklevel

if TYPE_CHECKING:
    import pandas as pd


_log = logging.getLogger("afml_cache")

DEFAULT_EXPERIMENT = "afml_experiments"
# MLflow's variable for the default experiment; set for the worker processes to inherit.
_EXPERIMENT_VARIABLE = "MLFLOW_EXPERIMENT_NAME"
# Seconds to wait for a tracking server to accept a connection before setting up: MLflow's own
# client retries a refused connection with back-off for about four minutes.
_REACH_TIMEOUT = 5.0
# The tags and metric a tracked call adds to its run.
TAG_FUNCTION = "afml_cache.function"
TAG_KEY = "afml_cache.key"
TAG_HIT = "afml_cache.hit"
TAG_SOURCE_RUN = "afml_cache.source_run"
METRIC_COMPUTE_SECONDS = "afml_cache.compute_seconds"
# MLflow's limits on a param's key and value.
_KEY_LIMIT = 250
_VALUE_LIMIT = 6000
# Tuples and lists up to this length of plain values are logged as a param's value.
_SHORT_SEQUENCE = 10
_NOT_KEY_CHARACTERS = re.compile(r"[^\w\-. /:]")


def _mlflow_installed() -> bool:
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # an import blocker, or a broken install
        return False


#: Whether MLflow can be imported; found without importing it (``import mlflow`` takes seconds).
MLFLOW_AVAILABLE: bool = _mlflow_installed()


def _import_mlflow() -> ModuleType:
    try:
        import mlflow
        import mlflow.entities
        import mlflow.models
    except ImportError as exc:
        raise ImportError(
            f"afml_cache: MLflow tracking needs MLflow ({exc}); install it with "
            "pip install 'afml-cache[mlflow]' (mlflow>=3.7,<4)"
        ) from exc
    return mlflow


# --- the MLflow side: an experiment, its runs and models ------------------------------------


class MLflowCache:
    """One MLflow experiment, where `mlflow_cached` functions and `experiment_run` blocks log
    their runs; also finds the best run, loads its model and compares runs.

    ``tracking_uri=None`` follows MLflow's own resolution (``MLFLOW_TRACKING_URI``, else
    MLflow's default, ``sqlite:///mlflow.db`` in the working directory); a URI given here becomes
    MLflow's tracking URI for the process, so MLflow calls inside tracked functions log there too.
    ``artifact_location`` is where a new experiment keeps its models and artifacts.
    """

    def __init__(
        self,
        experiment_name: str = DEFAULT_EXPERIMENT,
        tracking_uri: str | None = None,
        *,
        artifact_location: str | None = None,
    ) -> None:
        if not isinstance(experiment_name, str) or not experiment_name:
            raise ValueError(f"experiment_name must be a non-empty string, got {experiment_name!r}")
        mlflow = _import_mlflow()
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        self._mlflow = mlflow
        self.tracking_uri: str = mlflow.get_tracking_uri()
        self.experiment_name = experiment_name
        _check_reachable(self.tracking_uri)
        _bound_requests(self.tracking_uri)
        self._client = mlflow.MlflowClient(self.tracking_uri)
        self.experiment_id = self._experiment_id(artifact_location)
        # Why tracking stopped in this process (set at the first MLflow failure), or None.
        self._broken: str | None = None
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"MLflowCache({self.experiment_name!r}, tracking_uri={self.tracking_uri!r})"

    def _experiment_id(self, artifact_location: str | None) -> str:
        experiment = self._client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                return str(
                    self._client.create_experiment(
                        self.experiment_name, artifact_location=artifact_location
                    )
                )
            except self._mlflow.exceptions.MlflowException:
                # Another process may have created it meanwhile.
                experiment = self._client.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"the MLflow experiment {self.experiment_name!r} (id {experiment.experiment_id}) "
                f"at {self.tracking_uri} is deleted; restore it with "
                f"MlflowClient().restore_experiment({experiment.experiment_id!r}) or choose "
                "another experiment_name"
            )
        return str(experiment.experiment_id)

    # --- failures ------------------------------------------------------------------------------

    def _safely(self, doing: str, action: Callable[[], Any], *, user_input: bool = False) -> Any:
        """``action()``, or None once MLflow has failed (then with one warning, and tracking
        stops). With ``user_input``, MLflow refusing the caller's values raises instead."""
        if self._broken is not None:
            return None
        try:
            return action()
        except Exception as exc:
            if user_input and _is_invalid_input(exc):
                raise
            if self._broken is not None:  # warned already, by a nested call
                return None
            self._broken = f"{doing}: {type(exc).__name__}: {exc}"
            _log.warning("afml_cache: MLflow failed while %s", self._broken)
            _warn(
                f"afml_cache: MLflow failed while {self._broken}. Results are still returned "
                f"and cached, but runs are no longer tracked in {self.experiment_name!r} in this "
                "process; fix MLflow and call setup_mlflow_cache() again to resume"
            )
            return None

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            _log.warning("%s", message)
            _warn(message)

    # --- runs ----------------------------------------------------------------------------------

    def _start_run(self, run_name: str | None, tags: Mapping[str, str]) -> str | None:
        """Starts a run and makes it MLflow's active run in this thread (nested under the
        active one, if any): MLflow calls the user makes inside it log there."""
        mlflow = self._mlflow

        def start() -> str:
            nested = mlflow.active_run() is not None
            run = mlflow.start_run(
                experiment_id=self.experiment_id, run_name=run_name, tags=dict(tags), nested=nested
            )
            return str(run.info.run_id)

        result: str | None = self._safely("starting a run", start)
        return result

    def _end_run(self, run_id: str | None, status: str) -> None:
        """Ends the run, also once tracking has stopped (a failure while the run was open): it
        must not stay active, where the user's own ``mlflow.start_run()`` would refuse to start."""
        if run_id is None:
            return
        mlflow = self._mlflow

        def end() -> None:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(status)
            else:  # the user's code ended or replaced it: close ours all the same
                self._client.set_terminated(run_id, status)

        if self._broken is None:
            self._safely(f"ending run {run_id}", end)
            return
        try:
            end()
        except Exception as exc:  # warned already, when tracking stopped
            _log.debug("afml_cache: could not end MLflow run %s: %r", run_id, exc)

    def _log_batch(
        self,
        run_id: str,
        *,
        params: Mapping[str, str] = {},
        metrics: Mapping[str, float] = {},
        tags: Mapping[str, str] = {},
        step: int = 0,
        user_input: bool = False,
    ) -> None:
        self._safely(
            f"logging to run {run_id}",
            lambda: self._batch(run_id, params, metrics, tags, step),
            user_input=user_input,
        )

    def _batch(
        self,
        run_id: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, float],
        tags: Mapping[str, Any],
        step: int = 0,
    ) -> None:
        entities = self._mlflow.entities
        now = int(time.time() * 1000)
        self._client.log_batch(
            run_id,
            metrics=[entities.Metric(k, float(v), now, step) for k, v in metrics.items()],
            params=[entities.Param(k, str(v)) for k, v in params.items()],
            tags=[entities.RunTag(k, str(v)) for k, v in tags.items()],
        )

    @contextlib.contextmanager
    def experiment_run(
        self, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[ExperimentRun]:
        """A run for a block of code: ``with cache.experiment_run("grid") as ctx:``. ``ctx``
        caches results by key (`ExperimentRun.get_cached`, `ExperimentRun.cache_result`) and logs
        params, metrics and artifacts to the run. The run ends FINISHED, or FAILED if the block
        raises. If MLflow fails, the block still runs and its results are still cached."""
        run_id = self._start_run(run_name, _check_tags(tags))
        context = ExperimentRun(self, run_id)
        try:
            yield context
        except BaseException:
            self._end_run(run_id, "FAILED")
            raise
        self._end_run(run_id, "FINISHED")

    # --- tracked calls -------------------------------------------------------------------------

    def _start_computing(
        self, function: _Function, params: Mapping[str, str], key: str | None
    ) -> str | None:
        tags = {**function.tags, TAG_FUNCTION: function.name, TAG_HIT: "false"}
        if key is not None:
            tags[TAG_KEY] = key
        run_id = self._start_run(function.run_name, tags)
        if run_id is not None and params:
            try:
                self._log_batch(run_id, params=params, user_input=True)
            except Exception as exc:  # MLflow refused the arguments' names or values
                self._refused_params(function, exc)
        return run_id

    def _refused_params(self, function: _Function, exc: Exception) -> None:
        self._warn_once(
            f"params:{function.name}",
            f"afml_cache: MLflow refused the params of {function.name} "
            f"({type(exc).__name__}: {exc}); its runs are tracked without them. Pass "
            "arguments whose names MLflow accepts, or list them in ignore=",
        )

    def _finish_computing(
        self,
        run_id: str,
        function: _Function,
        result: Any,
        metrics: Mapping[str, float],
        seconds: float,
    ) -> tuple[dict[str, str], dict[str, float]]:
        """Logs the result's metrics and model and ends the run; returns the params and
        metrics the run holds, the function's own ``mlflow.log_*`` calls among them, for the
        runs of later hits (empty once tracking stopped)."""
        self._log_batch(run_id, metrics={**metrics, METRIC_COMPUTE_SECONDS: seconds})
        if function.log_model:
            model = _model_in(result)
            if model is not None:
                self._log_model(run_id, function, model)
        self._end_run(run_id, "FINISHED")
        run = self._safely(f"reading run {run_id}", lambda: self._client.get_run(run_id))
        if run is None:
            return {}, {}
        logged = {k: v for k, v in run.data.metrics.items() if k != METRIC_COMPUTE_SECONDS}
        return dict(run.data.params), logged

    def _log_model(self, run_id: str, function: _Function, model: Any) -> None:
        """Logs the model under the name "model" to the active run, ours; a model MLflow cannot
        save is warned about once per function and does not stop tracking."""
        if self._broken is not None:
            return
        mlflow = self._mlflow
        try:
            active = mlflow.active_run()
            if active is None or active.info.run_id != run_id:
                raise RuntimeError(f"the function ended its run {run_id} itself")
            if _is_python_model(model):
                import mlflow.pyfunc

                mlflow.pyfunc.log_model(
                    name="model",
                    python_model=model,
                    pip_requirements=mlflow.pyfunc.get_default_pip_requirements(),
                )
            else:
                import mlflow.sklearn

                with _quiet_pickle_advice():
                    mlflow.sklearn.log_model(
                        model,
                        name="model",
                        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                        pip_requirements=mlflow.sklearn.get_default_pip_requirements(
                            include_cloudpickle=True
                        ),
                    )
        except Exception as exc:
            self._warn_once(
                f"model:{function.name}",
                f"afml_cache: the model {function.name} returned was not logged to MLflow "
                f"({type(exc).__name__}: {exc}); its run has the params and metrics",
            )

    def _record_hit(self, function: _Function, computed: _Computed) -> None:
        """A run for a hit: the source run's params and metrics, tagged as a hit of it."""
        if self._broken is not None:
            return
        tags = {**function.tags, TAG_FUNCTION: function.name, TAG_HIT: "true"}
        if computed.key is not None:
            tags[TAG_KEY] = computed.key
        if computed.run_id is not None and self._has_run(computed.run_id):
            # Only a run of this store: one logged to another tracking store is not there to
            # rank or load a model from (get_best_run, load_model_from_run follow the tag).
            tags[TAG_SOURCE_RUN] = computed.run_id
        active = self._mlflow.active_run()
        if active is not None:
            tags["mlflow.parentRunId"] = active.info.run_id

        def record() -> None:
            run = self._client.create_run(self.experiment_id, run_name=function.run_name, tags=tags)
            run_id = run.info.run_id
            self._batch(run_id, {}, computed.metrics, {})
            try:
                self._batch(run_id, computed.params, {}, {})
            except Exception as exc:
                if not _is_invalid_input(exc):
                    raise
                # The call's arguments, refused as a miss's run refused them: not MLflow failing.
                self._refused_params(function, exc)
            self._client.set_terminated(run_id)

        self._safely("recording a hit run", record)

    def _has_run(self, run_id: str) -> bool:
        """Whether this tracking store holds run ``run_id``."""
        try:
            self._client.get_run(run_id)
        except Exception as exc:
            # Only MLflow's "not found" says so; a store that cannot answer now may hold it.
            return getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST"
        return True

    # --- finding runs and models ---------------------------------------------------------------

    def get_best_run(self, metric: str, maximize: bool = True) -> str:
        """The id of the finished run with the highest (``maximize=False``: lowest) ``metric``;
        a hit run counts as the run that computed its result. Raises LookupError when no
        finished run of the experiment logged ``metric``."""
        if not isinstance(metric, str) or not metric or "`" in metric:
            raise ValueError(f"metric must be a metric's name, got {metric!r}")
        # `IS NOT NULL` is refused by MLflow's filter grammar; a bound keeps only runs with it.
        runs = self._client.search_runs(
            [self.experiment_id],
            filter_string=f"metrics.`{metric}` > -1e308 and attributes.status = 'FINISHED'",
            order_by=[f"metrics.`{metric}` {'DESC' if maximize else 'ASC'}"],
            max_results=1,
        )
        if not runs:
            logged = sorted(
                {
                    k
                    for r in self._client.search_runs([self.experiment_id], max_results=100)
                    for k in r.data.metrics
                }
            )
            raise LookupError(
                f"no finished run in the MLflow experiment {self.experiment_name!r} logged the "
                f"metric {metric!r}; metrics logged there: {', '.join(logged) or 'none'}"
            )
        best = runs[0]
        return str(best.data.tags.get(TAG_SOURCE_RUN, best.info.run_id))

    def load_model_from_run(self, run_id: str, model_name: str = "model") -> Any:
        """The model logged by run ``run_id`` (for a hit run, by the run that computed it):
        the scikit-learn estimator itself for the sklearn flavor, else MLflow's pyfunc model."""
        (run,) = self._runs([run_id])
        source = run.data.tags.get(TAG_SOURCE_RUN, run_id)
        uri = f"runs:/{source}/{model_name}"
        mlflow = self._mlflow
        try:
            flavors = mlflow.models.get_model_info(uri).flavors
        except Exception as exc:
            why = (
                "it is a hit of a result computed while tracking was off (no model was logged) "
                "or went to another store (its model is there); the cached result holds the "
                "model: call the function"
                if run.data.tags.get(TAG_HIT) == "true" and source == run_id
                else "a tracked function logs its model when its result holds one and "
                "log_model=True"
            )
            raise LookupError(
                f"run {run_id} has no model named {model_name!r} in {self.tracking_uri} "
                f"({type(exc).__name__}: {exc}); {why}"
            ) from exc
        if "sklearn" in flavors:
            import mlflow.sklearn

            return mlflow.sklearn.load_model(uri)
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(uri)

    def compare_runs(
        self, run_ids: list[str] | tuple[str, ...], metrics: list[str] | None = None
    ) -> pd.DataFrame:
        """The metrics of the given runs, one row per run id (NaN where a run lacks one); all
        the metrics they logged when ``metrics`` is None."""
        import pandas as pd

        rows = {run.info.run_id: run.data.metrics for run in self._runs(run_ids)}
        frame = pd.DataFrame.from_dict(rows, orient="index", dtype=float)
        columns = list(metrics) if metrics is not None else sorted(frame.columns)
        frame = frame.reindex(index=list(run_ids), columns=columns)
        frame.index.name = "run_id"
        return frame

    def _runs(self, run_ids: Iterable[str]) -> list[Any]:
        """The MLflow runs of ``run_ids``; a KeyError naming those the tracking store does not
        have (as `BacktestCache.compare_runs` for its ids)."""
        found, unknown = [], []
        for run_id in run_ids:
            try:
                found.append(self._client.get_run(run_id))
            except self._mlflow.exceptions.MlflowException as exc:
                # Unknown, or no run id at all ("abc def", "../runs").
                if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise
                unknown.append(run_id)
        if unknown:
            raise KeyError(
                f"no MLflow run in {self.tracking_uri} has the id(s) {', '.join(unknown)}; "
                "runs() lists the experiment's, get_best_run(metric) gives the best one's"
            )
        return found

    def runs(self) -> pd.DataFrame:
        """Every run of the experiment, newest first, indexed by run id (MLflow's columns:
        status, times, ``metrics.*``, ``params.*``, ``tags.*``)."""
        frame = self._mlflow.search_runs(experiment_ids=[self.experiment_id])
        return frame.set_index("run_id")


class ExperimentRun:
    """What ``with mlflow_cache.experiment_run(...) as ctx`` gives: the run's ``run_id`` (None
    if MLflow failed), results cached by key, and logging to the run."""

    # Results cached by experiment_run blocks live in this namespace of the shared cache.
    NAMESPACE = "afml_cache.mlflow_integration.experiment_run"

    def __init__(self, owner: MLflowCache, run_id: str | None) -> None:
        self._owner = owner
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<ExperimentRun {self.run_id} of {self._owner.experiment_name!r}>"

    def _results(self) -> Any:
        if not config.cache_enabled():
            return None
        cache = config.shared_cache()
        return None if cache is None else cache.namespaced(self.NAMESPACE)

    def _stored_key(self, key: Any) -> tuple[str, Any]:
        # By content, within the experiment: "opt_results_v1" of two experiments are two.
        return (self._owner.experiment_name, key)

    def get_cached(self, key: Any, default: Any = None) -> Any:
        """The result cached under ``key`` (any value with a fingerprint: a string, a tuple of
        parameters, a frame...) in this experiment, or ``default``."""
        cache = self._results()
        if cache is None:
            return default
        try:
            return cache.get(self._stored_key(key), default)
        except FingerprintError:
            raise
        except (CacheError, OSError) as exc:
            self._owner._warn_once(
                "results", f"afml_cache: cached results cannot be read: {exc}; computing"
            )
            return default

    def cache_result(self, key: Any, value: Any) -> bool:
        """Caches ``value`` under ``key`` for later runs; False (with one warning) if the cache
        could not store it."""
        cache = self._results()
        if cache is None:
            return False
        metadata = {"experiment": self._owner.experiment_name, "run_id": self.run_id}
        try:
            return bool(cache.set(self._stored_key(key), value, metadata=metadata))
        except FingerprintError:
            raise
        except (CacheError, OSError) as exc:
            self._owner._warn_once(
                "results", f"afml_cache: a result of run {self.run_id} was not cached: {exc}"
            )
            return False

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id is not None:
            self._owner._log_batch(self.run_id, params=params, user_input=True)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.run_id is not None:
            self._owner._log_batch(self.run_id, metrics=metrics, step=step or 0, user_input=True)

    def set_tag(self, key: str, value: Any) -> None:
        if self.run_id is not None:
            self._owner._log_batch(self.run_id, tags={key: value}, user_input=True)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Copies a local file into the run's artifacts."""
        run_id = self.run_id
        if run_id is not None:
            self._owner._safely(
                f"logging an artifact to run {run_id}",
                lambda: self._owner._client.log_artifact(run_id, local_path, artifact_path),
                user_input=True,
            )


def _is_invalid_input(exc: Exception) -> bool:
    """MLflow refused a value the caller gave (not MLflow failing)."""
    mlflow = sys.modules.get("mlflow")
    return (
        mlflow is not None
        and isinstance(exc, mlflow.exceptions.MlflowException)
        and exc.error_code == "INVALID_PARAMETER_VALUE"
    ) or isinstance(exc, (FileNotFoundError, TypeError, ValueError))


# --- the one MLflowCache of the process -------------------------------------------------------

_default: MLflowCache | None = None
_default_lock = forking.lock()
# Why the decorators could not set up the default MLflowCache, or None: they try once.
_default_failure: str | None = None


def _check_reachable(tracking_uri: str) -> None:
    """Raises ``CacheError`` at once when an HTTP tracking server does not accept a
    connection (refused, no route, no such host), instead of MLflow's minutes of retries."""
    where = urlsplit(tracking_uri)
    if where.scheme not in ("http", "https") or not where.hostname:
        return
    port = where.port or (443 if where.scheme == "https" else 80)
    try:
        socket.create_connection((where.hostname, port), timeout=_REACH_TIMEOUT).close()
    except OSError as exc:
        raise CacheError(
            f"the MLflow tracking server at {tracking_uri} cannot be reached ({exc}); start it, "
            "or pass another tracking_uri"
        ) from None


def _bound_requests(tracking_uri: str) -> None:
    """For an HTTP tracking server, bounds how long one of MLflow's requests may wait, unless
    the user chose (``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``): a
    server that accepts connections and stops answering held a tracked call for MLflow's
    default of 120 s a try, seven tries with back-off; now at most 10 s, three tries (about
    36 s), after which tracking stops with one warning and calls go on untracked."""
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        for name, value in _REQUEST_BOUNDS.items():
            os.environ.setdefault(name, value)


_REQUEST_BOUNDS: Final = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
}


def setup_mlflow_cache(
    experiment_name: str = DEFAULT_EXPERIMENT,
    tracking_uri: str | None = None,
    *,
    artifact_location: str | None = None,
) -> MLflowCache:
    """Connects to MLflow (creating the experiment if needed) and makes this the MLflowCache
    that `mlflow_cached` functions log to. Raises if MLflow cannot be reached: call it at
    startup. Calling it again replaces the previous one and resumes tracking after a failure.

    Like MLflow's ``set_tracking_uri``, it sets MLflow's environment variables (here
    ``MLFLOW_EXPERIMENT_NAME``), so worker processes (joblib, multiprocessing, Dask on this
    machine) log to the same experiment."""
    global _default, _default_failure
    try:
        cache = MLflowCache(experiment_name, tracking_uri, artifact_location=artifact_location)
    except Exception as exc:
        # The decorators must not try again with MLflow's defaults at their first call.
        with _default_lock:
            _default_failure = f"{type(exc).__name__}: {exc}"
        raise
    os.environ[_EXPERIMENT_VARIABLE] = experiment_name
    with _default_lock:
        _default, _default_failure = cache, None
    return cache


def get_mlflow_cache() -> MLflowCache:
    """The MLflowCache set up by `setup_mlflow_cache`, or one set up now with MLflow's defaults:
    the experiment named by ``MLFLOW_EXPERIMENT_NAME`` (set by `setup_mlflow_cache` in a parent
    process), else ``"afml_experiments"``."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MLflowCache(os.environ.get(_EXPERIMENT_VARIABLE) or DEFAULT_EXPERIMENT)
        return _default


def _tracker(function: _Function) -> MLflowCache | None:
    """Where a tracked call logs; None (with one warning) when MLflow cannot be used."""
    global _default_failure
    cache = _default
    if cache is None:
        if not MLFLOW_AVAILABLE:
            _warn_process_once(
                "missing",
                f"afml_cache: MLflow is not installed: {function.name} and other @mlflow_cached "
                "functions are cached but not tracked; pip install 'afml-cache[mlflow]'",
            )
            return None
        if _default_failure is not None:
            return None
        try:
            cache = get_mlflow_cache()
        except Exception as exc:
            _default_failure = f"{type(exc).__name__}: {exc}"
            _log.warning("afml_cache: MLflow cannot be set up: %s", _default_failure)
            _warn(
                f"afml_cache: MLflow cannot be set up ({_default_failure}); @mlflow_cached "
                "functions are cached but not tracked in this process; call "
                "setup_mlflow_cache() to resume"
            )
            return None
    if cache._broken is not None:
        return None
    current = cache._mlflow.get_tracking_uri()
    if current != cache.tracking_uri:
        # MLflow's active runs follow its tracking URI, this experiment's id does not: a run
        # would land in another store, under whatever experiment has that id there.
        cache._warn_once(
            f"uri:{current}",
            f"afml_cache: MLflow's tracking URI is now {current}, not {cache.tracking_uri} where "
            f"{cache.experiment_name!r} was set up: @mlflow_cached functions are cached but not "
            "tracked; call setup_mlflow_cache() for the new URI to track there",
        )
        return None
    return cache


_warned: set[str] = set()


def _warn_process_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        _warn(message)


def _warn(message: str) -> None:
    warnings.warn(message, CacheWarning, stacklevel=caller_stacklevel())


# --- a tracked function -------------------------------------------------------------------


class _Computed(NamedTuple):
    """What a tracked function's entry holds: its result and what its run logged."""

    result: Any
    run_id: str | None
    params: dict[str, str]
    metrics: dict[str, float]
    key: str | None


# Entries of tracked functions hold a _Computed, pickled by class path: the guide's, wherever it is
# defined.
_Computed.__module__ = "afml_cache.mlflow_integration"


class _Function:
    """A tracked function's settings."""

    def __init__(
        self,
        fn: Callable[..., Any],
        tags: dict[str, str],
        log_model: bool,
        log_hits: bool,
        ignore: frozenset[str],
    ) -> None:
        self.fn = fn
        self.name = function_name(fn)
        self.run_name = fn.__name__
        self.signature = inspect.signature(fn)
        self.tags = tags
        self.log_model = log_model
        self.log_hits = log_hits
        self.ignore = ignore
        self.engine: Any = None  # robust_cacheable's engine, set once it is built


def _check_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(isinstance(k, str) for k in tags):
        raise TypeError(
            f"tags must be a dict of MLflow tags with string keys, like "
            f"{{'strategy': 'momentum'}}, got {tags!r}"
        )
    return {k: str(v) for k, v in tags.items()}


# --- what a run logs --------------------------------------------------------------------------


def _params(function: _Function, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, str]:
    """The call's arguments as MLflow params: a dict argument's items under their own keys
    (``params={"n_estimators": 100}`` logs ``n_estimators``) unless that name is taken."""
    bound = function.signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = {k: v for k, v in bound.arguments.items() if k not in function.ignore}
    params: dict[str, str] = {}
    for name, value in arguments.items():
        try:
            if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
                for key, item in value.items():
                    taken = key in arguments or _param_key(key) in params
                    _describe(params, f"{name}.{key}" if taken else key, item, nested=True)
            else:
                _describe(params, name, value, nested=False)
        except Exception:  # a value that fails to describe itself (a closed file's .shape)
            params[_param_key(f"{name}.type")] = _type_name(value)
    return params


def _describe(params: dict[str, str], name: str, value: Any, *, nested: bool) -> None:
    key = _param_key(name)
    if _is_plain(value):
        text = str(value)
        if len(text) <= _VALUE_LIMIT:
            params[key] = text
            return
    elif isinstance(value, (tuple, list)) and len(value) <= _SHORT_SEQUENCE:
        if all(_is_plain(v) for v in value):
            params[key] = str(value)[:_VALUE_LIMIT]
            return
    elif hasattr(value, "shape") and not isinstance(value, type) and _shape(value) is not None:
        params[_param_key(f"{name}.shape")] = str(_shape(value))
    elif isinstance(value, Mapping) and not nested:
        for item_key, item in value.items():
            _describe(params, f"{name}.{item_key}", item, nested=True)
        return
    # Anything else by content: its fingerprint, when it has one.
    try:
        params[_param_key(f"{name}.digest")] = fingerprint(value, strict=True)
    except FingerprintError:
        params[_param_key(f"{name}.type")] = _type_name(value)


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _shape(value: Any) -> tuple[Any, ...] | None:
    """An array's or frame's shape; None for a ``shape`` that is not one (a method, a mock)."""
    try:
        shape = tuple(value.shape)
    except Exception:
        return None
    return shape if all(isinstance(n, numbers.Integral) for n in shape) else None


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, numbers.Number)) or _is_datetime(value)


def _is_datetime(value: Any) -> bool:
    import datetime

    return isinstance(value, (datetime.date, datetime.time, datetime.timedelta))


def _param_key(name: str) -> str:
    return _NOT_KEY_CHARACTERS.sub("_", name)[:_KEY_LIMIT]


def _metrics(result: Any) -> dict[str, float]:
    """The numbers of the result's metrics dict: the result itself, or the first dict in a
    tuple or list result (the guide's ``return model, metrics``)."""
    found: Any = None
    if isinstance(result, Mapping):
        found = result
    elif isinstance(result, (tuple, list)):
        found = next((item for item in result if isinstance(item, Mapping)), None)
    if found is None:
        return {}
    metrics = {}
    for k, v in found.items():
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            try:
                metrics[_param_key(str(k))] = float(v)
            except (OverflowError, ValueError, TypeError):  # 10**400: not a float, not logged
                continue
    return metrics


def _model_in(result: Any) -> Any:
    """The first model in the result (itself, or an item of a tuple, list or dict)."""
    candidates = [result]
    if isinstance(result, (tuple, list)):
        candidates += list(result)
    elif isinstance(result, Mapping):
        candidates += list(result.values())
    return next((c for c in candidates if _is_estimator(c) or _is_python_model(c)), None)


def _is_estimator(value: Any) -> bool:
    base = sys.modules.get("sklearn.base")  # a scikit-learn model exists only if it is imported
    return base is not None and isinstance(value, base.BaseEstimator)


def _is_python_model(value: Any) -> bool:
    pyfunc = sys.modules.get("mlflow.pyfunc")
    return pyfunc is not None and isinstance(value, pyfunc.PythonModel)


@contextlib.contextmanager
def _quiet_pickle_advice() -> Iterator[None]:
    """MLflow logs advice to prefer skops at every cloudpickle save; the choice was deliberate
    (see the module docstring), so the advice is dropped for our saves."""

    def advice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving scikit-learn models in the pickle")

    logger = logging.getLogger("mlflow.sklearn")
    logger.addFilter(advice)
    try:
        yield
    finally:
        logger.removeFilter(advice)
