//! Averaging one chunk of output elements on the rayon pool: work items of
//! [`SUB_ELEMS`] elements, each folding every input in turn into
//! cache-resident accumulators with the fused kernels of [`crate::kernels`].

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use safetensors::Dtype;

use super::SUB_ELEMS;
use crate::basin::PairSums;
use crate::checkpoint::dtype;
use crate::checkpoint::stream::ChunkInputs;
use crate::kernels;

impl ChunkInputs for [(Dtype, &[u8])] {
    fn count(&self) -> usize {
        <[(Dtype, &[u8])]>::len(self)
    }
    fn dtype(&self, i: usize) -> Dtype {
        self[i].0
    }
    fn fetch<'s>(&'s self, i: usize, range: Range<usize>, _: &'s mut Vec<u8>) -> &'s [u8] {
        let (dtype, bytes) = self[i];
        let w = dtype::size_of(dtype);
        &bytes[range.start * w..range.end * w]
    }
}

/// Per-thread scratch space for one sub-block, kept for the life of the
/// thread (rayon's pool threads live as long as the process), so averaging
/// allocates nothing per chunk. Borrowed only while one sub-block is computed,
/// which makes no rayon calls (so no other work item can run on the thread
/// meanwhile and borrow it again).
#[derive(Default)]
struct Scratch {
    acc32: Vec<f32>,
    acc64: Vec<f64>,
    x64: Vec<f64>,
    bytes: Vec<u8>,
    /// One work item of each input the basin sums use, decoded to f32.
    decoded: Vec<Vec<f32>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// NaN/Inf counts per input, added to only when non-zero (rarely).
fn new_counts(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

fn into_counts(c: Vec<AtomicU64>) -> Vec<u64> {
    c.into_iter().map(AtomicU64::into_inner).collect()
}

/// Weighted average of whole in-memory inputs, each given as its dtype and
/// little-endian element bytes (any alignment), into `out` (as many elements
/// of `out_dtype`), with f32 arithmetic: `out = encode(Σ wᵢ·xᵢ / divisor)`,
/// bit for bit what [`super::run`] computes for each tensor (pass
/// `divisor = f32(Σwᵢ)` with Σwᵢ summed in f64). Returns the NaN/Inf count of
/// each input. Work is split over the rayon pool as in [`super::run`]; this is the
/// kernel the `average` benchmark measures.
///
/// Panics if an input is shorter than `out`, or a dtype is not a float dtype.
pub fn average_slices_f32(
    inputs: &[(Dtype, &[u8])],
    weights: &[f32],
    divisor: f32,
    out_dtype: Dtype,
    out: &mut [u8],
) -> Vec<u64> {
    let n = out.len() / dtype::size_of(out_dtype);
    for &(d, b) in inputs {
        assert!(
            b.len() >= n * dtype::size_of(d),
            "input shorter than output"
        );
    }
    average_chunk_f32(inputs, weights, divisor, out_dtype, 0..n, out, &[]).counts
}

/// What [`average_chunk_f32`] returns besides the output bytes.
pub(super) struct SummedChunk {
    /// NaN/Inf count of each input over the range.
    pub counts: Vec<u64>,
    /// The basin sums of each pair, one list per work item of
    /// [`SUB_ELEMS`] elements, in range order.
    pub sums: Vec<Vec<PairSums>>,
    /// Time the work items spent summing, over all threads, divided by the
    /// pool's threads: about the wall time the sums took the pool.
    pub busy: Duration,
}

/// Averages output elements `range` into `out` with f32 arithmetic, and
/// takes the basin check's [`PairSums`] of `pairs` (indices into
/// `sources`; none for a merge without the check) from the same reads.
///
/// Each work item of [`SUB_ELEMS`] elements folds one input after the
/// other into its accumulators (64 KiB of f32, resident in L2), fetching
/// each input's bytes once: one `pread` per input and work item where the
/// inputs are read rather than mapped, into a buffer that is still in
/// cache when it is summed. An input no pair
/// uses is accumulated straight from its bytes ([`kernels::accumulate_f32`]);
/// an input a pair uses is decoded once per work item into f32 with the
/// decoder that kernel runs ([`kernels::decode_f32`]), summed, and
/// accumulated from those values ([`kernels::accumulate_values_f32`]). So
/// the output bytes and NaN/Inf counts are the same with or without pairs,
/// and the sums are bit for bit those of decoding the inputs again and
/// summing each work item with [`PairSums::of`], with one read and one
/// decode of the inputs instead of two.
pub(super) fn average_chunk_f32<I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &[f32],
    divisor: f32,
    out_dtype: Dtype,
    range: Range<usize>,
    out: &mut [u8],
    pairs: &[(usize, usize)],
) -> SummedChunk {
    let out_elem = dtype::size_of(out_dtype);
    let counts = new_counts(sources.count());
    let used: Vec<bool> = (0..sources.count())
        .map(|i| pairs.iter().any(|&(a, b)| a == i || b == i))
        .collect();
    let busy = AtomicU64::new(0);
    let sums = out
        .par_chunks_mut(SUB_ELEMS * out_elem)
        .enumerate()
        .map(|(k, out_block)| {
            SCRATCH.with_borrow_mut(|s| {
                let Scratch {
                    acc32,
                    bytes,
                    decoded,
                    ..
                } = s;
                let n = out_block.len() / out_elem;
                let lo = range.start + k * SUB_ELEMS;
                decoded.resize_with(sources.count(), Vec::new);
                for (i, values) in decoded.iter_mut().enumerate().filter(|(i, _)| used[*i]) {
                    // Every value is overwritten: no need to clear.
                    if values.len() < n {
                        values.resize(n, 0.0);
                    }
                    let b = sources.fetch(i, lo..lo + n, bytes);
                    kernels::decode_f32(sources.dtype(i), b, &mut values[..n]);
                }
                let sums: Vec<PairSums> = if pairs.is_empty() {
                    Vec::new()
                } else {
                    let t0 = Instant::now();
                    let sums = pairs
                        .iter()
                        .map(|&(i, j)| PairSums::of(&decoded[i][..n], &decoded[j][..n]))
                        .collect();
                    busy.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    sums
                };
                // Input by input over the whole work item: each input's
                // bytes are fetched once (one `pread` where the input is
                // read, not mapped) and folded into the item's accumulators
                // (16 Ki f32, 64 KiB: they stay in L2 from input to input).
                // Each element still sums its inputs in input order.
                if acc32.len() < n {
                    acc32.resize(n, 0.0);
                }
                let acc = &mut acc32[..n];
                for (i, &w) in weights.iter().enumerate() {
                    // The first term overwrites acc (Python's `0 + w·x`).
                    let bad = if used[i] {
                        kernels::accumulate_values_f32(&decoded[i][..n], w, acc, i == 0)
                    } else {
                        let b = sources.fetch(i, lo..lo + n, bytes);
                        kernels::accumulate_f32(sources.dtype(i), b, w, acc, i == 0)
                    };
                    if bad != 0 {
                        counts[i].fetch_add(bad, Ordering::Relaxed);
                    }
                }
                kernels::divide_encode_f32(acc, divisor, out_dtype, out_block);
                sums
            })
        })
        .collect();
    SummedChunk {
        counts: into_counts(counts),
        sums,
        busy: Duration::from_nanos(busy.into_inner() / rayon::current_num_threads().max(1) as u64),
    }
}

/// As [`average_chunk_f32`] with f64 arithmetic.
pub(super) fn average_chunk_f64<I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &[f64],
    divisor: f64,
    out_dtype: Dtype,
    range: Range<usize>,
    out: &mut [u8],
) -> Vec<u64> {
    let out_elem = dtype::size_of(out_dtype);
    let counts = new_counts(sources.count());
    out.par_chunks_mut(SUB_ELEMS * out_elem)
        .enumerate()
        .for_each(|(k, out_block)| {
            SCRATCH.with_borrow_mut(|s| {
                let n = out_block.len() / out_elem;
                let lo = range.start + k * SUB_ELEMS;
                s.acc64.clear();
                s.acc64.resize(n, 0.0);
                s.x64.resize(n, 0.0);
                for (i, &w) in weights.iter().enumerate() {
                    let bytes = sources.fetch(i, lo..lo + n, &mut s.bytes);
                    kernels::decode_f64(sources.dtype(i), bytes, &mut s.x64);
                    let mut bad = 0u64;
                    for (a, &x) in s.acc64.iter_mut().zip(&s.x64) {
                        bad += u64::from(!x.is_finite());
                        *a += w * x;
                    }
                    if bad != 0 {
                        counts[i].fetch_add(bad, Ordering::Relaxed);
                    }
                }
                for a in s.acc64.iter_mut() {
                    *a /= divisor;
                }
                kernels::encode_f64(out_dtype, &s.acc64, out_block);
            })
        });
    into_counts(counts)
}
