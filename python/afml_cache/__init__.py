"""afml-cache: a content-addressed disk cache for quant-research functions."""

from __future__ import annotations

from afml_cache._core import SPEC_VERSION, fingerprint
from afml_cache.cache import Cache
from afml_cache.errors import CacheError, FingerprintError, StoreError
from afml_cache.fingerprinting import register_fingerprint

__version__ = "0.1.0"

__all__ = [
    "SPEC_VERSION",
    "Cache",
    "CacheError",
    "FingerprintError",
    "StoreError",
    "__version__",
    "fingerprint",
    "register_fingerprint",
]
