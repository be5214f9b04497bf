//! The element kernels of every pass: little-endian bytes of F32, F16,
//! BF16 and F64 decoded to the accumulation type, the fused
//! decode-and-accumulate loop of averaging, and the fused divide-and-encode
//! of its last step.
//!
//! Float inputs are accumulated in f32 (f64 for F64), as PyTorch does when a
//! script writes `sum(w * t.float() for ...) / sum(w)`. Conversion back to a
//! 16-bit type rounds to nearest, ties to even (IEEE 754 default rounding), the
//! rounding of `Tensor.to(torch.bfloat16)` / `.to(torch.float16)`.
//!
//! Decoding works on byte slices of any alignment: tensor data inside a
//! safetensors file need not be aligned to its element size (the header length
//! is arbitrary), so nothing here reinterprets `&[u8]` as `&[f32]`.
//!
//! The hot kernels ([`decode_f32`], [`encode_f32`], [`accumulate_f32`],
//! [`divide_encode_f32`], and the basin check's [`lane_sums`]) are written once as `#[inline(always)]` generic
//! bodies (the `*_generic` functions) and compiled for each vector extension
//! by the run-time dispatch in the crate's one `unsafe` module (`sys::simd`);
//! every version does the same IEEE operations in the same order, so the
//! results are bit-identical whichever runs.

mod elements;
mod sums;

use safetensors::Dtype;

use crate::checkpoint::dtype::size_of;
use elements::*;
pub use sums::SUM_LANES;
pub(crate) use sums::lane_sums_generic;

pub use crate::sys::simd::{
    Isa, accumulate_f32, accumulate_f32_on, accumulate_values_f32, accumulate_values_f32_on,
    decode_f32, decode_f32_on, divide_encode_f32, divide_encode_f32_on, encode_f32, encode_f32_on,
    lane_sums, lane_sums_on,
};

#[inline(always)]
pub(crate) fn decode_f32_generic(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
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

#[inline(always)]
pub(crate) fn encode_f32_generic(dtype: Dtype, values: &[f32], out: &mut [u8]) {
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

#[inline(always)]
pub(crate) fn accumulate_f32_generic(
    dtype: Dtype,
    bytes: &[u8],
    w: f32,
    acc: &mut [f32],
    first: bool,
) -> u64 {
    if first {
        accumulate_impl::<true>(dtype, bytes, w, acc)
    } else {
        accumulate_impl::<false>(dtype, bytes, w, acc)
    }
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

/// [`accumulate_f32_generic`] for values already decoded to f32 (what
/// [`decode_f32`] gives for any float dtype): the same `w * x` and add per
/// element, and the same count of NaN/±Inf values.
#[inline(always)]
pub(crate) fn accumulate_values_f32_generic(
    x: &[f32],
    w: f32,
    acc: &mut [f32],
    first: bool,
) -> u64 {
    assert!(
        x.len() >= acc.len(),
        "accumulate_values_f32: {} values for {} elements",
        x.len(),
        acc.len()
    );
    let mut bad = 0u64;
    for (x, acc) in x.chunks(BLOCK).zip(acc.chunks_mut(BLOCK)) {
        bad += u64::from(if first {
            AccumulateValues::<true>(w).run(x, acc)
        } else {
            AccumulateValues::<false>(w).run(x, acc)
        });
    }
    bad
}

#[inline(always)]
pub(crate) fn divide_encode_f32_generic(acc: &[f32], divisor: f32, dtype: Dtype, out: &mut [u8]) {
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

#[cfg(test)]
mod tests;
