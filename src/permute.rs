//! Applying permutations to tensors: the gather that turns run B's stored
//! bytes into B with its hidden units in A's order.
//!
//! A permutation is applied per tensor as one index map per axis:
//! `output[i_0, …, i_k, …] = input[m_0[i_0], …, m_k[i_k], …]` (an axis without
//! a map keeps its order). Maps come from the alignment stage, which composes
//! every permutation group touching an axis into one map. Gathering works on
//! raw element bytes, so any dtype is permuted exactly, bit for bit.

use std::collections::HashMap;
use std::ops::Range;

/// Index maps for every axis of one tensor (`None`: axis untouched).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorPermutation {
    pub axes: Vec<Option<Vec<usize>>>,
}

impl TensorPermutation {
    /// True if no axis is permuted (all maps absent or identity).
    pub fn is_identity(&self) -> bool {
        self.axes.iter().all(|m| match m {
            None => true,
            Some(m) => m.iter().enumerate().all(|(i, &j)| i == j),
        })
    }
}

/// Index maps for the tensors of a whole checkpoint; tensors not listed are
/// left as they are.
#[derive(Clone, Debug, Default)]
pub struct ModelPermutation {
    pub tensors: HashMap<String, TensorPermutation>,
}

impl ModelPermutation {
    /// The maps of `name`, if it is permuted at all.
    pub fn get(&self, name: &str) -> Option<&TensorPermutation> {
        self.tensors.get(name).filter(|p| !p.is_identity())
    }
}

/// One permutation per group of a spec, in the spec's group order: unit `u`
/// of group `g` in the output is unit `perms[g][u]` of the input (the
/// convention of [`TensorPermutation`]). What weight matching finds and
/// `--save-perm` stores.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct GroupPerms(Vec<Vec<usize>>);

impl GroupPerms {
    /// The identity permutation of groups of these sizes.
    pub fn identity(sizes: impl IntoIterator<Item = usize>) -> Self {
        Self(sizes.into_iter().map(|n| (0..n).collect()).collect())
    }

    /// Wraps one permutation per group (not checked: see [`is_permutation`]).
    pub fn new(perms: Vec<Vec<usize>>) -> Self {
        Self(perms)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no groups.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The permutations, in group order.
    pub fn iter(&self) -> std::slice::Iter<'_, Vec<usize>> {
        self.0.iter()
    }

    /// Replaces group `g`'s permutation.
    pub fn set(&mut self, g: usize, perm: Vec<usize>) {
        self.0[g] = perm;
    }

    /// True if group `g` is not permuted.
    pub fn is_identity(&self, g: usize) -> bool {
        self.0[g].iter().enumerate().all(|(i, &j)| i == j)
    }

    /// Fraction of group `g`'s units not at their own index (0 for an empty group).
    pub fn churn(&self, g: usize) -> f64 {
        let p = &self.0[g];
        let moved = p.iter().enumerate().filter(|(i, j)| i != *j).count();
        if p.is_empty() {
            0.0
        } else {
            moved as f64 / p.len() as f64
        }
    }

    /// The permutations as plain vectors.
    pub fn into_inner(self) -> Vec<Vec<usize>> {
        self.0
    }
}

impl std::ops::Index<usize> for GroupPerms {
    type Output = Vec<usize>;
    fn index(&self, g: usize) -> &Vec<usize> {
        &self.0[g]
    }
}

impl From<Vec<Vec<usize>>> for GroupPerms {
    fn from(perms: Vec<Vec<usize>>) -> Self {
        Self(perms)
    }
}

impl<'a> IntoIterator for &'a GroupPerms {
    type Item = &'a Vec<usize>;
    type IntoIter = std::slice::Iter<'a, Vec<usize>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Copies elements `range` (flat, row-major, of the *output*) of a tensor of
/// `shape` from `src` (the whole unpermuted tensor) into `out`, applying
/// `perm`. Each tensor element is `elem` items of `T` (its bytes when `T` is
/// `u8`, 1 for decoded `f32` data).
///
/// Panics if `out` is not exactly `range.len() * elem` items or a map is
/// shorter than its axis; callers validate maps against shapes first.
pub fn gather<T: Copy>(
    src: &[T],
    shape: &[usize],
    elem: usize,
    perm: &TensorPermutation,
    range: Range<usize>,
    out: &mut [T],
) {
    assert_eq!(out.len(), range.len() * elem);
    if shape.is_empty() || range.is_empty() {
        out.copy_from_slice(&src[range.start * elem..range.end * elem]);
        return;
    }
    let nd = shape.len();
    let row_len = shape[nd - 1];
    if row_len == 0 {
        return;
    }
    let mut strides = vec![1usize; nd];
    for k in (0..nd - 1).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    let axis_map = |k: usize, i: usize| -> usize {
        match perm.axes.get(k).and_then(|m| m.as_ref()) {
            Some(m) => m[i],
            None => i,
        }
    };
    let last_map = perm.axes.get(nd - 1).and_then(|m| m.as_ref());
    let mut e = range.start;
    let mut o = 0usize;
    while e < range.end {
        let row = e / row_len;
        let col = e % row_len;
        let take = (row_len - col).min(range.end - e);
        // Source offset of this row: decompose the row index over the leading axes.
        let mut rem = row;
        let mut src_row = 0usize;
        for k in (0..nd - 1).rev() {
            let i = rem % shape[k];
            rem /= shape[k];
            src_row += axis_map(k, i) * strides[k];
        }
        match last_map {
            None => {
                let s = (src_row + col) * elem;
                out[o..o + take * elem].copy_from_slice(&src[s..s + take * elem]);
            }
            Some(m) => {
                let (to, from) = (&mut out[o..o + take * elem], &m[col..col + take]);
                // One arm per common width, so each inlined copy has a
                // size known at compile time (a move, not a `memcpy` call).
                match elem {
                    1 => gather_row(src, 1, src_row, from, to),
                    2 => gather_row(src, 2, src_row, from, to),
                    4 => gather_row(src, 4, src_row, from, to),
                    e => gather_row(src, e, src_row, from, to),
                }
            }
        }
        e += take;
        o += take * elem;
    }
}

/// `to[j·e..(j+1)·e] = src[(src_row + from[j])·e..]`: one row gathered
/// through its last axis' map, `e` values per element. Always inlined, so
/// a caller passing a constant `e` (f32 values, bf16/f16 bytes, f32 bytes)
/// gets copies of that fixed size.
#[inline(always)]
fn gather_row<T: Copy>(src: &[T], e: usize, src_row: usize, from: &[usize], to: &mut [T]) {
    for (t, &c) in to.chunks_exact_mut(e).zip(from) {
        let s = (src_row + c) * e;
        t.copy_from_slice(&src[s..s + e]);
    }
}

/// Returns `src` (a whole tensor of `shape`, one `T` per element) permuted.
pub fn permuted<T: Copy + Default>(src: &[T], shape: &[usize], perm: &TensorPermutation) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    gather(src, shape, 1, perm, 0..src.len(), &mut out);
    out
}

