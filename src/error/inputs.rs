//! Causes of errors about the inputs: files, indexes, tensors, and inputs
//! that do not match each other.

use std::path::PathBuf;

use safetensors::Dtype;

/// Why an input file is not read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A FIFO, device, socket or directory where a file is expected.
    #[error("not a regular file ({0})")]
    NotRegular(&'static str),
    #[error("file is {size} bytes, more than the {limit}-byte limit for this kind of file")]
    TooLarge { size: u64, limit: u64 },
    #[error("not UTF-8 text")]
    NotUtf8(#[source] std::str::Utf8Error),
}

/// Why a file is not a readable safetensors file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("file is {len} bytes, shorter than the 8-byte header length")]
    TooShort { len: usize },
    #[error("header length {declared} exceeds the file size {len} (truncated or not safetensors)")]
    HeaderBeyondEnd { declared: u64, len: usize },
    #[error("tensor data does not match the file size (truncated or padded file)")]
    DataSize,
    #[error("header is not valid JSON")]
    HeaderJson(#[source] serde_json::Error),
    #[error("header is not UTF-8")]
    HeaderUtf8(#[source] std::str::Utf8Error),
    #[error("header is larger than the 100 MB limit")]
    HeaderTooLarge,
    /// Another refusal of the `safetensors` crate, in its words (lowercased).
    #[error("{0}")]
    Rejected(String),
    /// As [`FormatError::Rejected`], with the tensor whose entry is wrong.
    #[error("tensor `{tensor}`: {reason}")]
    RejectedTensor { tensor: String, reason: String },
    #[error("not a regular file")]
    NotRegularFile,
    #[error(
        "directory has no {model} or {index} and {indexes} index file(s), {files} safetensors file(s); name the file to use",
        model = crate::checkpoint::MODEL_FILE,
        index = crate::checkpoint::INDEX_FILE
    )]
    NoWeights { indexes: usize, files: usize },
}

/// Why a checkpoint index is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("not valid index JSON")]
    Json(#[source] serde_json::Error),
    #[error("missing `weight_map`")]
    NoWeightMap,
    #[error("`weight_map` is empty")]
    EmptyWeightMap,
    #[error("shard name `{name}` must be a file name in the index's directory")]
    ShardName { name: String },
    #[error("shard `{}` does not exist", shard.display())]
    MissingShard { shard: PathBuf },
    #[error("tensor `{tensor}` is mapped to `{shard}` but no shard contains it")]
    NotInShards { tensor: String, shard: String },
    #[error("tensor `{tensor}` is mapped to `{shard}` but stored in `{}`", actual.display())]
    WrongShard {
        tensor: String,
        shard: String,
        actual: PathBuf,
    },
    #[error("tensor `{tensor}` in shard `{}` is not listed in `weight_map`", shard.display())]
    Unlisted { tensor: String, shard: PathBuf },
    #[error("tensor `{tensor}` is present in two shards: `{}` and `{}`", first.display(), second.display())]
    TwoShards {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// What is wrong with one tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    #[error("no such tensor")]
    Missing,
    #[error("expected a float tensor, found {0:?}")]
    NotFloat(Dtype),
    #[error("{count} NaN/Inf value(s)")]
    NonFinite { count: u64 },
    #[error("must be a float matrix [N, D]")]
    NotAMatrix,
    #[error(transparent)]
    Shape(#[from] ndarray::ShapeError),
    #[error("labels must be I64 or I32, found {0:?}")]
    LabelDtype(Dtype),
    #[error("has {labels} labels for {rows} rows of `x`")]
    LabelCount { labels: usize, rows: usize },
    #[error("negative label {0}")]
    NegativeLabel(i64),
    #[error("has no rows")]
    NoRows,
    #[error("input changed while reading (the file ends before the tensor's bytes)")]
    Changed,
    #[error("cannot read its bytes")]
    Unreadable(#[source] std::io::Error),
}

/// How inputs differ.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MismatchError {
    /// `input` lacks tensors of `first` (`missing`) or has more (`extra`);
    /// the lists hold at most five names each.
    #[error("`{}` {}", input.display(), tensor_sets(first, *missing, missing_shown, *extra, extra_shown))]
    Tensors {
        input: PathBuf,
        first: PathBuf,
        missing: usize,
        missing_shown: Vec<String>,
        extra: usize,
        extra_shown: Vec<String>,
    },
    #[error("tensor `{tensor}` has shape {a_shape:?} in `{}` but {b_shape:?} in `{}`", a.display(), b.display())]
    Shape {
        tensor: String,
        a: PathBuf,
        a_shape: Vec<usize>,
        b: PathBuf,
        b_shape: Vec<usize>,
    },
    #[error("tensor `{tensor}` is {a_dtype:?} in `{}` but {b_dtype:?} in `{}`", a.display(), b.display())]
    Dtype {
        tensor: String,
        a: PathBuf,
        a_dtype: Dtype,
        b: PathBuf,
        b_dtype: Dtype,
    },
    #[error("tensor `{tensor}` is {a_dtype:?} {a_shape:?} in `{}` but {b_dtype:?} {b_shape:?} in `{}`", a.display(), b.display())]
    NotComparable {
        tensor: String,
        a: PathBuf,
        a_dtype: Dtype,
        a_shape: Vec<usize>,
        b: PathBuf,
        b_dtype: Dtype,
        b_shape: Vec<usize>,
    },
    #[error("{dtype:?} tensor `{tensor}` differs between `{}` and `{}`; integer and bool tensors must be identical to be merged", a.display(), b.display())]
    ExactDiffers {
        dtype: Dtype,
        tensor: String,
        a: PathBuf,
        b: PathBuf,
    },
}

fn names_list(total: usize, shown: &[String]) -> String {
    let mut s: Vec<String> = shown.iter().map(|n| format!("`{n}`")).collect();
    if total > shown.len() {
        s.push(format!("… {} more", total - shown.len()));
    }
    s.join(", ")
}

fn tensor_sets(
    first: &std::path::Path,
    missing: usize,
    missing_shown: &[String],
    extra: usize,
    extra_shown: &[String],
) -> String {
    let mut parts = Vec::new();
    if missing > 0 {
        parts.push(format!(
            "lacks {missing} of `{}`'s tensors ({})",
            first.display(),
            names_list(missing, missing_shown)
        ));
    }
    if extra > 0 {
        parts.push(format!(
            "has {extra} tensor(s) `{}` lacks ({})",
            first.display(),
            names_list(extra, extra_shown)
        ));
    }
    parts.join(" and ")
}
