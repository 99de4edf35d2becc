"""Maintenance: `maintain_cache` (expired, old, outdated and surplus entries, dry runs) and
`smart_cache_clear` (entries of code that changed), alone and while another process uses the
cache. Every test has its own cache directory and says exactly which entries must go.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import afml_cache
from afml_cache import config
from afml_cache._store.entries import Entries
from afml_cache.cache import Cache
from afml_cache.errors import StoreError

CHILD_TIMEOUT_S = 120
MB = 2**20  # the MB of every size in a report, as in "500MB"


@pytest.fixture
def cache(cache_dir: Path) -> Cache:
    shared = config.shared_cache()
    assert shared is not None
    return shared


def put(
    cache: Cache, namespace: str, key: str, nbytes: int = 4000, **options: Any
) -> dict[str, Any]:
    """Stores incompressible bytes; returns the entry's description (size, created, ...)."""
    view = cache.namespaced(namespace)
    view.set(key, np.random.default_rng(abs(hash(key)) % 2**32).bytes(nbytes), **options)
    return next(e for e in view.entries() if e["key"] == key)


def remaining(cache: Cache) -> list[tuple[str, Any]]:
    """(namespace, key) of every entry on disk, sorted."""
    found = []
    for raw in cache._store.scan(None):
        view = cache.namespaced(raw.namespace)
        found += [(raw.namespace, e["key"]) for e in view.entries() if e["digest"] == raw.digest]
    return sorted(found)


def at(monkeypatch: pytest.MonkeyPatch, moment: float) -> None:
    """Python's clock reads ``moment`` (the store's own clock is untouched)."""
    monkeypatch.setattr(time, "time", lambda: moment)


def report(
    cleared: list[str], entries: list[dict[str, Any]], reasons: dict[str, int], dry_run: bool
) -> dict[str, Any]:
    return {
        "cleared_functions": cleared,
        "size_cleared_mb": pytest.approx(sum(e["size"] for e in entries) / MB),
        "entries_removed": len(entries),
        "errors": [],
        "dry_run": dry_run,
        "reasons": reasons,
    }


# --- maintain_cache -------------------------------------------------------------------------


