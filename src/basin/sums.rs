//! The f64 sums of a pair of tensors ([`PairSums`]) and the streaming pass
//! that computes them for every float tensor of the inputs ([`stream_sums`]).

use std::cell::RefCell;
use std::ops::Range;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint::dtype;
use crate::checkpoint::stream::{Chunk, ChunkInputs, Chunks, MergeInput, SUB_ELEMS, TensorSource};
use crate::error::{MismatchError, Result, UsageError};
use crate::kernels::{self, SUM_LANES};
use crate::observe::{Event, Observer, Phase};

/// f64 sums over one tensor of a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PairSums {
    /// Elements summed (non-finite pairs are left out and counted apart).
    pub numel: u64,
    pub dot: f64,
    pub sq_a: f64,
    pub sq_b: f64,
    /// `Σ (a−b)²`, summed directly (no cancellation for near-equal tensors).
    pub sq_diff: f64,
    /// Element pairs with a NaN or ±Inf on either side.
    pub nonfinite: u64,
}

impl PairSums {
    /// Sums over two equally long slices. The whole [`SUM_LANES`] of
    /// elements are summed in that many independent f64 lanes by the
    /// vectorised [`kernels::lane_sums`], so the basin check stays
    /// memory-bound; the lanes are added at the end (this reassociation
    /// changes only the last bits of the sums). When the lane sums are not
    /// finite, some element is NaN/Inf: the slices then take the
    /// element-by-element path that leaves the non-finite pairs out.
    pub fn of(a: &[f32], b: &[f32]) -> Self {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let [dot, sq_a, sq_b, sq_diff] = kernels::lane_sums(a, b);
        if !(dot.is_finite() && sq_a.is_finite() && sq_b.is_finite() && sq_diff.is_finite()) {
            return Self::of_checked(a, b);
        }
        let whole = n / SUM_LANES * SUM_LANES;
        let mut s = Self::of_checked(&a[whole..], &b[whole..]);
        if s.nonfinite > 0 {
            return Self::of_checked(a, b);
        }
        s.dot += dot;
        s.sq_a += sq_a;
        s.sq_b += sq_b;
        s.sq_diff += sq_diff;
        s.numel = n as u64;
        s
    }

    /// Element-by-element sums, leaving out pairs with a NaN/Inf.
    pub(crate) fn of_checked(a: &[f32], b: &[f32]) -> Self {
        let mut s = PairSums::default();
        for (&x, &y) in a.iter().zip(b) {
            if !(x.is_finite() && y.is_finite()) {
                s.nonfinite += 1;
                continue;
            }
            let (x, y) = (x as f64, y as f64);
            s.dot += x * y;
            s.sq_a += x * x;
            s.sq_b += y * y;
            s.sq_diff += (x - y) * (x - y);
        }
        s.numel = (a.len().min(b.len()) as u64) - s.nonfinite;
        s
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &PairSums) {
        self.numel += o.numel;
        self.dot += o.dot;
        self.sq_a += o.sq_a;
        self.sq_b += o.sq_b;
        self.sq_diff += o.sq_diff;
        self.nonfinite += o.nonfinite;
    }

    pub fn norm_a(&self) -> f64 {
        self.sq_a.sqrt()
    }

    pub fn norm_b(&self) -> f64 {
        self.sq_b.sqrt()
    }

    /// `⟨A,B⟩ / (‖A‖‖B‖)`; `None` when either side is all zeros.
    pub fn cos(&self) -> Option<f64> {
        let d = self.norm_a() * self.norm_b();
        (d > 0.0).then(|| (self.dot / d).clamp(-1.0, 1.0))
    }

    /// `‖A−B‖ / ((‖A‖+‖B‖)/2)`; `None` when both sides are all zeros.
    pub fn rel_distance(&self) -> Option<f64> {
        let m = (self.norm_a() + self.norm_b()) / 2.0;
        (m > 0.0).then(|| self.sq_diff.sqrt() / m)
    }

    /// `‖(A+B)/2‖ / ((‖A‖+‖B‖)/2)`; `None` when both sides are all zeros.
    pub fn midpoint_ratio(&self) -> Option<f64> {
        let m = (self.norm_a() + self.norm_b()) / 2.0;
        let mid = ((self.sq_a + self.sq_b + 2.0 * self.dot).max(0.0) / 4.0).sqrt();
        (m > 0.0).then(|| mid / m)
    }

