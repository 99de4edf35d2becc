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
//! | 1 | 1 | method: 0 stored, 1 LZ4, 2 shuffle + LZ4 |
//! | 2 | 2 | shuffle width: the item size for method 2 (≥ 2), 0 for methods 0 and 1 |
//! | 4 | 8 | raw length in bytes |
//! | 12 | 4 | chunk size in bytes: [`CHUNK_SIZE`] rounded down to a multiple of the shuffle width |
//! | 16 | 4 | number of chunks, = ceil(raw length / chunk size) |
//! | 20 | 4 × chunks | per chunk: stored length (bits 0–30) and "stored raw" flag (bit 31) |
//! | ... | | the chunks' stored bytes, in order, nothing after them |
//!
//! Every chunk but the last holds `chunk size` raw bytes. A raw chunk's stored length equals its
//! raw length (method 0 flags every chunk raw); a compressed one is non-empty, shorter than its
//! raw length, and at most 255 times shorter (LZ4's largest ratio). Those rules bound
//! [`decoded_len`] by 255 × the frame's length, so a corrupt header cannot make a caller
//! allocate without limit. [`decode_into`] checks all of them, and that each chunk decompresses
//! to exactly its raw length; any violation is [`Error::CorruptFrame`], never a panic. The
//! chunk size is part of version 1: changing it means a new version byte.
//!
//! # Measured
//!
//! MEASURED_TABLE

mod lz4;
mod shuffle;

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use lz4_flex::block::{compress_into, get_maximum_output_size};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// Target size of a chunk before rounding down to a multiple of the item size: large enough
/// that LZ4's per-block overhead vanishes and rayon's per-task cost is noise (a 512 KiB chunk
/// takes ~0.3 ms to compress), small enough that a 1 MiB buffer already uses both cores and a
/// chunk plus its scratch stays in L2.
pub const CHUNK_SIZE: usize = 512 * 1024;

const MAGIC_V1: u8 = 0xC1;
const HEADER_LEN: usize = 20;
const RAW_FLAG: u32 = 1 << 31;
/// LZ4 emits at least one byte per 255 bytes of output (a match-length extension byte adds at
/// most 255), so a compressed chunk can never expand by more than this.
const MAX_LZ4_RATIO: usize = 255;

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
}

impl Compression {
    pub const ALL: [Compression; 3] = [Compression::None, Compression::Fast, Compression::Default];

    /// The name users write in configuration, the one [`FromStr`] accepts.
    pub fn name(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Fast => "fast",
            Compression::Default => "default",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compression name that is none of `none`, `fast`, `default`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}; use one of \"none\", \"fast\", \"default\"")]
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

/// Encodes `data`, made of items of `itemsize` bytes, into a frame that [`decode_into`] reads.
pub fn encode(data: &[u8], itemsize: usize, compression: Compression) -> Vec<u8> {
    let (method, width) = match compression {
        Compression::None => (Method::Stored, 0),
        Compression::Fast => (Method::Lz4, 0),
        Compression::Default if (2..=usize::from(u16::MAX)).contains(&itemsize) => (Method::ShuffleLz4, itemsize),
        Compression::Default => (Method::Lz4, 0),
    };
    let chunk_size = chunk_size_for(width);
    let chunks = data.len().div_ceil(chunk_size);
    let payload_start = HEADER_LEN + 4 * chunks;

    if method == Method::Stored {
        let mut frame = Vec::with_capacity(payload_start + data.len());
        write_header(&mut frame, method, width, data.len(), chunk_size);
        for chunk in data.chunks(chunk_size) {
            frame.extend_from_slice(&(chunk.len() as u32 | RAW_FLAG).to_le_bytes());
        }
        frame.extend_from_slice(data);
        return frame;
    }

    // Each chunk is compressed straight into its own worst-case-sized slot of the frame, and
    // the slots are then closed up in one pass: one copy of the compressed bytes, no per-chunk
    // allocation. `vec![0; n]` is calloc, so pages of a slot that LZ4 never reaches are never
    // touched; a chunk stored raw is copied from `data` once, during the closing-up.
    let slot = get_maximum_output_size(chunk_size.min(data.len()));
    let mut frame = vec![0u8; payload_start + chunks * slot];
    let slots = &mut frame[payload_start..];
    let mut entries = vec![0u32; chunks];
    if chunks < 2 {
        for ((chunk, out), entry) in data.chunks(chunk_size).zip(slots.chunks_mut(slot)).zip(&mut entries) {
            *entry = encode_chunk(chunk, width, out);
        }
    } else {
        data.par_chunks(chunk_size)
            .zip(slots.par_chunks_mut(slot))
            .zip(entries.par_iter_mut())
            .for_each(|((chunk, out), entry)| *entry = encode_chunk(chunk, width, out));
    }

    let mut header = Vec::with_capacity(payload_start);
    write_header(&mut header, method, width, data.len(), chunk_size);
    for entry in &entries {
        header.extend_from_slice(&entry.to_le_bytes());
    }
    frame[..payload_start].copy_from_slice(&header);
    // Chunk `i` lands before slot `i + 1` (a stored length never exceeds `chunk_size` <
    // `slot`), so closing up in order never overwrites a slot that is still to be moved.
    let mut end = payload_start;
    for (i, (entry, chunk)) in entries.iter().zip(data.chunks(chunk_size)).enumerate() {
        let len = (entry & !RAW_FLAG) as usize;
        if entry & RAW_FLAG != 0 {
            frame[end..end + len].copy_from_slice(chunk);
        } else {
            let from = payload_start + i * slot;
            frame.copy_within(from..from + len, end);
        }
        end += len;
    }
    frame.truncate(end);
    frame.shrink_to_fit();
    frame
}

