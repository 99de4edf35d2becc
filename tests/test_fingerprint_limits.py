"""Values that could make a naive walker loop forever or exhaust memory get a clear error."""

from __future__ import annotations

import numpy as np
import pytest

import afml_cache
from afml_cache import FingerprintError


def test_an_object_array_that_contains_itself_is_a_cycle():
    arr = np.empty(2, dtype=object)
    arr[0] = 1
    arr[1] = arr
    with pytest.raises(FingerprintError, match=r"contains itself.*\(at obj\[1\]\)"):
        afml_cache.fingerprint(arr)


def test_a_cache_key_that_returns_new_objects_of_its_own_kind_is_refused():
    class Endless:
        def __cache_key__(self):
            return Endless()

    with pytest.raises(FingerprintError, match="nested more than 200000 levels"):
        afml_cache.fingerprint(Endless())


def test_a_value_nested_100_000_deep_is_fingerprinted():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    shallower: list = []
    for _ in range(99_999):
        shallower = [shallower]
    assert afml_cache.fingerprint(deep) != afml_cache.fingerprint(shallower)


def test_an_error_inside_a_cache_key_names_the_type_and_keeps_the_cause():
    class Broken:
        def __cache_key__(self):
            raise ValueError("no key today")

    with pytest.raises(
        FingerprintError, match=r"Broken raised ValueError: no key today \(at obj\[0\]\)"
    ) as info:
        afml_cache.fingerprint([Broken()])
    assert isinstance(info.value.__cause__, ValueError)
