//! One entry file: a fixed prefix, a header of metadata, the payload, and a keyed MAC.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "AFMLCE" + format version (u16)
//!      8     8  hits          (u64, updated in place on each hit; not covered by the MAC)
//!     16     8  last access   (u64 ns since the epoch, likewise)
//!     24     4  header length (u32)
//!     28     4  buffer count  (u32)
//!     32     8  payload length (u64)
//!     40     …  header (metadata, see `Header`)
//!      …     …  payload: u64 stream length ‖ pickle stream ‖ per buffer: u64 frame length ‖ codec frame
//!  end-32   32  MAC: keyed BLAKE3 over bytes 0..8 and 24..end-32
//! ```
//!
//! The two mutable counters sit outside the MAC on purpose: they only steer eviction, so a torn or
//! tampered counter can change what is evicted first but never what a hit returns. Everything a
//! hit returns is covered by the MAC, and an entry is only unpickled after the MAC verifies.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use blake3::hazmat::{ChainingValue, HasherExt};

use crate::codec::{self, Compression};

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 6] = b"AFMLCE";
pub const FORMAT_VERSION: u16 = 1;
pub const PREFIX_LEN: usize = 40;
pub const MAC_LEN: usize = 32;
pub const COUNTERS: Range<usize> = 8..24;
/// Entries at least this large are MAC-checked with BLAKE3's multi-threaded mode.
const PARALLEL_MAC: usize = 1 << 20;

/// What an entry says about itself; written by `set`, read by scans without loading the value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    pub namespace: String,
    pub key: String,
    /// Seconds since the epoch.
    pub created: f64,
    /// Seconds since the epoch after which the entry is expired, if any.
    pub expires: Option<f64>,
    /// How long the value took to compute, in seconds (0 when unknown).
    pub compute_time: f64,
    /// Bytes of the value before compression (pickle stream plus buffers).
    pub value_size: u64,
    pub protected: bool,
    pub tags: Vec<String>,
    /// The time range the value covers, in ns since the epoch (time-aware functions).
    pub time_range: Option<(i64, i64)>,
    /// The caller's metadata, as JSON text.
    pub metadata: String,
    pub compression: String,
}

/// The mutable counters of an entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub hits: u64,
    pub last_access_ns: u64,
}

impl Counters {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.hits.to_le_bytes());
        out[8..].copy_from_slice(&self.last_access_ns.to_le_bytes());
        out
    }
}

/// An entry ready to be written, in pieces, so that the stream and large frames are never
/// copied into one buffer: the head (prefix, header, stream length), the stream, each frame behind
/// its length, then the MAC.
pub struct Sealed<'a> {
    head: Vec<u8>,
    stream: &'a [u8],
    frames: &'a [Vec<u8>],
    lengths: Vec<[u8; 8]>,
    pub mac: [u8; 32],
}

impl Sealed<'_> {
    pub fn pieces(&self) -> Vec<&[u8]> {
        let mut out = Vec::with_capacity(3 + 2 * self.frames.len());
        out.push(self.head.as_slice());
        out.push(self.stream);
        for (length, frame) in self.lengths.iter().zip(self.frames) {
            out.push(length.as_slice());
            out.push(frame.as_slice());
        }
        out.push(self.mac.as_slice());
        out
    }

    /// Bytes the entry takes on disk.
    pub fn byte_len(&self) -> usize {
        self.pieces().iter().map(|p| p.len()).sum()
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.pieces().concat()
    }
}

/// Seals an entry. `frames` are codec frames of the value's out-of-band buffers.
pub fn seal<'a>(
    mac_key: &[u8; 32],
    header: &Header,
    stream: &'a [u8],
    frames: &'a [Vec<u8>],
    counters: Counters,
) -> Sealed<'a> {
    let payload_len = 8 + stream.len() + frames.iter().map(|f| 8 + f.len()).sum::<usize>();
    let head = head_bytes(header, counters, frames.len(), payload_len as u64, stream.len());
    let lengths: Vec<[u8; 8]> = frames.iter().map(|f| (f.len() as u64).to_le_bytes()).collect();
    let mut mac = Mac::new(mac_key);
    mac.update(&head);
    mac.update(stream);
    for (length, frame) in lengths.iter().zip(frames) {
        mac.update(length);
        mac.update(frame);
    }
    Sealed { head, stream, frames, lengths, mac: mac.finish() }
}

/// The prefix, header and stream length: every byte before the stream.
fn head_bytes(header: &Header, counters: Counters, buffers: usize, payload_len: u64, stream_len: usize) -> Vec<u8> {
    let header_bytes = encode_header(header);
    let mut head = Vec::with_capacity(PREFIX_LEN + header_bytes.len() + 8);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&counters.to_bytes());
    head.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    head.extend_from_slice(&(buffers as u32).to_le_bytes());
    head.extend_from_slice(&payload_len.to_le_bytes());
    head.extend_from_slice(&header_bytes);
    head.extend_from_slice(&(stream_len as u64).to_le_bytes());
    head
}

/// Chunks compressed together before they are written: 16 MiB of raw bytes per batch (at most
/// two batches in flight), so a value of any size costs a few tens of MiB beyond itself.
const BATCH_CHUNKS: usize = 32;

