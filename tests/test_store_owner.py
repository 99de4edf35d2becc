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
    assert {(e.namespace, e.digest) for e in scanned} == {
        ("default", cache_digest) for cache_digest in (e["digest"] for e in cache.entries())
    } | {("labels", e["digest"]) for e in labels.entries()}
    sizes = cache.sizes_by_namespace()
    assert sizes == {
        namespace: sum(e.size for e in scanned if e.namespace == namespace)
        for namespace in ("default", "labels")
    }
    assert sum(sizes.values()) == cache.stats()["bytes"]
    assert [e.digest for e in cache.scan("labels")] == [e["digest"] for e in labels.entries()]


def test_function_stats_count_recorded_calls_until_reset(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.record_call("research.labels", True, 0.0, 2.0, 1e-4)
    cache.record_call("research.labels", False, 3.0, 0.0, 1e-3)
    other = Cache(tmp_path)  # another handle, as another process would have
    (row,) = [r for r in other.function_stats() if r.namespace == "research.labels"]
    assert (row.calls, row.hits, row.misses) == (2, 1, 1)
    other.reset_function_stats()
    assert all(r.calls == 0 for r in cache.function_stats())


def _sizes_on_disk(cache: Cache) -> dict[str, tuple[int, int]]:
    """(bytes, entries) of each namespace, summed from the entry files."""
    found: dict[str, tuple[int, int]] = {}
    for entry in cache.scan():
        size, count = found.get(entry.namespace, (0, 0))
        found[entry.namespace] = (size + entry.size, count + 1)
    return found


def _kept_sizes(cache: Cache) -> dict[str, tuple[int, int]]:
    return {f.namespace: (f.bytes, f.entries) for f in cache.function_stats() if f.entries}


def test_the_store_keeps_each_functions_sizes_as_its_files_are(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "a", size_limit="3MB")
    labels = cache.namespaced("labels")
    cache.set("a", np.arange(100_000))
    cache.set("a", np.arange(50_000))  # replaced: counted once, at its new size
    cache.set("b", "small")
    labels.set("a", np.ones(50_000))
    labels.set("b", np.ones(10))
    assert _kept_sizes(cache) == _sizes_on_disk(cache) != {}
    labels.delete("b")
    assert _kept_sizes(Cache(tmp_path / "a")) == _sizes_on_disk(cache)  # another process's view
    for i in range(8):  # past the limit: evictions count too
        labels.set(i, np.random.default_rng(i).random(60_000))
    assert cache.stats()["evictions"] > 0
    assert _kept_sizes(cache) == _sizes_on_disk(cache)
    cache.reset_function_stats()  # the calls go, the entries and their sizes stay
    assert _kept_sizes(cache) == _sizes_on_disk(cache)
    archive = tmp_path / "a.tar"
    cache.export(archive, every_namespace=True)
    copy = Cache(tmp_path / "b", size_limit="3MB")
    copy.import_(archive)
    assert _kept_sizes(copy) == _sizes_on_disk(copy) == _sizes_on_disk(cache)
    assert copy.sizes_by_namespace() == {n: s for n, (s, _) in _sizes_on_disk(copy).items()}
    cache.clear()
    assert _kept_sizes(cache) == {}


def test_check_fix_rebuilds_the_sizes_from_the_files(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.namespaced("labels").set("a", np.arange(100_000))
    cache.set("b", np.arange(10))
    assert _kept_sizes(cache) == _sizes_on_disk(cache)
    (victim,) = cache.scan("labels")
    Path(victim.path).unlink()  # removed behind the store's back
    assert _kept_sizes(cache) != _sizes_on_disk(cache)
    cache.check(fix=True)
    assert (
        _kept_sizes(cache) == _sizes_on_disk(cache) == {"default": _sizes_on_disk(cache)["default"]}
    )


def test_same_store_means_same_directory(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "a")
    assert cache.same_store(cache.namespaced("labels"))
    assert cache.same_store(Cache(tmp_path / "b" / ".." / "a"))
    assert not cache.same_store(Cache(tmp_path / "b"))


def test_a_listing_waits_for_values_written_behind(cache_dir: Path) -> None:
    """maintain_cache lists with `scan`: an entry still queued behind must be in the listing,
    or a changed function's last result escapes the clean-up and is written after it."""
    import threading

    import afml_cache
    from afml_cache._store.writer import WRITER

    @afml_cache.robust_cacheable
    def double(x: int) -> np.ndarray:
        return np.full(300_000, 2.0 * x)  # 2.4 MB: written behind

    release = threading.Event()
    WRITER.submit(release.wait)  # the writer is busy: the next value waits behind it
    timer = threading.Timer(0.2, release.set)
    timer.start()
    try:
        assert double(21)[0] == 42.0
        listed = afml_cache.config.shared_cache().scan(None)
    finally:
        release.set()
        timer.join()
    assert [entry.namespace for entry in listed] == [double.__afml_cache__.name]
