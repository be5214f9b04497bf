//! Filesystem steps around the data: refusing an existing output, atomic
//! replacement of the target, syncing directories.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{Error, OutputError, Result};

/// Fails if `target` exists and `force` is not set. [`super::CheckpointWriter::create`]
/// checks this too; commands that do expensive work first (alignment) call
/// it up front so that a user is not told after minutes of work.
pub fn refuse_existing(target: &Path, force: bool) -> Result<()> {
    check_output_kind(target)?;
    if target.exists() && !force {
        return Err(Error::Output {
            path: target.to_path_buf(),
            source: OutputError::Exists,
        });
    }
    Ok(())
}

/// Fails if `target` exists but is neither a regular file nor a directory
/// (a device node, FIFO or socket, also behind a symbolic link): polymerge
/// never replaces those, not even with `--force`.
pub fn check_output_kind(target: &Path) -> Result<()> {
    let Ok(meta) = fs::metadata(target) else {
        return Ok(());
    };
    if meta.is_file() || meta.is_dir() {
        return Ok(());
    }
    let kind = crate::sys::read::kind(&meta);
    Err(Error::Output {
        path: target.to_path_buf(),
        source: OutputError::NotFileOrDirectory(kind),
    })
}

/// Renames a finished temporary file over `target`.
pub(super) fn replace(temp: &Path, target: &Path) -> Result<()> {
    fs::rename(temp, target).map_err(|e| Error::io(target, e))?;
    sync_parent(target);
    Ok(())
}

/// Moves a finished staging directory to `target`, replacing an existing
/// directory or file there (only reached with `--force`).
pub(super) fn replace_dir(staging: &Path, target: &Path) -> Result<()> {
    // A Ctrl-C now waits until the swap is whole (see `swapping`).
    let _swap = super::swapping();
    if target.exists() {
        // `.NAME.polymerge-tmp-PID` → `.NAME.polymerge-old-PID`: a name of
        // our own, never a user's `.NAME.old` (which would be deleted below).
        let name = staging.file_name().unwrap_or_default().to_string_lossy();
        let old = staging.with_file_name(name.replace(".polymerge-tmp-", ".polymerge-old-"));
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

pub(super) fn sync_parent(path: &Path) {
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

pub(super) fn output_error(target: &Path, at: &Path, e: std::io::Error) -> Error {
    Error::Output {
        path: target.to_path_buf(),
        source: OutputError::Write {
            temporary: (at != target).then(|| at.to_path_buf()),
            source: e,
        },
    }
}

/// A temporary could not be created in the output's directory `dir`
/// (read-only, full, no permission).
pub(super) fn create_error(target: &Path, dir: &Path, e: std::io::Error) -> Error {
    Error::Output {
        path: target.to_path_buf(),
        source: OutputError::Create {
            dir: dir.to_path_buf(),
            source: e,
        },
    }
}
