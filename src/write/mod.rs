//! Writing merged checkpoints: streaming, atomic, in one file or in a
//! Hugging Face model directory with shards and an index.
//!
//! The whole layout (tensor order, dtypes, shapes, offsets, shard split) is
//! fixed before the first byte of data, so each file's header can be written
//! first and the tensor data appended strictly sequentially as it is computed.
//! Everything goes to a temporary file (or directory) beside the target and is
//! renamed into place only once complete and synced; on any error, or when the
//! writer is dropped unfinished, the temporaries are removed. A target that is
//! also an input keeps its old inode alive (it stays mapped) until the rename.
//! Large shards go through the page cache with writeback started every
//! 32 MiB, or with [`WriteMode::Direct`] by direct I/O where the filesystem
//! allows it (see `ShardFile`).

mod files;
mod layout;
mod shard;
mod side_files;
mod small;
mod swap;
mod temp;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

use crate::checkpoint::INDEX_FILE;
use crate::error::{Error, OutputError, Result};
use files::{create_error, output_error, replace, replace_dir};
use layout::{ShardPlan, split_shards};
use shard::ShardFile;
use side_files::copy_side_files;

pub use files::{check_output_kind, refuse_existing};
pub use layout::{OutputLayout, TensorPlan};
pub use side_files::MAX_SIDE_FILE_BYTES;
pub use small::write_file_atomic;
pub use temp::{SideOutput, probe_directory, write_atomic};

/// Default largest shard of a directory output: 5 GB, the default of
/// `transformers`' `save_pretrained(max_shard_size="5GB")` (decimal units).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// What was written.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub data_bytes: u64,
    /// Side files of the first input that were not copied and a user may
    /// miss (weights in a subfolder, oversized files, links leading out).
    pub notes: Vec<String>,
}

/// Held while an existing output is being swapped for the new one, so that
/// [`remove_temporaries`] (run by the binary's Ctrl-C handler, on its own
/// thread) waits until the swap is whole instead of interrupting it half-way.
static SWAP: Mutex<()> = Mutex::new(());

/// Blocks [`remove_temporaries`] until dropped.
pub(crate) fn swapping() -> std::sync::MutexGuard<'static, ()> {
    SWAP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every temporary file or directory of writers still in progress,
/// after waiting for a swap in progress to complete. Meant for a Ctrl-C
/// handler: the process exits right after.
pub fn remove_temporaries() {
    remove_listed(crate::sys::signals::live_temporaries);
}

/// Removes the paths `list` returns, once no swap is in progress.
fn remove_listed(list: impl FnOnce() -> Vec<PathBuf>) {
    let _swap = swapping();
    for p in list() {
        if p.is_dir() {
            let _ = fs::remove_dir_all(&p);
        } else {
            let _ = fs::remove_file(&p);
        }
    }
}

pub(crate) fn register(p: &Path) {
    crate::sys::signals::register_temporary(p);
}

pub(crate) fn unregister(p: &Path) {
    crate::sys::signals::retire_temporary(p);
}

/// How the data of large shards reaches the disk.
///
/// Measured side by side (`scripts/bench_avg.py`, the 0.98 GB bf16 pair,
/// medians of 3): on a virtio disk whose direct writes complete into the
/// host's write cache, the final `fsync` of a direct-written file waited for
/// the whole write-out (1.76 s, `strace -T`) and `avg` took 2.74–3.55 s
/// against 2.45–2.50 s through the page cache, at the same CPU time; on an
/// earlier machine whose disk took direct writes at 1.3 GB/s the two had the
/// same median wall and direct I/O used 20% less CPU
/// (`docs/bench-avg.md`). The page cache is the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Through the page cache, writeback started every 32 MiB so the final
    /// `fsync` has little left.
    #[default]
    PageCache,
    /// Direct I/O (`O_DIRECT`, 8 MiB aligned blocks) for shards of 16 MiB
    /// or more, where the filesystem allows it; the page cache otherwise.
    Direct,
}

/// A streaming writer. Feed it the data of every planned tensor, in plan
/// order, with [`CheckpointWriter::write`], then call
/// [`CheckpointWriter::finish`].
pub struct CheckpointWriter {
    layout: OutputLayout,
    plans: Vec<TensorPlan>,
    shards: Vec<ShardPlan>,
    metadata: BTreeMap<String, String>,
    /// Temporary file (file layout) or staging directory (directory layout).
    temp: PathBuf,
    shard: usize,
    file: Option<ShardFile>,
    /// Bytes still expected for the current shard.
    remaining: u64,
    /// The staging directory sits inside an existing target directory, whose
    /// files are replaced one by one (see `swap`).
    in_place: bool,
    finished: bool,
    mode: WriteMode,
}

