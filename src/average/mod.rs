//! Weighted averaging of N checkpoints, streamed tensor by tensor and chunk
//! by chunk from the memory-mapped inputs into a [`crate::write::CheckpointWriter`].
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

mod chunk;
mod merge;
mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::Dtype;

use crate::checkpoint::Checkpoint;
use crate::write::{TensorPlan, WriteSummary};

pub use crate::checkpoint::stream::{CHUNK_ELEMS, MergeInput, SUB_ELEMS};
pub use chunk::average_slices_f32;
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
    /// Elements of the averaged float tensors.
    pub params: u64,
    pub seconds: f64,
    pub nonfinite: Vec<NonFinite>,
    pub warnings: Vec<String>,
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
