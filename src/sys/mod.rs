//! The one module allowed `unsafe` code (the crate is
//! `#![deny(unsafe_code)]`): operating-system calls on memory maps and file
//! descriptors ([`mmap`]), signals ([`signals`]), and the run-time dispatch
//! of the SIMD kernel versions ([`simd`]), the heap policy ([`heap`]), the budget of input descriptors kept open
//! ([`descriptors`]). Every `unsafe` block carries a
//! `// SAFETY:` comment. [`read`] is the gate every input file is opened
//! through (regular files only, never blocking, side files size-capped).

pub mod descriptors;
pub mod heap;
pub mod mmap;
pub mod read;
pub mod signals;
pub mod simd;

#[cfg(test)]
mod tests;
