//! Weight matching (Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin",
//! Algorithm 1): coordinate descent over permutation groups, each step an
//! exact linear assignment problem.
//!
//! Starting from the identity (or given permutations), every sweep visits
//! the groups in a random order (seeded); for group `g` it builds
//! `S = Σ_members A_t · π(B_t)ᵀ` with every other group's current
//! permutation applied to B ([`crate::similarity`]), solves
//! `max_p Σ_i S[i, p[i]]` exactly ([`crate::assignment`]) warm-started from
//! `g`'s current permutation, and keeps the new permutation only if it
//! scores strictly better. A sweep with no improvement ends the descent.
//! A visit is skipped when no group sharing a tensor with `g` has changed
//! since `g`'s last visit: its matrix and warm start would be the same, so
//! the solve would repeat its last answer (this changes no result, only
//! saves the work, which matters most in the final, confirming sweep).
//! The objective reported is `Σ_t ⟨A_t, π(B)_t⟩` over all float tensors
//! except the spec's buffers (BatchNorm running statistics, see
//! [`crate::spec::AxisMember::buffer`]: permuted, never matched on), in f64.
//!
//! The module follows the data flow of one descent: [`source`] (what is
//! read), [`step`] (one group visit: similarity and assignment, pluggable
//! through [`GroupStep`]), this file (the loop of Algorithm 1), `report`
//! (bookkeeping and per-group reports, kept out of the loop), `heads`
//! (the tied first phase for per-head groups) and [`merge_many`]
//! (Algorithm 3, MergeMany, for more than two models).

mod heads;
mod many;
mod report;
pub mod source;
pub mod step;

use std::time::Instant;

use crate::error::{Result, UsageError};
use crate::observe::{Event, Observer, Phase};
use crate::permute::{GroupPerms, ModelPermutation};
use crate::spec::PermutationSpec;

pub use many::{ManyAlignment, merge_many};
pub use report::{Alignment, GroupReport};
pub use source::{Mean, Permuted, WeightSource, objective};
pub use step::{GroupStep, LinearAssignmentStep, Visit, similarity_matrix};

use report::Log;

/// A new permutation must beat the current one by this relative margin to be
/// accepted: the paper's `newL > oldL + 1e-12`, made relative so it is
/// meaningful for both tiny and huge score scales.
const IMPROVEMENT_EPS: f64 = 1e-12;
/// Default cap on sweeps (the reference implementation uses 100).
pub const DEFAULT_MAX_ITER: usize = 100;

/// Options of a weight-matching run.
#[derive(Clone, Debug)]
pub struct AlignOptions {
    /// Seed of the random group order of each sweep.
    pub seed: u64,
    /// Most sweeps (MergeMany: most rounds).
    pub max_iter: usize,
    /// Starting permutations (one per spec group), default identity.
    pub init: Option<GroupPerms>,
}

impl Default for AlignOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            max_iter: DEFAULT_MAX_ITER,
            init: None,
        }
    }
}

/// Builds the per-tensor maps of `perms` for `spec` (shapes from `src`).
pub fn model_permutation(
    spec: &PermutationSpec,
    src: &dyn WeightSource,
    perms: &GroupPerms,
    skip: Option<usize>,
) -> Result<ModelPermutation> {
    spec.model_permutation(&|name: &str| src.shape(name), perms, skip)
}

/// Weight matching of `b` onto `a`, reported to `observer` as the phase
/// [`Phase::Align`] with every group visit ([`Event::GroupStarted`] before
/// it, [`Event::GroupVisited`] after it).
///
/// When the spec has per-head groups (kinds `qk_dims`, `vo_dims`, `heads`
/// named `stem.k` with siblings `stem.0`, `stem.1`, … of one size) and no
/// starting permutations are given, the descent runs in two phases: first
/// with each set of siblings tied to one shared permutation (a valid
/// sub-symmetry whose head similarities are not scrambled by independent
/// within-head orders), then with every group free, starting from there.
/// Independent per-head groups from the identity get stuck in local optima
/// where a wrong head pairing is propped up by within-head orders tuned to
/// it; the tied phase finds the pairing first.
pub fn weight_matching(
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Alignment> {
    weight_matching_with(&LinearAssignmentStep, spec, a, b, opts, observer)
}

/// [`weight_matching`] with another group-visit step.
pub fn weight_matching_with(
    step: &dyn GroupStep,
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Alignment> {
    observer.event(&Event::Started {
        phase: Phase::Align,
        total: None,
    });
    let r = match heads::tie_siblings(spec) {
        Some(tied) if opts.init.is_none() => {
            heads::tied_then_free(&tied, step, spec, a, b, opts, observer)
        }
        _ => descend(step, spec, a, b, opts, observer),
    };
    observer.event(&Event::Finished {
        phase: Phase::Align,
    });
    r
}

/// Algorithm 1: coordinate descent from `opts.init` (or the identity) until
/// a sweep improves no group or `opts.max_iter` sweeps have run.
pub fn descend(
    step: &dyn GroupStep,
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Alignment> {
    let start = Instant::now();
    let mut perms = initial_perms(spec, opts)?;
    let objective_before = objective_under(spec, a, b, &perms)?;
    let mut log = Log::new(spec);
    let mut rng = SplitMix64(opts.seed);
    let mut order: Vec<usize> = (0..spec.groups.len()).collect();
    let mut converged = spec.groups.is_empty();
    while log.sweeps() < opts.max_iter && !converged {
        log.begin_sweep();
        rng.shuffle(&mut order);
        let mut improved = false;
        for (k, &g) in order.iter().enumerate() {
            if log.unchanged_since_last_visit(g) {
                continue;
            }
            observer.event(&Event::GroupStarted {
                sweep: log.sweeps(),
                position: k + 1,
                groups: order.len(),
                group: &spec.groups[g].name,
                units: spec.groups[g].size,
            });
            let visit = step.visit(spec, g, a, b, &perms)?;
            let old = visit.current;
            let accept = visit.best.score > old + IMPROVEMENT_EPS * old.abs().max(1.0);
            log.visited(g, &visit, accept, observer);
            if accept {
                perms.set(g, visit.best.perm);
                improved = true;
            }
        }
        log.end_sweep();
        converged = !improved;
    }
    let objective_after = objective_under(spec, a, b, &perms)?;
    Ok(log.finish(perms, objective_before, objective_after, converged, start))
}

/// `opts.init` checked against the spec, or the identity.
fn initial_perms(spec: &PermutationSpec, opts: &AlignOptions) -> Result<GroupPerms> {
    let perms = match &opts.init {
        Some(p) => p.clone(),
        None => spec.identity(),
    };
    if perms.len() != spec.groups.len() {
        return Err(UsageError::InitialPermutations {
            given: perms.len(),
            groups: spec.groups.len(),
        }
        .into());
    }
    Ok(perms)
}

/// The objective `Σ_t ⟨A_t, π(B)_t⟩` with B seen through `perms`, buffers
/// left out.
fn objective_under(
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    perms: &GroupPerms,
) -> Result<f64> {
    let perm = model_permutation(spec, b, perms, None)?;
    let view = Permuted {
        source: b,
        perm: &perm,
    };
    let buffers = spec.buffer_tensors();
    let names: Vec<String> = (a.float_names().into_iter())
        .filter(|n| !buffers.contains(n.as_str()))
        .collect();
    objective(a, &view, &names)
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny seeded generator, enough
/// to shuffle the group visiting order reproducibly.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests;
