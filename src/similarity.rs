//! Similarity matrices for weight matching: for a permutation group of `n`
//! units, `S[i, j] = Σ over members ⟨A's unit i, B's unit j⟩`, where a unit's
//! vector is everything its axis positions touch in that tensor (a row of
//! `fc1.weight`, a column of `fc2.weight`, a head's block of rows …).
//! Maximising `Σ_i S[i, p[i]]` over permutations `p` is one step of
//! Ainsworth et al.'s weight matching (Git Re-Basin, 2022, Algorithm 1).
//!
//! Each member adds `A_u · B_uᵀ`, with `A_u`, `B_u` the tensor rearranged to
//! `[n, L]` (unit-major). The product is an f32 GEMM (`matrixmultiply`,
//! through ndarray) accumulated into an f64 matrix across members. When the
//! unit axis is the first or the last one and unblocked, the tensor is used
//! in place as a (transposed) matrix view; other layouts are copied once.
//! [`accumulate_f32`] takes a stretch of axis-0 slices at a time, so callers
//! can stream large tensors (embeddings, LM heads) in row chunks.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};

use crate::spec::AxisMember;

/// Adds one member's contribution to the `n × n` matrix `s` (row-major).
/// `a` and `b` are the whole tensors (same `shape`), decoded to f32, with
/// every *other* group's permutation already applied to `b`.
pub fn accumulate(s: &mut [f64], a: &[f32], b: &[f32], shape: &[usize], m: &AxisMember, n: usize) {
    let mut contribution = vec![0.0f32; n * n];
    accumulate_f32(&mut contribution, a, b, shape, m, n);
    for (x, y) in s.iter_mut().zip(contribution.iter()) {
        *x += *y as f64;
    }
}

/// Adds `A_u · B_uᵀ` for one member to the f32 `n × n` matrix `acc`.
///
/// For a member on axis ≥ 1, `a` and `b` may be any stretch of whole
/// slices along axis 0 (`shape[0]` is then the stretch's length): a unit's
/// vector is the concatenation over axis 0, so stretches add up to the
/// whole member. This is how large tensors are processed in row chunks
/// without materialising them in f32.
pub fn accumulate_f32(
    acc: &mut [f32],
    a: &[f32],
    b: &[f32],
    shape: &[usize],
    m: &AxisMember,
    n: usize,
) {
    let mut out = ArrayViewMut2::from_shape((n, n), acc).expect("n × n accumulator");
    let axis_len = shape[m.axis];
    let pre: usize = shape[..m.axis].iter().product();
    let post: usize = shape[m.axis + 1..].iter().product();
    if pre == 1 && m.repeat == 1 {
        // Units are contiguous runs of block·post elements: a [n, block·post] view.
        let width = m.block * post;
        let off = m.start * post;
        let av = ArrayView2::from_shape((n, width), &a[off..off + n * width]).expect("unit rows");
        let bv = ArrayView2::from_shape((n, width), &b[off..off + n * width]).expect("unit rows");
        general_mat_mul(1.0, &av, &bv.t(), 1.0, &mut out);
        return;
    }
    if post == 1 && m.block == 1 && m.repeat == 1 {
        // Units are columns of a [pre, axis_len] matrix.
        let av = ArrayView2::from_shape((pre, axis_len), a).expect("matrix");
        let bv = ArrayView2::from_shape((pre, axis_len), b).expect("matrix");
        let av = av.slice(s![.., m.start..m.start + n]);
        let bv = bv.slice(s![.., m.start..m.start + n]);
        general_mat_mul(1.0, &av.t(), &bv, 1.0, &mut out);
        return;
    }
    let au = unit_major(a, pre, axis_len, post, m, n);
    let bu = unit_major(b, pre, axis_len, post, m, n);
    general_mat_mul(1.0, &au, &bu.t(), 1.0, &mut out);
}