def test_expired_entries_are_removed_even_when_protected(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = [
        put(cache, "m.one", "a", ttl=60),
        put(cache, "m.one", "b", ttl=60),
        put(cache, "m.three", "c", ttl=60, protect=True),
    ]
    put(cache, "m.one", "kept", ttl=7200)
    put(cache, "m.two", "kept")
    at(monkeypatch, time.time() + 3600)
    result = afml_cache.maintain_cache()
    assert result == report(["m.one", "m.three"], gone, {"expired": 3}, dry_run=False)
    assert remaining(cache) == [("m.one", "kept"), ("m.two", "kept")]
    assert cache.check() == []


def test_entries_older_than_max_age_are_removed_unless_protected(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = [put(cache, "m.old", "a"), put(cache, "m.old", "b")]
    protected = put(cache, "m.old", "protected", protect=True)
    new = [put(cache, "m.old", "fresh"), put(cache, "m.new", "fresh")]
    newest_old = max(e["created"] for e in [*old, protected])
    oldest_new = min(e["created"] for e in new)
    assert newest_old < oldest_new
    # One day after the moment between the two batches: the first batch is over a day old.
    at(monkeypatch, (newest_old + oldest_new) / 2 + 86400)
    result = afml_cache.maintain_cache(max_age_days=1)
    assert result == report(["m.old"], old, {"older_than_max_age": 2}, dry_run=False)
    assert remaining(cache) == [("m.new", "fresh"), ("m.old", "fresh"), ("m.old", "protected")]


@pytest.fixture
def four_entries(cache: Cache) -> dict[str, dict[str, Any]]:
    """Four entries written a, b, c, d, then ``a`` read: least recently used first is b, c, d,
    a."""
    entries = {key: put(cache, "m.x" if key in "ab" else "m.y", key) for key in "abcd"}
    assert cache.namespaced("m.x").get("a") is not None
    return entries


def test_max_size_removes_least_recently_used_first(
    cache: Cache, four_entries: dict[str, dict[str, Any]]
) -> None:
    sizes = {k: e["size"] for k, e in four_entries.items()}
    limit = (sizes["c"] + sizes["d"] + sizes["a"]) / MB
    result = afml_cache.maintain_cache(max_size_mb=limit)
    assert result == report(["m.x"], [four_entries["b"]], {"over_max_size": 1}, dry_run=False)
    assert remaining(cache) == [("m.x", "a"), ("m.y", "c"), ("m.y", "d")]

    result = afml_cache.maintain_cache(max_size_mb=(sizes["a"] + sizes["d"] - 1) / MB)
    gone = [four_entries["c"], four_entries["d"]]
    assert result == report(["m.y"], gone, {"over_max_size": 2}, dry_run=False)
    assert remaining(cache) == [("m.x", "a")]
    assert cache.check() == []
    assert cache.stats()["count"] == 1


def test_protected_entries_stay_over_max_size_and_the_report_says_so(cache: Cache) -> None:
    kept = put(cache, "m.x", "keep", protect=True)
    gone = put(cache, "m.x", "go")
    result = afml_cache.maintain_cache(max_size_mb=0)
    assert result["entries_removed"] == 1
    assert result["size_cleared_mb"] == pytest.approx(gone["size"] / MB)
    assert result["errors"] == [
        f"{kept['size'] / MB:,.2f} MB remain, more than max_size_mb=0: the rest is protected "
        "entries or entries that could not be removed"
    ]
    assert remaining(cache) == [("m.x", "keep")]


def test_a_dry_run_removes_nothing_and_reports_what_would_go(
    cache: Cache, four_entries: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    put(cache, "m.z", "soon", ttl=60)
    before = remaining(cache)
    at(monkeypatch, time.time() + 3600)
    sizes = {k: e["size"] for k, e in four_entries.items()}
    limit = (sizes["d"] + sizes["a"]) / MB
    planned = afml_cache.maintain_cache(auto_clear=False, max_size_mb=limit)
    assert planned["dry_run"] is True
    assert planned["reasons"] == {"expired": 1, "over_max_size": 2}
    assert planned["cleared_functions"] == ["m.x", "m.y", "m.z"]
    assert remaining(cache) == before
    done = afml_cache.maintain_cache(max_size_mb=limit)
    assert {**planned, "dry_run": False} == done
    assert remaining(cache) == [("m.x", "a"), ("m.y", "d")]


def test_a_failing_entry_is_reported_and_the_rest_still_removed(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = put(cache, "m.x", "stuck", ttl=60)
    gone = put(cache, "m.x", "gone", ttl=60)
    delete = Entries.delete

    def refuse_one(self: Entries, digest: str, *, local_only: bool = False) -> bool:
        if digest == stuck["digest"]:
            raise StoreError(13, "Permission denied", "/somewhere/entry")
        return delete(self, digest, local_only=local_only)

    monkeypatch.setattr(Entries, "delete", refuse_one)
    at(monkeypatch, time.time() + 3600)
    result = afml_cache.maintain_cache()
    assert result["entries_removed"] == 1
    assert result["size_cleared_mb"] == pytest.approx(gone["size"] / MB)
    [error] = result["errors"]
    assert error.startswith(f"m.x: entry {stuck['digest']} could not be removed: ")
    assert "Permission denied" in error
    assert remaining(cache) == [("m.x", "stuck")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"max_size_mb": -1}, "max_size_mb must be a number >= 0 or None, got -1"),
        ({"max_age_days": float("nan")}, "max_age_days must be a number >= 0 or None, got nan"),
        ({"max_age_days": "30d"}, "max_age_days must be a number >= 0 or None, got '30d'"),
    ],
)
def test_bad_limits_are_refused_before_anything_is_removed(
    cache: Cache, arguments: dict[str, Any], message: str
) -> None:
    put(cache, "m.x", "a")
    with pytest.raises(ValueError, match=message):
        afml_cache.maintain_cache(**arguments)
    assert remaining(cache) == [("m.x", "a")]


# --- code changes ---------------------------------------------------------------------------

SOURCE = """
import afml_cache

CALLS = []


@afml_cache.robust_cacheable
def feature(x):
    CALLS.append(x)
    return x * {factor}


@afml_cache.robust_cacheable
def other(x):
    return -x
"""


Loader = Callable[..., types.ModuleType]


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loader:
    """Writes a module file with ``factor`` substituted and imports it; called again with the
    same name, rewrites the file and reloads the module (as after editing it)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    directory = tmp_path / "modules"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))

    def load(name: str, factor: int) -> types.ModuleType:
        parent, _, last = name.rpartition(".")
        folder = directory / parent if parent else directory
        folder.mkdir(exist_ok=True)
        path = folder / f"{last}.py"
        path.write_text(SOURCE.format(factor=factor))
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        if parent and parent not in sys.modules:  # its package, where reload looks for it
            package = types.ModuleType(parent)
            package.__path__ = [str(folder)]
            monkeypatch.setitem(sys.modules, parent, package)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # removed again after the test
        spec.loader.exec_module(module)
        return module

    return load


def edit(load: Loader, module: types.ModuleType, factor: int) -> types.ModuleType:
    """Reloads ``module`` with new code, and lets its old functions go."""
    reloaded = load(module.__name__, factor)
    gc.collect()
    return reloaded


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def entries_of(fn: Any) -> int:
    return len(fn.cache_entries())


@pytest.mark.parametrize("how", ["function", "module", "module name", "everything"])
def test_smart_clear_removes_entries_of_changed_code(cache: Cache, load: Loader, how: str) -> None:
    module = load(unique("research"), factor=2)
    for x in (1, 2, 3):
        module.feature(x)
    module.other(1)
    old_sizes = [e["size"] for e in module.feature.cache_entries()]
    module = edit(load, module, factor=3)
    assert module.feature(1) == 3  # new code, new key: computed
    assert entries_of(module.feature) == 4
    name = f"{module.__name__}.feature"
    target = {
        "function": module.feature,
        "module": module,
        "module name": module.__name__,
        "everything": None,
    }[how]
    result = afml_cache.smart_cache_clear(target)
    assert result == {
        "cleared_functions": [name],
        "size_cleared_mb": pytest.approx(sum(old_sizes) / MB),
        "entries_removed": 3,
        "errors": [],
        "dry_run": False,
        "reasons": {"code_changed": 3},
    }
    assert entries_of(module.feature) == 1
    assert entries_of(module.other) == 1  # its code did not change
    module.CALLS.clear()
    assert module.feature(1) == 3 and module.CALLS == []  # the current entry still hits
    assert cache.check() == []


def test_module_names_match_exactly_never_by_substring(cache: Cache, load: Loader) -> None:
    base = unique("labeling")
    short, longer = load(base, factor=2), load(base + "_v2", factor=2)
    short.feature(1)
    longer.feature(1)
    short, longer = edit(load, short, factor=5), edit(load, longer, factor=5)
    result = afml_cache.smart_cache_clear(base)
    assert result["cleared_functions"] == [f"{base}.feature"]
    assert (entries_of(short.feature), entries_of(longer.feature)) == (0, 1)


def test_entries_without_a_code_fingerprint_count_as_changed(cache: Cache, load: Loader) -> None:
    module = load(unique("legacy"), factor=2)
    module.feature(1)
    name = f"{module.__name__}.feature"
    # As written by a version that did not record the code.
    cache.namespaced(name).set("old-style", 5, metadata={"function": name})
    result = afml_cache.smart_cache_clear(module.feature)
    assert (result["entries_removed"], result["cleared_functions"]) == (1, [name])
    assert [e["key"] for e in module.feature.cache_entries()] == [None]  # the decorator's own


def test_entries_of_any_live_version_stay(cache: Cache, load: Loader) -> None:
    module = load(unique("notebook"), factor=2)
    old_feature = module.feature  # still referenced, like a function a notebook holds on to
    old_feature(1)
    module = edit(load, module, factor=3)
    module.feature(1)
    result = afml_cache.smart_cache_clear(module.feature)
    assert result["entries_removed"] == 0
    assert entries_of(module.feature) == 2
    del old_feature
    gc.collect()
    assert afml_cache.smart_cache_clear(module.feature)["entries_removed"] == 1


def test_maintenance_also_removes_entries_of_changed_code(cache: Cache, load: Loader) -> None:
    module = load(unique("pipeline"), factor=2)
    module.feature(1)
    module.feature(2)
    put(cache, "someone.elses", "k")  # not a live function's namespace: left alone
    module = edit(load, module, factor=3)
    module.feature(1)
    planned = afml_cache.maintain_cache(auto_clear=False)
    assert planned["reasons"] == {"code_changed": 2}
    assert entries_of(module.feature) == 3
    done = afml_cache.maintain_cache()
    assert {**planned, "dry_run": False} == done
    assert entries_of(module.feature) == 1
    assert ("someone.elses", "k") in remaining(cache)


def test_a_module_is_named_by_its_last_components_when_unambiguous(
    cache: Cache, load: Loader
) -> None:
    package = unique("afml")
    labeling = load(f"{package}.labeling", factor=2)
    fast = load(f"{package}.labeling_fast", factor=2)
    labeling.feature(1)
    fast.feature(1)
    labeling = edit(load, labeling, factor=5)
    fast = edit(load, fast, factor=5)
    result = afml_cache.smart_cache_clear("labeling")  # the usage guide's call
    assert result["cleared_functions"] == [f"{package}.labeling.feature"]
    assert (entries_of(labeling.feature), entries_of(fast.feature)) == (0, 1)
    assert afml_cache.smart_cache_clear(f"{package}.labeling_fast")["entries_removed"] == 1


def test_a_module_name_ending_several_modules_lists_them(cache: Cache, load: Loader) -> None:
    first, second = unique("research"), unique("desk")
    load(f"{first}.labeling", factor=2).feature(1)
    load(f"{second}.labeling", factor=2).feature(1)
    candidates = ", ".join(sorted([f"{first}.labeling", f"{second}.labeling"]))
    with pytest.raises(ValueError, match=f"'labeling' names several modules: {candidates}; "):
        afml_cache.smart_cache_clear("labeling")
    # The longer name says which.
    assert afml_cache.smart_cache_clear(f"{first}.labeling")["errors"] == []


def test_smart_clear_refuses_what_it_cannot_resolve(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="no module of that name is imported"):
        afml_cache.smart_cache_clear("no_such_module_anywhere")
    with pytest.raises(TypeError, match="takes a decorated function, a module"):
        afml_cache.smart_cache_clear(len)
    # A loaded module without decorated functions has nothing to clear.
    assert afml_cache.smart_cache_clear(os)["entries_removed"] == 0


# --- while another process uses the cache ---------------------------------------------------

CHILD = """
import os, sys, warnings
warnings.simplefilter("error")
import numpy as np
import afml_cache

def numbers(i):  # incompressible, so the entries take real space
    return np.random.default_rng(i).integers(0, 2**62, 6_000)

@afml_cache.robust_cacheable
def block(i):
    return numbers(i)

stop, ready = sys.argv[1], sys.argv[2]
cache = afml_cache.config.shared_cache()
for n in range(200_000):
    if os.path.exists(stop):
        break
    i = n % 24
    assert np.array_equal(block(i), numbers(i)), i
    raw = cache.get(("raw", i))
    expected = numbers(100 + i).tobytes()[:20_000]
    assert raw is None or raw == expected, i
    if raw is None:
        cache.set(("raw", i), expected)
    if n == 48:
        open(ready, "w").close()
print(n)
"""


def test_maintenance_while_another_process_reads_and_writes(
    cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFML_CACHE_DIR", str(cache.directory))
    monkeypatch.delenv("AFML_CACHE_DISABLE", raising=False)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    child = subprocess.Popen(
        [sys.executable, str(script), str(stop), str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), child.communicate(timeout=CHILD_TIMEOUT_S)
        removed = 0
        for round_ in range(30):
            result = afml_cache.maintain_cache(max_size_mb=0.2, max_age_days=None)
            assert result["errors"] == [], result
            removed += result["entries_removed"]
            if round_ % 10 == 9:
                assert afml_cache.maintain_cache(max_age_days=0)["errors"] == []
    finally:
        stop.touch()
        out, err = child.communicate(timeout=CHILD_TIMEOUT_S)
    assert child.returncode == 0, err
    assert err == ""
    assert int(out) > 48
    assert removed > 0
    assert cache.check() == []


# --- prune --dry-run ------------------------------------------------------------------------


def test_prune_dry_run_says_what_would_remain(
    cache: Cache, four_entries: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    from afml_cache import cli
    from afml_cache.report import format_size

    sizes = {k: e["size"] for k, e in four_entries.items()}
    total = sum(sizes.values())
    limit = str(sizes["d"] + sizes["a"])  # b and c would go
    argv = ["prune", "--dir", str(cache.directory), "--max-size", limit, "--dry-run"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    would_remain = format_size(sizes["d"] + sizes["a"])
    assert out == (
        f"Would remove 2 entries ({format_size(sizes['b'] + sizes['c'])}; 2 over max size) "
        f"from {cache.directory}; {would_remain} would remain of {format_size(total)}.\n"
    )
    assert cli.main([*argv, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["bytes_after"] == sizes["d"] + sizes["a"]
    assert len(remaining(cache)) == 4  # a dry run
    assert cli.main(argv[:-1]) == 0
    assert capsys.readouterr().out.endswith(f"; {would_remain} remain.\n")
    assert remaining(cache) == [("m.x", "a"), ("m.y", "d")]


# --- progress -------------------------------------------------------------------------------


class Terminal(io.StringIO):
    """A stderr a person watches."""

    def isatty(self) -> bool:
        return True


def watched(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """Makes stderr a terminal, and short work show its progress. Called in the test itself:
    pytest sets its own stderr again between a fixture and the test."""
    from afml_cache import progress

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)
    return screen


def test_export_import_and_maintenance_show_progress_on_a_terminal(
    cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = watched(monkeypatch)
    for key in "abc":
        put(cache, "m.x", key)
    archive = tmp_path / "all.tar"
    assert cache.export(archive, every_namespace=True) == 3
    assert "afml-cache export: 100%" in terminal.getvalue()
    assert "3/3" in terminal.getvalue()
    other = Cache(tmp_path / "other")
    assert other.import_(archive) == 3
    assert "afml-cache import: 100%" in terminal.getvalue()
    afml_cache.maintain_cache(max_size_mb=0)
    assert "afml-cache maintain: 100%" in terminal.getvalue()
    assert remaining(cache) == []


def test_check_shows_progress_on_a_terminal(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = watched(monkeypatch)
    for key in "abcd":
        put(cache, "m.x", key)
    assert cache.check() == []
    assert "afml-cache check: 100%" in terminal.getvalue()
    assert "4/4" in terminal.getvalue()


def test_progress_is_silent_in_pipes_and_without_tqdm(
    cache: Cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from afml_cache import progress

    monkeypatch.setattr(progress, "SHOW_AFTER_SECONDS", 0.0)
    put(cache, "m.x", "a")
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    assert cache.export(tmp_path / "piped.tar", every_namespace=True) == 1
    assert piped.getvalue() == ""
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # not installed: `import` fails
    assert cache.export(tmp_path / "quiet.tar", every_namespace=True) == 1
    assert screen.getvalue() == ""
    assert Cache(tmp_path / "back").import_(tmp_path / "quiet.tar") == 1


NOTEBOOK_CELL = """
import afml_cache
from afml_cache import progress
progress.SHOW_AFTER_SECONDS = 0.0
cache = afml_cache.Cache({directory!r})
for key in range(5):
    cache.set(key, key)
print("exported", cache.export({archive!r}))
"""


def test_progress_shows_in_a_jupyter_notebook(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    cell = NOTEBOOK_CELL.format(directory=str(tmp_path / "cache"), archive=str(tmp_path / "a.tar"))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    NotebookClient(notebook, timeout=CHILD_TIMEOUT_S, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    shown = "".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in outputs)
    assert "exported 5" in shown
    # A widget where ipywidgets is installed, else tqdm's text bar in the cell's output.
    assert "afml-cache export" in shown or "widget-view" in shown, outputs
