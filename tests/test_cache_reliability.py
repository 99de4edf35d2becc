"""Reliability of the store under crashes, corruption, concurrency and failing writes.

Other processes are real interpreters (``sys.executable``) running tests/helpers/cache_worker.py,
whose values describe themselves so that any value read back can be checked against what was
written for its key.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.detonator import DETONATIONS, Detonator
from helpers.entry_bytes import bytes_on_disk, stored, temp_files

from afml_cache import Cache, StoreError, fingerprint

WORKER = Path(__file__).parent / "helpers" / "cache_worker.py"
_spec = importlib.util.spec_from_file_location("afml_cache_test_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

MISSING = object()
PREFIX_LEN = 40  # magic + version, hits, last access, header length, buffer count, payload length
COUNTERS = range(8, 24)  # hits and last access: outside the MAC by design
MAC_LEN = 32


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"the worker printed nothing within {timeout}s")
    return proc.stdout.readline().strip()


def start_worker(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- a writer killed at any instant -------------------------------------------------------------

KEYS, VERSIONS = 6, 3


def assert_a_written_value(k: int, got) -> None:
    assert isinstance(got, tuple) and len(got) == 3, f"key {k}: {type(got).__name__}"
    got_k, version, data = got
    assert got_k == k, f"key {k} holds the value of key {got_k}"
    assert 0 <= version < VERSIONS
    expected = worker.versioned_value(k, version)[2]
    assert data.dtype == expected.dtype and data.shape == expected.shape, f"key {k}: cut short"
    assert np.array_equal(data, expected), (
        f"key {k}: version {version} differs from what was written"
    )


def test_a_writer_killed_at_random_moments_never_leaves_a_partial_entry(tmp_path):
    directory = tmp_path / "cache"
    Cache(directory)
    rng = random.Random(20240601)
    long_lived_reader = Cache(directory)  # keeps memory copies across kills
    seen = 0
    for _ in range(30):
        writer = start_worker("writer", directory, KEYS, VERSIONS)
        try:
            assert read_line(writer, timeout=60) == "ready"
            deadline = time.monotonic() + rng.uniform(0, 0.15)
            while time.monotonic() < deadline:  # read while it writes, until the kill
                k = rng.randrange(KEYS)
                got = Cache(directory).get(worker.writer_key(k), MISSING)
                if got is not MISSING:
                    assert_a_written_value(k, got)
        finally:
            writer.send_signal(signal.SIGKILL)
            _, err = writer.communicate(timeout=60)
        assert writer.returncode == -signal.SIGKILL, f"the writer died on its own:\n{err}"
        for reader in (long_lived_reader, Cache(directory)):
            for k in range(KEYS):
                got = reader.get(worker.writer_key(k), MISSING)
                if got is not MISSING:
                    seen += 1
                    assert_a_written_value(k, got)
    assert seen > 0, "no write ever completed: the test exercised nothing"
    leftovers = temp_files(directory)
    problems = Cache(directory).check(fix=True)
    assert {p["path"] for p in problems} == {str(p) for p in leftovers}, (
        "check found problems other than the killed writers' temp files: "
        f"{[p for p in problems if not p['path'].endswith('.tmp')]}"
    )
    assert all(p["fixed"] for p in problems)
    assert temp_files(directory) == []
    assert Cache(directory).check() == []
    assert Cache(directory).volume() == bytes_on_disk(directory)
    for k in range(KEYS):
        got = Cache(directory).get(worker.writer_key(k), MISSING)
        if got is not MISSING:
            assert_a_written_value(k, got)


def is_an_overwritten_value(got: object, padding: int) -> bool:
    i = got[0] if padding and isinstance(got, tuple) else got
    return isinstance(i, int) and -1 <= i < 3000 and got == worker.overwritten_value(i, padding)


@pytest.mark.parametrize("padding", [0, 5_000], ids=["packed", "file"])
def test_an_entry_being_overwritten_reads_as_the_old_or_the_new_value_never_a_miss(
    tmp_path, padding
):
    # Writes replace an entry by an atomic rename (a file) or an append (a packed record), so
    # while another process overwrites a key that always has an entry, every read finds one: the
    # old value or the new one.
    directory = tmp_path / "cache"
    Cache(directory).set("always", worker.overwritten_value(-1, padding))
    reader = Cache(directory, memory_limit=1)  # nothing fits in memory: every get reads the disk
    overwriter = start_worker("overwrite", directory, 3000, padding)
    reads, misses, wrong = 0, 0, []
    try:
        assert read_line(overwriter, timeout=60) == "ready"
        while overwriter.poll() is None:
            got = reader.get("always", MISSING)
            reads += 1
            if got is MISSING:
                misses += 1
            elif not is_an_overwritten_value(got, padding):
                wrong.append(got)
    finally:
        _, err = overwriter.communicate(timeout=120)
    assert overwriter.returncode == 0, err
    assert wrong == []
    assert misses == 0, f"{misses} of {reads} reads missed an entry that always existed"
    assert reader.get("always") == worker.overwritten_value(2999, padding)


# --- corrupt entries are misses, removed, logged, and never unpickled ---------------------------


def layout(data: bytes) -> dict[str, range]:
    """Byte ranges of an entry's parts (see src/store/entry.rs)."""
    header_end = PREFIX_LEN + int.from_bytes(data[24:28], "little")
    return {
        "prefix": range(0, 8),  # magic and format version
        "lengths": range(24, PREFIX_LEN),  # header length, buffer count, payload length
        "header": range(PREFIX_LEN, header_end),
        "stream": range(header_end, header_end + 200),
        "buffers": range(header_end + 200, len(data) - MAC_LEN),
        "mac": range(len(data) - MAC_LEN, len(data)),
    }


