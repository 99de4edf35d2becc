"""MLflow experiment tracking on top of the cache: `mlflow_cached`, `MLflowCache`,
`setup_mlflow_cache`, `get_mlflow_cache` and `MLFLOW_AVAILABLE`.

MLflow is an optional extra (``pip install 'afml-cache[mlflow]'``) imported on first use: importing
afml_cache or applying `mlflow_cached` never imports it, opens a tracking store or touches the disk.

`@mlflow_cached` keys a call as `robust_cacheable` does (the content of every argument, the code
transitively) and stores, beside the result, the run that computed it and the params and metrics
it logged: a hit records its own run (tagged ``afml_cache.hit=true``, ``afml_cache.source_run``)
without recomputing any of them. MLflow failing never fails the call: the result is returned and
cached, with one warning, and runs are no longer tracked until `setup_mlflow_cache` is called again.

Models are logged with cloudpickle: skops' list of trusted types is read back from the model's own
MLmodel file (so it protects nothing MLflow's MLFLOW_ALLOW_PICKLE_DESERIALIZATION does not), and
skops cannot load estimators defined in a script or notebook, or ones holding lambdas; every model
the cache can store, MLflow can then load back. Requirements are given explicitly: inferring them
costs MLflow seconds per model.

The code: `afml_cache.mlflow_tracking` (`MLflowCache`, the process's tracker, what a run logs)
and `afml_cache.mlflow_decorator` (`mlflow_cached`); this module, the guide's import path,
re-exports both.
"""

# `x as x`: re-exported, for code that imports it from the guide's path; `_Computed` is the class
# path of the values of tracked functions' entries.
from afml_cache.mlflow_decorator import mlflow_cached
from afml_cache.mlflow_tracking import DEFAULT_EXPERIMENT as DEFAULT_EXPERIMENT
from afml_cache.mlflow_tracking import METRIC_COMPUTE_SECONDS as METRIC_COMPUTE_SECONDS
from afml_cache.mlflow_tracking import (
    MLFLOW_AVAILABLE,
    ExperimentRun,
    MLflowCache,
    get_mlflow_cache,
    setup_mlflow_cache,
)
from afml_cache.mlflow_tracking import TAG_FUNCTION as TAG_FUNCTION
from afml_cache.mlflow_tracking import TAG_HIT as TAG_HIT
from afml_cache.mlflow_tracking import TAG_KEY as TAG_KEY
from afml_cache.mlflow_tracking import TAG_SOURCE_RUN as TAG_SOURCE_RUN
from afml_cache.mlflow_tracking import _Computed as _Computed

__all__ = [
    "MLFLOW_AVAILABLE",
    "ExperimentRun",
    "MLflowCache",
    "get_mlflow_cache",
    "mlflow_cached",
    "setup_mlflow_cache",
]
