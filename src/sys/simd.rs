//! Run-time dispatch of the SIMD kernels: each of [`decode_f32`],
//! [`encode_f32`], [`accumulate_f32`], [`accumulate_values_f32`] and
//! [`divide_encode_f32`] runs its
//! generic body (`crate::kernels`, an `#[inline(always)]` function) compiled
//! for the widest vector extension the CPU has — on x86-64, AVX-512 (F, BW,
//! VL) or AVX2 when detected at run time, else the baseline (SSE2). The
//! loops are plain Rust that LLVM vectorises for each; every version does the
//! same IEEE operations in the same order (no FMA contraction, no
//! reassociation), so results are bit-identical. Hot loops are
//! `#[inline(always)]` functions, not closures, so that they are compiled
//! into each version. The `*_on` functions run one given version ([`Isa`]),
//! so tests can check each against the baseline. The basin check's
//! [`lane_sums`] has a hand-written AVX2 version (same operations, same
//! bits).

use safetensors::Dtype;

use crate::kernels::SUM_LANES;
use crate::kernels::{
    accumulate_f32_generic, accumulate_values_f32_generic, decode_f32_generic,
    divide_encode_f32_generic, encode_f32_generic, lane_sums_generic,
};

/// A compiled version of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64).
    Baseline,
    /// x86-64 AVX2.
    Avx2,
    /// x86-64 AVX-512 F, BW and VL.
    Avx512,
}

impl Isa {
    /// Every version compiled into this build.
    pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    /// True if this CPU can run `self`.
    pub fn available(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The version the dispatching kernels run on this CPU.
    pub fn best() -> Isa {
        if Isa::Avx512.available() {
            Isa::Avx512
        } else if Isa::Avx2.available() {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    }
}

/// Defines `pub fn NAME(args) -> R`, dispatching to the widest version this
/// CPU runs, and `pub fn NAME_ON(isa, args) -> R`, running version `isa`
/// (panicking if the CPU lacks it).
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        pub fn $name:ident / $on:ident ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $generic:ident;
    ) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                    // SAFETY: the CPU supports every feature `avx512` is
                    // compiled for (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if has!("avx2") {
                    // SAFETY: as above, for AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }

        #[doc = concat!("[`", stringify!($name), "`] compiled for `isa`. Panics if this CPU cannot run `isa`.")]
        pub fn $on(isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            assert!(isa.available(), "{isa:?} is not available on this CPU");
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                match isa {
                    // SAFETY: `isa.available()` checked the CPU supports
                    // every feature `avx512` is compiled for.
                    Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, for AVX2.
                    Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    Isa::Baseline => {}
                }
            }
            $generic($($arg),*)
        }
    };
}

multiversion! {
    /// Decodes `out.len()` elements of `dtype` from `bytes` into f32.
    ///
    /// Panics if `bytes` is shorter than `out.len()` elements or `dtype` is not a
    /// float dtype; callers slice both from validated tensor metadata.
    pub fn decode_f32 / decode_f32_on(dtype: Dtype, bytes: &[u8], out: &mut [f32]) = decode_f32_generic;
}

multiversion! {
    /// Encodes f32 values as `dtype` little-endian bytes, rounding to nearest even.
    pub fn encode_f32 / encode_f32_on(dtype: Dtype, values: &[f32], out: &mut [u8]) = encode_f32_generic;
}

multiversion! {
    /// Fused decode-and-accumulate, the inner loop of averaging: for every `j`,
    /// `acc[j] += w * x[j]` where `x` is `acc.len()` elements of `dtype` decoded
    /// from `bytes` (as [`decode_f32`] does); with `first`, `acc[j] = 0.0 + w *
    /// x[j]` instead (the first term of Python's `sum()`, which starts from 0 and
    /// so turns `-0.0` into `+0.0`; `acc`'s previous contents are ignored).
    /// Returns how many of those elements are NaN or ±Inf.
    ///
    /// One f32 multiply and one f32 add per element, each rounded (never fused
    /// into an FMA), so the result is bit-identical to decoding into a buffer and
    /// adding `w * x` separately.
    ///
    /// Panics if `bytes` is shorter than `acc.len()` elements or `dtype` is not a
    /// float dtype.
    pub fn accumulate_f32 / accumulate_f32_on(
        dtype: Dtype,
        bytes: &[u8],
        w: f32,
        acc: &mut [f32],
        first: bool,
    ) -> u64 = accumulate_f32_generic;
}

multiversion! {
    /// [`accumulate_f32`] for values already decoded to f32: `acc[j] += w *
    /// x[j]` (with `first`, `acc[j] = 0.0 + w * x[j]`), one multiply and one
    /// add each rounded; returns how many of the values are NaN or ±Inf.
    /// Accumulating the values [`decode_f32`] gives from some bytes is bit
    /// for bit [`accumulate_f32`] of those bytes.
    ///
    /// Panics if `x` is shorter than `acc`.
    pub fn accumulate_values_f32 / accumulate_values_f32_on(
        x: &[f32],
        w: f32,
        acc: &mut [f32],
        first: bool,
    ) -> u64 = accumulate_values_f32_generic;
}

