"""Digests must not depend on the process: hash seed, import state, optional packages."""

from __future__ import annotations

import json

import pytest

from afml_cache import fingerprint

# Built identically in this process and in every child interpreter.
VALUE_CODE = """
import numpy as np
import pandas as pd

words = [f"word-{i}-{'z' * (i % 5)}" for i in range(400)]
value = {
    "tags": set(words),
    "frozen": frozenset(w.upper() for w in words[:150]),
    "params": {f"p{i}": {"name": words[i], "w": i / 7} for i in range(120)},
    "nested": [{"k": {"a", "b", "c", "d", "e", "f"}}, ({"x": 1, "y": 2}, frozenset({"q", "r"}))],
    "frame": pd.DataFrame(
        {
            "sym": [words[i % 9] for i in range(50)],
            "obj": pd.Series([words[i % 4] for i in range(50)], dtype=object),
            "cat": pd.Categorical([words[i % 3] for i in range(50)]),
            "px": np.linspace(0.0, 1.0, 50),
        },
        index=pd.Index([f"row{i}" for i in range(50)], name="rid"),
    ),
    "array": np.arange(24, dtype=np.float64).reshape(4, 6),
}
"""

CHILD = (
    VALUE_CODE
    + """
import json, afml_cache
print(json.dumps({"digest": afml_cache.fingerprint(value), "hash": hash("afml-probe")}))
"""
)


@pytest.fixture(scope="module")
def parent_digest() -> str:
    namespace: dict = {}
    exec(VALUE_CODE, namespace)
    return fingerprint(namespace["value"])


def run_child(run_python, seed: str) -> dict:
    return json.loads(run_python(CHILD, env={"PYTHONHASHSEED": seed}))


@pytest.mark.parametrize("seed", ["0", "1", "12345", "random"])
def test_digest_is_independent_of_hash_seed(run_python, parent_digest, seed):
    child = run_child(run_python, seed)
    assert child["digest"] == parent_digest


def test_hash_seeds_really_change_string_hashes(run_python):
    # Guards the test above: it is only meaningful if the seeds change set iteration order.
    hashes = {run_child(run_python, seed)["hash"] for seed in ("0", "1", "12345")}
    assert len(hashes) == 3


OPTIONAL_DEPS_CHILD = """
import sys
sys.modules["polars"] = None  # makes `import polars` raise ImportError
sys.modules["pyarrow"] = None
import json
import numpy as np
import pandas as pd
import afml_cache

def frame(last):
    return pd.DataFrame(
        {"a": np.arange(5, dtype=np.int64), "b": np.array([0.5, 1.5, 2.5, 3.5, last])},
        index=pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC"),
    )

fp = afml_cache.fingerprint
assert fp(frame(4.5)) == fp(frame(4.5))
assert fp(frame(4.5)) != fp(frame(9.5))
assert fp(frame(4.5)) == fp(frame(4.5).copy())
out = {
    "int": fp(12345),
    "big_int": fp(2**100),
    "array": fp(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "tuple": fp((1, 2.0, "x")),
}
assert "pyarrow" not in sys.modules or sys.modules["pyarrow"] is None
assert "polars" not in sys.modules or sys.modules["polars"] is None
print(json.dumps(out))
"""


def test_works_without_optional_pyarrow_and_polars(run_python):
    import numpy as np

    child = json.loads(run_python(OPTIONAL_DEPS_CHILD))
    # Installed optional packages must not change digests of values that do not use them.
    assert child == {
        "int": fingerprint(12345),
        "big_int": fingerprint(2**100),
        "array": fingerprint(np.arange(12, dtype=np.float64).reshape(3, 4)),
        "tuple": fingerprint((1, 2.0, "x")),
    }


@pytest.mark.filterwarnings("ignore:afml_cache. .*has no fingerprint rule")
def test_a_library_value_reduced_without_state_keeps_its_digest_as_it_is_used():
    # Only a user's subclass of a value type (date, Decimal) adds its attributes to a reduction
    # without state: a library's instance may hold lazily filled caches there (a network's
    # cached properties), or the whole process (a Logger's manager, which contains itself).
    import ipaddress
    import logging

    network = ipaddress.ip_network("10.0.0.0/24")
    before = fingerprint(network)
    _ = network.broadcast_address, network.hostmask  # functools.cached_property, filled now
    assert fingerprint(network) == before
    logger = logging.getLogger("afml_cache.tests.reduction")
    assert fingerprint(logger) == fingerprint(logging.getLogger("afml_cache.tests.reduction"))
    assert fingerprint(list[int]) != fingerprint(list[float])