/// Writes an entry into `file` (new and empty) as it is made, for values too large to frame
/// in memory first: each buffer is compressed in batches of chunks straight from its source and
/// written at once, so no whole copy of the value or of its frames exists. The chunk tables and
/// lengths, known only at the end, go into the places left for them. The MAC is computed as the
/// batches are written (each batch is hashed while it is written and the next one compressed),
/// as blocks that do not depend on the tables before them (see [`BlockMac`]); the few blocks
/// that hold a table or the head are read back at the end. Returns the entry's size and its MAC
/// under each of `mac_keys` (the first one's is written; the others are for an upload that
/// seals the entry under another key, with no second pass over the file).
/// The layout and MAC are exactly [`seal`]'s: readers cannot tell the two apart.
pub fn write_streamed(
    file: &File,
    mac_keys: &[&[u8; 32]],
    header: &Header,
    stream: &[u8],
    buffers: &[(&[u8], usize)],
    compression: Compression,
) -> std::io::Result<(u64, Vec<[u8; 32]>)> {
    let mut head = head_bytes(header, Counters::default(), buffers.len(), 0, stream.len());
    file.write_all_at(&head, 0)?;
    let mut at = head.len() as u64;
    let mut macs: Vec<BlockMac> = mac_keys.iter().map(|key| BlockMac::new(key)).collect();
    for mac in &mut macs {
        mac.feed(&mut Run::at(at), &[stream]);
    }
    file.write_all_at(stream, at)?;
    at += stream.len() as u64;
    for &(data, itemsize) in buffers {
        let plan = codec::Plan::new(data.len(), itemsize, compression);
        let length_at = at;
        let mut frame_head = plan.header().to_vec();
        frame_head.resize(plan.head_len(), 0);
        at += 8 + frame_head.len() as u64;
        let frame_start = at - frame_head.len() as u64;
        let raws: Vec<&[u8]> = data.chunks(plan.chunk_size()).collect();
        let mut runs: Vec<Run> = macs.iter().map(|_| Run::at(at)).collect();
        let mut write = |first: usize, packed: &[codec::Packed]| -> std::io::Result<()> {
            for (i, packed) in (first..).zip(packed) {
                let stored = packed.stored(raws[i]);
                file.write_all_at(stored, at)?;
                frame_head[codec::HEADER_LEN + 4 * i..][..4].copy_from_slice(&packed.table_entry(raws[i]));
                at += stored.len() as u64;
            }
            Ok(())
        };
        let mut hash = |first: usize, packed: &[codec::Packed]| {
            let stored: Vec<&[u8]> = (first..).zip(packed).map(|(i, packed)| packed.stored(raws[i])).collect();
            for (mac, run) in macs.iter_mut().zip(&mut runs) {
                mac.feed(run, &stored);
            }
        };
        let batch = |first: usize| {
            let chunk = plan.chunk_size();
            plan.pack(&data[first * chunk..((first + BATCH_CHUNKS) * chunk).min(data.len())])
        };
        // Writing one batch overlaps hashing it and compressing the next.
        let mut ready: Option<(usize, Vec<codec::Packed>)> = None;
        for first in (0..raws.len()).step_by(BATCH_CHUNKS).map(Some).chain([None]) {
            let written = match ready.take() {
                Some((done, packed)) if crate::parallel::available() => {
                    let (written, ((), next)) = rayon::join(
                        || write(done, &packed),
                        || rayon::join(|| hash(done, &packed), || first.map(batch)),
                    );
                    ready = first.zip(next);
                    written
                }
                Some((done, packed)) => {
                    let written = write(done, &packed);
                    hash(done, &packed);
                    ready = first.map(|first| (first, batch(first)));
                    written
                }
                None => {
                    ready = first.map(|first| (first, batch(first)));
                    Ok(())
                }
            };
            written?;
        }
        let length = (at - frame_start).to_le_bytes();
        file.write_all_at(&length, length_at)?;
        file.write_all_at(&frame_head, frame_start)?;
    }
    let payload_len = at - head.len() as u64 + 8;
    head[32..40].copy_from_slice(&payload_len.to_le_bytes());
    file.write_all_at(&head[32..40], 32)?;
    // The blocks not hashed yet (those holding the head or a table) are read back from the file,
    // which now holds every byte before the MAC.
    let macs = macs
        .into_iter()
        .map(|mac| mac.finish(mac_input_len(at), |from, into| read_mac_input(file, from, into)))
        .collect::<std::io::Result<Vec<_>>>()?;
    file.write_all_at(&macs[0], at)?;
    Ok((at + MAC_LEN as u64, macs))
}

/// Bytes of the MAC's input hashed as one subtree of BLAKE3's tree, on their own: a power of two
/// of BLAKE3's 1 KiB chunks.
const MAC_BLOCK: u64 = 256 << 10;

/// The keyed BLAKE3 [`Mac`] of an entry, assembled from blocks of [`MAC_BLOCK`] bytes of its input
/// (the entry without the counters and the MAC) hashed in any order, on any thread. In BLAKE3's
/// tree mode such a block is a subtree whose chaining value depends only on its bytes and its
/// place, so the blocks merge into exactly the hash that feeding every byte in order gives; this
/// lets a writer hash chunks before the tables that precede them in the file are known.
pub(crate) struct BlockMac<'k> {
    key: &'k [u8; 32],
    /// The chaining value of each block hashed so far, by its index.
    blocks: Vec<Option<ChainingValue>>,
    /// The input's last block, begun and closed by [`BlockMac::close`].
    last: Option<blake3::Hasher>,
}

/// A contiguous stretch of an entry fed to a [`BlockMac`] in order: where it goes on, and the
/// block it has begun.
pub(crate) struct Run {
    next: u64,
    open: Option<blake3::Hasher>,
}

impl Run {
    /// A stretch from the start of the entry.
    pub(crate) fn start() -> Run {
        Run { next: 0, open: None }
    }

    /// A stretch that starts at `file_at` in the entry file (past the counters).
    pub(crate) fn at(file_at: u64) -> Run {
        debug_assert!(file_at >= COUNTERS.end as u64);
        Run { next: file_at - COUNTERS.len() as u64, open: None }
    }

    /// Goes on at the block edge `next`, the blocks before it being hashed elsewhere.
    fn skip_to(&mut self, next: u64) {
        debug_assert!(self.open.is_none() && self.next.is_multiple_of(MAC_BLOCK) && next.is_multiple_of(MAC_BLOCK));
        self.next = next;
    }
}

/// The bytes of `pieces` (contiguous, the first at `base`) that fall in `range`.
fn within<'a: 'p, 'p>(pieces: &'p [&'a [u8]], base: u64, range: Range<u64>) -> impl Iterator<Item = &'a [u8]> + 'p {
    let mut start = base;
    pieces.iter().filter_map(move |piece| {
        let (from, to) = (start, start + piece.len() as u64);
        start = to;
        let (lo, hi) = (range.start.max(from), range.end.min(to));
        (lo < hi).then(|| &piece[(lo - from) as usize..(hi - from) as usize])
    })
}

impl<'k> BlockMac<'k> {
    pub(crate) fn new(key: &'k [u8; 32]) -> Self {
        Self { key, blocks: Vec::new(), last: None }
    }

    fn hasher_at(&self, offset: u64) -> blake3::Hasher {
        let mut hasher = blake3::Hasher::new_keyed(self.key);
        hasher.set_input_offset(offset);
        hasher
    }

