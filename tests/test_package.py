"""What the package is as a whole: one version, one class for every warning it issues, and the
benchmark harness that compares peers kept in benches/, outside the library."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import afml_cache
from afml_cache import Cache, CacheWarning, robust_cacheable

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "python" / "afml_cache"


# --- the version ----------------------------------------------------------------------------------


def test_the_version_is_written_once_in_cargo_toml() -> None:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert afml_cache.__version__ == importlib.metadata.version("afml-cache") == cargo


# --- warnings -------------------------------------------------------------------------------------


def test_cache_warning_is_a_user_warning_exported_by_the_package() -> None:
    assert issubclass(CacheWarning, UserWarning)
    assert "CacheWarning" in afml_cache.__all__
    assert afml_cache.errors.CacheWarning is CacheWarning


def _unfingerprintable_argument(tmp_path: Path) -> None:
    class Unregistered:
        def __init__(self, x: int) -> None:
            self.x = x

    afml_cache.fingerprint(Unregistered(1))


def _unstorable_result(tmp_path: Path) -> None:
    @robust_cacheable(cache=Cache(tmp_path / "cache"))
    def lock_for(x: int) -> threading.Lock:
        return threading.Lock()

    lock_for(1)


def _refused_directory(tmp_path: Path) -> None:
    directory = tmp_path / "loose"
    directory.mkdir()
    directory.chmod(0o775)

    @afml_cache.cacheable
    def double(x: int) -> int:
        return 2 * x

    previous = afml_cache.CACHE_DIRS["base"]
    afml_cache.configure(directory=directory)
    try:
        double(21)
    finally:
        afml_cache.configure(directory=previous)


def _larger_than_the_size_limit(tmp_path: Path) -> None:
    Cache(tmp_path / "cache", size_limit=10_000).set("k", np.random.default_rng(0).random(10_000))


def _bad_verbosity_in_the_environment(tmp_path: Path) -> None:
    @robust_cacheable(cache=Cache(tmp_path / "cache"))
    def double(x: int) -> int:
        return 2 * x

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AFML_CACHE_VERBOSE", f"loud-{tmp_path.name}")
        double(1)


@pytest.mark.parametrize(
    "trigger",
    [
        _unfingerprintable_argument,
        _unstorable_result,
        _refused_directory,
        _larger_than_the_size_limit,
        _bad_verbosity_in_the_environment,
    ],
)
def test_every_warning_is_a_cache_warning(trigger: Callable[[Path], None], tmp_path: Path) -> None:
    with pytest.warns(UserWarning) as caught:
        trigger(tmp_path)
        afml_cache.flush_writes()
    assert [type(w.message) for w in caught] == [CacheWarning], [str(w.message) for w in caught]


def _warn_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "warn"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "warnings"
    ]


def _category(call: ast.Call) -> str | None:
    given = call.args[1] if len(call.args) > 1 else None
    given = next((k.value for k in call.keywords if k.arg == "category"), given)
    return given.id if isinstance(given, ast.Name) else None


def test_every_warning_the_package_issues_names_cache_warning() -> None:
    """The paths above are the ones a test can reach; this covers the rest (MLflow, backtests,
    production setup) by reading every `warnings.warn(...)` in the package."""
    sites = {
        f"{path.relative_to(PACKAGE)}:{call.lineno}": _category(call)
        for path in sorted(PACKAGE.rglob("*.py"))
        for call in _warn_calls(ast.parse(path.read_text()))
    }
    assert sites, "no warnings.warn found: the scan is broken"
    assert {site: c for site, c in sites.items() if c != "CacheWarning"} == {}


# --- the benchmark harness ------------------------------------------------------------------------


def test_the_machine_benchmark_measures_every_case_beside_the_installed_peers(
    tmp_path: Path,
) -> None:
    script = ROOT / "benches" / "bench_machine.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert list(tmp_path.iterdir()) == []  # its temporary caches are gone
    cases = {
        "fingerprint_frame",
        "set_small",
        "get_small",
        "set_array",
        "get_array",
        "decorated_hit_scalars",
    }
    assert {r["case"] for r in document["results"] if r["tool"] == "afml-cache"} == cases
    assert all(r["median_seconds"] > 0 for r in document["results"])
    assert (document["frame_rows"], document["array_bytes"]) == (200_000, 10 * 1024 * 1024)
    installed = {n for n, v in document["machine"]["versions"].items() if v is not None}
    hit_tools = {r["tool"] for r in document["results"] if r["case"] == "decorated_hit_scalars"}
    expected = {"afml-cache"}
    for module, tool in (
        ("joblib", "joblib.Memory"),
        ("diskcache", "diskcache.memoize"),
        ("cachier", "cachier"),
    ):
        if module in installed:
            expected.add(tool)
    assert hit_tools == expected


def test_the_library_imports_no_peer_and_the_demo_lives_in_its_own_package() -> None:
    """`afml_cache` ships what users import: no module of it imports a peer cache, directly or
    by name (``importlib.import_module("joblib")``)."""
    peers = {"joblib", "diskcache", "cachier"}
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            found |= {f"{path.relative_to(PACKAGE)}: {n}" for n in names if n in peers}
    assert found == set()
    assert not (PACKAGE / "pipeline.py").exists()
    assert (PACKAGE / "demo" / "pipeline.py").exists()
