"""The pytest plugin (entry point ``pytest11``, loaded automatically once afml-cache is installed).

Each test session gets its own temporary cache directory, so a suite never reads (or fills) a
developer's personal cache, even with ``AFML_CACHE_DIR`` set. ``--afml-cache=MODE`` (or
``afml_cache = MODE`` in the pytest configuration) chooses:

- ``isolated`` (default): a fresh directory, removed when the session ends; ``--afml-cache-dir``
  (or ``afml_cache_dir``) names a directory to use instead, which is kept;
- ``shared``: the cache the user configured (``AFML_CACHE_DIR`` or the default), as outside pytest;
- ``off``: caching disabled; cached functions run every time.

pytest-xdist workers of one session share the controller's isolated directory. Processes the
tests start inherit the choice through ``AFML_CACHE_DIR`` / ``AFML_CACHE_DISABLE``.

The ``afml_cache`` fixture is the session's cache with ``assert_hit`` and ``assert_miss``; the
``@pytest.mark.afml_cache_disabled`` marker runs one test with caching disabled.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from afml_cache import config as afml_config
from afml_cache.cache import Cache, flush_writes
from afml_cache.calls import shown
from afml_cache.decorators import watch_calls

__all__ = ["MODES", "CacheFixture"]

MODES = ("isolated", "shared", "off")
_MARKER = "afml_cache_disabled"
_WORKER_KEY = "afml_cache_dir"  # the isolated directory, handed from the xdist controller
_ENV = ("AFML_CACHE_DIR", "AFML_CACHE_DISABLE")
_ENTRY_POINT = "afml_cache"  # the plugin's name when pytest loads it from the installed package


@dataclass
class _Session:
    mode: str
    directory: Path | None  # None in off mode
    remove: bool  # this process created the directory, so it removes it at the end
    given: bool = False  # the directory came from --afml-cache-dir / afml_cache_dir
    saved_settings: dict[str, Any] = field(default_factory=dict)
    saved_env: dict[str, str | None] = field(default_factory=dict)


_SESSION = pytest.StashKey[_Session]()


def pytest_plugin_registered(
    plugin: object, plugin_name: str, manager: pytest.PytestPluginManager
) -> None:
    # Loaded by module name (-p afml_cache.pytest_plugin): the installed entry point would then
    # register this module a second time, which pytest refuses with an error.
    if plugin is sys.modules[__name__] and plugin_name != _ENTRY_POINT:
        manager.set_blocked(_ENTRY_POINT)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("afml-cache")
    group.addoption(
        "--afml-cache",
        dest="afml_cache",
        choices=MODES,
        default=None,
        help="which cache cached functions use: isolated (a temporary directory for this "
        "session; default), shared (your configured cache) or off (run uncached)",
    )
    group.addoption(
        "--afml-cache-dir",
        dest="afml_cache_dir",
        default=None,
        metavar="PATH",
        help="the directory of the isolated cache, kept after the session",
    )
    parser.addini("afml_cache", "default of --afml-cache: isolated, shared or off", default="")
    parser.addini(
        "afml_cache_dir", "default of --afml-cache-dir, relative to this file", default=""
    )


def _choose(config: pytest.Config) -> tuple[str, Path | None]:
    """The mode and, if one was given, the directory of the isolated cache."""
    mode = config.getoption("afml_cache") or config.getini("afml_cache").strip() or "isolated"
    if mode not in MODES:
        allowed = ", ".join(MODES)
        raise pytest.UsageError(
            f"afml_cache = {mode!r} in {config.inipath or '-o'} is not a mode; use one of {allowed}"
        )
    option = config.getoption("afml_cache_dir")
    if option and mode != "isolated":
        raise pytest.UsageError(
            f"--afml-cache-dir names the isolated cache's directory, but the mode is {mode!r}; "
            "drop one of --afml-cache-dir and --afml-cache"
        )
    if mode != "isolated":
        return mode, None  # a directory from the ini file is the isolated mode's only
    if option:
        return mode, (config.invocation_params.dir / Path(option).expanduser()).resolve()
    ini = config.getini("afml_cache_dir").strip()
    if ini:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        return mode, (base / Path(ini).expanduser()).resolve()
    return mode, None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{_MARKER}: run this test with caching disabled (cached functions run uncached)"
    )
    mode, directory = _choose(config)
    session = _Session(mode, directory, remove=False, given=directory is not None)
    if mode == "isolated" and directory is None:
        handed = getattr(config, "workerinput", {}).get(_WORKER_KEY)
        if handed is not None:  # an xdist worker: the controller owns the directory
            session.directory = Path(handed)
        else:
            session.directory = Path(tempfile.mkdtemp(prefix="afml-cache-pytest-"))
            session.remove = True
    # Restored at the end, so an in-process run (pytester) leaves its host session as it was.
    session.saved_settings = afml_config.settings()
    session.saved_env = {name: os.environ.get(name) for name in _ENV}
    config.stash[_SESSION] = session
    if mode == "isolated":
        afml_config.configure(directory=session.directory)
        os.environ["AFML_CACHE_DIR"] = str(session.directory)
    elif mode == "off":
        afml_config.configure(enabled=False)
        os.environ["AFML_CACHE_DISABLE"] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is None:
        return
    del config.stash[_SESSION]
    flush_writes()  # results written behind land before the directory goes
    for name, value in session.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    # After the environment, which decides the default directory.
    afml_config.restore_settings(session.saved_settings)
    if session.remove and session.directory is not None:
        shutil.rmtree(session.directory, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller: each worker uses the controller's isolated directory."""
    session = node.config.stash.get(_SESSION, None)
    if session is not None and session.mode == "isolated":
        node.workerinput[_WORKER_KEY] = str(session.directory)


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(_SESSION, None)
    if session is None:
        return None
    if session.mode == "off":
        return "afml-cache: off (cached functions run uncached)"
    if session.mode == "shared":
        return f"afml-cache: shared cache in {afml_config.CACHE_DIRS['base']}"
    fate = "kept" if session.given else "removed at the end of the session"
    return f"afml-cache: isolated cache in {session.directory} ({fate})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    # Around setup, call and teardown alike, so fixtures of a marked test run uncached too;
    # through the environment, so that its threads (a thread pool, joblib's threading backend)
    # and the processes it starts do as well.
    if item.get_closest_marker(_MARKER) is None:
        return (yield)
    before = os.environ.get("AFML_CACHE_DISABLE")
    os.environ["AFML_CACHE_DISABLE"] = "1"
    try:
        with afml_config.disabled():
            return (yield)
    finally:
        if before is None:
            os.environ.pop("AFML_CACHE_DISABLE", None)
        else:
            os.environ["AFML_CACHE_DISABLE"] = before


