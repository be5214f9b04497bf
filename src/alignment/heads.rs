//! The tied first phase for per-head groups: sibling groups `stem.0`,
//! `stem.1`, … (kinds `qk_dims`, `vo_dims`, `heads`) are merged into one
//! shared permutation, the descent runs on that sub-symmetry, and its result
//! starts the descent over the full spec (see
//! [`super::weight_matching`]).

use std::collections::HashMap;
use std::time::Instant;

use super::step::GroupStep;
use super::{AlignOptions, Alignment, WeightSource, descend_plain as descend};
use crate::error::Result;
use crate::observe::Observer;
use crate::permute::GroupPerms;
use crate::spec::{PermGroup, PermutationSpec};

/// A spec with sibling groups tied, and for every group of the original
/// spec the index of the tied group standing for it.
pub(super) struct Tied {
    pub(super) spec: PermutationSpec,
    pub(super) owner: Vec<usize>,
}

/// Descends on the tied spec, then on the full one from the tied result;
/// the report covers both phases (the tied phase's time charged to the
/// groups it stood for).
pub(super) fn tied_then_free(
    tied: &Tied,
    step: &dyn GroupStep,
    spec: &PermutationSpec,
    a: &dyn WeightSource,
    b: &dyn WeightSource,
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Alignment> {
    let start = Instant::now();
    let first = descend(step, &tied.spec, a, b, opts, observer)?;
    let init = GroupPerms::new(tied.owner.iter().map(|&t| first.perms[t].clone()).collect());
    let second = AlignOptions {
        init: Some(init),
        ..opts.clone()
    };
    let mut r = descend(step, spec, a, b, &second, observer)?;
    r.objective_before = first.objective_before;
    r.sweeps += first.sweeps;
    let mut sweeps = first.sweep_seconds;
    sweeps.extend(&r.sweep_seconds);
    r.sweep_seconds = sweeps;
    for g in &mut r.groups {
        // Time and visits of the tied phase, charged to its groups.
        if let Some(t) = first.groups.iter().find(|t| {
            t.name == g.name
                || g.name
                    .strip_prefix(t.name.as_str())
                    .is_some_and(is_index_suffix)
        }) {
            g.seconds_similarity += t.seconds_similarity / siblings(spec, &t.name) as f64;
            g.seconds_assignment += t.seconds_assignment / siblings(spec, &t.name) as f64;
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}

/// `.17`: a sibling index.
fn is_index_suffix(s: &str) -> bool {
    s.strip_prefix('.')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
}

/// Groups of `spec` named `stem` or `stem.k`.
fn siblings(spec: &PermutationSpec, stem: &str) -> usize {
    spec.groups
        .iter()
        .filter(|g| g.name == stem || g.name.strip_prefix(stem).is_some_and(is_index_suffix))
        .count()
        .max(1)
}

/// The spec with per-head sibling groups merged into one group each, and
/// for every original group the index of the group standing for it.
pub(super) fn tie_siblings(spec: &PermutationSpec) -> Option<Tied> {
    let stem_of = |g: &PermGroup| -> Option<String> {
        let kind = g.kind.as_deref()?;
        if !matches!(kind, "qk_dims" | "vo_dims" | "heads") {
            return None;
        }
        let dot = g.name.rfind('.')?;
        is_index_suffix(&g.name[dot..]).then(|| g.name[..dot].to_string())
    };
    let mut tied = PermutationSpec::new(spec.architecture.clone(), Vec::new());
    let mut owner = Vec::with_capacity(spec.groups.len());
    let mut by_stem: HashMap<String, usize> = Default::default();
    let mut merged = false;
    for g in &spec.groups {
        if let Some(stem) = stem_of(g) {
            if let Some(&t) = by_stem.get(&stem)
                && tied.groups[t].size == g.size
            {
                tied.groups[t].members.extend(g.members.iter().cloned());
                owner.push(t);
                merged = true;
                continue;
            }
            by_stem.insert(stem.clone(), tied.groups.len());
            owner.push(tied.groups.len());
            tied.groups.push(PermGroup {
                name: stem,
                ..g.clone()
            });
            continue;
        }
        owner.push(tied.groups.len());
        tied.groups.push(g.clone());
    }
    merged.then_some(Tied { spec: tied, owner })
}