    /// The chaining value of the whole block at input offset `at`.
    fn hash_block(&self, at: u64, block: &[u8]) -> ChainingValue {
        self.hasher_at(at).update(block).finalize_non_root()
    }

    fn store(&mut self, block: u64, cv: ChainingValue) {
        let block = block as usize;
        if self.blocks.len() <= block {
            self.blocks.resize(block + 1, None);
        }
        self.blocks[block] = Some(cv);
    }

    /// Feeds `pieces`, the next bytes of `run`, and hashes every block they complete, sharing
    /// the threads. Bytes of a block that began before the run are left to
    /// [`BlockMac::finish`], as are those of a block that the run does not complete.
    pub(crate) fn feed(&mut self, run: &mut Run, pieces: &[&[u8]]) {
        use rayon::prelude::*;
        let start = run.next;
        let end = start + pieces.iter().map(|p| p.len() as u64).sum::<u64>();
        run.next = end;
        let first_whole = start.next_multiple_of(MAC_BLOCK);
        let whole_end = (end / MAC_BLOCK * MAC_BLOCK).max(first_whole);
        let this = &*self;
        // The block begun before, completed if these bytes reach its end.
        let lead = |open: Option<blake3::Hasher>| {
            let mut open = open?;
            within(pieces, start, start..first_whole).for_each(|part| {
                open.update(part);
            });
            Some(open)
        };
        let hash = |block: u64| {
            let mut hasher = this.hasher_at(block * MAC_BLOCK);
            within(pieces, start, block * MAC_BLOCK..(block + 1) * MAC_BLOCK).for_each(|part| {
                hasher.update(part);
            });
            (block, hasher.finalize_non_root())
        };
        let blocks = first_whole / MAC_BLOCK..whole_end / MAC_BLOCK;
        // The block these bytes begin and do not complete.
        let tail = || {
            (end > whole_end).then(|| {
                let mut open = this.hasher_at(whole_end);
                within(pieces, start, whole_end..end).for_each(|part| {
                    open.update(part);
                });
                open
            })
        };
        let open = run.open.take();
        let (lead, (hashed, tail)) = if blocks.end - blocks.start > 1 && crate::parallel::available() {
            rayon::join(|| lead(open), || rayon::join(|| blocks.into_par_iter().map(hash).collect::<Vec<_>>(), tail))
        } else {
            (lead(open), (blocks.map(hash).collect(), tail()))
        };
        match lead {
            Some(open) if end >= first_whole => self.store(first_whole / MAC_BLOCK - 1, open.finalize_non_root()),
            lead => run.open = lead,
        }
        for (block, cv) in hashed {
            self.store(block, cv);
        }
        if tail.is_some() {
            run.open = tail;
        }
    }

    /// Ends the input with `run`: the block it has begun is the last.
    pub(crate) fn close(&mut self, run: Run) {
        self.last = run.open;
    }

    /// The MAC of an input of `len` bytes: the blocks not hashed yet are read with `read` (which
    /// fills its buffer with the input from the given offset) and hashed, in parallel, then all
    /// are merged along BLAKE3's tree.
    pub(crate) fn finish(
        mut self,
        len: u64,
        read: impl Fn(u64, &mut [u8]) -> std::io::Result<()> + Sync,
    ) -> std::io::Result<[u8; 32]> {
        use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, Mode};
        use rayon::prelude::*;
        let count = len.div_ceil(MAC_BLOCK);
        if let Some(last) = self.last.take() {
            if count <= 1 {
                // One block is the whole tree: its hash is the root's, not a chaining value.
                return Ok(*last.finalize().as_bytes());
            }
            self.store(count - 1, last.finalize_non_root());
        }
        if count <= 1 {
            let mut all = vec![0; len as usize];
            read(0, &mut all)?;
            return Ok(*blake3::Hasher::new_keyed(self.key).update(&all).finalize().as_bytes());
        }
        debug_assert!(self.blocks.len() as u64 <= count, "a block was fed past the input's end");
        self.blocks.resize(count as usize, None);
        let missing: Vec<u64> = (0..count).filter(|&b| self.blocks[b as usize].is_none()).collect();
        let hash = |&block: &u64| -> std::io::Result<(u64, ChainingValue)> {
            let from = block * MAC_BLOCK;
            let mut bytes = vec![0; (len - from).min(MAC_BLOCK) as usize];
            read(from, &mut bytes)?;
            Ok((block, self.hasher_at(from).update(&bytes).finalize_non_root()))
        };
        let hashed: Vec<_> = if missing.len() > 1 && crate::parallel::available() {
            missing.par_iter().map(hash).collect::<std::io::Result<_>>()?
        } else {
            missing.iter().map(hash).collect::<std::io::Result<_>>()?
        };
        for (block, cv) in hashed {
            self.blocks[block as usize] = Some(cv);
        }
        // The chaining value of the subtree of `len` bytes at `from` (a multiple of its size).
        fn subtree(blocks: &[Option<ChainingValue>], mode: Mode, from: u64, len: u64) -> ChainingValue {
            if len <= MAC_BLOCK {
                return blocks[(from / MAC_BLOCK) as usize].expect("every block is hashed");
            }
            let left = left_subtree_len(len);
            let (l, r) = (subtree(blocks, mode, from, left), subtree(blocks, mode, from + left, len - left));
            merge_subtrees_non_root(&l, &r, mode)
        }
        let (mode, blocks, left) = (Mode::KeyedHash(self.key), &self.blocks, left_subtree_len(len));
        let (l, r) = (subtree(blocks, mode, 0, left), subtree(blocks, mode, left, len - left));
        Ok(*merge_subtrees_root(&l, &r, mode).as_bytes())
    }
}

/// Bytes of the MAC's input of an entry whose MAC starts at `mac_at`: all but the counters.
fn mac_input_len(mac_at: u64) -> u64 {
    mac_at - COUNTERS.len() as u64
}

/// Fills `into` with the entry's MAC input from offset `from` on, read from `file`.
fn read_mac_input(file: &File, from: u64, into: &mut [u8]) -> std::io::Result<()> {
    let skip = COUNTERS.start as u64;
    let (before, after) = into.split_at_mut((skip.saturating_sub(from) as usize).min(into.len()));
    file.read_exact_at(before, from)?;
    file.read_exact_at(after, (from + before.len() as u64) + COUNTERS.len() as u64)
}

