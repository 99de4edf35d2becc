"""Hostile and damaged archives given to `Cache.import_` and `afml-cache import` (issue 11):
members are streamed in bounded memory whatever their size, links and a manifest without a key
are refused with one line, and an import is all or nothing.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers.entry_bytes import bytes_on_disk, stored

from afml_cache import Cache
from afml_cache._store import archive as archive_module
from afml_cache.cli import main
from afml_cache.errors import CacheError

CHILD_TIMEOUT_S = 600
GIB = 1 << 30


def values() -> dict[str, Any]:
    """Values of several sizes: a frame of 3 MB streams through more than one chunk."""
    return {
        "small": {"window": 5, "label": "tb"},
        "array": np.arange(10_000, dtype=np.float64),
        "frame": pd.DataFrame(
            {"close": np.linspace(1.0, 2.0, 200_000), "volume": np.arange(200_000)},
            index=pd.date_range("2024-01-01", periods=200_000, freq="min", tz="UTC"),
        ),
        "text": "x" * 100,
        "last": [1, 2, 3],
    }


def same(got: Any, expected: Any) -> None:
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(got, expected)
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(got, expected)
    else:
        assert got == expected


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    source = Cache(tmp_path / "source")
    for key, value in values().items():
        source.set(key, value, tags=["t"])
    archive = tmp_path / "cache.tar"  # plain: tests damage its bytes where tar puts them
    assert source.export(archive) == len(values())
    return archive


def members(archive: Path) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member)
            yield member, data.read() if data is not None else b""


def rewrite(
    source: Path, target: Path, change: Callable[[str, bytes], bytes | None], extra=()
) -> Path:
    """A copy of an archive with each member's bytes passed through ``change`` (None drops
    it), then the ``extra`` members (TarInfo, bytes) appended."""
    with tarfile.open(target, "w:gz") as new:
        for member, data in members(source):
            changed = change(member.name, data)
            if changed is not None:
                info = tarfile.TarInfo(member.name)
                info.size = len(changed)
                new.addfile(info, io.BytesIO(changed))
        for info, data in extra:
            new.addfile(info, io.BytesIO(data) if data else None)
    return target


def entry_names(archive: Path) -> list[str]:
    return sorted(m.name for m, _ in members(archive) if m.name.startswith("entries/"))


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in (directory / "entries").rglob("*") if p.is_file())


def run_import(archive: Path, directory: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    code = main(["import", str(archive), "--dir", str(directory)])
    out, err = capsys.readouterr()
    return code, out, err


# --- round trip ------------------------------------------------------------------------------


def test_an_import_gives_back_every_value(exported: Path, tmp_path: Path) -> None:
    target = Cache(tmp_path / "target")
    assert target.import_(exported) == len(values())
    reader = Cache(tmp_path / "target")
    for key, value in values().items():
        same(reader.get(key), value)
    assert reader.check() == []
    assert reader.stats()["count"] == len(stored(tmp_path / "target")) == len(values())
    assert reader.volume() == bytes_on_disk(tmp_path / "target")
    # Importing again replaces the entries: the counters count each once.
    assert Cache(tmp_path / "target").import_(exported) == len(values())
    assert Cache(tmp_path / "target").stats()["count"] == len(values())


# --- all or nothing ---------------------------------------------------------------------------


def flip(data: bytes, at: float = 0.5) -> bytes:
    bad = bytearray(data)
    bad[int(len(bad) * at)] ^= 0x10
    return bytes(bad)


def digest_at(data: bytes) -> float:
    """Where in an entry's bytes a byte of its digest lies, as `flip` takes it."""
    found = re.search(rb"[0-9a-f]{64}", data)
    assert found is not None
    return (found.start() + 10.5) / len(data)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: flip(data), id="a flipped byte"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data + b"\0", id="padded"),
        pytest.param(lambda data: data[:30], id="cut inside its prefix"),
        pytest.param(lambda data: b"", id="empty"),
        # A store refusing the entry's own digest raised ValueError through the command.
        pytest.param(lambda data: flip(data, digest_at(data)), id="a flipped byte of its digest"),
    ],
)
def test_a_damaged_entry_midway_imports_nothing(
    exported: Path, tmp_path: Path, damage: Callable[[bytes], bytes], capsys
) -> None:
    middle = entry_names(exported)[len(values()) // 2]
    damaged = rewrite(
        exported, tmp_path / "damaged.tar.gz", lambda n, d: damage(d) if n == middle else d
    )
    target = Cache(tmp_path / "target")
    target.set("kept", "an entry the target had before")
    before = files_under(tmp_path / "target")
    with pytest.raises(CacheError) as raised:
        target.import_(damaged)
    assert files_under(tmp_path / "target") == before  # no entry, no temp file left behind
    assert middle in str(raised.value)
    reader = Cache(tmp_path / "target")
    assert [reader.get(k) for k in values()] == [None] * len(values())
    assert reader.get("kept") == "an entry the target had before"
    assert reader.stats()["count"] == 1
    code, out, err = run_import(damaged, tmp_path / "target", capsys)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1
    assert middle in err


def test_a_damaged_member_header_midway_imports_nothing(
    exported: Path, tmp_path: Path, capsys
) -> None:
    # tarfile ends its listing quietly at a header that fails its checksum: the import took
    # the members before it and said it had imported them all.
    with tarfile.open(exported) as tar:
        middle = [m for m in tar.getmembers() if m.name.startswith("entries/")][2]
    data = bytearray(exported.read_bytes())
    data[middle.offset + 179] ^= 0x10  # in the header's link name, which its checksum covers
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    target = Cache(tmp_path / "target")
    with pytest.raises(CacheError, match=r"damaged after its member .*nothing was imported"):
        target.import_(damaged)
    assert [Cache(tmp_path / "target").get(k) for k in values()] == [None] * len(values())
    code, out, err = run_import(damaged, tmp_path / "target", capsys)
    assert (code, out, len(err.splitlines())) == (1, "", 1)


# --- hostile members --------------------------------------------------------------------------


def link(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


@pytest.mark.parametrize(
    "member",
    [
        link("entries/999999999.afc", tarfile.SYMTYPE, "/etc/passwd"),
        link("entries/999999999.afc", tarfile.LNKTYPE, "entries/000000000.afc"),
        link("entries/999999999.afc", tarfile.SYMTYPE, "../../outside"),
        link("entries/sub", tarfile.DIRTYPE, ""),
        link("entries/999999999.afc", tarfile.FIFOTYPE, ""),
    ],
    ids=["symlink", "hardlink", "symlink out", "directory", "fifo"],
)
def test_a_member_that_is_not_a_file_is_refused_naming_it(
    exported: Path, tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], capsys
) -> None:
    hostile = rewrite(exported, tmp_path / "hostile.tar.gz", lambda n, d: d, extra=[member])
    with pytest.raises(CacheError, match=member[0].name) as raised:
        Cache(tmp_path / "target").import_(hostile)
    assert "nothing was imported" in str(raised.value)
    assert files_under(tmp_path / "target") == []
    code, out, err = run_import(hostile, tmp_path / "target", capsys)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1, err
    assert member[0].name in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "manifest",
    [
        {"format": "afml-cache export v1", "count": 5},
        {"format": "afml-cache export v1", "key": "not hex"},
        {"format": "afml-cache export v1", "key": "ab"},
        {"format": "afml-cache export v1", "key": 7},
        ["a list"],
        "not json {",
    ],
    ids=["no key", "key not hex", "short key", "key not text", "not an object", "not json"],
)
def test_a_manifest_without_a_usable_key_is_refused_in_one_line(
    exported: Path, tmp_path: Path, manifest: Any, capsys
) -> None:
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    hostile = rewrite(
        exported,
        tmp_path / "hostile.tar.gz",
        lambda n, d: text.encode() if n == "manifest.json" else d,
    )
    with pytest.raises(CacheError, match=r"manifest\.json"):
        Cache(tmp_path / "target").import_(hostile)
    code, out, err = run_import(hostile, tmp_path / "target", capsys)
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1, err
    assert "manifest.json" in err
    assert files_under(tmp_path / "target") == []


