//! One coordinate step of weight matching: the visit of group `g` with
//! every other group's permutation held. [`LinearAssignmentStep`] is
//! Algorithm 1's step (the similarity matrix `S` of the group, then the
//! exact linear assignment `max_P ⟨S, P⟩` warm-started from the current
//! permutation); other steps (another initialisation, another solver) plug
//! in through [`GroupStep`].

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::source::{ROWS_CHUNK_ELEMS, WeightSource};
use super::terms::{TermCache, TermCounts};
use super::{Permuted, model_permutation};
use crate::assignment::{self, Assignment};
use crate::error::Result;
use crate::permute::{GroupPerms, TensorPermutation};
use crate::similarity;
use crate::spec::{AxisMember, PermutationSpec};

/// What one visit of a group found.
#[derive(Clone, Debug)]
pub struct Visit {
    /// `⟨S, P_g⟩` for the group's current permutation.
    pub current: f64,
    /// The best permutation found and its score `⟨S, P⟩`.
    pub best: Assignment,
    /// Time building `S`, and solving.
    pub seconds_similarity: f64,
    pub seconds_assignment: f64,
    /// Similarity terms reused from earlier visits, and computed.
    pub terms: TermCounts,
}

/// The visit of one group in a coordinate-descent sweep.
pub trait GroupStep: Sync {
    /// Finds a permutation of group `g` of `spec` for `b` onto `a`, every
    /// other group permuted by `perms`; `perms[g]` is the current one.
    fn visit(
        &self,
        spec: &PermutationSpec,
        g: usize,
        a: &dyn WeightSource,
        b: &dyn WeightSource,
        perms: &GroupPerms,
    ) -> Result<Visit>;
}

/// Algorithm 1's step: the group's similarity matrix, then the exact
/// linear assignment, warm-started from the current permutation.
/// With a [`TermCache`], member terms computed under the same permutation
/// in an earlier visit are reused (the same result, less work).
#[derive(Default)]
pub struct LinearAssignmentStep {
    cache: Option<TermCache>,
}

impl LinearAssignmentStep {
    /// The step keeping its similarity terms in `cache`.
    pub fn cached(cache: TermCache) -> Self {
        Self { cache: Some(cache) }
    }
}

impl GroupStep for LinearAssignmentStep {
    fn visit(
        &self,
        spec: &PermutationSpec,
        g: usize,
        a: &dyn WeightSource,
        b: &dyn WeightSource,
        perms: &GroupPerms,
    ) -> Result<Visit> {
        let group = &spec.groups[g];
        let n = group.size;
        let t0 = Instant::now();
        let (s, terms) = cached_group_similarity(spec, g, a, b, perms, self.cache.as_ref())?;
        let t1 = Instant::now();
        let current: f64 = (0..n).map(|i| s[i * n + perms[g][i]]).sum();
        let best = assignment::maximize(&s, n, Some(&perms[g]), &group.name)?;
        let t2 = Instant::now();
        Ok(Visit {
            current,
            best,
            seconds_similarity: (t1 - t0).as_secs_f64(),
            seconds_assignment: (t2 - t1).as_secs_f64(),
            terms,
        })
    }
}

/// The `n × n` similarity matrix of group `g` with every other group
/// permuted by `perms` (relabelled through the groups composed after `g`
/// when they move its positions, see `later_maps`).
pub fn group_similarity(
    spec: &PermutationSpec,
    g: usize,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    perms: &GroupPerms,
) -> Result<Vec<f64>> {
    Ok(cached_group_similarity(spec, g, a, b, perms, None)?.0)
}

