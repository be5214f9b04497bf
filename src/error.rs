//! The one error type of the library.
//!
//! Every variant renders as a single lowercase line that names the file and,
//! where there is one, the tensor or permutation group involved, so that the
//! binary can print it as is and exit non-zero.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between reading checkpoints and writing a merge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a path (open, read, map, write, rename).
    #[error("{}: {}", path.display(), lowercase_io(err))]
    Io { path: PathBuf, err: std::io::Error },

    /// The file is not a readable safetensors file (bad header, truncated, ...).
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Format { path: PathBuf, reason: String },

    /// A sharded checkpoint index (`*.safetensors.index.json`) is wrong.
    #[error("{}: invalid checkpoint index: {reason}", path.display())]
    Index { path: PathBuf, reason: String },

    /// A problem with one tensor of one file.
    #[error("{}: tensor `{tensor}`: {reason}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// Inputs that cannot be merged together (different tensor sets, shapes ...).
    #[error("inputs do not match: {0}")]
    Mismatch(String),

    /// A permutation spec that does not fit the checkpoint or is malformed.
    #[error("permutation spec{}: {reason}", source_suffix(path))]
    Spec {
        path: Option<PathBuf>,
        reason: String,
    },

    /// A spec that does not fit one of the checkpoints it is used with.
    #[error("checking the spec against `{}`", path.display())]
    SpecCheck {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },

    /// A saved permutation file that cannot be used.
    #[error("{}: invalid permutation file: {reason}", path.display())]
    Perm { path: PathBuf, reason: String },

    /// The linear assignment problem cannot be solved (NaN/Inf scores, bad shape).
    #[error("assignment problem for group `{group}`: {reason}")]
    Assignment { group: String, reason: String },

    /// An argument combination that cannot work (weights, decay, ...).
    #[error("{0}")]
    Invalid(String),

    /// The basin gate found pairs of inputs in different basins and was
    /// told to refuse: nothing was written.
    #[error("refusing to write: {} pair(s) of inputs look disconnected", pairs.len())]
    BasinRefused {
        pairs: Vec<crate::pipeline::RefusedPair>,
    },

    /// The output already exists and `--force` was not given, or similar.
    #[error("{}: {reason}", path.display())]
    Output { path: PathBuf, reason: String },
}

/// `No such file or directory (os error 2)` → `no such file or directory`.
fn lowercase_io(e: &std::io::Error) -> String {
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

fn source_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }

    /// Builds a [`Error::Tensor`] error.
    pub fn tensor(path: impl Into<PathBuf>, tensor: &str, reason: impl Into<String>) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.to_string(),
            reason: reason.into(),
        }
    }
}