/// Stored bytes read per step by [`Streamed::read_into`]: small enough that a step's bytes are
/// still in the processor's cache when they are hashed and decoded, large enough that a step's
/// joins cost little beside its work.
const READ_WINDOW: usize = 4 << 20;
/// Bytes per read when the threads share a step's reading: a huge page, so that no two threads
/// fault in the same one.
const READ_PIECE: usize = 2 << 20;

/// An entry file's structure, read without its chunks and *not yet verified*: enough to
/// allocate the value's final buffers before [`Streamed::read_into`] fills them.
pub struct Streamed {
    /// Every byte before the stream: prefix, header, stream length.
    head: Vec<u8>,
    pub header: Header,
    pub counters: Counters,
    stream: Range<u64>,
    frames: Vec<StreamedFrame>,
    mac_at: u64,
}

struct StreamedFrame {
    length: [u8; 8],
    /// The frame's header and chunk table.
    head: Vec<u8>,
    /// Where its first chunk starts in the file.
    chunks_at: u64,
    layout: codec::Layout,
}

fn read_at(file: &File, at: u64, len: usize) -> Result<Vec<u8>> {
    let mut out = vec![0; len];
    file.read_exact_at(&mut out, at).map_err(|_| corrupt("it is shorter than its lengths say"))?;
    Ok(out)
}

impl Streamed {
    /// Reads the structure of the entry in `file` (`len` bytes long): a few small reads. Every
    /// length is checked against the file's, so nothing read here can make a caller allocate
    /// beyond what the frames' own checks admit.
    pub fn plan(file: &File, len: u64) -> Result<Streamed> {
        if len < (PREFIX_LEN + MAC_LEN) as u64 {
            return Err(corrupt("shorter than the fixed prefix and MAC"));
        }
        let prefix = read_at(file, 0, PREFIX_LEN)?;
        let header_end = header_extent(&prefix)?;
        if (header_end + 8) as u64 > len {
            return Err(corrupt("its header is truncated"));
        }
        let head = read_at(file, 0, header_end + 8)?;
        let (header, counters, _, buffer_count) = parse_prefix_lenient(&head[..header_end])?;
        if (header_end as u64).checked_add(u64_at(&head, 32)).and_then(|n| n.checked_add(MAC_LEN as u64)) != Some(len) {
            return Err(corrupt("its length does not match the lengths in its prefix (truncated or padded)"));
        }
        let mac_at = len - MAC_LEN as u64;
        let mut at = (header_end + 8) as u64;
        let stream = at..at
            .checked_add(u64_at(&head, header_end))
            .filter(|&end| end <= mac_at)
            .ok_or_else(|| corrupt("a payload part runs past the end"))?;
        at = stream.end;
        let mut frames = Vec::with_capacity(buffer_count.min(1024));
        for _ in 0..buffer_count {
            if at + 8 + codec::HEADER_LEN as u64 > mac_at {
                return Err(corrupt("a payload length runs past the end"));
            }
            let length: [u8; 8] = read_at(file, at, 8)?.try_into().expect("8 bytes");
            let frame_len = u64::from_le_bytes(length);
            let start = at + 8;
            let end = start
                .checked_add(frame_len)
                .filter(|&end| end <= mac_at)
                .ok_or_else(|| corrupt("a payload part runs past the end"))?;
            let head_len = codec::head_len(&read_at(file, start, codec::HEADER_LEN)?).map_err(bad_frame)? as u64;
            if head_len > frame_len {
                return Err(corrupt("a frame's chunk table runs past the frame"));
            }
            let frame_head = read_at(file, start, head_len as usize)?;
            let layout = codec::layout(&frame_head, frame_len as usize).map_err(bad_frame)?;
            frames.push(StreamedFrame { length, head: frame_head, chunks_at: start + head_len, layout });
            at = end;
        }
        if at != mac_at {
            return Err(corrupt("the payload has bytes after its last buffer"));
        }
        Ok(Streamed { head, header, counters, stream, frames, mac_at })
    }

    /// Bytes of the pickle stream.
    pub fn stream_len(&self) -> usize {
        (self.stream.end - self.stream.start) as usize
    }

    /// Bytes of each buffer, decoded.
    pub fn buffer_lens(&self) -> Vec<usize> {
        self.frames.iter().map(|f| f.layout.raw_len()).collect()
    }

    /// Reads the stream into `stream` and decodes every buffer straight into its place in
    /// `buffers` (sized by [`Streamed::stream_len`] and [`Streamed::buffer_lens`]), feeding every
    /// byte to the MAC on the way. Returns the MAC once it verifies; until then nothing written
    /// into the outputs may be trusted, and on an error they hold garbage. Every byte the MAC
    /// takes is one the outputs were made from: nothing is read twice.
    pub fn read_into(
        &self,
        file: &File,
        mac_key: &[u8; 32],
        stream: &mut [u8],
        buffers: &mut [&mut [u8]],
    ) -> Result<[u8; 32]> {
        let mut mac = BlockMac::new(mac_key);
        let mut run = Run::start();
        mac.feed(&mut run, &[&self.head[..COUNTERS.start], &self.head[COUNTERS.end..]]);
        read_shared(file, stream, self.stream.start)?;
        mac.feed(&mut run, &[stream]);
        let mut steps = self.steps(buffers)?;
        // Frames whose length and head the MAC has taken: it takes bytes in file order.
        let mut headed = 0;
        let mut windows = [Vec::new(), Vec::new()];
        // Whether the step at hand was read already, while the one before it was decoded.
        let mut read_ahead = false;
        for k in 0..steps.len() {
            let (done, rest) = steps.split_at_mut(k + 1);
            let step = &mut done[k];
            for frame in &self.frames[headed..step.frame + 1] {
                mac.feed(&mut run, &[&frame.length, &frame.head]);
            }
            headed = headed.max(step.frame + 1);
            if step.direct {
                read_direct(file, &mut mac, &mut run, step)?;
                continue;
            }
            let [even, odd] = &mut windows;
            let (window, spare) = if k % 2 == 0 { (even, odd) } else { (odd, even) };
            if !read_ahead {
                read_window(file, step, window)?;
            }
            let layout = &self.frames[step.frame].layout;
            let mut digest = || -> Result<()> {
                mac.feed(&mut run, &[window]);
                layout.decode_chunks(step.chunks.clone(), window, step.out).map_err(bad_frame)
            };
            // Reading the next step overlaps hashing and decoding this one; each shares both
            // threads. A run of raw chunks is read on its turn, hashed as it is read.
            let next = rest.first_mut().filter(|next| !next.direct);
            read_ahead = next.is_some();
            match next {
                Some(next) if crate::parallel::available() => {
                    let (read, digested) = rayon::join(|| read_window(file, next, spare), digest);
                    read?;
                    digested?;
                }
                Some(next) => {
                    digest()?;
                    read_window(file, next, spare)?;
                }
                None => digest()?,
            }
        }
        for frame in &self.frames[headed..] {
            mac.feed(&mut run, &[&frame.length, &frame.head]);
        }
        mac.close(run);
        // Every block was fed from the bytes the outputs hold: none is read again (an input of
        // exactly one block, far below what is read in pieces, would need that, and is refused).
        let unread = |_, _: &mut [u8]| Err(std::io::Error::other("a block of the entry was not read"));
        let expected = mac.finish(mac_input_len(self.mac_at), unread).map_err(|e| corrupt(&e.to_string()))?;
        let stored: [u8; 32] = read_at(file, self.mac_at, MAC_LEN)?.try_into().expect("32 bytes");
        // Constant-time comparison through blake3's Hash equality.
        if blake3::Hash::from(expected) != blake3::Hash::from(stored) {
            return Err(corrupt(
                "the MAC does not match (the file was changed, truncated, or written with another key)",
            ));
        }
        Ok(stored)
    }

