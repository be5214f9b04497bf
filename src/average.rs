//! Weighted averaging of N checkpoints, streamed tensor by tensor and chunk
//! by chunk from the memory-mapped inputs into a [`CheckpointWriter`].
//!
//! Numerics follow the PyTorch reference exactly: for float tensors
//! `(sum(w_i * t_i.float() for i) / sum(w)).to(dtype)`, i.e. f32 products and
//! sums in input order starting from 0 (so `-0.0` sums to `+0.0`), one true
//! division by `f32(Σw)` (Σw summed in f64, as Python sums floats), then round
//! to nearest even. F64 tensors (or `Accumulation::F64`) use the same formula
//! in f64. Integer and bool tensors must be identical across inputs and are
//! copied; other dtypes (F8 …) are copied from the first input with a warning.
//! One input whose dtype is kept is copied byte for byte (that is how `align`
//! and `permute` write B).
//!
//! Work is split into chunks of [`CHUNK_ELEMS`] output elements: each chunk is
//! computed by the rayon pool in sub-blocks of [`SUB_ELEMS`] while a writer
//! thread appends the previous chunks to the output (straight to disk, see
//! [`crate::write`]), and the input pages consumed are dropped from the
//! resident set every 16 MiB. Peak memory is a few chunks, whatever the model
//! size.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel};
use std::time::Instant;

use rayon::prelude::*;
use safetensors::Dtype;

use crate::checkpoint::dtype::{self, Kind};
use crate::checkpoint::{Checkpoint, TensorInfo};
use crate::error::{Error, Result};
use crate::permute::{ModelPermutation, TensorPermutation, gather};
use crate::write::{CheckpointWriter, TensorPlan, WriteSummary};

pub use crate::checkpoint::stream::{CHUNK_ELEMS, SUB_ELEMS};
/// Elements accumulated at a time inside a work item (f32 path): 2 Ki f32
/// accumulators (8 KiB) stay in L1 while every input is folded in.
const MINI_ELEMS: usize = 2048;
/// Consumed input bytes (summed over all inputs) after which their pages are
/// dropped from the resident set: 16 MiB bounds what streaming keeps mapped,
/// whatever the number of inputs, while making the `madvise` calls few.
const RELEASE_BYTES: usize = 16 << 20;
/// Chunks queued between the compute loop and the writer thread: 8 (16 MiB
/// of bf16), two of the writer's 8 MiB direct-I/O blocks, so computing goes
/// on while the writer waits for the disk.
const QUEUE_DEPTH: usize = 8;

/// One input of a merge: a checkpoint, optionally seen through a permutation.
#[derive(Clone, Copy)]
pub struct MergeInput<'a> {
    pub checkpoint: &'a Checkpoint,
    pub permutation: Option<&'a ModelPermutation>,
}

impl<'a> MergeInput<'a> {
    /// Pairs checkpoints with their (optional) permutations.
    pub fn zip(
        checkpoints: impl IntoIterator<Item = &'a Checkpoint>,
        perms: &'a [Option<ModelPermutation>],
    ) -> Vec<Self> {
        checkpoints
            .into_iter()
            .zip(perms)
            .map(|(checkpoint, p)| Self {
                checkpoint,
                permutation: p.as_ref(),
            })
            .collect()
    }

    /// An input read as stored.
    pub fn plain(checkpoint: &'a Checkpoint) -> Self {
        Self {
            checkpoint,
            permutation: None,
        }
    }
}

/// Precision of the running sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accumulation {
    /// f32 for F32/F16/BF16 tensors, f64 for F64 tensors (the default).
    #[default]
    Auto,
    /// f64 for every float tensor (long EMA trajectories).
    F64,
}

/// How to merge.
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// One weight per input; the result is Σ wᵢxᵢ / Σ wᵢ.
    pub weights: Vec<f64>,
    /// Output dtype for float tensors (default: the first input's).
    pub dtype: Option<Dtype>,
    pub accumulation: Accumulation,
    /// Fail on NaN/Inf in inputs instead of warning.
    pub strict_nonfinite: bool,
}

impl MergeOptions {
    /// Uniform weights over `n` inputs.
    pub fn uniform(n: usize) -> Self {
        Self {
            weights: vec![1.0; n],
            dtype: None,
            accumulation: Accumulation::Auto,
            strict_nonfinite: false,
        }
    }
}

