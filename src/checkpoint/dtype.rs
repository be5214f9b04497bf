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

/// Elements per block of the conversion loops: small enough for on-stack
/// staging buffers and a `u32` count, large enough to amortise the setup.
const BLOCK: usize = 1024;

/// Calls `f` with the first `n` (≤ [`BLOCK`]) words of `bytes`, borrowed in
/// place when `bytes` is aligned for `T`, else copied to an on-stack stage.
/// Loops over a `&[T]` vectorise; loops that assemble words from bytes
/// (`from_le_bytes` over `chunks_exact`) do not: LLVM loads them byte by
/// byte. The words are in file (little-endian) order: apply `from_le`.
#[inline(always)]
fn read_words<T: bytemuck::Pod, R>(bytes: &[u8], n: usize, f: impl FnOnce(&[T]) -> R) -> R {
    let bytes = &bytes[..n * std::mem::size_of::<T>()];
    match bytemuck::try_cast_slice(bytes) {
        Ok(w) => f(w),
        Err(_) => {
            let mut stage = [T::zeroed(); BLOCK];
            let stage = &mut stage[..n];
            bytemuck::cast_slice_mut(stage).copy_from_slice(bytes);
            f(stage)
        }
    }
}

/// Calls `f` to fill `n` (≤ [`BLOCK`]) words that become the first bytes of
/// `out`: written in place when `out` is aligned for `T`, else through an
/// on-stack stage. `f` must store little-endian words (`to_le`).
#[inline(always)]
fn write_words<T: bytemuck::Pod>(out: &mut [u8], n: usize, f: impl FnOnce(&mut [T])) {
    let out = &mut out[..n * std::mem::size_of::<T>()];
    match bytemuck::try_cast_slice_mut(out) {
        Ok(w) => f(w),
        Err(_) => {
            let mut stage = [T::zeroed(); BLOCK];
            let stage = &mut stage[..n];
            f(stage);
            out.copy_from_slice(bytemuck::cast_slice(stage));
        }
    }
}

/// Applies `f` to successive blocks of [`BLOCK`] elements of `input` (each
/// `in_w` items wide) and `out` (`out_w` items each), stopping at the shorter.
#[inline(always)]
fn blocks<A, B>(
    input: &[A],
    in_w: usize,
    out: &mut [B],
    out_w: usize,
    mut f: impl FnMut(&[A], &mut [B]),
) {
    for (i, o) in input
        .chunks(BLOCK * in_w)
        .zip(out.chunks_mut(BLOCK * out_w))
    {
        f(i, o);
    }
}

/// Decodes `out.len()` elements of `dtype` from `bytes` into f32.
///
/// Panics if `bytes` is shorter than `out.len()` elements or `dtype` is not a
/// float dtype; callers slice both from validated tensor metadata.
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    let width = size_of(dtype);
    assert!(
        bytes.len() >= out.len() * width,
        "decode_f32: input too short"
    );
    match dtype {
        Dtype::F32 => blocks(bytes, 4, out, 1, |b, o| {
            read_words(b, o.len(), |w: &[u32]| {
                for (o, &w) in o.iter_mut().zip(w) {
                    *o = f32::from_bits(u32::from_le(w));
                }
            })
        }),
        Dtype::BF16 => blocks(bytes, 2, out, 1, |b, o| {
            read_words(b, o.len(), |w: &[u16]| {
                for (o, &w) in o.iter_mut().zip(w) {
                    *o = f32::from_bits(u32::from(u16::from_le(w)) << 16);
                }
            })
        }),
        Dtype::F16 => blocks(bytes, 2, out, 1, |b, o| {
            use half::slice::HalfFloatSliceExt;
            let mut h = [f16::ZERO; BLOCK];
            let h = &mut h[..o.len()];
            read_words(b, o.len(), |w: &[u16]| {
                for (h, &w) in h.iter_mut().zip(w) {
                    *h = f16::from_bits(u16::from_le(w));
                }
            });
            // Same bits as `f16::to_f32` per element, vectorised (F16C).
            h.convert_to_f32_slice(o);
        }),
        Dtype::F64 => blocks(bytes, 8, out, 1, |b, o| {
            read_words(b, o.len(), |w: &[u64]| {
                for (o, &w) in o.iter_mut().zip(w) {
                    *o = f64::from_bits(u64::from_le(w)) as f32;
                }
            })
        }),
        other => panic!("decode_f32 called on non-float dtype {other:?}"),
    }
}

/// Decodes `out.len()` elements of any float dtype into f64 (exact widening).
pub fn decode_f64(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
    if dtype == Dtype::F64 {
        assert!(bytes.len() >= out.len() * 8, "decode_f64: input too short");
        blocks(bytes, 8, out, 1, |b, o| {
            read_words(b, o.len(), |w: &[u64]| {
                for (o, &w) in o.iter_mut().zip(w) {
                    *o = f64::from_bits(u64::from_le(w));
                }
            })
        });
        return;
    }
    let mut tmp = [0f32; BLOCK];
    blocks(bytes, size_of(dtype), out, 1, |b, o| {
        let t = &mut tmp[..o.len()];
        decode_f32(dtype, b, t);
        for (x, y) in o.iter_mut().zip(t.iter()) {
            *x = *y as f64;
        }
    });
}

