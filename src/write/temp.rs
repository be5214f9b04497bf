//! Temporaries beside the output, and small side outputs (`--save-perm`)
//! written atomically like the checkpoint itself.
//!
//! A temporary's name is `.NAME.polymerge-tmp-` followed by random
//! characters, created exclusively (`O_EXCL`, never through a symbolic
//! link): a file or link planted at a predictable name cannot redirect the
//! write.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, OutputError, Result};

use super::files::{check_output_kind, create_error, refuse_existing};

/// Creates a temporary beside `target` in `parent` with `make` (which must
/// create exclusively and fail with `AlreadyExists` on a clash; another
/// random name is then tried), registers it for removal on a signal, and
/// returns what `make` returned with the path.
pub(super) fn create_in<R>(
    parent: &Path,
    prefix: &str,
    mut make: impl FnMut(&Path) -> std::io::Result<R>,
) -> std::io::Result<(R, PathBuf)> {
    let named = tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(12)
        .make_in(parent, |p| {
            let r = make(p)?;
            super::register(p);
            Ok(r)
        })?;
    // `keep` only disarms the crate's own removal on drop: the writer
    // removes its temporaries itself (and the signal handlers do).
    named.keep().map_err(|e| e.error)
}

/// `.NAME.polymerge-tmp-`: the start of a temporary's name for `target`.
pub(super) fn prefix_for(target: &Path) -> String {
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    format!(".{base}.polymerge-tmp-")
}

/// A file written beside a checkpoint (`--save-perm`), checked before any
/// work like the checkpoint output.
#[derive(Clone, Debug)]
pub struct SideOutput {
    pub path: PathBuf,
    pub force: bool,
}

impl SideOutput {
    /// Checks, before anything is read, that this file can be written
    /// without harm: it is not one of `inputs` nor the checkpoint output
    /// `output`, it is a regular file or does not exist (and then exists
    /// only with `force`), and its directory exists.
    pub fn check(&self, inputs: &[&Path], output: &Path) -> Result<()> {
        let fail = |source| {
            Err(Error::Output {
                path: self.path.clone(),
                source,
            })
        };
        if self.path.as_os_str().to_string_lossy().ends_with('/') || self.path.is_dir() {
            return fail(OutputError::IsDirectory);
        }
        check_output_kind(&self.path)?;
        if let Some(input) = inputs.iter().find(|i| same_file(i, &self.path)) {
            return fail(OutputError::IsInput(input.to_path_buf()));
        }
        if same_file(output, &self.path) {
            return fail(OutputError::IsOutput(output.to_path_buf()));
        }
        refuse_existing(&self.path, self.force)?;
        let parent = parent_of(&self.path);
        if !parent.is_dir() {
            return fail(OutputError::NoDirectory(parent));
        }
        Ok(())
    }

    /// Writes `bytes` atomically (see [`write_atomic`]).
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path, bytes, self.force)
    }
}

/// Whether `a` and `b` name one file: the same inode if both exist, else
/// the same place (canonical directory and file name).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    let place = |p: &Path| {
        let dir = fs::canonicalize(parent_of(p)).ok()?;
        Some(dir.join(p.file_name()?))
    };
    match (place(a), place(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes a small file atomically (see [`super::write_file_atomic`]),
/// refusing an existing `target` without `force`.
pub fn write_atomic(target: &Path, bytes: &[u8], force: bool) -> Result<()> {
    refuse_existing(target, force)?;
    super::write_file_atomic(target, bytes)
}

/// Checks that a file can be created in `parent` (the directory of
/// `target`), by creating and removing a temporary: a read-only or missing
/// directory is reported before any work, not after it.
pub fn probe_directory(parent: &Path, target: &Path) -> Result<()> {
    let create = |p: &Path| fs::OpenOptions::new().write(true).create_new(true).open(p);
    let (file, temp) = create_in(parent, &prefix_for(target), create)
        .map_err(|e| create_error(target, parent, e))?;
    drop(file);
    let _ = fs::remove_file(&temp);
    super::unregister(&temp);
    Ok(())
}
