//! Memory-mapped checkpoint files, and the one write-side OS hint.
//!
//! A checkpoint is mapped read-only and never copied as a whole; tensors are
//! decoded straight from the mapping. After a stretch of a tensor has been
//! consumed, [`MappedFile::release`] tells the kernel we will not need those
//! pages again (`madvise(MADV_DONTNEED)`), so file pages do not pile up in the
//! process's resident set while a multi-gigabyte model streams through.
//! While the descriptor budget allows ([`super::descriptors`]), the file's
//! descriptor stays open too, for passes that read the file in order
//! ([`MappedFile::read_at`]) rather than map its pages.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};

use crate::error::{Error, Result};

/// A read-only mapping of one file on disk.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    /// Names the file if reading the mapping faults (`SIGBUS`); retired
    /// before the mapping goes (fields drop in declaration order).
    _registered: Option<super::signals::MappingGuard>,
    map: Mmap,
    /// The descriptor, kept for `pread` while the budget allows.
    reader: Option<(File, super::descriptors::Held)>,
}

impl MappedFile {
    /// Maps `path` read-only. The file descriptor stays open for reads while
    /// the descriptor budget allows, and is closed right away beyond it (the
    /// mapping keeps the file alive), so hundreds of checkpoints can be open
    /// at once without running into the descriptor limit.
    pub fn open(path: &Path) -> Result<Self> {
        let file: File = super::read::open_regular(path)?;
        // SAFETY: the mapping is read-only and private to this process. The
        // usual caveat of file mappings applies: if another process truncates
        // or rewrites the file while it is mapped, reads may fault or see new
        // bytes. polymerge itself never writes to a file it has mapped: outputs
        // go to a fresh temporary file that is renamed over the target, which
        // leaves the mapped inode untouched.
        // A file that shrinks while mapped raises SIGBUS on the next read of
        // a page past its new end: the handler in `signals` turns that into
        // one line naming this file, after removing the temporaries.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let registered = (!map.is_empty())
            .then(|| super::signals::register_mapping(path, map.as_ptr() as usize, map.len()));
        let reader = super::descriptors::hold().map(|held| (file, held));
        Ok(Self {
            path: path.to_path_buf(),
            map,
            _registered: registered,
            reader,
        })
    }

    /// Fills `buf` with the file's bytes from `offset` on, with `pread`
    /// (nothing is mapped): `None` when the descriptor was not kept.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Option<std::io::Result<()>> {
        use std::os::unix::fs::FileExt;
        let (file, _) = self.reader.as_ref()?;
        Some(file.read_exact_at(buf, offset as u64))
    }

    /// True when [`Self::read_at`] can read.
    pub fn can_read(&self) -> bool {
        self.reader.is_some()
    }

    /// Closes the kept descriptor: the file is read through the mapping
    /// from now on.
    pub fn close_reader(&mut self) {
        self.reader = None;
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The path this mapping was made from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hints that the bytes in `range` will not be read again soon, dropping
    /// the whole pages inside it from this process's resident set. Partial
    /// pages at either end are kept. Failures are ignored: this is only a hint.
    pub fn release(&self, range: Range<usize>) {
        let page = RELEASE_ALIGN;
        let start = range.start.div_ceil(page) * page;
        let end = (range.end.min(self.map.len()) / page) * page;
        self.drop_pages(start, end);
    }

    /// As [`Self::release`], but also drops the partial pages at either end
    /// (a later read of bytes there faults them back in).
    pub fn release_covering(&self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let page = RELEASE_ALIGN;
        let start = (range.start / page) * page;
        let end = range.end.div_ceil(page) * page;
        self.drop_pages(start, end.min(self.map.len()));
    }

    /// `madvise(DONTNEED)` on `start..end`; `start` is 64 KiB aligned.
    fn drop_pages(&self, start: usize, end: usize) {
        if end <= start {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only shared file mapping only drops
        // this process's page-table entries; the next access faults the same
        // bytes back in from the page cache (or the file). No memory is freed
        // from under a live reference: slices into the mapping stay valid and
        // keep reading the file's unchanged contents.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

/// Starts writeback of bytes `range` of `file` to disk without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later `fsync` has
/// less left to do. Errors are ignored: this is only a hint, and the `fsync`
/// reports real I/O errors. A no-op outside Linux.
pub(crate) fn start_writeback(file: &File, range: Range<u64>) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len = range.end.saturating_sub(range.start);
        if len == 0 {
            return;
        }
        // SAFETY: a plain syscall on a descriptor `file` keeps open; it
        // reads and writes none of this process's memory.
        let _ = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                range.start as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, range);
}

/// Alignment of the ranges handed to `madvise`: 64 KiB, the largest base
/// page size in common use (arm64 kernels built with 64K pages); a multiple of
/// the 4 KiB pages of x86-64. Dropping only whole 64 KiB blocks costs nothing
/// measurable and never hands the kernel a misaligned address.
const RELEASE_ALIGN: usize = 64 * 1024;
