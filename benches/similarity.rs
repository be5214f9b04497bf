//! The similarity GEMMs of weight matching, in GFLOP/s: one member's
//! `A_u · B_uᵀ` through [`similarity::accumulate_f32`] (the product polymerge
//! runs, with its layout handling) on the shapes of the 64-2048×4-10 MLP
//! benchmark pair and of the 0.49 B LLaMA pair (`scripts/bench_align.py`,
//! `scripts/bench_align_llama.sh`). `2·n·n·L` flops per product.
//!
//! ```sh
//! cargo bench --bench similarity              # a table
//! cargo bench --bench similarity -- --json    # one JSON line per shape
//! python3 scripts/bench_gemm.py               # side by side with numpy
//! ```
//!
//! Each shape runs `--rounds` rounds (default 5) after one warm-up, and the
//! best round is reported (the least disturbed on a shared machine).

use std::hint::black_box;
use std::time::Instant;

use polymerge::similarity;
use polymerge::spec::AxisMember;

/// A similarity GEMM: group size `n`, a member tensor of `shape` whose units
/// lie on `axis` (so `L = numel / n` is the reduction length).
struct Shape {
    name: &'static str,
    n: usize,
    shape: [usize; 2],
    axis: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "mlp fc1 rows (64 inputs)",
        n: 2048,
        shape: [2048, 64],
        axis: 0,
    },
    Shape {
        name: "mlp hidden rows",
        n: 2048,
        shape: [2048, 2048],
        axis: 0,
    },
    Shape {
        name: "mlp hidden columns",
        n: 2048,
        shape: [2048, 2048],
        axis: 1,
    },
    Shape {
        name: "llama embed chunk columns",
        n: 2048,
        shape: [512, 2048],
        axis: 1,
    },
    Shape {
        name: "llama gate columns (residual)",
        n: 2048,
        shape: [5632, 2048],
        axis: 1,
    },
    Shape {
        name: "llama down rows (residual)",
        n: 2048,
        shape: [2048, 5632],
        axis: 0,
    },
    Shape {
        name: "llama gate rows (ffn)",
        n: 5632,
        shape: [5632, 2048],
        axis: 0,
    },
    Shape {
        name: "llama down columns (ffn)",
        n: 5632,
        shape: [2048, 5632],
        axis: 1,
    },
];

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * 0.1
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or(5, |v| v.parse().expect("--rounds N"));
    if !json {
        println!("| shape | n | member | L | GFLOP/s |");
        println!("|---|---:|---|---:|---:|");
    }
    for s in SHAPES {
        let numel = s.shape[0] * s.shape[1];
        let (a, b) = (values(numel, 7), values(numel, 11));
        let m = AxisMember::plain("t", s.axis);
        let mut acc = vec![0f32; s.n * s.n];
        let flops = 2.0 * (s.n * s.n) as f64 * (numel / s.n) as f64;
        let mut best = f64::INFINITY;
        for r in 0..=rounds {
            let t0 = Instant::now();
            similarity::accumulate_f32(&mut acc, &a, &b, &s.shape, &m, s.n);
            black_box(&acc);
            if r > 0 {
                best = best.min(t0.elapsed().as_secs_f64());
            }
        }
        let gflops = flops / best / 1e9;
        let l = numel / s.n;
        if json {
            println!(
                "{{\"name\": \"{}\", \"n\": {}, \"shape\": [{}, {}], \"axis\": {}, \"gflops\": {gflops:.2}}}",
                s.name, s.n, s.shape[0], s.shape[1], s.axis
            );
        } else {
            println!(
                "| {} | {} | {:?} axis {} | {l} | {gflops:.1} |",
                s.name, s.n, s.shape, s.axis
            );
        }
    }
}
