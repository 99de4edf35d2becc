"""Large values and compression="max": stored and read in pieces, equal to what was stored,
little memory beyond the value, and damage found by the MAC before anything is unpickled."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from afml_cache import Cache

# Past the store's thresholds: buffers of 64 MiB and more are written in pieces, entry files of
# 16 MiB and more are read in pieces.
LARGE = 72 * 1024 * 1024


def ohlcv(n: int) -> pd.DataFrame:
    """One-minute bars: prices a random walk on a 0.25 tick, int64 volumes, a UTC index."""
    rng = np.random.default_rng(7)
    close = 4000.0 + 0.25 * np.cumsum(rng.choice([-2, -1, 0, 1, 2], n, p=[0.1, 0.2, 0.4, 0.2, 0.1]))
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = 0.25 * rng.geometric(0.5, (2, n))
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + wick[0],
            "low": np.minimum(open_, close) - wick[1],
            "close": close,
            "volume": np.round(rng.lognormal(6.0, 1.0, n)).astype(np.int64),
        },
        index=pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC"),
    )


def walk_with_noise(nbytes: int) -> np.ndarray:
    """A tick-grid random walk with a stretch of noise, so chunks are stored both ways."""
    rng = np.random.default_rng(3)
    n = nbytes // 8
    walk = 4000.0 + 0.25 * np.cumsum(rng.integers(-2, 3, n, dtype=np.int8), dtype=np.float64)
    walk[n // 3 : n // 3 + 300_000] = rng.standard_normal(300_000)
    return walk


def assert_same_frame(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    # DataFrame.equals: values, index and columns; assert_frame_equal takes a minute on these.
    assert got.equals(expected)
    assert list(got.dtypes) == list(expected.dtypes)
    assert (got.index.tz, got.index.freq) == (expected.index.tz, expected.index.freq)


def entry_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and p.stat().st_size >= LARGE // 100]


def test_max_packs_the_ohlcv_frame_below_045_of_raw_and_returns_it_exactly(tmp_path: Path) -> None:
    frame = ohlcv(200_000)
    raw = int(frame.memory_usage(index=True, deep=True).sum())
    cache = Cache(tmp_path, compression="max", memory_limit=1)
    cache.set("bars", frame)
    assert_same_frame(cache.get("bars"), frame)
    stored = sum(e["size"] for e in cache.entries())
    assert stored <= 0.45 * raw, f"max stored {stored / raw:.3f} of raw"


@pytest.mark.parametrize("compression", ["none", "default", "max"])
def test_a_large_array_round_trips_through_the_pieces(tmp_path: Path, compression: str) -> None:
    value = walk_with_noise(LARGE)
    writer = Cache(tmp_path, compression=compression, memory_limit=1)
    assert writer.set("walk", value)
    got = Cache(tmp_path, memory_limit=1).get("walk")
    assert got is not value and got.flags.writeable
    np.testing.assert_array_equal(got, value)
    assert got.dtype == value.dtype


def test_a_large_frame_round_trips_through_the_pieces(tmp_path: Path) -> None:
    frame = ohlcv(LARGE // 48 + 1)  # 48 bytes a row: several buffers, together past the threshold
    Cache(tmp_path, memory_limit=1).set("bars", frame)
    assert_same_frame(Cache(tmp_path, memory_limit=1).get("bars"), frame)


def chunk_table_at(path: Path) -> int:
    """Where the first buffer's chunk table starts in an entry file (see src/store/entry.rs)."""
    with path.open("rb") as f:
        prefix = f.read(40)
        header_len = struct.unpack_from("<I", prefix, 24)[0]
        f.seek(40 + header_len)
        stream_len = struct.unpack("<Q", f.read(8))[0]
    # Stream, the frame's length, then its 20-byte header.
    return 40 + header_len + 8 + stream_len + 8 + 20


@pytest.mark.parametrize(
    ("compression", "where", "why"),
    [
        ("none", "middle", "MAC does not match"),
        # The last byte before the MAC: in the last window the reader reads and checks.
        ("none", "last", "MAC does not match"),
        ("default", "last", ""),
        # Read before the MAC can be checked, to size the value's buffers.
        ("none", "chunk table", "chunk 0"),
        ("default", "chunk table", "chunk 0"),
    ],
)
def test_a_damaged_large_entry_is_a_miss_and_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, compression: str, where: str, why: str
) -> None:
    # Noise packs poorly, so the default level's entry too is large enough to be read in pieces.
    value = np.random.default_rng(5).standard_normal(LARGE // 8)
    Cache(tmp_path, compression=compression, memory_limit=1).set("walk", value)
    (path,) = entry_files(tmp_path)
    size = path.stat().st_size
    assert size >= 16 * 2**20
    # One bit: in the array's bytes, or the length bits of the first chunk's table entry.
    at = {"middle": size // 2, "last": size - 33, "chunk table": chunk_table_at(path) + 3}[where]
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x04]))
    with caplog.at_level(logging.WARNING, logger="afml_cache"):
        assert Cache(tmp_path, memory_limit=1).get("walk", "missed") == "missed"
    assert "removed unreadable cache entry" in caplog.text
    assert why in caplog.text
    assert not path.exists()


# Runs in a fresh interpreter so that its peak resident memory is the operation's own.
_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from afml_cache import Cache

    directory, step, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # Resident bytes now, after resetting the peak (VmHWM) to it: what peak() then reports is
    # the coming operation's own high-water mark, not an import's or the set-up's.
    def resident():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
    def peak():
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024
    cache = Cache(directory, compression="none", memory_limit=1)
    if step == "set":
        value = np.empty(nbytes // 8)
        for start in range(0, len(value), 1 << 20):  # filled in place: no temporary copies
            value[start : start + (1 << 20)] = np.arange(start, min(start + (1 << 20), len(value)))
        before = resident()
        cache.set("value", value)
    else:
        before = resident()
        value = cache.get("value")
        assert value[12345] == 12345.0
        before += value.nbytes
    print(json.dumps((peak() - before) / nbytes))
    """
)


@pytest.mark.parametrize("step", ["set", "get"])
def test_memory_beyond_a_large_value_is_a_fifth_of_it_at_most(tmp_path: Path, step: str) -> None:
    nbytes = 160 * 1024 * 1024

    def run(step: str) -> float:
        args = [sys.executable, "-c", _MEASURE, str(tmp_path), step, str(nbytes)]
        done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300)
        return float(json.loads(done.stdout))

    beyond = run("set")
    if step == "get":
        beyond = run("get")
    assert beyond <= 0.2, f"{step} used {beyond:.2f}x the value beyond it"