fn write_header(frame: &mut Vec<u8>, method: Method, width: usize, raw_len: usize, chunk_size: usize) {
    frame.push(MAGIC_V1);
    frame.push(method as u8);
    frame.extend_from_slice(&(width as u16).to_le_bytes());
    frame.extend_from_slice(&(raw_len as u64).to_le_bytes());
    frame.extend_from_slice(&(chunk_size as u32).to_le_bytes());
    frame.extend_from_slice(&(raw_len.div_ceil(chunk_size) as u32).to_le_bytes());
}

thread_local! {
    /// One chunk's worth of shuffled bytes per thread, kept between calls: a fresh 512 KiB
    /// buffer per chunk would cost its page faults every time. At most [`CHUNK_SIZE`] bytes
    /// per thread that ever shuffled.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer, `len` bytes long.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.len() < len {
                scratch.resize(len, 0);
            }
            f(&mut scratch[..len])
        }
        // Unreachable (nothing here re-enters), but a fresh buffer is a safe answer.
        Err(_) => f(&mut vec![0; len]),
    })
}

/// Compresses one chunk into `out` (at least [`get_maximum_output_size`] long) and returns its
/// table entry. A chunk LZ4 cannot shrink gets the raw flag; the caller copies its bytes.
fn encode_chunk(chunk: &[u8], width: usize, out: &mut [u8]) -> u32 {
    let compressed = if width > 1 {
        with_scratch(chunk.len(), |scratch| {
            let whole = chunk.len() - chunk.len() % width;
            shuffle::shuffle(&chunk[..whole], &mut scratch[..whole], width);
            scratch[whole..].copy_from_slice(&chunk[whole..]);
            compress_into(scratch, out)
        })
    } else {
        compress_into(chunk, out)
    };
    match compressed {
        Ok(len) if len < chunk.len() => len as u32,
        // Not smaller (or, impossibly, the slot was too small): keep the original bytes.
        _ => chunk.len() as u32 | RAW_FLAG,
    }
}

/// Where one chunk's stored bytes sit in the frame, and how they were stored.
struct Chunk {
    start: usize,
    stored_len: usize,
    raw: bool,
}

