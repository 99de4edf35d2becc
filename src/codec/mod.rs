//! The codec for the large buffers of a stored value: numpy arrays and pandas column blocks
//! arrive as raw bytes with an item size (8 for float64), and leave as a self-describing frame.
//!
//! # Levels
//!
//! - [`Compression::None`]: the bytes as they are, still framed so decoding is uniform.
//! - [`Compression::Fast`]: LZ4 block compression of each chunk.
//! - [`Compression::Default`]: each chunk byte-shuffled by item size (byte 0 of every item, then
//!   byte 1, ...), then LZ4. Item sizes 0 and 1, and above 65,535, are not shuffled (the frame
//!   then says method 1).
//! - [`Compression::Max`]: each chunk of 2-, 4- or 8-byte items delta-coded where that packs
//!   smaller (see `delta.rs`; decided per chunk by packing its first 64 KiB both ways), then
//!   byte-shuffled, then zstd (level 3). Other item sizes are shuffled only; sizes 0, 1 and
//!   above 65,535 are not shuffled (shuffle width 1 in the frame).
//!
//! The buffer is cut into chunks of [`CHUNK_SIZE`] bytes rounded down to a multiple of the item
//! size, so a shuffle never splits an item; the last chunk may be shorter, and its last
//! `len % itemsize` bytes (not a whole item) are left unshuffled. Chunks are independent, so
//! with two or more of them encode and decode run them in parallel on rayon's global pool;
//! a buffer of one chunk stays on the calling thread. A chunk that LZ4 cannot shrink is stored
//! raw (its original, unshuffled bytes), so incompressible data costs a copy, not a blow-up.
//!
//! Compression is `lz4_flex`'s block encoder; decompression is this module's own safe LZ4
//! block decoder (`lz4.rs`), because lz4_flex's copies the long runs that shuffled numbers are
//! made of one byte at a time (0.8 GB/s per core on shuffled prices, against 7.9 GB/s here).
//!
//! For callers: `out` must be exactly [`decoded_len`] long (any contents; every byte is
//! overwritten). Both directions may run on rayon's global pool, also when called from inside
//! it, and keep one chunk-sized scratch buffer (≤ 512 KiB) per thread that ever shuffled.
//!
//! # Frame layout (version 1, little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic/version: `0xC1` (high nibble `0xC` marks a codec frame, low nibble the version) |
//! | 1 | 1 | method: 0 stored, 1 LZ4, 2 shuffle + LZ4, 3 delta + shuffle + zstd |
//! | 2 | 2 | shuffle width: the item size for methods 2 and 3 (≥ 2; 1 = no shuffle in method 3), 0 for methods 0 and 1 |
//! | 4 | 8 | raw length in bytes |
//! | 12 | 4 | chunk size in bytes: [`CHUNK_SIZE`] rounded down to a multiple of the shuffle width |
//! | 16 | 4 | number of chunks, = ceil(raw length / chunk size) |
//! | 20 | 4 × chunks | per chunk: stored length (bits 0–29), "delta-coded" flag (bit 30, method 3 with width 2, 4 or 8 only), "stored raw" flag (bit 31) |
//! | ... | | the chunks' stored bytes, in order, nothing after them |
//!
//! Every chunk but the last holds `chunk size` raw bytes. A raw chunk's stored length equals its
//! raw length (method 0 flags every chunk raw); a compressed one is non-empty, shorter than its
//! raw length, and (methods 1 and 2) at most 255 times shorter (LZ4's largest ratio). Those
//! rules bound [`decoded_len`] by 255 × the frame's length (method 3, whose zstd chunks have no
//! such bound, by the 4 table bytes each 512 KiB chunk needs: 131,072 × the frame's length), so a
//! corrupt header cannot make a caller allocate without limit. [`decode_into`] checks all of
//! them, and that each chunk decompresses to exactly its raw length; any violation is
//! [`Error::CorruptFrame`], never a panic. The delta flag is the one bit nothing in the frame can
//! check; like every other byte, it is covered by the entry's MAC. The chunk size is part of
//! version 1: changing it means a new version byte. Method 3 was added within version 1: frames
//! written before it read as they always did (a build without it calls such a frame corrupt:
//! a miss, never a wrong value).
//!
//! [`Plan`] and [`Layout`] expose a frame's head and chunks separately, so the store can write
//! a large buffer chunk batch by chunk batch, and read one window by window, straight between
//! the file and the final buffers.
//!
//! # Measured
//!
//! `cargo bench --bench codec` (criterion; 16 MiB per buffer, item size 8; both cores of the
//! 2-core AMD EPYC dev VM, nothing else running). Throughput in GiB/s of raw bytes, ratio =
//! frame bytes / raw bytes. (a) a float64 random walk `p *= 1 + 2e-4·u`, rounded to 0.25
//! ticks like futures prices; (b) int64 bar volumes, log-normal around 300; (c) random bytes.
//!
//! | data | level | ratio | encode | decode |
//! |---|---|---|---|---|
//! | (a) prices f64 | none | 1.000 | 16–21 | 24–32 |
//! | | fast | 0.328 | 1.66 | 4.7 |
//! | | default | **0.152** | **2.53** | **8.5** |
//! | (b) volumes i64 | none | 1.000 | 17 | 6.2 |
//! | | fast | 0.402 | 1.28 | 5.7 |
//! | | default | **0.208** | **3.15** | **12.4** |
//! | (c) random | none | 1.000 | 17 | 6.0 |
//! | | fast | 1.000 | 6.3 | 6.0 |
//! | | default | 1.000 | 4.5 | 6.2 |
//!
//! What each level costs and saves: `none` is a memcpy (6–32 GiB/s depending on whether the
//! buffers are still in cache) and saves nothing. `default` beats `fast` on numbers in both
//! size (half of it) and speed (1.5–2.5× to encode, 1.8–2.2× to decode): after the shuffle LZ4
//! sees long runs instead of short 8-byte repeats. On incompressible bytes both only pay for
//! trying (shuffle + a failed LZ4 pass, then a copy) and store the chunks raw. Encoding is
//! bounded by lz4_flex's compressor (~1.9 GB/s per core on shuffled prices, ~65% of the time).
//! `max` trades speed for size: zstd level 3 packs about 3x slower than shuffle + LZ4 and
//! unpacks about 5x slower; its sizes and speeds on an OHLCV frame are in docs/store.md.

