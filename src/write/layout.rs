//! The layout of an output: a file or a model directory, its tensors, and
//! how they are split into shards.

use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::checkpoint::MODEL_FILE;

/// One tensor of the output, as planned before writing.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorPlan {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Number of data bytes.
    pub fn nbytes(&self) -> usize {
        (self.numel() * self.dtype.bitsize()).div_ceil(8)
    }
}

/// Where and how to write.
#[derive(Clone, Debug)]
pub enum OutputLayout {
    /// One `.safetensors` file.
    File(PathBuf),
    /// A model directory: `model.safetensors`, or shards of at most
    /// `max_shard_bytes` plus `model.safetensors.index.json`; non-weight files
    /// of `copy_from` (config, tokenizer ...) are copied along.
    Directory {
        path: PathBuf,
        max_shard_bytes: u64,
        copy_from: Option<PathBuf>,
    },
}

impl OutputLayout {
    /// The final path (file or directory).
    pub fn path(&self) -> &Path {
        match self {
            OutputLayout::File(p) => p,
            OutputLayout::Directory { path, .. } => path,
        }
    }

    /// A path ending in `.safetensors` is a file; anything else a directory.
    pub fn infer(path: &Path, max_shard_bytes: u64, copy_from: Option<PathBuf>) -> Self {
        if path.extension().is_some_and(|e| e == "safetensors") {
            OutputLayout::File(path.to_path_buf())
        } else {
            OutputLayout::Directory {
                path: path.to_path_buf(),
                max_shard_bytes,
                copy_from,
            }
        }
    }
}

pub(super) struct ShardPlan {
    pub(super) file_name: String,
    pub(super) first: usize,
    pub(super) end: usize,
    pub(super) data_bytes: u64,
}

/// Splits tensors into consecutive shards of at most `max` data bytes (a
/// tensor larger than `max` gets a shard of its own), named as
/// `transformers` names them: `model-00001-of-00003.safetensors`. A model
/// that fits in one shard is written as plain `model.safetensors`.
pub(super) fn split_shards(plans: &[TensorPlan], max: u64) -> Vec<ShardPlan> {
    let mut ranges: Vec<(usize, usize, u64)> = Vec::new();
    let (mut first, mut size) = (0usize, 0u64);
    for (i, p) in plans.iter().enumerate() {
        let n = p.nbytes() as u64;
        if i > first && size + n > max {
            ranges.push((first, i, size));
            first = i;
            size = 0;
        }
        size += n;
    }
    ranges.push((first, plans.len(), size));
    let total = ranges.len();
    ranges
        .into_iter()
        .enumerate()
        .map(|(k, (first, end, data_bytes))| ShardPlan {
            file_name: if total == 1 {
                MODEL_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, total)
            },
            first,
            end,
            data_bytes,
        })
        .collect()
}
