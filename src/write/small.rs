//! Small whole-file outputs (plots): written to a fresh temporary beside
//! the target (exclusive create, so never through a planted link), synced,
//! and renamed into place.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::files::output_error;
use super::{register, unregister};
use crate::error::Result;

/// Writes `bytes` to `path` atomically: a reader sees the old file or the
/// new one, never a part. The caller checked `--force` rules.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let temp = parent.join(format!(
        ".{base}.polymerge-tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(|e| output_error(path, &temp, e))?;
    register(&temp);
    let done = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&temp, path));
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
