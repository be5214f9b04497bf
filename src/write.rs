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
//! Large shards are written with direct I/O where the filesystem allows it
//! (see [`ShardFile`]), so writing costs little CPU and no page cache.

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
    file: Option<ShardFile>,
    /// Bytes still expected for the current shard.
    remaining: u64,
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
        refuse_existing(&target, force)?;
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
        let data_bytes = self.shards[i].data_bytes;
        let mut file =
            ShardFile::create(&path, data_bytes).map_err(|e| output_error(&target, &path, e))?;
        if matches!(self.layout, OutputLayout::File(_)) {
            register(&path);
        }
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

/// The file of the shard being written, appended to strictly sequentially.
///
/// Where it can (Linux, a filesystem that supports it), the data goes to disk
/// with direct I/O (`O_DIRECT`): whole [`DIRECT_BLOCK`]s staged in an aligned
/// buffer and written straight from it, bypassing the page cache. Writing a
/// checkpoint through the page cache costs about as much CPU as averaging it
/// (allocating, filling and later writing back a page-cache page per 4 KiB,
/// and evicting other cached data, such as the inputs, to make room), and
/// leaves the whole file dirty for the final `fsync` to wait on. The last
/// partial block is written through the page cache before that `fsync`. If
/// the filesystem refuses `O_DIRECT` (at open or at the first write), the
/// shard is written through the page cache instead, with writeback started
/// every [`WRITEBACK_BYTES`] so the `fsync` has little left to do.
struct ShardFile {
    path: PathBuf,
    file: File,
    /// Staging for direct I/O; `None` when writing through the page cache.
    direct: Option<DirectStage>,
    /// Bytes accepted so far (header included).
    written: u64,
    /// Bytes handed to the kernel for writeback (page-cache mode).
    flushed: u64,
}

/// An aligned buffer of one [`DIRECT_BLOCK`] and the file offset it starts at.
struct DirectStage {
    buf: Vec<u8>,
    /// Where the aligned block starts inside `buf`.
    start: usize,
    /// Bytes staged.
    len: usize,
    /// File offset of the staged bytes.
    pos: u64,
}

impl DirectStage {
    fn new() -> Self {
        let buf = vec![0u8; DIRECT_BLOCK + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Self {
            buf,
            start,
            len: 0,
            pos: 0,
        }
    }

    fn staged(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl ShardFile {
    /// Creates (truncates) `path`; `data_bytes` is the planned size of the
    /// tensor data, to decide whether direct I/O is worth it.
    fn create(path: &Path, data_bytes: u64) -> std::io::Result<Self> {
        if data_bytes >= DIRECT_MIN_BYTES
            && let Some(file) = open_direct(path)
        {
            return Ok(Self {
                path: path.to_path_buf(),
                file,
                direct: Some(DirectStage::new()),
                written: 0,
                flushed: 0,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: File::create(path)?,
            direct: None,
            written: 0,
            flushed: 0,
        })
    }

    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while let Some(stage) = &mut self.direct {
            if bytes.is_empty() {
                return Ok(());
            }
            let n = bytes.len().min(DIRECT_BLOCK - stage.len);
            let at = stage.start + stage.len;
            stage.buf[at..at + n].copy_from_slice(&bytes[..n]);
            stage.len += n;
            self.written += n as u64;
            bytes = &bytes[n..];
            if stage.len == DIRECT_BLOCK {
                match self.file.write_all(stage.staged()) {
                    Ok(()) => {
                        stage.pos += DIRECT_BLOCK as u64;
                        stage.len = 0;
                    }
                    // Direct I/O refused (alignment, filesystem): go on
                    // through the page cache.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                        self.leave_direct()?
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.flushed >= WRITEBACK_BYTES {
            crate::sys::mmap::start_writeback(&self.file, self.flushed..self.written);
            self.flushed = self.written;
        }
        Ok(())
    }

    /// Switches to page-cache writes: reopens the file without `O_DIRECT`
    /// and writes what is staged, from its start (over whatever part of it a
    /// failed direct write may have left).
    fn leave_direct(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        if let Some(stage) = self.direct.take() {
            let mut file = fs::OpenOptions::new().write(true).open(&self.path)?;
            file.seek(SeekFrom::Start(stage.pos))?;
            file.write_all(stage.staged())?;
            self.file = file;
            self.flushed = stage.pos;
        }
        Ok(())
    }

    /// Writes what is staged and syncs the file to disk.
    fn finish(mut self) -> std::io::Result<()> {
        self.leave_direct()?;
        self.file.sync_all()
    }
}

/// Opens `path` for direct I/O, or `None` where that is not available.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

/// Bytes per direct write: 8 MiB, large enough that one request per block
/// keeps the disk streaming.
const DIRECT_BLOCK: usize = 8 << 20;
/// Alignment of direct I/O buffers and file offsets: 4 KiB, a multiple of the
/// logical block size of common disks (512 B or 4 KiB).
const DIRECT_ALIGN: usize = 4096;
/// Shards with less tensor data than this are written through the page cache.
const DIRECT_MIN_BYTES: u64 = 2 * DIRECT_BLOCK as u64;

/// Fails if `target` exists and `force` is not set. [`CheckpointWriter::create`]
/// checks this too; commands that do expensive work first (alignment) call
/// it up front so that a user is not told after minutes of work.
pub fn refuse_existing(target: &Path, force: bool) -> Result<()> {
    if target.exists() && !force {
        return Err(Error::Output {
            path: target.to_path_buf(),
            reason: "already exists (use --force to overwrite)".into(),
        });
    }
    Ok(())
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

    /// Deterministic bytes that differ at every offset modulo 251.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_large_shard_written_in_odd_pieces_reads_back_exactly() {
        // 20 MiB + 4 bytes of data: above DIRECT_MIN_BYTES (direct I/O where
        // the filesystem supports it), not a multiple of the block size.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.safetensors");
        let n = (5 << 20) + 1;
        let mut w = CheckpointWriter::create(
            OutputLayout::File(out.clone()),
            vec![plan("big", n)],
            BTreeMap::new(),
            false,
        )
        .unwrap();
        let data = pattern(4 * n);
        for piece in data.chunks((1 << 20) + 7) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap();
        let bytes = fs::read(&out).unwrap();
        let h = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 8 + h + data.len());
        assert!(bytes[8 + h..] == data[..], "data differs");
    }

    #[test]
    fn a_shard_that_leaves_direct_io_midway_is_still_exact() {
        // As when the filesystem refuses a direct write: what is staged is
        // rewritten through the page cache and writing goes on there.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let data = pattern(3 * DIRECT_BLOCK + 12345);
        let mut f = ShardFile::create(&path, data.len() as u64).unwrap();
        let (a, rest) = data.split_at(DIRECT_BLOCK + 999);
        let (b, c) = rest.split_at(DIRECT_BLOCK);
        f.write(a).unwrap();
        f.leave_direct().unwrap();
        f.write(b).unwrap();
        f.write(c).unwrap();
        f.finish().unwrap();
        assert!(fs::read(&path).unwrap() == data, "data differs");
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
