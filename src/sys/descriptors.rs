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

/// The soft limit [`raise_soft_limit`] asks for at most: 65536 descriptors,
/// a budget of 32752 inputs, far beyond any trajectory, without claiming
/// a hard limit of millions.
const RAISED_LIMIT: libc::rlim_t = 1 << 16;

static HELD: AtomicUsize = AtomicUsize::new(0);

/// Raises the soft `RLIMIT_NOFILE` towards the hard limit (at most to
/// [`RAISED_LIMIT`]), as the Go runtime does for every program: the usual
/// soft limit of 1024 dates from `select`, which polymerge does not use,
/// while the hard limit is commonly 524288. So trajectories of more than
/// [`budget_for`]`(1024)` = 496 checkpoints are still read with `pread`.
/// Never lowers a limit; failures are ignored (the budget then follows the
/// limit as it is). Call once, at start, before any input is opened.
pub fn raise_soft_limit() {
    let Some(mut lim) = limits() else {
        return;
    };
    if let Some(soft) = raised(lim.rlim_cur, lim.rlim_max) {
        lim.rlim_cur = soft;
        // SAFETY: `setrlimit` reads one `rlimit` struct, which `lim` is;
        // a soft limit at or below the hard limit needs no privilege.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// The soft limit to set given the current `soft` and `hard` limits:
/// `hard`, at most [`RAISED_LIMIT`], when that is higher than `soft`.
pub(crate) fn raised(soft: libc::rlim_t, hard: libc::rlim_t) -> Option<libc::rlim_t> {
    let want = hard.min(RAISED_LIMIT);
    (want > soft).then_some(want)
}

/// How many input descriptors may be kept open at once, given the soft
/// `RLIMIT_NOFILE` of the process when it first opens an input.
pub fn budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| budget_for(limits().map_or(FALLBACK_LIMIT, |l| l.rlim_cur)))
}

/// The budget under soft limit `soft`: half of what [`RESERVED`] leaves.
pub(crate) fn budget_for(soft: libc::rlim_t) -> usize {
    usize::try_from(soft.saturating_sub(RESERVED) / SHARE_DIVISOR).unwrap_or(usize::MAX)
}

/// The process's `RLIMIT_NOFILE` (soft and hard), if it can be read.
fn limits() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` struct, which `lim` is, and
    // reads nothing of ours.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim)
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
