//! Weight matching (Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin",
//! Algorithm 1): coordinate descent over permutation groups, each step an
//! exact linear assignment problem.
//!
//! Every sweep visits the groups in a random order (seeded); for group `g`
//! it builds `S = Σ_members A_t · π(B_t)ᵀ` with every other group's current
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
//! Two additions to the paper's loop, measured on trained transformers
//! (`docs/head-matching-experiments.md`):
//! - **where it starts** ([`start`]): without starting permutations, for
//!   specs with attention heads, groups with anchored members (embeddings,
//!   the LM head) are solved from those alone, then a propagation sweep
//!   visits the rest once in data-flow order (other specs start from the
//!   identity);
//! - **heads move with their dimensions** ([`joint`]): a heads group whose
//!   within-head groups are per head takes a joint step (an inner
//!   assignment per head pair, an outer one over heads) at every visit.
//!
//! `restarts` descents (restart `r` with seed `seed + r` and, for `r ≥ 1`,
//! a shuffled propagation order) run in parallel; the one with the highest
//! objective is kept and every one is reported.
//!
//! The module follows the data flow of one descent: [`source`] (what is
//! read), [`step`] (one group visit: similarity and assignment, pluggable
//! through [`GroupStep`]), [`start`], [`joint`], this file (the loop of
//! Algorithm 1 and the restarts), `report` (bookkeeping and per-group
//! reports, kept out of the loop), `heads` (the tied first phase for
//! per-head groups a joint step cannot take) and [`merge_many`]
//! (Algorithm 3, MergeMany, for more than two models).

mod heads;
pub mod joint;
mod many;
mod report;
pub mod source;
pub mod start;
pub mod step;
pub mod terms;

use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Result, UsageError};
use crate::observe::{Event, Observer, Phase, Silent};
use crate::permute::{GroupPerms, ModelPermutation};
use crate::spec::PermutationSpec;

pub use many::{ManyAlignment, merge_many};
pub use report::{Alignment, GroupReport, RestartReport};
pub use source::{Mean, Permuted, WeightSource, objective};
pub use start::StartPhase;
pub use step::{GroupStep, LinearAssignmentStep, Visit, similarity_matrix};
pub use terms::{DEFAULT_TERM_CACHE_BYTES, TermCache, TermCounts};

use joint::HeadLayout;
use report::Log;

/// A new permutation must beat the current one by this relative margin to be
/// accepted: the paper's `newL > oldL + 1e-12`, made relative so it is
/// meaningful for both tiny and huge score scales.
const IMPROVEMENT_EPS: f64 = 1e-12;
/// Default cap on sweeps (the reference implementation uses 100).
pub const DEFAULT_MAX_ITER: usize = 100;
/// Default number of descents (see [`AlignOptions::restarts`]).
pub const DEFAULT_RESTARTS: usize = 1;

/// Options of a weight-matching run.
#[derive(Clone, Debug)]
pub struct AlignOptions {
    /// Seed of the random group order of each sweep (restart `r` uses
    /// `seed + r`).
    pub seed: u64,
    /// Most sweeps (MergeMany: most rounds).
    pub max_iter: usize,
    /// Starting permutations (one per spec group), default: the anchored
    /// start ([`start`]).
    pub init: Option<GroupPerms>,
    /// Descents run in parallel, the best objective kept (at least 1).
    pub restarts: usize,
    /// Bytes of similarity terms kept between visits ([`terms`]; 0: none).
    pub term_cache: usize,
    /// Kept terms are updated where the permutation they are asked under
    /// moved a few columns, instead of computed afresh (one restart only;
    /// equal to the full computation up to rounding, see [`terms`]).
    pub term_updates: bool,
}

impl Default for AlignOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            max_iter: DEFAULT_MAX_ITER,
            init: None,
            restarts: DEFAULT_RESTARTS,
            term_cache: DEFAULT_TERM_CACHE_BYTES,
            term_updates: true,
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

