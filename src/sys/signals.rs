//! What polymerge does on the signals that would otherwise kill it with a
//! half-written output behind: a registry of its temporaries and of its
//! input mappings that a signal handler can read without locks or
//! allocation, the `SIGBUS` handler, and `SIGXFSZ` ignored.
//!
//! - `SIGBUS` comes when a mapped input shrinks under us (another process
//!   truncated or rewrote it). The handler removes every registered
//!   temporary with plain system calls, prints one line naming the input
//!   (`input changed while reading`) and exits with status 1.
//! - `SIGXFSZ` (a file-size limit, `ulimit -f`) is ignored, so the write that
//!   crosses the limit fails with `EFBIG` and takes the normal error path
//!   (one line, temporaries removed).
//!
//! Both registries are append-only lists of leaked nodes linked by atomic
//! pointers: registering allocates (in normal context), retiring flips an
//! atomic flag, and the handler only loads atomics and reads bytes that are
//! never freed.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

/// One registered temporary file or directory.
struct TempNode {
    path: CString,
    live: AtomicBool,
    next: AtomicPtr<TempNode>,
}

/// One registered input mapping.
struct MapNode {
    path: CString,
    start: usize,
    /// 0 once the mapping is gone.
    len: AtomicUsize,
    next: AtomicPtr<MapNode>,
}

static TEMPS: AtomicPtr<TempNode> = AtomicPtr::new(std::ptr::null_mut());
static MAPS: AtomicPtr<MapNode> = AtomicPtr::new(std::ptr::null_mut());

fn c_path(path: &Path) -> Option<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).ok()
}

/// Iterates over a list of leaked nodes.
fn nodes<T: 'static>(
    head: &AtomicPtr<T>,
    next: fn(&T) -> &AtomicPtr<T>,
) -> impl Iterator<Item = &'static T> {
    let mut p = head.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: every pointer in the list comes from `Box::leak` in
        // `push` and is never freed, so it is valid for 'static; nodes are
        // fully written before they are published with a Release store.
        let node: &'static T = unsafe { p.as_ref()? };
        p = next(node).load(Ordering::Acquire);
        Some(node)
    })
}

/// Publishes a leaked node at the head of a list.
fn push<T: 'static>(head: &AtomicPtr<T>, node: T, next: fn(&T) -> &AtomicPtr<T>) -> &'static T {
    let node: &'static mut T = Box::leak(Box::new(node));
    let ptr: *mut T = node;
    let mut cur = head.load(Ordering::Acquire);
    loop {
        // SAFETY: `ptr` is the leaked node, valid for 'static.
        next(unsafe { &*ptr }).store(cur, Ordering::Release);
        match head.compare_exchange_weak(cur, ptr, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
    // SAFETY: leaked, valid for 'static; from now on only read.
    unsafe { &*ptr }
}

/// Registers a temporary file or directory, to be removed if the process
/// dies of a signal before [`retire_temporary`].
pub fn register_temporary(path: &Path) {
    let Some(path) = c_path(path) else { return };
    push(
        &TEMPS,
        TempNode {
            path,
            live: AtomicBool::new(true),
            next: AtomicPtr::new(std::ptr::null_mut()),
        },
        |n| &n.next,
    );
}

/// The temporary `path` is gone or complete: no longer removed on a signal.
pub fn retire_temporary(path: &Path) {
    let Some(c) = c_path(path) else { return };
    for n in nodes(&TEMPS, |n| &n.next) {
        if n.path == c {
            n.live.store(false, Ordering::Release);
        }
    }
}

/// The temporaries still registered.
pub fn live_temporaries() -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    nodes(&TEMPS, |n| &n.next)
        .filter(|n| n.live.load(Ordering::Acquire))
        .map(|n| PathBuf::from(std::ffi::OsStr::from_bytes(n.path.as_bytes())))
        .collect()
}

/// A registered input mapping; retired when dropped.
pub struct MappingGuard(&'static MapNode);

impl Drop for MappingGuard {
    fn drop(&mut self) {
        self.0.len.store(0, Ordering::Release);
    }
}

impl std::fmt::Debug for MappingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MappingGuard")
    }
}

