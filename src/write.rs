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

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use safetensors::Dtype;
use serde_json::{Map, Value, json};

use crate::checkpoint::{INDEX_FILE, MODEL_FILE};
use crate::error::{Error, Result};

/// Default largest shard of a directory output: 5 GB, the default of
/// `transformers`' `save_pretrained(max_shard_size="5GB")` (decimal units).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// Written bytes after which [`CheckpointWriter`] starts their writeback.
const WRITEBACK_BYTES: u64 = 32 << 20;

/// Weight file endings that are not copied from an input model directory.
const WEIGHT_SUFFIXES: &[&str] = &[
    ".safetensors",
    ".safetensors.index.json",
    ".bin",
    ".bin.index.json",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".onnx",
];

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

/// What was written.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub data_bytes: u64,
}

/// Temporary paths to remove if the process is interrupted (see
/// [`remove_temporaries`]); the binary calls that from its signal handler.
static LIVE_TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every temporary file or directory of writers still in progress.
/// Meant for a Ctrl-C handler: the process exits right after.
pub fn remove_temporaries() {
    if let Ok(list) = LIVE_TEMPORARIES.lock() {
        for p in list.iter() {
            if p.is_dir() {
                let _ = fs::remove_dir_all(p);
            } else {
                let _ = fs::remove_file(p);
            }
        }
    }
}

fn register(p: &Path) {
    if let Ok(mut l) = LIVE_TEMPORARIES.lock() {
        l.push(p.to_path_buf());
    }
}

fn unregister(p: &Path) {
    if let Ok(mut l) = LIVE_TEMPORARIES.lock() {
        l.retain(|x| x != p);
    }
}

struct ShardPlan {
    file_name: String,
    first: usize,
    end: usize,
    data_bytes: u64,
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
    file: Option<File>,
    /// Bytes still expected for the current shard.
    remaining: u64,
    /// Bytes of the current shard written so far (header included), and how
    /// many of them have been handed to the kernel for writeback.
    written: u64,
    flushed: u64,
    finished: bool,
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
        let target = layout.path().to_path_buf();
        if target.exists() && !force {
            return Err(Error::Output {
                path: target,
                reason: "already exists (use --force to overwrite)".into(),
            });
        }
        if let OutputLayout::File(_) = layout
            && target.is_dir()
        {
            return Err(Error::Output {
                path: target,
                reason: "is a directory; a .safetensors output must be a file".into(),
            });
        }
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(Error::Output {
                path: target,
                reason: format!("directory `{}` does not exist", parent.display()),
            });
        }
        let base = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let temp = parent.join(format!(".{base}.polymerge-tmp-{}", std::process::id()));
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
        if let OutputLayout::Directory { .. } = layout {
            if temp.exists() {
                let _ = fs::remove_dir_all(&temp);
            }
            fs::create_dir(&temp).map_err(|e| output_error(&target, &parent, e))?;
            register(&temp);
        }
        let mut writer = Self {
            layout,
            plans,
            shards,
            metadata,
            temp,
            shard: 0,
            file: None,
            remaining: 0,
            written: 0,
            flushed: 0,
            finished: false,
        };
        writer.open_shard(0).inspect_err(|_| writer.cleanup())?;
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

    fn open_shard(&mut self, i: usize) -> Result<()> {
        let path = self.shard_path(i);
        let target = self.layout.path().to_path_buf();
        let mut file = File::create(&path).map_err(|e| output_error(&target, &path, e))?;
        if matches!(self.layout, OutputLayout::File(_)) {
            register(&path);
        }
        let header = self.header(i)?;
        file.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(&header))
            .map_err(|e| output_error(&target, &path, e))?;
        self.shard = i;
        self.remaining = self.shards[i].data_bytes;
        self.written = 8 + header.len() as u64;
        self.flushed = 0;
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
            let dtype = serde_json::to_value(p.dtype).map_err(|e| Error::Invalid(e.to_string()))?;
            obj.insert(
                p.name.clone(),
                json!({"dtype": dtype, "shape": p.shape, "data_offsets": [offset, offset + p.nbytes()]}),
            );
            offset += p.nbytes();
        }
        let mut bytes =
            serde_json::to_vec(&Value::Object(obj)).map_err(|e| Error::Invalid(e.to_string()))?;
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
                    return Err(Error::Invalid(
                        "internal error: more tensor data than planned".into(),
                    ));
                }
                self.close_shard()?;
                self.open_shard(self.shard + 1)?;
                continue;
            }
            let n = (self.remaining.min(bytes.len() as u64)) as usize;
            let path = self.shard_path(self.shard);
            let target = self.layout.path().to_path_buf();
            self.file
                .as_mut()
                .expect("open shard")
                .write_all(&bytes[..n])
                .map_err(|e| output_error(&target, &path, e))?;
            self.remaining -= n as u64;
            self.written += n as u64;
            bytes = &bytes[n..];
            if self.written - self.flushed >= WRITEBACK_BYTES {
                self.start_writeback();
            }
        }
        Ok(())
    }

    /// Starts (without waiting for) writeback of the bytes written since the
    /// last call, so the disk works while the merge goes on and the `fsync`
    /// before the rename has little left to do. Without it all of the output
    /// sits dirty in the page cache until that `fsync` (the kernel's own
    /// background writeback starts only at 10% of RAM dirty), which then
    /// waits for the whole file.
    fn start_writeback(&mut self) {
        if let Some(f) = &self.file {
            crate::checkpoint::start_writeback(f, self.flushed..self.written);
        }
        self.flushed = self.written;
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            let path = self.shard_path(self.shard);
            f.sync_all()
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
            self.open_shard(self.shard + 1)?;
        }
        if self.remaining != 0 {
            return Err(Error::Invalid(format!(
                "internal error: {} bytes of tensor data missing",
                self.remaining
            )));
        }
        self.close_shard()?;
        let target = self.layout.path().to_path_buf();
        let data_bytes: u64 = self.shards.iter().map(|s| s.data_bytes).sum();
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
                        .map_err(|e| Error::Invalid(e.to_string()))?;
                    fs::write(&index_path, text + "\n")
                        .map_err(|e| output_error(&target, &index_path, e))?;
                }
                if let Some(src) = copy_from {
                    copy_side_files(&src, &self.temp, &target)?;
                }
                let files = fs::read_dir(&self.temp)
                    .map_err(|e| Error::io(&self.temp, e))?
                    .filter_map(|e| e.ok().map(|e| path.join(e.file_name())))
                    .collect();
                replace_dir(&self.temp, &path)?;
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

