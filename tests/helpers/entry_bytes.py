"""Where an entry's bytes live on disk, for tests that count, read or damage entries.

An entry is a file of its own (``entries/<namespace>/<k0k1>/<digest>.afc``) or, when its sealed
form is small, a record in its shard's pack file (``entries/<namespace>/<k0k1>.pack``); see
docs/store.md. `locate` asks the core where one entry is; `stored` reads the entry files and
packs without the core, so that tests counting entries or bytes check the core against the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import blake3

from afml_cache import _core, fingerprint

PREFIX_LEN = 40  # magic + version, hits, last access, header length, buffer count, payload length
MAC_LEN = 32
# Sealed entries below this many bytes are packed (src/store/pack.rs), each behind a frame.
PACK_LIMIT = 4096
PACK_MAGIC = b"AFPK"
FRAME_LEN = 48
PACK_HEADER_DIGEST = bytes(32)


@dataclass(frozen=True, order=True)
class Located:
    """An entry's sealed bytes: ``length`` bytes at ``offset`` in ``path``."""

    path: Path
    offset: int
    length: int

    @property
    def packed(self) -> bool:
        return self.path.suffix == ".pack"

    def read(self) -> bytes:
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read(self.length)
        assert len(data) == self.length, f"{self} is cut short on disk"
        return data

    def overwrite(self, data: bytes) -> None:
        """Replaces the sealed bytes in place with as many other bytes (a pack keeps its
        layout: only the record changes)."""
        assert len(data) == self.length
        with self.path.open("r+b") as file:
            file.seek(self.offset)
            file.write(data)

    def flip(self, position: int, mask: int = 0x01) -> None:
        """XORs ``mask`` into the sealed byte at ``position`` (negative: from the end)."""
        data = bytearray(self.read())
        data[position] ^= mask
        self.overwrite(bytes(data))

    def cut(self, keep: int) -> None:
        """Keeps only the first ``keep`` sealed bytes: a truncated file, or a torn record at the
        end of its pack (what a writer killed in the middle of an append leaves)."""
        assert 0 <= keep < self.length
        if self.packed:
            assert self.offset + self.length == self.path.stat().st_size, (
                f"{self} is not the last record of its pack: cutting it would cut others"
            )
        os.truncate(self.path, self.offset + keep)


def open_store(directory: Path, *, trust_group: bool = False) -> _core.Store:
    """The core's store on ``directory``, only to ask where entries are (it never evicts)."""
    return _core.Store(directory, 2**62, "lru", trust_group=trust_group)


def locate(
    directory: Path,
    key: object = None,
    *,
    digest: str | None = None,
    namespace: str = "default",
    trust_group: bool = False,
) -> Located | None:
    """Where the entry of ``key`` (or of ``digest``) in ``namespace`` is, or None."""
    found = open_store(directory, trust_group=trust_group).locate(
        namespace, digest if digest is not None else fingerprint(key)
    )
    return None if found is None else Located(Path(found[0]), found[1], found[2])


def located_entries(directory: Path, *, trust_group: bool = False) -> list[Located]:
    """Every entry the core lists, located by the core."""
    store = open_store(directory, trust_group=trust_group)
    found = (store.locate(info.namespace, info.digest) for info in store.scan(None))
    return sorted(Located(Path(f[0]), f[1], f[2]) for f in found if f is not None)


# --- the disk, read without the core ------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Stored:
    """One entry found on disk: the file holding it, and where its sealed bytes are."""

    path: Path
    offset: int
    length: int
    digest: str

    @property
    def located(self) -> Located:
        return Located(self.path, self.offset, self.length)


def entry_files(directory: Path) -> list[Path]:
    """The entries that are files of their own."""
    return sorted((directory / "entries").rglob("*.afc"))


def pack_files(directory: Path) -> list[Path]:
    return sorted((directory / "entries").rglob("*.pack"))


def temp_files(directory: Path) -> list[Path]:
    return sorted((directory / "entries").rglob("*.tmp"))


def stored(directory: Path) -> list[Stored]:
    """Every entry on disk: each ``.afc`` file, and the newest record of each digest in each
    pack unless it is a tombstone (a torn record at a pack's end holds no entry)."""
    found = [Stored(p, 0, p.stat().st_size, p.stem) for p in entry_files(directory)]
    for pack in pack_files(directory):
        found.extend(live_records(pack))
    return sorted(found)


def bytes_on_disk(directory: Path) -> int:
    """What the store counts as its volume: the sealed bytes of every entry."""
    return sum(s.length for s in stored(directory))


def pack_records(pack: Path) -> tuple[list[tuple[str, int, int]], int]:
    """The whole records of ``pack`` in order, as (digest, offset of the sealed entry, its
    length; 0 for a tombstone), and where they end (src/store/pack.rs: a 48-byte frame of magic
    "AFPK", u32 length, 32-byte digest and 8 bytes of BLAKE3 over those, then the sealed entry;
    the first record, of the all-zero digest, is the pack's header and holds no entry).
    Reading stops at the first frame that is damaged or whose record is cut short."""
    data = pack.read_bytes()
    records, at = [], 0
    while at + FRAME_LEN <= len(data):
        frame = data[at : at + FRAME_LEN]
        if frame[:4] != PACK_MAGIC or frame[40:] != blake3.blake3(frame[:40]).digest()[:8]:
            break
        length = int.from_bytes(frame[4:8], "little")
        if at + FRAME_LEN + length > len(data):
            break
        if frame[8:40] != PACK_HEADER_DIGEST:  # the pack's header: its id, no entry
            records.append((frame[8:40].hex(), at + FRAME_LEN, length))
        at += FRAME_LEN + length
    return records, at


def live_records(pack: Path) -> list[Stored]:
    """The newest record of each digest in ``pack``, unless it is a tombstone."""
    newest = {digest: (offset, length) for digest, offset, length in pack_records(pack)[0]}
    return [Stored(pack, o, n, digest) for digest, (o, n) in newest.items() if n > 0]


def pack_frame(digest: str, length: int) -> bytes:
    """A record's frame, as the core writes it."""
    head = PACK_MAGIC + length.to_bytes(4, "little") + bytes.fromhex(digest)
    return head + blake3.blake3(head).digest()[:8]
