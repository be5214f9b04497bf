//! The one module allowed `unsafe` code (the crate is
//! `#![deny(unsafe_code)]`): operating-system calls on memory maps and file
//! descriptors ([`mmap`]) and the run-time dispatch of the SIMD kernel
//! versions ([`simd`]). Every `unsafe` block carries a `// SAFETY:` comment.

pub mod mmap;
pub mod simd;
