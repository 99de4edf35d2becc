"""The `afml-cache` subcommands other than `demo`: stats, health, clear, prune, export, import,
report, and their exit codes, JSON output and errors.

Commands run in-process through `cli.main([...])` (output captured by capsys) and, where the
process boundary matters (exit status, the console script), as a real subprocess. Each test
builds its cache directory with real entries: decorated functions called with known arguments,
and `Cache.set`.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers.entry_bytes import locate

import afml_cache
from afml_cache import cli, commands
from afml_cache.cache import Cache
from afml_cache.monitoring import get_cache_health

CHILD_TIMEOUT_S = 300


@pytest.fixture(autouse=True)
def restore_configuration() -> Iterator[None]:
    """The commands point the decorators' configuration at their --dir; put it back."""
    previous = afml_cache.CACHE_DIRS["base"]
    yield
    afml_cache.configure(directory=previous)


class Filled:
    """A cache directory holding: 2 entries of ``double`` (3 calls: 1 hit, 2 misses), 1 entry of
    ``triple`` (tagged ``features``; 1 call), and 2 plain entries in the ``default`` namespace
    (``"plain"`` tagged ``features``, ``"other"`` untagged)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cache = Cache(directory)

        @afml_cache.robust_cacheable(cache=self.cache)
        def double(x: int) -> int:
            return 2 * x

        @afml_cache.robust_cacheable(cache=self.cache, tags=("features",))
        def triple(x: int) -> int:
            return 3 * x

        double(1), double(1), double(2), triple(5)
        self.cache.set("plain", [1, 2, 3], tags=["features"])
        self.cache.set("other", {"a": 1})
        self.double, self.triple = double, triple
        self.double_name = double.__afml_cache__.name
        self.triple_name = triple.__afml_cache__.name

    def entries(self) -> set[tuple[str, str]]:
        """(namespace, digest) of every entry on disk now."""
        return {(e.namespace, e.digest) for e in self.cache._store.scan(None)}

    def entries_of(self, namespace: str) -> set[tuple[str, str]]:
        return {(ns, digest) for ns, digest in self.entries() if ns == namespace}

    def tagged(self, tag: str) -> set[tuple[str, str]]:
        scanned = self.cache._store.scan(None)
        return {(e.namespace, e.digest) for e in scanned if tag in e.tags}


@pytest.fixture
def filled(tmp_path: Path) -> Filled:
    return Filled(tmp_path / "cache")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)  # the whole of stdout is one JSON document


def run_child(*argv: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "afml_cache.cli", *argv],
        capture_output=True,
        text=True,
        stdin=stdin,
        timeout=CHILD_TIMEOUT_S,
    )


# --- stats ------------------------------------------------------------------------------------


def test_stats_json_has_every_function_and_the_directory_counters(filled, capsys):
    code, document = run_json(capsys, "stats", "--dir", str(filled.directory))
    assert code == 0
    assert document["directory"] == str(filled.directory)
    scanned = filled.cache._store.scan(None)
    assert document["store"]["count"] == 5
    assert document["store"]["bytes"] == sum(e.size for e in scanned)
    assert set(document["functions"]) == {filled.double_name, filled.triple_name}
    double = document["functions"][filled.double_name]
    assert (double["total_calls"], double["cache_hits"], double["cache_misses"]) == (3, 1, 2)
    assert double["hit_rate"] == pytest.approx(1 / 3)
    size = sum(e.size for e in scanned if e.namespace == filled.double_name)
    assert double["cache_size_mb"] == size / 2**20
    # The latency percentiles are the monitor's, read from the same shared histograms.
    expected = afml_cache.get_cache_stats(filled.cache)[filled.double_name]
    for field in ("hit_latency_p50", "miss_latency_p50", "miss_latency_p99"):
        assert double[field] == expected[field]
        assert double[field] is not None
    triple = document["functions"][filled.triple_name]
    assert (triple["total_calls"], triple["cache_hits"], triple["hit_latency_p50"]) == (1, 0, None)


def test_stats_text_shows_a_row_per_function_and_the_totals(filled, capsys):
    code, out, err = run(capsys, "stats", "--dir", str(filled.directory))
    assert (code, err) == (0, "")
    assert f"Cache directory: {filled.directory}" in out
    assert "5 entries" in out
    row = next(line for line in out.splitlines() if line.startswith(filled.double_name))
    assert row.split()[1:5] == ["3", "1", "2", "33.3%"]
    assert "2 functions, 4 calls, hit rate 25.0%" in out


def test_stats_of_a_directory_without_calls_says_so(tmp_path, capsys):
    Cache(tmp_path / "cache").set("k", 1)
    code, out, _ = run(capsys, "stats", "--dir", str(tmp_path / "cache"))
    assert code == 0
    assert "No cached function has been called with this cache directory yet." in out


def test_a_missing_directory_exits_3_and_is_not_created(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, out, err = run(capsys, "stats", "--dir", str(missing))
    assert (code, out) == (3, "")
    assert f"no cache at {missing}: the directory does not exist" in err
    assert not missing.exists()
    code, document = run_json(capsys, "health", "--dir", str(missing))
    assert code == 3
    assert document["exit_code"] == 3
    assert document["error"].startswith(f"no cache at {missing}")


def test_a_directory_that_is_not_a_cache_is_left_untouched(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "clear", "--dir", str(tmp_path), "--yes")
    assert code == 3
    assert f"{tmp_path} is not an afml-cache directory (it has no mac.key)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_control_characters_in_names_reach_the_terminal_escaped(tmp_path, capsys):
    # A script path or tag holding ESC (`\x1b[2J` clears the screen) went out raw.
    directory = tmp_path / "cache"
    name = "__main__[/tmp/\x1b[2Jrun.py].f"
    cache = Cache(directory)
    cache.namespaced(name).set("k", 1)
    cache.record_call(name, False, 0.1, 0.0, 0.1)
    code, out, _ = run(capsys, "stats", "--dir", str(directory))
    assert code == 0
    assert "\x1b" not in out and "/tmp/\\x1b[2Jrun.py" in out


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("0", "size must be positive, got '0'"),
        # A negative size was "not a size", and every message repeated the value given.
        ("-5GB", "size must be positive, got '-5GB'"),
        ("5XB", "size='5XB' is not a size; write it like 500MB"),
    ],
)
def test_a_bad_size_says_what_is_wrong_with_it(tmp_path, capsys, given, said):
    with pytest.raises(SystemExit):
        run(capsys, "prune", "--dir", str(tmp_path), f"--max-size={given}")
    err = capsys.readouterr().err
    assert said in err
    assert "(given" not in err


# --- health -----------------------------------------------------------------------------------


def test_health_of_a_sound_cache_exits_0_with_the_report(filled, capsys):
    code, out, _ = run(capsys, "health", "--dir", str(filled.directory))
    assert code == 0
    assert "Verified every entry (5): no problems." in out
    assert "CACHE HEALTH REPORT" in out
    code, document = run_json(capsys, "health", "--dir", str(filled.directory))
    assert code == 0
    assert (document["problems"], document["fixed"], document["entries"]) == ([], 0, 5)
    report = document["report"]
    assert (report["functions"], report["total_calls"], report["cache_hits"]) == (2, 4, 1)
    # The command points the configuration at --dir: the same report, as names.
    health = get_cache_health()
    assert report["top_performers"] == [r["function_name"] for r in health.top_performers]
    assert report["worst_performers"] == [r["function_name"] for r in health.worst_performers]
    assert report["recommendations"] == health.recommendations
    assert {*report["top_performers"], *report["worst_performers"]} == {
        filled.double_name,
        filled.triple_name,
    }


@pytest.mark.parametrize("size", ["small", "large"])  # a packed record, a file of its own
def test_health_reports_a_damaged_entry_and_fix_removes_it(filled, capsys, size):
    filled.cache.set("victim", "v" if size == "small" else "v" * 5_000)
    victim = locate(filled.directory, "victim")
    assert victim.packed is (size == "small")
    victim.flip(-1)  # the last byte of its MAC

    code, document = run_json(capsys, "health", "--dir", str(filled.directory))
    assert code == 1
    assert [(p["path"], p["fixed"]) for p in document["problems"]] == [(str(victim.path), False)]
    assert locate(filled.directory, "victim") == victim
    # Its advice starts with the fix, not with "the cache looks healthy".
    advice = document["report"]["recommendations"]
    assert advice[0] == "Run `afml-cache health --fix`: 1 problem(s) found in the entries."
    assert not any("healthy" in line for line in advice)

    code, out, _ = run(capsys, "health", "--dir", str(filled.directory), "--fix")
    assert code == 1  # problems were found, even though they are fixed now
    assert f"fixed: {victim.path}" in out
    assert locate(filled.directory, "victim") is None
    assert victim.packed or not victim.path.exists()

    code, document = run_json(capsys, "health", "--dir", str(filled.directory))
    assert (code, document["problems"], document["entries"]) == (0, [], 5)


# --- clear ------------------------------------------------------------------------------------


def test_clear_function_removes_exactly_that_functions_entries(filled, capsys):
    before = filled.entries()
    doubles = filled.entries_of(filled.double_name)
    assert len(doubles) == 2
    code, document = run_json(
        capsys, "clear", "--dir", str(filled.directory), "--function", filled.double_name
    )
    assert code == 0
    assert (document["entries_removed"], document["errors"]) == (2, [])
    assert filled.entries() == before - doubles


def test_clear_tag_removes_the_tagged_entries_of_every_namespace(filled, capsys):
    before = filled.entries()
    tagged = filled.tagged("features")
    assert {ns for ns, _ in tagged} == {filled.triple_name, "default"}
    code, out, _ = run(capsys, "clear", "--dir", str(filled.directory), "--tag", "features")
    assert code == 0
    assert out.startswith("Removed 2 entries")
    assert filled.entries() == before - tagged


def test_clear_older_than_removes_the_entries_created_before_the_cutoff(
    filled, capsys, monkeypatch
):
    created = {(e.namespace, e.digest): e.created for e in filled.cache._store.scan(None)}
    ordered = sorted(created, key=created.get)
    # "Now" is 1 h after a moment between the third and fourth entries' creation: the first
    # three are older than 1 h, the last two are not.
    middle = (created[ordered[2]] + created[ordered[3]]) / 2
    assert created[ordered[2]] < middle < created[ordered[3]]
    monkeypatch.setattr(commands, "time", types.SimpleNamespace(time=lambda: middle + 3600))
    code, document = run_json(capsys, "clear", "--dir", str(filled.directory), "--older-than", "1h")
    assert (code, document["entries_removed"]) == (0, 3)
    assert filled.entries() == set(ordered[3:])


def test_clear_filters_combine(filled, capsys):
    before = filled.entries()
    triples = filled.entries_of(filled.triple_name)
    code, document = run_json(
        capsys,
        "clear",
        "--dir",
        str(filled.directory),
        "--tag",
        "features",
        "--function",
        filled.triple_name,
    )
    assert (code, document["entries_removed"]) == (0, 1)
    assert filled.entries() == before - triples


def test_clear_of_an_unknown_function_is_a_usage_error_with_a_suggestion(filled, capsys):
    short = filled.double_name.rsplit(".", 1)[1]
    code, _, err = run(capsys, "clear", "--dir", str(filled.directory), "--function", short)
    assert code == 2
    assert f"no cached function is named {short!r}" in err
    assert f"did you mean {filled.double_name}?" in err
    # A full name missing a letter.
    code, _, err = run(capsys, "clear", "--dir", str(filled.directory), "--function",
                       filled.double_name[:-1])  # fmt: skip
    assert code == 2
    assert f"did you mean {filled.double_name}" in err  # the closest first
    assert len(filled.entries()) == 5


def test_clear_everything_needs_yes_when_not_interactive(filled):
    refused = run_child("clear", "--dir", str(filled.directory))
    assert refused.returncode == 2
    assert "removing every entry needs --yes when not run from a terminal" in refused.stderr
    assert refused.stdout == ""
    assert len(filled.entries()) == 5

    done = run_child("clear", "--dir", str(filled.directory), "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entries_removed"] == 5
    assert filled.entries() == set()
    # Like clear_afml_cache(): the statistics go too.
    counts = {raw.namespace: raw.calls for raw in filled.cache._store.function_stats()}
    assert counts == {filled.double_name: 0, filled.triple_name: 0, "default": 0}


def without_overriding_permissions(*argv: str) -> subprocess.CompletedProcess:
    """The command in a child that respects file permissions even as root (setpriv drops the
    capabilities that bypass them)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a step without its permission overrides")
    drop = "-dac_override,-dac_read_search,-fowner"
    command = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={drop}"]
    return subprocess.run(
        [*command, sys.executable, "-m", "afml_cache.cli", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=CHILD_TIMEOUT_S,
    )


def test_a_cache_the_user_may_not_change_or_read_is_said_so(filled, tmp_path):
    # clear --yes on a read-only cache said it removed 0 entries (and their bytes) and exited 0,
    # while all was still there; every command on a directory it may not read showed a
    # traceback (PermissionError).
    read_only = tmp_path / "read-only"
    shutil.copytree(filled.directory, read_only)
    subprocess.run(["chmod", "-R", "a-w", str(read_only)], check=True)
    try:
        done = without_overriding_permissions("clear", "--dir", str(read_only), "--yes", "--json")
        report = json.loads(done.stdout)
        assert (done.returncode, report["entries_removed"], report["bytes_removed"]) == (1, 0, 0)
        assert report["errors"] == [
            f"could not remove 5 entries from {read_only} (do you have write permission there?)"
        ]
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(read_only)], check=True)
    assert len(Cache(read_only).scan()) == 5
    read_only.chmod(0o000)
    try:
        refused = without_overriding_permissions("stats", "--dir", str(read_only))
    finally:
        read_only.chmod(0o755)
    assert refused.returncode == 3 and "Traceback" not in refused.stderr
    assert f"cannot read the cache directory {read_only} (Permission denied)" in refused.stderr