/// Inverts a permutation: `inverse(p)[p[i]] = i`.
pub fn inverse(p: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; p.len()];
    for (i, &j) in p.iter().enumerate() {
        inv[j] = i;
    }
    inv
}

/// True if `p` is a permutation of `0..p.len()`.
pub fn is_permutation(p: &[usize]) -> bool {
    let mut seen = vec![false; p.len()];
    for &j in p {
        if j >= p.len() || seen[j] {
            return false;
        }
        seen[j] = true;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn permuting_rows_of_a_2x3_matrix_swaps_whole_rows() {
        // [[0 1 2] [3 4 5]] with rows swapped is [[3 4 5] [0 1 2]].
        let src = as_bytes(&[0, 1, 2, 3, 4, 5]);
        let p = TensorPermutation {
            axes: vec![Some(vec![1, 0]), None],
        };
        let mut out = vec![0u8; 12];
        gather(&src, &[2, 3], 2, &p, 0..6, &mut out);
        assert_eq!(out, as_bytes(&[3, 4, 5, 0, 1, 2]));
    }

    #[test]
    fn permuting_columns_reorders_within_each_row() {
        // columns (2, 0, 1): [[0 1 2] [3 4 5]] -> [[2 0 1] [5 3 4]].
        let src = as_bytes(&[0, 1, 2, 3, 4, 5]);
        let p = TensorPermutation {
            axes: vec![None, Some(vec![2, 0, 1])],
        };
        let mut out = vec![0u8; 12];
        gather(&src, &[2, 3], 2, &p, 0..6, &mut out);
        assert_eq!(out, as_bytes(&[2, 0, 1, 5, 3, 4]));
    }

    #[test]
    fn columns_gather_alike_for_every_element_width() {
        // A [2, 3] tensor of `elem`-byte elements, byte k of element e being
        // 10·e + k; columns (2, 0, 1) then hold elements 2 0 1 / 5 3 4.
        for elem in 1..=5 {
            let src: Vec<u8> = (0..6u8)
                .flat_map(|e| (0..elem as u8).map(move |k| 10 * e + k))
                .collect();
            let p = TensorPermutation {
                axes: vec![None, Some(vec![2, 0, 1])],
            };
            let mut out = vec![0u8; src.len()];
            gather(&src, &[2, 3], elem, &p, 0..6, &mut out);
            let want: Vec<u8> = [2u8, 0, 1, 5, 3, 4]
                .iter()
                .flat_map(|&e| (0..elem as u8).map(move |k| 10 * e + k))
                .collect();
            assert_eq!(out, want, "{elem}-byte elements");
        }
    }

    #[test]
    fn a_partial_range_starting_mid_row_gathers_only_that_range() {
        let src = as_bytes(&[0, 1, 2, 3, 4, 5]);
        let p = TensorPermutation {
            axes: vec![Some(vec![1, 0]), Some(vec![2, 0, 1])],
        };
        // full result: [[5 3 4] [2 0 1]]; elements 2..5 are [4, 2, 0].
        let mut out = vec![0u8; 6];
        gather(&src, &[2, 3], 2, &p, 2..5, &mut out);
        assert_eq!(out, as_bytes(&[4, 2, 0]));
    }

    #[test]
    fn middle_axes_of_a_conv_kernel_are_permuted_as_blocks() {
        // shape [1, 2, 2]: axis 1 swapped moves the two 2-element blocks.
        let src = as_bytes(&[10, 11, 20, 21]);
        let p = TensorPermutation {
            axes: vec![None, Some(vec![1, 0]), None],
        };
        let mut out = vec![0u8; 8];
        gather(&src, &[1, 2, 2], 2, &p, 0..4, &mut out);
        assert_eq!(out, as_bytes(&[20, 21, 10, 11]));
    }

    #[test]
    fn inverse_undoes_a_permutation() {
        let p = vec![2, 0, 3, 1];
        let inv = inverse(&p);
        assert_eq!(inv, vec![1, 3, 0, 2]);
        let back: Vec<usize> = (0..4).map(|i| p[inv[i]]).collect();
        assert_eq!(back, vec![0, 1, 2, 3]);
        assert!(is_permutation(&p));
        assert!(!is_permutation(&[0, 0, 1]));
    }
}
