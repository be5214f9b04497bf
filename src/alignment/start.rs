//! Where the descent starts: an anchored initialisation and a propagation
//! sweep, before Algorithm 1's loop.
//!
//! From the identity, a group whose members mostly touch unmatched axes
//! sees mostly noise. Some members have no unmatched axis besides the
//! group's own: a tensor with at least two axes whose other axes no group
//! permutes (token and position embeddings and an untied LM head for the
//! residual stream; the first and last layer of an MLP or CNN chain).
//! **Anchoring** solves every group that has such members from those
//! members alone, each unit's row centred and scaled to unit norm (so `S`
//! is a sum of Pearson correlations: every anchored tensor counts alike,
//! whatever its scale). **Propagation** then visits, in data-flow order
//! (breadth first from the anchored groups), every group that has a member
//! whose other axes are all solved, with the ordinary step (heads groups by
//! their joint step); each group once. The descent starts from there.
//!
//! Measured on independently trained GPT-2 / LLaMA pairs (see
//! `docs/head-matching-experiments.md`), this start is what lowers the loss
//! barrier: the residual permutation found from the anchored members alone.
//! On the trained MLP pairs it did not (aligned barriers 0.010 / 0.016 /
//! 0.012 / 0.024 against 0.014 / 0.012 / 0.012 / 0.018 from the identity,
//! `scripts/measure_pairs.py`), so it is used for specs with attention heads
//! only (`anchors`); MLP, CNN and ResNet specs start from the identity.

use std::collections::HashMap;
use std::ops::Range;

use super::source::WeightSource;
use super::step::Visit;
use super::{SplitMix64, Steps, improves};
use crate::assignment;
use crate::error::Result;
use crate::permute::GroupPerms;
use crate::similarity;
use crate::spec::PermutationSpec;
use crate::spec::per_head::unit_positions;

/// How a group's starting permutation was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPhase {
    /// Solved from its anchored members alone.
    Anchored,
    /// Visited once by the propagation sweep.
    Propagated,
}

/// Whether descents on `spec` take the anchored start: specs with attention
/// heads (a group of kind `heads`).
pub(super) fn anchors(spec: &PermutationSpec) -> bool {
    spec.groups
        .iter()
        .any(|g| g.kind.as_deref() == Some("heads"))
}

/// The starting permutations and how each group got its own.
pub(super) struct Start {
    pub(super) perms: GroupPerms,
    pub(super) phase: Vec<Option<StartPhase>>,
    /// The propagation sweep's visits, in order.
    pub(super) visits: Vec<StartVisit>,
}

/// A visit of the propagation sweep, for the descent's bookkeeping: it
/// counts as the group's last visit, so the first sweep can skip a group
/// whose neighbours did not move since (see `Log::started`).
pub(super) struct StartVisit {
    pub(super) group: usize,
    pub(super) visit: Visit,
    pub(super) accepted: bool,
    /// Whether it was a plain step (a joint step is not skipped on this
    /// ground: its alternating inner search may still improve on itself).
    pub(super) plain: bool,
    /// Groups moved along by a joint step.
    pub(super) moved: Vec<usize>,
}

/// Anchored initialisation, then the propagation sweep. `shuffle` (a
/// restart's generator) randomises the order inside each propagation round.
pub(super) fn anchored_start(
    steps: &Steps,
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    mut shuffle: Option<&mut SplitMix64>,
) -> Result<Start> {
    let n = spec.groups.len();
    let mut perms = spec.identity();
    let mut phase = vec![None; n];
    let touching = touching(spec);
    // Anchored members are those whose other axes *no* group permutes:
    // their rows compare A with raw B. (Marking groups known while
    // anchoring would anchor each layer's FFN and heads groups on the
    // residual stream's axis too, comparing rows of A with rows of B whose
    // residual axis is still unpermuted.)
    let none = vec![false; n];
    let mut known = vec![false; n];
    let child = steps.children();
    for g in 0..n {
        if child[g] {
            continue;
        }
        let anchored = informative(spec, g, a, &touching, &none)?;
        if anchored.is_empty() {
            continue;
        }
        let s = anchored_similarity(spec, g, &anchored, a, b)?;
        let group = &spec.groups[g];
        let best = assignment::maximize(&s, group.size, None, &group.name)?;
        perms.set(g, best.perm);
        phase[g] = Some(StartPhase::Anchored);
        known[g] = true;
    }
    let mut visits = Vec::new();
    if !known.iter().any(|&k| k) {
        return Ok(Start {
            perms,
            phase,
            visits,
        });
    }
    loop {
        let mut round = Vec::new();
        for g in 0..n {
            if !known[g] && !child[g] && !informative(spec, g, a, &touching, &known)?.is_empty() {
                round.push(g);
            }
        }
        if round.is_empty() {
            break;
        }
        if let Some(rng) = shuffle.as_deref_mut() {
            rng.shuffle(&mut round);
        }
        for g in round {
            let (visit, children) = steps.visit(spec, g, a, b, &perms)?;
            let accepted = improves(&visit);
            let mut moved = Vec::new();
            if accepted {
                perms.set(g, visit.best.perm.clone());
                for (c, p) in children {
                    if perms[c] != p {
                        moved.push(c);
                    }
                    perms.set(c, p);
                }
            }
            visits.push(StartVisit {
                group: g,
                visit,
                accepted,
                plain: steps.layout_of(g).is_none(),
                moved,
            });
            phase[g] = Some(StartPhase::Propagated);
            known[g] = true;
            if let Some(l) = steps.layout_of(g) {
                for c in l.children() {
                    known[c] = true;
                }
            }
        }
    }
    Ok(Start {
        perms,
        phase,
        visits,
    })
}

