//! polymerge: permutation-aware merging of neural-network checkpoints.
//!
//! The library is the pipeline, one module per stage of the data flow:
//! [`checkpoint`] (memory-mapped safetensors input) → [`spec`] (permutation
//! groups) → [`similarity`] (per-group score matrices) → [`assignment`]
//! (exact linear assignment) → [`alignment`] (weight matching) → [`permute`]
//! (applying unit permutations) → [`average`] (streaming weighted average,
//! with [`ema`] weights for trajectories) → [`write`] (atomic, streaming
//! output). [`evaluate`] measures loss barriers of MLPs on data; [`stats`]
//! summarises tensors.

#![deny(unsafe_code)]

pub mod alignment;
pub mod assignment;
pub mod average;
pub mod basin;
pub mod checkpoint;
pub mod ema;
pub mod error;
pub mod evaluate;
pub mod kernels;
pub mod observe;
pub mod permute;
pub mod pipeline;
pub mod similarity;
pub mod spec;
pub mod stats;
pub mod write;

// The one module with `unsafe` code: OS calls on maps and descriptors, and
// the run-time dispatch of the SIMD kernels.
#[allow(unsafe_code)]
mod sys;

pub use error::{Error, Result};

/// Version string written into merge metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