    /// The steps that read the frames' chunks in file order, each given its place in `buffers`:
    /// each run of raw chunks whole, and compressed chunks up to a window of stored bytes (at
    /// least one chunk each).
    fn steps<'o>(&self, buffers: &'o mut [&mut [u8]]) -> Result<Vec<Step<'o>>> {
        // The caller's mistake, not the entry's: sized by `buffer_lens`, the outputs fit.
        let misfit = || Error::InvalidArgument("the outputs given do not match the entry's buffers".into());
        if buffers.len() != self.frames.len() {
            return Err(misfit());
        }
        let mut steps = Vec::new();
        for (index, (frame, out)) in self.frames.iter().zip(buffers.iter_mut()).enumerate() {
            let layout = &frame.layout;
            if out.len() != layout.raw_len() {
                return Err(misfit());
            }
            let mut rest: &mut [u8] = out;
            let mut first = 0;
            while first < layout.chunks() {
                let (direct, start) = (layout.is_raw(first), layout.stored_span(first).start);
                let mut end = first + 1;
                while end < layout.chunks()
                    && layout.is_raw(end) == direct
                    && (direct || layout.stored_span(end).end - start <= READ_WINDOW)
                {
                    end += 1;
                }
                let raw_len = layout.raw_span(end - 1).end - layout.raw_span(first).start;
                let (out, tail) = std::mem::take(&mut rest).split_at_mut(raw_len);
                rest = tail;
                steps.push(Step {
                    frame: index,
                    chunks: first..end,
                    at: frame.chunks_at + (start - layout.head_len()) as u64,
                    len: layout.stored_span(end - 1).end - start,
                    direct,
                    out,
                });
                first = end;
            }
        }
        Ok(steps)
    }
}

/// A run of one frame's chunks stored alike, read in one step of [`Streamed::read_into`].
struct Step<'o> {
    frame: usize,
    chunks: Range<usize>,
    /// Where the run's stored bytes start in the file, and how many there are.
    at: u64,
    len: usize,
    /// Stored raw: read straight into `out`, with no copy. Otherwise read into a window and
    /// decoded from there.
    direct: bool,
    /// The run's place in its decoded buffer.
    out: &'o mut [u8],
}

/// Reads a compressed `step`'s stored bytes into `window`.
fn read_window(file: &File, step: &Step, window: &mut Vec<u8>) -> Result<()> {
    window.resize(step.len, 0);
    read_shared(file, window, step.at)
}

/// Reads a run of raw chunks straight into its place and feeds it to the MAC, the next bytes of
/// `run`. The threads share it in pieces of whole MAC blocks: each thread hashes the piece it
/// has just read while the piece is in its cache, and no thread waits for another until the
/// run is done. The bytes before the first block edge and after the last go through `run`.
fn read_direct(file: &File, mac: &mut BlockMac, run: &mut Run, step: &mut Step) -> Result<()> {
    use rayon::prelude::*;
    let start = run.next;
    let end = start + step.out.len() as u64;
    let (first_whole, whole_end) = (start.next_multiple_of(MAC_BLOCK), end / MAC_BLOCK * MAC_BLOCK);
    if whole_end <= first_whole || !crate::parallel::available() {
        read_shared(file, step.out, step.at)?;
        mac.feed(run, &[step.out]);
        return Ok(());
    }
    let (lead, rest) = step.out.split_at_mut((first_whole - start) as usize);
    let (whole, tail) = rest.split_at_mut((whole_end - first_whole) as usize);
    let changed = |_| corrupt("it changed size while being read");
    file.read_exact_at(lead, step.at).map_err(changed)?;
    let whole_at = step.at + lead.len() as u64;
    file.read_exact_at(tail, whole_at + whole.len() as u64).map_err(changed)?;
    let hasher = &*mac;
    let hashed: Vec<Vec<(u64, ChainingValue)>> = whole
        .par_chunks_mut(READ_PIECE)
        .enumerate()
        .map(|(i, piece)| {
            file.read_exact_at(piece, whole_at + (i * READ_PIECE) as u64).map_err(changed)?;
            let from = first_whole + (i * READ_PIECE) as u64;
            Ok(piece
                .chunks(MAC_BLOCK as usize)
                .zip((from..).step_by(MAC_BLOCK as usize))
                .map(|(block, at)| (at, hasher.hash_block(at, block)))
                .collect())
        })
        .collect::<Result<_>>()?;
    mac.feed(run, &[lead]);
    for (at, cv) in hashed.into_iter().flatten() {
        mac.store(at / MAC_BLOCK, cv);
    }
    run.skip_to(whole_end);
    mac.feed(run, &[tail]);
    Ok(())
}

