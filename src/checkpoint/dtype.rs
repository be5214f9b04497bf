//! Element types: which dtypes polymerge averages, and how their little-endian
//! bytes decode to and encode from the accumulation type.
//!
//! Float inputs are accumulated in f32 (f64 for F64), as PyTorch does when a
//! script writes `sum(w * t.float() for ...) / sum(w)`. Conversion back to a
//! 16-bit type rounds to nearest, ties to even (IEEE 754 default rounding), the
//! rounding of `Tensor.to(torch.bfloat16)` / `.to(torch.float16)`.
//!
//! Decoding works on byte slices of any alignment: tensor data inside a
//! safetensors file need not be aligned to its element size (the header length
//! is arbitrary), so nothing here reinterprets `&[u8]` as `&[f32]`.

use half::f16;
use safetensors::Dtype;

/// How polymerge treats a tensor of a given dtype when merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// F32, F16, BF16: averaged with f32 accumulation.
    Float,
    /// F64: averaged with f64 accumulation.
    Double,
    /// Integer and bool tensors: copied from the first input after checking
    /// that every input holds the same bytes.
    Exact,
    /// Everything else (F8 variants, sub-byte floats): copied from the first
    /// input with a warning.
    Opaque,
}

/// Classifies a dtype.
pub fn kind(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::BOOL
        | Dtype::U8
        | Dtype::I8
        | Dtype::I16
        | Dtype::U16
        | Dtype::I32
        | Dtype::U32
        | Dtype::I64
        | Dtype::U64 => Kind::Exact,
        _ => Kind::Opaque,
    }
}

/// True for the dtypes that are averaged (F64, F32, F16, BF16).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(kind(dtype), Kind::Float | Kind::Double)
}

/// Bytes per element, for whole-byte dtypes.
pub fn size_of(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

/// Parses a user-facing dtype name (`f32`, `f16`, `bf16`, `f64`).
pub fn parse_float(name: &str) -> Option<Dtype> {
    match name.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Some(Dtype::F32),
        "f16" | "float16" | "half" => Some(Dtype::F16),
        "bf16" | "bfloat16" => Some(Dtype::BF16),
        "f64" | "float64" | "double" => Some(Dtype::F64),
        _ => None,
    }
}

/// Defines `pub fn NAME(args) -> R` that runs `GENERIC(args)` (an
/// `#[inline(always)]` function) compiled for the widest vector extension the
/// CPU has: on x86-64, AVX-512 (F, BW, VL) or AVX2 when detected at run time,
/// else the baseline (SSE2). The loops are plain Rust that LLVM vectorises for
/// each; every version does the same IEEE operations in the same order (no
/// FMA contraction, no reassociation), so results are bit-identical. Hot
/// loops are `#[inline(always)]` functions, not closures, so that they are
/// compiled into each version.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $generic:ident;
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
    };
}

/// Elements per block of the conversion loops: small enough for on-stack
/// staging buffers and a `u32` count, large enough to amortise the setup.
const BLOCK: usize = 1024;

/// Element words: the unsigned integer of an element's width.
trait Word: bytemuck::Pod {
    /// From file (little-endian) order to native.
    fn le(self) -> Self;
}

macro_rules! word {
    ($($t:ty),*) => {$(
        impl Word for $t {
            #[inline(always)]
            fn le(self) -> Self {
                <$t>::from_le(self)
            }
        }
    )*};
}
word!(u16, u32, u64);

/// A loop body over element words: `Src` → `Dst`, one block (≤ [`BLOCK`]
/// elements) at a time, returning a count (of non-finite inputs, or 0).
///
/// [`for_words`] and [`to_words`] run it over the words of a byte slice in
/// place when the bytes are aligned for the word type, else through an
/// on-stack stage. Loops over `&[u16]` etc. vectorise; loops that assemble
/// words from bytes (`from_le_bytes` over `chunks_exact`) do not: LLVM loads
/// them byte by byte.
trait Kernel<Src, Dst> {
    fn run(&self, src: &[Src], dst: &mut [Dst]) -> u32;
}

