"""Archives: entries sealed with a one-off key into a tar file, and imported all or nothing."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import time
import zlib
from typing import TYPE_CHECKING

from afml_cache._core import StagedImport
from afml_cache.errors import CacheError, StoreError
from afml_cache.progress import progress
from afml_cache.report import format_size

if TYPE_CHECKING:
    from afml_cache._store import EntryInfo, Store

_ARCHIVE_FORMAT = "afml-cache export v1"
# The largest manifest.json an import reads (export writes a few hundred bytes).
_MANIFEST_LIMIT = 64 * 1024


def write_archive(store: Store, entries: list[EntryInfo], path: str | os.PathLike[str]) -> int:
    """Writes ``entries`` (records from ``Store.scan``) into one archive file; returns how many
    were written (an entry removed meanwhile by another process is skipped)."""
    archive_key = os.urandom(32)
    count = 0
    kind = _compression(path)
    # The fastest level of each: entries are compressed already, a second pass saves ~5%.
    level = {"gz": {"compresslevel": 1}, "bz2": {"compresslevel": 1}, "xz": {"preset": 0}}
    with tarfile.open(path, f"w:{kind}", **level.get(kind, {})) as archive:
        manifest = {"format": _ARCHIVE_FORMAT, "key": archive_key.hex(), "count": len(entries)}
        _add_member(archive, "manifest.json", json.dumps(manifest).encode())
        for entry in progress(entries, "export"):
            sealed = store.export_entry(entry.namespace, entry.digest, archive_key)
            if sealed is not None:  # None: removed by another process meanwhile
                _add_member(archive, f"entries/{count:09d}.afc", sealed)
                count += 1
    return count


def _compression(path: str | os.PathLike[str]) -> str:
    """The compression an archive's name asks for (``cache.tar.gz``); none for ``.tar``."""
    name = os.fspath(path).lower()
    for suffixes, kind in ((".gz", ".tgz"), "gz"), ((".bz2", ".tbz2"), "bz2"), ((".xz",), "xz"):
        if name.endswith(suffixes):
            return kind
    return ""


def import_archive(store: Store, path: str | os.PathLike[str]) -> int:
    """Adds the entries of an archive written by ``write_archive``; returns how many. All or
    nothing: see ``Cache.import_``."""
    try:
        with _opened(path) as archive:
            staged = _stage_archive(store, path, archive)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        # Damaged between members, or this cache's disk failed.
        raise CacheError(f"could not import {path}: {exc}; nothing was imported") from None
    for entry in staged:
        entry.commit()
    return len(staged)


def _opened(path: str | os.PathLike[str]) -> tarfile.TarFile:
    """The archive at ``path``, plain or compressed; a file that is no tar archive is a
    `CacheError` saying so (tarfile's own message lists each compression it tried)."""
    try:
        return tarfile.open(path, "r")  # the caller's `with` closes it
    except tarfile.ReadError:
        raise CacheError(
            f"could not import {path}: it is not a tar archive (as afml-cache export writes "
            "it, or compressed with gzip, bz2 or xz); nothing was imported"
        ) from None


def _stage_archive(
    store: Store, path: str | os.PathLike[str], archive: tarfile.TarFile
) -> list[StagedImport]:
    """Every entry of an archive, verified and staged; after a failure none stays staged."""
    staged: list[StagedImport] = []
    try:
        members = archive.getmembers()
        if not _only_zeros_after(archive):
            # tarfile ends its listing quietly at a header that fails its checksum.
            last = f"its member {members[-1].name}" if members else "its start"
            raise CacheError(
                f"could not import {path}: it is damaged after {last} (a member's header "
                "fails its checksum); nothing was imported"
            )
        for member in members:
            # A sparse member claims more bytes than the archive holds: written out before its
            # MAC fails, a 20 KB archive could fill the disk.
            if not member.isfile() or member.issparse():
                raise CacheError(
                    f"could not import {path}: its member {member.name} is "
                    f"{_member_kind(member)}, not a plain file (export writes only plain files); "
                    "nothing was imported"
                )
        archive_key = _archive_key(path, archive, members)
        entries = [m for m in members if m.name.startswith("entries/")]
        _check_room(store, path, sum(m.size for m in entries))
        for member in progress(entries, "import"):
            staged.append(_stage_member(store, path, archive, member, archive_key))
    except BaseException:
        for entry in staged:
            entry.discard()
        raise
    return staged


def _stage_member(
    store: Store,
    path: str | os.PathLike[str],
    archive: tarfile.TarFile,
    member: tarfile.TarInfo,
    archive_key: bytes,
) -> StagedImport:
    try:
        return store.stage_import(archive.extractfile(member), archive_key)
    except StoreError:
        raise  # this cache's disk failed, not the archive; the message names the file
    except (CacheError, OSError, EOFError, ValueError, tarfile.TarError, zlib.error) as exc:
        raise CacheError(
            f"could not import {path}: its member {member.name} is damaged ({exc}); "
            "nothing was imported"
        ) from None


def _check_room(store: Store, path: str | os.PathLike[str], size: int) -> None:
    """Refuses an archive whose entries would not fit on the cache's disk, before writing any:
    a compressed one can claim far more than it takes (every byte is staged before its MAC is
    checked), and filling the disk would fail every other writer there too."""
    try:
        free = shutil.disk_usage(store.directory).free
    except OSError:
        return  # the staging reports the disk's own error
    if size > free:
        raise CacheError(
            f"could not import {path}: its entries take {format_size(size)} and the disk of "
            f"{store.directory} has {format_size(free)} free; free some space or import into "
            "another directory; nothing was imported"
        )


def _only_zeros_after(archive: tarfile.TarFile) -> bool:
    """Whether all that follows the members tarfile listed is the zero blocks that end an
    archive."""
    source = archive.fileobj
    assert source is not None
    source.seek(archive.offset)
    while block := source.read(1 << 20):
        if block.count(0) != len(block):
            return False
    return True


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link to {member.linkname}"
    if member.islnk():
        return f"a hard link to {member.linkname}"
    if member.issparse():
        return "a sparse file"
    return "a directory" if member.isdir() else "a device, fifo or other special file"


def _archive_key(
    path: str | os.PathLike[str], archive: tarfile.TarFile, members: list[tarfile.TarInfo]
) -> bytes:
    """The key an archive's entries are sealed with, from its manifest."""
    manifest = next((m for m in members if m.name == "manifest.json"), None)
    if manifest is None:
        raise CacheError(
            f"could not import {path}: it is not an afml-cache archive (no manifest.json)"
        )
    where = f"could not import {path}: its manifest.json"
    if manifest.size > _MANIFEST_LIMIT:
        raise CacheError(f"{where} takes {manifest.size:,} bytes; export writes a few hundred")
    source = archive.extractfile(manifest)
    try:
        info = json.loads(source.read() if source is not None else b"")
    except ValueError as exc:
        raise CacheError(f"{where} is not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise CacheError(f"{where} is not a JSON object")
    if info.get("format") != _ARCHIVE_FORMAT:
        raise CacheError(f"{where} names format {info.get('format')!r}, not {_ARCHIVE_FORMAT!r}")
    key = info.get("key")
    if not isinstance(key, str) or re.fullmatch(r"[0-9a-fA-F]{64}", key) is None:
        raise CacheError(
            f'{where} has no archive key (64 hex digits under "key"), so its entries cannot be '
            "verified; nothing was imported. Export the archive again"
        )
    return bytes.fromhex(key)
