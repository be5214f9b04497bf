//! polymerge: permutation-aware merging of neural-network checkpoints.
//!
//! The library is the pipeline, one module per stage of the data flow:
//! [`checkpoint`] (memory-mapped safetensors input) → [`permute`] (applying
//! unit permutations) → [`average`] (streaming weighted average) →
//! [`write`] (atomic, streaming output).

pub mod alignment;
pub mod assignment;
pub mod average;
pub mod checkpoint;
pub mod error;
pub mod evaluate;
pub mod permute;
pub mod similarity;
pub mod spec;
pub mod stats;
pub mod write;

pub use error::{Error, Result};

/// Version string written into merge metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