/// [`group_similarity`], reusing and keeping member terms in `cache`
/// (groups relabelled through later groups are always computed).
fn cached_group_similarity(
    spec: &PermutationSpec,
    g: usize,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    perms: &GroupPerms,
    cache: Option<&TermCache>,
) -> Result<(Vec<f64>, TermCounts)> {
    let others = model_permutation(spec, b, perms, Some(g))?;
    let view = Permuted {
        source: b,
        perm: &others,
    };
    let after = later_maps(spec, g, b, perms)?;
    if !after.iter().all(Option::is_none) {
        let s = relabelled_similarity(spec, g, a, &view, &after)?;
        let computed = spec.groups[g].members.iter().filter(|m| !m.buffer).count();
        return Ok((
            s,
            TermCounts {
                computed,
                ..TermCounts::default()
            },
        ));
    }
    let mut counts = TermCounts::default();
    let s = sum_terms(spec, g, |m, n| {
        let under = others.get(&m.tensor);
        let Some(c) = cache else {
            counts.computed += 1;
            return Ok(Arc::new(member_term(a, &view, m, n)?));
        };
        if let Some(t) = c.get(m, n, under) {
            counts.reused += 1;
            return Ok(t);
        }
        let worth = a.shape(&m.tensor)?.iter().product::<usize>() / n.max(1);
        if let Some(base) = c.base(m, n)
            && let Some(t) = updated_term(a, b, m, n, base.under.as_ref(), under, &base.term)?
        {
            counts.updated += 1;
            let t = Arc::new(t);
            c.put(m, n, under, worth, Arc::clone(&t), base.updates + 1);
            return Ok(t);
        }
        counts.computed += 1;
        let t = Arc::new(member_term(a, &view, m, n)?);
        c.put(m, n, under, worth, Arc::clone(&t), 0);
        Ok(t)
    })?;
    Ok((s, counts))
}

/// `S = Σ` over group `g`'s members (buffers left out), in member order, of
/// `term(member, n)`, each an `n × n` f32 matrix added in f64 (element by
/// element, stretches of [`ADD_CHUNK`] on the rayon pool: the same sums).
fn sum_terms(
    spec: &PermutationSpec,
    g: usize,
    mut term: impl FnMut(&AxisMember, usize) -> Result<Arc<Vec<f32>>>,
) -> Result<Vec<f64>> {
    let n = spec.groups[g].size;
    let mut s = vec![0.0f64; n * n];
    for m in spec.groups[g].members.iter().filter(|m| !m.buffer) {
        let t = term(m, n)?;
        s.par_chunks_mut(ADD_CHUNK)
            .zip(t.par_chunks(ADD_CHUNK))
            .for_each(|(s, t)| {
                for (x, y) in s.iter_mut().zip(t) {
                    *x += *y as f64;
                }
            });
    }
    Ok(s)
}

/// Elements per task when a term is added into `S`: 64 Ki, 512 KiB of f64,
/// so a 5632-unit group's 31.7 M elements make ~480 tasks for the pool.
const ADD_CHUNK: usize = 1 << 16;

/// The `n × n` similarity matrix of group `g` between `a` and `b` (b with the
/// other groups' permutations already applied). Buffer members
/// ([`crate::spec::AxisMember::buffer`]) do not contribute.
pub fn similarity_matrix(
    spec: &PermutationSpec,
    g: usize,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
) -> Result<Vec<f64>> {
    sum_terms(spec, g, |m, n| Ok(Arc::new(member_term(a, b, m, n)?)))
}

/// One member's term `A_u · B_uᵀ` (`n × n`, f32) of a group of `n` units.
fn member_term(
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    m: &AxisMember,
    n: usize,
) -> Result<Vec<f32>> {
    let shape = a.shape(&m.tensor)?;
    let numel: usize = shape.iter().product();
    let mut acc = vec![0.0f32; n * n];
    if m.axis == 0 || numel <= ROWS_CHUNK_ELEMS || shape[0] < 2 {
        let x = a.read(&m.tensor)?;
        let y = b.read(&m.tensor)?;
        similarity::accumulate_f32(&mut acc, &x, &y, &shape, m, n);
        return Ok(acc);
    }
    // Stream in chunks of whole axis-0 slices: never a whole f32 copy
    // of an embedding-sized tensor, for either model.
    let row: usize = shape[1..].iter().product::<usize>().max(1);
    let per = (ROWS_CHUNK_ELEMS / row).max(1);
    let mut sub = shape.clone();
    for start in (0..shape[0]).step_by(per) {
        let rows: Vec<usize> = (start..(start + per).min(shape[0])).collect();
        let x = a.read_rows(&m.tensor, &rows)?;
        let y = b.read_rows(&m.tensor, &rows)?;
        sub[0] = rows.len();
        similarity::accumulate_f32(&mut acc, &x, &y, &sub, m, n);
    }
    Ok(acc)
}

