//! Small whole-file outputs (plots): written to a fresh temporary beside
//! the target (exclusive create, so never through a planted link), synced,
//! and renamed into place.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::files::{create_error, output_error};
use super::unregister;
use crate::error::Result;

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// new one, never a part. The caller checked `--force` rules.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let create = |p: &Path| OpenOptions::new().write(true).create_new(true).open(p);
    let (mut f, temp) = super::temp::create_in(parent, &super::temp::prefix_for(path), create)
        .map_err(|e| create_error(path, parent, e))?;
    let done = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&temp, path));
    drop(f);
    unregister(&temp);
    if let Err(e) = done {
        let _ = fs::remove_file(&temp);
        return Err(output_error(path, &temp, e));
    }
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}
