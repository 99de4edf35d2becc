//! Small entries, packed: one append-only file per shard instead of a file per entry.
//!
//! Creating a file (an inode, two directory entries) is nearly all a small `set` costs, and a
//! 300-byte entry in a file of its own holds a 4 KiB page and an inode. So an entry whose sealed
//! form is under [`PACKED_BELOW`] bytes is appended to `entries/<namespace>/<d0d1>.pack`, under
//! that pack's `flock`, as a record:
//!
//! ```text
//!  0   4  magic "AFPK"
//!  4   4  length of the sealed entry (u32; 0 = a tombstone: the key was removed)
//!  8  32  digest of the key
//! 40   8  first 8 bytes of BLAKE3 over bytes 0..40 (a frame torn or damaged is not read)
//! 48   …  the sealed entry exactly as in a file (prefix, counters, header, payload, MAC)
//! ```
//!
//! A pack's first record is its header: the all-zero digest and 16 random bytes, new for each
//! file written (created or compacted), that name this pack file. A tombstone of the all-ones
//! digest is a mark that every record before it is gone (see "Damage" below).
//!
//! The newest record of a digest wins. Each process keeps, per pack, the digests' newest
//! records, read from where it stopped to the end of the file on each lookup (another pack file,
//! after a compaction, is read from the start: its header differs, whatever inode it got). A record is seen once it is whole: a writer killed
//! mid-append leaves an incomplete tail that readers stop at and the next writer cuts off; a
//! damaged record fails its MAC like a damaged file, and one whose frame is damaged is passed
//! over to the next whole record (its entry is lost, not the records after it). A key is in a pack or in a file, never both:
//! a packed write removes the key's file under the pack's lock, and a file installed for a key
//! appends a tombstone to its pack. A pack whose dead records pass half of it is rewritten with
//! its live records and renamed over (readers notice the new inode).
//!
//! Damage: a damaged or torn record may have been its key's newest (an overwrite, a delete), so
//! the key's older records must not be served in its place. A torn tail whose frame is whole
//! names its key: readers miss that key while the tail is there, and the next writer cuts it off
//! and appends the key's tombstone. A record whose key cannot be told (a frame damaged in the
//! middle, or a tail too short to hold its frame) ends every record before it: readers miss the
//! whole pack while such a tail is there, and the writer that cuts it off appends the mark.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::entry::{self, Counters, MAC_LEN};
use super::{is_absent, is_read_only, layout, lock, Keyring, Problem, Scanned, Store, Trust};
use crate::codec;
use crate::error::{Error, Result};

/// Entries whose sealed form is smaller than this are packed; larger ones get a file each.
pub const PACKED_BELOW: usize = 4096;

const MAGIC: &[u8; 4] = b"AFPK";
const FRAME_LEN: usize = 48;
/// The header record's digest (no key's: a BLAKE3 output) and the length of its id.
const HEADER_DIGEST: [u8; 32] = [0; 32];
/// A tombstone of this digest (no key's either) ends every record before it.
const LOST_DIGEST: [u8; 32] = [0xff; 32];
const ID_LEN: usize = 16;
const HEADER_LEN: usize = FRAME_LEN + ID_LEN;

/// A pack is rewritten once its dead records pass half of it and it is at least this large.
const COMPACT_FROM: u64 = 64 << 10;

/// A pack's lock is held for one append (or a compaction); waiting longer means trouble.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a record's sealed entry lies in its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    offset: u64,
    len: u32,
}

/// One process's view of a pack: the newest record of each live digest, as far as it has read.
#[derive(Debug, Default)]
pub(super) struct PackIndex {
    /// (device, inode, creation time) of the pack file indexed: an inode number is reused once
    /// its file is deleted.
    identity: (u64, u64, i128),
    /// The pack file's id, from its header: an inode and its times may be reused by the next
    /// file (a file system without creation times, a clock step), its id is not.
    id: [u8; ID_LEN],
    /// Bytes read: the end of the last whole record.
    end: u64,
    /// By [`slot`]: 8 bytes of digest instead of 32 halve the index of a million entries.
    live: HashMap<u64, Record>,
    /// Bytes of superseded records and tombstones.
    dead: u64,
    /// What follows the last whole record, as last read.
    tail: Tail,
}