/// Splits tensors into consecutive shards of at most `max` data bytes (a
/// tensor larger than `max` gets a shard of its own), named as
/// `transformers` names them: `model-00001-of-00003.safetensors`. A model
/// that fits in one shard is written as plain `model.safetensors`.
fn split_shards(plans: &[TensorPlan], max: u64) -> Vec<ShardPlan> {
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

fn copy_side_files(src: &Path, staging: &Path, target: &Path) -> Result<()> {
    for entry in fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || name.starts_with('.') || WEIGHT_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let to = staging.join(&name);
        fs::copy(entry.path(), &to).map_err(|e| output_error(target, &to, e))?;
    }
    Ok(())
}

/// Renames a finished temporary file over `target`.
fn replace(temp: &Path, target: &Path) -> Result<()> {
    fs::rename(temp, target).map_err(|e| Error::io(target, e))?;
    sync_parent(target);
    Ok(())
}

/// Moves a finished staging directory to `target`, replacing an existing
/// directory or file there (only reached with `--force`).
fn replace_dir(staging: &Path, target: &Path) -> Result<()> {
    if target.exists() {
        // `.NAME.polymerge-tmp-PID` → `.NAME.polymerge-old-PID`: a name of
        // our own, never a user's `.NAME.old` (which would be deleted below).
        let old = staging.with_extension(format!("polymerge-old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&old);
        fs::rename(target, &old).map_err(|e| Error::io(target, e))?;
        if let Err(e) = fs::rename(staging, target) {
            let _ = fs::rename(&old, target);
            return Err(Error::io(target, e));
        }
        if old.is_dir() {
            let _ = fs::remove_dir_all(&old);
        } else {
            let _ = fs::remove_file(&old);
        }
    } else {
        fs::rename(staging, target).map_err(|e| Error::io(target, e))?;
    }
    sync_parent(target);
    Ok(())
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

fn output_error(target: &Path, at: &Path, e: std::io::Error) -> Error {
    let reason = if at == target {
        format!("cannot write: {e}")
    } else {
        format!("cannot write (temporary `{}`): {e}", at.display())
    };
    Error::Output {
        path: target.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, n: usize) -> TensorPlan {
        TensorPlan {
            name: name.into(),
            dtype: Dtype::F32,
            shape: vec![n],
        }
    }

    #[test]
    fn shards_split_before_the_tensor_that_would_overflow() {
        // 40 + 40 bytes fit in 100, the third 40 does not: shards [a b] [c].
        let p = vec![plan("a", 10), plan("b", 10), plan("c", 10)];
        let s = split_shards(&p, 100);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].first, s[0].end, s[0].data_bytes), (0, 2, 80));
        assert_eq!(s[1].file_name, "model-00002-of-00002.safetensors");
    }

    #[test]
    fn a_tensor_larger_than_the_shard_limit_gets_a_shard_of_its_own() {
        let p = vec![plan("small", 1), plan("huge", 100), plan("tail", 1)];
        let s = split_shards(&p, 16);
        let spans: Vec<_> = s.iter().map(|s| (s.first, s.end)).collect();
        assert_eq!(spans, vec![(0, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn a_model_that_fits_one_shard_is_plain_model_safetensors() {
        let s = split_shards(&[plan("a", 4)], DEFAULT_MAX_SHARD_BYTES);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].file_name, MODEL_FILE);
    }

    #[test]
    fn headers_are_padded_to_eight_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        let mut w = CheckpointWriter::create(
            OutputLayout::File(out.clone()),
            vec![plan("abc", 3)],
            BTreeMap::new(),
            false,
        )
        .unwrap();
        w.write(&[0u8; 12]).unwrap();
        w.finish().unwrap();
        let bytes = fs::read(&out).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0);
        assert_eq!(bytes.len(), 8 + n + 12);
    }

    #[test]
    fn a_dropped_unfinished_writer_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        {
            let mut w = CheckpointWriter::create(
                OutputLayout::File(out.clone()),
                vec![plan("abc", 3)],
                BTreeMap::new(),
                false,
            )
            .unwrap();
            w.write(&[0u8; 4]).unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_existing_output_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        fs::write(&out, b"keep me").unwrap();
        let err = CheckpointWriter::create(
            OutputLayout::File(out.clone()),
            vec![plan("a", 1)],
            BTreeMap::new(),
            false,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(fs::read(&out).unwrap(), b"keep me");
    }
}