/// Runs `k` over the `dst.len()` words at the start of `bytes` (`W`-sized
/// elements) and `dst`; returns the sum of its counts.
#[inline(always)]
fn for_words<W: Word, D, K: Kernel<W, D>>(bytes: &[u8], dst: &mut [D], k: &K) -> u64 {
    let bytes = &bytes[..dst.len() * std::mem::size_of::<W>()];
    let mut count = 0u64;
    match bytemuck::try_cast_slice::<u8, W>(bytes) {
        Ok(words) => {
            for (s, d) in words.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
                count += u64::from(k.run(s, d));
            }
        }
        Err(_) => {
            let mut stage = [W::zeroed(); BLOCK];
            let per = BLOCK * std::mem::size_of::<W>();
            for (b, d) in bytes.chunks(per).zip(dst.chunks_mut(BLOCK)) {
                let stage = &mut stage[..d.len()];
                bytemuck::cast_slice_mut(stage).copy_from_slice(b);
                count += u64::from(k.run(stage, d));
            }
        }
    }
    count
}

/// Runs `k` over `src` and the `src.len()` `W`-sized words at the start of
/// `out`.
#[inline(always)]
fn to_words<S, W: Word, K: Kernel<S, W>>(src: &[S], out: &mut [u8], k: &K) {
    let out = &mut out[..src.len() * std::mem::size_of::<W>()];
    match bytemuck::try_cast_slice_mut::<u8, W>(out) {
        Ok(words) => {
            for (s, d) in src.chunks(BLOCK).zip(words.chunks_mut(BLOCK)) {
                k.run(s, d);
            }
        }
        Err(_) => {
            let mut stage = [W::zeroed(); BLOCK];
            let per = BLOCK * std::mem::size_of::<W>();
            for (s, o) in src.chunks(BLOCK).zip(out.chunks_mut(per)) {
                let stage = &mut stage[..s.len()];
                k.run(s, stage);
                o.copy_from_slice(bytemuck::cast_slice(stage));
            }
        }
    }
}

/// The scaling applied before encoding: none, `× r` or `÷ d`.
trait Scale: Copy {
    fn apply(self, x: f32) -> f32;
}

#[derive(Clone, Copy)]
struct Identity;
#[derive(Clone, Copy)]
struct Mul(f32);
#[derive(Clone, Copy)]
struct Div(f32);

impl Scale for Identity {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        x
    }
}
impl Scale for Mul {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        x * self.0
    }
}
impl Scale for Div {
    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        x / self.0
    }
}

/// bf16 words → f32.
struct DecodeBf16;
impl Kernel<u16, f32> for DecodeBf16 {
    #[inline(always)]
    fn run(&self, src: &[u16], dst: &mut [f32]) -> u32 {
        for (d, &h) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(h.le()) << 16);
        }
        0
    }
}

/// f32 words → f32.
struct DecodeF32;
impl Kernel<u32, f32> for DecodeF32 {
    #[inline(always)]
    fn run(&self, src: &[u32], dst: &mut [f32]) -> u32 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(x.le());
        }
        0
    }
}

/// f16 words → f32, vectorised by `half` (F16C where available; the same
/// bits as `f16::to_f32` element by element).
struct DecodeF16;
impl Kernel<u16, f32> for DecodeF16 {
    #[inline(always)]
    fn run(&self, src: &[u16], dst: &mut [f32]) -> u32 {
        use half::slice::HalfFloatSliceExt;
        let mut h = [f16::ZERO; BLOCK];
        let h = &mut h[..dst.len()];
        for (h, &x) in h.iter_mut().zip(src) {
            *h = f16::from_bits(x.le());
        }
        h.convert_to_f32_slice(dst);
        0
    }
}

/// f64 words → f32 (rounded) or → f64.
struct DecodeF64;
impl Kernel<u64, f32> for DecodeF64 {
    #[inline(always)]
    fn run(&self, src: &[u64], dst: &mut [f32]) -> u32 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = f64::from_bits(x.le()) as f32;
        }
        0
    }
}
impl Kernel<u64, f64> for DecodeF64 {
    #[inline(always)]
    fn run(&self, src: &[u64], dst: &mut [f64]) -> u32 {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = f64::from_bits(x.le());
        }
        0
    }
}

