//! Element bytes of n-dimensional arrays, always in C order, whatever the memory layout.
//!
//! Element bytes are bulk data, written as pieces (see [`super::pieces`]). A C-contiguous array
//! is hashed straight from its buffer (no copy, multi-threaded when large). Any other layout
//! (Fortran order, slices with steps, negative strides, broadcast views) is gathered into C order
//! block by block, so a view hashes exactly like its contiguous copy.

use super::pieces::{write_pieces, Pieces};
use super::Encoder;

/// How many gathered bytes are fed to the hasher at once for non-contiguous arrays.
const GATHER_BLOCK: usize = 1 << 20;

/// An array's memory as numpy describes it: `bytes` spans every element, and `start` is where
/// the element at index (0, …, 0) begins inside it (strides may be negative).
#[derive(Debug, Clone, Copy)]
pub struct StridedBytes<'a> {
    pub bytes: &'a [u8],
    pub start: usize,
    pub itemsize: usize,
    pub shape: &'a [usize],
    pub strides: &'a [isize],
}

impl StridedBytes<'_> {
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    fn is_c_contiguous(&self) -> bool {
        let mut expected = self.itemsize as isize;
        for (&n, &s) in self.shape.iter().zip(self.strides).rev() {
            if n > 1 && s != expected {
                return false;
            }
            expected *= n as isize;
        }
        true
    }
}

/// Writes `pieces(element bytes of view in C order)`.
pub fn write_elements(enc: &mut Encoder, view: StridedBytes<'_>) {
    let count = view.element_count();
    if count == 0 || view.itemsize == 0 {
        return;
    }
    if view.is_c_contiguous() {
        let len = count * view.itemsize;
        write_pieces(enc, &view.bytes[view.start..view.start + len]);
        return;
    }
    let mut out =
        Gathered { enc, pieces: Pieces::new(), block: Vec::with_capacity(GATHER_BLOCK.min(count * view.itemsize)) };
    gather(&mut out, &view, 0, view.start as isize);
    let Gathered { enc, mut pieces, block } = out;
    pieces.write(enc, &block);
    pieces.finish(enc);
}

/// Where gathered bytes go: a block, written as the next part of the pieces when full.
struct Gathered<'e> {
    enc: &'e mut Encoder,
    pieces: Pieces,
    block: Vec<u8>,
}

fn gather(out: &mut Gathered<'_>, view: &StridedBytes<'_>, dim: usize, offset: isize) {
    let n = view.shape[dim];
    let stride = view.strides[dim];
    let last = dim + 1 == view.shape.len();
    if last && stride == view.itemsize as isize {
        let begin = offset as usize;
        out.push(&view.bytes[begin..begin + n * view.itemsize]);
        return;
    }
    for i in 0..n {
        let at = offset + i as isize * stride;
        if last {
            let begin = at as usize;
            out.push(&view.bytes[begin..begin + view.itemsize]);
        } else {
            gather(out, view, dim + 1, at);
        }
    }
}

impl Gathered<'_> {
    fn push(&mut self, bytes: &[u8]) {
        if self.block.len() + bytes.len() > GATHER_BLOCK && !self.block.is_empty() {
            self.pieces.write(self.enc, &self.block);
            self.block.clear();
        }
        if bytes.len() >= GATHER_BLOCK {
            self.pieces.write(self.enc, bytes);
        } else {
            self.block.extend_from_slice(bytes);
        }
    }
}

/// Writes `pieces(mask)` (one byte 0/1 per element, 1 = missing), then `pieces(values)` with
/// every missing slot zeroed: what sits under a mask is arbitrary and must never count.
pub fn write_masked(enc: &mut Encoder, data: &[u8], itemsize: usize, mask: &[u8]) {
    debug_assert_eq!(data.len(), mask.len() * itemsize);
    let normalized: Vec<u8> = mask.iter().map(|&m| u8::from(m != 0)).collect();
    write_pieces(enc, &normalized);
    if itemsize == 0 {
        return;
    }
    let per_block = (GATHER_BLOCK / itemsize).max(1);
    let mut block = Vec::with_capacity(per_block * itemsize);
    let mut pieces = Pieces::new();
    for (values, missing) in data.chunks(per_block * itemsize).zip(mask.chunks(per_block)) {
        block.clear();
        block.extend_from_slice(values);
        for (slot, &m) in block.chunks_mut(itemsize).zip(missing) {
            if m != 0 {
                slot.fill(0);
            }
        }
        pieces.write(enc, &block);
    }
    pieces.finish(enc);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(view: StridedBytes<'_>) -> String {
        let mut e = Encoder::new();
        write_elements(&mut e, view);
        e.hex()
    }

    fn contiguous(bytes: &[u8], itemsize: usize, shape: &[usize]) -> String {
        let mut strides = vec![0isize; shape.len()];
        let mut s = itemsize as isize;
        for d in (0..shape.len()).rev() {
            strides[d] = s;
            s *= shape[d] as isize;
        }
        digest(StridedBytes { bytes, start: 0, itemsize, shape, strides: &strides })
    }

    #[test]
    fn fortran_order_hashes_like_its_c_order_copy() {
        // 2x3 matrix of u16: C order rows [0,1,2],[3,4,5].
        let c: Vec<u8> = [0u16, 1, 2, 3, 4, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f: Vec<u8> = [0u16, 3, 1, 4, 2, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let fortran = StridedBytes { bytes: &f, start: 0, itemsize: 2, shape: &[2, 3], strides: &[2, 4] };
        assert_eq!(digest(fortran), contiguous(&c, 2, &[2, 3]));
    }

    #[test]
    fn negative_strides_hash_like_the_reversed_copy() {
        let data: Vec<u8> = (0u8..10).collect();
        let reversed: Vec<u8> = (0u8..10).rev().collect();
        let view = StridedBytes { bytes: &data, start: 9, itemsize: 1, shape: &[10], strides: &[-1] };
        assert_eq!(digest(view), contiguous(&reversed, 1, &[10]));
    }

    #[test]
    fn stepped_slice_hashes_like_its_copy() {
        let data: Vec<u8> = (0u8..20).collect();
        let every_third: Vec<u8> = (0u8..20).step_by(3).collect();
        let view = StridedBytes { bytes: &data, start: 0, itemsize: 1, shape: &[7], strides: &[3] };
        assert_eq!(digest(view), contiguous(&every_third, 1, &[7]));
    }

    #[test]
    fn large_gathers_cross_block_boundaries_without_changing_the_digest() {
        let n = GATHER_BLOCK / 4 + 1001;
        let data: Vec<u8> = (0..n * 8).map(|i| (i % 251) as u8).collect();
        let evens: Vec<u8> = data.chunks(4).step_by(2).flatten().copied().collect();
        let view = StridedBytes { bytes: &data, start: 0, itemsize: 4, shape: &[evens.len() / 4], strides: &[8] };
        assert_eq!(digest(view), contiguous(&evens, 4, &[evens.len() / 4]));
    }

    #[test]
    fn values_under_a_mask_do_not_count() {
        let run = |data: &[u8]| {
            let mut e = Encoder::new();
            write_masked(&mut e, data, 2, &[0, 1, 0]);
            e.hex()
        };
        assert_eq!(run(&[1, 0, 9, 9, 3, 0]), run(&[1, 0, 7, 7, 3, 0]));
        assert_ne!(run(&[1, 0, 9, 9, 3, 0]), run(&[2, 0, 9, 9, 3, 0]));
    }
}