mod delta;
mod lz4;
#[doc(hidden)]
pub mod samples;
mod shuffle;

use std::cell::RefCell;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use lz4_flex::block::{compress_into, get_maximum_output_size};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Target size of a chunk before rounding down to a multiple of the item size: large enough
/// that LZ4's per-block overhead vanishes and rayon's per-task cost is noise (a 512 KiB chunk
/// takes ~0.3 ms to compress), small enough that a buffer of a few MiB uses both cores and a
/// chunk plus its scratch stays in cache between the shuffle and LZ4.
pub const CHUNK_SIZE: usize = 512 * 1024;

const MAGIC_V1: u8 = 0xC1;
/// Bytes of a frame's fixed header, before its chunk table.
pub const HEADER_LEN: usize = 20;
const RAW_FLAG: u32 = 1 << 31;
/// Method 3 only: the chunk's items were delta-coded before the shuffle.
const DELTA_FLAG: u32 = 1 << 30;
const LEN_MASK: u32 = DELTA_FLAG - 1;
/// Decoded bytes up to which chunks are decoded on the calling thread: for two chunks, waking
/// the pool's threads costs about what sharing the work saves (three chunks gain).
const PARALLEL_DECODE: usize = 2 * CHUNK_SIZE;
/// LZ4 emits at least one byte per 255 bytes of output (a match-length extension byte adds at
/// most 255), so a compressed chunk can never expand by more than this.
const MAX_LZ4_RATIO: usize = 255;
/// zstd's level for `max` (see the table above for what it costs).
const ZSTD_LEVEL: i32 = 3;
/// Bytes of a chunk that `max` packs both with and without delta coding, to choose.
const DELTA_SAMPLE: usize = 64 * 1024;

