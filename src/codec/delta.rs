//! Delta coding for `compression="max"`: each item (a little-endian integer of 2, 4 or 8 bytes)
//! becomes its difference from the item before it (the first from 0), zigzag-mapped so that
//! small negative differences are small numbers too. Prices on a tick grid, timestamps and other
//! slowly moving columns can then turn into runs of near-zero bytes; whether they do is tried
//! per chunk (see `pack_chunk`), since values that hover between a few levels pack better as
//! they are. Wrapping arithmetic makes it exact for any
//! bits, floats included (their bit patterns are differenced, not their values).

/// Writes the zigzagged differences of `src`'s items to `dst` (same length, whole items).
pub(super) fn encode(src: &[u8], dst: &mut [u8], width: usize) {
    match width {
        2 => encode_u16(src, dst),
        4 => encode_u32(src, dst),
        8 => encode_u64(src, dst),
        _ => unreachable!("delta coding is only chosen for widths 2, 4 and 8"),
    }
}

/// The inverse of [`encode`], in place.
pub(super) fn decode(buf: &mut [u8], width: usize) {
    match width {
        2 => decode_u16(buf),
        4 => decode_u32(buf),
        8 => decode_u64(buf),
        _ => unreachable!("the frame parser admits delta only for widths 2, 4 and 8"),
    }
}

/// Whether a frame may mark a chunk of this item width delta-coded.
pub(super) fn supports(width: usize) -> bool {
    matches!(width, 2 | 4 | 8)
}

macro_rules! kernels {
    ($u:ty, $i:ty, $encode:ident, $decode:ident) => {
        fn $encode(src: &[u8], dst: &mut [u8]) {
            const N: usize = std::mem::size_of::<$u>();
            let mut prev = 0 as $u;
            for (item, out) in src.chunks_exact(N).zip(dst.chunks_exact_mut(N)) {
                let x = <$u>::from_le_bytes(item.try_into().expect("whole items"));
                let d = x.wrapping_sub(prev) as $i;
                out.copy_from_slice(&(((d << 1) ^ (d >> (<$u>::BITS - 1))) as $u).to_le_bytes());
                prev = x;
            }
        }

        fn $decode(buf: &mut [u8]) {
            const N: usize = std::mem::size_of::<$u>();
            let mut prev = 0 as $u;
            for item in buf.chunks_exact_mut(N) {
                let z = <$u>::from_le_bytes((&*item).try_into().expect("whole items"));
                prev = prev.wrapping_add((z >> 1) ^ (z & 1).wrapping_neg());
                item.copy_from_slice(&prev.to_le_bytes());
            }
        }
    };
}

kernels!(u16, i16, encode_u16, decode_u16);
kernels!(u32, i32, encode_u32, decode_u32);
kernels!(u64, i64, encode_u64, decode_u64);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::samples::Rng;

    #[test]
    fn every_width_inverts_on_any_bits() {
        let bytes = Rng(5).bytes(4096);
        for width in [2, 4, 8] {
            let mut coded = vec![0; bytes.len()];
            encode(&bytes, &mut coded, width);
            decode(&mut coded, width);
            assert_eq!(coded, bytes, "width {width}");
        }
    }
}
