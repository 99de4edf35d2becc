//! Bulk data (array elements, masks, Arrow values) as independent pieces.
//!
//! Spec v3 writes bulk bytes `B` as `pieces(B)`: the BLAKE3 digests of its consecutive
//! [`PIECE`]-byte pieces (the last one shorter; none for an empty `B`). Each piece hashes on its
//! own, so the pieces of a large buffer spread over all threads at once, and a buffer handed over
//! in parts (gathered blocks of a strided view, pandas blocks, Arrow chunks) hashes like the same
//! bytes handed over whole: the grid of pieces is fixed by the position in `B`, not by the parts.

use rayon::prelude::*;

use super::{Encoder, PARALLEL_THRESHOLD};

/// Bytes per piece. Large enough that a piece's digest (32 bytes) is a negligible share of the
/// encoding; small enough that a few MB split evenly over the threads.
pub const PIECE: usize = 1 << 20;

/// Writes `pieces(bytes)` for a buffer given whole.
pub fn write_pieces(enc: &mut Encoder, bytes: &[u8]) {
    for digest in digests_of(&[bytes]) {
        enc.raw(&digest);
    }
}

/// Writes `pieces(B)` for a buffer `B` given in parts, in order; [`Pieces::finish`] ends it.
#[derive(Default)]
pub struct Pieces {
    /// The start of a piece that the parts so far did not fill.
    carry: Vec<u8>,
}

impl Pieces {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&mut self, enc: &mut Encoder, mut bytes: &[u8]) {
        if !self.carry.is_empty() {
            let take = (PIECE - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() < PIECE {
                return;
            }
            write_pieces(enc, &self.carry);
            self.carry.clear();
        }
        let whole = bytes.len() - bytes.len() % PIECE;
        write_pieces(enc, &bytes[..whole]);
        self.carry.extend_from_slice(&bytes[whole..]);
    }

    pub fn finish(&mut self, enc: &mut Encoder) {
        write_pieces(enc, &self.carry);
        self.carry.clear();
    }
}

/// The digests of the pieces of each buffer, in order. Many pieces go to the threads one piece
/// each (no joins inside a piece); a few large ones are each split by BLAKE3's own tree so that
/// every thread still has work. Both give the same digests.
pub fn digests_of(buffers: &[&[u8]]) -> Vec<[u8; 32]> {
    let all: Vec<&[u8]> = buffers.iter().flat_map(|b| b.chunks(PIECE)).collect();
    let total: usize = buffers.iter().map(|b| b.len()).sum();
    let hash = |piece: &&[u8]| *blake3::hash(piece).as_bytes();
    if total < PARALLEL_THRESHOLD || !crate::parallel::available() {
        all.iter().map(hash).collect()
    } else if all.len() >= 4 * rayon::current_num_threads() {
        all.par_iter().map(hash).collect()
    } else {
        all.iter().map(|piece| *blake3::Hasher::new().update_rayon(piece).finalize().as_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> String {
        let mut e = Encoder::new();
        write_pieces(&mut e, bytes);
        e.hex()
    }

    fn in_parts(bytes: &[u8], part: usize) -> String {
        let mut e = Encoder::new();
        let mut pieces = Pieces::new();
        for p in bytes.chunks(part) {
            pieces.write(&mut e, p);
        }
        pieces.finish(&mut e);
        e.hex()
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn parts_of_any_size_hash_like_the_whole() {
        let bytes = data(3 * PIECE + 12_345);
        let expected = whole(&bytes);
        for part in [1000, 4096, PIECE - 1, PIECE, PIECE + 7, 2 * PIECE + 1, bytes.len()] {
            assert_eq!(in_parts(&bytes, part), expected, "parts of {part} bytes");
        }
    }

    #[test]
    fn the_encoding_is_the_digests_of_fixed_pieces() {
        for n in [0, 5, PIECE, PIECE + 1, 9 * PIECE + 3] {
            let bytes = data(n);
            let mut expected = Encoder::new();
            for piece in bytes.chunks(PIECE) {
                expected.raw(blake3::hash(piece).as_bytes());
            }
            assert_eq!(whole(&bytes), expected.hex(), "{n} bytes");
        }
    }

    #[test]
    fn deferred_buffers_hash_like_pieces_written_in_place() {
        let (a, b) = (data(2 * PIECE + 5), data(300));
        let write = |e: &mut Encoder, deferred: bool| {
            e.u64(1);
            for buffer in [&a, &b] {
                if deferred {
                    // SAFETY: `a` and `b` outlive the encoder.
                    unsafe { e.defer_pieces(buffer) };
                } else {
                    write_pieces(e, buffer);
                }
                e.str("between");
            }
        };
        let (mut now, mut later) = (Encoder::new(), Encoder::new());
        write(&mut now, false);
        write(&mut later, true);
        assert_eq!(now.hex(), later.hex());
        // Big raw bytes after a deferred buffer settle it first, keeping the order.
        let big = data(PARALLEL_THRESHOLD * 2);
        let mut expected = now.clone();
        write_pieces(&mut expected, &a);
        expected.raw(&big);
        // SAFETY: `a` outlives the encoder.
        unsafe { later.defer_pieces(&a) };
        later.raw(&big);
        assert_eq!(expected.hex(), later.hex());
    }

    #[test]
    fn where_the_pieces_end_counts() {
        // The same bytes written as two buffers are two sets of pieces, not one.
        let bytes = data(PIECE + 10);
        let mut split = Encoder::new();
        write_pieces(&mut split, &bytes[..10]);
        write_pieces(&mut split, &bytes[10..]);
        assert_ne!(whole(&bytes), split.hex());
    }
}
