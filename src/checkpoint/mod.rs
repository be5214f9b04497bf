//! Checkpoint input: single safetensors files, Hugging Face sharded
//! checkpoints (`*.safetensors.index.json`) and model directories, all
//! memory-mapped and read without copying.
//!
//! Parsing and bounds checks of each file's header are the `safetensors`
//! crate's (`SafeTensors::read_metadata`: header size limit, offsets that tile
//! the data section exactly, shape × dtype = byte length). On top of that this
//! module resolves what a user path means, checks shards against their index,
//! and exposes every tensor as a [`TensorInfo`] whose bytes are a slice of the
//! mapping.

pub mod dtype;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{Error, FormatError, IndexError, Result, TensorError};
use crate::sys::mmap::MappedFile;

/// Name of the single-file weights in a Hugging Face model directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Name of the shard index in a Hugging Face model directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor of a checkpoint: where its bytes live and what they are.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Tensor name as stored in the file.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a 0-dim scalar).
    pub shape: Vec<usize>,
    shard: usize,
    /// Byte range in the shard file (absolute, header included).
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Number of bytes of data.
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// An opened checkpoint (one file or several shards).
#[derive(Debug)]
pub struct Checkpoint {
    source: PathBuf,
    model_dir: Option<PathBuf>,
    shards: Vec<MappedFile>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct IndexFile {
    #[serde(default)]
    weight_map: Option<BTreeMap<String, String>>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, an index JSON, or a model directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            let index = path.join(INDEX_FILE);
            if index.is_file() {
                return Self::open_index(path, &index, Some(path.to_path_buf()));
            }
            let single = path.join(MODEL_FILE);
            if single.is_file() {
                return Self::open_files(path, vec![single], Some(path.to_path_buf()));
            }
            let (indexes, files) = list_weight_files(path)?;
            return match (indexes.as_slice(), files.as_slice()) {
                ([one], _) => Self::open_index(path, one, Some(path.to_path_buf())),
                ([], [one]) => Self::open_files(path, vec![one.clone()], Some(path.to_path_buf())),
                _ => Err(Error::Format {
                    path: path.to_path_buf(),
                    source: FormatError::NoWeights {
                        indexes: indexes.len(),
                        files: files.len(),
                    },
                }),
            };
        }
        if path.to_string_lossy().ends_with(".json") {
            // A bare `model.safetensors.index.json` has the parent "": that
            // is the current directory.
            let dir = path.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                }
            });
            return Self::open_index(path, path, dir);
        }
        Self::open_files(path, vec![path.to_path_buf()], None)
    }

    fn open_index(source: &Path, index: &Path, model_dir: Option<PathBuf>) -> Result<Self> {
        let fail = |source: IndexError| Error::Index {
            path: index.to_path_buf(),
            source,
        };
        let text = crate::read_side_file(index)?;
        let parsed: IndexFile =
            serde_json::from_str(&text).map_err(|e| fail(IndexError::Json(e)))?;
        let weight_map = parsed
            .weight_map
            .ok_or_else(|| fail(IndexError::NoWeightMap))?;
        if weight_map.is_empty() {
            return Err(fail(IndexError::EmptyWeightMap));
        }
        let base = index.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&String> = weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut files = Vec::with_capacity(shard_names.len());
        for name in &shard_names {
            if name.contains('/') || name.contains('\\') || name.as_str() == ".." {
                return Err(fail(IndexError::ShardName {
                    name: name.to_string(),
                }));
            }
            let shard = base.join(name);
            if !shard.is_file() {
                return Err(fail(IndexError::MissingShard { shard }));
            }
            files.push(shard);
        }
        let ckpt = Self::open_files(source, files, model_dir)?;
        // Every tensor named in the index must be in the shard it names, and
        // every tensor in a shard must be listed there.
        for (tensor, shard_name) in &weight_map {
            match ckpt.by_name.get(tensor) {
                None => {
                    return Err(fail(IndexError::NotInShards {
                        tensor: tensor.clone(),
                        shard: shard_name.clone(),
                    }));
                }
                Some(&i) => {
                    let actual = ckpt.shard_path(&ckpt.tensors[i]);
                    if actual
                        .file_name()
                        .map(|f| f.to_string_lossy() != shard_name.as_str())
                        .unwrap_or(true)
                    {
                        return Err(fail(IndexError::WrongShard {
                            tensor: tensor.clone(),
                            shard: shard_name.clone(),
                            actual: actual.to_path_buf(),
                        }));
                    }
                }
            }
        }
        if let Some(t) = ckpt
            .tensors
            .iter()
            .find(|t| !weight_map.contains_key(&t.name))
        {
            return Err(fail(IndexError::Unlisted {
                tensor: t.name.clone(),
                shard: ckpt.shard_path(t).to_path_buf(),
            }));
        }
        Ok(ckpt)
    }

    fn open_files(source: &Path, files: Vec<PathBuf>, model_dir: Option<PathBuf>) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut tensors = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut metadata = BTreeMap::new();
        for (shard_idx, file) in files.iter().enumerate() {
            let mapped = MappedFile::open(file)?;
            let (header_len, parsed) = parse_header(file, mapped.bytes())?;
            if shard_idx == 0
                && let Some(m) = parsed.metadata()
            {
                metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            }
            let data_start = 8 + header_len;
            // Parsing mapped the header's pages, and with them whatever the
            // page cache holds in the same folio (up to 2 MiB of tensor
            // data): drop them, or every open input would keep them mapped.
            mapped.release_covering(0..data_start);
            let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
                parsed.tensors().into_iter().collect();
            // Zero-size tensors can share an offset: break ties by name, so
            // that the order (and every output header built from it) does
            // not depend on hash-map iteration order.
            infos.sort_by(|(na, a), (nb, b)| {
                a.data_offsets.cmp(&b.data_offsets).then_with(|| na.cmp(nb))
            });
            for (name, info) in infos {
                if let Some(&prev) = by_name.get(&name) {
                    let other: &TensorInfo = &tensors[prev];
                    return Err(Error::Index {
                        path: source.to_path_buf(),
                        source: IndexError::TwoShards {
                            tensor: name,
                            first: files[other.shard].clone(),
                            second: file.clone(),
                        },
                    });
                }
                by_name.insert(name.clone(), tensors.len());
                tensors.push(TensorInfo {
                    name,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    shard: shard_idx,
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                });
            }
            shards.push(mapped);
        }
        Ok(Self {
            source: source.to_path_buf(),
            model_dir,
            shards,
            tensors,
            by_name,
            metadata,
        })
    }

    /// The path the user gave.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The model directory when the input was one (or an index inside one):
    /// where config and tokenizer files live.
    pub fn model_dir(&self) -> Option<&Path> {
        self.model_dir.as_deref()
    }

    /// All tensors, in storage order (shard by shard, by offset).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Looks a tensor up by name, or fails naming the checkpoint.
    pub fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.get(name)
            .ok_or_else(|| Error::tensor(&self.source, name, TensorError::Missing))
    }

    /// `__metadata__` of the (first) file.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The shard files this checkpoint maps.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path()).collect()
    }

    /// The file holding `t`.
    pub fn shard_path(&self, t: &TensorInfo) -> &Path {
        self.shards[t.shard].path()
    }

    /// The raw little-endian bytes of `t`, straight from the mapping.
    pub fn bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.shards[t.shard].bytes()[t.start..t.end]
    }

    /// Reads bytes `range` (relative to the tensor's data) of `t` into `buf`
    /// (of `range.len()` bytes) with `pread`, mapping nothing: `None` when
    /// the file's descriptor was not kept (the budget of `sys::descriptors`),
    /// an error naming the file and tensor when the read fails or the file
    /// ends early (it shrank since it was opened).
    pub fn read_into(
        &self,
        t: &TensorInfo,
        range: std::ops::Range<usize>,
        buf: &mut [u8],
    ) -> Option<Result<()>> {
        debug_assert_eq!(range.len(), buf.len());
        let read = self.shards[t.shard].read_at(t.start + range.start, buf)?;
        Some(read.map_err(|e| {
            let source = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                TensorError::Changed
            } else {
                TensorError::Unreadable(e)
            };
            Error::tensor(self.shard_path(t), &t.name, source)
        }))
    }

    /// True when [`Self::read_into`] can read `t`.
    pub fn can_read(&self, t: &TensorInfo) -> bool {
        self.shards[t.shard].can_read()
    }

    /// Closes the descriptors kept for reading: every pass reads this
    /// checkpoint through its mapping from now on (what a checkpoint opened
    /// beyond the descriptor budget does anyway).
    pub fn close_readers(&mut self) {
        self.shards.iter_mut().for_each(MappedFile::close_reader);
    }

    /// Drops the pages of bytes `range` (relative to the tensor's data) of `t`
    /// from the resident set (whole pages inside the range only).
    pub fn release(&self, t: &TensorInfo, range: std::ops::Range<usize>) {
        self.shards[t.shard].release(t.start + range.start..t.start + range.end);
    }

    /// Drops every page that holds any of bytes `range` (relative to the
    /// tensor's data) of `t` from the resident set: unlike [`Self::release`],
    /// the partial pages at either end go too. For streaming: pages shared
    /// with data not yet read are simply faulted back in (from the page
    /// cache) when it is, so a run of consecutive calls leaves nothing
    /// behind at their boundaries.
    pub(crate) fn release_consumed(&self, t: &TensorInfo, range: std::ops::Range<usize>) {
        self.shards[t.shard].release_covering(t.start + range.start..t.start + range.end);
    }

    /// Decodes a float tensor into a new f32 vector.
    pub fn read_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        if !dtype::is_float(t.dtype) {
            return Err(Error::tensor(
                self.shard_path(t),
                &t.name,
                TensorError::NotFloat(t.dtype),
            ));
        }
        let mut out = vec![0f32; t.numel()];
        crate::kernels::decode_f32(t.dtype, self.bytes(t), &mut out);
        Ok(out)
    }

    /// Total number of elements over all tensors.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(TensorInfo::numel).sum()
    }

    /// Total bytes of tensor data.
    pub fn nbytes(&self) -> usize {
        self.tensors.iter().map(TensorInfo::nbytes).sum()
    }
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<(usize, safetensors::tensor::Metadata)> {
    let fail = |source: FormatError| Error::Format {
        path: path.to_path_buf(),
        source,
    };
    if bytes.len() < 8 {
        return Err(fail(FormatError::TooShort { len: bytes.len() }));
    }
    let declared = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if declared > (bytes.len() as u64).saturating_sub(8) {
        return Err(fail(FormatError::HeaderBeyondEnd {
            declared,
            len: bytes.len(),
        }));
    }
    SafeTensors::read_metadata(bytes).map_err(|e| {
        use safetensors::SafeTensorError as E;
        fail(match e {
            E::MetadataIncompleteBuffer => FormatError::DataSize,
            E::InvalidHeaderDeserialization(j) => FormatError::HeaderJson(j),
            E::InvalidHeader(u) => FormatError::HeaderUtf8(u),
            E::HeaderTooLarge => FormatError::HeaderTooLarge,
            other => {
                let reason = other.to_string().to_lowercase();
                // The crate's messages often leave the tensor out: find
                // the entry at fault in the header ourselves.
                let end = 8usize.saturating_add(declared as usize).min(bytes.len());
                match bad_entry(&bytes[8..end]) {
                    Some(tensor) => FormatError::RejectedTensor { tensor, reason },
                    None => FormatError::Rejected(reason),
                }
            }
        })
    })
}

/// The first header entry whose own fields cannot be right: unknown dtype,
/// a shape whose element count overflows, offsets that run backwards or do
/// not span shape × dtype bytes. `None` when every entry is fine on its own
/// (the fault is then between entries or with the file).
fn bad_entry(header: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Entry {
        dtype: serde_json::Value,
        shape: Vec<u64>,
        data_offsets: (u64, u64),
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    map.into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .find(|(_, v)| {
            let Ok(e) = serde_json::from_value::<Entry>(v.clone()) else {
                return true;
            };
            let Ok(dtype) = serde_json::from_value::<Dtype>(e.dtype) else {
                return true;
            };
            let bits = e
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .and_then(|n| n.checked_mul(dtype.bitsize() as u64));
            let (start, end) = e.data_offsets;
            match bits {
                None => true,
                Some(b) => end < start || end - start != b.div_ceil(8),
            }
        })
        .map(|(name, _)| name)
}

fn list_weight_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors.index.json") {
            indexes.push(entry.path());
        } else if name.ends_with(".safetensors") {
            files.push(entry.path());
        }
    }
    indexes.sort();
    files.sort();
    Ok((indexes, files))
}