/// `acc = (if FIRST { 0.0 } else { acc }) + w * x` for bf16 words `x`;
/// counts the NaN/Inf ones.
struct AccumulateBf16<const FIRST: bool>(f32);
impl<const FIRST: bool> Kernel<u16, f32> for AccumulateBf16<FIRST> {
    #[inline(always)]
    fn run(&self, src: &[u16], acc: &mut [f32]) -> u32 {
        let w = self.0;
        let mut bad = 0u32;
        for (a, &h) in acc.iter_mut().zip(src) {
            let h = h.le();
            // Exponent all ones: Inf or NaN.
            bad += u32::from(h & 0x7F80 == 0x7F80);
            add_term::<FIRST>(a, w, f32::from_bits(u32::from(h) << 16));
        }
        bad
    }
}

/// As [`AccumulateBf16`] for f32 words.
struct AccumulateF32<const FIRST: bool>(f32);
impl<const FIRST: bool> Kernel<u32, f32> for AccumulateF32<FIRST> {
    #[inline(always)]
    fn run(&self, src: &[u32], acc: &mut [f32]) -> u32 {
        let w = self.0;
        let mut bad = 0u32;
        for (a, &x) in acc.iter_mut().zip(src) {
            let x = x.le();
            bad += u32::from(x & 0x7F80_0000 == 0x7F80_0000);
            add_term::<FIRST>(a, w, f32::from_bits(x));
        }
        bad
    }
}

/// As [`AccumulateBf16`] for words of `D`ecoded elements (F16, F64).
struct AccumulateVia<D, const FIRST: bool>(D, f32);
impl<W: Copy, D: Kernel<W, f32>, const FIRST: bool> Kernel<W, f32> for AccumulateVia<D, FIRST> {
    #[inline(always)]
    fn run(&self, src: &[W], acc: &mut [f32]) -> u32 {
        let mut x = [0f32; BLOCK];
        let x = &mut x[..acc.len()];
        self.0.run(src, x);
        let w = self.1;
        let mut bad = 0u32;
        for (a, &x) in acc.iter_mut().zip(x.iter()) {
            bad += u32::from(!x.is_finite());
            add_term::<FIRST>(a, w, x);
        }
        bad
    }
}

/// `scale(v)` → bf16 words.
struct EncodeBf16<S>(S);
impl<S: Scale> Kernel<f32, u16> for EncodeBf16<S> {
    #[inline(always)]
    fn run(&self, src: &[f32], dst: &mut [u16]) -> u32 {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = bf16_bits(self.0.apply(v)).to_le();
        }
        0
    }
}

/// `scale(v)` → f32 words.
struct EncodeF32<S>(S);
impl<S: Scale> Kernel<f32, u32> for EncodeF32<S> {
    #[inline(always)]
    fn run(&self, src: &[f32], dst: &mut [u32]) -> u32 {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = self.0.apply(v).to_bits().to_le();
        }
        0
    }
}

/// `scale(v)` → f16 words, rounded by `half` (F16C where available; the same
/// bits as `f16::from_f32` element by element).
struct EncodeF16<S>(S);
impl<S: Scale> Kernel<f32, u16> for EncodeF16<S> {
    #[inline(always)]
    fn run(&self, src: &[f32], dst: &mut [u16]) -> u32 {
        use half::slice::HalfFloatSliceExt;
        let mut q = [0f32; BLOCK];
        let q = &mut q[..src.len()];
        for (q, &v) in q.iter_mut().zip(src) {
            *q = self.0.apply(v);
        }
        let mut h = [f16::ZERO; BLOCK];
        let h = &mut h[..src.len()];
        h.convert_from_f32_slice(q);
        for (d, h) in dst.iter_mut().zip(h.iter()) {
            *d = h.to_bits().to_le();
        }
        0
    }
}

/// `scale(v)` → f64 words (exact widening).
struct EncodeF64<S>(S);
impl<S: Scale> Kernel<f32, u64> for EncodeF64<S> {
    #[inline(always)]
    fn run(&self, src: &[f32], dst: &mut [u64]) -> u32 {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = f64::from(self.0.apply(v)).to_bits().to_le();
        }
        0
    }
}
impl Kernel<f64, u64> for EncodeF64<Identity> {
    #[inline(always)]
    fn run(&self, src: &[f64], dst: &mut [u64]) -> u32 {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v.to_bits().to_le();
        }
        0
    }
}

