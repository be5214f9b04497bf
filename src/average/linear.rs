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
use crate::checkpoint::dtype;
use crate::checkpoint::stream::ChunkInputs;
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

/// An accumulation type of the linear merge: f32, or f64 when the compute
/// dtype is F64 (mergekit's two paths); what [`torch_sum`] and [`block`]
/// need of it.
trait Acc: Copy + Default + std::ops::Add<Output = Self> {
    fn decode(dtype: Dtype, bytes: &[u8], out: &mut [Self]);
    fn encode(dtype: Dtype, values: &[Self], out: &mut [u8]);
    /// `x` rounded to `dtype` and back (`Tensor.to(dtype)`).
    fn round(dtype: Dtype, x: Self) -> Self;
    fn is_finite(self) -> bool;
    fn mul_add(self, w: Self, a: Self) -> Self;
    fn div(self, d: Self) -> Self;
    /// The weights and divisor in this precision.
    fn weights(w: &LinearWeights) -> (&[Self], Option<Self>);
    /// The accumulator and decode buffers of a thread's scratch.
    fn buffers(s: &mut Scratch) -> (&mut Vec<Self>, &mut Vec<Self>, &mut Vec<u8>);
}

impl Acc for f32 {
    fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
        kernels::decode_f32(dtype, bytes, out);
    }
    fn encode(dtype: Dtype, values: &[f32], out: &mut [u8]) {
        kernels::encode_f32(dtype, values, out);
    }
    fn round(dtype: Dtype, x: f32) -> f32 {
        round_to(dtype, x)
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    fn mul_add(self, w: f32, a: f32) -> f32 {
        f32::mul_add(self, w, a)
    }
    fn div(self, d: f32) -> f32 {
        self / d
    }
    fn weights(w: &LinearWeights) -> (&[f32], Option<f32>) {
        (&w.w32, w.div32)
    }
    fn buffers(s: &mut Scratch) -> (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<u8>) {
        (&mut s.acc32, &mut s.x32, &mut s.bytes)
    }
}

impl Acc for f64 {
    fn decode(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
        kernels::decode_f64(dtype, bytes, out);
    }
    fn encode(dtype: Dtype, values: &[f64], out: &mut [u8]) {
        kernels::encode_f64(dtype, values, out);
    }
    /// The identity: f64 accumulates only when the compute dtype is F64.
    fn round(_: Dtype, x: f64) -> f64 {
        x
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    fn mul_add(self, w: f64, a: f64) -> f64 {
        f64::mul_add(self, w, a)
    }
    fn div(self, d: f64) -> f64 {
        self / d
    }
    fn weights(w: &LinearWeights) -> (&[f64], Option<f64>) {
        (&w.w64, w.div64)
    }
    fn buffers(s: &mut Scratch) -> (&mut Vec<f64>, &mut Vec<f64>, &mut Vec<u8>) {
        (&mut s.acc64, &mut s.x64, &mut s.bytes)
    }
}

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
    let counts: Vec<AtomicU64> = (0..sources.count()).map(|_| AtomicU64::new(0)).collect();
    out.par_chunks_mut(SUB_ELEMS * out_elem)
        .enumerate()
        .for_each(|(k, out_block)| {
            SCRATCH.with_borrow_mut(|s| {
                let n = out_block.len() / out_elem;
                let piece = range.start + k * SUB_ELEMS..range.start + k * SUB_ELEMS + n;
                let bad = if compute == Dtype::F64 {
                    block::<f64, I>(sources, weights, compute, piece, s, out_dtype, out_block)
                } else {
                    block::<f32, I>(sources, weights, compute, piece, s, out_dtype, out_block)
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

/// One block of output elements `piece`: every input decoded, converted to
/// the compute dtype, fused-multiply-added with its weight in input order,
/// divided by the weights' sum (`normalize`), rounded to the compute dtype
/// when the output's differs, encoded; the NaN/Inf count of each input.
fn block<T: Acc, I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &LinearWeights,
    compute: Dtype,
    piece: Range<usize>,
    s: &mut Scratch,
    out_dtype: Dtype,
    out: &mut [u8],
) -> Vec<u64> {
    let n = piece.len();
    let (w, div) = T::weights(weights);
    let (acc, x, bytes) = T::buffers(s);
    acc.clear();
    acc.resize(n, T::default());
    x.resize(n, T::default());
    let mut bad = vec![0u64; sources.count()];
    for (i, &wi) in w.iter().enumerate() {
        let raw = sources.fetch(i, piece.clone(), bytes);
        T::decode(sources.dtype(i), raw, x);
        let convert = sources.dtype(i) != compute;
        for (a, &v) in acc.iter_mut().zip(x.iter()) {
            bad[i] += u64::from(!v.is_finite());
            let v = if convert { T::round(compute, v) } else { v };
            *a = v.mul_add(wi, *a);
        }
    }
    if let Some(d) = div {
        for a in acc.iter_mut() {
            *a = a.div(d);
        }
    }
    if out_dtype != compute {
        for a in acc.iter_mut() {
            *a = T::round(compute, *a);
        }
    }
    T::encode(out_dtype, acc, out);
    bad
}