/// Updated terms are made only where at most this fraction of the
/// columns moved: past it, reading, comparing and gathering the columns
/// on top of a product of half the reduction length saves little over
/// one full product.
const MAX_UPDATED_COLUMNS: f64 = 0.5;

/// Member `m`'s term under `to` (B's tensor permuted by the other groups),
/// updated from `term`, its term under `from`: the term is linear in B, so
/// `T(to) = T(from) + A · (to(B) - from(B))ᵀ`, the product taken over the
/// columns (positions on the other axes) that the two permutations map
/// differently. `None` when the update would not pay: the member's own
/// axis is mapped differently, more than [`MAX_UPDATED_COLUMNS`] of the
/// columns moved, or the tensor is streamed in row chunks (larger than
/// [`ROWS_CHUNK_ELEMS`]).
///
/// Non-finite weights need no care here: the term was first computed in
/// full, and a non-finite term makes the visit's assignment fail.
fn updated_term(
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    m: &AxisMember,
    n: usize,
    from: Option<&TensorPermutation>,
    to: Option<&TensorPermutation>,
    term: &[f32],
) -> Result<Option<Vec<f32>>> {
    let shape = a.shape(&m.tensor)?;
    let numel: usize = shape.iter().product();
    if numel == 0 || numel > ROWS_CHUNK_ELEMS {
        return Ok(None);
    }
    if axis_map(from, m.axis) != axis_map(to, m.axis) {
        return Ok(None);
    }
    let at = |p, axis, i: usize| axis_map(p, axis).map_or(i, |v| v[i]);
    let mut strides = vec![1usize; shape.len()];
    for k in (0..shape.len() - 1).rev() {
        strides[k] = strides[k + 1] * shape[k + 1];
    }
    // Each column (a position on every axis but the member's): its offset
    // in A, and in B under `from` and under `to`, kept where those differ.
    let len = shape[m.axis];
    let columns = numel / len;
    let mut offsets: Vec<[usize; 3]> = Vec::new();
    for c in 0..columns {
        let (mut rest, mut off) = (c, [0usize; 3]);
        for k in (0..shape.len()).rev().filter(|&k| k != m.axis) {
            let i = rest % shape[k];
            rest /= shape[k];
            off[0] += i * strides[k];
            off[1] += at(from, k, i) * strides[k];
            off[2] += at(to, k, i) * strides[k];
        }
        if off[1] != off[2] {
            offsets.push(off);
        }
    }
    if offsets.len() as f64 > MAX_UPDATED_COLUMNS * columns as f64 {
        return Ok(None);
    }
    let mut acc = term.to_vec();
    let k = offsets.len();
    if k == 0 {
        return Ok(Some(acc));
    }
    let (x, y) = (a.read(&m.tensor)?, b.read(&m.tensor)?);
    // The moved columns of A and of the difference, the member's axis
    // first: [len, k].
    let (mut xa, mut d) = (vec![0.0f32; len * k], vec![0.0f32; len * k]);
    for r in 0..len {
        let (ra, rb) = (r * strides[m.axis], at(to, m.axis, r) * strides[m.axis]);
        for (j, off) in offsets.iter().enumerate() {
            xa[r * k + j] = x[off[0] + ra];
            d[r * k + j] = y[off[2] + rb] - y[off[1] + rb];
        }
    }
    let gathered = AxisMember {
        axis: 0,
        ..m.clone()
    };
    similarity::accumulate_f32(&mut acc, &xa, &d, &[len, k], &gathered, n);
    Ok(Some(acc))
}

