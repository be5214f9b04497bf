//! Opening input files without blocking or reading without bound: the one
//! gate every file polymerge reads goes through.
//!
//! A FIFO opened for reading blocks until a writer appears, and a character
//! device such as `/dev/zero` never ends. So the file type is checked from
//! the path's metadata *before* opening, the open itself is non-blocking
//! (`O_NONBLOCK`: if the path was swapped for a FIFO in between, `open`
//! returns at once), and the opened descriptor is checked again (`fstat`).
//! Side files (index JSON, specs, permutation files, `config.json`) are then
//! read up to a size limit.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, ReadError, Result};

/// Largest side file polymerge reads (index JSON, spec, permutation file,
/// `config.json`): 256 MiB. A permutation file of a 70 B model is ~20 MB.
pub const SIDE_FILE_LIMIT: u64 = 256 << 20;

/// What a path that is not a regular file is, in words (for errors).
pub(crate) fn kind(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

fn check(path: &Path, meta: &Metadata) -> Result<()> {
    if meta.is_file() {
        Ok(())
    } else {
        Err(Error::Read {
            path: path.to_path_buf(),
            source: ReadError::NotRegular(kind(meta)),
        })
    }
}

/// Opens `path` for reading if it is a regular file (following symbolic
/// links), without ever blocking on a FIFO or device.
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    check(path, &meta)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc_nonblock());
    }
    let file = opts.open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    check(path, &meta)?;
    Ok(file)
}

#[cfg(target_os = "linux")]
fn libc_nonblock() -> i32 {
    libc::O_NONBLOCK
}

#[cfg(all(unix, not(target_os = "linux")))]
fn libc_nonblock() -> i32 {
    0
}

/// Reads a whole side file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let too_large = |size| Error::Read {
        path: path.to_path_buf(),
        source: ReadError::TooLarge { size, limit },
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a whole side file (index JSON, spec, permutation file,
/// `config.json`, recipe) of at most [`SIDE_FILE_LIMIT`] bytes, as UTF-8
/// text, through the same regular-file gate as checkpoints.
pub fn read_side_file(path: &Path) -> Result<String> {
    let bytes = read_limited(path, SIDE_FILE_LIMIT)?;
    String::from_utf8(bytes).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        source: ReadError::NotUtf8(e.utf8_error()),
    })
}
