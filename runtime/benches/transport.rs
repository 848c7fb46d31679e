//! In-process collective bandwidth against plain memcpy of the same buffers: a ring all-reduce
//! of 16 MiB per rank over 4 rank threads, and each rank copying its 16 MiB twice (what a ring
//! all-reduce moves per rank, 2 (n - 1) / n of the buffer, rounded up), side by side.
//!
//! `cargo bench -p hetpar-runtime --bench transport`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use hetpar_runtime::transport::fabric;

const RANKS: usize = 4;
const LEN: usize = 4 << 20; // 4 Mi floats = 16 MiB

fn all_reduce() {
    let endpoints = fabric(RANKS, Duration::from_secs(60));
    std::thread::scope(|s| {
        for mut e in endpoints {
            s.spawn(move || {
                let mut buf = vec![1.0f32; LEN];
                e.all_reduce_sum(&[0, 1, 2, 3], 1, &mut buf)
                    .expect("all-reduce");
                std::hint::black_box(buf);
            });
        }
    });
}

fn memcpy() {
    std::thread::scope(|s| {
        for _ in 0..RANKS {
            s.spawn(|| {
                let src = vec![1.0f32; LEN];
                let mut dst = vec![0.0f32; LEN];
                for _ in 0..2 {
                    dst.copy_from_slice(&src);
                    std::hint::black_box(&mut dst);
                }
            });
        }
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport_16MiB_4_ranks");
    g.sample_size(10);
    g.bench_function("ring_all_reduce", |b| b.iter(all_reduce));
    g.bench_function("memcpy_same_bytes", |b| b.iter(memcpy));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