/// Adds `Σ ⟨A[units[i]], B[units[j]]⟩` to the `n × n` matrix `s`, where
/// `units[u]` lists the axis positions of unit `u` explicitly (every unit the
/// same number, in matching order). Used for groups whose positions have
/// been relabelled through the groups composed after them, and for the
/// Gram blocks of joint head steps. When unit `u` is just position `u` of
/// the whole axis, the tensor is multiplied where it lies ([`accumulate`]):
/// the same products, without copying it unit-major (a transpose, element
/// by element, for a column axis).
pub fn accumulate_positions(
    s: &mut [f64],
    a: &[f32],
    b: &[f32],
    shape: &[usize],
    axis: usize,
    units: &[Vec<usize>],
) {
    let n = units.len();
    if n == shape[axis] && consecutive_positions(units) == Some(0) {
        return accumulate(s, a, b, shape, &AxisMember::plain("", axis), n);
    }
    let g = unit_rows(a, shape, axis, units).dot(&unit_rows(b, shape, axis, units).t());
    for (x, y) in s.iter_mut().zip(g.iter()) {
        *x += *y as f64;
    }
}

/// `Some(first)` when unit `u` is exactly the one axis position
/// `first + u` (consecutive single positions, in order); `None` otherwise
/// or for no units.
pub(crate) fn consecutive_positions(units: &[Vec<usize>]) -> Option<usize> {
    let first = *units.first()?.first()?;
    units
        .iter()
        .enumerate()
        .all(|(u, p)| p.len() == 1 && p[0] == first + u)
        .then_some(first)
}

/// The tensor `x` of `shape` as one row per unit: row `u` holds every
/// element whose position along `axis` is in `units[u]` (every unit the
/// same number of positions, in matching order).
pub fn unit_rows(x: &[f32], shape: &[usize], axis: usize, units: &[Vec<usize>]) -> Array2<f32> {
    let n = units.len();
    let axis_len = shape[axis];
    let pre: usize = shape[..axis].iter().product();
    let post: usize = shape[axis + 1..].iter().product();
    let per = units.first().map_or(0, Vec::len);
    let mut out = Array2::<f32>::zeros((n, pre * per * post));
    for (u, positions) in units.iter().enumerate() {
        let mut row = out.row_mut(u);
        let row = row.as_slice_mut().expect("standard layout");
        let mut k = 0;
        for p in 0..pre {
            for &pos in positions {
                let base = (p * axis_len + pos) * post;
                row[k..k + post].copy_from_slice(&x[base..base + post]);
                k += post;
            }
        }
    }
    out
}

