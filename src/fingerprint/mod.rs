//! The content fingerprint: BLAKE3 over a canonical, type-tagged encoding of a value.
//!
//! The encoding is specified in `docs/fingerprint.md`; this module holds its building blocks
//! (tags, lengths, scalars, unordered collections) and knows nothing about Python. The bindings
//! walk Python objects and drive an [`Encoder`]; arrays and Arrow data are hashed here, from
//! byte slices, shapes and strides.

pub mod array;
pub mod arrow;
pub mod pieces;

use std::sync::OnceLock;

/// Version of the canonical encoding. It is mixed into every digest through the BLAKE3
/// key-derivation context, so digests of different spec versions never coincide. Bump it (and
/// the context below) whenever any encoding rule changes; the golden vectors enforce this.
pub const SPEC_VERSION: u32 = 3;
const CONTEXT: &str = "afml-cache 2026-12-01 fingerprint spec v3";

/// Inputs at least this large are hashed on rayon's threads (pieces of bulk data, or BLAKE3's
/// tree mode for other bytes). Below it the cost of waking rayon's workers exceeds the gain (BLAKE3's documentation puts the break-even
/// near 128 KiB).
pub const PARALLEL_THRESHOLD: usize = 128 * 1024;

/// The first byte of every encoded value: what kind of value follows. The numbers are part of
/// the spec; never reuse or renumber one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    None = 0x00,
    Bool = 0x01,
    Int = 0x02,
    BigInt = 0x03,
    Float = 0x04,
    Complex = 0x05,
    Str = 0x06,
    Bytes = 0x07,
    ByteArray = 0x08,
    Tuple = 0x10,
    List = 0x11,
    /// Items in insertion order: code that iterates a dict (`pd.DataFrame(features)`) depends on it.
    Dict = 0x12,
    Set = 0x13,
    FrozenSet = 0x14,
    /// A value described by a rule of the Python shim: a rule name, then the canonical form.
    Canonical = 0x20,
    /// A class or other type object: module and qualified name.
    Type = 0x21,
    NdArray = 0x30,
    /// An array whose elements are Python objects: dtype, shape, then each element's encoding.
    NdArrayObjects = 0x31,
    /// Values with a validity mask (pandas nullable arrays): masked slots count as zero.
    Masked = 0x32,
    /// Arrow data imported through the C data interface (one array or a stream of them).
    Arrow = 0x33,
    /// An Arrow field, schema or type imported through the C data interface, without data.
    ArrowField = 0x34,
}

/// Bytes of small writes gathered before they reach BLAKE3: each `update` call has a fixed cost
/// (dispatch, chunk bookkeeping) far above copying a tag or a length.
const PENDING: usize = 1024;

/// Streams a canonical encoding into BLAKE3.
#[derive(Clone)]
pub struct Encoder {
    hasher: blake3::Hasher,
    pending: [u8; PENDING],
    pending_len: usize,
    /// Bulk buffers deferred to the next [`Encoder::settle`], if any.
    later: Option<Box<Later>>,
}

/// Bulk buffers whose pieces are hashed together, in one parallel pass, when the encoder
/// settles, and what was written after the first of them, kept in order until then.
#[derive(Clone, Default)]
struct Later {
    buffers: Vec<Shared>,
    /// Where in `log` each buffer's piece digests belong.
    marks: Vec<usize>,
    log: Vec<u8>,
}

/// A buffer that the caller of [`Encoder::defer_pieces`] keeps alive and unchanged.
#[derive(Clone, Copy)]
struct Shared {
    start: *const u8,
    len: usize,
}