/// How hard [`encode`] works on a buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Store the bytes as they are.
    None,
    /// LZ4 per chunk, no shuffle.
    Fast,
    /// Byte-shuffle by item size, then LZ4 per chunk.
    #[default]
    Default,
    /// Delta-code where it helps, byte-shuffle, then zstd per chunk: smallest, slowest.
    Max,
}

impl Compression {
    /// Every level, from least to most work.
    pub const ALL: [Compression; 4] = [Compression::None, Compression::Fast, Compression::Default, Compression::Max];

    /// The name users write in configuration, the one [`FromStr`] accepts.
    pub fn name(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Fast => "fast",
            Compression::Default => "default",
            Compression::Max => "max",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compression name that is none of `none`, `fast`, `default`, `max`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}; use one of \"none\", \"fast\", \"default\", \"max\"")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Compression::ALL.into_iter().find(|level| level.name() == s).ok_or_else(|| UnknownCompression(s.to_owned()))
    }
}

/// What the frame's method byte says was done to the compressed chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Stored = 0,
    Lz4 = 1,
    ShuffleLz4 = 2,
    DeltaShuffleZstd = 3,
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::CorruptFrame(what.into())
}

/// The chunk size for a shuffle width: [`CHUNK_SIZE`] rounded down to whole items.
fn chunk_size_for(width: usize) -> usize {
    if width > 1 {
        CHUNK_SIZE - CHUNK_SIZE % width
    } else {
        CHUNK_SIZE
    }
}

/// How a buffer is cut and coded: everything about its frame that is known before a chunk is
/// compressed, so that a writer can stream the chunks out as they are made.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    method: Method,
    width: usize,
    raw_len: usize,
    chunk_size: usize,
}

impl Plan {
    pub fn new(raw_len: usize, itemsize: usize, compression: Compression) -> Plan {
        let shuffled = (2..=usize::from(u16::MAX)).contains(&itemsize);
        let (method, width) = match compression {
            Compression::None => (Method::Stored, 0),
            Compression::Fast => (Method::Lz4, 0),
            Compression::Default if shuffled => (Method::ShuffleLz4, itemsize),
            Compression::Default => (Method::Lz4, 0),
            // Width 1 says "no shuffle" here: 0 would let a flipped bit turn 8 into a valid width.
            Compression::Max => (Method::DeltaShuffleZstd, if shuffled { itemsize } else { 1 }),
        };
        Plan { method, width, raw_len, chunk_size: chunk_size_for(width) }
    }

    /// Raw bytes per chunk (the last chunk may hold fewer).
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    pub fn chunks(&self) -> usize {
        self.raw_len.div_ceil(self.chunk_size)
    }

    /// Bytes before the first chunk: the header and the chunk table.
    pub fn head_len(&self) -> usize {
        HEADER_LEN + 4 * self.chunks()
    }

    /// The frame's fixed header (the chunk table follows it).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = MAGIC_V1;
        out[1] = self.method as u8;
        out[2..4].copy_from_slice(&(self.width as u16).to_le_bytes());
        out[4..12].copy_from_slice(&(self.raw_len as u64).to_le_bytes());
        out[12..16].copy_from_slice(&(self.chunk_size as u32).to_le_bytes());
        out[16..20].copy_from_slice(&(self.chunks() as u32).to_le_bytes());
        out
    }

    /// Compresses `data`: whole chunks of this plan from a chunk boundary on (only the frame's
    /// last chunk may be short), in parallel when there are two or more.
    pub fn pack(&self, data: &[u8]) -> Vec<Packed> {
        let chunks = data.len().div_ceil(self.chunk_size);
        if self.method == Method::Stored {
            (0..chunks).map(|_| Packed::Raw).collect()
        } else if chunks < 2 || !crate::parallel::available() {
            data.chunks(self.chunk_size).map(|chunk| pack_chunk(chunk, self.method, self.width)).collect()
        } else {
            data.par_chunks(self.chunk_size).map(|chunk| pack_chunk(chunk, self.method, self.width)).collect()
        }
    }
}

/// One chunk as it is stored: compressed, or raw (its own bytes, taken from the source).
#[derive(Debug)]
pub enum Packed {
    Raw,
    Compressed { bytes: Vec<u8>, delta: bool },
}