multiversion! {
    /// The last step of averaging: `out = encode(acc[j] / divisor)` as `dtype`
    /// bytes, one true f32 division per element (not a multiplication by an
    /// inexact reciprocal, which can differ in the last bit), then the rounding
    /// of [`encode_f32`].
    ///
    /// When `1 / divisor` is exactly representable (the divisor is a power of
    /// two, as for a uniform average of 2, 4, 8 … inputs or weights summing to
    /// 1), multiplying by it gives the same correctly rounded result as the
    /// division for every input, and is several times faster: both are the
    /// exact quotient rounded once.
    ///
    /// Panics if `out` is shorter than `acc.len()` elements of `dtype`.
    pub fn divide_encode_f32 / divide_encode_f32_on(
        acc: &[f32],
        divisor: f32,
        dtype: Dtype,
        out: &mut [u8],
    ) = divide_encode_f32_generic;
}

/// The basin check's f64 sums `[Σ a·b, Σ a², Σ b², Σ (a−b)²]` over the whole
/// [`SUM_LANES`] of two f32 slices, in that many lanes (all finite exactly
/// when every element is): `crate::kernels`' generic body, or on a CPU with
/// AVX2 the same lanes written with AVX2 intrinsics (LLVM does not
/// vectorise the generic body's eight f64 lanes well: as plain Rust
/// compiled for AVX2 it runs several times slower than for SSE2).
pub fn lane_sums(a: &[f32], b: &[f32]) -> [f64; 4] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { lane_sums_avx2(a, b) };
    }
    lane_sums_generic(a, b)
}

/// [`lane_sums`] as run by version `isa` (AVX-512 CPUs run the AVX2
/// intrinsics). Panics if this CPU cannot run `isa`.
pub fn lane_sums_on(isa: Isa, a: &[f32], b: &[f32]) -> [f64; 4] {
    assert!(isa.available(), "{isa:?} is not available on this CPU");
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Baseline && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { lane_sums_avx2(a, b) };
    }
    lane_sums_generic(a, b)
}

/// [`lane_sums_generic`] with AVX2 intrinsics: lanes 0–3 and 4–7 of each
/// sum in two vectors, the same IEEE operations per lane in the same order
/// (widen, multiply, add; subtract, multiply, add), lanes added in lane
/// order at the end, so the bits are the generic body's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lane_sums_avx2(a: &[f32], b: &[f32]) -> [f64; 4] {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len()) / SUM_LANES * SUM_LANES;
    let z = _mm256_setzero_pd();
    let (mut d0, mut d1, mut a0, mut a1) = (z, z, z, z);
    let (mut b0, mut b1, mut s0, mut s1) = (z, z, z, z);
    for i in (0..n).step_by(SUM_LANES) {
        let (xa, xb) = (&a[i..i + SUM_LANES], &b[i..i + SUM_LANES]);
        // SAFETY: `xa` and `xb` hold 8 f32 each; every load reads 4 of
        // them (unaligned loads, so any alignment is fine).
        let (x0, x1, y0, y1) = unsafe {
            (
                _mm256_cvtps_pd(_mm_loadu_ps(xa.as_ptr())),
                _mm256_cvtps_pd(_mm_loadu_ps(xa.as_ptr().add(4))),
                _mm256_cvtps_pd(_mm_loadu_ps(xb.as_ptr())),
                _mm256_cvtps_pd(_mm_loadu_ps(xb.as_ptr().add(4))),
            )
        };
        d0 = _mm256_add_pd(d0, _mm256_mul_pd(x0, y0));
        d1 = _mm256_add_pd(d1, _mm256_mul_pd(x1, y1));
        a0 = _mm256_add_pd(a0, _mm256_mul_pd(x0, x0));
        a1 = _mm256_add_pd(a1, _mm256_mul_pd(x1, x1));
        b0 = _mm256_add_pd(b0, _mm256_mul_pd(y0, y0));
        b1 = _mm256_add_pd(b1, _mm256_mul_pd(y1, y1));
        let (t0, t1) = (_mm256_sub_pd(x0, y0), _mm256_sub_pd(x1, y1));
        s0 = _mm256_add_pd(s0, _mm256_mul_pd(t0, t0));
        s1 = _mm256_add_pd(s1, _mm256_mul_pd(t1, t1));
    }
    let lanes = |lo: __m256d, hi: __m256d| {
        let mut v = [0f64; SUM_LANES];
        let (l, h) = v.split_at_mut(4);
        // SAFETY: `l` and `h` hold 4 f64 each, what one unaligned store writes.
        unsafe {
            _mm256_storeu_pd(l.as_mut_ptr(), lo);
            _mm256_storeu_pd(h.as_mut_ptr(), hi);
        }
        v.iter().sum::<f64>()
    };
    [lanes(d0, d1), lanes(a0, a1), lanes(b0, b1), lanes(s0, s1)]
}