// SAFETY: `Shared` is only read, and `defer_pieces`' caller keeps the memory alive and unchanged
// until the encoder settles, on whichever thread that happens.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Encoder {
    /// An encoder for a whole value: keyed by the spec version.
    pub fn new() -> Self {
        static ROOT: OnceLock<blake3::Hasher> = OnceLock::new();
        let root = ROOT.get_or_init(|| blake3::Hasher::new_derive_key(CONTEXT));
        Self::with(root.clone())
    }

    /// An encoder for one member of an unordered collection; its digest is fed to the parent.
    pub fn member() -> Self {
        Self::with(blake3::Hasher::new())
    }

    fn with(hasher: blake3::Hasher) -> Self {
        Self { hasher, pending: [0; PENDING], pending_len: 0, later: None }
    }

    pub fn tag(&mut self, tag: Tag) {
        self.put(&[tag as u8]);
    }

    pub fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    pub fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }

    pub fn i64(&mut self, v: i64) {
        self.put(&v.to_le_bytes());
    }

    /// Floats count by their exact bits: `0.0` and `-0.0` differ (functions can tell them
    /// apart), and any NaN equals only a NaN with the same payload.
    pub fn f64(&mut self, v: f64) {
        self.put(&v.to_bits().to_le_bytes());
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.raw(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// Writes `pieces(bytes)` (see [`pieces`]) like [`pieces::write_pieces`], but hashes them at
    /// the next [`Encoder::settle`], in one parallel pass with every other deferred buffer: the
    /// columns of a frame then cost one wake-up of the threads, not one each.
    ///
    /// # Safety
    ///
    /// `bytes` must stay alive and unchanged until this encoder (or a clone of it) settles,
    /// which `digest` and `hex` also do.
    pub unsafe fn defer_pieces(&mut self, bytes: &[u8]) {
        let later = self.later.get_or_insert_with(Box::default);
        later.marks.push(later.log.len());
        later.buffers.push(Shared { start: bytes.as_ptr(), len: bytes.len() });
    }

    /// Hashes the deferred buffers' pieces and writes everything held back, in order.
    pub fn settle(&mut self) {
        let Some(later) = self.later.take() else { return };
        // SAFETY: `defer_pieces`' caller keeps each buffer alive and unchanged until now.
        let buffers: Vec<&[u8]> =
            later.buffers.iter().map(|b| unsafe { std::slice::from_raw_parts(b.start, b.len) }).collect();
        let digests = pieces::digests_of(&buffers);
        let mut next = digests.iter();
        let mut written = 0;
        for (buffer, &mark) in buffers.iter().zip(&later.marks) {
            self.put(&later.log[written..mark]);
            written = mark;
            for digest in next.by_ref().take(buffer.len().div_ceil(pieces::PIECE)) {
                self.put(digest);
            }
        }
        self.put(&later.log[written..]);
    }

    /// Bytes with no length prefix (the caller has written what delimits them).
    pub fn raw(&mut self, b: &[u8]) {
        if b.len() >= PARALLEL_THRESHOLD && crate::parallel::available() {
            self.settle();
            self.flush();
            self.hasher.update_rayon(b);
        } else {
            self.put(b);
        }
    }

    /// An unordered collection (set, frozenset): its members' digests, sorted, so that insertion
    /// order and `PYTHONHASHSEED` never matter.
    pub fn unordered(&mut self, tag: Tag, mut members: Vec<[u8; 32]>) {
        members.sort_unstable();
        self.tag(tag);
        self.len(members.len());
        for m in &members {
            self.put(m);
        }
    }

    pub fn digest(&mut self) -> [u8; 32] {
        self.settle();
        self.flush();
        *self.hasher.finalize().as_bytes()
    }

    pub fn hex(&mut self) -> String {
        self.settle();
        self.flush();
        self.hasher.finalize().to_hex().to_string()
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if let Some(later) = &mut self.later {
            later.log.extend_from_slice(bytes);
            return;
        }
        let at = self.pending_len;
        if let Some(slot) = self.pending.get_mut(at..at + bytes.len()) {
            slot.copy_from_slice(bytes);
            self.pending_len += bytes.len();
        } else {
            self.flush();
            if bytes.len() < PENDING {
                self.pending[..bytes.len()].copy_from_slice(bytes);
                self.pending_len = bytes.len();
            } else {
                self.hasher.update(bytes);
            }
        }
    }

    fn flush(&mut self) {
        if self.pending_len > 0 {
            self.hasher.update(&self.pending[..self.pending_len]);
            self.pending_len = 0;
        }
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(f: impl FnOnce(&mut Encoder)) -> String {
        let mut e = Encoder::new();
        f(&mut e);
        e.hex()
    }

    #[test]
    fn empty_encoding_is_keyed_by_the_spec_version() {
        let plain = blake3::hash(b"").to_hex().to_string();
        assert_ne!(digest_of(|_| {}), plain);
        assert_eq!(digest_of(|_| {}), blake3::Hasher::new_derive_key(CONTEXT).finalize().to_hex().to_string());
    }

    #[test]
    fn unordered_members_ignore_order() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let x = digest_of(|e| e.unordered(Tag::Set, vec![a, b]));
        let y = digest_of(|e| e.unordered(Tag::Set, vec![b, a]));
        assert_eq!(x, y);
        let z = digest_of(|e| e.unordered(Tag::FrozenSet, vec![b, a]));
        assert_ne!(x, z);
    }

    #[test]
    fn large_inputs_hash_like_small_ones() {
        // update_rayon must give the same digest as the serial path, or chunking would leak.
        let data: Vec<u8> = (0..(PARALLEL_THRESHOLD * 3 + 17)).map(|i| (i * 7) as u8).collect();
        let mut serial = Encoder::new();
        for piece in data.chunks(1000) {
            serial.raw(piece);
        }
        let mut parallel = Encoder::new();
        parallel.raw(&data);
        assert_eq!(serial.hex(), parallel.hex());
    }

    #[test]
    fn zero_and_negative_zero_differ() {
        assert_ne!(digest_of(|e| e.f64(0.0)), digest_of(|e| e.f64(-0.0)));
    }
}