/// Weight matching of `b` onto `a` (Algorithm 1's step, its similarity
/// terms kept between visits within `opts.term_cache` bytes and shared by
/// the restarts), reported to `observer` as the phase
/// [`Phase::Align`] with every group visit of the first restart
/// ([`Event::GroupStarted`] before it, [`Event::GroupVisited`] after it).
///
/// Without starting permutations each descent on a spec with attention
/// heads starts from the anchored start ([`start`]), others from the
/// identity. Heads groups with per-head within-head groups take
/// joint steps ([`joint`]). When the spec has per-head groups that no
/// joint step can take (named `stem.k`, siblings `stem.0`, `stem.1`, … of
/// one size, outside the layout [`joint`] needs), the descent first runs
/// with each set of siblings tied to one shared permutation, then with
/// every group free from there.
pub fn weight_matching(
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Alignment> {
    let cache = TermCache::new(opts.term_cache, opts.restarts.max(1)).updating(opts.term_updates);
    let step = LinearAssignmentStep::cached(cache);
    weight_matching_with(&step, spec, a, b, opts, observer)
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
    let start = Instant::now();
    let steps = Steps::new(step, spec);
    let runs: Vec<Result<Alignment>> = (0..opts.restarts.max(1))
        .into_par_iter()
        .map(|r| {
            let seen: &dyn Observer = if r == 0 { observer } else { &Silent };
            one_descent(&steps, spec, a, b, opts, r, seen)
        })
        .collect();
    let mut runs = runs.into_iter().collect::<Result<Vec<_>>>()?;
    let reports: Vec<RestartReport> = runs
        .iter()
        .enumerate()
        .map(|(r, x)| RestartReport::of(r, opts.seed.wrapping_add(r as u64), x))
        .collect();
    // The highest objective; the first restart among equals.
    let kept = (0..runs.len())
        .rev()
        .max_by(|&i, &j| runs[i].objective_after.total_cmp(&runs[j].objective_after))
        .unwrap_or(0);
    let mut best = runs.swap_remove(kept);
    best.kept_restart = kept;
    best.restarts = reports;
    best.seconds = start.elapsed().as_secs_f64();
    observer.event(&Event::Finished {
        phase: Phase::Align,
    });
    Ok(best)
}

/// One descent: restart `r` of `opts`.
fn one_descent(
    steps: &Steps,
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    r: usize,
    observer: &dyn Observer,
) -> Result<Alignment> {
    let start = Instant::now();
    let opts = AlignOptions {
        seed: opts.seed.wrapping_add(r as u64),
        ..opts.clone()
    };
    if opts.init.is_some() {
        return descend(steps, spec, a, b, &opts, Origin::default(), observer);
    }
    if steps.layouts.is_empty()
        && let Some(tied) = heads::tie_siblings(spec)
    {
        return heads::tied_then_free(&tied, steps.plain, spec, a, b, &opts, observer);
    }
    if !start::anchors(spec) {
        return descend(steps, spec, a, b, &opts, Origin::default(), observer);
    }
    let objective_before = objective_under(spec, a, b, &spec.identity())?;
    let mut rng = SplitMix64(opts.seed);
    let shuffle = (r > 0).then_some(&mut rng);
    let first = start::anchored_start(steps, spec, a, b, shuffle)?;
    let from = AlignOptions {
        init: Some(first.perms),
        ..opts
    };
    let origin = Origin {
        phase: Some(&first.phase),
        visits: &first.visits,
        objective_before: Some(objective_before),
    };
    let mut out = descend(steps, spec, a, b, &from, origin, observer)?;
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// The steps of a descent: `plain` for every group, except the heads
/// groups that take joint steps ([`joint`]).
pub(crate) struct Steps<'a> {
    plain: &'a dyn GroupStep,
    layouts: Vec<HeadLayout>,
    /// Group → its layout, for heads groups that take joint steps.
    joint_of: Vec<Option<usize>>,
}

impl<'a> Steps<'a> {
    fn new(plain: &'a dyn GroupStep, spec: &PermutationSpec) -> Self {
        let layouts = joint::layouts(spec);
        let mut joint_of = vec![None; spec.groups.len()];
        for (i, l) in layouts.iter().enumerate() {
            joint_of[l.group] = Some(i);
        }
        Self {
            plain,
            layouts,
            joint_of,
        }
    }

    /// Only the plain step.
    fn plain(plain: &'a dyn GroupStep, spec: &PermutationSpec) -> Self {
        Self {
            plain,
            layouts: Vec::new(),
            joint_of: vec![None; spec.groups.len()],
        }
    }

    fn layout_of(&self, g: usize) -> Option<&HeadLayout> {
        self.joint_of[g].map(|i| &self.layouts[i])
    }

    /// Groups set by a joint step of their heads group.
    fn children(&self) -> Vec<bool> {
        let mut out = vec![false; self.joint_of.len()];
        for c in self.layouts.iter().flat_map(HeadLayout::children) {
            out[c] = true;
        }
        out
    }

    /// The visit of group `g`, and the other groups' permutations that come
    /// with its new one (a joint step's within-head groups).
    fn visit(
        &self,
        spec: &PermutationSpec,
        g: usize,
        a: &dyn WeightSource,
        b: &dyn WeightSource,
        perms: &GroupPerms,
    ) -> Result<(Visit, joint::Moves)> {
        let Some(layout) = self.layout_of(g) else {
            return Ok((self.plain.visit(spec, g, a, b, perms)?, Vec::new()));
        };
        let t0 = Instant::now();
        let j = joint::joint_step(spec, layout, a, b, perms)?;
        let visit = Visit {
            current: j.current,
            best: crate::assignment::Assignment {
                perm: j.heads,
                score: j.score,
            },
            seconds_similarity: t0.elapsed().as_secs_f64(),
            seconds_assignment: 0.0,
            terms: TermCounts::default(),
        };
        Ok((visit, j.children))
    }
}

/// What a descent knows of where it starts, besides `opts.init`.
#[derive(Clone, Copy, Default)]
struct Origin<'p> {
    /// How each group's start was found, for the report.
    phase: Option<&'p [Option<StartPhase>]>,
    /// The propagation sweep's visits ([`start`]).
    visits: &'p [start::StartVisit],
    /// The objective to report as the one before alignment (default:
    /// under the starting permutations, computed by the descent).
    objective_before: Option<f64>,
}

