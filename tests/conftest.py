"""Shared helpers for the fingerprint test-suite.

The helpers are exposed as fixtures so that test modules do not need to import
this file (``tests/`` is not a package).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap
import types
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import afml_cache

# When a Hypothesis test fails, its pytest plugin imports libcst to suggest a patch; libcst
# emits a DeprecationWarning at import (via mypy_extensions), which `filterwarnings = error`
# turns into an INTERNALERROR that aborts the whole run. Import it once here, quietly.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import libcst  # noqa: F401


# The decorators' cache lives in a temporary directory for the whole session, never in a
# developer's own cache: afml-cache's pytest plugin does it. pytest loads it from the installed
# package's entry point; where that is missing (metadata installed before the entry point was
# added, or PYTEST_DISABLE_PLUGIN_AUTOLOAD set) it is loaded here, and only then: pytest refuses
# to register one plugin under two names.
if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or not importlib.metadata.entry_points(
    group="pytest11", name="afml_cache"
):
    pytest_plugins = ["afml_cache.pytest_plugin"]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh cache directory for the decorators, for this test only."""
    previous = afml_cache.CACHE_DIRS["base"]
    directory = tmp_path / "cache"
    afml_cache.configure(directory=directory)
    yield directory
    afml_cache.configure(directory=previous)


# Subprocesses run the real interpreter; a hang or a crash must become a test failure, not a
# stuck or dead pytest run.
SUBPROCESS_TIMEOUT_S = 300


def _digests(values: Iterable[Any]) -> list[str]:
    return [afml_cache.fingerprint(v) for v in values]


def assert_all_distinct(values: Iterable[Any], labels: Iterable[str] | None = None) -> list[str]:
    """Every value must get its own digest; report the colliding pairs otherwise."""
    values = list(values)
    labels = list(labels) if labels is not None else [repr(v)[:80] for v in values]
    digests = _digests(values)
    clashes = [
        f"{labels[i]} == {labels[j]}"
        for i, j in itertools.combinations(range(len(values)), 2)
        if digests[i] == digests[j]
    ]
    assert not clashes, "distinct values share a digest: " + "; ".join(clashes)
    return digests


def assert_all_same(values: Iterable[Any], labels: Iterable[str] | None = None) -> str:
    """All values must share one digest."""
    values = list(values)
    labels = list(labels) if labels is not None else [repr(v)[:80] for v in values]
    digests = _digests(values)
    odd = [f"{lab}: {d}" for lab, d in zip(labels, digests, strict=True) if d != digests[0]]
    assert not odd, f"expected one digest ({labels[0]}: {digests[0]}), got: " + "; ".join(odd)
    return digests[0]


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., types.ModuleType]:
    """``load(source, name=None)``: writes ``source`` to a fresh file and imports it under a
    fresh (or the given) module name, as user code a decorated function lives in."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    counter = itertools.count()

    def load(source: str, name: str | None = None) -> types.ModuleType:
        name = name or f"user_code_{uuid.uuid4().hex}"
        directory = tmp_path / f"m{next(counter)}"
        directory.mkdir()
        path = directory / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(directory))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def distinct() -> Callable[..., list[str]]:
    return assert_all_distinct


@pytest.fixture
def same() -> Callable[..., str]:
    return assert_all_same


def run_python_code(
    code: str, env: Mapping[str, str] | None = None, timeout: float = SUBPROCESS_TIMEOUT_S
) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout; fail on non-zero exit.

    A negative return code means the child died from a signal (e.g. a stack overflow in
    the native extension), which is exactly the kind of failure these tests guard against.
    """
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - only on a hang
        pytest.fail(f"child interpreter did not finish within {timeout}s (hang?): {exc}")
    assert proc.returncode == 0, (
        f"child interpreter exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc.stdout


@pytest.fixture
def run_python() -> Callable[..., str]:
    return run_python_code
