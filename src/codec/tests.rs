use super::samples::{prices, volumes, Rng};
use super::*;

/// Bytes that alternate between a price series and noise every chunk, so a multi-chunk frame
/// holds both compressed and raw chunks.
fn mixed(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = prices(len / 8 + 1, seed);
    out.truncate(len);
    for (i, block) in out.chunks_mut(CHUNK_SIZE).enumerate() {
        if i % 2 == 1 {
            block.copy_from_slice(&rng.bytes(block.len()));
        }
    }
    out
}

fn round_trip(data: &[u8], itemsize: usize, level: Compression) -> Vec<u8> {
    let frame = encode(data, itemsize, level);
    let len = decoded_len(&frame).unwrap_or_else(|e| panic!("{level} itemsize {itemsize} len {}: {e}", data.len()));
    assert_eq!(len, data.len());
    let mut out = vec![0xAA; len];
    decode_into(&frame, &mut out).unwrap_or_else(|e| panic!("{level} itemsize {itemsize} len {}: {e}", data.len()));
    assert!(out == data, "{level} itemsize {itemsize} len {}: bytes differ", data.len());
    frame
}

/// Whether a frame is rejected by `decoded_len` or, sized by it, by `decode_into`.
fn rejected(frame: &[u8]) -> bool {
    decoded(frame).is_none()
}

fn decoded(frame: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0; decoded_len(frame).ok()?];
    decode_into(frame, &mut out).ok()?;
    Some(out)
}

#[test]
fn every_level_itemsize_and_length_round_trips() {
    for level in Compression::ALL {
        for itemsize in [1, 2, 4, 8, 16, 3] {
            let chunk = chunk_size_for(itemsize);
            let several = 2 * chunk + 5 * itemsize + itemsize.saturating_sub(1).max(1);
            let lengths = [0, 1, itemsize - 1, chunk, chunk + 1, CHUNK_SIZE, several];
            let data = mixed(several, itemsize as u64);
            for len in lengths {
                round_trip(&data[..len], itemsize, level);
            }
            let frame = round_trip(&data, itemsize, level);
            let flags: Vec<bool> = frame[HEADER_LEN..HEADER_LEN + 8].chunks(4).map(|e| e[3] & 0x80 != 0).collect();
            let expected = if level == Compression::None { [true; 2] } else { [false, true] };
            assert_eq!(flags, expected, "{level} itemsize {itemsize}: chunks 0 and 1 stored raw");
        }
    }
}

#[test]
fn unusual_itemsizes_fall_back_to_no_shuffle() {
    let data = mixed(CHUNK_SIZE + 100, 7);
    for itemsize in [0, 70_000, usize::MAX] {
        let frame = round_trip(&data, itemsize, Compression::Default);
        assert_eq!(frame[1], Method::Lz4 as u8);
        assert_eq!(frame[2..4], [0, 0]);
    }
}

#[test]
fn runs_compress_up_to_lz4s_limit() {
    // Zeros are LZ4's best case; the 255× bound the decoder checks must still admit them.
    for level in [Compression::Fast, Compression::Default] {
        let frame = round_trip(&vec![0; 3 * CHUNK_SIZE], 8, level);
        assert!(frame.len() < 3 * CHUNK_SIZE / 200, "{level}: {} bytes", frame.len());
    }
}

#[test]
fn incompressible_data_is_stored_raw() {
    let data = Rng(1).bytes(2 * CHUNK_SIZE + 123);
    for level in Compression::ALL {
        let frame = round_trip(&data, 8, level);
        let ratio = frame.len() as f64 / data.len() as f64;
        assert!(ratio < 1.0001, "{level}: ratio {ratio}");
        let table = &frame[HEADER_LEN..HEADER_LEN + 12];
        assert!(table.chunks(4).all(|entry| entry[3] & 0x80 != 0), "{level}: every chunk flagged raw");
    }
}

#[test]
fn shuffle_compresses_prices_clearly_better_than_fast() {
    let data = prices(1 << 20, 3);
    let fast = round_trip(&data, 8, Compression::Fast).len() as f64;
    let default = round_trip(&data, 8, Compression::Default).len() as f64;
    let raw = data.len() as f64;
    assert!(default < 0.8 * fast, "default {:.3} vs fast {:.3} of raw", default / raw, fast / raw);
    assert!(default < 0.6 * raw, "default {:.3} of raw", default / raw);
}

