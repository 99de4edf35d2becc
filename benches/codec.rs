//! Encode and decode throughput of the buffer codec, per compression level, on 16 MiB of
//! market-like data. Run with `cargo bench --bench codec`; it prints each frame's ratio (frame
//! bytes / raw bytes) before the timings, which criterion reports in GiB/s of raw bytes.

use std::hint::black_box;
use std::time::Duration;

use afml_cache::codec::samples::{prices, random, volumes};
use afml_cache::codec::{decode_into, decoded_len, encode, Compression};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const LEN: usize = 16 << 20;

fn codec(c: &mut Criterion) {
    for (name, data) in
        [("prices_f64", prices(LEN / 8, 1)), ("volumes_i64", volumes(LEN / 8, 2)), ("random", random(LEN, 3))]
    {
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
