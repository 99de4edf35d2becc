"""``configure(verbose=)`` and ``AFML_CACHE_VERBOSE``: one line on stderr per miss (the function,
its compute time, the size stored) at 1, and per hit too at 2; quiet by default."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import afml_cache
from afml_cache import config, robust_cacheable
from afml_cache.cache import flush_writes
from afml_cache.report import format_size


@pytest.fixture(autouse=True)
def _settings_restored(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("AFML_CACHE_VERBOSE", raising=False)
    saved = config.settings()
    yield
    config.restore_settings(saved)


@robust_cacheable
def scaled(x: int) -> list[int]:
    return [x] * 3


@robust_cacheable
def noise(seed: int) -> np.ndarray:
    # 2 MB that do not compress: written behind, and the size on disk is about the raw size.
    return np.random.default_rng(seed).random(256 * 1024)


@robust_cacheable
def lock_for(x: int) -> threading.Lock:
    return threading.Lock()


def lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[afml_cache]")]


TIME = r"[\d.]+ (?:µs|ms|s)"
MISS = re.compile(rf"\[afml_cache\] miss (\S+): computed in {TIME}, (.+)")
HIT = re.compile(rf"\[afml_cache\] hit (\S+) in {TIME} \(computing took {TIME}\)")


def stored_size(fn: object) -> str:
    [entry] = fn.cache_entries()  # type: ignore[attr-defined]
    return f"stored {format_size(entry['size'])}"


def test_quiet_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert scaled(1) == scaled(1) == scaled.uncached(1)
    assert capsys.readouterr().err == ""


def test_verbose_1_writes_one_line_per_miss(capsys: pytest.CaptureFixture[str]) -> None:
    afml_cache.configure(verbose=1)
    assert scaled(2) == scaled(2) == scaled.uncached(2)
    [line] = lines(capsys.readouterr().err)
    found = MISS.fullmatch(line)
    assert found, line
    assert found.group(1) == scaled.__afml_cache__.name == "test_verbose.scaled"
    assert found.group(2) == stored_size(scaled)


def test_verbose_2_writes_hits_too(capsys: pytest.CaptureFixture[str]) -> None:
    afml_cache.configure(verbose=2)
    assert scaled(3) == scaled(3) == scaled.uncached(3)
    miss, hit = lines(capsys.readouterr().err)
    assert MISS.fullmatch(miss) and HIT.fullmatch(hit), (miss, hit)
    assert HIT.fullmatch(hit).group(1) == "test_verbose.scaled"  # type: ignore[union-attr]


def test_a_value_written_behind_reports_its_size_on_disk(
    capsys: pytest.CaptureFixture[str],
) -> None:
    afml_cache.configure(verbose=1)
    np.testing.assert_array_equal(noise(7), noise.uncached(7))
    flush_writes()
    [line] = lines(capsys.readouterr().err)
    found = MISS.fullmatch(line)
    assert found and found.group(2) == stored_size(noise), line
    assert found.group(2).endswith(" MB")


def test_a_result_that_cannot_be_stored_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    afml_cache.configure(verbose=1)
    with pytest.warns(UserWarning, match="returned but not cached"):
        lock_for(1)
    [line] = lines(capsys.readouterr().err)
    assert MISS.fullmatch(line) and line.endswith(", not stored"), line


def test_the_environment_sets_the_default_and_configure_overrides_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFML_CACHE_VERBOSE", "2")
    scaled(4)
    scaled(4)
    assert len(lines(capsys.readouterr().err)) == 2
    monkeypatch.setenv("AFML_CACHE_VERBOSE", "1")
    scaled(5)
    scaled(5)
    assert len(lines(capsys.readouterr().err)) == 1
    afml_cache.configure(verbose=0)
    scaled(6)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("level", [3, -1, 1.5, "1"])
def test_configure_refuses_other_levels(level: object) -> None:
    with pytest.raises(ValueError, match=r"verbose=.* is not a verbosity; use 0 \(quiet\), 1"):
        afml_cache.configure(verbose=level)  # type: ignore[arg-type]


def test_a_bad_environment_value_warns_once_and_stays_quiet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFML_CACHE_VERBOSE", "loud")
    with pytest.warns(UserWarning, match="AFML_CACHE_VERBOSE='loud' is not a verbosity"):
        scaled(7)
    scaled(7)  # no second warning (filterwarnings=error would fail the test)
    scaled(8)
    assert capsys.readouterr().err == ""
