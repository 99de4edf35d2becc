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