#[test]
fn max_packs_market_columns_tighter_than_default() {
    let minutes: Vec<u8> =
        (0..1i64 << 18).flat_map(|i| (1_600_000_000_000_000_000 + i * 60_000_000_000).to_le_bytes()).collect();
    for (name, data) in [("prices", prices(1 << 18, 4)), ("volumes", volumes(1 << 18, 5)), ("minutes", minutes)] {
        let default = round_trip(&data, 8, Compression::Default).len() as f64;
        let max = round_trip(&data, 8, Compression::Max).len() as f64;
        assert!(max < 0.9 * default, "{name}: max {max} bytes vs default {default}");
    }
}

#[test]
fn max_admits_ratios_past_lz4s_limit() {
    // zstd has no 255x bound: the parser must not apply LZ4's to it.
    let frame = round_trip(&vec![7; 3 * CHUNK_SIZE + 5], 8, Compression::Max);
    assert!(frame.len() < 3 * CHUNK_SIZE / 1000, "{} bytes", frame.len());
}

#[test]
fn truncated_frames_are_errors() {
    let small = prices(300, 5);
    let big = mixed(2 * CHUNK_SIZE + 77, 6);
    for level in Compression::ALL {
        let frame = encode(&small, 8, level);
        for cut in 0..frame.len() {
            assert!(rejected(&frame[..cut]), "{level}: cut at {cut} of {}", frame.len());
        }
        let frame = encode(&big, 8, level);
        for cut in (0..frame.len()).step_by(997).chain(frame.len() - 40..frame.len()) {
            assert!(rejected(&frame[..cut]), "{level}: cut at {cut} of {}", frame.len());
        }
        let mut longer = frame.clone();
        longer.push(0);
        assert!(rejected(&longer), "{level}: a trailing byte");
    }
}

/// Damage to the header or the chunk table is an error, unless the damaged frame still
/// decodes to exactly the original bytes: the method byte of a frame whose chunks are all
/// stored raw can say "stored" or "lz4" alike. The one exception is a `max` chunk's delta bit
/// (bit 30 of its table entry): a single bit with nothing to check it against, guarded, like
/// every other byte of a stored value, by the entry's MAC.
#[test]
fn damaged_headers_and_tables_are_errors_or_harmless() {
    let small = prices(300, 8);
    let big = mixed(2 * CHUNK_SIZE + 77, 9);
    for level in Compression::ALL {
        for data in [&small, &big] {
            let frame = encode(data, 8, level);
            let count = u32::from_le_bytes(frame[16..20].try_into().unwrap()) as usize;
            for at in 0..HEADER_LEN + 4 * count {
                for flip in (0..8).map(|bit| 1u8 << bit).chain([0xFF]) {
                    let mut bad = frame.clone();
                    bad[at] ^= flip;
                    let harmless = at == 1 && decoded(&bad).as_ref() == Some(data);
                    let delta_bit = level == Compression::Max && at >= HEADER_LEN && at % 4 == 3 && flip == 0x40;
                    assert!(
                        harmless || delta_bit || rejected(&bad),
                        "{level}, {} bytes: byte {at} ^ {flip:#04x}",
                        data.len()
                    );
                }
            }
        }
    }
}

#[test]
fn damaged_payloads_never_panic() {
    // LZ4 cannot notice every flipped literal (the store's MAC does); it must only never panic
    // or write out of bounds, and a wrong size must be an error.
    let data = prices(2000, 10);
    for level in [Compression::Fast, Compression::Default, Compression::Max] {
        let frame = encode(&data, 8, level);
        let mut out = vec![0; data.len()];
        for at in HEADER_LEN + 4..frame.len() {
            for flip in [0x01, 0x10, 0xFF] {
                let mut bad = frame.clone();
                bad[at] ^= flip;
                let _ = decode_into(&bad, &mut out);
            }
        }
    }
    let mut rng = Rng(11);
    for _ in 0..2000 {
        let len = (rng.next_u64() % 200) as usize;
        let mut junk = rng.bytes(len);
        if len >= 2 {
            junk[0] = MAGIC_V1;
            junk[1] %= 3;
        }
        let _ = rejected(&junk);
    }
}