/// What happens to one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Weighted average with f32 accumulation.
    AverageF32,
    /// Weighted average with f64 accumulation.
    AverageF64,
    /// Identical across inputs (checked); copied from the first.
    CopyExact,
    /// Copied from the first input unchecked (one input, or an opaque dtype).
    Copy,
}

/// One planned output tensor and how it is produced.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub plan: TensorPlan,
    pub action: Action,
}

/// NaN/Inf found in one input tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonFinite {
    pub path: PathBuf,
    pub tensor: String,
    pub count: u64,
}

/// The result of a merge.
#[derive(Clone, Debug)]
pub struct MergeReport {
    pub written: WriteSummary,
    pub tensors: usize,
    /// Elements of the averaged float tensors.
    pub params: u64,
    pub seconds: f64,
    pub nonfinite: Vec<NonFinite>,
    pub warnings: Vec<String>,
}

/// Validates the inputs against each other and plans every output tensor, in
/// the first input's storage order.
pub fn plan(
    inputs: &[MergeInput],
    opts: &MergeOptions,
) -> Result<(Vec<PlannedTensor>, Vec<String>)> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::Invalid("no inputs to merge".into()))?
        .checkpoint;
    validate_weights(&opts.weights, inputs.len())?;
    check_same_names(inputs)?;
    let mut warnings = Vec::new();
    let mut planned = Vec::with_capacity(first.tensors().len());
    for t in first.tensors() {
        let kind0 = dtype::kind(t.dtype);
        for inp in &inputs[1..] {
            let c = inp.checkpoint;
            let u = c.require(&t.name)?;
            if u.shape != t.shape {
                return Err(Error::Mismatch(format!(
                    "tensor `{}` has shape {:?} in `{}` but {:?} in `{}`",
                    t.name,
                    t.shape,
                    first.shard_path(t).display(),
                    u.shape,
                    c.shard_path(u).display()
                )));
            }
            let k = dtype::kind(u.dtype);
            let both_float = matches!(kind0, Kind::Float | Kind::Double)
                && matches!(k, Kind::Float | Kind::Double);
            if !both_float && u.dtype != t.dtype {
                return Err(Error::Mismatch(format!(
                    "tensor `{}` is {:?} in `{}` but {:?} in `{}`",
                    t.name,
                    t.dtype,
                    first.shard_path(t).display(),
                    u.dtype,
                    c.shard_path(u).display()
                )));
            }
        }
        let (out_dtype, action) = match kind0 {
            Kind::Float | Kind::Double => {
                let out = opts.dtype.unwrap_or(t.dtype);
                let f64_acc = opts.accumulation == Accumulation::F64 || out == Dtype::F64;
                let single_copy = inputs.len() == 1 && out == t.dtype;
                let action = if single_copy {
                    Action::Copy
                } else if f64_acc {
                    Action::AverageF64
                } else {
                    Action::AverageF32
                };
                (out, action)
            }
            Kind::Exact if inputs.len() > 1 => (t.dtype, Action::CopyExact),
            Kind::Exact => (t.dtype, Action::Copy),
            Kind::Opaque => {
                if inputs.len() > 1 {
                    warnings.push(format!(
                        "tensor `{}` has dtype {:?}, which is not averaged: copied from `{}`",
                        t.name,
                        t.dtype,
                        first.shard_path(t).display()
                    ));
                }
                (t.dtype, Action::Copy)
            }
        };
        planned.push(PlannedTensor {
            plan: TensorPlan {
                name: t.name.clone(),
                dtype: out_dtype,
                shape: t.shape.clone(),
            },
            action,
        });
    }
    Ok((planned, warnings))
}

/// Checks that weights are as many as inputs, finite, and do not sum to zero.
pub fn validate_weights(weights: &[f64], inputs: usize) -> Result<()> {
    if weights.len() != inputs {
        return Err(Error::Invalid(format!(
            "{} weights given for {} inputs",
            weights.len(),
            inputs
        )));
    }
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !w.is_finite()) {
        return Err(Error::Invalid(format!(
            "weight {} is {w}; weights must be finite",
            i + 1
        )));
    }
    let sum: f64 = weights.iter().sum();
    if sum == 0.0 || (sum as f32) == 0.0 {
        return Err(Error::Invalid("weights sum to zero".into()));
    }
    Ok(())
}