class CacheFixture:
    """The session's `Cache` (its methods and attributes are available directly; ``.cache`` is
    the `Cache` itself), with assertions about single calls of cached functions.

    A call is judged by its own outcome, seen in the thread that makes it: other tests, threads
    and xdist workers calling the same function at the same moment never change the verdict.
    """

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def __getattr__(self, name: str) -> Any:
        if name == "cache":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.cache, name)

    def __repr__(self) -> str:
        return f"<afml_cache fixture of {self.cache!r}>"

    def assert_hit(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Calls ``f(*args, **kwargs)``, asserts its result came from the cache, returns it."""
        __tracebackhide__ = True
        return _assert_outcome("hit", f, args, kwargs)

    def assert_miss(self, f: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Calls ``f(*args, **kwargs)``, asserts it was computed (and stored), returns it."""
        __tracebackhide__ = True
        return _assert_outcome("miss", f, args, kwargs)


def _assert_outcome(
    expected: str, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    __tracebackhide__ = True
    engine = getattr(f, "__afml_cache__", None)
    if engine is None:
        raise TypeError(
            f"assert_{expected} takes a function decorated with @robust_cacheable (or "
            f"@cacheable, @time_aware_cacheable), got {f!r}"
        )
    call = _describe_call(engine.name, args, kwargs)
    if not afml_config.cache_enabled():
        raise AssertionError(
            f"expected a cache {expected} for {call}, but caching is disabled here "
            f"(@pytest.mark.{_MARKER}, afml_cache.disabled(), AFML_CACHE_DISABLE or "
            "--afml-cache=off), so the call can be neither a hit nor a miss"
        )
    with watch_calls() as seen:
        result = f(*args, **kwargs)
    # This call's own outcome: the last of this function's calls to finish in this thread (the
    # inner calls of a recursive function finish first); other threads' and processes' calls
    # of the function are never seen.
    outcomes = [hit for called, hit in seen if called is engine]
    if not outcomes:
        happened = (
            "it ran uncached (an argument without a fingerprint, or the cache directory cannot "
            "be used; see the warnings)"
        )
    elif outcomes[-1]:
        happened = "it was a hit: the result came from the cache, computed by an earlier call"
    else:
        happened = "it was a miss: the function ran and its result was stored"
    if outcomes and outcomes[-1] == (expected == "hit"):
        return result
    raise AssertionError(f"expected a cache {expected} for {call}, but {happened}")


def _describe_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    parts = [shown(a) for a in args] + [f"{k}={shown(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


@pytest.fixture
def afml_cache(request: pytest.FixtureRequest) -> CacheFixture:
    """The session's cache (see `CacheFixture`). Under ``--afml-cache=off`` the test is skipped:
    it asks about a cache the session does not have."""
    session = request.config.stash.get(_SESSION, None)
    if session is not None and session.mode == "off":
        pytest.skip("caching is off for this session (--afml-cache=off)")
    cache = afml_config.shared_cache()
    if cache is None:
        pytest.fail(
            f"the afml-cache directory {afml_config.CACHE_DIRS['base']} cannot be used (see the "
            "warning); choose another with --afml-cache-dir",
            pytrace=False,
        )
    return CacheFixture(cache)
