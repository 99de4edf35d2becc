"""The pytest plugin: each session's own cache directory, the modes, the ``afml_cache`` fixture,
the ``afml_cache_disabled`` marker and pytest-xdist workers sharing one directory.

Each test runs a small suite in a fresh pytest process (``pytester``) whose cached function
appends a line to a file every time it actually runs, so counting lines counts computations.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

import afml_cache

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]


# Loaded by its module name, which works whether or not the installed package's entry point
# also loads it (test_entry_point_loads_the_plugin_once checks both ways).
PLUGIN = ("-p", "afml_cache.pytest_plugin")

CACHED = """
    import os

    from afml_cache import robust_cacheable


    @robust_cacheable
    def square(x):
        with open(os.environ["RUNS_FILE"], "a") as runs:
            runs.write(f"{x}\\n")
        return x * x
"""

# Writes where the session's cache is, as the tests see it.
RECORD = """
    import json
    import os

    import afml_cache


    def record():
        with open(os.environ["SEEN_FILE"], "a") as seen:
            seen.write(json.dumps({
                "base": str(afml_cache.CACHE_DIRS["base"]),
                "env_dir": os.environ.get("AFML_CACHE_DIR"),
                "env_disable": os.environ.get("AFML_CACHE_DISABLE"),
                "worker": os.environ.get("PYTEST_XDIST_WORKER"),
            }) + "\\n")
"""


class Suite:
    """A pytester suite with `cached.square`, `record.record` and files to read back."""

    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester = pytester
        self.runs_file = pytester.path / "runs.txt"
        self.seen_file = pytester.path / "seen.jsonl"
        # The developer's own cache, which an isolated session must not touch.
        self.personal = pytester.path / "personal-cache"
        pytester.makepyfile(cached=CACHED, record=RECORD)
        monkeypatch.setenv("RUNS_FILE", str(self.runs_file))
        monkeypatch.setenv("SEEN_FILE", str(self.seen_file))
        monkeypatch.setenv("AFML_CACHE_DIR", str(self.personal))
        monkeypatch.delenv("AFML_CACHE_DISABLE", raising=False)

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", *args)

    def runs(self) -> list[str]:
        return self.runs_file.read_text().split() if self.runs_file.exists() else []

    def seen(self) -> list[dict[str, str | None]]:
        import json

        return [json.loads(line) for line in self.seen_file.read_text().splitlines()]


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Suite:
    return Suite(pytester, monkeypatch)


def _isolated_dir(result: pytest.RunResult) -> Path:
    found = re.search(r"^afml-cache: isolated cache in (.+) \(", result.stdout.str(), re.M)
    assert found, "no afml-cache line in the report header:\n" + result.stdout.str()
    return Path(found.group(1))


TWICE = """
    from cached import square
    from record import record


    def test_twice():
        record()
        assert square(3) == 9
        assert square(3) == 9
