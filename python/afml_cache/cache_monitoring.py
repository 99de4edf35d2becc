"""The original AFML cache guide's module path for monitoring:
``from afml_cache.cache_monitoring import print_cache_health, get_cache_monitor, ...``."""

from afml_cache.monitoring import (
    CacheHealth,
    CacheMonitor,
    FunctionStats,
    analyze_cache_patterns,
    cache_status,
    get_cache_efficiency_report,
    get_cache_health,
    get_cache_monitor,
    get_cache_stats,
    print_cache_health,
)

__all__ = [
    "CacheHealth",
    "CacheMonitor",
    "FunctionStats",
    "analyze_cache_patterns",
    "cache_status",
    "get_cache_efficiency_report",
    "get_cache_health",
    "get_cache_monitor",
    "get_cache_stats",
    "print_cache_health",
]
