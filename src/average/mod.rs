//! Weighted averaging of N checkpoints, streamed tensor by tensor and chunk
//! by chunk from the memory-mapped inputs into a [`crate::write::CheckpointWriter`].
//!
//! Numerics follow the PyTorch reference exactly: for float tensors
//! `(sum(w_i * t_i.float() for i) / sum(w)).to(dtype)`, i.e. f32 products and
//! sums in input order starting from 0 (so `-0.0` sums to `+0.0`), one true
//! division by `f32(Σw)` (Σw summed in f64, as Python sums floats), then round
//! to nearest even. F64 tensors (or `Accumulation::F64`) use the same formula
//! in f64. Integer and bool tensors must be identical across inputs and are
//! copied, except step counters (`num_batches_tracked`, [`is_counter`]),
//! taken from one input by a [`CounterRule`] with a note when they differ;
//! other dtypes (F8 …) are copied from the first input with a warning.
//! BatchNorm running statistics are averaged like weights, and the report
//! says so ([`MergeReport::notes`]): they are to be re-estimated on data.
//! One input whose dtype is kept is copied byte for byte (that is how `align`
//! and `permute` write B).
//!
//! # mergekit linear
//!
//! [`Numerics::MergekitLinear`] computes what mergekit's `linear` method
//! does instead (fused multiply-adds in f32, the compute dtype's rounding,
//! optional normalisation), bit for bit; the formula is documented in
//! `linear.rs` ([`LinearWeights`], [`torch_sum_f32`]).
//!
//! Work is split into chunks of [`CHUNK_ELEMS`] output elements: each chunk is
//! computed by the rayon pool in sub-blocks of [`SUB_ELEMS`] while a writer
//! thread appends the previous chunks to the output (straight to disk, see
//! [`crate::write`]), and the input pages consumed are dropped from the
//! resident set every 16 MiB. Peak memory is a few chunks, whatever the model
//! size.

mod chunk;
mod linear;
mod merge;
mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::Dtype;

use crate::checkpoint::Checkpoint;
use crate::write::{TensorPlan, WriteSummary};

pub use crate::checkpoint::stream::{CHUNK_ELEMS, MergeInput, SUB_ELEMS};
pub use chunk::average_slices_f32;
pub use linear::{LinearWeights, torch_sum_f32, torch_sum_f64};
pub use merge::{Pending, run, stream};
pub use plan::{plan, validate_weights};

/// Precision of the running sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accumulation {
    /// f32 for F32/F16/BF16 tensors, f64 for F64 tensors (the default).
    #[default]
    Auto,
    /// f64 for every float tensor (long EMA trajectories).
    F64,
}

/// Which formula computes a weighted average.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Numerics {
    /// PyTorch's `(sum(w * t.float() for ...) / sum(w)).to(dtype)` (the
    /// default; see the module documentation).
    #[default]
    Mean,
    /// mergekit's `merge_method: linear` (see [`linear`](self#mergekit-linear)):
    /// computed in `compute` (default: the inputs' promoted dtype), divided
    /// by the weights' sum only with `normalize`; the output dtype is
    /// [`MergeOptions::dtype`] (mergekit's `out_dtype`), else the compute dtype.
    MergekitLinear {
        compute: Option<Dtype>,
        normalize: bool,
    },
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
    /// The formula (PyTorch's mean by default).
    pub numerics: Numerics,
    /// Which input's step counters (`num_batches_tracked`) the output keeps.
    pub counters: CounterRule,
}

/// Which input an integer step counter (`num_batches_tracked`) is taken
/// from: such counters grow along a run, so they differ between checkpoints
/// that are otherwise fine to average, and no average of them means anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CounterRule {
    /// The first input (`avg`).
    #[default]
    First,
    /// The last input (`ema`: the latest checkpoint of the trajectory).
    Last,
}

/// Whether `tensor` is an integer step counter taken by a [`CounterRule`]
/// rather than required identical (`….num_batches_tracked` of BatchNorm).
pub fn is_counter(tensor: &str) -> bool {
    tensor.rsplit('.').next() == Some("num_batches_tracked")
}

/// Whether `tensor` holds BatchNorm running statistics.
pub fn is_running_stat(tensor: &str) -> bool {
    crate::spec::infer::is_running_stat(tensor)
}

impl MergeOptions {
    /// Uniform weights over `n` inputs.
    pub fn uniform(n: usize) -> Self {
        Self {
            weights: vec![1.0; n],
            dtype: None,
            accumulation: Accumulation::Auto,
            strict_nonfinite: false,
            numerics: Numerics::Mean,
            counters: CounterRule::First,
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
    /// mergekit's linear merge, computed in `compute`.
    Linear { compute: Dtype },
    /// An integer step counter copied from input `n` ([`CounterRule`]).
    Counter(usize),
}

/// One planned output tensor and how it is produced.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub plan: TensorPlan,
    pub action: Action,
}

/// The validated plan of a merge: every output tensor in the first input's
/// storage order, and warnings about tensors that are copied rather than
/// averaged.
#[derive(Clone, Debug)]
pub struct Plan {
    pub tensors: Vec<PlannedTensor>,
    pub warnings: Vec<String>,
}

impl Plan {
    /// The output tensors, in the order their data is written.
    pub fn tensor_plans(&self) -> Vec<TensorPlan> {
        self.tensors.iter().map(|p| p.plan.clone()).collect()
    }

    /// Bytes of output tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|p| p.plan.nbytes() as u64).sum()
    }
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
    /// Elements of the float tensors written (averaged, or copied from a
    /// single input as by `permute`).
    pub params: u64,
    pub seconds: f64,
    pub nonfinite: Vec<NonFinite>,
    pub warnings: Vec<String>,
    /// What a user should know about the output: step counters that
    /// differed between the inputs (and which one was kept), BatchNorm
    /// running statistics that are averages to re-estimate.
    pub notes: Vec<String>,
    /// BatchNorm running statistics (`running_mean`/`running_var`) that
    /// were averaged over more than one input.
    pub averaged_running_stats: usize,
    /// The weight matching of each aligned input onto the first (input
    /// index, 0-based), when the pipeline aligned them pairwise.
    pub alignments: Vec<(usize, crate::alignment::Alignment)>,
    /// The basin gate's verdict on each checked pair of inputs (0-based,
    /// after alignment when the run aligned).
    pub basin: Vec<((usize, usize), crate::basin::Assessment)>,
    /// Whether the inputs were aligned before the basin gate and the merge.
    pub aligned: bool,
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

#[cfg(test)]
mod tests;
