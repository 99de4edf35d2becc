"""afml-cache: a content-addressed disk cache for quant-research functions."""

from __future__ import annotations

from afml_cache._core import SPEC_VERSION, fingerprint
from afml_cache.cache import Cache, flush_writes
from afml_cache.config import (
    CACHE_DIRS,
    clear_afml_cache,
    configure,
    disabled,
    initialize_cache_system,
)
from afml_cache.decorators import cacheable, robust_cacheable, time_aware_cacheable
from afml_cache.errors import CacheError, FingerprintError, StoreError
from afml_cache.fingerprinting import register_fingerprint
from afml_cache.maintenance import maintain_cache, smart_cache_clear
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

__version__ = "0.1.0"

__all__ = [
    "CACHE_DIRS",
    "SPEC_VERSION",
    "Cache",
    "CacheError",
    "CacheHealth",
    "FingerprintError",
    "StoreError",
    "__version__",
    "analyze_cache_patterns",
    "cache_status",
    "cacheable",
    "clear_afml_cache",
    "configure",
    "disabled",
    "fingerprint",
    "flush_writes",
    "get_cache_efficiency_report",
    "get_cache_health",
    "get_cache_monitor",
    "get_cache_stats",
    "initialize_cache_system",
    "maintain_cache",
    "print_cache_health",
    "register_fingerprint",
    "robust_cacheable",
    "smart_cache_clear",
    "time_aware_cacheable",
]
