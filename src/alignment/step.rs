//! One coordinate step of weight matching: the visit of group `g` with
//! every other group's permutation held. [`LinearAssignmentStep`] is
//! Algorithm 1's step (the similarity matrix `S` of the group, then the
//! exact linear assignment `max_P ⟨S, P⟩` warm-started from the current
//! permutation); other steps (another initialisation, another solver) plug
//! in through [`GroupStep`].

use std::time::Instant;

use std::sync::Arc;

use super::source::{ROWS_CHUNK_ELEMS, WeightSource};
use super::terms::{TermCache, TermCounts};
use super::{Permuted, model_permutation};
use crate::assignment::{self, Assignment};
use crate::error::Result;
use crate::permute::GroupPerms;
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
                reused: 0,
                computed,
            },
        ));
    }
    let mut counts = TermCounts::default();
    let s = sum_terms(spec, g, |m, n| {
        let under = others.get(&m.tensor);
        if let Some(t) = cache.and_then(|c| c.get(m, n, under)) {
            counts.reused += 1;
            return Ok(t);
        }
        counts.computed += 1;
        let t = Arc::new(member_term(a, &view, m, n)?);
        if let Some(c) = cache {
            let numel: usize = a.shape(&m.tensor)?.iter().product();
            c.put(m, n, under, numel / n.max(1), Arc::clone(&t));
        }
        Ok(t)
    })?;
    Ok((s, counts))
}

/// `S = Σ` over group `g`'s members (buffers left out), in member order, of
/// `term(member, n)`, each an `n × n` f32 matrix added in f64.
fn sum_terms(
    spec: &PermutationSpec,
    g: usize,
    mut term: impl FnMut(&AxisMember, usize) -> Result<Arc<Vec<f32>>>,
) -> Result<Vec<f64>> {
    let n = spec.groups[g].size;
    let mut s = vec![0.0f64; n * n];
    for m in spec.groups[g].members.iter().filter(|m| !m.buffer) {
        for (x, y) in s.iter_mut().zip(term(m, n)?.iter()) {
            *x += *y as f64;
        }
    }
    Ok(s)
}

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
