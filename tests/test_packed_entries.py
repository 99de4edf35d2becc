"""Small entries live as records in a pack file per shard (docs/store.md, "Small entries"): the
same guarantees as entries in files of their own, with real processes where it matters.

A SIGKILLed writer leaves no half entry visible; concurrent writers lose nothing; a damaged
record is a logged miss that is never unpickled and is recomputed; every operation (delete,
overwrite, expiry, eviction, maintenance, check, archives, clear) works on packed entries; a
value moves between the two forms as it grows and shrinks; the trust checks cover packs.
Results read back are compared with the values written or computed uncached, and the disk is
read without the core (helpers/entry_bytes.py) to count entries and bytes.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import pack_worker
from helpers.detonator import DETONATIONS, Detonator
from helpers.entry_bytes import (
    FRAME_LEN,
    MAC_LEN,
    PACK_LIMIT,
    PREFIX_LEN,
    bytes_on_disk,
    locate,
    located_entries,
    pack_files,
    pack_frame,
    pack_records,
    stored,
    temp_files,
)

import afml_cache
from afml_cache import Cache, CacheError, cli, fingerprint, maintain_cache

WORKER = Path(__file__).parent / "helpers" / "pack_worker.py"
MISSING = object()


def start_worker(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"the worker printed nothing within {timeout}s")
    return proc.stdout.readline().strip()


def large(seed: int, nbytes: int = 3 * PACK_LIMIT) -> np.ndarray:
    """Incompressible bytes: an entry in a file of its own."""
    return np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)


@functools.cache
def shard_mates(key: object, count: int) -> list[int]:
    """Integer keys whose digests share their first two hex digits with ``key``'s: their entries
    are packed in the same pack."""
    shard = fingerprint(key)[:2]
    mates = [k for k in range(100_000) if fingerprint(k)[:2] == shard and k != key]
    return mates[:count]


def same_shard_keys(count: int) -> list[int]:
    return [0, *shard_mates(0, count - 1)]


def assert_disk_agrees(directory: Path) -> None:
    """The core's counts are what the disk holds, read without the core."""
    cache = Cache(directory)
    on_disk = stored(directory)
    assert located_entries(directory) == [s.located for s in on_disk]
    assert cache.stats()["count"] == len(on_disk)
    assert cache.volume() == bytes_on_disk(directory)
    assert cache.check() == []


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# --- the two forms ------------------------------------------------------------------------------


def test_small_values_are_packed_and_large_ones_are_files(directory):
    cache = Cache(directory)
    cache.set("small", {"a": 1})
    cache.set("large", large(1))
    small_at, large_at = locate(directory, "small"), locate(directory, "large")
    assert small_at.packed and small_at.length < PACK_LIMIT
    assert small_at.path.parent.name == "default"  # entries/<namespace>/<k0k1>.pack
    assert small_at.path.name == f"{fingerprint('small')[:2]}.pack"
    assert not large_at.packed and large_at.offset == 0
    assert large_at.path.name == f"{fingerprint('large')}.afc"
    assert small_at.read()[:6] == b"AFMLCE" == large_at.read()[:6]
    fresh = Cache(directory)
    assert fresh.get("small") == {"a": 1}
    np.testing.assert_array_equal(fresh.get("large"), large(1))
    assert_disk_agrees(directory)


def test_many_small_entries_share_a_few_pack_files(directory):
    cache = Cache(directory)
    values = {k: ("value", k, "x" * (k % 200)) for k in range(600)}
    assert cache.set_many(values) == len(values)
    fresh = Cache(directory)
    assert fresh.get_many(list(values)) == values
    assert len(pack_files(directory)) <= 256
    assert list((directory / "entries").rglob("*.afc")) == []
    assert {s.digest for s in stored(directory)} == {fingerprint(k) for k in values}
    assert_disk_agrees(directory)