/// The bytes after a pack's last whole record: a record being appended, or one whose writer
/// was killed (or whose bytes a power loss cut short).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Tail {
    #[default]
    None,
    /// Its frame is whole: it writes this key.
    Of([u8; 32]),
    /// Too short to hold its frame, or the frame is damaged: any key's.
    Unknown,
}

impl Tail {
    fn of(bytes: &[u8]) -> Tail {
        match read_frame(bytes) {
            _ if bytes.is_empty() => Tail::None,
            Some((digest, _)) if digest != HEADER_DIGEST && digest != LOST_DIGEST => Tail::Of(digest),
            _ => Tail::Unknown,
        }
    }

    /// Whether the key of `digest` may have been written (or removed) by this tail: its older
    /// records must not be served meanwhile.
    fn hides(&self, digest: &[u8; 32]) -> bool {
        match self {
            Tail::None => false,
            Tail::Of(written) => slot(written) == slot(digest),
            Tail::Unknown => true,
        }
    }
}

/// What [`walk`] meets, in order.
#[derive(Debug, Clone, Copy)]
enum Seen {
    /// A key's record, or its tombstone (None).
    Key([u8; 32], Option<Record>),
    /// A record whose key cannot be told (a damaged frame, of this many bytes, or the mark a
    /// writer appends for a torn one): it may have been any key's newest, so every record before
    /// it ends.
    Lost(u64),
}

impl Seen {
    fn of(digest: [u8; 32], record: Option<Record>) -> Seen {
        match (digest, record) {
            (LOST_DIGEST, None) => Seen::Lost(FRAME_LEN as u64),
            _ => Seen::Key(digest, record),
        }
    }
}

impl PackIndex {
    fn apply(&mut self, seen: Seen) {
        let replaced = match seen {
            Seen::Key(digest, Some(record)) => self.live.insert(slot(&digest), record),
            Seen::Key(digest, None) => {
                self.dead += FRAME_LEN as u64;
                self.live.remove(&slot(&digest))
            }
            Seen::Lost(bytes) => {
                self.dead += bytes;
                for (_, old) in self.live.drain() {
                    self.dead += FRAME_LEN as u64 + u64::from(old.len);
                }
                None
            }
        };
        if let Some(old) = replaced {
            self.dead += FRAME_LEN as u64 + u64::from(old.len);
        }
    }

    /// Reads the records `file` gained since the last call (all of them if it is another file
    /// than indexed, or shorter); returns the file's size. Refuses a pack others could write.
    fn catch_up(&mut self, file: &File, path: &Path, trust: Trust) -> Result<u64> {
        let meta = file.metadata().map_err(|e| Error::io("cannot stat", path, e))?;
        trust.check_shared_file(path, &meta)?;
        let identity = identity(&meta);
        let mut header = [0u8; HEADER_LEN];
        let n = read_up_to(file, &mut header, 0).map_err(|e| Error::io("cannot read", path, e))?;
        let id = pack_id(&header[..n]).unwrap_or_default();
        if identity != self.identity || id != self.id || meta.len() < self.end {
            *self = PackIndex { identity, id, ..PackIndex::default() };
        }
        self.tail = Tail::None;
        if meta.len() > self.end {
            let mut tail = vec![0u8; (meta.len() - self.end) as usize];
            let n = read_up_to(file, &mut tail, self.end).map_err(|e| Error::io("cannot read", path, e))?;
            let base = self.end;
            let walked = walk(&tail[..n], base, |seen| self.apply(seen));
            self.end += walked.whole as u64;
            self.tail = Tail::of(&tail[walked.whole..n]);
        }
        Ok(meta.len())
    }
}

/// A digest's place in an index: its bytes 1..9 (byte 0 is the same for the whole pack). Two
/// keys of a pack sharing them (odds about n²/2⁶⁵ for n keys) share a place, the newer record
/// holding it: a read of the other key finds a header naming another key, a miss, never its value.
fn slot(digest: &[u8; 32]) -> u64 {
    u64::from_le_bytes(digest[1..9].try_into().expect("8 bytes"))
}

fn identity(meta: &fs::Metadata) -> (u64, u64, i128) {
    let born = meta.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    (meta.dev(), meta.ino(), born.map_or(-1, |d| d.as_nanos() as i128))
}