/// The map `p` puts on `axis` (`None`: none, or no permutation).
fn axis_map(p: Option<&TensorPermutation>, axis: usize) -> Option<&[usize]> {
    p.and_then(|p| p.axes.get(axis)).and_then(Option::as_deref)
}

/// For each member of group `g`: the composed map of the groups *after* `g`
/// in spec order acting on the same tensor axis, or `None` when they leave
/// it in place.
///
/// Maps compose in spec order, `M = M_before ∘ m_g ∘ M_after` (output
/// position → stored position), while a coordinate step needs `g` applied
/// last: `M = M_before ∘ M_after ∘ m'_g` with `m'_g = M_after⁻¹ ∘ m_g ∘
/// M_after`. `m'_g` is `g` acting on relabelled positions: unit `u` owns
/// `M_after⁻¹` of its positions. For groups that commute with the later
/// ones (nested blocks) the relabelling changes nothing; for a per-head
/// group listed before the head group it moves the group's units to the
/// slot where the head group puts that head.
pub(super) fn later_maps(
    spec: &PermutationSpec,
    g: usize,
    src: &dyn WeightSource,
    perms: &GroupPerms,
) -> Result<Vec<Option<Vec<usize>>>> {
    spec.groups[g]
        .members
        .iter()
        .map(|m| {
            let len = src.shape(&m.tensor)?[m.axis];
            let mut map: Option<Vec<usize>> = None;
            for (h, group) in spec.groups.iter().enumerate().skip(g + 1) {
                if perms.is_identity(h) {
                    continue;
                }
                for mh in group
                    .members
                    .iter()
                    .filter(|x| x.tensor == m.tensor && x.axis == m.axis)
                {
                    let cur = map.get_or_insert_with(|| (0..len).collect());
                    let old = cur.clone();
                    for r in 0..mh.repeat {
                        for (u, &pu) in perms[h].iter().enumerate() {
                            for i in 0..mh.block {
                                cur[mh.position(group.size, r, u, i)] =
                                    old[mh.position(group.size, r, pu, i)];
                            }
                        }
                    }
                }
            }
            Ok(map.filter(|v| v.iter().enumerate().any(|(i, &j)| i != j)))
        })
        .collect()
}

