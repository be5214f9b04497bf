//! One shard file, appended to strictly sequentially, through the page cache
//! with early writeback, or with direct I/O where the filesystem allows it.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::WriteMode;

/// Written bytes after which [`CheckpointWriter`] starts their writeback.
const WRITEBACK_BYTES: u64 = 32 << 20;

/// The file of the shard being written, appended to strictly sequentially.
///
/// With [`WriteMode::Direct`], where it can (Linux, a filesystem that
/// supports it), the data goes to disk with direct I/O (`O_DIRECT`): whole [`DIRECT_BLOCK`]s staged in an aligned
/// buffer and written straight from it, bypassing the page cache. Writing a
/// checkpoint through the page cache costs about as much CPU as averaging it
/// (allocating, filling and later writing back a page-cache page per 4 KiB,
/// and evicting other cached data, such as the inputs, to make room), and
/// leaves the whole file dirty for the final `fsync` to wait on. The last
/// partial block is written through the page cache before that `fsync`. If
/// the filesystem refuses `O_DIRECT` (at open or at the first write), the
/// shard is written through the page cache instead, with writeback started
/// every [`WRITEBACK_BYTES`] so the `fsync` has little left to do.
pub(super) struct ShardFile {
    pub(super) path: PathBuf,
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
    /// Creates `path`, which must not exist (`O_EXCL`, and `O_NOFOLLOW` so
    /// that a symbolic link planted there is never followed); `data_bytes`
    /// is the planned size of the tensor data, to decide whether direct I/O
    /// (if `mode` asks for it) is worth it.
    pub(super) fn create(path: &Path, data_bytes: u64, mode: WriteMode) -> std::io::Result<Self> {
        if mode == WriteMode::Direct
            && data_bytes >= DIRECT_MIN_BYTES
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
            file: new_file(path, 0)?,
            direct: None,
            written: 0,
            flushed: 0,
        })
    }

    pub(super) fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
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
    pub(super) fn leave_direct(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        if let Some(stage) = self.direct.take() {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .custom_flags(nofollow())
                .open(&self.path)?;
            file.seek(SeekFrom::Start(stage.pos))?;
            file.write_all(stage.staged())?;
            self.file = file;
            self.flushed = stage.pos;
        }
        Ok(())
    }

    /// Writes what is staged and syncs the file to disk.
    pub(super) fn finish(mut self) -> std::io::Result<()> {
        self.leave_direct()?;
        self.file.sync_all()
    }
}

/// Creates `path` exclusively, never through a symbolic link.
fn new_file(path: &Path, flags: i32) -> std::io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(flags | nofollow())
        .open(path)
}

#[cfg(target_os = "linux")]
fn nofollow() -> i32 {
    libc::O_NOFOLLOW
}

#[cfg(not(target_os = "linux"))]
fn nofollow() -> i32 {
    0
}

/// Creates `path` for direct I/O, or `None` where that is not available
/// (the file is then not created).
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    let file = new_file(path, libc::O_DIRECT).ok()?;
    Some(file)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

/// Bytes per direct write: 8 MiB, large enough that one request per block
/// keeps the disk streaming.
pub(super) const DIRECT_BLOCK: usize = 8 << 20;
/// Alignment of direct I/O buffers and file offsets: 4 KiB, a multiple of the
/// logical block size of common disks (512 B or 4 KiB).
const DIRECT_ALIGN: usize = 4096;
/// Shards with less tensor data than this are written through the page cache.
pub(super) const DIRECT_MIN_BYTES: u64 = 2 * DIRECT_BLOCK as u64;