/// Copies a tensor viewed as `[pre, axis_len, post]` into `[n, L]`, row `u`
/// holding every element whose axis position belongs to unit `u`.
fn unit_major(
    x: &[f32],
    pre: usize,
    axis_len: usize,
    post: usize,
    m: &AxisMember,
    n: usize,
) -> Array2<f32> {
    let width = pre * m.repeat * m.block * post;
    let mut out = Array2::<f32>::zeros((n, width));
    for u in 0..n {
        let mut row = out.row_mut(u);
        let row = row.as_slice_mut().expect("standard layout");
        let mut k = 0;
        for p in 0..pre {
            for r in 0..m.repeat {
                for i in 0..m.block {
                    let pos = m.position(n, r, u, i);
                    let base = (p * axis_len + pos) * post;
                    row[k..k + post].copy_from_slice(&x[base..base + post]);
                    k += post;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram(a: &[f32], b: &[f32], shape: &[usize], m: &AxisMember, n: usize) -> Vec<f64> {
        let mut s = vec![0.0; n * n];
        accumulate(&mut s, a, b, shape, m, n);
        s
    }

    #[test]
    fn rows_of_a_weight_matrix_give_row_dot_products() {
        // A = [[1 2] [3 4]], B = [[1 0] [0 1]]: S[i][j] = <A_i, B_j>.
        let s = gram(
            &[1., 2., 3., 4.],
            &[1., 0., 0., 1.],
            &[2, 2],
            &AxisMember::plain("w", 0),
            2,
        );
        assert_eq!(s, vec![1., 2., 3., 4.]);
    }

    #[test]
    fn columns_of_a_weight_matrix_give_column_dot_products() {
        // columns of A: (1,3), (2,4); of B: (1,0), (0,1): S = [[1 3] [2 4]].
        let s = gram(
            &[1., 2., 3., 4.],
            &[1., 0., 0., 1.],
            &[2, 2],
            &AxisMember::plain("w", 1),
            2,
        );
        assert_eq!(s, vec![1., 3., 2., 4.]);
    }

    #[test]
    fn blocked_units_sum_over_their_whole_block() {
        // A vector of 4 as 2 units of block 2: units (1,2) and (3,4); B = A.
        let m = AxisMember {
            block: 2,
            ..AxisMember::plain("v", 0)
        };
        let a = [1., 2., 3., 4.];
        let s = gram(&a, &a, &[4], &m, 2);
        // (1·1+2·2, 1·3+2·4; 3·1+4·2, 3·3+4·4)
        assert_eq!(s, vec![5., 11., 11., 25.]);
    }

    #[test]
    fn row_chunks_of_a_member_add_up_to_the_whole_member() {
        // shape [5, 3, 4]: units on axis 2 (columns) and, blocked, on axis 1.
        let a: Vec<f32> = (0..60).map(|x| ((x * 37) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..60).map(|x| ((x * 13) % 7) as f32 - 3.0).collect();
        for (m, n) in [
            (AxisMember::plain("t", 2), 4),
            (
                AxisMember {
                    block: 1,
                    repeat: 1,
                    ..AxisMember::plain("t", 1)
                },
                3,
            ),
        ] {
            let mut whole = vec![0.0f32; n * n];
            accumulate_f32(&mut whole, &a, &b, &[5, 3, 4], &m, n);
            let mut chunked = vec![0.0f32; n * n];
            for (r0, r1) in [(0, 2), (2, 3), (3, 5)] {
                accumulate_f32(
                    &mut chunked,
                    &a[r0 * 12..r1 * 12],
                    &b[r0 * 12..r1 * 12],
                    &[r1 - r0, 3, 4],
                    &m,
                    n,
                );
            }
            assert_eq!(whole, chunked);
        }
    }

    #[test]
    fn units_that_are_the_whole_axis_in_order_give_the_bits_of_the_unit_major_copy() {
        // shape [37, 29, 23]: every axis in turn, units = its positions in
        // order; large enough for several packed panels of the GEMM.
        let shape = [37, 29, 23];
        let len: usize = shape.iter().product();
        let a: Vec<f32> = (0..len)
            .map(|x| ((x * 37) % 101) as f32 / 8.0 - 6.0)
            .collect();
        let b: Vec<f32> = (0..len)
            .map(|x| ((x * 53) % 89) as f32 / 16.0 - 2.5)
            .collect();
        for axis in 0..3 {
            let units: Vec<Vec<usize>> = (0..shape[axis]).map(|u| vec![u]).collect();
            let n = units.len();
            let mut fast = vec![0.0; n * n];
            accumulate_positions(&mut fast, &a, &b, &shape, axis, &units);
            let g =
                unit_rows(&a, &shape, axis, &units).dot(&unit_rows(&b, &shape, axis, &units).t());
            let copied: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&copied), "axis {axis}");
        }
    }

    #[test]
    fn repeated_units_on_a_middle_axis_use_the_general_copy() {
        // shape [2, 4, 1]: axis 1 holds repeat 2 × 2 units; unit u collects
        // positions u and 2+u of both rows.
        let m = AxisMember {
            repeat: 2,
            ..AxisMember::plain("t", 1)
        };
        let a: Vec<f32> = (1..=8).map(|x| x as f32).collect();
        let ones = vec![1.0f32; 8];
        let s = gram(&a, &ones, &[2, 4, 1], &m, 2);
        // unit 0 of A: positions 0,2 of rows 0,1 = 1,3,5,7 (sum 16); unit 1: 2,4,6,8 (sum 20)
        assert_eq!(s, vec![16., 16., 20., 20.]);
    }
}
