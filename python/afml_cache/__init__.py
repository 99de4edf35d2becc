"""afml-cache: a content-addressed disk cache for quant-research functions."""

from __future__ import annotations

from afml_cache._core import SPEC_VERSION, fingerprint
from afml_cache.cache import Cache
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
from afml_cache.monitoring import cache_status, get_cache_monitor, get_cache_stats

__version__ = "0.1.0"

__all__ = [
    "CACHE_DIRS",
    "SPEC_VERSION",
    "Cache",
    "CacheError",
    "FingerprintError",
    "StoreError",
    "__version__",
    "cache_status",
    "cacheable",
    "clear_afml_cache",
    "configure",
    "disabled",
    "fingerprint",
    "get_cache_monitor",
    "get_cache_stats",
    "initialize_cache_system",
    "register_fingerprint",
    "robust_cacheable",
    "time_aware_cacheable",
]
