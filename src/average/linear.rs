//! mergekit's `linear` merge method, bit for bit: what `mergekit-yaml` (0.1.5,
//! PyTorch on x86-64 CPUs, AVX2 kernels) computes for
//! `merge_method: linear`, so that a recipe gives the same bytes in
//! polymerge as in mergekit.
//!
//! For each tensor mergekit converts every input to the compute dtype `c`
//! (the recipe's `dtype`, else the inputs' promoted dtype), then, in f32
//! (f64 when `c` is F64):
//!
//! ```text
//! acc = 0;  for each input i in recipe order: acc = fma(x_i, w_i, acc)   (Tensor.addcmul_)
//! if normalize: acc = acc / Σw       (Σw of the f32 weights, summed as torch.sum does)
//! out = acc.to(c).to(out_dtype)
//! ```
//!
//! `addcmul_` runs as a fused multiply-add in PyTorch's CPU kernels, so the
//! product is not rounded on its own (unlike polymerge's own average, which
//! follows `sum(w * t.float())`). Σw is `torch.sum` over the weight vector,
//! whose order depends on the vector width; [`torch_sum_f32`] reproduces the
//! AVX2 kernels (8 f32 / 4 f64 lanes), PyTorch's default on x86-64.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::Dtype;

use super::SUB_ELEMS;
use super::chunk::ChunkInputs;
use crate::checkpoint::dtype;
use crate::kernels;

/// The weights of a linear merge in the two accumulation precisions, and
/// the divisor (`None` without `normalize`).
#[derive(Clone, Debug, PartialEq)]
pub struct LinearWeights {
    pub w32: Vec<f32>,
    pub w64: Vec<f64>,
    pub div32: Option<f32>,
    pub div64: Option<f64>,
}

impl LinearWeights {
    /// Weights as mergekit builds them (`torch.tensor(weights,
    /// dtype=float32)`: each Python float rounded to f32), and with
    /// `normalize` their torch sums.
    pub fn new(weights: &[f64], normalize: bool) -> Self {
        let w32: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        let w64 = weights.to_vec();
        Self {
            div32: normalize.then(|| torch_sum_f32(&w32)),
            div64: normalize.then(|| torch_sum_f64(&w64)),
            w32,
            w64,
        }
    }
}

/// `torch.sum` of a contiguous f32 vector on an AVX2 CPU: 8 lanes, each
/// summed by `row_sum` (PyTorch's, below); the tail (beyond whole vectors) then the lanes
/// added in order to 0. Shorter vectors use `row_sum` directly.
pub fn torch_sum_f32(v: &[f32]) -> f32 {
    torch_sum::<f32, 8>(v)
}

/// [`torch_sum_f32`] for f64 (4 lanes).
pub fn torch_sum_f64(v: &[f64]) -> f64 {
    torch_sum::<f64, 4>(v)
}

trait Acc: Copy + Default + std::ops::Add<Output = Self> {}
impl Acc for f32 {}
impl Acc for f64 {}

fn torch_sum<T: Acc, const LANES: usize>(v: &[T]) -> T {
    if v.len() < LANES {
        return row_sum(v.len(), |i| v[i]);
    }
    let whole = v.len() / LANES;
    let mut total = T::default();
    for &x in &v[whole * LANES..] {
        total = total + x;
    }
    for lane in 0..LANES {
        total = total + row_sum(whole, |i| v[i * LANES + lane]);
    }
    total
}

/// PyTorch's `row_sum` (`SumKernel.cpp`): the row read as rows of 4
/// (`ilp_factor`), each column summed by the cascade of
/// [`multi_row_sum`], the leftover elements added to column 0, then columns
/// 1–3 added to column 0.
fn row_sum<T: Acc>(size: usize, at: impl Fn(usize) -> T) -> T {
    const ILP: usize = 4;
    let rows = size / ILP;
    let mut p = [T::default(); ILP];
    for (k, pk) in p.iter_mut().enumerate() {
        *pk = multi_row_sum(rows, |i| at(i * ILP + k));
    }
    for i in rows * ILP..size {
        p[0] = p[0] + at(i);
    }
    p[1..].iter().fold(p[0], |a, &b| a + b)
}