def flip(position_in: str, seed: int):
    def corrupt(data: bytes) -> bytes:
        positions = layout(data)[position_in]
        rng = random.Random(seed)
        bad = bytearray(data)
        for _ in range(1 + seed % 3):
            bad[rng.choice(positions)] ^= 1 << rng.randrange(8)
        return bytes(bad)

    return corrupt


def truncate(where):
    def corrupt(data: bytes) -> bytes:
        return data[: where(data)]

    return corrupt


CORRUPTIONS = {
    **{
        f"flip {part} #{seed}": flip(part, seed)
        for part in ("prefix", "lengths")
        for seed in (1, 2)
    },
    **{
        f"flip {part} #{seed}": flip(part, seed)
        for part in ("header", "stream", "buffers", "mac")
        for seed in range(1, 5)
    },
    "format version + 1": lambda d: (
        d[:6] + (int.from_bytes(d[6:8], "little") + 1).to_bytes(2, "little") + d[8:]
    ),
    "empty file": truncate(lambda d: 0),
    "one byte": truncate(lambda d: 1),
    "prefix only": truncate(lambda d: PREFIX_LEN),
    "cut in the header": truncate(lambda d: layout(d)["header"].start + 5),
    "cut at the payload": truncate(lambda d: layout(d)["stream"].start),
    "cut in the buffers": truncate(lambda d: len(d) // 2),
    "MAC missing": truncate(lambda d: len(d) - MAC_LEN),
    "last byte missing": truncate(lambda d: len(d) - 1),
    **{
        f"cut at random #{seed}": truncate(
            lambda d, seed=seed: random.Random(seed).randrange(len(d))
        )
        for seed in range(3)
    },
    "a junk byte appended": lambda d: d + b"\x00",
    "junk appended": lambda d: d + bytes(range(256)) * 4,
    "payload length bumped": lambda d: (
        d[:32] + (int.from_bytes(d[32:40], "little") + 1).to_bytes(8, "little") + d[40:]
    ),
    "header length huge": lambda d: d[:24] + (2**32 - 1).to_bytes(4, "little") + d[28:],
    "zeroed": lambda d: bytes(len(d)),
}


def store_detonator(directory: Path, marker: Path, key: str = "trap") -> Path:
    value = {"trap": Detonator(str(marker)), "data": np.arange(100_000, dtype=np.float64)}
    cache = Cache(directory)
    cache.set(key, value)
    cache.set("bystander", np.arange(10))
    (path,) = [Path(e["path"]) for e in cache.entries() if e["key"] == key]
    return path


def test_the_marker_works_on_an_intact_entry(tmp_path):
    marker = tmp_path / "unpickled"
    store_detonator(tmp_path / "cache", marker)
    got = Cache(tmp_path / "cache").get("trap")
    assert marker.exists(), "the marker did not detect an unpickle: the other tests prove nothing"
    assert isinstance(got["trap"], Detonator)
    np.testing.assert_array_equal(got["data"], np.arange(100_000, dtype=np.float64))


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_entry_is_a_logged_miss_removed_and_never_unpickled(tmp_path, caplog, corruption):
    directory = tmp_path / "cache"
    marker = tmp_path / "unpickled"
    path = store_detonator(directory, marker)
    data = path.read_bytes()
    bad = CORRUPTIONS[corruption](data)
    assert bad != data
    path.write_bytes(bad)
    reader = Cache(directory)
    with caplog.at_level(logging.WARNING, logger="afml_cache"):
        got = reader.get("trap", MISSING)
    assert got is MISSING
    assert not marker.exists() and str(marker) not in DETONATIONS, "a corrupt entry was unpickled"
    assert not path.exists(), "the corrupt entry was not removed"
    records = [r for r in caplog.records if r.name == "afml_cache" and r.levelno == logging.WARNING]
    assert len(records) == 1, caplog.text
    assert str(path) in records[0].getMessage()
    assert reader.get("trap", MISSING) is MISSING
    np.testing.assert_array_equal(reader.get("bystander"), np.arange(10))
    assert reader.check() == []
    assert reader.stats()["count"] == 1
    # The removal subtracts the corrupt file's length, which need not be the length counted when
    # it was written; the shared sizes are a hint that check(fix=True) rebuilds from the files.
    reader.check(fix=True)
    assert reader.volume() == bytes_on_disk(directory)


def test_an_entry_sealed_with_another_cache_key_is_a_miss_and_never_unpickled(tmp_path, caplog):
    marker = tmp_path / "unpickled"
    foreign = store_detonator(tmp_path / "foreign", marker)
    ours = Cache(tmp_path / "ours")
    ours.set("bystander", 1)
    digest = fingerprint("trap")
    target = tmp_path / "ours" / "entries" / "default" / digest[:2] / f"{digest}.afc"
    assert foreign.relative_to(tmp_path / "foreign") == target.relative_to(tmp_path / "ours")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(foreign.read_bytes())
    with caplog.at_level(logging.WARNING, logger="afml_cache"):
        assert Cache(tmp_path / "ours").get("trap", MISSING) is MISSING
    assert not marker.exists() and str(marker) not in DETONATIONS
    assert not target.exists()
    assert "MAC" in caplog.text


@pytest.mark.parametrize("position", list(COUNTERS))
def test_the_access_counters_are_outside_the_mac(tmp_path, position):
    # They only steer eviction, so a torn or odd counter must not turn a good entry into a miss.
    marker = tmp_path / "unpickled"
    path = store_detonator(tmp_path / "cache", marker)
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))
    got = Cache(tmp_path / "cache").get("trap")
    np.testing.assert_array_equal(got["data"], np.arange(100_000, dtype=np.float64))


