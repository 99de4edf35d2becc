"""`afml_cache._store` is the one owner of the Rust store: the rest of the package reaches the
entries through `Cache`'s public methods, which report what the store holds."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from afml_cache.cache import Cache

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "afml_cache"
STORE_NAMES = {"Store", "KeyLock", "StagedImport"}


def _imports_of_the_store(source: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "afml_cache._core":
            found |= {alias.name for alias in node.names} & STORE_NAMES
        if (
            isinstance(node, ast.Attribute)
            and node.attr in STORE_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id == "_core"
        ):
            found.add(node.attr)
    return found


def test_only_the_store_package_imports_the_rust_store() -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if _imports_of_the_store(path)
    }
    assert importers and all(name.startswith("_store/") for name in importers), importers


def _reaches_into_a_store(source: Path) -> bool:
    """True if ``source`` reads ``x._store`` of an object other than ``self``."""
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "_store"
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
        for node in ast.walk(ast.parse(source.read_text()))
    )


def test_no_module_reaches_into_a_cache_store() -> None:
    reaching = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "cache.py" and _reaches_into_a_store(path)
    ]
    assert reaching == []


def test_scan_sizes_and_stats_agree(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    labels = cache.namespaced("labels")
    cache.set("a", np.arange(100_000))
    cache.set("b", "small")
    labels.set("a", np.ones(50_000))
    scanned = cache.scan()
    assert {(e["namespace"], e["key"]) for e in scanned} == {
        ("default", cache_digest) for cache_digest in (e["digest"] for e in cache.entries())
    } | {("labels", e["digest"]) for e in labels.entries()}
    sizes = cache.sizes_by_namespace()
    assert sizes == {
        namespace: sum(e["size"] for e in scanned if e["namespace"] == namespace)
        for namespace in ("default", "labels")
    }
    assert sum(sizes.values()) == cache.stats()["bytes"]
    assert [e["key"] for e in cache.scan("labels")] == [e["digest"] for e in labels.entries()]


def test_function_stats_count_recorded_calls_until_reset(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.record_call("research.labels", True, 0.0, 2.0, 1e-4)
    cache.record_call("research.labels", False, 3.0, 0.0, 1e-3)
    other = Cache(tmp_path)  # another handle, as another process would have
    (row,) = [r for r in other.function_stats() if r["namespace"] == "research.labels"]
    assert (row["calls"], row["hits"], row["misses"]) == (2, 1, 1)
    other.reset_function_stats()
    assert all(r["calls"] == 0 for r in cache.function_stats())


def test_same_store_means_same_directory(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "a")
    assert cache.same_store(cache.namespaced("labels"))
    assert cache.same_store(Cache(tmp_path / "b" / ".." / "a"))
    assert not cache.same_store(Cache(tmp_path / "b"))