/// Encodes f32 values as `dtype` little-endian bytes, rounding to nearest even.
pub fn encode_f32(dtype: Dtype, values: &[f32], out: &mut [u8]) {
    encode_with(dtype, values, out, |v| v);
}

/// Encodes `map(v)` for each of `values` as `dtype` (the shared body of
/// [`encode_f32`] and [`divide_encode_f32`]; `map` is inlined into each loop).
#[inline(always)]
fn encode_with(dtype: Dtype, values: &[f32], out: &mut [u8], map: impl Fn(f32) -> f32) {
    let width = size_of(dtype);
    assert!(
        out.len() >= values.len() * width,
        "encode: output too short"
    );
    match dtype {
        Dtype::F32 => blocks(values, 1, out, 4, |v, o| {
            write_words(o, v.len(), |w: &mut [u32]| {
                for (w, &v) in w.iter_mut().zip(v) {
                    *w = map(v).to_bits().to_le();
                }
            })
        }),
        Dtype::BF16 => blocks(values, 1, out, 2, |v, o| {
            write_words(o, v.len(), |w: &mut [u16]| {
                for (w, &v) in w.iter_mut().zip(v) {
                    *w = bf16_bits(map(v)).to_le();
                }
            })
        }),
        Dtype::F16 => blocks(values, 1, out, 2, |v, o| {
            use half::slice::HalfFloatSliceExt;
            let mut q = [0f32; BLOCK];
            let q = &mut q[..v.len()];
            for (q, &v) in q.iter_mut().zip(v) {
                *q = map(v);
            }
            let mut h = [f16::ZERO; BLOCK];
            let h = &mut h[..v.len()];
            // Same bits as `f16::from_f32` per element (round to nearest
            // even), vectorised (F16C).
            h.convert_from_f32_slice(q);
            write_words(o, v.len(), |w: &mut [u16]| {
                for (w, h) in w.iter_mut().zip(h.iter()) {
                    *w = h.to_bits().to_le();
                }
            })
        }),
        Dtype::F64 => blocks(values, 1, out, 8, |v, o| {
            write_words(o, v.len(), |w: &mut [u64]| {
                for (w, &v) in w.iter_mut().zip(v) {
                    *w = f64::from(map(v)).to_bits().to_le();
                }
            })
        }),
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
        blocks(values, 1, out, 8, |v, o| {
            write_words(o, v.len(), |w: &mut [u64]| {
                for (w, &v) in w.iter_mut().zip(v) {
                    *w = v.to_bits().to_le();
                }
            })
        });
        return;
    }
    let mut tmp = [0f32; BLOCK];
    blocks(values, 1, out, size_of(dtype), |v, o| {
        let t = &mut tmp[..v.len()];
        for (x, y) in t.iter_mut().zip(v) {
            *x = *y as f32;
        }
        encode_f32(dtype, t, o);
    });
}

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
pub fn accumulate_f32(dtype: Dtype, bytes: &[u8], w: f32, acc: &mut [f32], first: bool) -> u64 {
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
    let width = size_of(dtype);
    assert!(
        bytes.len() >= acc.len() * width,
        "accumulate_f32: {} bytes for {} elements",
        bytes.len(),
        acc.len()
    );
    let mut bad = 0u64;
    blocks(bytes, width, acc, 1, |b, a| {
        let n = a.len();
        bad += u64::from(match dtype {
            Dtype::BF16 => read_words(b, n, |words: &[u16]| {
                let mut bad = 0u32;
                for (a, &h) in a.iter_mut().zip(words) {
                    let h = u16::from_le(h);
                    // Exponent all ones: Inf or NaN.
                    bad += u32::from(h & 0x7F80 == 0x7F80);
                    add_term::<FIRST>(a, w, f32::from_bits(u32::from(h) << 16));
                }
                bad
            }),
            Dtype::F32 => read_words(b, n, |words: &[u32]| {
                let mut bad = 0u32;
                for (a, &x) in a.iter_mut().zip(words) {
                    let x = u32::from_le(x);
                    bad += u32::from(x & 0x7F80_0000 == 0x7F80_0000);
                    add_term::<FIRST>(a, w, f32::from_bits(x));
                }
                bad
            }),
            _ => {
                let mut x = [0f32; BLOCK];
                let x = &mut x[..n];
                decode_f32(dtype, b, x);
                let mut bad = 0u32;
                for (a, &x) in a.iter_mut().zip(x.iter()) {
                    bad += u32::from(!x.is_finite());
                    add_term::<FIRST>(a, w, x);
                }
                bad
            }
        });
    });
    bad
}

/// The last step of averaging: `out = encode(acc[j] / divisor)` as `dtype`
/// bytes, one true f32 division per element (not a multiplication by the
/// reciprocal, which can differ in the last bit), then the rounding of
/// [`encode_f32`].
///
/// When `1 / divisor` is exactly representable (the divisor is a power of
/// two, as for a uniform average of 2, 4, 8 … inputs or weights summing to
/// 1), multiplying by it gives the same correctly rounded result as the
/// division for every input, and is several times faster: both are the
/// exact quotient rounded once.
///
/// Panics if `out` is shorter than `acc.len()` elements of `dtype`.
pub fn divide_encode_f32(acc: &[f32], divisor: f32, dtype: Dtype, out: &mut [u8]) {
    match exact_reciprocal(divisor) {
        Some(r) => encode_with(dtype, acc, out, |a| a * r),
        None => encode_with(dtype, acc, out, |a| a / divisor),
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