# --- many processes at once ---------------------------------------------------------------------

WORKERS, OPERATIONS, KEY_SPACE, SIZE_LIMIT = 8, 1000, 12, 200_000
LARGEST_ENTRY = 20_000 + 2_000  # the largest value plus pickle and entry overhead


def test_many_processes_mixing_gets_sets_and_deletes_on_a_tiny_cache(tmp_path):
    directory = tmp_path / "cache"
    Cache(directory, size_limit=SIZE_LIMIT)
    workers = [
        start_worker("mixed", directory, w, OPERATIONS, KEY_SPACE, SIZE_LIMIT)
        for w in range(WORKERS)
    ]
    reports = []
    for w in workers:
        out, err = w.communicate(timeout=240)
        assert w.returncode == 0, f"a worker failed:\n{err}"
        reports.append(json.loads(out))
    problems = [p for r in reports for p in r["problems"]]
    assert problems == [], problems
    assert all(r["counts"]["not_stored"] == 0 for r in reports)
    gets = sum(r["counts"]["gets"] for r in reports)
    sets = sum(r["counts"]["sets"] for r in reports)
    assert sum(r["counts"]["found"] for r in reports) > 0

    cache = Cache(directory, size_limit=SIZE_LIMIT)
    stats = cache.stats()
    assert stats["hits"] + stats["misses"] == gets, "hits or misses were lost or double-counted"
    assert stats["sets"] == sets
    assert bytes_on_disk(directory) <= SIZE_LIMIT + LARGEST_ENTRY
    assert cache.volume() <= SIZE_LIMIT + LARGEST_ENTRY
    assert temp_files(directory) == []
    assert cache.check() == []
    for key in range(KEY_SPACE):
        got = cache.get(key)
        if got is not None:
            assert worker.check_mixed_value(key, got) is None
    cache.check(fix=True)
    assert cache.volume() == bytes_on_disk(directory)
    assert cache.stats()["count"] == len(stored(directory))