/// A frame whose header and chunk table have been checked against each other and its length.
struct Layout {
    method: Method,
    width: usize,
    raw_len: usize,
    chunk_size: usize,
    chunks: Vec<Chunk>,
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn parse(frame: &[u8]) -> Result<Layout> {
    if frame.len() < HEADER_LEN {
        return Err(corrupt(format!("{} bytes is shorter than the {HEADER_LEN}-byte header", frame.len())));
    }
    match frame[0] {
        MAGIC_V1 => {}
        b if b >> 4 == 0xC => {
            return Err(corrupt(format!(
                "frame version {} is not one this build reads (1); it was written by a newer afml-cache",
                b & 0xF
            )))
        }
        b => return Err(corrupt(format!("first byte 0x{b:02X} is not the frame magic 0x{MAGIC_V1:02X}"))),
    }
    let method = match frame[1] {
        0 => Method::Stored,
        1 => Method::Lz4,
        2 => Method::ShuffleLz4,
        m => return Err(corrupt(format!("unknown method {m} (known: 0 stored, 1 lz4, 2 shuffle+lz4)"))),
    };
    let width = usize::from(read_u16(frame, 2));
    match method {
        Method::ShuffleLz4 if width < 2 => return Err(corrupt(format!("shuffle width {width} is below 2"))),
        Method::Stored | Method::Lz4 if width != 0 => {
            return Err(corrupt(format!("shuffle width {width} given for an unshuffled method")))
        }
        _ => {}
    }
    let raw_len = u64::from_le_bytes(frame[4..12].try_into().expect("8 bytes"));
    let raw_len = usize::try_from(raw_len)
        .map_err(|_| corrupt(format!("raw length {raw_len} does not fit this machine's address space")))?;
    let chunk_size = read_u32(frame, 12) as usize;
    if chunk_size != chunk_size_for(width) {
        return Err(corrupt(format!(
            "chunk size {chunk_size} is not the {} that version 1 uses for shuffle width {width}",
            chunk_size_for(width)
        )));
    }
    let count = read_u32(frame, 16) as usize;
    if count != raw_len.div_ceil(chunk_size) {
        return Err(corrupt(format!(
            "{count} chunks declared, but {raw_len} bytes in chunks of {chunk_size} make {}",
            raw_len.div_ceil(chunk_size)
        )));
    }
    let payload_start = count
        .checked_mul(4)
        .and_then(|table| table.checked_add(HEADER_LEN))
        .filter(|&end| end <= frame.len())
        .ok_or_else(|| corrupt(format!("the table of {count} chunks runs past the frame's {} bytes", frame.len())))?;

    let mut chunks = Vec::with_capacity(count);
    let mut start = payload_start;
    for i in 0..count {
        let entry = read_u32(frame, HEADER_LEN + 4 * i);
        let stored_len = (entry & !RAW_FLAG) as usize;
        let raw = entry & RAW_FLAG != 0;
        let raw_chunk = chunk_size.min(raw_len - i * chunk_size);
        let fits = if raw {
            stored_len == raw_chunk
        } else {
            method != Method::Stored
                && stored_len > 0
                && stored_len < raw_chunk
                && raw_chunk <= stored_len.saturating_mul(MAX_LZ4_RATIO)
        };
        if !fits {
            let how = if raw { "raw" } else { "compressed" };
            return Err(corrupt(format!(
                "chunk {i} is stored {how} in {stored_len} bytes, impossible for {raw_chunk} raw bytes with method {}",
                method as u8
            )));
        }
        if stored_len > frame.len() - start {
            return Err(corrupt(format!(
                "chunk {i} of {count} needs {stored_len} bytes at byte {start}, past the frame's end at {}",
                frame.len()
            )));
        }
        chunks.push(Chunk { start, stored_len, raw });
        start += stored_len;
    }
    if start != frame.len() {
        return Err(corrupt(format!(
            "the chunk table adds up to {} payload bytes but the frame holds {}",
            start - payload_start,
            frame.len() - payload_start
        )));
    }
    Ok(Layout { method, width, raw_len, chunk_size, chunks })
}

/// The length of the buffer `frame` decodes to: the size of the `out` to give [`decode_into`].
/// The whole header and chunk table are checked, so a corrupt frame fails here, before the
/// caller allocates.
pub fn decoded_len(frame: &[u8]) -> Result<usize> {
    Ok(parse(frame)?.raw_len)
}

/// Decodes `frame` into `out`, whose length must be [`decoded_len`]. On error `out` holds
/// partial garbage.
pub fn decode_into(frame: &[u8], out: &mut [u8]) -> Result<()> {
    let layout = parse(frame)?;
    if out.len() != layout.raw_len {
        return Err(corrupt(format!(
            "the frame decodes to {} bytes but the output buffer has {}",
            layout.raw_len,
            out.len()
        )));
    }
    let width = if layout.method == Method::ShuffleLz4 { layout.width } else { 0 };
    if layout.chunks.len() < 2 {
        for (i, (chunk, dst)) in layout.chunks.iter().zip(out.chunks_mut(layout.chunk_size)).enumerate() {
            decode_chunk(frame, i, chunk, width, dst)?;
        }
        Ok(())
    } else {
        layout
            .chunks
            .par_iter()
            .zip(out.par_chunks_mut(layout.chunk_size))
            .enumerate()
            .try_for_each(|(i, (chunk, dst))| decode_chunk(frame, i, chunk, width, dst))
    }
}

fn decode_chunk(frame: &[u8], i: usize, chunk: &Chunk, width: usize, dst: &mut [u8]) -> Result<()> {
    let src = &frame[chunk.start..chunk.start + chunk.stored_len];
    if chunk.raw {
        dst.copy_from_slice(src);
        return Ok(());
    }
    let wrong = |why| corrupt(format!("chunk {i} (at byte {}) does not decompress: {why}", chunk.start));
    if width > 1 {
        with_scratch(dst.len(), |scratch| {
            lz4::decompress_exact(src, scratch).map_err(wrong)?;
            let whole = dst.len() - dst.len() % width;
            shuffle::unshuffle(&scratch[..whole], &mut dst[..whole], width);
            dst[whole..].copy_from_slice(&scratch[whole..]);
            Ok(())
        })
    } else {
        lz4::decompress_exact(src, dst).map_err(wrong)
    }
}

#[cfg(test)]
mod tests;