def test_a_value_growing_past_the_limit_moves_to_a_file_and_back(directory):
    cache = Cache(directory)
    for round_, value in enumerate(["small", large(2), "small again", large(3), {"s": 1}]):
        cache.set("k", value)
        got = Cache(directory).get("k")
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got, value)
        else:
            assert got == value
        where = locate(directory, "k")
        assert where.packed is (not isinstance(value, np.ndarray)), round_
        # One form at a time: exactly one entry of the key on disk.
        assert [s.located for s in stored(directory)] == [where], round_
        assert_disk_agrees(directory)


# --- processes ----------------------------------------------------------------------------------


def assert_a_written_value(key: str, got: object) -> None:
    assert isinstance(got, tuple) and len(got) == 4, f"{key}: {got!r}"
    got_key, writer, round_, _ = got
    assert got_key == key, f"{key} holds the value of {got_key}"
    assert got == pack_worker.small_value(key, writer, round_), f"{key}: nobody wrote {got!r}"


def test_a_writer_killed_in_the_middle_of_many_small_sets_leaves_no_half_entry(directory):
    keys = pack_worker.one_pack_keys(12)
    Cache(directory)
    rng = random.Random(20261201)
    long_lived_reader = Cache(directory)  # keeps memory copies across kills
    seen = 0
    for _ in range(8):
        writer = start_worker("sets-until-killed", directory, len(keys))
        try:
            assert read_line(writer, timeout=60) == "ready"
            deadline = time.monotonic() + rng.uniform(0.05, 0.4)
            while time.monotonic() < deadline:  # read while it writes, until the kill
                key = rng.choice(keys)
                got = Cache(directory).get(key, MISSING)
                if got is not MISSING:
                    assert_a_written_value(key, got)
        finally:
            writer.send_signal(signal.SIGKILL)
            _, err = writer.communicate(timeout=60)
        assert writer.returncode == -signal.SIGKILL, f"the writer died on its own:\n{err}"
        for reader in (long_lived_reader, Cache(directory)):
            for key in keys:
                got = reader.get(key, MISSING)
                if got is not MISSING:
                    seen += 1
                    assert_a_written_value(key, got)
    assert seen > 0, "no write ever completed: the test exercised nothing"
    # A kill may leave a torn record at a pack's end, or a compaction's temp file.
    problems = Cache(directory).check(fix=True)
    assert all(p["fixed"] for p in problems), problems
    assert temp_files(directory) == []
    assert_disk_agrees(directory)
    fresh = Cache(directory)
    for key in keys:
        got = fresh.get(key, MISSING)
        if got is not MISSING:
            assert_a_written_value(key, got)


def test_two_processes_setting_disjoint_and_overlapping_small_keys_lose_nothing(directory):
    own, shared = 300, 60
    Cache(directory)
    writers = [start_worker("concurrent", directory, w, own, shared) for w in range(2)]
    for w in writers:
        assert read_line(w, timeout=60) == "ready"
    for w in writers:  # both start together
        w.stdin.write("go\n")
        w.stdin.flush()
    for w in writers:
        out, err = w.communicate(timeout=240)
        assert w.returncode == 0 and out.strip() == "done", err
    fresh = Cache(directory)
    for w in range(2):
        for key in pack_worker.own_keys(w, own):
            assert fresh.get(key) == pack_worker.small_value(key, w, 0)
    last = pack_worker.ROUNDS - 1
    for key in pack_worker.shared_keys(shared):
        # The last write of a key is some writer's last write of it.
        assert fresh.get(key) in [pack_worker.small_value(key, w, last) for w in range(2)]
    assert len(stored(directory)) == 2 * own + shared
    assert_disk_agrees(directory)


# --- damaged records ----------------------------------------------------------------------------


def sealed_parts(data: bytes) -> dict[str, range]:
    """Byte ranges of a small entry's parts (see src/store/entry.rs): no buffers, so the payload
    is the stream behind its length."""
    header_end = PREFIX_LEN + int.from_bytes(data[24:28], "little")
    return {
        "prefix": range(0, 8),
        "lengths": range(24, PREFIX_LEN),
        "header": range(PREFIX_LEN, header_end),
        "stream": range(header_end, len(data) - MAC_LEN),
        "mac": range(len(data) - MAC_LEN, len(data)),
    }


BEFORE, AFTER = 3, 1  # bystanders packed before and after the trap, in its pack