def test_clear_everything_asks_on_a_terminal_and_keeps_all_unless_confirmed(
    filled, capsys, monkeypatch
):
    class Terminal:
        def __init__(self, answer: str) -> None:
            self.answer = answer

        def isatty(self) -> bool:
            return True

        def readline(self) -> str:
            return self.answer

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out, err = run(capsys, "clear", "--dir", str(filled.directory))
    assert (code, out) == (1, "")
    assert "Remove all 5 entries" in err and "not confirmed; nothing was removed" in err
    assert len(filled.entries()) == 5

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, out, _ = run(capsys, "clear", "--dir", str(filled.directory))
    assert code == 0
    assert out.startswith("Removed 5 entries")
    assert filled.entries() == set()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("1.5h", 5400)],
)
def test_durations(text, seconds):
    assert cli._duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "30x", "d", "-1d", "0s", "1 day"])
def test_a_bad_duration_is_a_usage_error_naming_the_forms(filled, capsys, text):
    with pytest.raises(SystemExit) as exited:
        cli.main(["clear", "--dir", str(filled.directory), f"--older-than={text}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --older-than" in err
    assert "30d, 12h, 90m, 3600s" in err or "more than zero" in err
    assert len(filled.entries()) == 5


# --- prune ------------------------------------------------------------------------------------


def test_prune_removes_least_recently_used_entries_until_the_cache_fits(tmp_path, capsys):
    cache = Cache(tmp_path / "cache")
    for name in ("first", "second", "third"):
        cache.set(name, name * 1000)
    scanned = sorted(cache._store.scan(None), key=lambda e: e.created)
    total = sum(e.size for e in scanned)
    limit = str(total - 1)  # one byte too many: the oldest entry must go, and only it

    code, document = run_json(
        capsys, "prune", "--dir", str(tmp_path / "cache"), "--max-size", limit, "--dry-run"
    )
    assert (code, document["entries_removed"], document["dry_run"]) == (0, 1, True)
    assert len(cache._store.scan(None)) == 3

    code, document = run_json(
        capsys, "prune", "--dir", str(tmp_path / "cache"), "--max-size", limit
    )
    assert code == 0
    assert document["entries_removed"] == 1
    assert document["reasons"] == {"over_max_size": 1}
    assert document["bytes_after"] == total - scanned[0].size
    assert {e.digest for e in cache._store.scan(None)} == {e.digest for e in scanned[1:]}


def test_prune_needs_a_limit_and_sizes_must_be_sizes(filled, capsys):
    code, _, err = run(capsys, "prune", "--dir", str(filled.directory))
    assert code == 2
    assert "--max-size SIZE and/or --max-age AGE" in err
    with pytest.raises(SystemExit) as exited:
        cli.main(["prune", "--dir", str(filled.directory), "--max-size", "lots"])
    assert exited.value.code == 2
    assert "'lots' is not a size; write it like 500MB, 2GB" in capsys.readouterr().err


# --- export and import ------------------------------------------------------------------------


def _described(cache: Cache) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {
        (e.namespace, e.digest): (e.tags, e.metadata, e.value_size, e.compute_time)
        for e in cache._store.scan(None)
    }


def test_export_then_import_into_a_new_directory_gives_equal_entries(filled, tmp_path, capsys):
    archive = tmp_path / "cache.tar"
    code, document = run_json(capsys, "export", str(archive), "--dir", str(filled.directory))
    assert (code, document["entries"]) == (0, 5)
    assert archive.is_file()

    target = tmp_path / "elsewhere" / "cache"
    code, out, _ = run(capsys, "import", str(archive), "--dir", str(target))
    assert code == 0
    assert out == f"Imported 5 entries from {archive} into {target}.\n"
    copy = Cache(target)
    assert _described(copy) == _described(filled.cache)
    for namespace, digest in filled.entries():
        found, value, _ = copy.namespaced(namespace).by_digest.lookup(digest)
        assert found
        assert value == filled.cache.namespaced(namespace).by_digest.lookup(digest)[1]
    # A decorated function pointed at the imported cache hits.
    again = afml_cache.robust_cacheable(cache=copy)(filled.double.__afml_cache__.fn)
    assert again(2) == 4
    assert again.cache_info()["cache_hits"] == 1


def test_export_of_one_function(filled, tmp_path, capsys):
    archive = tmp_path / "double.tar"
    code, document = run_json(
        capsys,
        "export",
        str(archive),
        "--dir",
        str(filled.directory),
        "--function",
        filled.double_name,
    )
    assert (code, document["entries"]) == (0, 2)
    code, _ = run_json(capsys, "import", str(archive), "--dir", str(tmp_path / "copy"))
    assert code == 0
    copied = Cache(tmp_path / "copy")._store.scan(None)
    assert {(e.namespace, e.digest) for e in copied} == filled.entries_of(filled.double_name)


def test_import_of_something_else_fails_clearly(filled, tmp_path, capsys):
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar archive at all" * 100)
    code, _, err = run(capsys, "import", str(bogus), "--dir", str(filled.directory))
    assert code == 1
    assert f"could not import {bogus}" in err
    code, _, err = run(
        capsys, "import", str(tmp_path / "absent.tar"), "--dir", str(filled.directory)
    )
    assert code == 2
    assert "is not a file" in err
    assert len(filled.entries()) == 5
    # Into a directory that was not there: a failed import leaves none behind.
    fresh = tmp_path / "fresh"
    code, _, err = run(capsys, "import", str(bogus), "--dir", str(fresh))
    assert (code, fresh.exists()) == (1, False)


# --- report -----------------------------------------------------------------------------------


def test_report_writes_html_with_charts_and_csv_with_a_row_per_function(filled, tmp_path, capsys):
    page = tmp_path / "report.html"
    code, out, _ = run(capsys, "report", str(page), "--dir", str(filled.directory))
    assert code == 0
    assert out == f"Wrote the report of {filled.directory} to {page}.\n"
    text = page.read_text(encoding="utf-8")
    assert "<svg" in text
    assert html.escape(filled.double_name) in text

    table = tmp_path / "report.csv"
    code, document = run_json(capsys, "report", str(table), "--dir", str(filled.directory))
    assert (code, document["file"]) == (0, str(table))
    frame = pd.read_csv(table)
    assert sorted(frame["function"]) == sorted([filled.double_name, filled.triple_name])
    assert frame.set_index("function").loc[filled.double_name, "calls"] == 3


def test_report_with_an_unknown_suffix_is_a_usage_error(filled, tmp_path, capsys):
    code, _, err = run(capsys, "report", str(tmp_path / "r.txt"), "--dir", str(filled.directory))
    assert code == 2
    assert "name it FILE.html or FILE.csv" in err
    assert not (tmp_path / "r.txt").exists()


# --- the process: exit codes, help, interruption ----------------------------------------------


def test_help_lists_commands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in ("stats", "health", "clear", "prune", "export", "import", "report", "serve"):
        assert f"    {command} " in out
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in out


@pytest.mark.parametrize("command", ["stats", "health", "clear", "prune", "export"])
def test_every_subcommand_has_help_with_dir_and_examples(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--dir PATH" in out
    assert "examples:\n  afml-cache " + command in out


def test_keyboard_interrupt_exits_130(filled, capsys, monkeypatch):
    def interrupted(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run_stats", interrupted)
    code, out, err = run(capsys, "stats", "--dir", str(filled.directory))
    assert (code, out) == (130, "")
    assert "afml-cache stats: interrupted" in err


def test_the_command_in_a_subprocess(filled):
    done = run_child("stats", "--dir", str(filled.directory), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["functions"][filled.double_name]["cache_hits"] == 1
    missing = run_child("health", "--dir", str(filled.directory / "missing"))
    assert (missing.returncode, missing.stdout) == (3, "")
    usage = run_child("clear", "--dir", str(filled.directory), "--older-than", "soon")
    assert usage.returncode == 2
    assert "'soon' is not a duration" in usage.stderr


@pytest.mark.skipif(shutil.which("afml-cache") is None, reason="console script not installed")
def test_the_console_script(filled):
    done = subprocess.run(
        ["afml-cache", "stats", "--dir", str(filled.directory), "--json"],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["store"]["count"] == 5


# --- a function's entries that live elsewhere, and entries without calls ----------------------


def test_a_backtest_functions_runs_are_its_entries_for_stats_clear_and_export(
    cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its runs live in the backtests' namespaces: stats showed the function at 0 MB, and
    # clear/export --function with the name stats shows removed and exported nothing.
    import numpy as np

    @afml_cache.cached_backtest("momentum")
    def run_momentum(data: pd.DataFrame, params: dict[str, int]) -> Any:
        equity = (1 + data["close"].pct_change().fillna(0) * params["k"]).cumprod()
        return {"sharpe_ratio": float(params["k"])}, pd.DataFrame({"pnl": [1.0]}), equity

    index = pd.date_range("2024-01-01", periods=5_000, freq="1min")
    data = pd.DataFrame({"close": np.linspace(1, 2, 5_000)}, index=index)
    for k in (1, 2, 3):
        run_momentum(data, {"k": k})
    afml_cache.flush_writes()
    cache = Cache(cache_dir)
    stored = sum(e.size for e in cache.scan())
    code, document = run_json(capsys, "stats", "--dir", str(cache_dir))
    assert code == 0
    (name,) = document["functions"]
    assert name.endswith(".run_momentum")
    assert document["functions"][name]["cache_size_mb"] * 2**20 == pytest.approx(stored)
    archive = tmp_path / "runs.tar"
    code, document = run_json(
        capsys, "export", "--dir", str(cache_dir), str(archive), "--function", name
    )
    assert (code, document["entries"]) == (0, 6)  # three runs and their curves
    code, document = run_json(capsys, "clear", "--dir", str(cache_dir), "--function", name)
    assert (code, document["entries_removed"]) == (0, 6)
    assert cache.scan() == []
    elsewhere = tmp_path / "elsewhere"
    assert Cache(elsewhere).import_(archive) == 6
    code, document = run_json(capsys, "stats", "--dir", str(elsewhere))
    assert list(document["functions"]) == [name]  # imported, never called there
    assert document["functions"][name]["cache_size_mb"] * 2**20 == pytest.approx(stored)


def test_stats_lists_the_functions_of_an_imported_cache(
    filled: Filled, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Imported entries come without calls: stats listed no function, so a user could not find
    # the names --function takes.
    archive = tmp_path / "team.tar"
    filled.cache.export(archive, every_namespace=True)
    imported = tmp_path / "imported"
    Cache(imported).import_(archive)
    code, document = run_json(capsys, "stats", "--dir", str(imported))
    assert code == 0
    functions = document["functions"]
    assert {filled.double_name, filled.triple_name} <= set(functions)
    assert functions[filled.double_name]["total_calls"] == 0
    assert functions[filled.double_name]["cache_size_mb"] > 0