impl CheckpointWriter {
    /// Plans the output and opens the first temporary file. Fails before
    /// anything is written when the target exists and `force` is false, or
    /// its directory is not writable.
    pub fn create(
        layout: OutputLayout,
        plans: Vec<TensorPlan>,
        metadata: BTreeMap<String, String>,
        force: bool,
    ) -> Result<Self> {
        Self::create_with(layout, plans, metadata, force, WriteMode::default())
    }

    /// [`CheckpointWriter::create`] writing large shards in `mode`.
    pub fn create_with(
        layout: OutputLayout,
        plans: Vec<TensorPlan>,
        metadata: BTreeMap<String, String>,
        force: bool,
        mode: WriteMode,
    ) -> Result<Self> {
        let target = layout.path().to_path_buf();
        refuse_existing(&target, force)?;
        if let OutputLayout::File(_) = layout
            && target.is_dir()
        {
            return Err(Error::Output {
                path: target,
                source: OutputError::IsDirectory,
            });
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::Output {
                path: target,
                source: OutputError::NoDirectory(parent),
            });
        }
        // `-o DIR --force` over an existing directory stages inside it (see
        // `swap`); anything else is built beside the target and renamed.
        let in_place = matches!(layout, OutputLayout::Directory { .. }) && target.is_dir();
        let shards = match &layout {
            OutputLayout::File(_) => vec![ShardPlan {
                file_name: String::new(),
                first: 0,
                end: plans.len(),
                data_bytes: plans.iter().map(|p| p.nbytes() as u64).sum(),
            }],
            OutputLayout::Directory {
                max_shard_bytes, ..
            } => split_shards(&plans, *max_shard_bytes),
        };
        let (temp, first) = match layout {
            OutputLayout::Directory { .. } => {
                let (dir, prefix) = if in_place {
                    (target.clone(), ".polymerge-tmp-".to_string())
                } else {
                    (parent.clone(), temp::prefix_for(&target))
                };
                let (_, temp) = temp::create_in(&dir, &prefix, |p| fs::create_dir(p))
                    .map_err(|e| create_error(&target, &dir, e))?;
                (temp, None)
            }
            OutputLayout::File(_) => {
                let bytes = shards[0].data_bytes;
                let prefix = temp::prefix_for(&target);
                let (file, temp) =
                    temp::create_in(&parent, &prefix, |p| ShardFile::create(p, bytes, mode))
                        .map_err(|e| create_error(&target, &parent, e))?;
                (temp, Some(file))
            }
        };
        let mut writer = Self {
            layout,
            plans,
            shards,
            metadata,
            temp,
            shard: 0,
            file: None,
            remaining: 0,
            in_place,
            finished: false,
            mode,
        };
        writer
            .open_shard(0, first)
            .inspect_err(|_| writer.cleanup())?;
        Ok(writer)
    }

    /// The tensors in the order their data must be written.
    pub fn plans(&self) -> &[TensorPlan] {
        &self.plans
    }

    fn shard_path(&self, i: usize) -> PathBuf {
        match self.layout {
            OutputLayout::File(_) => self.temp.clone(),
            OutputLayout::Directory { .. } => self.temp.join(&self.shards[i].file_name),
        }
    }

    /// Opens shard `i` (or takes the temporary file already created for a
    /// file output) and writes its header.
    fn open_shard(&mut self, i: usize, created: Option<ShardFile>) -> Result<()> {
        let path = self.shard_path(i);
        let target = self.layout.path().to_path_buf();
        let data_bytes = self.shards[i].data_bytes;
        let mut file = match created {
            Some(f) => f,
            None => ShardFile::create(&path, data_bytes, self.mode)
                .map_err(|e| output_error(&target, &path, e))?,
        };
        let header = self.header(i)?;
        file.write(&(header.len() as u64).to_le_bytes())
            .and_then(|_| file.write(&header))
            .map_err(|e| output_error(&target, &path, e))?;
        self.shard = i;
        self.remaining = data_bytes;
        self.file = Some(file);
        Ok(())
    }

    /// The JSON header of shard `i`, padded with spaces to a multiple of 8
    /// bytes (as the `safetensors` crate writes it) so that data is aligned.
    fn header(&self, i: usize) -> Result<Vec<u8>> {
        let s = &self.shards[i];
        let mut obj = Map::new();
        let meta: Map<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        obj.insert("__metadata__".into(), Value::Object(meta));
        let mut offset = 0usize;
        for p in &self.plans[s.first..s.end] {
            let dtype =
                serde_json::to_value(p.dtype).map_err(|e| Error::Internal(e.to_string()))?;
            obj.insert(
                p.name.clone(),
                json!({"dtype": dtype, "shape": p.shape, "data_offsets": [offset, offset + p.nbytes()]}),
            );
            offset += p.nbytes();
        }
        let mut bytes =
            serde_json::to_vec(&Value::Object(obj)).map_err(|e| Error::Internal(e.to_string()))?;
        while bytes.len() % 8 != 0 {
            bytes.push(b' ');
        }
        Ok(bytes)
    }

    /// Appends tensor data. Chunks may be of any size and may span tensors
    /// and shards; the writer switches files at shard boundaries.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.remaining == 0 {
                if self.shard + 1 >= self.shards.len() {
                    return Err(Error::Internal("more tensor data than planned".into()));
                }
                self.close_shard()?;
                self.open_shard(self.shard + 1, None)?;
                continue;
            }
            let n = (self.remaining.min(bytes.len() as u64)) as usize;
            let file = self.file.as_mut().expect("open shard");
            if let Err(e) = file.write(&bytes[..n]) {
                return Err(output_error(self.layout.path(), &file.path, e));
            }
            self.remaining -= n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            let path = f.path.clone();
            f.finish()
                .map_err(|e| output_error(self.layout.path(), &path, e))?;
        }
        Ok(())
    }

    /// Completes the output: checks every planned byte arrived, syncs, writes
    /// the index and copies side files (directory layout), and renames the
    /// result into place.
    pub fn finish(mut self) -> Result<WriteSummary> {
        let result = self.finish_inner();
        if result.is_err() {
            self.cleanup();
        }
        result
    }

    fn finish_inner(&mut self) -> Result<WriteSummary> {
        // Shards after the current one can only be empty (no tensors) here.
        while self.remaining == 0 && self.shard + 1 < self.shards.len() {
            self.close_shard()?;
            self.open_shard(self.shard + 1, None)?;
        }
        if self.remaining != 0 {
            return Err(Error::Internal(format!(
                "{} bytes of tensor data missing",
                self.remaining
            )));
        }
        self.close_shard()?;
        let target = self.layout.path().to_path_buf();
        let data_bytes: u64 = self.shards.iter().map(|s| s.data_bytes).sum();
        let mut notes = Vec::new();
        let files = match self.layout.clone() {
            OutputLayout::File(path) => {
                replace(&self.temp, &path)?;
                unregister(&self.temp);
                vec![path]
            }
            OutputLayout::Directory {
                path, copy_from, ..
            } => {
                if self.shards.len() > 1 {
                    let weight_map: BTreeMap<&str, &str> = self
                        .shards
                        .iter()
                        .flat_map(|s| {
                            self.plans[s.first..s.end]
                                .iter()
                                .map(move |p| (p.name.as_str(), s.file_name.as_str()))
                        })
                        .collect();
                    let index =
                        json!({"metadata": {"total_size": data_bytes}, "weight_map": weight_map});
                    let index_path = self.temp.join(INDEX_FILE);
                    let text = serde_json::to_string_pretty(&index)
                        .map_err(|e| Error::Internal(e.to_string()))?;
                    fs::write(&index_path, text + "\n")
                        .map_err(|e| output_error(&target, &index_path, e))?;
                }
                if let Some(src) = copy_from {
                    notes = copy_side_files(&src, &self.temp, &target)?;
                }
                let files = if self.in_place {
                    // A Ctrl-C waits until every file is swapped in.
                    let _swap = swapping();
                    swap::swap_into(&self.temp, &path)?
                } else {
                    let files = fs::read_dir(&self.temp)
                        .map_err(|e| Error::io(&self.temp, e))?
                        .filter_map(|e| e.ok().map(|e| path.join(e.file_name())))
                        .collect();
                    replace_dir(&self.temp, &path)?;
                    files
                };
                unregister(&self.temp);
                files
            }
        };
        self.finished = true;
        Ok(WriteSummary {
            path: target,
            files,
            tensors: self.plans.len(),
            data_bytes,
            notes,
        })
    }

    fn cleanup(&mut self) {
        self.file = None;
        if self.temp.is_dir() {
            let _ = fs::remove_dir_all(&self.temp);
        } else {
            let _ = fs::remove_file(&self.temp);
        }
        unregister(&self.temp);
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.cleanup();
        }
    }
}

#[cfg(test)]
mod tests;
