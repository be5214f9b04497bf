//! The loop bodies of the kernels: element words in, element words out,
//! one block at a time, each written so that LLVM vectorises it.

use half::f16;

/// Elements per block of the conversion loops: small enough for on-stack
/// staging buffers and a `u32` count, large enough to amortise the setup.
pub(super) const BLOCK: usize = 1024;

/// Element words: the unsigned integer of an element's width.
pub(super) trait Word: bytemuck::Pod {
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
pub(super) trait Kernel<Src, Dst> {
    fn run(&self, src: &[Src], dst: &mut [Dst]) -> u32;
}

/// Runs `k` over the `dst.len()` words at the start of `bytes` (`W`-sized
/// elements) and `dst`; returns the sum of its counts.
#[inline(always)]
pub(super) fn for_words<W: Word, D, K: Kernel<W, D>>(bytes: &[u8], dst: &mut [D], k: &K) -> u64 {
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
pub(super) fn to_words<S, W: Word, K: Kernel<S, W>>(src: &[S], out: &mut [u8], k: &K) {
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
pub(super) trait Scale: Copy {
    fn apply(self, x: f32) -> f32;
}

#[derive(Clone, Copy)]
pub(super) struct Identity;
#[derive(Clone, Copy)]
pub(super) struct Mul(pub(super) f32);
#[derive(Clone, Copy)]
pub(super) struct Div(pub(super) f32);

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
pub(super) struct DecodeBf16;
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
pub(super) struct DecodeF32;
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
pub(super) struct DecodeF16;
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
pub(super) struct DecodeF64;
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
pub(super) struct AccumulateBf16<const FIRST: bool>(pub(super) f32);
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
pub(super) struct AccumulateF32<const FIRST: bool>(pub(super) f32);
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

/// As [`AccumulateBf16`] for values already decoded to f32.
pub(super) struct AccumulateValues<const FIRST: bool>(pub(super) f32);
impl<const FIRST: bool> Kernel<f32, f32> for AccumulateValues<FIRST> {
    #[inline(always)]
    fn run(&self, src: &[f32], acc: &mut [f32]) -> u32 {
        let w = self.0;
        let mut bad = 0u32;
        for (a, &x) in acc.iter_mut().zip(src) {
            bad += u32::from(!x.is_finite());
            add_term::<FIRST>(a, w, x);
        }
        bad
    }
}

/// As [`AccumulateBf16`] for words of `D`ecoded elements (F16, F64):
/// decoded into a block on the stack, then [`AccumulateValues`].
pub(super) struct AccumulateVia<D, const FIRST: bool>(pub(super) D, pub(super) f32);
impl<W: Copy, D: Kernel<W, f32>, const FIRST: bool> Kernel<W, f32> for AccumulateVia<D, FIRST> {
    #[inline(always)]
    fn run(&self, src: &[W], acc: &mut [f32]) -> u32 {
        let mut x = [0f32; BLOCK];
        let x = &mut x[..acc.len()];
        self.0.run(src, x);
        AccumulateValues::<FIRST>(self.1).run(x, acc)
    }
}

/// `scale(v)` → bf16 words.
pub(super) struct EncodeBf16<S>(pub(super) S);
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
pub(super) struct EncodeF32<S>(pub(super) S);
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
pub(super) struct EncodeF16<S>(pub(super) S);
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
pub(super) struct EncodeF64<S>(pub(super) S);
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

/// `acc = (if FIRST { 0.0 } else { acc }) + w * x`.
#[inline(always)]
pub(super) fn add_term<const FIRST: bool>(acc: &mut f32, w: f32, x: f32) {
    *acc = if FIRST { 0.0 } else { *acc } + w * x;
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
pub(super) fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) as u16 & 0x8000) | 0x7FC0;
    if v.is_nan() { nan } else { rounded }
}