# --- failing writes -----------------------------------------------------------------------------


def test_a_write_beyond_the_file_size_limit_raises_store_error_and_harms_nothing(
    tmp_path, run_python
):
    directory = tmp_path / "cache"
    out = run_python(
        f"""
        import errno, resource, signal
        from pathlib import Path
        import numpy as np
        from afml_cache import Cache, StoreError

        directory = Path({str(directory)!r})
        cache = Cache(directory)
        small = {{i: np.full(1_000, i) for i in range(5)}}
        for i, value in small.items():
            cache.set(i, value)
        # Writing past RLIMIT_FSIZE fails with EFBIG once SIGXFSZ is ignored: a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        big = np.random.default_rng(0).integers(0, 2**62, 100_000)
        for key in ("new", 0):  # a new key, and one that already has an entry
            try:
                cache.set(key, big)
            except StoreError as exc:
                assert isinstance(exc, OSError)
                assert exc.errno == errno.EFBIG, exc.errno
                assert exc.filename and str(directory) in exc.filename, exc.filename
                print("raised", exc.errno)
            else:
                raise SystemExit(f"set({{key!r}}) of a value over RLIMIT_FSIZE did not raise")
        assert cache.set("tiny", 1) is True  # small writes still work
        fresh = Cache(directory)
        for i, value in small.items():
            got = fresh.get(i)
            assert got is not None and np.array_equal(got, value), i
        assert fresh.get("new") is None
        assert not list((directory / "entries").rglob("*.tmp"))
        """
    )
    assert out.split("\n")[:2] == ["raised 27", "raised 27"]
    cache = Cache(directory)
    for i in range(5):
        np.testing.assert_array_equal(cache.get(i), np.full(1_000, i))
    assert cache.get("new") is None
    assert cache.get("tiny") == 1
    assert temp_files(directory) == []
    assert cache.check() == []
    assert cache.volume() == bytes_on_disk(directory)


def distinct_prefix_keys(digest: str, count: int) -> list[str]:
    """Keys whose entries live in other top-level shards than ``digest``'s."""
    keys = []
    for i in range(10_000):
        key = f"bystander-{i}"
        if fingerprint(key)[:2] != digest[:2]:
            keys.append(key)
        if len(keys) == count:
            return keys
    raise AssertionError("unreachable")


def test_a_shard_directory_that_is_a_file_makes_set_raise_store_error(tmp_path):
    directory = tmp_path / "cache"
    cache = Cache(directory)
    digest = fingerprint("blocked")
    bystanders = distinct_prefix_keys(digest, 4)
    for i, key in enumerate(bystanders):
        cache.set(key, np.full(50_000, i))
    shard = directory / "entries" / "default" / digest[:2]
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_bytes(b"a file where a directory belongs")
    with pytest.raises(StoreError) as raised:
        cache.set("blocked", np.arange(100_000))
    assert isinstance(raised.value, OSError)
    assert raised.value.errno == errno.ENOTDIR
    assert str(shard) in raised.value.filename
    assert str(shard) in str(raised.value)
    assert "blocked" not in cache
    fresh = Cache(directory)
    for i, key in enumerate(bystanders):
        np.testing.assert_array_equal(fresh.get(key), np.full(50_000, i))
    assert temp_files(directory) == []
    assert [p["path"] for p in fresh.check()] == [str(shard)]  # only the stray file is reported


def test_get_of_a_key_whose_shard_is_a_file_is_a_miss(tmp_path):
    # A stray file where a shard directory belongs means no entry can exist there: a miss, like
    # any other missing entry, not an error out of get().
    directory = tmp_path / "cache"
    cache = Cache(directory)
    cache.set("other", 1)
    digest = fingerprint("blocked")
    shard = directory / "entries" / "default" / digest[:2]
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_bytes(b"a file where a directory belongs")
    assert cache.get("blocked", MISSING) is MISSING
    assert Cache(directory).get("blocked", MISSING) is MISSING
    assert Cache(directory).get("other") == 1
