//! The lane sums of the basin check: `Σ a·b`, `Σ a²`, `Σ b²` and
//! `Σ (a−b)²` over two f32 slices, in f64.

/// Independent f64 accumulators per sum: 8 lanes fill two AVX2 (or one
/// AVX-512) f64 vectors per sum.
pub const SUM_LANES: usize = 8;

/// The four sums `[Σ a·b, Σ a², Σ b², Σ (a−b)²]` over the first
/// `n = min(a.len(), b.len())` elements rounded down to whole
/// [`SUM_LANES`]: element `k` goes to lane `k % SUM_LANES`, each lane adds
/// in element order, and the lanes are added in lane order at the end.
///
/// Every product `x·y` of two f32 values widened to f64 is exact, and no
/// operation is fused or reassociated, so every compiled version returns
/// the same bits. A NaN or ±Inf among the elements makes a square sum
/// non-finite (and finite elements cannot overflow: each square is below
/// 2¹²⁸·2¹²⁸ = 2²⁵⁶, far below f64's range even summed 2⁴⁰ times), so the
/// sums are all finite exactly when every element is.
#[inline(always)]
pub(crate) fn lane_sums_generic(a: &[f32], b: &[f32]) -> [f64; 4] {
    let n = a.len().min(b.len()) / SUM_LANES * SUM_LANES;
    let mut dot = [0f64; SUM_LANES];
    let mut sq_a = [0f64; SUM_LANES];
    let mut sq_b = [0f64; SUM_LANES];
    let mut sq_diff = [0f64; SUM_LANES];
    for (xa, xb) in a[..n]
        .chunks_exact(SUM_LANES)
        .zip(b[..n].chunks_exact(SUM_LANES))
    {
        for l in 0..SUM_LANES {
            let (x, y) = (xa[l] as f64, xb[l] as f64);
            dot[l] += x * y;
            sq_a[l] += x * x;
            sq_b[l] += y * y;
            sq_diff[l] += (x - y) * (x - y);
        }
    }
    [
        dot.iter().sum::<f64>(),
        sq_a.iter().sum::<f64>(),
        sq_b.iter().sum::<f64>(),
        sq_diff.iter().sum::<f64>(),
    ]
}