    /// `‖B‖ / ‖A‖`; `None` when A is all zeros.
    pub fn norm_ratio(&self) -> Option<f64> {
        (self.sq_a > 0.0).then(|| self.norm_b() / self.norm_a())
    }
}

thread_local! {
    /// Per-thread decode buffers of [`PairSumsSink`]: one f32 buffer per
    /// input taking part and a byte scratch, kept for the life of the thread
    /// (borrowed only while one work item decodes and sums, which makes no
    /// rayon calls).
    static DECODED: RefCell<(Vec<Vec<f32>>, Vec<u8>)> = RefCell::new(Default::default());
}

/// The sums of one pair for every tensor of a pass: `(name, shape, sums)`.
pub type TensorSums = Vec<(String, Vec<usize>, PairSums)>;

/// Accumulates the [`PairSums`] of pairs `(i, j)` of a pass's sources,
/// chunk by chunk, so the sums can be taken from any pass: the basin
/// check's own ([`stream_sums`]), or the merge's, which either hands it its
/// chunks ([`Self::chunk`]) or, averaging in f32, takes the sums from the
/// values it decodes anyway and hands over those ([`Self::add_parts`]).
///
/// Each chunk is split into work items of [`SUB_ELEMS`] elements (chunks are
/// whole multiples of it) whose sums are added in order, so the result does
/// not depend on the chunk size of the pass.
pub struct PairSumsSink {
    pairs: Vec<(usize, usize)>,
    /// Sources the pairs use, sorted.
    used: Vec<usize>,
    tensor: Option<(String, Vec<usize>)>,
    current: Vec<PairSums>,
    out: Vec<TensorSums>,
    /// Time spent summing.
    busy: Duration,
}

impl PairSumsSink {
    /// Sums for `pairs` of source indices.
    pub fn new(pairs: &[(usize, usize)]) -> Self {
        let mut used: Vec<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
        used.sort_unstable();
        used.dedup();
        Self {
            pairs: pairs.to_vec(),
            used,
            tensor: None,
            current: vec![PairSums::default(); pairs.len()],
            out: vec![Vec::new(); pairs.len()],
            busy: Duration::ZERO,
        }
    }

    /// The pairs summed.
    pub fn pairs(&self) -> &[(usize, usize)] {
        &self.pairs
    }

    /// Seconds spent summing so far.
    pub fn seconds(&self) -> f64 {
        self.busy.as_secs_f64()
    }

    /// The sums of every tensor, one list per pair.
    pub fn into_sums(self) -> Vec<TensorSums> {
        self.out
    }

    /// Float tensor `name` of `shape` starts.
    pub fn begin(&mut self, name: &str, shape: &[usize]) {
        self.tensor = Some((name.to_string(), shape.to_vec()));
        self.current = vec![PairSums::default(); self.pairs.len()];
    }

    /// A chunk of the current tensor, from every input of the pass (in
    /// input order): decoded and summed here.
    pub fn chunk(&mut self, chunk: &Chunk) {
        let t0 = Instant::now();
        let range = chunk.range();
        let slot = |i: usize| self.used.iter().position(|&u| u == i).expect("used input");
        let subs: Vec<Range<usize>> = range
            .clone()
            .step_by(SUB_ELEMS)
            .map(|s| s..(s + SUB_ELEMS).min(range.end))
            .collect();
        let parts: Vec<Vec<PairSums>> = subs
            .into_par_iter()
            .map(|r| {
                DECODED.with_borrow_mut(|(vals, scratch)| {
                    vals.resize_with(self.used.len(), Vec::new);
                    for (v, &i) in vals.iter_mut().zip(&self.used) {
                        // Every element is overwritten: no need to clear.
                        if v.len() < r.len() {
                            v.resize(r.len(), 0.0);
                        }
                        chunk.decode_f32_into(i, r.clone(), &mut v[..r.len()], scratch);
                    }
                    self.pairs
                        .iter()
                        .map(|&(i, j)| {
                            PairSums::of(&vals[slot(i)][..r.len()], &vals[slot(j)][..r.len()])
                        })
                        .collect()
                })
            })
            .collect();
        self.add_parts(&parts, t0.elapsed());
    }

