//! Copying the first input's side files into a directory output: config,
//! tokenizer files, a model card, and the non-weight subfolders of the
//! model directory (sentence-transformers' `1_Pooling/`, `2_Normalize/` …).
//!
//! Never copied: the inputs' weights (any weight file ending, at any depth),
//! training state (`optimizer.pt`, `scheduler.pt`, `rng_state*.pth`,
//! `training_args.bin` by their endings, and `trainer_state.json`, which
//! describes the input's training run, not the merged model), trainer
//! output folders (`checkpoint-*`, `runs`, `logs`, `wandb`), hidden entries,
//! files over [`MAX_SIDE_FILE_BYTES`], and symbolic links that lead outside
//! the model directory (a Hugging Face cache snapshot's links into its
//! repository's `blobs/` are followed).

use std::fs;
use std::path::{Path, PathBuf};

use super::files::output_error;
use crate::error::{Error, Result};

/// The largest side file copied (decimal 100 MB: big tokenizers are tens of
/// MB); larger files are skipped with a note.
pub const MAX_SIDE_FILE_BYTES: u64 = 100_000_000;

/// How deep subfolders are copied, and how many entries at most.
const MAX_DEPTH: usize = 8;
const MAX_ENTRIES: usize = 10_000;

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

/// Training state without a weight ending.
const TRAINING_STATE: &[&str] = &["trainer_state.json"];

/// Folders a trainer writes beside the model, never part of it.
fn is_training_dir(name: &str) -> bool {
    name.starts_with("checkpoint-") || ["runs", "logs", "wandb", "__pycache__"].contains(&name)
}

fn is_weight_file(name: &str) -> bool {
    WEIGHT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

struct Copy<'a> {
    /// Canonical directories a symbolic link may lead into.
    roots: Vec<PathBuf>,
    staging: &'a Path,
    target: &'a Path,
    entries: usize,
    notes: Vec<String>,
}

/// Copies the side files of model directory `src` into `staging`; returns
/// notes on what was skipped that a user may miss (weights inside
/// subfolders, oversized files, links leading outside).
pub(super) fn copy_side_files(src: &Path, staging: &Path, target: &Path) -> Result<Vec<String>> {
    let root = fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
    let mut roots = vec![root.clone()];
    // A Hugging Face cache snapshot: `…/snapshots/REV/x -> ../../blobs/HASH`.
    if root
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "snapshots")
        && let Some(repo) = root.parent().and_then(Path::parent)
    {
        roots.push(repo.join("blobs"));
    }
    let mut c = Copy {
        roots,
        staging,
        target,
        entries: 0,
        notes: Vec::new(),
    };
    c.dir(src, Path::new(""), 0)?;
    Ok(c.notes)
}

impl Copy<'_> {
    fn dir(&mut self, dir: &Path, rel: &Path, depth: usize) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                self.notes.push(format!(
                    "{}: more than {MAX_ENTRIES} entries; the rest of its side files are not copied",
                    dir.display()
                ));
                return Ok(());
            }
            if name.starts_with('.') || TRAINING_STATE.contains(&name.as_str()) {
                continue;
            }
            let path = entry.path();
            let mut meta = entry.metadata().map_err(|e| Error::io(&path, e))?;
            if meta.file_type().is_symlink() {
                match fs::canonicalize(&path) {
                    Ok(to) if self.roots.iter().any(|r| to.starts_with(r)) => {
                        meta = fs::metadata(&to).map_err(|e| Error::io(&path, e))?;
                    }
                    _ => {
                        self.notes.push(format!(
                            "{}: a symbolic link leading outside the model directory; not copied",
                            path.display()
                        ));
                        continue;
                    }
                }
            }
            if meta.is_dir() {
                if is_training_dir(&name) {
                    continue;
                }
                if depth + 1 > MAX_DEPTH {
                    self.notes.push(format!(
                        "{}: nested deeper than {MAX_DEPTH} folders; not copied",
                        path.display()
                    ));
                    continue;
                }
                // Created even when empty: sentence-transformers'
                // `2_Normalize/` holds nothing but must exist.
                let sub = rel.join(&name);
                let to = self.staging.join(&sub);
                fs::create_dir_all(&to).map_err(|e| output_error(self.target, &to, e))?;
                self.dir(&path, &sub, depth + 1)?;
            } else if meta.is_file() {
                if is_weight_file(&name) {
                    if depth > 0 {
                        self.notes.push(format!(
                            "{}: weights in a subfolder of the model directory are neither merged nor copied",
                            path.display()
                        ));
                    }
                    continue;
                }
                if meta.len() > MAX_SIDE_FILE_BYTES {
                    self.notes.push(format!(
                        "{}: {} bytes, larger than the {MAX_SIDE_FILE_BYTES}-byte limit for side files; not copied",
                        path.display(),
                        meta.len()
                    ));
                    continue;
                }
                let to = self.staging.join(rel).join(&name);
                fs::copy(&path, &to).map_err(|e| output_error(self.target, &to, e))?;
            }
            // Sockets, FIFOs, devices: never side files.
        }
        Ok(())
    }
}