class _Huge(io.RawIOBase):
    """Reads as ``head`` followed by zeros, ``size`` bytes in all, without holding them."""

    def __init__(self, head: bytes, size: int) -> None:
        self.head, self.size, self.at = head, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.at)
        view = memoryview(buffer).cast("B")[:n]
        view[:] = b"\0" * n
        if self.at < len(self.head):
            part = self.head[self.at : self.at + n]
            view[: len(part)] = part
        self.at += n
        return n


def test_a_1_gib_member_is_streamed_in_bounded_memory(exported: Path, tmp_path: Path) -> None:
    # A real entry's prefix and header announcing a 1 GiB pickle stream of zeros: the member
    # is read to its end before its MAC can fail, so only streaming keeps memory bounded.
    first = entry_names(exported)[0]
    original = {m.name: d for m, d in members(exported)}
    real = original[first]
    header_end = 40 + int.from_bytes(real[24:28], "little")
    payload = GIB
    head = bytearray(real[:header_end])
    head[28:32] = (0).to_bytes(4, "little")  # no buffers: the stream is the whole payload
    head[32:40] = payload.to_bytes(8, "little")
    head += (payload - 8).to_bytes(8, "little")
    size = header_end + payload + 32
    hostile = tmp_path / "huge.tar.gz"
    with tarfile.open(hostile, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(original["manifest.json"])
        tar.addfile(info, io.BytesIO(original["manifest.json"]))
        info = tarfile.TarInfo(first)
        info.size = size
        tar.addfile(info, io.BufferedReader(_Huge(bytes(head), size), 1 << 20))
    assert hostile.stat().st_size < 10 * (1 << 20)
    script = textwrap.dedent(
        f"""
        import resource
        from afml_cache import Cache
        from afml_cache.errors import CacheError
        cache = Cache({str(tmp_path / "target")!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            cache.import_({str(hostile)!r})
        except CacheError as exc:
            print("refused:", exc)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("growth_kb", after - before)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:") and "MAC" in lines[0], lines
    growth_mb = int(lines[1].split()[1]) / 1024
    assert growth_mb < 200, f"importing a 1 GiB member grew the process by {growth_mb:.0f} MB"
    assert files_under(tmp_path / "target") == []


def test_a_sparse_member_is_refused_before_anything_is_written(
    exported: Path, tmp_path: Path
) -> None:
    # A sparse member claims gigabytes the archive does not hold: a 20 KB archive wrote them
    # all out before its MAC failed, and filled the disk on the way.
    if shutil.which("tar") is None:
        pytest.skip("needs GNU tar to write a sparse member")
    source = tmp_path / "sparse"
    (source / "entries").mkdir(parents=True)
    original = {m.name: d for m, d in members(exported)}
    (source / "manifest.json").write_bytes(original["manifest.json"])
    with open(source / "entries" / "000000000.afc", "wb") as entry:
        entry.write(original[entry_names(exported)[0]][:64])
        entry.truncate(64 * (1 << 20))  # a hole: 64 MiB claimed, nothing stored
    hostile = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", "-cf", str(hostile), "manifest.json", "entries/000000000.afc"],
        cwd=source,
        check=True,
    )
    assert hostile.stat().st_size < 1 << 20
    with pytest.raises(CacheError, match=r"is a sparse file, not a plain file.*nothing was"):
        Cache(tmp_path / "target").import_(hostile)
    assert files_under(tmp_path / "target") == []


def test_an_archive_larger_than_the_free_space_is_refused_before_anything_is_written(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda _path: free)
    with pytest.raises(CacheError, match=r"take .* has 1,000 B free.*nothing was imported"):
        Cache(tmp_path / "target").import_(exported)
    assert files_under(tmp_path / "target") == []


def test_a_file_that_is_no_archive_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    # tarfile's own message lists each compression it tried, a line each.
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an archive\n")
    code, out, err = run_import(bogus, tmp_path / "target", capsys)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "it is not a tar archive" in err, err


def test_an_export_named_tar_gz_is_gzip_and_imports(tmp_path: Path) -> None:
    source = Cache(tmp_path / "source")
    source.set("k", list(range(100)))
    for name, magic in [
        ("cache.tar", b"manif"),
        ("cache.tar.gz", b"\x1f\x8b"),
        ("c.tar.xz", b"\xfd7z"),
    ]:
        source.export(tmp_path / name)
        assert (tmp_path / name).read_bytes().startswith(magic)
        assert Cache(tmp_path / f"copy-{name}").import_(tmp_path / name) == 1