    /// The sums of a chunk's work items of [`SUB_ELEMS`] elements, in
    /// order (one [`PairSums`] per pair each), taken elsewhere in `busy`.
    pub fn add_parts(&mut self, parts: &[Vec<PairSums>], busy: Duration) {
        for part in parts {
            for (s, p) in self.current.iter_mut().zip(part) {
                s.add(p);
            }
        }
        self.busy += busy;
    }

    /// The current tensor is done.
    pub fn end(&mut self) {
        let (name, shape) = self.tensor.take().expect("a tensor was begun");
        for (o, s) in self.out.iter_mut().zip(&self.current) {
            o.push((name.clone(), shape.clone(), *s));
        }
    }
}

/// Bytes of float tensor data a pass over the inputs of `pairs` reads.
pub fn float_bytes(inputs: &[MergeInput], pairs: &[(usize, usize)]) -> u64 {
    let mut used: Vec<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
    used.sort_unstable();
    used.dedup();
    used.iter()
        .filter_map(|&i| inputs.get(i))
        .flat_map(|inp| inp.checkpoint.tensors())
        .filter(|t| dtype::is_float(t.dtype))
        .map(|t| t.nbytes() as u64)
        .sum()
}

/// One streaming pass over `inputs` computing, for every float tensor of the
/// first input and every pair `(i, j)` in `pairs`, the sums of
/// [`PairSums`]. Each input taking part is read once, chunk by chunk, seen
/// through its permutation if it has one; pages are released as they are
/// consumed. Progress ([`Phase::Basin`], bytes read) goes to `observer`.
/// Tensors must exist with equal shapes in every input (checked).
pub fn stream_sums(
    inputs: &[MergeInput],
    pairs: &[(usize, usize)],
    observer: &dyn Observer,
) -> Result<Vec<TensorSums>> {
    let first = inputs.first().ok_or(UsageError::NothingToCheck)?.checkpoint;
    let mut used: Vec<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
    used.sort_unstable();
    used.dedup();
    if let Some(&bad) = used.iter().find(|&&i| i >= inputs.len()) {
        return Err(UsageError::NoSuchInput(bad).into());
    }
    // The pass streams only the inputs the pairs use: pairs over their slots.
    let slot = |i: usize| used.iter().position(|&u| u == i).expect("used input");
    let local: Vec<(usize, usize)> = pairs.iter().map(|&(i, j)| (slot(i), slot(j))).collect();
    let mut sink = PairSumsSink::new(&local);
    let phase = Phase::Basin;
    observer.event(&Event::Started {
        phase,
        total: Some(float_bytes(inputs, pairs)),
    });
    let mut done = 0u64;
    for t in first.tensors().iter().filter(|t| dtype::is_float(t.dtype)) {
        let views: Vec<TensorSource> = used
            .iter()
            .map(|&i| {
                let inp = &inputs[i];
                let info = inp.checkpoint.require(&t.name)?;
                if info.shape != t.shape || !dtype::is_float(info.dtype) {
                    return Err(MismatchError::NotComparable {
                        tensor: t.name.clone(),
                        a: first.source().to_path_buf(),
                        a_dtype: t.dtype,
                        a_shape: t.shape.clone(),
                        b: inp.checkpoint.source().to_path_buf(),
                        b_dtype: info.dtype,
                        b_shape: info.shape.clone(),
                    }
                    .into());
                }
                inp.source(&t.name)
            })
            .collect::<Result<_>>()?;
        sink.begin(&t.name, &t.shape);
        let mut chunks = Chunks::new(&views, t.numel());
        while let Some(chunk) = chunks.next_chunk()? {
            sink.chunk(&chunk);
            let range = chunk.range();
            done += views
                .iter()
                .map(|v| (range.len() * v.elem()) as u64)
                .sum::<u64>();
            observer.event(&Event::Progress { phase, done });
        }
        sink.end();
    }
    observer.event(&Event::Finished { phase });
    Ok(sink.into_sums())
}