/// A pack's header record: the frame of the all-zero digest, then the pack file's id.
fn header(id: &[u8; ID_LEN]) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..FRAME_LEN].copy_from_slice(&frame(&HEADER_DIGEST, ID_LEN as u32));
    out[FRAME_LEN..].copy_from_slice(id);
    out
}

/// The id in a pack's header (its first bytes); None if it has none (empty, or damaged).
fn pack_id(start: &[u8]) -> Option<[u8; ID_LEN]> {
    match read_frame(start)? {
        (HEADER_DIGEST, len) if len as usize == ID_LEN => start.get(FRAME_LEN..HEADER_LEN)?.try_into().ok(),
        _ => None,
    }
}

fn new_id() -> Result<[u8; ID_LEN]> {
    let mut id = [0u8; ID_LEN];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .map_err(|e| Error::io("cannot read", "/dev/urandom", e))?;
    Ok(id)
}

fn frame(digest: &[u8; 32], len: u32) -> [u8; FRAME_LEN] {
    let mut out = [0u8; FRAME_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..40].copy_from_slice(digest);
    let check = blake3::hash(&out[..40]);
    out[40..].copy_from_slice(&check.as_bytes()[..8]);
    out
}

/// The digest and sealed length of a whole, undamaged frame at the start of `bytes`.
fn read_frame(bytes: &[u8]) -> Option<([u8; 32], u32)> {
    let head = bytes.get(..FRAME_LEN)?;
    if &head[..4] != MAGIC || head[40..] != blake3::hash(&head[..40]).as_bytes()[..8] {
        return None;
    }
    Some((head[8..40].try_into().expect("32 bytes"), u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"))))
}

/// What [`walk`] found besides the records.
struct Walked {
    /// The bytes up to the end of the last whole record.
    whole: usize,
    /// Stretches between whole records that hold none (a record whose frame was damaged in
    /// place), as offsets in the pack.
    damaged: Vec<std::ops::Range<u64>>,
}

/// Calls `each` for every whole record in `bytes` (the pack from offset `base` on) and every
/// damaged stretch between them, in order (the header is passed over).
fn walk(bytes: &[u8], base: u64, mut each: impl FnMut(Seen)) -> Walked {
    let (mut at, mut whole, mut damaged) = (0, 0, Vec::new());
    loop {
        if let Some((digest, len)) = whole_record(&bytes[at..]) {
            if digest != HEADER_DIGEST {
                each(Seen::of(digest, (len > 0).then_some(Record { offset: base + (at + FRAME_LEN) as u64, len })));
            }
            at += FRAME_LEN + len as usize;
            whole = at;
            continue;
        }
        // The tail a writer is appending (or was killed in), which the next writer cuts off, or
        // a frame damaged in place: a whole record after it tells them apart, and the records
        // after a damaged one stay readable (else the next writer would cut them off too).
        // Such a record passes its frame's check; its entry is checked by its MAC when read.
        let Some(rest) = bytes.get(at + 1..) else { break };
        let next = rest
            .windows(MAGIC.len())
            .enumerate()
            .filter(|(_, w)| w == MAGIC)
            .map(|(i, _)| at + 1 + i)
            .find(|&i| whole_record(&bytes[i..]).is_some());
        let Some(next) = next else { break };
        damaged.push(base + at as u64..base + next as u64);
        each(Seen::Lost((next - at) as u64));
        at = next;
    }
    Walked { whole, damaged }
}

/// The newest record of each key in a whole pack's bytes, as a reader indexes them.
fn live_records(bytes: &[u8]) -> (HashMap<[u8; 32], Record>, Walked) {
    let mut live = HashMap::new();
    let walked = walk(bytes, 0, |seen| match seen {
        Seen::Key(digest, Some(record)) => {
            live.insert(digest, record);
        }
        Seen::Key(digest, None) => {
            live.remove(&digest);
        }
        Seen::Lost(_) => live.clear(),
    });
    (live, walked)
}

/// The frame of a whole record at the start of `bytes` (see [`read_frame`]).
fn whole_record(bytes: &[u8]) -> Option<([u8; 32], u32)> {
    read_frame(bytes).filter(|&(_, len)| FRAME_LEN + len as usize <= bytes.len())
}

fn read_up_to(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], at + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A checked digest (64 lowercase hex digits) as bytes.
pub(super) fn digest_bytes(digest: &str) -> [u8; 32] {
    let hex = |b: u8| if b.is_ascii_digit() { b - b'0' } else { b - b'a' + 10 };
    let mut out = [0u8; 32];
    for (i, pair) in digest.as_bytes().chunks_exact(2).enumerate() {
        out[i] = hex(pair[0]) << 4 | hex(pair[1]);
    }
    out
}

fn digest_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where an entry is: a file of its own (offset 0, the file's length) or a record in a pack.
#[derive(Debug)]
pub(super) struct Location {
    /// The entry file, or the pack.
    pub path: PathBuf,
    pub file: File,
    /// Where the sealed entry starts in `file`, and its length.
    pub offset: u64,
    pub len: u64,
    pub packed: bool,
}

impl Location {
    /// The sealed entry's bytes. A pack shorter than its index says is damaged: a corrupt entry.
    pub fn read(&self) -> Result<Vec<u8>> {
        // calloc'd: large buffers arrive as untouched zero pages, so the advice applies to every
        // page the read then faults in.
        let mut bytes = vec![0u8; self.len as usize];
        crate::memory::advise_huge_pages(bytes.as_mut_ptr(), bytes.len());
        match self.file.read_exact_at(&mut bytes, self.offset) {
            Ok(()) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(Error::CorruptEntry("it is shorter than its record says".into()))
            }
            Err(e) => Err(Error::io("cannot read", &self.path, e)),
        }
    }

    pub fn counters(&self) -> Option<Counters> {
        let mut bytes = [0u8; 16];
        self.file.read_exact_at(&mut bytes, self.offset + entry::COUNTERS.start as u64).ok()?;
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Some(Counters { hits: word(0), last_access_ns: word(8) })
    }

    /// Best effort: the counters only steer eviction.
    pub fn write_counters(&self, counters: Counters) {
        let _ = self.file.write_at(&counters.to_bytes(), self.offset + entry::COUNTERS.start as u64);
    }

    /// The digest a packed record's frame names (None for a file).
    pub fn framed_digest(&self) -> Option<[u8; 32]> {
        let mut digest = [0u8; 32];
        let at = self.offset.checked_sub(FRAME_LEN as u64 - 8).filter(|_| self.packed)?;
        self.file.read_exact_at(&mut digest, at).ok()?;
        Some(digest)
    }

    /// The MAC in the entry's last 32 bytes.
    pub fn mac(&self) -> Result<Option<[u8; 32]>> {
        if self.len < MAC_LEN as u64 {
            return Ok(None);
        }
        let mut mac = [0u8; MAC_LEN];
        let at = self.offset + self.len - MAC_LEN as u64;
        self.file.read_exact_at(&mut mac, at).map_err(|e| Error::io("cannot read", &self.path, e))?;
        Ok(Some(mac))
    }
}

impl Store {
    /// The entry of `key`, opened (read-write if `write` and allowed): its packed record if it
    /// has one, else its file; None if neither exists.
    pub(super) fn locate_entry(&self, namespace: &str, key: &str, write: bool) -> Result<Option<Location>> {
        let path = self.entry_path(namespace, key)?;
        let pack = layout::pack_path(&self.root, namespace, key);
        if let Some(found) = self.find_packed(&pack, &digest_bytes(key), write)? {
            return Ok(Some(found));
        }
        let Some(file) = open(&path, write)? else { return Ok(None) };
        let len = file.metadata().map_err(|e| Error::io("cannot stat", &path, e))?.len();
        Ok(Some(Location { path, file, offset: 0, len, packed: false }))
    }

    fn find_packed(&self, pack: &Path, digest: &[u8; 32], write: bool) -> Result<Option<Location>> {
        let Some(file) = open(pack, write)? else { return Ok(None) };
        let shared = self.pack_index(pack);
        let mut index = shared.lock();
        index.catch_up(&file, pack, self.trust)?;
        if index.tail.hides(digest) {
            drop(index);
            if self.torn_tail_hides(pack, &file, digest)? {
                return Ok(None);
            }
            index = shared.lock();
        }
        let Some(&record) = index.live.get(&slot(digest)) else { return Ok(None) };
        drop(index);
        let (offset, len) = (record.offset, u64::from(record.len));
        Ok(Some(Location { path: pack.to_path_buf(), file, offset, len, packed: true }))
    }

    /// Whether the tail after the last whole record of `pack` may have written the key of
    /// `digest` and is torn, so that the key's older record must not be served. A tail that a
    /// writer is appending (it holds the pack's lock) is not torn: until its `set` returns, the
    /// older value is the key's value. A free lock means no append is under way; the tail is
    /// read again under it. When the lock cannot be taken at all (a read-only cache), a miss.
    fn torn_tail_hides(&self, pack: &Path, file: &File, digest: &[u8; 32]) -> Result<bool> {
        let lock_path = layout::pack_lock_path(&self.root, pack);
        match lock::try_acquire(&lock_path, self.trust) {
            Ok(Some(_held)) => {
                let index = self.pack_index(pack);
                let mut index = index.lock();
                index.catch_up(file, pack, self.trust)?;
                Ok(index.tail.hides(digest))
            }
            Ok(None) => Ok(false),
            Err(_) => Ok(true),
        }
    }

    /// This process's index of `pack`.
    fn pack_index(&self, pack: &Path) -> std::sync::Arc<parking_lot::Mutex<PackIndex>> {
        let ring = self.keyring();
        let mut packs = ring.packs.lock();
        packs.entry(pack.to_path_buf()).or_default().clone()
    }

    /// Runs `change` under the lock of `pack` (created if `create`, else None when there is
    /// none), with this process's index of it caught up and any torn tail cut off (and what it
    /// may have written ended).
    fn with_pack<T>(
        &self,
        pack: &Path,
        create: bool,
        change: impl FnOnce(&File, &mut PackIndex) -> Result<T>,
    ) -> Result<Option<T>> {
        if !create && !pack.exists() {
            return Ok(None);
        }
        let lock_path = layout::pack_lock_path(&self.root, pack);
        let Some(_held) = lock::acquire(&lock_path, LOCK_TIMEOUT, self.trust)? else {
            let waited = std::io::Error::new(std::io::ErrorKind::TimedOut, "held by another process for 30 s");
            return Err(Error::io("cannot lock", lock_path, waited));
        };
        let file = if create {
            // Appended to in place by every writer, like the counters: the shared mode.
            self.trust.open_or_create(pack, self.trust.shared_mode())?
        } else {
            match open(pack, true)? {
                Some(file) => file,
                None => return Ok(None),
            }
        };
        let index = self.pack_index(pack);
        let mut index = index.lock();
        let size = index.catch_up(&file, pack, self.trust)?;
        if size > index.end {
            // A writer stopped mid-append (or the pack is damaged from here on).
            file.set_len(index.end).map_err(|e| Error::io("cannot truncate", pack, e))?;
            if index.end > 0 {
                self.end_torn(pack, &file, &mut index)?;
            }
        }
        if index.end == 0 {
            // New, or damaged from its start (its records were unreadable): a new pack file.
            let id = new_id()?;
            file.write_all_at(&header(&id), 0).map_err(|e| Error::io("cannot write", pack, e))?;
            *index = PackIndex { identity: index.identity, id, end: HEADER_LEN as u64, ..PackIndex::default() };
        }
        change(&file, &mut index).map(Some)
    }

    /// After a torn tail was cut off: it may have been an acknowledged write whose bytes a power
    /// loss cut short, so the key it wrote (or, when its frame is torn too, every key) ends
    /// rather than keeping an older value.
    fn end_torn(&self, pack: &Path, file: &File, index: &mut PackIndex) -> Result<()> {
        let (digest, ended): ([u8; 32], Vec<Record>) = match std::mem::take(&mut index.tail) {
            Tail::None => return Ok(()),
            Tail::Of(digest) => (digest, index.live.get(&slot(&digest)).copied().into_iter().collect()),
            Tail::Unknown => (LOST_DIGEST, index.live.values().copied().collect()),
        };
        append(file, index, &digest, None).map_err(|e| Error::io("cannot write", pack, e))?;
        let ring = self.keyring();
        for record in ended {
            self.count_removed_in(&ring, layout::namespace_of(pack), u64::from(record.len));
        }
        Ok(())
    }

    /// Appends `sealed` as the entry of `key` (replacing its file, if it had one), counts it and
    /// evicts if the cache is now over its limit.
    pub(super) fn put_packed(&self, ring: &Keyring, namespace: &str, key: &str, sealed: &[u8]) -> Result<()> {
        let pack = layout::pack_path(&self.root, namespace, key);
        let entry_file = layout::entry_path(&self.root, namespace, key);
        let digest = digest_bytes(key);
        let (old_record, old_file) = self
            .with_pack(&pack, true, |file, index| {
                let old_record = index.live.get(&slot(&digest)).map(|r| u64::from(r.len));
                append(file, index, &digest, Some(sealed)).map_err(|e| Error::io("cannot write", &pack, e))?;
                // Under the lock, so that a file installed meanwhile finds this record.
                let old_file = self.take(&entry_file).ok().flatten();
                self.compact_if_due(&pack, file, index)?;
                Ok((old_record, old_file))
            })?
            .expect("created");
        let dir = layout::namespace_dir(namespace);
        if let Some(bytes) = old_file {
            self.count_removed_in(ring, Some(&dir), bytes);
        }
        self.count_installed_in(ring, Some(&dir), sealed.len() as u64, old_record)
    }

    /// Removes the packed entry of `digest` from `pack` (only the record at `only`, when given:
    /// the one a failed read saw) and counts it; returns its size.
    pub(super) fn remove_packed(&self, pack: &Path, digest: &[u8; 32], only: Option<u64>) -> Option<u64> {
        let removed = self
            .with_pack(pack, false, |file, index| {
                let Some(record) = index.live.get(&slot(digest)).copied() else { return Ok(None) };
                if only.is_some_and(|offset| offset != record.offset) {
                    return Ok(None);
                }
                append(file, index, digest, None).map_err(|e| Error::io("cannot write", pack, e))?;
                self.compact_if_due(pack, file, index)?;
                Ok(Some(u64::from(record.len)))
            })
            .ok()
            .flatten()
            .flatten()?;
        self.count_removed_in(&self.keyring(), layout::namespace_of(pack), removed);
        Some(removed)
    }

    /// After a file was installed at `entry_file`: removes the key's packed record, so that the
    /// file (the newer form) is the only one.
    pub(super) fn unpack(&self, entry_file: &Path) {
        if let Some((pack, digest)) = layout::pack_of_entry(entry_file) {
            self.remove_packed(&pack, &digest_bytes(&digest), None);
        }
    }

    /// Rewrites the pack with its live records only, once the dead ones pass half of it.
    fn compact_if_due(&self, pack: &Path, file: &File, index: &mut PackIndex) -> Result<()> {
        if index.end < COMPACT_FROM || index.dead * 2 <= index.end {
            return Ok(());
        }
        self.compact(pack, file, index)
    }

    /// Rewrites `pack` with its live records only, renamed over it.
    fn compact(&self, pack: &Path, file: &File, index: &mut PackIndex) -> Result<()> {
        let mut old = vec![0u8; index.end as usize];
        file.read_exact_at(&mut old, 0).map_err(|e| Error::io("cannot read", pack, e))?;
        let mut live: Vec<(u64, Record)> = index.live.iter().map(|(d, r)| (*d, *r)).collect();
        live.sort_by_key(|(_, r)| r.offset);
        let id = new_id()?;
        let mut fresh = Vec::with_capacity((index.end - index.dead) as usize);
        fresh.extend_from_slice(&header(&id));
        let mut records = HashMap::with_capacity(live.len());
        for (place, record) in live {
            let start = record.offset as usize;
            // The whole digest, from the record's own frame.
            let digest: [u8; 32] = old[start - FRAME_LEN + 8..start - 8].try_into().expect("32 bytes");
            fresh.extend_from_slice(&frame(&digest, record.len));
            records.insert(place, Record { offset: fresh.len() as u64, len: record.len });
            fresh.extend_from_slice(&old[start..start + record.len as usize]);
        }
        let (temp, new_file) = self.new_temp(pack)?;
        let written = new_file
            .write_all_at(&fresh, 0)
            .and_then(|()| new_file.set_permissions(fs::Permissions::from_mode(self.trust.shared_mode())))
            .and_then(|()| fs::rename(&temp, pack));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(Error::io("cannot compact", pack, e));
        }
        let meta = new_file.metadata().map_err(|e| Error::io("cannot stat", pack, e))?;
        *index = PackIndex {
            identity: identity(&meta),
            id,
            end: fresh.len() as u64,
            live: records,
            dead: 0,
            tail: Tail::None,
        };
        Ok(())
    }

    /// The live entries of a pack, as a scan sees them (headers not verified).
    pub(super) fn scan_pack(&self, pack: &Path) -> Vec<Scanned> {
        let Ok(bytes) = fs::read(pack) else { return Vec::new() };
        let (live, _) = live_records(&bytes);
        let mut out: Vec<Scanned> = live
            .into_iter()
            .filter_map(|(digest, record)| {
                let sealed = &bytes[record.offset as usize..][..record.len as usize];
                let (header, counters) = entry::peek(sealed).ok()?;
                // A record whose header names another key cannot be read; `check` reports it.
                (header.key == digest_hex(&digest)).then(|| Scanned {
                    path: pack.to_path_buf(),
                    bytes: u64::from(record.len),
                    header,
                    counters,
                })
            })
            .collect();
        out.sort_by(|a, b| a.header.key.cmp(&b.header.key));
        out
    }

    /// `check` of one pack: its problems, and the size of each good entry. With `fix`, damaged records are removed and a damaged tail cut off.
    pub(super) fn check_pack(&self, pack: &Path, fix: bool) -> (Vec<Problem>, Vec<u64>) {
        let problem = |problem: String, fixed: bool| Problem { path: pack.to_path_buf(), problem, fixed };
        let mut bytes = match fs::read(pack) {
            Ok(bytes) => bytes,
            Err(e) => return (vec![problem(format!("cannot read: {e}"), false)], Vec::new()),
        };
        let (mut live, mut walked) = live_records(&bytes);
        let (mut problems, mut good) = (Vec::new(), Vec::new());
        let whole = walked.whole;
        if whole < bytes.len() {
            let ends = match Tail::of(&bytes[whole..]) {
                Tail::Of(digest) => format!("the entry of {} it began ends with it", digest_hex(&digest)),
                _ => "too short to tell whose record it began, it ends every entry before it".into(),
            };
            let why = format!(
                "{} bytes after its last whole record at byte {whole} (a write cut short, or damage): {ends}",
                bytes.len() - whole
            );
            // Cut off (under the lock) by `with_pack`, if it is still there, which ends what
            // it may have written: the records left are read again.
            let fixed = fix && self.with_pack(pack, false, |_, _| Ok(())).is_ok();
            problems.push(problem(why, fixed));
            if let Some(after) = fixed.then(|| fs::read(pack).ok()).flatten() {
                (live, walked) = live_records(&after);
                bytes = after;
            }
        }
        let mut records: Vec<_> = live.into_iter().collect();
        records.sort_by_key(|(_, r)| r.offset);
        for (digest, record) in records {
            let sealed = &bytes[record.offset as usize..][..record.len as usize];
            match self.verify_packed(pack, &digest, sealed) {
                Ok(()) => good.push(u64::from(record.len)),
                Err(why) => {
                    let fixed = fix && self.remove_packed(pack, &digest, Some(record.offset)).is_some();
                    let at = record.offset - FRAME_LEN as u64;
                    problems.push(problem(format!("the entry of {} at byte {at}: {why}", digest_hex(&digest)), fixed));
                }
            }
        }
        // Compacted away (under the lock) with the pack's other dead records, after the records
        // above were removed by their offsets.
        let compacted = fix
            && !walked.damaged.is_empty()
            && self.with_pack(pack, false, |file, index| self.compact(pack, file, index)).is_ok();
        for stretch in &walked.damaged {
            let (at, len) = (stretch.start, stretch.end - stretch.start);
            let why = format!(
                "{len} damaged bytes at byte {at}, between whole records (a record's frame, whose key cannot be \
                 told: the records before it are dropped)"
            );
            problems.push(problem(why, compacted));
        }
        (problems, good)
    }

    fn verify_packed(&self, pack: &Path, digest: &[u8; 32], sealed: &[u8]) -> std::result::Result<(), String> {
        let opened = entry::open(&self.keyring().mac_key, sealed).map_err(|e| e.to_string())?;
        let (namespace, key) = (&opened.header.namespace, &opened.header.key);
        if *key != digest_hex(digest) || layout::pack_path(&self.root, namespace, key) != pack {
            return Err("it holds the entry of another key".into());
        }
        for frame in &opened.frames {
            codec::decoded_len(&sealed[frame.clone()]).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Appends a record (a tombstone when `sealed` is None) at the end of the whole records.
fn append(file: &File, index: &mut PackIndex, digest: &[u8; 32], sealed: Option<&[u8]>) -> std::io::Result<()> {
    let sealed = sealed.unwrap_or_default();
    let len = u32::try_from(sealed.len()).map_err(|_| std::io::Error::other("too large to pack"))?;
    let mut record = Vec::with_capacity(FRAME_LEN + sealed.len());
    record.extend_from_slice(&frame(digest, len));
    record.extend_from_slice(sealed);
    let at = index.end;
    if let Err(e) = file.write_all_at(&record, at) {
        // Nothing half-written stays behind (a full disk); else the next writer cuts it off.
        let _ = file.set_len(at);
        return Err(e);
    }
    index.end += record.len() as u64;
    index.apply(Seen::of(*digest, (len > 0).then_some(Record { offset: at + FRAME_LEN as u64, len })));
    Ok(())
}

/// Opens `path` (read-write if `write` and allowed, for the access counters); None if absent.
/// What is not a regular file (a pipe, a device, a directory in an entry's place) is an error
/// naming it; it is opened without blocking, so a pipe never holds the caller.
fn open(path: &Path, write: bool) -> Result<Option<File>> {
    let opened = OpenOptions::new().read(true).write(write).custom_flags(libc::O_NONBLOCK).open(path);
    match opened {
        Ok(file) => match file.metadata() {
            Ok(meta) if meta.is_file() => Ok(Some(file)),
            Ok(_) => {
                let why = std::io::Error::other("not a regular file; `afml-cache health --fix` removes it");
                Err(Error::io("cannot read", path, why))
            }
            Err(e) => Err(Error::io("cannot stat", path, e)),
        },
        Err(e) if is_absent(&e) => Ok(None),
        // A read-only cache still reads.
        Err(e) if is_read_only(&e) && write => open(path, false),
        // A directory where a file belongs (read-write refuses it before the check above).
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            let why = std::io::Error::other("a directory, not a file; `afml-cache health --fix` removes it");
            Err(Error::io("cannot read", path, why))
        }
        Err(e) => Err(Error::io("cannot open", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pack(path: &Path, id: &[u8; ID_LEN], records: &[([u8; 32], &[u8])]) {
        let mut bytes = header(id).to_vec();
        for (digest, sealed) in records {
            bytes.extend_from_slice(&frame(digest, sealed.len() as u32));
            bytes.extend_from_slice(sealed);
        }
        let file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
        file.write_all_at(&bytes, 0).unwrap();
    }

    /// A reader's index is of one pack file: another one in its place (a compaction) is read
    /// afresh even when it got the old one's inode and times, as it can on a file system
    /// without creation times. Kept, the index would point into the new file at old offsets.
    #[test]
    fn another_pack_file_with_the_old_ones_inode_and_times_is_read_afresh() {
        let dir = std::env::temp_dir().join(format!("afml-pack-id-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ab.pack");
        let (one, two) = ([1u8; 32], [2u8; 32]);
        write_pack(&path, &[7; ID_LEN], &[(one, b"old value of one"), (two, b"two")]);
        let mut index = PackIndex::default();
        index.catch_up(&File::open(&path).unwrap(), &path, Trust::Owner).unwrap();
        let old_one = index.live[&slot(&one)];

        // Compacted: `two` first now, `one` where `two` was, and as long as the old file.
        write_pack(&path, &[8; ID_LEN], &[(two, b"two"), (one, b"new value of one")]);
        let file = File::open(&path).unwrap();
        index.identity = identity(&file.metadata().unwrap()); // as if inode and times were reused
        index.catch_up(&file, &path, Trust::Owner).unwrap();
        let new_one = index.live[&slot(&one)];
        assert_ne!(new_one, old_one);
        let mut read = vec![0u8; new_one.len as usize];
        file.read_exact_at(&mut read, new_one.offset).unwrap();
        assert_eq!(read, b"new value of one");
        assert_eq!(index.live.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
