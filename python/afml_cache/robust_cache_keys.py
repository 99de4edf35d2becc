"""The original AFML cache guide's module path for the content-keyed decorators:
``from afml_cache.robust_cache_keys import robust_cacheable, time_aware_cacheable``."""

from afml_cache.decorators import cacheable, robust_cacheable, time_aware_cacheable

__all__ = ["cacheable", "robust_cacheable", "time_aware_cacheable"]