def store_small_detonator(directory: Path, marker: Path) -> None:
    cache = Cache(directory)
    bystanders = shard_mates("trap", BEFORE + AFTER)
    for k in bystanders[:BEFORE]:
        cache.set(k, ("bystander", k))
    cache.set("trap", {"trap": Detonator(str(marker)), "data": list(range(20))})
    for k in bystanders[BEFORE:]:
        cache.set(k, ("bystander", k))
    assert locate(directory, "trap").packed


def assert_bystanders_intact(directory: Path, *, after: bool = True) -> None:
    fresh = Cache(directory)
    bystanders = shard_mates("trap", BEFORE + AFTER)
    for k in bystanders[: BEFORE + AFTER if after else BEFORE]:
        assert fresh.get(k) == ("bystander", k)


def test_the_marker_works_on_an_intact_packed_entry(tmp_path):
    marker = tmp_path / "unpickled"
    store_small_detonator(tmp_path / "cache", marker)
    got = Cache(tmp_path / "cache").get("trap")
    assert marker.exists(), "the marker did not detect an unpickle: the other tests prove nothing"
    assert isinstance(got["trap"], Detonator) and got["data"] == list(range(20))


@pytest.mark.parametrize("part", ["prefix", "lengths", "header", "stream", "mac"])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_flipped_byte_in_a_packed_record_is_a_logged_miss_never_unpickled(
    tmp_path, caplog, part, seed
):
    directory, marker = tmp_path / "cache", tmp_path / "unpickled"
    store_small_detonator(directory, marker)
    where = locate(directory, "trap")
    positions = sealed_parts(where.read())[part]
    where.flip(random.Random(seed).choice(positions), 1 << random.Random(seed).randrange(8))
    with caplog.at_level(logging.WARNING, logger="afml_cache"):
        assert Cache(directory).get("trap", MISSING) is MISSING
    assert not marker.exists() and str(marker) not in DETONATIONS, "a damaged record was unpickled"
    warnings = [
        r for r in caplog.records if r.name == "afml_cache" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, caplog.text
    assert locate(directory, "trap") is None, "the damaged record is still the key's entry"
    assert_bystanders_intact(directory)  # its neighbours in the pack
    assert_disk_agrees(directory)


@pytest.mark.parametrize("position", range(8, 24))
def test_the_access_counters_of_a_packed_record_are_outside_the_mac(tmp_path, position):
    store_small_detonator(tmp_path / "cache", tmp_path / "unpickled")
    locate(tmp_path / "cache", "trap").flip(position, 0xFF)
    assert Cache(tmp_path / "cache").get("trap")["data"] == list(range(20))


def test_a_record_framed_as_another_keys_entry_is_a_miss_never_unpickled(tmp_path, caplog):
    # Someone appends the trap's sealed entry behind a well-formed frame naming another digest:
    # its MAC verifies, but its header names the trap's digest, so it is not that key's entry.
    directory, marker = tmp_path / "cache", tmp_path / "unpickled"
    store_small_detonator(directory, marker)
    trap = locate(directory, "trap")
    (other,) = shard_mates("trap", BEFORE + AFTER + 1)[BEFORE + AFTER :]
    sealed = trap.read()
    with trap.path.open("ab") as pack:
        pack.write(pack_frame(fingerprint(other), len(sealed)) + sealed)
    with caplog.at_level(logging.WARNING, logger="afml_cache"):
        assert Cache(directory).get(other, MISSING) is MISSING
    assert not marker.exists() and str(marker) not in DETONATIONS
    # A foreign entry, as a file holding another key's entry is: logged once, and removed.
    logged = [r for r in caplog.records if r.name == "afml_cache" and r.levelno >= logging.WARNING]
    assert len(logged) == 1 and str(trap.path) in logged[0].getMessage(), caplog.text
    assert locate(directory, other) is None
    assert Cache(directory).get("trap")["data"] == list(range(20))  # the trap's own record stays


def test_a_damaged_frame_ends_the_records_before_it_and_nothing_is_misread(tmp_path):
    directory, marker = tmp_path / "cache", tmp_path / "unpickled"
    store_small_detonator(directory, marker)
    trap = locate(directory, "trap")
    with trap.path.open("r+b") as pack:  # the trap's frame: its length field
        pack.seek(trap.offset - FRAME_LEN + 5)
        byte = pack.read(1)
        pack.seek(-1, 1)
        pack.write(bytes([byte[0] ^ 0x01]))
    before, after = (
        shard_mates("trap", BEFORE + AFTER)[:BEFORE],
        shard_mates("trap", BEFORE + AFTER)[BEFORE:],
    )

    def assert_read(cache: Cache) -> None:
        # The damaged frame may have been any key's newest record: the records before it end
        # (never an older value served); the records after it are read.
        assert [cache.get(k, MISSING) for k in before] == [MISSING] * BEFORE
        assert [cache.get(k) for k in after] == [("bystander", k) for k in after]
        assert cache.get("trap", MISSING) is MISSING and not marker.exists()

    fresh = Cache(directory)
    assert_read(fresh)
    (later,) = after
    fresh.set(later, ("bystander", later))  # a writer appends; it cuts nothing off
    assert_read(Cache(directory))
    assert [p["path"] for p in fresh.check()] == [str(trap.path)]
    fresh.check(fix=True)  # compacts the damaged stretch away
    assert_disk_agrees(directory)
    assert_read(Cache(directory))


def test_a_torn_append_hides_its_key_and_the_next_writer_ends_it(directory):
    first, second, third = same_shard_keys(3)
    cache = Cache(directory)
    cache.set(first, "first")
    cache.set(second, "second")
    pack = locate(directory, second).path
    whole = pack.stat().st_size
    # What a writer killed in the middle of appending a new value of `first` leaves (or a power
    # loss after that `set` returned, since packs are not fsynced): a whole frame, and part of
    # the sealed entry it announces. "first" may no longer be the value of `first`.
    sealed = locate(directory, first).read()
    with pack.open("ab") as file:
        file.write(pack_frame(fingerprint(first), len(sealed)) + sealed[: len(sealed) // 2])
    fresh = Cache(directory)
    assert (fresh.get(first, MISSING), fresh.get(second)) == (MISSING, "second")
    assert [p["path"] for p in fresh.check()] == [str(pack)]  # reported, left alone
    fresh.set(third, "third")  # the next writer cuts the torn tail off, ends `first`, appends
    after = Cache(directory)
    assert (after.get(first, MISSING), after.get(second), after.get(third)) == (
        MISSING,
        "second",
        "third",
    )
    assert pack_records(pack)[1] == pack.stat().st_size > whole
    assert_disk_agrees(directory)


def test_a_record_cut_short_at_the_end_of_a_pack_is_a_miss(directory):
    # Damage, not a crash (a record is counted once whole): check(fix=True) puts the counts right.
    first, second, third = same_shard_keys(3)
    cache = Cache(directory)
    cache.set(first, "first")
    cache.set(second, "second")
    where = locate(directory, second)
    where.cut(where.length // 2)
    fresh = Cache(directory)
    assert fresh.get(second, MISSING) is MISSING
    assert fresh.get(first) == "first"
    fresh.set(third, "third")  # appends to the same pack, after cutting off the broken record
    after = Cache(directory)
    assert (after.get(first), after.get(second, MISSING), after.get(third)) == (
        "first",
        MISSING,
        "third",
    )
    after.check(fix=True)
    assert_disk_agrees(directory)


def test_a_damaged_packed_result_is_recomputed_by_the_decorated_function(directory):
    cache = Cache(directory)
    calls: list[int] = []

    def uncached(x: int) -> dict[str, object]:
        calls.append(x)
        return {"x": x, "squares": [i * i for i in range(x)]}

    cached = afml_cache.robust_cacheable(cache=cache)(uncached)
    expected = uncached(12)
    calls.clear()
    assert cached(12) == expected and calls == [12]
    afml_cache.flush_writes()
    (info,) = cache.scan(cached.__afml_cache__.name)
    where = locate(directory, digest=info.digest, namespace=info.namespace)
    assert where.packed
    where.flip(-MAC_LEN - 3)
    again = afml_cache.robust_cacheable(cache=Cache(directory))(uncached)  # no memory copy
    assert again(12) == expected and calls == [12, 12]
    afml_cache.flush_writes()
    assert afml_cache.robust_cacheable(cache=Cache(directory))(uncached)(12) == expected
    assert calls == [12, 12], "the recomputed result was not stored"


# --- every operation over packed entries --------------------------------------------------------


def test_delete_and_overwrite_of_packed_entries(directory):
    cache = Cache(directory)
    keys = same_shard_keys(4)
    for k in keys:
        cache.set(k, ("v1", k))
    cache.set(keys[0], ("v2", keys[0]))
    assert cache.delete(keys[1]) is True
    assert cache.delete(keys[1]) is False
    fresh = Cache(directory)
    assert fresh.get(keys[0]) == ("v2", keys[0])
    assert fresh.get(keys[1], MISSING) is MISSING
    assert [fresh.get(k) for k in keys[2:]] == [("v1", k) for k in keys[2:]]
    assert sorted(fresh.keys()) == sorted([keys[0], *keys[2:]])
    assert {s.digest for s in stored(directory)} == {fingerprint(k) for k in [keys[0], *keys[2:]]}
    assert_disk_agrees(directory)


def test_a_pack_mostly_dead_is_compacted_and_every_reader_follows(directory):
    keys = same_shard_keys(10)
    writer = Cache(directory, memory_limit=1)  # nothing in memory: every get reads the pack
    for k in keys:
        writer.set(k, ("first", k))
    reader = Cache(directory, memory_limit=1)
    assert [reader.get(k) for k in keys] == [("first", k) for k in keys]  # indexed it
    pack = locate(directory, keys[0]).path
    record = FRAME_LEN + locate(directory, keys[0]).length
    for i in range(500):  # ~150 KB appended, all but the last record of the key dead
        writer.set(keys[0], ("again", i))
    assert pack.stat().st_size < 250 * record, "the pack was never compacted"
    assert pack_records(pack)[1] == pack.stat().st_size
    expected = [("again", 499)] + [("first", k) for k in keys[1:]]
    assert [reader.get(k) for k in keys] == expected  # an index of the old pack notices
    assert [Cache(directory).get(k) for k in keys] == expected
    assert_disk_agrees(directory)


def test_expire_and_touch_of_packed_entries(directory):
    cache = Cache(directory)
    cache.set("short", 1, ttl=0.3)
    cache.set("touched", 2, ttl=0.3)
    cache.set("forever", 3)
    assert cache.touch("touched", None) is True
    time.sleep(0.4)
    assert Cache(directory).expire() == 1
    fresh = Cache(directory)
    assert fresh.get("short", MISSING) is MISSING
    assert (fresh.get("touched"), fresh.get("forever")) == (2, 3)
    assert len(stored(directory)) == 2
    assert_disk_agrees(directory)


def test_eviction_over_packed_entries_keeps_the_volume_under_the_limit(directory):
    limit = 40_000
    cache = Cache(directory, size_limit=limit)
    cache.set("keep", "protected", protect=True)
    for k in range(400):
        cache.set(k, ("value", k, "x" * 500))
        if k % 20 == 0:
            assert bytes_on_disk(directory) <= limit
    assert bytes_on_disk(directory) <= limit
    assert cache.stats()["evictions"] > 0
    fresh = Cache(directory, size_limit=limit)
    assert fresh.get("keep") == "protected"
    survivors = [k for k in range(400) if fresh.get(k, MISSING) is not MISSING]
    assert 0 < len(survivors) < 400 and 399 in survivors  # least recently used go first
    assert all(fresh.get(k) == ("value", k, "x" * 500) for k in survivors)
    assert_disk_agrees(directory)


def test_clear_removes_every_packed_entry(directory):
    cache = Cache(directory)
    cache.set_many({k: k for k in range(50)})
    cache.set("large", large(4))
    assert cache.clear() == 51
    assert stored(directory) == []
    assert Cache(directory).get(3, MISSING) is MISSING
    assert_disk_agrees(directory)


def test_maintain_cache_over_packed_entries(cache_dir):
    cache = Cache(cache_dir)
    cache.set_many({k: ("old", k) for k in range(20)}, ttl=0.2)
    cache.set_many({k: ("new", k) for k in range(20, 30)})
    time.sleep(0.3)
    report = maintain_cache()
    assert report["reasons"]["expired"] == 20 and report["errors"] == []
    fresh = Cache(cache_dir)
    assert fresh.get_many(list(range(30))) == {k: ("new", k) for k in range(20, 30)}
    assert len(stored(cache_dir)) == 10
    assert_disk_agrees(cache_dir)


def test_check_fix_reports_and_drops_a_damaged_packed_record(directory, capsys):
    cache = Cache(directory)
    keys = same_shard_keys(3)
    for k in keys:
        cache.set(k, ("value", k))
    locate(directory, keys[1]).flip(-1)
    assert cli.main(["health", "--dir", str(directory), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [p["fixed"] for p in document["problems"]] == [False]
    assert Cache(directory).check() != []  # reporting changed nothing
    assert cli.main(["health", "--dir", str(directory), "--fix", "--json"]) == 1
    fixed = json.loads(capsys.readouterr().out)
    assert [p["fixed"] for p in fixed["problems"]] == [True]
    assert locate(directory, keys[1]) is None
    fresh = Cache(directory)
    assert fresh.get(keys[1], MISSING) is MISSING
    assert [fresh.get(k) for k in (keys[0], keys[2])] == [("value", keys[0]), ("value", keys[2])]
    assert_disk_agrees(directory)


def test_export_and_import_of_packed_entries(tmp_path):
    values = {k: ("value", k) for k in range(30)} | {"large": "y" * (3 * PACK_LIMIT)}
    source = Cache(tmp_path / "source")
    source.set_many(values)
    source.delete(7)
    del values[7]
    assert source.export(tmp_path / "cache.tar") == len(values)
    target = Cache(tmp_path / "target")
    target.set(3, "the target's older value")  # packed: the import replaces it
    target.set("large", "the target's older value")
    assert target.import_(tmp_path / "cache.tar") == len(values)
    fresh = Cache(tmp_path / "target")
    assert fresh.get_many(list(values)) == values
    assert locate(tmp_path / "target", 3).packed
    assert not locate(tmp_path / "target", "large").packed
    assert_disk_agrees(tmp_path / "target")


# --- trust --------------------------------------------------------------------------------------


def test_packs_are_private_in_a_private_cache(directory):
    Cache(directory).set("a", 1)
    (pack,) = pack_files(directory)
    assert stat.S_IMODE(pack.stat().st_mode) == 0o600


def test_a_group_writable_pack_in_a_private_cache_is_refused(directory):
    Cache(directory).set("a", 1)
    (pack,) = pack_files(directory)
    pack.chmod(0o660)
    with pytest.raises(CacheError) as refused:
        Cache(directory).get("a")
    message = str(refused.value)
    assert str(pack) in message and "group-writable" in message
    assert f"chmod 600 {pack}" in message
    # A decorated function whose entry is in that pack computes (uncached) with one warning.
    calls: list[int] = []

    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    cached = afml_cache.robust_cacheable(cache=Cache(directory), version="1")(double)
    pack.chmod(0o600)
    assert cached(21) == 42 and calls == [21]
    afml_cache.flush_writes()
    (info,) = Cache(directory).scan(cached.__afml_cache__.name)
    where = locate(directory, digest=info.digest, namespace=info.namespace)
    where.path.chmod(0o660)
    with pytest.warns(UserWarning, match="group-writable"):
        assert cached(21) == 42
    assert calls == [21, 21]
    # Refusing touched nothing: with the mode put right, both entries are there.
    where.path.chmod(0o600)
    pack.chmod(0o600)
    assert Cache(directory).get("a") == 1
    assert afml_cache.robust_cacheable(cache=Cache(directory), version="1")(double)(21) == 42
    assert calls == [21, 21]