multiversion! {
    /// Decodes `out.len()` elements of `dtype` from `bytes` into f32.
    ///
    /// Panics if `bytes` is shorter than `out.len()` elements or `dtype` is not a
    /// float dtype; callers slice both from validated tensor metadata.
    pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) = decode_f32_generic;
}

#[inline(always)]
fn decode_f32_generic(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    assert!(
        bytes.len() >= out.len() * size_of(dtype),
        "decode_f32: input too short"
    );
    match dtype {
        Dtype::F32 => for_words::<u32, _, _>(bytes, out, &DecodeF32),
        Dtype::BF16 => for_words::<u16, _, _>(bytes, out, &DecodeBf16),
        Dtype::F16 => for_words::<u16, _, _>(bytes, out, &DecodeF16),
        Dtype::F64 => for_words::<u64, f32, _>(bytes, out, &DecodeF64),
        other => panic!("decode_f32 called on non-float dtype {other:?}"),
    };
}

/// Decodes `out.len()` elements of any float dtype into f64 (exact widening).
pub fn decode_f64(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
    if dtype == Dtype::F64 {
        assert!(bytes.len() >= out.len() * 8, "decode_f64: input too short");
        for_words::<u64, f64, _>(bytes, out, &DecodeF64);
        return;
    }
    let mut tmp = [0f32; BLOCK];
    for (o, b) in out
        .chunks_mut(BLOCK)
        .zip(bytes.chunks(BLOCK * size_of(dtype)))
    {
        let t = &mut tmp[..o.len()];
        decode_f32(dtype, b, t);
        for (x, y) in o.iter_mut().zip(t.iter()) {
            *x = *y as f64;
        }
    }
}

multiversion! {
    /// Encodes f32 values as `dtype` little-endian bytes, rounding to nearest even.
    pub fn encode_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) = encode_f32_generic;
}

#[inline(always)]
fn encode_f32_generic(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    encode_scaled(dtype, values, out, Identity);
}

/// Encodes `scale(v)` for each of `values` as `dtype` (the shared body of
/// [`encode_f32`] and [`divide_encode_f32`]).
#[inline(always)]
fn encode_scaled<S: Scale>(dtype: Dtype, values: &[f32], out: &mut [u8], scale: S) {
    assert!(
        out.len() >= values.len() * size_of(dtype),
        "encode: output too short"
    );
    match dtype {
        Dtype::F32 => to_words::<_, u32, _>(values, out, &EncodeF32(scale)),
        Dtype::BF16 => to_words::<_, u16, _>(values, out, &EncodeBf16(scale)),
        Dtype::F16 => to_words::<_, u16, _>(values, out, &EncodeF16(scale)),
        Dtype::F64 => to_words::<f32, u64, _>(values, out, &EncodeF64(scale)),
        other => panic!("encode_f32 called on non-float dtype {other:?}"),
    }
}

/// Encodes f64 values as `dtype` bytes (via f32 for the narrower types, which
/// is what `tensor.double().to(dtype)` does for values in range).
pub fn encode_f64(dtype: Dtype, values: &[f64], out: &mut [u8]) {
    if dtype == Dtype::F64 {
        assert!(
            out.len() >= values.len() * 8,
            "encode_f64: output too short"
        );
        to_words::<f64, u64, _>(values, out, &EncodeF64(Identity));
        return;
    }
    let mut tmp = [0f32; BLOCK];
    let w = size_of(dtype);
    for (v, o) in values.chunks(BLOCK).zip(out.chunks_mut(BLOCK * w)) {
        let t = &mut tmp[..v.len()];
        for (x, y) in t.iter_mut().zip(v) {
            *x = *y as f32;
        }
        encode_f32(dtype, t, o);
    }
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
    pub fn accumulate_f32(
        dtype: Dtype,
        bytes: &[u8],
        w: f32,
        acc: &mut [f32],
        first: bool,
    ) -> u64 = accumulate_f32_generic;
}

#[inline(always)]
fn accumulate_f32_generic(dtype: Dtype, bytes: &[u8], w: f32, acc: &mut [f32], first: bool) -> u64 {
    if first {
        accumulate_impl::<true>(dtype, bytes, w, acc)
    } else {
        accumulate_impl::<false>(dtype, bytes, w, acc)
    }
}

