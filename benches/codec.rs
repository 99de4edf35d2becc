//! Encode and decode throughput of the buffer codec, per compression level, on 16 MiB of
//! market-like data. Run with `cargo bench --bench codec`; it prints each frame's ratio (frame
//! bytes / raw bytes) before the timings, which criterion reports in GiB/s of raw bytes.

use std::hint::black_box;
use std::time::Duration;

use afml_cache::codec::{decode_into, decoded_len, encode, Compression};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const LEN: usize = 16 << 20;

/// xorshift64*: deterministic noise, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// Futures-like prices: a multiplicative random walk rounded to 0.25 ticks.
fn prices() -> Vec<u8> {
    let mut rng = Rng(1);
    let mut p = 4500.0f64;
    (0..LEN / 8)
        .flat_map(|_| {
            p = (p * (1.0 + 2e-4 * rng.unit()) * 4.0).round() / 4.0;
            p.to_le_bytes()
        })
        .collect()
}

/// Bar volumes as int64: log-normal-ish lot counts around a few hundred.
fn volumes() -> Vec<u8> {
    let mut rng = Rng(2);
    (0..LEN / 8)
        .flat_map(|_| {
            let z = rng.unit() + rng.unit() + rng.unit();
            ((300.0 * z.exp()).round() as i64).to_le_bytes()
        })
        .collect()
}

fn random() -> Vec<u8> {
    let mut rng = Rng(3);
    (0..LEN / 8).flat_map(|_| rng.next().to_le_bytes()).collect()
}

fn codec(c: &mut Criterion) {
    for (name, data) in [("prices_f64", prices()), ("volumes_i64", volumes()), ("random", random())] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(data.len() as u64));
        for level in Compression::ALL {
            let frame = encode(&data, 8, level);
            println!("{name}/{level}: ratio {:.3}", frame.len() as f64 / data.len() as f64);
            group.bench_function(format!("encode/{level}"), |b| b.iter(|| encode(black_box(&data), 8, level)));
            let mut out = vec![0u8; decoded_len(&frame).expect("own frame")];
            group.bench_function(format!("decode/{level}"), |b| {
                b.iter(|| decode_into(black_box(&frame), &mut out).expect("own frame"))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = codec
}
criterion_main!(benches);
