//! The error types of the library: one [`Error`] for every stage, whose
//! variants say where (file, tensor, group) and carry the cause as a typed
//! [`std::error::Error::source`] (an I/O error, a JSON error, or one of the
//! per-stage enums below). Rendered as a chain joined by `": "` (what
//! `anyhow`'s `{:#}` does), every error reads as one lowercase line naming
//! the file and, where there is one, the tensor or group.
//!
//! No message names a command-line flag: the binary adds its flag hints
//! (`--force`, `--spec`, `--steps` …) where they help.

mod inputs;
mod recipe;
mod stages;

use std::path::PathBuf;

pub use inputs::{FormatError, IndexError, MismatchError, ReadError, TensorError};
pub use recipe::RecipeError;
pub use stages::{
    AssignmentError, EmaError, ModelError, OutputError, PermError, SpecError, StepError,
    UsageError, WeightsError,
};

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between reading checkpoints and writing a merge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a path (open, read, map, write, rename).
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file that cannot be read as an input: not a regular file (a FIFO,
    /// a device), or a side file over the size limit.
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: ReadError,
    },

    /// The file is not a readable safetensors file (bad header, truncated, ...).
    #[error("{}: not a valid safetensors file", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },

    /// A sharded checkpoint index (`*.safetensors.index.json`) is wrong.
    #[error("{}: invalid checkpoint index", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: IndexError,
    },

    /// A problem with one tensor of one file.
    #[error("{}: tensor `{tensor}`", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        #[source]
        source: TensorError,
    },

    /// Inputs that cannot be merged together (different tensor sets, shapes ...).
    #[error("inputs do not match")]
    Mismatch(#[source] Box<MismatchError>),

    /// A permutation spec that does not fit the checkpoint, is malformed,
    /// or cannot be inferred.
    #[error("permutation spec{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Spec {
        path: Option<PathBuf>,
        #[source]
        source: Box<SpecError>,
    },

    /// A spec that does not fit one of the checkpoints it is used with.
    #[error("checking the spec against `{}`", path.display())]
    SpecCheck {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },

    /// A saved permutation file that cannot be used.
    #[error("{}: invalid permutation file", path.display())]
    Perm {
        path: PathBuf,
        #[source]
        source: PermError,
    },

    /// The linear assignment problem cannot be solved (NaN/Inf scores, bad shape).
    #[error("assignment problem for group `{group}`")]
    Assignment {
        group: String,
        #[source]
        source: AssignmentError,
    },

    /// Merge weights that cannot work.
    #[error(transparent)]
    Weights(#[from] WeightsError),

    /// An EMA profile or trajectory that cannot work.
    #[error(transparent)]
    Ema(#[from] EmaError),

    /// The training steps of an EMA's checkpoints cannot be worked out.
    #[error(transparent)]
    Steps(#[from] StepError),

    /// A data file that does not fit the model being evaluated.
    #[error("{}: data does not fit the model", path.display())]
    Data {
        path: PathBuf,
        #[source]
        source: ModelError,
    },

    /// A model the MLP evaluator cannot run.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A call that cannot work as asked (no inputs, wrong counts ...).
    #[error(transparent)]
    Usage(#[from] UsageError),

    /// A merge recipe (mergekit YAML) that polymerge cannot run as written.
    #[error("{}", path.display())]
    Recipe {
        path: PathBuf,
        #[source]
        source: RecipeError,
    },

    /// The output cannot be written (it exists, its directory is missing ...).
    #[error("{}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: OutputError,
    },

    /// The basin gate found pairs of inputs in different basins and was
    /// told to refuse: nothing was written.
    #[error("refusing to write: {} pair(s) of inputs look disconnected", pairs.len())]
    BasinRefused {
        pairs: Vec<crate::pipeline::RefusedPair>,
    },

    /// A broken invariant of polymerge itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Tensor`].
    pub fn tensor(path: impl Into<PathBuf>, tensor: &str, source: TensorError) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.to_string(),
            source,
        }
    }

    /// The error and its causes as one line, joined by `": "` (I/O causes
    /// lowercased, without the `(os error N)` suffix).
    pub fn one_line(&self) -> String {
        let mut parts = Vec::new();
        let mut under_io = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(c) = cause {
            parts.push(match c.downcast_ref::<std::io::Error>() {
                Some(io) if under_io => lowercase_io(io),
                _ => c.to_string(),
            });
            under_io = matches!(c.downcast_ref::<Error>(), Some(Error::Io { .. }))
                || matches!(
                    c.downcast_ref::<TensorError>(),
                    Some(TensorError::Unreadable(_))
                );
            cause = c.source();
        }
        parts.join(": ").replace('\n', " ")
    }

    /// Builds an [`Error::Spec`] without a spec file.
    pub fn spec(source: SpecError) -> Self {
        Error::Spec {
            path: None,
            source: Box::new(source),
        }
    }
}

impl From<MismatchError> for Error {
    fn from(e: MismatchError) -> Self {
        Error::Mismatch(Box::new(e))
    }
}

/// `No such file or directory (os error 2)` → `no such file or directory`.
pub fn lowercase_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => s,
    }
}