fn check_same_names(inputs: &[MergeInput]) -> Result<()> {
    let first = inputs[0].checkpoint;
    let names0: BTreeSet<&str> = first.tensors().iter().map(|t| t.name.as_str()).collect();
    for inp in &inputs[1..] {
        let c = inp.checkpoint;
        let names: BTreeSet<&str> = c.tensors().iter().map(|t| t.name.as_str()).collect();
        if names != names0 {
            let missing: Vec<&str> = names0.difference(&names).copied().collect();
            let extra: Vec<&str> = names.difference(&names0).copied().collect();
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!(
                    "lacks {} of `{}`'s tensors ({})",
                    missing.len(),
                    first.source().display(),
                    first_few(&missing)
                ));
            }
            if !extra.is_empty() {
                parts.push(format!(
                    "has {} tensor(s) `{}` lacks ({})",
                    extra.len(),
                    first.source().display(),
                    first_few(&extra)
                ));
            }
            return Err(Error::Mismatch(format!(
                "`{}` {}",
                c.source().display(),
                parts.join(" and ")
            )));
        }
    }
    Ok(())
}

fn first_few(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
    if names.len() > SHOWN {
        s.push(format!("… {} more", names.len() - SHOWN));
    }
    s.join(", ")
}

/// A tensor of one input, with its permutation (if any) resolved.
struct Source<'a> {
    ckpt: &'a Checkpoint,
    info: &'a TensorInfo,
    bytes: &'a [u8],
    perm: Option<&'a TensorPermutation>,
    elem: usize,
}

impl<'a> Source<'a> {
    /// Bytes of output elements `range`: a slice of the mapping when the
    /// tensor is not permuted, else gathered into `scratch`.
    fn fetch<'s>(&'s self, range: Range<usize>, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        match self.perm {
            None => &self.bytes[range.start * self.elem..range.end * self.elem],
            Some(p) => {
                scratch.resize(range.len() * self.elem, 0);
                gather(self.bytes, &self.info.shape, self.elem, p, range, scratch);
                scratch
            }
        }
    }
}