/// [`similarity_matrix`] for a group whose members' positions are
/// relabelled through the later groups' maps (see [`later_maps`]).
fn relabelled_similarity(
    spec: &PermutationSpec,
    g: usize,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    after: &[Option<Vec<usize>>],
) -> Result<Vec<f64>> {
    let group = &spec.groups[g];
    let n = group.size;
    let mut s = vec![0.0f64; n * n];
    for (m, map) in group.members.iter().zip(after).filter(|(m, _)| !m.buffer) {
        let shape = a.shape(&m.tensor)?;
        let x = a.read(&m.tensor)?;
        let y = b.read(&m.tensor)?;
        match map {
            None => similarity::accumulate(&mut s, &x, &y, &shape, m, n),
            Some(map) => {
                let inv = crate::permute::inverse(map);
                let units: Vec<Vec<usize>> = (0..n)
                    .map(|u| {
                        (0..m.repeat)
                            .flat_map(|r| (0..m.block).map(move |i| (r, i)))
                            .map(|(r, i)| inv[m.position(n, r, u, i)])
                            .collect()
                    })
                    .collect();
                similarity::accumulate_positions(&mut s, &x, &y, &shape, m.axis, &units);
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alignment::source::Mem;
    use std::collections::HashMap;

    fn source(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Mem {
        Mem(tensors
            .iter()
            .map(|(n, s, v)| (n.to_string(), (s.clone(), v.clone())))
            .collect::<HashMap<_, _>>())
    }

    fn perm(axes: Vec<Option<Vec<usize>>>) -> TensorPermutation {
        TensorPermutation { axes }
    }

    /// `T(π)` computed in full: B read through `π`.
    fn full_term(a: &Mem, b: &Mem, m: &AxisMember, n: usize, p: &TensorPermutation) -> Vec<f32> {
        let perm = crate::permute::ModelPermutation {
            tensors: HashMap::from([(m.tensor.clone(), p.clone())]),
        };
        member_term(
            a,
            &Permuted {
                source: b,
                perm: &perm,
            },
            m,
            n,
        )
        .unwrap()
    }

    #[test]
    fn swapping_two_columns_updates_the_term_by_hand() {
        // A = [[1 2 3 0] [4 5 6 1]], B = [[1 0 2 5] [0 3 1 2]], units the rows.
        // T = A·Bᵀ = [[7 9] [21 23]]; with B's columns 1 and 2 swapped,
        // B = [[1 2 0 5] [0 1 3 2]] and T = [[5 11] [19 25]].
        let a = source(&[("w", vec![2, 4], vec![1., 2., 3., 0., 4., 5., 6., 1.])]);
        let b = source(&[("w", vec![2, 4], vec![1., 0., 2., 5., 0., 3., 1., 2.])]);
        let m = AxisMember::plain("w", 0);
        let to = perm(vec![None, Some(vec![0, 2, 1, 3])]);
        let t = updated_term(&a, &b, &m, 2, None, Some(&to), &[7., 9., 21., 23.]).unwrap();
        assert_eq!(t, Some(vec![5., 11., 19., 25.]));
        assert_eq!(full_term(&a, &b, &m, 2, &to), vec![5., 11., 19., 25.]);
    }

    #[test]
    fn an_updated_term_of_a_3d_tensor_equals_the_term_computed_in_full() {
        // [4, 4, 2], units on axis 1; B's axis 0 moves from one
        // permutation to another in 2 of 4 places (4 of 8 columns).
        let values: Vec<f32> = (0..32).map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0).collect();
        let other: Vec<f32> = (0..32).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
        let a = source(&[("c", vec![4, 4, 2], values)]);
        let b = source(&[("c", vec![4, 4, 2], other)]);
        let m = AxisMember::plain("c", 1);
        let from = perm(vec![Some(vec![2, 0, 1, 3]), None, None]);
        let to = perm(vec![Some(vec![2, 1, 0, 3]), None, None]);
        let old = full_term(&a, &b, &m, 4, &from);
        let new = updated_term(&a, &b, &m, 4, Some(&from), Some(&to), &old)
            .unwrap()
            .expect("half the columns moved: an update");
        // Multiples of 1/32 summed: exact in f32 whatever the order.
        assert_eq!(new, full_term(&a, &b, &m, 4, &to));
        assert_ne!(new, old);
    }

    #[test]
    fn no_update_when_the_units_axis_moves_or_most_columns_do() {
        let a = source(&[("w", vec![2, 4], vec![1.; 8])]);
        let b = source(&[("w", vec![2, 4], vec![2.; 8])]);
        let m = AxisMember::plain("w", 0);
        let term = [8.; 4];
        let rows = perm(vec![Some(vec![1, 0]), None]);
        assert_eq!(
            updated_term(&a, &b, &m, 2, None, Some(&rows), &term).unwrap(),
            None
        );
        let three = perm(vec![None, Some(vec![1, 2, 0, 3])]);
        assert_eq!(
            updated_term(&a, &b, &m, 2, None, Some(&three), &term).unwrap(),
            None
        );
        // The same permutation: the term as it was, no product.
        let same = updated_term(&a, &b, &m, 2, Some(&three), Some(&three), &term).unwrap();
        assert_eq!(same, Some(term.to_vec()));
    }
}