/// `acc = (if FIRST { 0.0 } else { acc }) + w * x`.
#[inline(always)]
fn add_term<const FIRST: bool>(acc: &mut f32, w: f32, x: f32) {
    *acc = if FIRST { 0.0 } else { *acc } + w * x;
}

#[inline(always)]
fn accumulate_impl<const FIRST: bool>(dtype: Dtype, bytes: &[u8], w: f32, acc: &mut [f32]) -> u64 {
    assert!(
        bytes.len() >= acc.len() * size_of(dtype),
        "accumulate_f32: {} bytes for {} elements",
        bytes.len(),
        acc.len()
    );
    match dtype {
        Dtype::BF16 => for_words::<u16, _, _>(bytes, acc, &AccumulateBf16::<FIRST>(w)),
        Dtype::F32 => for_words::<u32, _, _>(bytes, acc, &AccumulateF32::<FIRST>(w)),
        Dtype::F16 => for_words::<u16, _, _>(bytes, acc, &AccumulateVia::<_, FIRST>(DecodeF16, w)),
        Dtype::F64 => for_words::<u64, _, _>(bytes, acc, &AccumulateVia::<_, FIRST>(DecodeF64, w)),
        other => panic!("accumulate_f32 called on non-float dtype {other:?}"),
    }
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
    pub fn divide_encode_f32(
        acc: &[f32],
        divisor: f32,
        dtype: Dtype,
        out: &mut [u8],
    ) = divide_encode_f32_generic;
}

#[inline(always)]
fn divide_encode_f32_generic(acc: &[f32], divisor: f32, dtype: Dtype, out: &mut [u8]) {
    match exact_reciprocal(divisor) {
        Some(r) => encode_scaled(dtype, acc, out, Mul(r)),
        None => encode_scaled(dtype, acc, out, Div(divisor)),
    }
}

/// `1 / d` if it is an f32 exactly (finite, non-zero, and its product with
/// `d`, exact in f64, is 1).
pub fn exact_reciprocal(d: f32) -> Option<f32> {
    let r = 1.0 / d;
    (r.is_finite() && r != 0.0 && f64::from(r) * f64::from(d) == 1.0).then_some(r)
}