/// Runs a planned merge into `writer`. `progress` is called with the number
/// of output bytes produced so far.
pub fn run(
    inputs: &[MergeInput],
    planned: &[PlannedTensor],
    opts: &MergeOptions,
    writer: CheckpointWriter,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<MergeReport> {
    let start = Instant::now();
    let weights32: Vec<f32> = opts.weights.iter().map(|&w| w as f32).collect();
    let sum64: f64 = opts.weights.iter().sum();
    let mut nonfinite = Vec::new();
    let mut params = 0u64;

    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_DEPTH);
    let (back_tx, back_rx) = channel::<Vec<u8>>();
    let outcome: Result<CheckpointWriter> = std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<CheckpointWriter> {
            let mut writer = writer;
            for buf in rx {
                writer.write(&buf)?;
                let _ = back_tx.send(buf);
            }
            Ok(writer)
        });
        let compute = (|| -> Result<()> {
            let mut done = 0u64;
            for pt in planned {
                let sources: Vec<Source> = inputs
                    .iter()
                    .map(|inp| {
                        let info = inp.checkpoint.require(&pt.plan.name)?;
                        Ok(Source {
                            ckpt: inp.checkpoint,
                            info,
                            bytes: inp.checkpoint.bytes(info),
                            perm: inp.permutation.and_then(|p| p.get(&pt.plan.name)),
                            elem: dtype::size_of(info.dtype),
                        })
                    })
                    .collect::<Result<_>>()?;
                // Sub-byte dtypes (F4, F6_*) are only ever copied (they are
                // `Kind::Opaque`): stream them as raw bytes, one byte per
                // "element", since their elements do not fill whole bytes.
                let (numel, out_elem) = if pt.plan.dtype.bitsize() % 8 == 0 {
                    (pt.plan.numel(), dtype::size_of(pt.plan.dtype))
                } else {
                    (pt.plan.nbytes(), 1)
                };
                let mut counts = vec![0u64; sources.len()];
                if matches!(pt.action, Action::CopyExact) {
                    check_identical(&sources)?;
                }
                if matches!(pt.action, Action::AverageF32 | Action::AverageF64) {
                    params += numel as u64;
                }
                let mut offset = 0usize;
                let mut released = 0usize;
                // Input bytes one output element consumes over all inputs:
                // with many inputs (an EMA over hundreds of checkpoints) the
                // chunk shrinks so that the input pages it touches stay
                // within RELEASE_BYTES, whatever the number of inputs.
                let in_elem: usize = sources.iter().map(|s| s.elem).sum::<usize>().max(1);
                let chunk_elems = CHUNK_ELEMS.min((RELEASE_BYTES / in_elem).max(SUB_ELEMS));
                // A 0-element tensor still gets one (empty) pass.
                loop {
                    let n = chunk_elems.min(numel - offset);
                    // A recycled buffer is not cleared: every byte of it
                    // is overwritten below.
                    let mut buf = back_rx.try_recv().unwrap_or_default();
                    buf.resize(n * out_elem, 0);
                    let range = offset..offset + n;
                    match pt.action {
                        Action::Copy | Action::CopyExact => {
                            let mut scratch = Vec::new();
                            buf.copy_from_slice(sources[0].fetch(range.clone(), &mut scratch));
                        }
                        Action::AverageF32 => {
                            let c = average_chunk_f32(
                                sources.as_slice(),
                                &weights32,
                                sum64 as f32,
                                pt.plan.dtype,
                                range.clone(),
                                &mut buf,
                            );
                            counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
                        }
                        Action::AverageF64 => {
                            let c = average_chunk_f64(
                                sources.as_slice(),
                                &opts.weights,
                                sum64,
                                pt.plan.dtype,
                                range.clone(),
                                &mut buf,
                            );
                            counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
                        }
                    }
                    if tx.send(buf).is_err() {
                        // The writer thread stopped: its error is reported below.
                        return Ok(());
                    }
                    offset += n;
                    // Drop the input pages consumed so far from the resident
                    // set, in batches: each `madvise` costs a TLB shootdown
                    // on every core that ran a worker.
                    if (offset - released) * in_elem >= RELEASE_BYTES || offset >= numel {
                        for s in &sources {
                            if s.perm.is_none() {
                                s.ckpt
                                    .release_consumed(s.info, released * s.elem..offset * s.elem);
                            }
                        }
                        released = offset;
                    }
                    done += (n * out_elem) as u64;
                    progress(done);
                    if offset >= numel {
                        break;
                    }
                }
                for s in &sources {
                    if s.perm.is_some() {
                        s.ckpt.release(s.info, 0..s.info.nbytes());
                    }
                }
                for (s, &count) in sources.iter().zip(&counts) {
                    if count > 0 {
                        let nf = NonFinite {
                            path: s.ckpt.shard_path(s.info).to_path_buf(),
                            tensor: pt.plan.name.clone(),
                            count,
                        };
                        if opts.strict_nonfinite {
                            return Err(Error::tensor(
                                &nf.path,
                                &nf.tensor,
                                format!("{} NaN/Inf value(s) (--strict)", nf.count),
                            ));
                        }
                        nonfinite.push(nf);
                    }
                }
            }
            Ok(())
        })();
        drop(tx);
        let writer = handle.join().expect("writer thread panicked");
        compute.and(writer)
    });
    let writer = outcome?;
    let written = writer.finish()?;
    Ok(MergeReport {
        tensors: planned.len(),
        params,
        seconds: start.elapsed().as_secs_f64(),
        written,
        nonfinite,
        warnings: Vec::new(),
    })
}

fn check_identical(sources: &[Source]) -> Result<()> {
    let numel = sources[0].info.numel();
    let mut s0 = Vec::new();
    let mut s1 = Vec::new();
    let a = sources[0].fetch(0..numel, &mut s0);
    for s in &sources[1..] {
        if s.fetch(0..numel, &mut s1) != a {
            return Err(Error::Mismatch(format!(
                "{:?} tensor `{}` differs between `{}` and `{}`; integer and bool tensors must be identical to be merged",
                s.info.dtype,
                s.info.name,
                sources[0].ckpt.shard_path(sources[0].info).display(),
                s.ckpt.shard_path(s.info).display()
            )));
        }
    }
    Ok(())
}

