"""The "Testing Your Migration" suite of the AFML cache migration guide, as written there,
with our import name (`afml_cache` instead of `afml.cache`)."""

import pytest
import pandas as pd
import numpy as np
from afml_cache import (
    cacheable,
    robust_cacheable,
    time_aware_cacheable,
    get_cache_stats,
    clear_afml_cache,
)

@pytest.fixture(autouse=True)
def clear_cache():
    """Clear cache before each test."""
    clear_afml_cache(warn=False)
    yield
    clear_afml_cache(warn=False)

def test_existing_cacheable_still_works():
    """Verify @cacheable decorator still works."""
    @cacheable
    def simple_func(x, y):
        return x + y
    
    result1 = simple_func(5, 10)
    result2 = simple_func(5, 10)
    
    assert result1 == result2 == 15
    
    stats = get_cache_stats()
    assert len(stats) > 0

def test_robust_cacheable_with_dataframes():
    """Verify @robust_cacheable handles DataFrames correctly."""
    @robust_cacheable
    def process_df(df):
        return df.sum().sum()
    
    df1 = pd.DataFrame({'a': [1, 2, 3]})
    df2 = pd.DataFrame({'a': [1, 2, 3]})  # Same data, different object
    
    result1 = process_df(df1)
    result2 = process_df(df2)  # Should be cache hit
    
    assert result1 == result2 == 6

def test_time_aware_cacheable():
    """Verify @time_aware_cacheable handles date ranges."""
    @time_aware_cacheable
    def process_time_series(df):
        return df['value'].mean()
    
    # Create two DataFrames with different date ranges
    dates1 = pd.date_range('2024-01-01', periods=10)
    dates2 = pd.date_range('2024-02-01', periods=10)
    
    df1 = pd.DataFrame({'value': range(10)}, index=dates1)
    df2 = pd.DataFrame({'value': range(10)}, index=dates2)
    
    result1 = process_time_series(df1)
    result2 = process_time_series(df2)
    
    # Different date ranges = both should compute (not cache hit)
    assert result1 == result2 == 4.5

def test_cache_monitoring():
    """Verify monitoring features work."""
    from afml_cache import get_cache_monitor
    
    @cacheable
    def monitored_func(x):
        return x * 2
    
    # Generate some activity
    for i in range(10):
        monitored_func(i)
    
    # Check monitoring
    monitor = get_cache_monitor()
    stats = monitor.get_all_function_stats()
    
    assert len(stats) > 0

if __name__ == "__main__":
    pytest.main([__file__, "-v"])
