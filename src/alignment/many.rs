//! MergeMany (Git Re-Basin, Algorithm 3): weight matching of more than two
//! models into one common unit order.

use std::time::Instant;

use super::{
    AlignOptions, Mean, Permuted, SplitMix64, WeightSource, model_permutation, weight_matching,
};
use crate::error::Result;
use crate::observe::{Event, Observer, Phase};
use crate::permute::{GroupPerms, ModelPermutation};
use crate::spec::PermutationSpec;

/// Result of MergeMany over N models.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ManyAlignment {
    /// One set of group permutations per model (the first may move too).
    pub perms: Vec<GroupPerms>,
    pub rounds: usize,
    pub seconds: f64,
}

/// MergeMany: repeatedly match each model to the mean of all the others
/// (each seen through its current permutation) until a full round changes
/// no permutation or `max_iter` rounds have run. Reported as the phase
/// [`Phase::MergeMany`], each match as [`Event::MergeManyStep`], and the
/// outcome as [`Event::MergeManyDone`]; the group visits of each match are
/// passed on ([`Event::GroupStarted`], [`Event::GroupVisited`]).
pub fn merge_many(
    spec: &PermutationSpec,
    models: &[&dyn WeightSource],
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<ManyAlignment> {
    let start = Instant::now();
    observer.event(&Event::Started {
        phase: Phase::MergeMany,
        total: None,
    });
    let k = models.len();
    let mut perms = vec![spec.identity(); k];
    let mut rng = SplitMix64(opts.seed);
    let mut order: Vec<usize> = (0..k).collect();
    let mut rounds = 0;
    while rounds < opts.max_iter {
        rounds += 1;
        rng.shuffle(&mut order);
        let mut changed = false;
        for &i in &order {
            let maps: Vec<ModelPermutation> = perms
                .iter()
                .map(|p| model_permutation(spec, models[0], p, None))
                .collect::<Result<_>>()?;
            let views: Vec<Permuted> = (0..k)
                .filter(|&j| j != i)
                .map(|j| Permuted {
                    source: models[j],
                    perm: &maps[j],
                })
                .collect();
            let target = Mean {
                sources: views.iter().map(|v| v as &dyn WeightSource).collect(),
            };
            let sub = AlignOptions {
                seed: rng.next(),
                max_iter: opts.max_iter,
                init: Some(perms[i].clone()),
                restarts: 1,
                term_cache: opts.term_cache,
                term_updates: opts.term_updates,
            };
            let r = weight_matching(spec, &target, models[i], &sub, &GroupsOnly(observer))?;
            if r.perms != perms[i] {
                changed = true;
                perms[i] = r.perms;
            }
            observer.event(&Event::MergeManyStep {
                round: rounds,
                model: i,
                objective: r.objective_after,
            });
        }
        if !changed {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    observer.event(&Event::Finished {
        phase: Phase::MergeMany,
    });
    observer.event(&Event::MergeManyDone { rounds, seconds });
    Ok(ManyAlignment {
        perms,
        rounds,
        seconds,
    })
}

/// Passes on only the group visits of an inner weight matching (its
/// start and end would read as the end of MergeMany).
struct GroupsOnly<'a>(&'a dyn Observer);

impl Observer for GroupsOnly<'_> {
    fn event(&self, e: &Event<'_>) {
        if matches!(e, Event::GroupStarted { .. } | Event::GroupVisited { .. }) {
            self.0.event(e);
        }
    }
}