/// Fills `into` from `file` at `at`, in pieces that free threads share: the kernel clears each
/// fresh page it copies into, so one thread reading a fresh buffer alone is the bottleneck.
fn read_shared(file: &File, into: &mut [u8], at: u64) -> Result<()> {
    use rayon::prelude::*;
    let base = into.as_ptr() as usize;
    let read = |piece: &mut [u8]| file.read_exact_at(piece, at + (piece.as_ptr() as usize - base) as u64);
    // Pieces start at huge-page boundaries of `into` (after a first, shorter one).
    let lead = into.as_ptr().align_offset(READ_PIECE).min(into.len());
    let (first, rest) = into.split_at_mut(lead);
    let read = if rest.len() > READ_PIECE && crate::parallel::available() {
        rayon::iter::once(first).chain(rest.par_chunks_mut(READ_PIECE)).try_for_each(read)
    } else {
        std::iter::once(first).chain(rest.chunks_mut(READ_PIECE)).try_for_each(read)
    };
    read.map_err(|_| corrupt("it changed size while being read"))
}

/// Re-seals an entry (verified elsewhere) under another MAC key, e.g. on import.
pub fn reseal(mac_key: &[u8; 32], entry: &[u8]) -> Vec<u8> {
    let body = &entry[..entry.len() - MAC_LEN];
    [body, &mac_of(mac_key, body)].concat()
}

fn mac_of(mac_key: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut mac = Mac::new(mac_key);
    mac.update(body);
    mac.finish()
}

/// Keyed BLAKE3 over an entry's bytes, fed in order, skipping the mutable counters.
pub(crate) struct Mac {
    hasher: blake3::Hasher,
    at: usize,
}

impl Mac {
    pub(crate) fn new(mac_key: &[u8; 32]) -> Self {
        Self { hasher: blake3::Hasher::new_keyed(mac_key), at: 0 }
    }

