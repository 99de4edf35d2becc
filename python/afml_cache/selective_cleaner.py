"""The original AFML cache's module path for clearing what changed:
``from afml_cache.selective_cleaner import smart_cache_clear``."""

from afml_cache.maintenance import maintain_cache, smart_cache_clear

__all__ = ["maintain_cache", "smart_cache_clear"]
