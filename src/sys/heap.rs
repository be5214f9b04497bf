//! The process's heap policy: keep freed memory for reuse.
//!
//! Weight matching allocates and frees the same large buffers at every
//! group visit (16 MiB f32 terms and tensor copies, 32 MiB f64 score
//! matrices). glibc serves allocations from 128 KiB up (its dynamic
//! threshold rises to at most 32 MiB) with fresh `mmap`s and trims the
//! heap's top once 2× that is free, so each visit faults its buffers in
//! again, page by page, zeroed by the kernel. Measured on the 64-2048×4-10
//! MLP pair (`docs/bench-align.md`): 21.5 s with glibc's defaults against
//! 19.1 s with the settings below, system time 4.5 s against 1.3 s, same
//! result, peak RSS 334 → 433 MiB.
//!
//! Peak memory stays what the program has live at its peak (plus
//! fragmentation): memory kept free is reused, not added to.

/// Largest request served from the heap rather than a fresh `mmap`:
/// glibc's ceiling for `M_MMAP_THRESHOLD` on 64-bit targets
/// (`HEAP_MAX_SIZE / 2`, `malloc/malloc.c`), one 2048² f64 matrix.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the heap's top kept rather than returned to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;

/// Sets the heap policy (glibc only; elsewhere nothing). Call once, at
/// start, before other threads allocate.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets two of glibc's allocator parameters; it
    // takes the allocator's lock itself, touches no memory of ours, and
    // rejects (returns 0 for) values out of range, leaving the defaults.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
