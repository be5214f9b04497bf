//! Kernels of `polymerge avg`, in elements per second. The single-kernel
//! groups work on [`K`] elements (cache-resident, as in a merge, which folds
//! inputs into a few KiB of accumulators at a time), so they measure
//! compute, not memory bandwidth:
//!
//! * `decode/{bf16,f16,f32}`: element bytes → f32 ([`kernels::decode_f32`]);
//! * `encode/{bf16,f16}`: f32 → element bytes, round to nearest even
//!   ([`kernels::encode_f32`]);
//! * `accumulate/{bf16,f16,f32}`: the fused decode + `acc += w·x` loop
//!   ([`kernels::accumulate_f32`]);
//! * `divide_encode/bf16/{2,3}`: the fused `acc / Σw` + encode of the last
//!   step ([`kernels::divide_encode_f32`]; 2 is done as an exact multiply);
//! * `average/{2,8}x{bf16,f32}`: a full in-memory chunk average of 2 and 8
//!   inputs (1 Mi elements each, the streaming chunk size) on the rayon
//!   pool ([`average::average_slices_f32`]).
//!
//! Run with `cargo bench --bench average` (add `-- average/` to filter). The
//! measurement time is short by default (1 s); pass `--measurement-time 5`
//! for steadier numbers on a busy machine.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use polymerge::average::{self, CHUNK_ELEMS};
use polymerge::checkpoint::dtype;
use polymerge::kernels;
use safetensors::Dtype;

/// Deterministic, finite values of weight-like magnitude.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9) | 1;
    (0..n)
        .map(|_| {
            // xorshift32 → uniform in [-0.25, 0.25)
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * 0.5
        })
        .collect()
}

fn encoded(dt: Dtype, v: &[f32]) -> Vec<u8> {
    let mut b = vec![0u8; v.len() * dtype::size_of(dt)];
    kernels::encode_f32(dt, v, &mut b);
    b
}

/// Elements per single-kernel call.
const K: usize = 4096;
/// Elements per chunk average: one streaming chunk.
const N: usize = CHUNK_ELEMS;

fn kernels(c: &mut Criterion) {
    let v = values(K, 1);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(K as u64));
    for dt in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        let bytes = encoded(dt, &v);
        let mut out = vec![0f32; K];
        g.bench_function(name(dt), |b| {
            b.iter(|| kernels::decode_f32(dt, black_box(&bytes), &mut out))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(K as u64));
    for dt in [Dtype::BF16, Dtype::F16] {
        let mut out = vec![0u8; K * dtype::size_of(dt)];
        g.bench_function(name(dt), |b| {
            b.iter(|| kernels::encode_f32(dt, black_box(&v), &mut out))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("accumulate");
    g.throughput(Throughput::Elements(K as u64));
    for dt in [Dtype::BF16, Dtype::F16, Dtype::F32] {
        let bytes = encoded(dt, &v);
        let mut acc = vec![0f32; K];
        g.bench_function(name(dt), |b| {
            b.iter(|| kernels::accumulate_f32(dt, black_box(&bytes), 0.5, &mut acc, false))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("divide_encode");
    g.throughput(Throughput::Elements(K as u64));
    for div in [2.0f32, 3.0] {
        let mut out = vec![0u8; K * 2];
        g.bench_function(format!("bf16/{div}"), |b| {
            b.iter(|| kernels::divide_encode_f32(black_box(&v), div, Dtype::BF16, &mut out))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("average");
    g.throughput(Throughput::Elements(N as u64));
    for k in [2usize, 8] {
        for dt in [Dtype::BF16, Dtype::F32] {
            let inputs: Vec<Vec<u8>> = (0..k)
                .map(|i| encoded(dt, &values(N, i as u32 + 7)))
                .collect();
            let views: Vec<(Dtype, &[u8])> = inputs.iter().map(|b| (dt, b.as_slice())).collect();
            let weights = vec![1.0f32; k];
            let mut out = vec![0u8; N * dtype::size_of(dt)];
            g.bench_function(format!("{k}x{}", name(dt)), |b| {
                b.iter(|| {
                    average::average_slices_f32(black_box(&views), &weights, k as f32, dt, &mut out)
                })
            });
        }
    }
    g.finish();
}

fn name(dt: Dtype) -> &'static str {
    match dt {
        Dtype::BF16 => "bf16",
        Dtype::F16 => "f16",
        Dtype::F32 => "f32",
        _ => "other",
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = kernels
}
criterion_main!(benches);