"""


def test_isolated_session_ignores_the_personal_cache_and_removes_its_own(suite: Suite) -> None:
    suite.pytester.makepyfile(test_twice=TWICE)
    result = suite.run()
    result.assert_outcomes(passed=1)
    directory = _isolated_dir(result)
    [seen] = suite.seen()
    assert seen["base"] == str(directory) != str(suite.personal)
    assert seen["env_dir"] == str(directory)  # processes the tests start use it too
    assert suite.runs() == ["3"]  # the second call was a hit
    assert not suite.personal.exists()
    assert not directory.exists()


def test_shared_session_uses_the_configured_directory(suite: Suite) -> None:
    suite.pytester.makepyfile(test_twice=TWICE)
    result = suite.run("--afml-cache=shared")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"afml-cache: shared cache in {suite.personal}"])
    [seen] = suite.seen()
    assert seen["base"] == seen["env_dir"] == str(suite.personal)
    assert suite.runs() == ["3"]
    assert any((suite.personal / "entries").rglob("*.*")), "nothing stored in the shared cache"


def test_off_session_runs_every_call_and_skips_fixture_tests(suite: Suite) -> None:
    suite.pytester.makepyfile(
        test_twice=TWICE,
        test_fixture="""
            def test_uses_the_fixture(afml_cache):
                raise AssertionError("must be skipped")
        """,
    )
    result = suite.run("--afml-cache=off", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "afml-cache: off (cached functions run uncached)",
            "*caching is off for this session (--afml-cache=off)*",
        ]
    )
    assert suite.runs() == ["3", "3"]
    [seen] = suite.seen()
    assert seen["env_disable"] == "1"
    assert not suite.personal.exists()


def test_a_given_directory_is_used_and_kept(suite: Suite) -> None:
    suite.pytester.makepyfile(test_twice=TWICE)
    kept = suite.pytester.path / "kept"
    for _ in range(2):
        result = suite.run("--afml-cache-dir=kept")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"afml-cache: isolated cache in {kept} (kept)"])
    assert suite.runs() == ["3"]  # the second session read what the first stored
    assert [s["base"] for s in suite.seen()] == [str(kept)] * 2
    assert not suite.personal.exists()


def test_ini_options_set_the_defaults(suite: Suite) -> None:
    suite.pytester.makepyfile(test_twice=TWICE)
    suite.pytester.makeini("[pytest]\nafml_cache_dir = from-ini\n")
    result = suite.run()
    result.assert_outcomes(passed=1)
    from_ini = suite.pytester.path / "from-ini"
    result.stdout.fnmatch_lines([f"afml-cache: isolated cache in {from_ini} (kept)"])
    assert from_ini.is_dir()

    suite.pytester.makeini("[pytest]\nafml_cache = off\nafml_cache_dir = from-ini\n")
    result = suite.run()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["afml-cache: off (cached functions run uncached)"])
    assert suite.runs() == ["3", "3", "3"]


def test_bad_settings_are_usage_errors(suite: Suite) -> None:
    suite.pytester.makepyfile(test_twice=TWICE)
    result = suite.run("--afml-cache=shared", "--afml-cache-dir=somewhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--afml-cache-dir names the isolated cache's directory*"])

    suite.pytester.makeini("[pytest]\nafml_cache = personal\n")
    result = suite.run()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*afml_cache = 'personal' in *tox.ini is not a mode*"])
    assert suite.runs() == []


def test_marker_runs_the_test_and_its_fixtures_uncached(suite: Suite) -> None:
    suite.pytester.makepyfile(
        test_marker="""
            from concurrent.futures import ThreadPoolExecutor

            import pytest

            from cached import square


            @pytest.fixture
            def nine():
                return square(3)


            @pytest.mark.afml_cache_disabled
            def test_disabled(nine):
                assert nine == 9
                assert square(3) == 9
                assert square(3) == 9
                # its threads too (a thread pool, joblib's threading backend)
                with ThreadPoolExecutor(2) as pool:
                    assert list(pool.map(square, [5, 5])) == [25, 25]


            def test_cached():
                assert square(4) == 16
                assert square(4) == 16
                with ThreadPoolExecutor(2) as pool:
                    assert list(pool.map(square, [6])) == [36]
                    assert list(pool.map(square, [6])) == [36]
        """
    )
    result = suite.run("--strict-markers")
    result.assert_outcomes(passed=2)
    assert sorted(suite.runs()) == ["3", "3", "3", "4", "5", "5", "6"]


def test_assert_hit_and_assert_miss(suite: Suite) -> None:
    suite.pytester.makepyfile(
        test_assertions="""
            import pytest

            from cached import square


            def test_pass(afml_cache):
                assert afml_cache.assert_miss(square, 5) == 25
                assert afml_cache.assert_hit(square, x=5) == 25
                assert afml_cache.directory == afml_cache.cache.directory


            def test_hit_expected(afml_cache):
                afml_cache.assert_hit(square, 6)


            def test_miss_expected(afml_cache):
                square(7)
                afml_cache.assert_miss(square, 7)


            @pytest.mark.afml_cache_disabled
            def test_disabled(afml_cache):
                afml_cache.assert_hit(square, 8)


            def test_not_cached(afml_cache):
                afml_cache.assert_miss(len, "abc")
        """
    )
    result = suite.run()
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "E*AssertionError: expected a cache hit for cached.square(6), but it was a miss: "
            "the function ran and its result was stored",
            "E*AssertionError: expected a cache miss for cached.square(7), but it was a hit: "
            "the result came from the cache, computed by an earlier call",
            "E*AssertionError: expected a cache hit for cached.square(8), but caching is "
            "disabled here (@pytest.mark.afml_cache_disabled, *",
            "E*TypeError: assert_miss takes a function decorated with @robust_cacheable *",
        ]
    )
    # The failing assertions still made their calls; the disabled one ran uncached.
    assert sorted(suite.runs()) == ["5", "6", "7"]


# A cached function that other callers use while the assertions run: another process calls it
# in the middle of the call judged, and a thread calls it in a loop.
BUSY = """
    import subprocess
    import sys
    import threading

    from afml_cache import robust_cacheable


    @robust_cacheable
    def shifted(x):
        if x == 5:
            command = "from busy import shifted; shifted(6)"
            subprocess.run([sys.executable, "-c", command], check=True)
        return x + 1


    def test_a_miss_while_another_process_calls_the_function(afml_cache):
        assert afml_cache.assert_miss(shifted, 5) == 6
        assert afml_cache.assert_hit(shifted, 5) == 6


    def test_hits_while_another_thread_calls_the_function(afml_cache):
        stop = threading.Event()

        def call_others():
            i = 0
            while not stop.is_set():
                shifted(100 + i % 7)
                i += 1

        assert afml_cache.assert_miss(shifted, 50) == 51
        other = threading.Thread(target=call_others)
        other.start()
        try:
            for _ in range(100):
                assert afml_cache.assert_hit(shifted, 50) == 51
            assert afml_cache.assert_miss(shifted, 51) == 52
        finally:
            stop.set()
            other.join()
