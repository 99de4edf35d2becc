"""The `afml-cache` command: the demo's runs and verdicts, and its exit codes."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

import afml_cache
from afml_cache.cli import main
from afml_cache.demo import run_demo


@pytest.fixture
def restore_configuration(tmp_path):
    yield
    afml_cache.configure(directory=tmp_path / "after-demo")


def test_demo_computes_once_reads_from_cache_then_recomputes_what_changed(
    tmp_path, restore_configuration
):
    out = io.StringIO()
    assert run_demo(20_000, str(tmp_path / "demo-cache"), out) == 0
    text = out.getvalue()
    assert "UNEXPECTED" not in text
    assert (
        "run 3 recomputed cusum_filter, training_set, triple_barrier_labels: the steps that "
        "depend on the changed threshold" in text
    )
    # Every step ran three times: one miss, then hits, plus the recomputed three.
    stats = afml_cache.get_cache_stats()
    steps = {name.rsplit(".", 1)[1]: row for name, row in stats.items()}
    assert steps["rolling_features"]["cache_misses"] == 1
    assert steps["rolling_features"]["cache_hits"] == 2
    assert steps["cusum_filter"]["cache_misses"] == 2
    assert text.count("same digest (a hit)") == 2
    assert text.count("new digest (a miss)") == 4


def test_a_demo_in_a_directory_an_earlier_demo_used_starts_cold(tmp_path, restore_configuration):
    # Run 1 read every step from the earlier demo's entries, and the demo failed (exit 1)
    # saying run 3 recomputed nothing.
    directory = str(tmp_path / "demo-cache")
    assert run_demo(5_000, directory, io.StringIO()) == 0
    out = io.StringIO()
    assert run_demo(5_000, directory, out) == 0
    text = out.getvalue()
    assert "Removed 9 entries an earlier demo left here" in text
    assert "run 3 recomputed cusum_filter, training_set, triple_barrier_labels:" in text


def test_demo_rejects_too_few_rows(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--rows", "1"])
    assert exit.value.code == 2
    assert "--rows must be at least 5,000" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_demo_piped_into_a_closed_reader_exits_quietly():
    proc = subprocess.run(
        f"{sys.executable} -m afml_cache.cli demo --rows 20000 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.startswith("afml-cache ")
    assert "Traceback" not in proc.stderr


def test_demo_refuses_a_file_or_a_directory_that_holds_something_else(tmp_path, capsys):
    # It wrote its cache into any directory (next to the user's files), and with a file for
    # --dir it printed a nonsense table and exited 1 without saying why.
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("important")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for given, says in (
        (project, "is not an afml-cache directory"),
        (a_file, "is not a directory"),
    ):
        assert main(["demo", "--rows", "5000", "--dir", str(given)]) == 3
        assert says in capsys.readouterr().err
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]
