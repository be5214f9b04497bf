//! Tests of the kernels: rounding, unaligned bytes, fused kernels against
//! their unfused definitions, and every SIMD version against the baseline.

use half::f16;
use safetensors::Dtype;

use super::elements::bf16_bits;
use super::*;
use crate::checkpoint::dtype::{Kind, kind};

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
        .flat_map(|hi| [0u32, 1, 0x7FFF, 0x8000, 0xFFFF].map(|lo| f32::from_bits(hi << 16 | lo)))
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

/// Checks the kernels compiled for `isa` against the baseline build
/// (the `*_generic` functions called directly), bit for bit, on every
/// dtype, aligned and unaligned, with NaN payloads, infinities and
/// subnormals; `dispatch` runs the public (dispatching) kernels instead.
fn assert_version_gives_the_baseline_bits(isa: Isa, dispatch: bool) {
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
    let encode = |dt, v: &[f32], o: &mut [u8]| match dispatch {
        true => encode_f32(dt, v, o),
        false => encode_f32_on(isa, dt, v, o),
    };
    let decode = |dt, b: &[u8], o: &mut [f32]| match dispatch {
        true => decode_f32(dt, b, o),
        false => decode_f32_on(isa, dt, b, o),
    };
    let accumulate = |dt, b: &[u8], w, acc: &mut [f32], first| match dispatch {
        true => accumulate_f32(dt, b, w, acc, first),
        false => accumulate_f32_on(isa, dt, b, w, acc, first),
    };
    let accumulate_values = |x: &[f32], w, acc: &mut [f32], first| match dispatch {
        true => accumulate_values_f32(x, w, acc, first),
        false => accumulate_values_f32_on(isa, x, w, acc, first),
    };
    let divide = |acc: &[f32], div, dt, o: &mut [u8]| match dispatch {
        true => divide_encode_f32(acc, div, dt, o),
        false => divide_encode_f32_on(isa, acc, div, dt, o),
    };
    let sums = |a: &[f32], b: &[f32]| match dispatch {
        true => lane_sums(a, b),
        false => lane_sums_on(isa, a, b),
    };
    // Finite values (5001: a remainder past the whole lanes), then all of
    // them (NaN, Inf: the sums turn non-finite in every version).
    let finite: Vec<f32> = vals.iter().copied().filter(|v| v.abs() < 1e30).collect();
    let shifted: Vec<f32> = finite.iter().rev().map(|v| v * 0.75 - 1e-3).collect();
    let f64_bits = |s: [f64; 4]| s.map(f64::to_bits);
    let got = sums(&finite, &shifted);
    assert!(got.iter().all(|s| s.is_finite()), "{isa:?} lane sums");
    assert_eq!(
        f64_bits(got),
        f64_bits(lane_sums_generic(&finite, &shifted)),
        "{isa:?} lane sums"
    );
    let rev: Vec<f32> = vals.iter().rev().copied().collect();
    let (s1, s2) = (sums(&vals, &rev), lane_sums_generic(&vals, &rev));
    assert!(
        !s1[1].is_finite() && !s2[1].is_finite(),
        "{isa:?} lane sums"
    );
    for dt in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
        let w = size_of(dt);
        let mut buf = vec![0u8; 1 + vals.len() * w];
        for off in [0, 1] {
            let a = vals.len() * w;
            let mut e1 = vec![0u8; a];
            let mut e2 = vec![0u8; a];
            encode(dt, &vals, &mut e1);
            encode_f32_generic(dt, &vals, &mut e2);
            assert_eq!(e1, e2, "{isa:?} encode {dt:?}");
            buf[off..off + a].copy_from_slice(&e1);
            let bytes = &buf[off..off + a];
            let mut d1 = vec![0f32; vals.len()];
            let mut d2 = vec![0f32; vals.len()];
            decode(dt, bytes, &mut d1);
            decode_f32_generic(dt, bytes, &mut d2);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d1), bits(&d2), "{isa:?} decode {dt:?}");
            let (mut a1, mut a2) = (vec![0f32; vals.len()], vec![0f32; vals.len()]);
            let mut a3 = vec![0f32; vals.len()];
            for first in [true, false] {
                let n1 = accumulate(dt, bytes, 0.3, &mut a1, first);
                let n2 = accumulate_f32_generic(dt, bytes, 0.3, &mut a2, first);
                assert_eq!(n1, n2, "{isa:?} accumulate count {dt:?}");
                assert_eq!(bits(&a1), bits(&a2), "{isa:?} accumulate {dt:?}");
                // Accumulating the decoded values is accumulating the bytes.
                let n3 = accumulate_values(&d2, 0.3, &mut a3, first);
                assert_eq!(n3, n2, "{isa:?} accumulate_values count {dt:?}");
                assert_eq!(bits(&a3), bits(&a2), "{isa:?} accumulate_values {dt:?}");
            }
            for div in [2.0, 3.0] {
                divide(&a1, div, dt, &mut e1);
                divide_encode_f32_generic(&a2, div, dt, &mut e2);
                assert_eq!(e1, e2, "{isa:?} divide_encode {dt:?} / {div}");
            }
        }
    }
}

/// Runs the check for `isa`; on a CPU without it, checks instead that the
/// dispatch never picks it and says so (the version cannot run there).
fn check_version(isa: Isa) {
    if isa.available() {
        assert_version_gives_the_baseline_bits(isa, false);
    } else {
        assert_ne!(Isa::best(), isa);
        eprintln!("{isa:?} is not available on this CPU: the dispatch never picks it");
    }
}

#[test]
fn the_baseline_version_called_through_its_dispatcher_gives_the_generic_bits() {
    assert!(Isa::Baseline.available());
    assert_version_gives_the_baseline_bits(Isa::Baseline, false);
}

#[test]
fn the_avx2_version_gives_the_baseline_bits() {
    check_version(Isa::Avx2);
}

#[test]
fn the_avx512_version_gives_the_baseline_bits() {
    check_version(Isa::Avx512);
}

#[test]
fn the_dispatching_kernels_run_the_widest_version_and_give_the_baseline_bits() {
    let best = Isa::best();
    assert!(best.available());
    assert!(
        Isa::ALL
            .iter()
            .all(|&i| !i.available() || i as u8 <= best as u8)
    );
    assert_version_gives_the_baseline_bits(best, true);
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
