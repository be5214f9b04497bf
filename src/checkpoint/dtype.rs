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

use half::{bf16, f16};
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

/// Decodes `out.len()` elements of `dtype` from `bytes` into f32.
///
/// Panics if `bytes` is shorter than `out.len()` elements or `dtype` is not a
/// float dtype; callers slice both from validated tensor metadata.
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Dtype::F64 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *o = f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32;
            }
        }
        other => panic!("decode_f32 called on non-float dtype {other:?}"),
    }
}

/// Decodes `out.len()` elements of any float dtype into f64 (exact widening).
pub fn decode_f64(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
    if dtype == Dtype::F64 {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *o = f64::from_le_bytes(c.try_into().expect("chunk of 8"));
        }
        return;
    }
    let mut tmp = [0f32; 1024];
    for (o, b) in out
        .chunks_mut(tmp.len())
        .zip(bytes.chunks(tmp.len() * size_of(dtype)))
    {
        let t = &mut tmp[..o.len()];
        decode_f32(dtype, b, t);
        for (x, y) in o.iter_mut().zip(t.iter()) {
            *x = *y as f64;
        }
    }
}

/// Encodes f32 values as `dtype` little-endian bytes, rounding to nearest even.
pub fn encode_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    match dtype {
        Dtype::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
        Dtype::F16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        Dtype::F64 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(8)) {
                o.copy_from_slice(&(*v as f64).to_le_bytes());
            }
        }
        other => panic!("encode_f32 called on non-float dtype {other:?}"),
    }
}

/// Encodes f64 values as `dtype` bytes (via f32 for the narrower types, which
/// is what `tensor.double().to(dtype)` does for values in range).
pub fn encode_f64(dtype: Dtype, values: &[f64], out: &mut [u8]) {
    if dtype == Dtype::F64 {
        for (v, o) in values.iter().zip(out.chunks_exact_mut(8)) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    let mut tmp = [0f32; 1024];
    let w = size_of(dtype);
    for (v, o) in values.chunks(tmp.len()).zip(out.chunks_mut(tmp.len() * w)) {
        let t = &mut tmp[..v.len()];
        for (x, y) in t.iter_mut().zip(v) {
            *x = *y as f32;
        }
        encode_f32(dtype, t, o);
    }
}

/// f32 → bf16 bits, round to nearest even; NaN becomes the canonical quiet
/// NaN 0x7FC0 (sign kept), as `c10::BFloat16` does.
fn bf16_bits(v: f32) -> u16 {
    if v.is_nan() {
        return if v.is_sign_negative() { 0xFFC0 } else { 0x7FC0 };
    }
    bf16::from_f32(v).to_bits()
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
    fn integer_and_fp8_dtypes_are_not_averaged() {
        assert_eq!(kind(Dtype::I64), Kind::Exact);
        assert_eq!(kind(Dtype::BOOL), Kind::Exact);
        assert_eq!(kind(Dtype::F8_E4M3), Kind::Opaque);
        assert_eq!(kind(Dtype::BF16), Kind::Float);
        assert_eq!(kind(Dtype::F64), Kind::Double);
    }
}
