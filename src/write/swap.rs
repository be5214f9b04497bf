//! Replacing the output inside an existing model directory (`-o DIR
//! --force`): only the files polymerge writes change; everything else in
//! the directory (optimizer state, logs, other files of the user) stays.
//!
//! The new files were staged in a hidden directory inside the target (same
//! filesystem, so every rename is atomic). They are checked against what is
//! in the way before anything moves, then renamed into place one by one:
//! copied side files first, then the weight files, the index last. Weight
//! files of an older polymerge-style output that the new output does not
//! rewrite (the old index, shards `model-0000k-of-0000n.safetensors` that
//! index names, a plain `model.safetensors`) are removed after that, since a
//! loader would otherwise pick them up; nothing else is ever removed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::checkpoint::{INDEX_FILE, MODEL_FILE};
use crate::error::{Error, OutputError, Result};

/// Whether `name` is a file name polymerge writes for weights:
/// `model.safetensors` or `model-00001-of-00003.safetensors`.
pub(super) fn is_weight_name(name: &str) -> bool {
    if name == MODEL_FILE {
        return true;
    }
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let mut parts = rest.split("-of-");
    match (parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(n), None) => [k, n]
            .iter()
            .all(|s| s.len() >= 5 && s.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    }
}

/// Every folder and every regular file under `staging`, as paths relative
/// to it.
fn staged_files(staging: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut dirs = Vec::new();
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = staging.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(&dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            let t = e.file_type().map_err(|err| Error::io(e.path(), err))?;
            if t.is_dir() {
                dirs.push(r.clone());
                stack.push(r);
            } else {
                out.push(r);
            }
        }
    }
    Ok((dirs, out))
}

fn blocked(target: &Path, entry: PathBuf, reason: &'static str) -> Error {
    Error::Output {
        path: target.to_path_buf(),
        source: OutputError::Blocked { entry, reason },
    }
}

/// Fails, before anything moves, if a staged file (or folder, `dirs`)
/// cannot be put at its place: a directory where a file goes, a file where
/// a folder goes, or a symbolic link where a folder goes (writing through it
/// could land outside the directory).
fn check_way(target: &Path, paths: &[PathBuf], dirs: bool) -> Result<()> {
    for rel in paths {
        let mut at = target.to_path_buf();
        let mut parts = rel.components().peekable();
        while let Some(c) = parts.next() {
            at.push(c);
            let Ok(meta) = fs::symlink_metadata(&at) else {
                break; // absent: created (parents) or renamed to (file)
            };
            let last = parts.peek().is_none();
            let t = meta.file_type();
            let folder = dirs || !last;
            if !folder && t.is_dir() {
                return Err(blocked(target, at, "a directory is in the way"));
            }
            if folder && t.is_symlink() {
                return Err(blocked(target, at, "it is a symbolic link"));
            }
            if folder && !t.is_dir() {
                return Err(blocked(target, at, "it is not a directory"));
            }
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct OldIndex {
    #[serde(default)]
    weight_map: std::collections::BTreeMap<String, String>,
}

/// Weight files of the old output that the new one leaves stale: the old
/// index and `model.safetensors` when not rewritten, and the shards the old
/// index names (polymerge's shard names only) that are not rewritten.
fn stale_weights(target: &Path, new: &BTreeSet<&str>) -> Vec<PathBuf> {
    let mut stale = BTreeSet::new();
    let index = target.join(INDEX_FILE);
    if let Ok(text) = crate::read_side_file(&index)
        && let Ok(old) = serde_json::from_str::<OldIndex>(&text)
    {
        stale.extend(old.weight_map.into_values().filter(|f| is_weight_name(f)));
    }
    stale.insert(MODEL_FILE.to_string());
    stale.insert(INDEX_FILE.to_string());
    stale
        .into_iter()
        .filter(|f| !new.contains(f.as_str()))
        .map(|f| target.join(f))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// Moves the files staged in `staging` (inside `target`) into `target`,
/// replacing files of the same names, and removes stale weight files of an
/// earlier output. Returns the files written.
pub(super) fn swap_into(staging: &Path, target: &Path) -> Result<Vec<PathBuf>> {
    let (dirs, files) = staged_files(staging)?;
    check_way(target, &dirs, true)?;
    check_way(target, &files, false)?;
    let top: BTreeSet<&str> = files
        .iter()
        .filter(|f| f.components().count() == 1)
        .filter_map(|f| f.to_str())
        .collect();
    let stale = stale_weights(target, &top);
    let has_index = top.contains(INDEX_FILE);
    let is_weight = |f: &Path| f.to_str().is_some_and(is_weight_name);
    let index = Path::new(INDEX_FILE);
    let side = files
        .iter()
        .filter(|f| !is_weight(f) && f.as_path() != index);
    let weights = files.iter().filter(|f| is_weight(f));
    let rename = |rel: &Path| -> Result<()> {
        let to = target.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        fs::rename(staging.join(rel), &to).map_err(|e| Error::io(&to, e))
    };
    for d in &dirs {
        let to = target.join(d);
        fs::create_dir_all(&to).map_err(|e| Error::io(&to, e))?;
    }
    for f in side {
        rename(f)?;
    }
    // A sharded output replaces the index last; until then, no index is
    // better than an old index pointing into new shards.
    if has_index {
        remove_file_if_present(&target.join(INDEX_FILE))?;
    }
    for f in weights {
        rename(f)?;
    }
    if has_index {
        rename(index)?;
    }
    for p in &stale {
        remove_file_if_present(p)?;
    }
    sync_dir(target);
    let _ = fs::remove_dir_all(staging);
    Ok(files.iter().map(|f| target.join(f)).collect())
}

fn remove_file_if_present(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(p, e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