/// The inputs of one chunk: each input's element bytes over a range of
/// output elements, either borrowed from a mapping or gathered into scratch.
trait ChunkInputs: Sync {
    fn len(&self) -> usize;
    fn dtype(&self, i: usize) -> Dtype;
    fn fetch<'s>(&'s self, i: usize, range: Range<usize>, scratch: &'s mut Vec<u8>) -> &'s [u8];
}

impl ChunkInputs for [Source<'_>] {
    fn len(&self) -> usize {
        <[Source]>::len(self)
    }
    fn dtype(&self, i: usize) -> Dtype {
        self[i].info.dtype
    }
    fn fetch<'s>(&'s self, i: usize, range: Range<usize>, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        self[i].fetch(range, scratch)
    }
}

impl ChunkInputs for [(Dtype, &[u8])] {
    fn len(&self) -> usize {
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
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
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
/// bit for bit what [`run`] computes for each tensor (pass
/// `divisor = f32(Σwᵢ)` with Σwᵢ summed in f64). Returns the NaN/Inf count of
/// each input. Work is split over the rayon pool as in [`run`]; this is the
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
    average_chunk_f32(inputs, weights, divisor, out_dtype, 0..n, out)
}

/// Averages output elements `range` into `out` with f32 arithmetic; returns
/// the NaN/Inf count of each input over the range.
fn average_chunk_f32<I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &[f32],
    divisor: f32,
    out_dtype: Dtype,
    range: Range<usize>,
    out: &mut [u8],
) -> Vec<u64> {
    let out_elem = dtype::size_of(out_dtype);
    let counts = new_counts(sources.len());
    out.par_chunks_mut(SUB_ELEMS * out_elem)
        .enumerate()
        .for_each(|(k, out_block)| {
            SCRATCH.with_borrow_mut(|s| {
                let n = out_block.len() / out_elem;
                let lo = range.start + k * SUB_ELEMS;
                s.acc32.resize(MINI_ELEMS, 0.0);
                // Pieces of MINI_ELEMS, so that the accumulators stay in L1.
                let mut m0 = 0;
                while m0 < n {
                    let m = MINI_ELEMS.min(n - m0);
                    let piece = lo + m0..lo + m0 + m;
                    let acc = &mut s.acc32[..m];
                    for (i, &w) in weights.iter().enumerate() {
                        let bytes = sources.fetch(i, piece.clone(), &mut s.bytes);
                        // The first term overwrites acc (Python's `0 + w·x`).
                        let bad = dtype::accumulate_f32(sources.dtype(i), bytes, w, acc, i == 0);
                        if bad != 0 {
                            counts[i].fetch_add(bad, Ordering::Relaxed);
                        }
                    }
                    let out = &mut out_block[m0 * out_elem..(m0 + m) * out_elem];
                    dtype::divide_encode_f32(acc, divisor, out_dtype, out);
                    m0 += m;
                }
            })
        });
    into_counts(counts)
}

/// As [`average_chunk_f32`] with f64 arithmetic.
fn average_chunk_f64<I: ChunkInputs + ?Sized>(
    sources: &I,
    weights: &[f64],
    divisor: f64,
    out_dtype: Dtype,
    range: Range<usize>,
    out: &mut [u8],
) -> Vec<u64> {
    let out_elem = dtype::size_of(out_dtype);
    let counts = new_counts(sources.len());
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
                    dtype::decode_f64(sources.dtype(i), bytes, &mut s.x64);
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
                dtype::encode_f64(out_dtype, &s.acc64, out_block);
            })
        });
    into_counts(counts)
}

/// The `__metadata__` of a merge output: the first input's, plus
/// `format: pt` when missing (transformers refuses files without it) and a
/// `polymerge` key describing the merge as a JSON string.
pub fn output_metadata(
    first: &Checkpoint,
    description: serde_json::Value,
) -> BTreeMap<String, String> {
    let mut m = first.metadata().clone();
    m.entry("format".into()).or_insert_with(|| "pt".into());
    m.insert("polymerge".into(), description.to_string());
    m
}
