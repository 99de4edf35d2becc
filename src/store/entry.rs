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

use std::ops::Range;

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
    let header_bytes = encode_header(header);
    let payload_len = 8 + stream.len() + frames.iter().map(|f| 8 + f.len()).sum::<usize>();
    let mut head = Vec::with_capacity(PREFIX_LEN + header_bytes.len() + 8);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    head.extend_from_slice(&counters.to_bytes());
    head.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    head.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    head.extend_from_slice(&(payload_len as u64).to_le_bytes());
    head.extend_from_slice(&header_bytes);
    head.extend_from_slice(&(stream.len() as u64).to_le_bytes());
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