#[test]
fn a_wrong_output_length_is_an_error() {
    for len in [0, 100, 3 * CHUNK_SIZE] {
        let data = mixed(len, 12);
        for level in Compression::ALL {
            let frame = encode(&data, 8, level);
            for wrong in [len + 1, len.saturating_sub(1), len + CHUNK_SIZE] {
                if wrong != len {
                    let err = decode_into(&frame, &mut vec![0; wrong]).unwrap_err();
                    assert!(err.to_string().contains("output buffer"), "{err}");
                }
            }
        }
    }
}

#[test]
fn corrupt_frame_messages_say_what_was_wrong() {
    let msg = |frame: &[u8]| decoded_len(frame).unwrap_err().to_string();
    let frame = encode(&prices(100, 13), 8, Compression::Default);
    assert!(msg(&frame[..5]).contains("shorter than the 20-byte header"), "{}", msg(&frame[..5]));
    let mut newer = frame.clone();
    newer[0] = 0xC2;
    assert!(msg(&newer).contains("version 2"), "{}", msg(&newer));
    let mut method = frame.clone();
    method[1] = 9;
    assert!(msg(&method).contains("unknown method 9"), "{}", msg(&method));
    assert!(msg(&frame[..frame.len() - 1]).contains("past the frame's end"), "{}", msg(&frame[..frame.len() - 1]));
}

#[test]
fn compression_names_parse_and_print() {
    for level in Compression::ALL {
        assert_eq!(level.name().parse::<Compression>(), Ok(level));
        assert_eq!(level.to_string(), level.name());
    }
    assert_eq!(Compression::default(), Compression::Default);
    let err = "zstd".parse::<Compression>().unwrap_err().to_string();
    assert!(err.contains("\"zstd\"") && err.contains("\"none\", \"fast\", \"default\""), "{err}");
}

#[test]
fn the_frame_layout_is_the_documented_one() {
    let data: Vec<u8> = (0..10).collect();
    let frame = encode(&data, 8, Compression::None);
    let mut expected = vec![0xC1, 0, 0, 0];
    expected.extend_from_slice(&10u64.to_le_bytes());
    expected.extend_from_slice(&(CHUNK_SIZE as u32).to_le_bytes());
    expected.extend_from_slice(&1u32.to_le_bytes());
    expected.extend_from_slice(&(10u32 | 1 << 31).to_le_bytes());
    expected.extend_from_slice(&data);
    assert_eq!(frame, expected);

    let frame = encode(&prices(100_000, 14), 8, Compression::Default);
    assert_eq!(frame[..4], [0xC1, 2, 8, 0]);
    assert_eq!(frame[12..20], [0, 0, 8, 0, 2, 0, 0, 0]); // 512 KiB chunks, 2 of them
}

#[test]
fn a_chunk_that_does_not_decompress_fails_the_parallel_path() {
    let data = prices(3 * CHUNK_SIZE / 8, 15);
    for level in [Compression::Fast, Compression::Default, Compression::Max] {
        let mut frame = encode(&data, 8, level);
        let payload = HEADER_LEN + 4 * 3;
        let first = (u32::from_le_bytes(frame[HEADER_LEN..HEADER_LEN + 4].try_into().unwrap()) & LEN_MASK) as usize;
        assert!(first < CHUNK_SIZE, "{level}: chunk 0 compressed");
        // A zero token then a zero match offset: invalid LZ4.
        frame[payload..payload + first].fill(0);
        let err = decode_into(&frame, &mut vec![0; data.len()]).unwrap_err().to_string();
        assert!(err.contains("chunk 0") && err.contains("does not decompress"), "{err}");
    }
}

#[test]
fn a_frame_made_in_a_spare_buffer_holds_nothing_of_its_last_use() {
    let data = mixed(5 * CHUNK_SIZE + 123, 11);
    let fresh = round_trip(&data, 8, Compression::Default);
    for level in Compression::ALL {
        let mut used = vec![0xAB; 3 * fresh.len() / 2];
        used.truncate(fresh.len() / 2); // a spare keeps its capacity, and bytes past its length
        crate::memory::FRAMES.give_back(used);
        let frame = round_trip(&data, 8, level);
        if level == Compression::Default {
            assert!(frame == fresh, "the same bytes as a frame made in fresh memory");
        }
        crate::memory::FRAMES.give_back(frame);
    }
}