impl Packed {
    /// The chunk's bytes in the frame; `raw` is the chunk's source bytes.
    pub fn stored<'a>(&'a self, raw: &'a [u8]) -> &'a [u8] {
        match self {
            Packed::Raw => raw,
            Packed::Compressed { bytes, .. } => bytes,
        }
    }

    /// The chunk's entry in the frame's chunk table.
    pub fn table_entry(&self, raw: &[u8]) -> [u8; 4] {
        let entry = match self {
            Packed::Raw => raw.len() as u32 | RAW_FLAG,
            Packed::Compressed { bytes, delta: false } => bytes.len() as u32,
            Packed::Compressed { bytes, delta: true } => bytes.len() as u32 | DELTA_FLAG,
        };
        entry.to_le_bytes()
    }
}

/// Encodes `data`, made of items of `itemsize` bytes, into a frame that [`decode_into`] reads.
pub fn encode(data: &[u8], itemsize: usize, compression: Compression) -> Vec<u8> {
    let plan = Plan::new(data.len(), itemsize, compression);
    // Chunks compress into per-thread buffers and come back as exact-size vectors, or raw (their
    // bytes are then copied straight from `data`); the frame is written once, at its exact size.
    // Nothing is zero-filled, no worst case is allocated; the frame's memory is a spare frame's
    // when one of a similar size was given back (`memory::FRAMES`, see `store::Encoded`).
    let packed = plan.pack(data);
    let raws = data.chunks(plan.chunk_size);
    let frame_len =
        plan.head_len() + packed.iter().zip(raws.clone()).map(|(p, raw)| p.stored(raw).len()).sum::<usize>();
    let mut frame = crate::memory::buffer_for(&crate::memory::FRAMES, frame_len);
    frame.extend_from_slice(&plan.header());
    for (p, raw) in packed.iter().zip(raws.clone()) {
        frame.extend_from_slice(&p.table_entry(raw));
    }
    for (p, raw) in packed.iter().zip(raws) {
        frame.extend_from_slice(p.stored(raw));
    }
    frame
}

/// Per-thread working buffers, kept between calls: fresh ones per chunk would cost their page
/// faults every time. At most two chunks (512 KiB each) plus LZ4's worst case for one (~563 KiB)
/// and a zstd context per thread that ever encoded, and a chunk per thread that ever decoded a
/// shuffled frame.
#[derive(Default)]
struct Scratch {
    shuffled: Vec<u8>,
    compressed: Vec<u8>,
    differenced: Vec<u8>,
    packer: Option<zstd::bulk::Compressor<'static>>,
    unpacker: Option<zstd::bulk::Decompressor<'static>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        // Unreachable (nothing here re-enters), but fresh buffers are a safe answer.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// `buffer`'s first `len` bytes, growing it if needed.
fn at_least(buffer: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    &mut buffer[..len]
}

/// Shuffles `chunk`'s whole items into `out` (`chunk.len()` bytes) and copies its tail.
fn shuffle_into<'a>(chunk: &[u8], out: &'a mut Vec<u8>, width: usize) -> &'a [u8] {
    let out = at_least(out, chunk.len());
    let whole = chunk.len() - chunk.len() % width;
    shuffle::shuffle(&chunk[..whole], &mut out[..whole], width);
    out[whole..].copy_from_slice(&chunk[whole..]);
    out
}