/// f32 → bf16 bits, round to nearest even; NaN becomes the canonical quiet
/// NaN 0x7FC0 (sign kept), as `c10::BFloat16` does.
///
/// Branch-free so that loops over it vectorise: adding `0x7FFF` plus the
/// lowest kept bit carries into the kept half exactly when the dropped half
/// is above one half, or exactly one half with an odd kept half. The same
/// bits as `half::bf16::from_f32` for every non-NaN input (a test checks
/// every kept half against each kind of dropped half; finite values that
/// round past the largest bf16 become ±Inf).
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) as u16 & 0x8000) | 0x7FC0;
    if v.is_nan() { nan } else { rounded }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_a_halfway_value_to_the_even_neighbour() {
        // 1 + 2^-8 lies exactly halfway between bf16 1.0 (0x3F80) and the next
        // value 1 + 2^-7 (0x3F81); ties go to the even mantissa, 0x3F80.
        let mut out = [0u8; 2];
        encode_f32(Dtype::BF16, &[1.0 + 2f32.powi(-8)], &mut out);
        assert_eq!(u16::from_le_bytes(out), 0x3F80);
        // 1 + 3·2^-8 is halfway between 0x3F81 and 0x3F82: even is 0x3F82.
        encode_f32(Dtype::BF16, &[1.0 + 3.0 * 2f32.powi(-8)], &mut out);
        assert_eq!(u16::from_le_bytes(out), 0x3F82);
    }

    #[test]
    fn bf16_decodes_by_shifting_into_the_high_half_of_an_f32() {
        let mut out = [0f32; 2];
        decode_f32(Dtype::BF16, &[0x80, 0x3F, 0x00, 0xC0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
    }

    #[test]
    fn f16_round_trips_one_third_to_its_nearest_half_value() {
        // 1/3 in f16 is 0x3555 = 0.333251953125.
        let mut bytes = [0u8; 2];
        encode_f32(Dtype::F16, &[1.0 / 3.0], &mut bytes);
        assert_eq!(u16::from_le_bytes(bytes), 0x3555);
        let mut back = [0f32; 1];
        decode_f32(Dtype::F16, &bytes, &mut back);
        assert_eq!(back[0], 0.333_251_95);
    }

    #[test]
    fn decoding_works_on_unaligned_bytes() {
        let mut buf = [0u8; 9];
        buf[1..5].copy_from_slice(&1.5f32.to_le_bytes());
        buf[5..9].copy_from_slice(&(-0.25f32).to_le_bytes());
        let mut out = [0f32; 2];
        decode_f32(Dtype::F32, &buf[1..], &mut out);
        assert_eq!(out, [1.5, -0.25]);
    }

    #[test]
    fn nan_becomes_the_canonical_bf16_nan() {
        let mut out = [0u8; 2];
        encode_f32(Dtype::BF16, &[f32::from_bits(0x7F80_0001)], &mut out);
        assert_eq!(u16::from_le_bytes(out), 0x7FC0);
    }

    #[test]
    fn branch_free_bf16_rounding_matches_the_half_crate() {
        // Every sign/exponent/kept mantissa, with dropped halves below, at
        // and above one half (ties with even and odd kept halves included).
        for hi in 0..=u16::MAX as u32 {
            for lo in [0u32, 1, 0x3FFF, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF] {
                let v = f32::from_bits(hi << 16 | lo);
                let want = if v.is_nan() {
                    if v.is_sign_negative() { 0xFFC0 } else { 0x7FC0 }
                } else {
                    half::bf16::from_f32(v).to_bits()
                };
                assert_eq!(bf16_bits(v), want, "{:#010x}", v.to_bits());
            }
        }
    }

    #[test]
    fn vectorised_f16_conversions_match_the_scalar_ones() {
        // Every f16 bit pattern (NaN payloads included) decodes as `to_f32`.
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let bytes: Vec<u8> = all.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut x = vec![0f32; all.len()];
        decode_f32(Dtype::F16, &bytes, &mut x);
        for (&b, &x) in all.iter().zip(&x) {
            assert_eq!(
                x.to_bits(),
                f16::from_bits(b).to_f32().to_bits(),
                "{b:#06x}"
            );
        }
        // Every kept f32 half with each kind of dropped half encodes as `from_f32`.
        let vals: Vec<f32> = (0..=u16::MAX as u32)
            .flat_map(|hi| {
                [0u32, 1, 0x7FFF, 0x8000, 0xFFFF].map(|lo| f32::from_bits(hi << 16 | lo))
            })
            .collect();
        let mut out = vec![0u8; vals.len() * 2];
        encode_f32(Dtype::F16, &vals, &mut out);
        for (v, o) in vals.iter().zip(out.chunks_exact(2)) {
            let want = f16::from_f32(*v).to_bits();
            assert_eq!(
                u16::from_le_bytes([o[0], o[1]]),
                want,
                "{:#010x}",
                v.to_bits()
            );
        }
    }

    #[test]
    fn fused_kernels_match_decode_then_add_then_encode() {
        let vals: Vec<f32> = (0..3000)
            .map(|i| match i % 7 {
                0 => -0.0,
                1 => f32::INFINITY,
                2 => f32::NAN,
                3 => 1e-40,
                _ => (i as f32 * 0.37).sin() * 3.0,
            })
            .collect();
        for dt in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let mut bytes = vec![0u8; 1 + vals.len() * size_of(dt)];
            encode_f32(dt, &vals, &mut bytes[1..]);
            let bytes = &bytes[1..]; // unaligned on purpose
            let mut x = vec![0f32; vals.len()];
            decode_f32(dt, bytes, &mut x);
            let (w, div) = (0.3f32, 1.7f32);
            let want: Vec<f32> = x.iter().map(|&x| (0.0 + w * x) + w * x).collect();
            let mut acc = vec![f32::NAN; vals.len()]; // ignored with `first`
            let bad = accumulate_f32(dt, bytes, w, &mut acc, true)
                + accumulate_f32(dt, bytes, w, &mut acc, false);
            let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(acc.iter().zip(&want).all(|(&a, &b)| same(a, b)), "{dt:?}");
            let nonfinite = x.iter().filter(|x| !x.is_finite()).count() as u64;
            assert_eq!(bad, 2 * nonfinite, "{dt:?}");
            for out in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
                let q: Vec<f32> = acc.iter().map(|&a| a / div).collect();
                let mut a = vec![0u8; vals.len() * size_of(out)];
                let mut b = vec![0u8; vals.len() * size_of(out)];
                encode_f32(out, &q, &mut a);
                divide_encode_f32(&acc, div, out, &mut b);
                assert_eq!(a, b, "{dt:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn every_simd_version_gives_the_baseline_bits() {
        // The public kernels run the widest version this CPU has; the
        // `*_generic` functions called directly here are the baseline build.
        let mut x = 0x9E37_79B9u32;
        let vals: Vec<f32> = (0..5000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 {
                    f32::from_bits(x) // every exponent, NaN payloads, Inf
                } else {
                    (x as f32 / u32::MAX as f32 - 0.5) * 0.5
                }
            })
            .collect();
        for dt in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let w = size_of(dt);
            let mut buf = vec![0u8; 1 + vals.len() * w];
            for off in [0, 1] {
                let a = vals.len() * w;
                let mut e1 = vec![0u8; a];
                let mut e2 = vec![0u8; a];
                encode_f32(dt, &vals, &mut e1);
                encode_f32_generic(dt, &vals, &mut e2);
                assert_eq!(e1, e2, "encode {dt:?}");
                buf[off..off + a].copy_from_slice(&e1);
                let bytes = &buf[off..off + a];
                let mut d1 = vec![0f32; vals.len()];
                let mut d2 = vec![0f32; vals.len()];
                decode_f32(dt, bytes, &mut d1);
                decode_f32_generic(dt, bytes, &mut d2);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&d1), bits(&d2), "decode {dt:?}");
                let (mut a1, mut a2) = (vec![0f32; vals.len()], vec![0f32; vals.len()]);
                for first in [true, false] {
                    let n1 = accumulate_f32(dt, bytes, 0.3, &mut a1, first);
                    let n2 = accumulate_f32_generic(dt, bytes, 0.3, &mut a2, first);
                    assert_eq!(n1, n2, "accumulate count {dt:?}");
                    assert_eq!(bits(&a1), bits(&a2), "accumulate {dt:?}");
                }
                for div in [2.0, 3.0] {
                    divide_encode_f32(&a1, div, dt, &mut e1);
                    divide_encode_f32_generic(&a2, div, dt, &mut e2);
                    assert_eq!(e1, e2, "divide_encode {dt:?} / {div}");
                }
            }
        }
    }

    #[test]
    fn multiplying_by_an_exact_reciprocal_equals_dividing() {
        let mut x = 0x1234_5678u32;
        let mut vals: Vec<f32> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                f32::from_bits(x) // every exponent, subnormals, Inf, NaN
            })
            .collect();
        vals.extend([0.0, -0.0, f32::MAX, f32::MIN_POSITIVE, 1e-45, -1e-45]);
        for div in [
            1.0f32,
            2.0,
            4.0,
            0.5,
            8.0,
            2f32.powi(-127),
            2f32.powi(127),
            -2.0,
        ] {
            assert!(exact_reciprocal(div).is_some(), "{div}");
            let q: Vec<f32> = vals.iter().map(|&a| a / div).collect();
            let mut a = vec![0u8; vals.len() * 4];
            let mut b = vec![0u8; vals.len() * 4];
            encode_f32(Dtype::F32, &q, &mut a);
            divide_encode_f32(&vals, div, Dtype::F32, &mut b);
            for (i, (a, b)) in a.chunks(4).zip(b.chunks(4)).enumerate() {
                assert_eq!(a, b, "{:e} / {div:e}", vals[i]);
            }
        }
        for div in [
            3.0f32,
            0.3,
            2f32.powi(-128),
            1e-45,
            f32::INFINITY,
            0.0,
            f32::NAN,
        ] {
            assert_eq!(exact_reciprocal(div), None, "{div}");
        }
    }

    #[test]
    fn integer_and_fp8_dtypes_are_not_averaged() {
        assert_eq!(kind(Dtype::I64), Kind::Exact);
        assert_eq!(kind(Dtype::BOOL), Kind::Exact);
        assert_eq!(kind(Dtype::F8_E4M3), Kind::Opaque);
        assert_eq!(kind(Dtype::BF16), Kind::Float);
        assert_eq!(kind(Dtype::F64), Kind::Double);
    }
}
