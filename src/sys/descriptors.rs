//! The budget of input files kept open for reading.
//!
//! A checkpoint is mapped ([`super::mmap`]), but streaming passes read the
//! inputs they take in order with `pread` instead (see
//! [`crate::checkpoint::stream`]): a read copies page-cache bytes into a
//! buffer of ours and maps nothing, so the resident set does not count the
//! page cache's folios (which can be 2 MiB each, mapped whole on a fault).
//! That needs a descriptor per file for the life of the checkpoint, and an
//! EMA over hundreds of checkpoints must not run out of descriptors: the
//! files beyond [`budget`] close their descriptor after mapping, as all did
//! before, and are read through the mapping.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors never counted against the budget: standard streams, the
/// outputs' files and temporaries, side files, the embedding program's own.
const RESERVED: libc::rlim_t = 32;

/// Share of the soft limit beyond [`RESERVED`] that input files may keep:
/// half, the other half staying free for whatever else the process opens.
const SHARE_DIVISOR: libc::rlim_t = 2;

/// The soft limit assumed when it cannot be read: Linux's usual default.
const FALLBACK_LIMIT: libc::rlim_t = 1024;

static HELD: AtomicUsize = AtomicUsize::new(0);

/// How many input descriptors may be kept open at once, given the soft
/// `RLIMIT_NOFILE` of the process when it first opens an input.
pub fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| budget_for(soft_limit().unwrap_or(FALLBACK_LIMIT)))
}

/// The budget under soft limit `soft`: half of what [`RESERVED`] leaves.
pub(crate) fn budget_for(soft: libc::rlim_t) -> usize {
    usize::try_from(soft.saturating_sub(RESERVED) / SHARE_DIVISOR).unwrap_or(usize::MAX)
}

fn soft_limit() -> Option<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` struct, which `lim` is, and
    // reads nothing of ours.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

/// One descriptor counted against the [`budget`]; dropping it gives the
/// place back.
#[derive(Debug)]
pub struct Held(());

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place in the budget, or `None` when every place is taken.
pub fn hold() -> Option<Held> {
    HELD.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n < budget()).then_some(n + 1)
    })
    .ok()
    .map(|_| Held(()))
}