/// Compresses one chunk, or leaves it raw if compressing cannot shrink it.
fn pack_chunk(chunk: &[u8], method: Method, width: usize) -> Packed {
    with_scratch(|scratch| {
        let Scratch { shuffled, compressed, differenced, packer, .. } = scratch;
        if method == Method::DeltaShuffleZstd {
            if packer.is_none() {
                *packer = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
            }
            // Without a context (out of memory) the chunk is simply stored raw.
            let Some(packer) = packer.as_mut() else { return Packed::Raw };
            let whole = if width > 1 { chunk.len() - chunk.len() % width } else { 0 };
            let coded = delta::supports(width) && {
                // Try both ways on the chunk's first items: what packs smaller decides.
                let sample = &chunk[..whole.min(DELTA_SAMPLE)];
                let differences = at_least(differenced, sample.len());
                delta::encode(sample, differences, width);
                let with = zstd_len(packer, shuffle_into(differences, shuffled, width), compressed);
                with < zstd_len(packer, shuffle_into(sample, shuffled, width), compressed)
            };
            let input: &[u8] = if coded {
                let differences = at_least(differenced, chunk.len());
                delta::encode(&chunk[..whole], &mut differences[..whole], width);
                differences[whole..].copy_from_slice(&chunk[whole..]);
                shuffle_into(differences, shuffled, width)
            } else if width > 1 {
                shuffle_into(chunk, shuffled, width)
            } else {
                chunk
            };
            // An output buffer one byte short of the chunk: zstd fails rather than not shrink it.
            let out = at_least(compressed, chunk.len().saturating_sub(1));
            return match packer.compress_to_buffer(input, out) {
                Ok(len) if len > 0 && len < chunk.len() => {
                    Packed::Compressed { bytes: out[..len].to_vec(), delta: coded }
                }
                _ => Packed::Raw,
            };
        }
        let out = at_least(compressed, get_maximum_output_size(chunk.len()));
        let result = if width > 1 {
            compress_into(shuffle_into(chunk, shuffled, width), out)
        } else {
            compress_into(chunk, out)
        };
        match result {
            Ok(len) if len < chunk.len() => Packed::Compressed { bytes: out[..len].to_vec(), delta: false },
            // Not smaller (or, impossibly, the buffer was too small): store the original bytes.
            _ => Packed::Raw,
        }
    })
}

/// The length zstd packs `input` to (`usize::MAX` if it fails), using `out` as its output.
fn zstd_len(packer: &mut zstd::bulk::Compressor<'static>, input: &[u8], out: &mut Vec<u8>) -> usize {
    let out = at_least(out, zstd::zstd_safe::compress_bound(input.len()));
    packer.compress_to_buffer(input, out).unwrap_or(usize::MAX)
}

/// Where one chunk's stored bytes sit in the frame, and how they were stored.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    start: usize,
    stored_len: usize,
    raw: bool,
    delta: bool,
}

