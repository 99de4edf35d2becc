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

mod lz4;
#[doc(hidden)]
pub mod samples;
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
/// chunk plus its scratch stays in cache between the shuffle and LZ4.
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
    /// Every level, from least to most work.
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

    // Chunks compress into per-thread buffers and come back as exact-size vectors, or as
    // `None` when stored raw (their bytes are then copied straight from `data`); the frame is
    // written once, at its exact size. Nothing is zero-filled, no worst case is allocated.
    let compressed: Vec<Option<Vec<u8>>> = if method == Method::Stored {
        vec![None; chunks]
    } else if chunks < 2 || !crate::parallel::available() {
        data.chunks(chunk_size).map(|chunk| encode_chunk(chunk, width)).collect()
    } else {
        data.par_chunks(chunk_size).map(|chunk| encode_chunk(chunk, width)).collect()
    };
    let stored: Vec<(&[u8], u32)> = data
        .chunks(chunk_size)
        .zip(&compressed)
        .map(|(chunk, compressed)| match compressed {
            Some(bytes) => (bytes.as_slice(), 0),
            None => (chunk, RAW_FLAG),
        })
        .collect();
    let frame_len = payload_start + stored.iter().map(|(bytes, _)| bytes.len()).sum::<usize>();
    let mut frame = Vec::with_capacity(frame_len);
    crate::memory::advise_huge_pages(frame.as_mut_ptr(), frame_len);
    write_header(&mut frame, method, width, data.len(), chunk_size);
    for (bytes, flag) in &stored {
        frame.extend_from_slice(&(bytes.len() as u32 | flag).to_le_bytes());
    }
    for (bytes, _) in &stored {
        frame.extend_from_slice(bytes);
    }
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

/// Per-thread working buffers, kept between calls: fresh ones per chunk would cost their page
/// faults every time. At most a chunk (512 KiB) plus LZ4's worst case for it (~563 KiB) per
/// thread that ever encoded, and a chunk per thread that ever decoded a shuffled frame.
#[derive(Default)]
struct Scratch {
    shuffled: Vec<u8>,
    compressed: Vec<u8>,
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

/// Compresses one chunk: its stored bytes, or `None` if LZ4 cannot shrink it (stored raw).
fn encode_chunk(chunk: &[u8], width: usize) -> Option<Vec<u8>> {
    with_scratch(|Scratch { shuffled, compressed }| {
        let out = at_least(compressed, get_maximum_output_size(chunk.len()));
        let result = if width > 1 {
            let shuffled = at_least(shuffled, chunk.len());
            let whole = chunk.len() - chunk.len() % width;
            shuffle::shuffle(&chunk[..whole], &mut shuffled[..whole], width);
            shuffled[whole..].copy_from_slice(&chunk[whole..]);
            compress_into(shuffled, out)
        } else {
            compress_into(chunk, out)
        };
        match result {
            Ok(len) if len < chunk.len() => Some(out[..len].to_vec()),
            // Not smaller (or, impossibly, the buffer was too small): store the original bytes.
            _ => None,
        }
    })
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
    if layout.chunks.len() < 2 || !crate::parallel::available() {
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
        with_scratch(|Scratch { shuffled, .. }| {
            let scratch = at_least(shuffled, dst.len());
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
