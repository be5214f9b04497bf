//! polymerge: permutation-aware merging of neural-network checkpoints —
//! weighted averages (model soups), offline EMA of trajectories, and Git
//! Re-Basin weight matching so that independently trained runs can be
//! averaged at all — straight from memory-mapped safetensors, with
//! PyTorch's exact numerics.
//!
//! # The pipeline
//!
//! [`pipeline::Merge`] runs every stage of a merge: the inputs are planned
//! once (validated against each other), optionally aligned (weight matching
//! to the first input, or MergeMany), checked by the data-free basin gate,
//! and streamed into the output. Progress and outcomes go to an
//! [`observe::Observer`] (the `polymerge` binary draws them on stderr; a
//! program can log them or pass [`observe::Silent`]).
//!
//! An aligned average of two runs, where the second is the first with its
//! hidden units shuffled: weight matching puts them back, so the average is
//! the first run itself.
//!
//! ```
//! use polymerge::checkpoint::Checkpoint;
//! use polymerge::pipeline::{Align, MatchOptions, Merge, Output, Silent};
//!
//! let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/mlp");
//! let a = Checkpoint::open(format!("{fixtures}/run_seed0.safetensors"))?;
//! let b = Checkpoint::open(format!("{fixtures}/run_seed0_permuted.safetensors"))?;
//!
//! let out = std::env::temp_dir().join(format!("polymerge-doc-{}.safetensors", std::process::id()));
//! let report = Merge::new([&a, &b])
//!     .align(Align::ToFirst(MatchOptions::default()))
//!     .run(&Output::at(&out).force(true), &Silent)?;
//! assert_eq!(report.tensors, a.tensors().len());
//!
//! let merged = Checkpoint::open(&out)?;
//! for t in a.tensors() {
//!     let m = merged.require(&t.name)?;
//!     assert_eq!(merged.read_f32(m)?, a.read_f32(t)?);
//! }
//! std::fs::remove_file(&out).ok();
//! # Ok::<(), polymerge::Error>(())
//! ```
//!
//! # Modules, in the order of the data flow
//!
//! | stage | module |
//! | --- | --- |
//! | input: files, shards, model directories, memory-mapped | [`checkpoint`] (with [`checkpoint::stream`], the one tensor stream every pass reads through) |
//! | element kernels: decode, accumulate, encode | [`kernels`] |
//! | permutation specs: inferred (built-in [`spec::families`]) or from a file | [`spec`] |
//! | weight matching: similarity, assignment, the descent | [`similarity`], [`assignment`], [`alignment`] |
//! | applying permutations | [`permute`] |
//! | the basin check | [`basin`] |
//! | the merge: planning and the streaming average | [`average`], with [`ema`] weights for trajectories |
//! | the output: atomic, sharded, streamed | [`mod@write`] |
//! | the stages together | [`pipeline`], reporting to [`observe`] |
//!
//! [`evaluate`] measures loss barriers of MLPs on data; [`stats`]
//! summarises tensors; [`plot`] draws results as SVG. Errors are [`Error`], with typed causes
//! ([`error`]). All `unsafe` code (memory maps, OS hints, the SIMD
//! dispatch) sits in one private module; the rest of the crate denies it.

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
pub mod plot;
pub mod recipe;
pub mod similarity;
pub mod spec;
pub mod stats;
pub mod write;

// The one module with `unsafe` code: OS calls on maps and descriptors, and
// the run-time dispatch of the SIMD kernels.
#[allow(unsafe_code)]
mod sys;

pub use error::{Error, Result};
pub use sys::read::{SIDE_FILE_LIMIT, read_side_file};

/// Makes signals safe for a process that writes outputs: `SIGBUS` from an
/// input that shrinks while mapped removes the temporaries and exits with
/// one line (`input changed while reading`), and `SIGXFSZ` (`ulimit -f`) is
/// ignored so that the write fails with an error instead. The binary calls
/// this once at start.
pub fn install_signal_handlers() {
    sys::signals::install();
}

/// Keeps freed heap memory in the process for reuse instead of returning
/// it to the system at once (glibc), so the buffers weight matching
/// allocates at every group visit are not faulted in afresh each time
/// (see `sys::heap`). The binary calls this once at start.
pub fn keep_freed_memory() {
    sys::heap::keep_freed_memory();
}

/// Raises the soft limit on open files towards the hard limit (at most
/// 65536), so that inputs keep the descriptors streaming reads with
/// `pread` need (see `sys::descriptors`). The binary calls this once at
/// start, before opening any input.
pub fn raise_descriptor_limit() {
    sys::descriptors::raise_soft_limit();
}

/// Version string written into merge metadata.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