/// A frame whose header and chunk table have been checked against each other and the frame's
/// length. Offsets are from the frame's first byte.
#[derive(Debug)]
pub struct Layout {
    method: Method,
    width: usize,
    raw_len: usize,
    chunk_size: usize,
    head_len: usize,
    chunks: Vec<Chunk>,
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The bytes of a frame's head (header and chunk table) that [`layout`] needs, from the fixed
/// header alone: read the header, then this many bytes.
pub fn head_len(header: &[u8]) -> Result<usize> {
    if header.len() < HEADER_LEN {
        return Err(corrupt(format!("{} bytes is shorter than the {HEADER_LEN}-byte header", header.len())));
    }
    Ok(HEADER_LEN + 4 * read_u32(header, 16) as usize)
}

/// Checks a frame's header and chunk table. `head` holds at least the frame's first
/// [`head_len`] bytes; `frame_len` is the whole frame's length, chunks included.
pub fn layout(head: &[u8], frame_len: usize) -> Result<Layout> {
    let head_len = head_len(head)?;
    if head_len > head.len().min(frame_len) {
        return Err(corrupt(format!(
            "the table of {} chunks runs past the frame's {frame_len} bytes",
            read_u32(head, 16)
        )));
    }
    match head[0] {
        MAGIC_V1 => {}
        b if b >> 4 == 0xC => {
            return Err(corrupt(format!(
                "frame version {} is not one this build reads (1); it was written by a newer afml-cache",
                b & 0xF
            )))
        }
        b => return Err(corrupt(format!("first byte 0x{b:02X} is not the frame magic 0x{MAGIC_V1:02X}"))),
    }
    let method = match head[1] {
        0 => Method::Stored,
        1 => Method::Lz4,
        2 => Method::ShuffleLz4,
        3 => Method::DeltaShuffleZstd,
        m => {
            return Err(corrupt(format!(
                "unknown method {m} (known: 0 stored, 1 lz4, 2 shuffle+lz4, 3 delta+shuffle+zstd)"
            )))
        }
    };
    let width = usize::from(read_u16(head, 2));
    match method {
        Method::ShuffleLz4 if width < 2 => return Err(corrupt(format!("shuffle width {width} is below 2"))),
        Method::DeltaShuffleZstd if width == 0 => return Err(corrupt("shuffle width 0 (1 means no shuffle here)")),
        Method::Stored | Method::Lz4 if width != 0 => {
            return Err(corrupt(format!("shuffle width {width} given for an unshuffled method")))
        }
        _ => {}
    }
    let raw_len = u64::from_le_bytes(head[4..12].try_into().expect("8 bytes"));
    let raw_len = usize::try_from(raw_len)
        .map_err(|_| corrupt(format!("raw length {raw_len} does not fit this machine's address space")))?;
    let chunk_size = read_u32(head, 12) as usize;
    if chunk_size != chunk_size_for(width) {
        return Err(corrupt(format!(
            "chunk size {chunk_size} is not the {} that version 1 uses for shuffle width {width}",
            chunk_size_for(width)
        )));
    }
    let count = read_u32(head, 16) as usize;
    if count != raw_len.div_ceil(chunk_size) {
        return Err(corrupt(format!(
            "{count} chunks declared, but {raw_len} bytes in chunks of {chunk_size} make {}",
            raw_len.div_ceil(chunk_size)
        )));
    }

    let mut chunks = Vec::with_capacity(count);
    let mut start = head_len;
    for i in 0..count {
        let entry = read_u32(head, HEADER_LEN + 4 * i);
        let stored_len = (entry & LEN_MASK) as usize;
        let raw = entry & RAW_FLAG != 0;
        let delta = entry & DELTA_FLAG != 0;
        let raw_chunk = chunk_size.min(raw_len - i * chunk_size);
        let fits = if raw {
            stored_len == raw_chunk && !delta
        } else {
            let bounded = match method {
                Method::Stored => false,
                // zstd has no such bound: a chunk of one repeated byte packs into a few bytes.
                Method::DeltaShuffleZstd => !delta || delta::supports(width),
                _ => !delta && raw_chunk <= stored_len.saturating_mul(MAX_LZ4_RATIO),
            };
            bounded && stored_len > 0 && stored_len < raw_chunk
        };
        if !fits {
            let how = if raw { "raw" } else { "compressed" };
            return Err(corrupt(format!(
                "chunk {i} is stored {how} in {stored_len} bytes, impossible for {raw_chunk} raw bytes with method {}",
                method as u8
            )));
        }
        if stored_len > frame_len - start {
            return Err(corrupt(format!(
                "chunk {i} of {count} needs {stored_len} bytes at byte {start}, past the frame's end at {frame_len}"
            )));
        }
        chunks.push(Chunk { start, stored_len, raw, delta });
        start += stored_len;
    }
    if start != frame_len {
        return Err(corrupt(format!(
            "the chunk table adds up to {} payload bytes but the frame holds {}",
            start - head_len,
            frame_len - head_len
        )));
    }
    Ok(Layout { method, width, raw_len, chunk_size, head_len, chunks })
}

impl Layout {
    /// The length of the buffer the frame decodes to.
    pub fn raw_len(&self) -> usize {
        self.raw_len
    }

    /// Bytes of the header and chunk table, where the first chunk starts.
    pub fn head_len(&self) -> usize {
        self.head_len
    }

    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Where chunk `i`'s stored bytes are, from the frame's first byte.
    pub fn stored_span(&self, i: usize) -> Range<usize> {
        let c = self.chunks[i];
        c.start..c.start + c.stored_len
    }

    /// Whether chunk `i` is stored raw: its stored bytes are its decoded bytes.
    pub fn is_raw(&self, i: usize) -> bool {
        self.chunks[i].raw
    }

    /// Where chunk `i` goes in the decoded buffer.
    pub fn raw_span(&self, i: usize) -> Range<usize> {
        let start = i * self.chunk_size;
        start..(start + self.chunk_size).min(self.raw_len)
    }

