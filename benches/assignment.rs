//! Criterion benchmarks of `polymerge::assignment::maximize`.
//!
//! Matrices (fixed seeds):
//! * `uniform`: scores ~ U[0, 1);
//! * `similarity`: S = A Bᵀ with A ~ N(0, 1)^(n×128) and B a row-permuted
//!   noisy copy of A (noise 0.5): strongly diagonal after un-permuting;
//! * `ties`: uniform with 10% of the rows all zero (dead units);
//! * `warm` / `warm-cold`: a uniform matrix perturbed by (0.1/n)·U[-1, 1),
//!   solved with / without the optimal permutation of the unperturbed
//!   matrix as warm-start hint.
//!
//! Sizes 256, 1024 and 2048; set `LAP_BENCH_LARGE=1` to add 4096. Run with
//! `cargo bench --bench assignment` (a filter such as `-- warm` narrows it).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ndarray::Array2;
use polymerge::assignment::maximize;
use std::hint::black_box;
use std::time::Duration;

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
        p
    }
}

fn uniform(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = Rng(seed);
    (0..n * n).map(|_| rng.uniform()).collect()
}

fn similarity(n: usize, seed: u64) -> Vec<f64> {
    let d = 128;
    let mut rng = Rng(seed);
    let a = Array2::from_shape_fn((n, d), |_| rng.normal());
    let pi = rng.permutation(n);
    let b = Array2::from_shape_fn((n, d), |(j, k)| a[[pi[j], k]] + 0.5 * rng.normal());
    a.dot(&b.t()).iter().copied().collect()
}

fn ties(n: usize, seed: u64) -> Vec<f64> {
    let mut s = uniform(n, seed);
    for &i in &Rng(seed + 1).permutation(n)[..n / 10] {
        s[i * n..(i + 1) * n].fill(0.0);
    }
    s
}

/// A perturbed uniform matrix and the optimal permutation before the
/// perturbation.
fn perturbed(n: usize, seed: u64) -> (Vec<f64>, Vec<usize>) {
    let s = uniform(n, seed);
    let hint = maximize(&s, n, None, "bench").unwrap().perm;
    let mut rng = Rng(seed + 2);
    let eps = 0.1 / n as f64;
    let s = s
        .iter()
        .map(|&x| x + eps * (2.0 * rng.uniform() - 1.0))
        .collect();
    (s, hint)
}

fn bench(c: &mut Criterion) {
    let mut sizes = vec![256, 1024, 2048];
    if std::env::var_os("LAP_BENCH_LARGE").is_some() {
        sizes.push(4096);
    }
    let mut group = c.benchmark_group("assignment");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &n in &sizes {
        group.sample_size(if n <= 256 { 50 } else { 10 });
        for (name, s) in [
            ("uniform", uniform(n, 1)),
            ("similarity", similarity(n, 2)),
            ("ties", ties(n, 3)),
        ] {
            group.bench_with_input(BenchmarkId::new(name, n), &s, |b, s| {
                b.iter(|| maximize(black_box(s), n, None, "bench").unwrap())
            });
        }
        let (s, hint) = perturbed(n, 4);
        group.bench_with_input(BenchmarkId::new("warm", n), &s, |b, s| {
            b.iter(|| maximize(black_box(s), n, Some(&hint), "bench").unwrap())
        });
        group.bench_with_input(BenchmarkId::new("warm-cold", n), &s, |b, s| {
            b.iter(|| maximize(black_box(s), n, None, "bench").unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