/// Registers the mapping of `path` at `start..start + len`, so that a
/// `SIGBUS` inside it names the file.
pub fn register_mapping(path: &Path, start: usize, len: usize) -> MappingGuard {
    let path = c_path(path).unwrap_or_default();
    MappingGuard(push(
        &MAPS,
        MapNode {
            path,
            start,
            len: AtomicUsize::new(len),
            next: AtomicPtr::new(std::ptr::null_mut()),
        },
        |n| &n.next,
    ))
}

/// Installs the `SIGBUS` handler and ignores `SIGXFSZ` (see the module
/// docs). Called once by the binary at start.
pub fn install() {
    #[cfg(target_os = "linux")]
    linux::install();
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    pub(super) fn install() {
        // SAFETY: sigaction with a zeroed, then filled struct; the handler
        // below only makes async-signal-safe calls (unlink, rmdir, openat,
        // getdents64, write, _exit) and reads atomics and leaked memory.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
        }
    }

    fn say(bytes: &[u8]) {
        // SAFETY: write(2) from a valid slice.
        unsafe {
            libc::write(2, bytes.as_ptr().cast(), bytes.len());
        }
    }

    extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize;
        for t in nodes(&TEMPS, |n| &n.next) {
            if t.live.load(Ordering::Acquire) {
                remove_path(&t.path);
            }
        }
        say(b"polymerge: error: ");
        let hit = nodes(&MAPS, |n| &n.next).find(|m| {
            let len = m.len.load(Ordering::Acquire);
            addr >= m.start && addr - m.start < len
        });
        match hit {
            Some(m) => {
                say(m.path.as_bytes());
                say(b": input changed while reading (truncated or rewritten by another process); temporary files removed\n");
            }
            None => say(b"bus error (an input changed while reading?); temporary files removed\n"),
        }
        // SAFETY: _exit is async-signal-safe and never returns.
        unsafe { libc::_exit(1) }
    }

    /// Removes a file, or a directory tree up to a few levels deep.
    fn remove_path(path: &std::ffi::CStr) {
        // SAFETY: plain system calls on a NUL-terminated path.
        unsafe {
            if libc::unlink(path.as_ptr()) == 0 {
                return;
            }
            let fd = libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                empty_dir(fd, 4);
                libc::close(fd);
            }
            libc::rmdir(path.as_ptr());
        }
    }

    /// Removes the entries of the open directory `fd` (recursing `depth`
    /// levels), reading it with getdents64 into a stack buffer.
    fn empty_dir(fd: libc::c_int, depth: u32) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: getdents64 writes at most `buf.len()` bytes into buf.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
            if n <= 0 {
                return;
            }
            let mut off = 0usize;
            while off + 19 < n as usize {
                // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
                let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
                if reclen == 0 {
                    return;
                }
                let name = &buf[off + 19..off + reclen];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                let name = &name[..end];
                if name != b"." && name != b".." {
                    let p = name.as_ptr().cast::<libc::c_char>();
                    // SAFETY: `p` points at a NUL-terminated name in `buf`.
                    unsafe {
                        if libc::unlinkat(fd, p, 0) != 0 {
                            if depth > 0 {
                                let sub = libc::openat(
                                    fd,
                                    p,
                                    libc::O_RDONLY
                                        | libc::O_DIRECTORY
                                        | libc::O_NOFOLLOW
                                        | libc::O_CLOEXEC,
                                );
                                if sub >= 0 {
                                    empty_dir(sub, depth - 1);
                                    libc::close(sub);
                                }
                            }
                            libc::unlinkat(fd, p, libc::AT_REMOVEDIR);
                        }
                    }
                }
                off += reclen;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_temporaries_are_no_longer_listed() {
        let p = Path::new("/nonexistent/polymerge-registry-test");
        register_temporary(p);
        assert!(live_temporaries().iter().any(|x| x == p));
        retire_temporary(p);
        assert!(!live_temporaries().iter().any(|x| x == p));
    }
}