    /// Decodes chunks `range` into `dst`, their place in the decoded buffer (from the start of
    /// the first to the end of the last), from `stored`: the frame's bytes from the first of
    /// those chunks to the end of the last. In parallel above [`PARALLEL_DECODE`] bytes.
    pub fn decode_chunks(&self, range: Range<usize>, stored: &[u8], dst: &mut [u8]) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let raw = self.raw_span(range.start).start..self.raw_span(range.end - 1).end;
        if dst.len() != raw.len() {
            return Err(corrupt(format!(
                "chunks {range:?} decode to {} bytes but the output buffer has {}",
                raw.len(),
                dst.len()
            )));
        }
        let base = self.chunks[range.start].start;
        if stored.len() != self.stored_span(range.end - 1).end - base {
            return Err(corrupt("the stored bytes given do not span the chunks to decode"));
        }
        let work = |(i, dst): (usize, &mut [u8])| {
            let c = &self.chunks[i];
            self.decode_chunk(i, c, &stored[c.start - base..c.start - base + c.stored_len], dst)
        };
        if dst.len() <= PARALLEL_DECODE || !crate::parallel::available() {
            range.zip(dst.chunks_mut(self.chunk_size)).try_for_each(work)
        } else {
            range.into_par_iter().zip(dst.par_chunks_mut(self.chunk_size)).try_for_each(work)
        }
    }

    fn decode_chunk(&self, i: usize, chunk: &Chunk, src: &[u8], dst: &mut [u8]) -> Result<()> {
        if chunk.raw {
            dst.copy_from_slice(src);
            return Ok(());
        }
        let wrong = |why: String| corrupt(format!("chunk {i} (at byte {}) does not decompress: {why}", chunk.start));
        let width = self.width;
        let whole = if width > 1 { dst.len() - dst.len() % width } else { 0 };
        match self.method {
            Method::Stored => unreachable!("layout admits only raw chunks in a stored frame"),
            Method::Lz4 => lz4::decompress_exact(src, dst).map_err(|e| wrong(e.to_string())),
            Method::ShuffleLz4 => with_scratch(|Scratch { shuffled, .. }| {
                let scratch = at_least(shuffled, dst.len());
                lz4::decompress_exact(src, scratch).map_err(|e| wrong(e.to_string()))?;
                shuffle::unshuffle(&scratch[..whole], &mut dst[..whole], width);
                dst[whole..].copy_from_slice(&scratch[whole..]);
                Ok(())
            }),
            Method::DeltaShuffleZstd => with_scratch(|Scratch { shuffled, unpacker, .. }| {
                if unpacker.is_none() {
                    *unpacker = Some(zstd::bulk::Decompressor::new().map_err(|e| wrong(e.to_string()))?);
                }
                let unpacker = unpacker.as_mut().expect("just made");
                let target = if width > 1 { at_least(shuffled, dst.len()) } else { &mut *dst };
                match unpacker.decompress_to_buffer(src, target) {
                    Ok(len) if len == target.len() => {}
                    Ok(len) => return Err(wrong(format!("{len} bytes instead of {}", target.len()))),
                    Err(e) => return Err(wrong(e.to_string())),
                }
                if width > 1 {
                    let len = dst.len();
                    shuffle::unshuffle(&shuffled[..whole], &mut dst[..whole], width);
                    dst[whole..].copy_from_slice(&shuffled[whole..len]);
                }
                if chunk.delta {
                    delta::decode(&mut dst[..whole], width);
                }
                Ok(())
            }),
        }
    }
}

/// The length of the buffer `frame` decodes to: the size of the `out` to give [`decode_into`].
/// The whole header and chunk table are checked, so a corrupt frame fails here, before the
/// caller allocates.
pub fn decoded_len(frame: &[u8]) -> Result<usize> {
    Ok(layout(frame, frame.len())?.raw_len)
}

/// Decodes `frame` into `out`, whose length must be [`decoded_len`]. On error `out` holds
/// partial garbage.
pub fn decode_into(frame: &[u8], out: &mut [u8]) -> Result<()> {
    let layout = layout(frame, frame.len())?;
    if out.len() != layout.raw_len {
        return Err(corrupt(format!(
            "the frame decodes to {} bytes but the output buffer has {}",
            layout.raw_len,
            out.len()
        )));
    }
    layout.decode_chunks(0..layout.chunks(), &frame[layout.head_len..], out)
}

#[cfg(test)]
mod tests;