/// Whether a visit's best permutation beats the current one.
fn improves(v: &Visit) -> bool {
    v.best.score > v.current + IMPROVEMENT_EPS * v.current.abs().max(1.0)
}

/// Algorithm 1: coordinate descent from `opts.init` (or the identity) until
/// a sweep improves no group or `opts.max_iter` sweeps have run.
fn descend(
    steps: &Steps,
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    origin: Origin,
    observer: &dyn Observer,
) -> Result<Alignment> {
    let start = Instant::now();
    let mut perms = initial_perms(spec, opts)?;
    let objective_before = match origin.objective_before {
        Some(x) => x,
        None => objective_under(spec, a, b, &perms)?,
    };
    let mut log = Log::new(spec, origin.phase);
    log.started(origin.visits);
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
            let (visit, children) = steps.visit(spec, g, a, b, &perms)?;
            let accept = improves(&visit);
            log.visited(g, &visit, accept, observer);
            if accept {
                perms.set(g, visit.best.perm);
                for (c, p) in children {
                    log.moved_along(c, &perms[c], &p);
                    perms.set(c, p);
                }
                improved = true;
            }
        }
        log.end_sweep();
        converged = !improved;
    }
    let objective_after = objective_under(spec, a, b, &perms)?;
    Ok(log.finish(perms, objective_before, objective_after, converged, start))
}

/// Algorithm 1 with the plain step only, from `opts.init` (or the
/// identity): the paper's descent, no anchored start, no joint steps.
pub fn descend_plain(
    step: &dyn GroupStep,
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Alignment> {
    descend(
        &Steps::plain(step, spec),
        spec,
        a,
        b,
        opts,
        Origin::default(),
        observer,
    )
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