/// PyTorch's `multi_row_sum` for one column: 4 levels of partial sums,
/// level 0 taking `2^level_power` elements before carrying into level 1, and
/// so on (a cascade that bounds the error of long sums).
fn multi_row_sum<T: Acc>(size: usize, at: impl Fn(usize) -> T) -> T {
    const LEVELS: usize = 4;
    let ceil_log2 = if size > 1 {
        usize::BITS - (size - 1).leading_zeros()
    } else {
        0
    } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [T::default(); LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            acc[0] = acc[0] + at(i);
            i += 1;
        }
        for j in 1..LEVELS {
            acc[j] = acc[j] + acc[j - 1];
            acc[j - 1] = T::default();
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        acc[0] = acc[0] + at(i);
        i += 1;
    }
    acc[1..].iter().fold(acc[0], |a, &b| a + b)
}

/// An f32 rounded to `dtype` and back (`Tensor.to(dtype)` of a float value;
/// identity for F32 and F64).
#[inline]
fn round_to(dtype: Dtype, x: f32) -> f32 {
    match dtype {
        Dtype::BF16 => bf16::from_f32(x).to_f32(),
        Dtype::F16 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

#[derive(Default)]
struct Scratch {
    acc32: Vec<f32>,
    x32: Vec<f32>,
    acc64: Vec<f64>,
    x64: Vec<f64>,
    bytes: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// mergekit's linear merge of output elements `range` into `out` (as
/// `out_dtype`), computing in `compute`; returns the NaN/Inf count of each
/// input over the range.
pub(super) fn linear_chunk<I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &LinearWeights,
    compute: Dtype,
    out_dtype: Dtype,
    range: Range<usize>,
    out: &mut [u8],
) -> Vec<u64> {
    let out_elem = dtype::size_of(out_dtype);
    let counts: Vec<AtomicU64> = (0..sources.len()).map(|_| AtomicU64::new(0)).collect();
    out.par_chunks_mut(SUB_ELEMS * out_elem)
        .enumerate()
        .for_each(|(k, out_block)| {
            SCRATCH.with_borrow_mut(|s| {
                let n = out_block.len() / out_elem;
                let piece = range.start + k * SUB_ELEMS..range.start + k * SUB_ELEMS + n;
                let bad = if compute == Dtype::F64 {
                    block_f64(sources, weights, piece, s, out_dtype, out_block)
                } else {
                    block_f32(sources, weights, compute, piece, s, out_dtype, out_block)
                };
                for (c, b) in counts.iter().zip(bad) {
                    if b != 0 {
                        c.fetch_add(b, Ordering::Relaxed);
                    }
                }
            })
        });
    counts.into_iter().map(AtomicU64::into_inner).collect()
}

fn block_f32<I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &LinearWeights,
    compute: Dtype,
    piece: Range<usize>,
    s: &mut Scratch,
    out_dtype: Dtype,
    out: &mut [u8],
) -> Vec<u64> {
    let n = piece.len();
    s.acc32.clear();
    s.acc32.resize(n, 0.0);
    s.x32.resize(n, 0.0);
    let mut bad = vec![0u64; sources.len()];
    for (i, &w) in weights.w32.iter().enumerate() {
        let bytes = sources.fetch(i, piece.clone(), &mut s.bytes);
        kernels::decode_f32(sources.dtype(i), bytes, &mut s.x32);
        let convert = sources.dtype(i) != compute;
        for (a, &x) in s.acc32.iter_mut().zip(&s.x32) {
            bad[i] += u64::from(!x.is_finite());
            let x = if convert { round_to(compute, x) } else { x };
            *a = x.mul_add(w, *a);
        }
    }
    if let Some(d) = weights.div32 {
        for a in s.acc32.iter_mut() {
            *a /= d;
        }
    }
    if out_dtype != compute {
        for a in s.acc32.iter_mut() {
            *a = round_to(compute, *a);
        }
    }
    kernels::encode_f32(out_dtype, &s.acc32, out);
    bad
}

fn block_f64<I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &LinearWeights,
    piece: Range<usize>,
    s: &mut Scratch,
    out_dtype: Dtype,
    out: &mut [u8],
) -> Vec<u64> {
    let n = piece.len();
    s.acc64.clear();
    s.acc64.resize(n, 0.0);
    s.x64.resize(n, 0.0);
    let mut bad = vec![0u64; sources.len()];
    for (i, &w) in weights.w64.iter().enumerate() {
        let bytes = sources.fetch(i, piece.clone(), &mut s.bytes);
        kernels::decode_f64(sources.dtype(i), bytes, &mut s.x64);
        for (a, &x) in s.acc64.iter_mut().zip(&s.x64) {
            bad[i] += u64::from(!x.is_finite());
            *a = x.mul_add(w, *a);
        }
    }
    if let Some(d) = weights.div64 {
        for a in s.acc64.iter_mut() {
            *a /= d;
        }
    }
    kernels::encode_f64(out_dtype, &s.acc64, out);
    bad
}