"""


def test_assertions_judge_the_call_not_the_functions_counters(suite: Suite) -> None:
    suite.pytester.makepyfile(busy=BUSY)
    result = suite.run("-n", "2", "busy.py")
    result.assert_outcomes(passed=2)


def test_assertions_name_a_nested_call_hit_apart(suite: Suite) -> None:
    # The outer call computes (a miss) while the inner call of the same function is a hit: the
    # assertion judges the outer call.
    suite.pytester.makepyfile(
        test_nested="""
            from afml_cache import robust_cacheable


            @robust_cacheable
            def fib(n):
                return n if n < 2 else fib(n - 1) + fib(n - 2)


            def test_nested(afml_cache):
                assert afml_cache.assert_miss(fib, 3) == 2
                assert afml_cache.assert_miss(fib, 4) == 3  # fib(3) and fib(2) inside: hits
                assert afml_cache.assert_hit(fib, 4) == 3
        """
    )
    suite.run().assert_outcomes(passed=1)


def test_xdist_workers_share_one_directory(suite: Suite) -> None:
    # --dist each runs the test in both workers: whichever calls first computes (the other
    # waits on the key's lock or finds the entry), so the function runs once in all.
    suite.pytester.makepyfile(test_twice=TWICE)
    result = suite.run("-n", "2", "--dist", "each")
    result.assert_outcomes(passed=2)
    directory = _isolated_dir(result)
    seen = suite.seen()
    assert sorted(s["worker"] or "" for s in seen) == ["gw0", "gw1"]
    assert {s["base"] for s in seen} == {str(directory)}
    assert suite.runs() == ["3"]
    assert not directory.exists()
    assert not suite.personal.exists()


def test_in_process_session_restores_the_host_settings(suite: Suite) -> None:
    suite.pytester.makepyfile(test_twice=TWICE)
    afml_cache.configure()  # CACHE_DIRS as the environment `suite` set resolves them
    host_dir = afml_cache.CACHE_DIRS["base"]
    host_env = os.environ["AFML_CACHE_DIR"]
    result = suite.pytester.runpytest_inprocess(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    [seen] = suite.seen()
    assert seen["base"] != str(host_dir)
    assert afml_cache.CACHE_DIRS["base"] == host_dir
    assert os.environ["AFML_CACHE_DIR"] == host_env
    assert "AFML_CACHE_DISABLE" not in os.environ
    assert not Path(seen["base"] or "").exists()


def test_entry_point_loads_the_plugin_once(
    suite: Suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["pytest11"] == {"afml_cache": "afml_cache.pytest_plugin"}
    # The entry point as an installed package declares it, without reinstalling afml-cache.
    metadata = tmp_path / "site" / "afml_cache_entry_point-0.dist-info"
    metadata.mkdir(parents=True)
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: afml-cache-entry-point\n")
    lines = [f"{name} = {target}" for name, target in declared["pytest11"].items()]
    (metadata / "entry_points.txt").write_text("[pytest11]\n" + "\n".join(lines) + "\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(metadata.parent), *sys.path]))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    suite.pytester.makepyfile(test_twice=TWICE)
    for by_name in ((), PLUGIN):  # on its own, then also named on the command line
        result = suite.pytester.runpytest_subprocess(*by_name)
        result.assert_outcomes(passed=1)
        assert len(re.findall(r"^afml-cache: ", result.stdout.str(), re.M)) == 1
        assert not _isolated_dir(result).exists()
    assert suite.runs() == ["3", "3"]  # each session had its own empty cache