    pub(crate) fn update(&mut self, piece: &[u8]) {
        let start = self.at;
        self.at += piece.len();
        // The part of this piece that lies outside the counters (bytes 8..24 of the entry).
        let skip_from = COUNTERS.start.saturating_sub(start).min(piece.len());
        let skip_to = COUNTERS.end.saturating_sub(start).min(piece.len());
        for part in [&piece[..skip_from], &piece[skip_to..]] {
            if part.len() >= PARALLEL_MAC && crate::parallel::available() {
                self.hasher.update_rayon(part);
            } else {
                self.hasher.update(part);
            }
        }
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

/// The parts of a verified entry, as ranges into its bytes.
#[derive(Debug)]
pub struct Opened {
    pub header: Header,
    pub counters: Counters,
    pub stream: Range<usize>,
    pub frames: Vec<Range<usize>>,
}

/// Checks the framing and the MAC, then parses. Any problem is `Error::CorruptEntry`.
pub fn open(mac_key: &[u8; 32], bytes: &[u8]) -> Result<Opened> {
    let (header, counters, header_end, buffer_count) = parse_prefix(bytes)?;
    let body_end = bytes.len() - MAC_LEN;
    let expected = mac_of(mac_key, &bytes[..body_end]);
    // Constant-time comparison through blake3's Hash equality.
    if blake3::Hash::from(expected) != blake3::Hash::from(<[u8; 32]>::try_from(&bytes[body_end..]).unwrap()) {
        return Err(corrupt("the MAC does not match (the file was changed, truncated, or written with another key)"));
    }
    let mut at = header_end;
    let stream = take_sized(bytes, &mut at, body_end)?;
    let mut frames = Vec::with_capacity(buffer_count);
    for _ in 0..buffer_count {
        frames.push(take_sized(bytes, &mut at, body_end)?);
    }
    if at != body_end {
        return Err(corrupt("the payload has bytes after its last buffer"));
    }
    Ok(Opened { header, counters, stream, frames })
}

/// Reads the prefix and header only (scans use this; no MAC check, so never trust it for a hit).
pub fn peek(bytes: &[u8]) -> Result<(Header, Counters)> {
    let (header, counters, _, _) = parse_prefix_lenient(bytes)?;
    Ok((header, counters))
}

/// How many leading bytes `peek` needs: the prefix, then the header length it announces.
pub fn header_extent(prefix: &[u8]) -> Result<usize> {
    if prefix.len() < PREFIX_LEN {
        return Err(corrupt("shorter than the fixed prefix"));
    }
    check_magic(prefix)?;
    Ok(PREFIX_LEN + u32_at(prefix, 24) as usize)
}

fn parse_prefix(bytes: &[u8]) -> Result<(Header, Counters, usize, usize)> {
    if bytes.len() < PREFIX_LEN + MAC_LEN {
        return Err(corrupt("shorter than the fixed prefix and MAC"));
    }
    let (header, counters, header_end, buffer_count) = parse_prefix_lenient(bytes)?;
    let payload_len = u64_at(bytes, 32);
    if (header_end as u64).checked_add(payload_len).and_then(|n| n.checked_add(MAC_LEN as u64))
        != Some(bytes.len() as u64)
    {
        return Err(corrupt("its length does not match the lengths in its prefix (truncated or padded)"));
    }
    Ok((header, counters, header_end, buffer_count))
}

fn parse_prefix_lenient(bytes: &[u8]) -> Result<(Header, Counters, usize, usize)> {
    let header_end = header_extent(bytes)?;
    if bytes.len() < header_end {
        return Err(corrupt("its header is truncated"));
    }
    let counters = Counters { hits: u64_at(bytes, 8), last_access_ns: u64_at(bytes, 16) };
    let buffer_count = u32_at(bytes, 28) as usize;
    let header = decode_header(&bytes[PREFIX_LEN..header_end])?;
    Ok((header, counters, header_end, buffer_count))
}

fn check_magic(bytes: &[u8]) -> Result<()> {
    if &bytes[..6] != MAGIC {
        return Err(corrupt("it is not an afml-cache entry (bad magic)"));
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(&format!("it has entry format version {version}, this version reads {FORMAT_VERSION}")));
    }
    Ok(())
}

fn take_sized(bytes: &[u8], at: &mut usize, end: usize) -> Result<Range<usize>> {
    if *at + 8 > end {
        return Err(corrupt("a payload length runs past the end"));
    }
    let len = u64_at(bytes, *at);
    let start = *at + 8;
    let stop = (start as u64)
        .checked_add(len)
        .filter(|&s| s <= end as u64)
        .ok_or_else(|| corrupt("a payload part runs past the end"))?;
    *at = stop as usize;
    Ok(start..stop as usize)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn corrupt(why: &str) -> Error {
    Error::CorruptEntry(why.to_string())
}

/// A frame of an entry that does not decode: the entry is corrupt, so its lookup is a miss.
fn bad_frame(error: Error) -> Error {
    match error {
        Error::CorruptFrame(why) => corrupt(&format!("a buffer's frame is corrupt: {why}")),
        other => corrupt(&other.to_string()),
    }
}

// --- header encoding: fields in a fixed order, strings length-prefixed ---------------------------

fn encode_header(h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + h.metadata.len());
    put_str(&mut out, &h.namespace);
    put_str(&mut out, &h.key);
    out.extend_from_slice(&h.created.to_le_bytes());
    out.extend_from_slice(&h.expires.unwrap_or(f64::NAN).to_le_bytes());
    out.extend_from_slice(&h.compute_time.to_le_bytes());
    out.extend_from_slice(&h.value_size.to_le_bytes());
    out.push(u8::from(h.protected));
    out.extend_from_slice(&(h.tags.len() as u32).to_le_bytes());
    for tag in &h.tags {
        put_str(&mut out, tag);
    }
    match h.time_range {
        Some((start, end)) => {
            out.push(1);
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        None => out.push(0),
    }
    put_str(&mut out, &h.metadata);
    put_str(&mut out, &h.compression);
    out
}

fn decode_header(bytes: &[u8]) -> Result<Header> {
    let mut r = Reader { bytes, at: 0 };
    let namespace = r.str()?;
    let key = r.str()?;
    let created = r.f64()?;
    let expires = Some(r.f64()?).filter(|e| !e.is_nan());
    let compute_time = r.f64()?;
    let value_size = r.u64()?;
    let protected = r.u8()? != 0;
    let tag_count = r.u32()? as usize;
    let mut tags = Vec::with_capacity(tag_count.min(1024));
    for _ in 0..tag_count {
        tags.push(r.str()?);
    }
    let time_range = match r.u8()? {
        0 => None,
        _ => Some((r.u64()? as i64, r.u64()? as i64)),
    };
    let metadata = r.str()?;
    let compression = r.str()?;
    if r.at != bytes.len() {
        return Err(corrupt("its header has trailing bytes"));
    }
    Ok(Header {
        namespace,
        key,
        created,
        expires,
        compute_time,
        value_size,
        protected,
        tags,
        time_range,
        metadata,
        compression,
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| corrupt("its header is cut short"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn str(&mut self) -> Result<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| corrupt("its header has a string that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn sample() -> (Header, Vec<u8>, Vec<Vec<u8>>) {
        let header = Header {
            namespace: "labels".into(),
            key: "ab".repeat(32),
            created: 1.7e9,
            expires: Some(1.8e9),
            compute_time: 2.5,
            value_size: 1234,
            protected: true,
            tags: vec!["es".into(), "daily".into()],
            time_range: Some((-5, 10)),
            metadata: "{\"rows\": 3}".into(),
            compression: "default".into(),
        };
        (header, b"pickle stream".to_vec(), vec![vec![1, 2, 3], vec![], vec![9; 100]])
    }

    #[test]
    fn an_entry_round_trips() {
        let (header, stream, frames) = sample();
        let bytes = seal(&KEY, &header, &stream, &frames, Counters { hits: 3, last_access_ns: 9 }).to_vec();
        let opened = open(&KEY, &bytes).unwrap();
        assert_eq!(opened.header, header);
        assert_eq!(opened.counters, Counters { hits: 3, last_access_ns: 9 });
        assert_eq!(&bytes[opened.stream.clone()], stream.as_slice());
        let got: Vec<&[u8]> = opened.frames.iter().map(|r| &bytes[r.clone()]).collect();
        assert_eq!(got, frames.iter().map(|f| f.as_slice()).collect::<Vec<_>>());
        assert_eq!(peek(&bytes).unwrap().0, header);
    }

    #[test]
    fn sealing_in_pieces_macs_like_sealing_whole() {
        let (header, stream, frames) = sample();
        let sealed = seal(&KEY, &header, &stream, &frames, Counters { hits: 1, last_access_ns: 2 });
        let whole = sealed.to_vec();
        assert_eq!(sealed.byte_len(), whole.len());
        assert_eq!(mac_of(&KEY, &whole[..whole.len() - MAC_LEN]), sealed.mac);
    }

    #[test]
    fn streaming_writes_exactly_the_bytes_sealing_does() {
        let (header, stream, _) = sample();
        let prices = crate::codec::samples::prices((BATCH_CHUNKS + 3) * codec::CHUNK_SIZE / 8 + 11, 3);
        let noise = crate::codec::samples::random(codec::CHUNK_SIZE + 5, 4);
        let buffers: Vec<(&[u8], usize)> = vec![(&prices, 8), (&[], 8), (&noise, 1), (&prices[..100], 4)];
        let path = std::env::temp_dir().join(format!("afml-entry-streamed-{}", std::process::id()));
        for compression in Compression::ALL {
            let frames: Vec<Vec<u8>> = buffers.iter().map(|(d, i)| codec::encode(d, *i, compression)).collect();
            let sealed = seal(&KEY, &header, &stream, &frames, Counters::default());
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            let (size, macs) = write_streamed(&file, &[&KEY], &header, &stream, &buffers, compression).unwrap();
            let mac = macs[0];
            let written = std::fs::read(&path).unwrap();
            assert!(written == sealed.to_vec(), "{compression}: streamed bytes differ from sealed ones");
            assert_eq!((size, mac), (written.len() as u64, sealed.mac), "{compression}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn blocks_hashed_in_any_order_give_the_mac_of_the_whole() {
        let bytes = crate::codec::samples::random(5 * MAC_BLOCK as usize + 3000, 8);
        let block = MAC_BLOCK as usize;
        // Entry sizes around one block and a few; stretches cut at and beside block edges.
        for len in [100, block + 16, block + 17, 2 * block + 16, 3 * block + 1040, bytes.len()] {
            let entry = &bytes[..len];
            let want = mac_of(&KEY, entry);
            let input = mac_input_len(len as u64) as usize;
            let read = |from: u64, into: &mut [u8]| {
                let body: Vec<u8> = [&entry[..8], &entry[24..]].concat();
                into.copy_from_slice(&body[from as usize..from as usize + into.len()]);
                Ok(())
            };
            for cuts in [vec![], vec![1000], vec![block - 16, 2 * block + 100], vec![40, block + 16, block + 1040]] {
                let mut mac = BlockMac::new(&KEY);
                // Stretches fed last to first, each in uneven pieces; bytes before 24 never fed.
                let edges: Vec<usize> =
                    [24].into_iter().chain(cuts.into_iter().filter(|&c| c > 24 && c < len)).collect();
                for (i, &from) in edges.iter().enumerate().rev() {
                    let to = edges.get(i + 1).copied().unwrap_or(len);
                    let stretch = &entry[from..to];
                    let mut run = Run::at(from as u64);
                    let mut rest = stretch;
                    for size in [7, block / 3, 1, block, 3 * block].into_iter().cycle() {
                        if rest.is_empty() {
                            break;
                        }
                        let (piece, tail) = rest.split_at(size.min(rest.len()));
                        let (a, b) = piece.split_at(piece.len() / 2);
                        mac.feed(&mut run, &[a, b]);
                        rest = tail;
                    }
                }
                assert_eq!(mac.finish(input as u64, read).unwrap(), want, "len {len}, edges {edges:?}");
            }
        }
    }

    #[test]
    fn reading_in_pieces_returns_the_buffers_and_refuses_any_flipped_bit() {
        let (header, stream, _) = sample();
        let mut mixed = crate::codec::samples::prices(3 * READ_WINDOW / 8, 5);
        mixed[codec::CHUNK_SIZE..2 * codec::CHUNK_SIZE]
            .copy_from_slice(&crate::codec::samples::random(codec::CHUNK_SIZE, 6));
        let noise = crate::codec::samples::random(READ_WINDOW + 3, 7);
        let buffers: Vec<(&[u8], usize)> = vec![(&mixed, 8), (&[], 8), (&noise, 1)];
        let path = std::env::temp_dir().join(format!("afml-entry-read-{}", std::process::id()));
        for compression in [Compression::None, Compression::Default] {
            let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            let (size, macs) = write_streamed(&file, &[&KEY], &header, &stream, &buffers, compression).unwrap();
            let mac = macs[0];
            let plan = Streamed::plan(&file, size).unwrap();
            assert_eq!(plan.buffer_lens(), buffers.iter().map(|(b, _)| b.len()).collect::<Vec<_>>());
            let mut got_stream = vec![0; plan.stream_len()];
            let mut got: Vec<Vec<u8>> = plan.buffer_lens().into_iter().map(|len| vec![0; len]).collect();
            let mut outs: Vec<&mut [u8]> = got.iter_mut().map(|b| b.as_mut_slice()).collect();
            assert_eq!(plan.read_into(&file, &KEY, &mut got_stream, &mut outs).unwrap(), mac);
            assert_eq!(got_stream, stream);
            assert!(got.iter().zip(&buffers).all(|(got, (want, _))| got == want), "{compression}: buffers differ");
            // A bit flipped in the stream, the last frame's head, the first and last byte of
            // every step (the last step is read last and digested alone), on either side of each
            // edge where the threads' pieces of a raw run meet, and in the MAC.
            let mut outs: Vec<&mut [u8]> = got.iter_mut().map(|b| b.as_mut_slice()).collect();
            let steps: Vec<(u64, usize, bool)> =
                plan.steps(&mut outs).unwrap().iter().map(|s| (s.at, s.len, s.direct)).collect();
            assert!(steps.len() >= 2, "{compression}: {} steps", steps.len());
            let block_edges = |at: u64, len: usize| {
                let first = (at - COUNTERS.len() as u64).next_multiple_of(MAC_BLOCK) + COUNTERS.len() as u64;
                (first..at + len as u64).step_by(READ_PIECE).flat_map(|edge| [edge - 1, edge])
            };
            let edges = steps.iter().flat_map(|&(at, len, direct)| {
                let inside: Vec<u64> = if direct { block_edges(at, len).collect() } else { vec![] };
                [at, at + len as u64 - 1].into_iter().chain(inside)
            });
            let heads = [plan.stream.start, plan.frames[2].chunks_at - 1];
            for at in heads.into_iter().chain(edges).chain([size / 2, size - 1]) {
                let mut byte = [0u8];
                file.read_exact_at(&mut byte, at).unwrap();
                file.write_all_at(&[byte[0] ^ 4], at).unwrap();
                let mut outs: Vec<&mut [u8]> = got.iter_mut().map(|b| b.as_mut_slice()).collect();
                let read =
                    Streamed::plan(&file, size).and_then(|p| p.read_into(&file, &KEY, &mut got_stream, &mut outs));
                assert!(matches!(read, Err(Error::CorruptEntry(_))), "{compression}: flip at {at} accepted");
                file.write_all_at(&byte, at).unwrap();
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn counters_may_change_without_breaking_the_mac() {
        let (header, stream, frames) = sample();
        let mut bytes = seal(&KEY, &header, &stream, &frames, Counters::default()).to_vec();
        bytes[COUNTERS].copy_from_slice(&Counters { hits: 99, last_access_ns: 5 }.to_bytes());
        assert_eq!(open(&KEY, &bytes).unwrap().counters.hits, 99);
    }

    #[test]
    fn every_flipped_bit_outside_the_counters_and_every_truncation_is_refused() {
        let (header, stream, frames) = sample();
        let bytes = seal(&KEY, &header, &stream, &frames, Counters::default()).to_vec();
        for i in (0..bytes.len()).filter(|i| !COUNTERS.contains(i)) {
            for bit in [0, 3, 7] {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(matches!(open(&KEY, &bad), Err(Error::CorruptEntry(_))), "flip at {i} accepted");
            }
        }
        for len in 0..bytes.len() {
            assert!(open(&KEY, &bytes[..len]).is_err(), "truncation to {len} accepted");
        }
    }

    #[test]
    fn another_key_is_refused_and_reseal_fixes_it() {
        let (header, stream, frames) = sample();
        let bytes = seal(&KEY, &header, &stream, &frames, Counters::default()).to_vec();
        let other = [8u8; 32];
        assert!(open(&other, &bytes).is_err());
        assert!(open(&other, &reseal(&other, &bytes)).is_ok());
    }
}
