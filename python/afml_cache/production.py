"""`setup_production_cache`: the migration guide's "Fresh Start" in one call."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from afml_cache import config
from afml_cache.errors import CacheWarning
from afml_cache.maintenance import maintain_cache
from afml_cache.mlflow_integration import DEFAULT_EXPERIMENT, MLFLOW_AVAILABLE, setup_mlflow_cache
from afml_cache.monitoring import get_cache_monitor
from afml_cache.report import MB

__all__ = ["setup_production_cache"]

_log = logging.getLogger("afml_cache")


def setup_production_cache(
    enable_mlflow: bool = True,
    mlflow_experiment: str | None = None,
    max_cache_size_mb: float | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Gets every part of the cache ready at startup and returns them by name.

    It sets the cache's size limit to ``max_cache_size_mb`` (MB = 2**20 bytes) when given, opens
    the cache directory (raising if it cannot be used), sets up MLflow tracking in
    ``mlflow_experiment`` (default ``"afml_experiments"``) at ``tracking_uri`` (None: MLflow's own
    resolution) when ``enable_mlflow``, the backtest cache where this version has one, and runs
    `maintain_cache` once (expired entries, entries of changed code, and the size limit).

    Returns ``cache`` (the `Cache`), ``mlflow_cache`` (an `MLflowCache`, or None when disabled or
    when MLflow is missing or cannot be reached: then with a warning saying why),
    ``backtest_cache`` (or None), ``monitor`` and ``maintenance`` (`maintain_cache`'s report).
    """
    if max_cache_size_mb is not None:
        if isinstance(max_cache_size_mb, bool) or not max_cache_size_mb > 0:
            raise ValueError(
                f"max_cache_size_mb must be a positive number of megabytes, got "
                f"{max_cache_size_mb!r}"
            )
        config.configure(size_limit=int(max_cache_size_mb * MB))
    cache = config.initialize_cache_system()
    mlflow_cache = None
    if enable_mlflow:
        if not MLFLOW_AVAILABLE:
            warnings.warn(
                "afml_cache: MLflow is not installed, so runs are not tracked; install it with "
                "pip install 'afml-cache[mlflow]', or pass enable_mlflow=False",
                CacheWarning,
                stacklevel=2,
            )
        else:
            try:
                mlflow_cache = setup_mlflow_cache(
                    mlflow_experiment or DEFAULT_EXPERIMENT, tracking_uri
                )
            except Exception as exc:  # the cache works without tracking: say so, carry on
                warnings.warn(
                    f"afml_cache: MLflow could not be set up ({type(exc).__name__}: {exc}); "
                    "runs are not tracked. Fix it and call setup_mlflow_cache() to resume",
                    CacheWarning,
                    stacklevel=2,
                )
    maintenance = maintain_cache(auto_clear=True, max_size_mb=max_cache_size_mb)
    _log.info("afml_cache: production cache ready in %s", cache.directory)
    return {
        "cache": cache,
        "mlflow_cache": mlflow_cache,
        "backtest_cache": _backtest_cache(),
        "monitor": get_cache_monitor(),
        "maintenance": maintenance,
    }


def _backtest_cache() -> Any:
    try:
        from afml_cache.backtest_cache import get_backtest_cache
    except ImportError:  # a version without backtest caching
        return None
    return get_backtest_cache()
