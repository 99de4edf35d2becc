"""afml-cache: a content-addressed disk cache for quant-research functions."""

from __future__ import annotations

import importlib.metadata

from afml_cache._core import SPEC_VERSION, fingerprint
from afml_cache._store.remote import Remote
from afml_cache.backtest_cache import (
    BacktestCache,
    BacktestResult,
    cached_backtest,
    get_backtest_cache,
)
from afml_cache.cache import Cache, flush_writes
from afml_cache.config import (
    CACHE_DIRS,
    clear_afml_cache,
    configure,
    disabled,
    initialize_cache_system,
)
from afml_cache.decorators import cacheable, robust_cacheable, time_aware_cacheable
from afml_cache.errors import CacheError, CacheWarning, FingerprintError, StoreError
from afml_cache.fingerprinting import register_fingerprint
from afml_cache.maintenance import maintain_cache, smart_cache_clear
from afml_cache.mlflow_integration import (
    MLFLOW_AVAILABLE,
    MLflowCache,
    get_mlflow_cache,
    mlflow_cached,
    setup_mlflow_cache,
)
from afml_cache.monitoring import (
    CacheHealth,
    analyze_cache_patterns,
    cache_status,
    get_cache_efficiency_report,
    get_cache_health,
    get_cache_monitor,
    get_cache_stats,
    print_cache_health,
)
from afml_cache.production import setup_production_cache

# Written once, in Cargo.toml; maturin puts it in the package metadata.
__version__ = importlib.metadata.version("afml-cache")

__all__ = [
    "CACHE_DIRS",
    "MLFLOW_AVAILABLE",
    "SPEC_VERSION",
    "BacktestCache",
    "BacktestResult",
    "Cache",
    "CacheError",
    "CacheHealth",
    "CacheWarning",
    "FingerprintError",
    "MLflowCache",
    "Remote",
    "StoreError",
    "__version__",
    "analyze_cache_patterns",
    "cache_status",
    "cacheable",
    "cached_backtest",
    "clear_afml_cache",
    "configure",
    "disabled",
    "fingerprint",
    "flush_writes",
    "get_backtest_cache",
    "get_cache_efficiency_report",
    "get_cache_health",
    "get_cache_monitor",
    "get_cache_stats",
    "get_mlflow_cache",
    "initialize_cache_system",
    "maintain_cache",
    "mlflow_cached",
    "print_cache_health",
    "register_fingerprint",
    "robust_cacheable",
    "setup_mlflow_cache",
    "setup_production_cache",
    "smart_cache_clear",
    "time_aware_cacheable",
]