/// (tensor, axis) → the groups acting on it.
fn touching(spec: &PermutationSpec) -> HashMap<(&str, usize), Vec<usize>> {
    let mut out: HashMap<(&str, usize), Vec<usize>> = HashMap::new();
    for (g, group) in spec.groups.iter().enumerate() {
        for m in &group.members {
            out.entry((m.tensor.as_str(), m.axis)).or_default().push(g);
        }
    }
    out
}

/// Members of group `g` of a tensor with at least two axes whose other axes
/// are acted on by no group outside `known`.
fn informative(
    spec: &PermutationSpec,
    g: usize,
    a: &dyn WeightSource,
    touching: &HashMap<(&str, usize), Vec<usize>>,
    known: &[bool],
) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for (k, m) in spec.groups[g].members.iter().enumerate() {
        let ndim = a.shape(&m.tensor)?.len();
        if ndim < 2 {
            continue;
        }
        let fixed = (0..ndim).filter(|&ax| ax != m.axis).all(|ax| {
            touching
                .get(&(m.tensor.as_str(), ax))
                .is_none_or(|gs| gs.iter().all(|&h| known[h]))
        });
        if fixed {
            out.push(k);
        }
    }
    Ok(out)
}

/// `S = Σ_m Z(A_m) Z(B_m)ᵀ` over the given members of group `g`, where
/// `Z` puts each unit's row (unit axis first, the rest flattened) minus its
/// mean, divided by its norm (a constant row stays zero).
///
/// A member whose units are consecutive columns of a matrix (an embedding
/// or an LM head on the residual stream) is standardised column by column
/// where it lies and multiplied as `Z(A)ᵀ Z(B)`, with no transposed copy:
/// the same sums in the same order, so the same bits as the row layout.
fn anchored_similarity(
    spec: &PermutationSpec,
    g: usize,
    members: &[usize],
    a: &dyn WeightSource,
    b: &dyn WeightSource,
) -> Result<Vec<f64>> {
    let group = &spec.groups[g];
    let n = group.size;
    let mut s = vec![0.0f64; n * n];
    for &k in members {
        let m = &group.members[k];
        let shape = a.shape(&m.tensor)?;
        let units = unit_positions(m, n);
        let product = match unit_columns(&shape, m.axis, &units) {
            Some(cols) => {
                let za = standardized_columns(a.read(&m.tensor)?, &shape, cols.clone());
                let zb = standardized_columns(b.read(&m.tensor)?, &shape, cols);
                za.t().dot(&zb)
            }
            None => {
                let za = standardized(similarity::unit_rows(
                    &a.read(&m.tensor)?,
                    &shape,
                    m.axis,
                    &units,
                ));
                let zb = standardized(similarity::unit_rows(
                    &b.read(&m.tensor)?,
                    &shape,
                    m.axis,
                    &units,
                ));
                za.dot(&zb.t())
            }
        };
        for (x, y) in s.iter_mut().zip(product.iter()) {
            *x += *y as f64;
        }
    }
    Ok(s)
}

/// Each row minus its mean, scaled to unit norm (zero rows stay zero).
fn standardized(mut x: ndarray::Array2<f32>) -> ndarray::Array2<f32> {
    for mut row in x.rows_mut() {
        let len = row.len().max(1) as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / len;
        row.mapv_inplace(|v| (v as f64 - mean) as f32);
        let norm = row
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| (v as f64 / norm) as f32);
        }
    }
    x
}

/// The columns `cols` of a `[rows, width]` matrix when unit `u` is exactly
/// column `cols.start + u` of a tensor of `shape` (units on the last of two
/// axes, one position each, in order); `None` for any other layout.
fn unit_columns(shape: &[usize], axis: usize, units: &[Vec<usize>]) -> Option<Range<usize>> {
    if shape.len() != 2 || axis != 1 {
        return None;
    }
    let first = similarity::consecutive_positions(units)?;
    (first + units.len() <= shape[1]).then_some(first..first + units.len())
}

/// Columns `cols` of the `[rows, width]` matrix `x`, each minus its mean and
/// scaled to unit norm (zero columns stay zero): [`standardized`] of the
/// transpose, transposed, with every column's sums taken in row order like
/// a row's (both start from −0.0, as `Iterator::sum` does), so the values
/// are the same bits.
fn standardized_columns(x: Vec<f32>, shape: &[usize], cols: Range<usize>) -> ndarray::Array2<f32> {
    let (rows, width) = (shape[0], shape[1]);
    let n = cols.len();
    let mut z = if cols == (0..width) {
        x
    } else {
        (0..rows)
            .flat_map(|r| {
                x[r * width + cols.start..r * width + cols.end]
                    .iter()
                    .copied()
            })
            .collect()
    };
    if n == 0 {
        return ndarray::Array2::from_shape_vec((rows, 0), z).expect("empty columns");
    }
    let mut mean = vec![-0.0f64; n];
    for row in z.chunks_exact(n) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    let len = rows.max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= len);
    let mut norm = vec![-0.0f64; n];
    for row in z.chunks_exact_mut(n) {
        for ((v, &m), q) in row.iter_mut().zip(&mean).zip(norm.iter_mut()) {
            *v = (*v as f64 - m) as f32;
            *q += (*v as f64) * (*v as f64);
        }
    }
    norm.iter_mut().for_each(|q| *q = q.sqrt());
    for row in z.chunks_exact_mut(n) {
        for (v, &q) in row.iter_mut().zip(&norm) {
            if q > 0.0 {
                *v = (*v as f64 / q) as f32;
            }
        }
    }
    ndarray::Array2::from_shape_vec((rows, n), z).expect("rows × columns")
}

#[cfg(test)]
mod tests;
