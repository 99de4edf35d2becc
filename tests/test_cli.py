"""The `afml-cache` command: the demo's verdicts and its exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from afml_cache.cli import main


def test_demo_shows_hits_for_equal_content_and_misses_for_changes(capsys):
    assert main(["demo", "--rows", "5000"]) == 0
    out = capsys.readouterr().out
    assert "a copy" in out and "UNEXPECTED" not in out
    assert out.count("same digest (a hit)") == 2
    assert out.count("new digest (a miss)") == 4


def test_demo_rejects_too_few_rows(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["demo", "--rows", "1"])
    assert exit.value.code == 2
    assert "--rows must be at least 2" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_demo_piped_into_a_closed_reader_exits_quietly():
    proc = subprocess.run(
        f"{sys.executable} -m afml_cache.cli demo --rows 5000 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("afml-cache ")
    assert "Traceback" not in proc.stderr
