//! The alignment stage of the pipeline: a spec for the inputs, then weight
//! matching of a pair, of every input to the first, or MergeMany.

use crate::alignment::{self, AlignOptions, Alignment, ManyAlignment, WeightSource};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::observe::{Event, Observer};
use crate::permute::ModelPermutation;
use crate::spec::{self, PermutationSpec, SpecSource};

/// Where the spec comes from and how weight matching runs.
#[derive(Clone, Debug, Default)]
pub struct MatchOptions {
    /// The permutation spec: inferred (the default), from a file, or given.
    pub spec: SpecSource,
    /// Only the groups of these kinds or names (all when `None`).
    pub groups: Option<Vec<String>>,
    /// Seed, sweep cap and starting permutations of the descent.
    pub align: AlignOptions,
}

impl MatchOptions {
    /// The spec for `ckpts`, validated against each of them.
    pub fn resolve_spec(&self, ckpts: &[&Checkpoint]) -> Result<PermutationSpec> {
        spec::resolve(&self.spec, self.groups.as_deref(), ckpts)
    }
}

/// Weight matching of `b` onto `a` under `spec`, and the per-tensor maps
/// that put `b`'s units into `a`'s order.
pub fn match_pair(
    spec: &PermutationSpec,
    a: &Checkpoint,
    b: &Checkpoint,
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<(Alignment, ModelPermutation)> {
    let r = alignment::weight_matching(spec, a, b, opts, observer)?;
    let perm = alignment::model_permutation(spec, b, &r.perms, None)?;
    Ok((r, perm))
}

/// Permutations that bring every input into the unit order of the first:
/// input `i > 0` matched to input 0 (reported as [`Event::InputAligned`]).
pub fn align_to_first(
    spec: &PermutationSpec,
    ckpts: &[&Checkpoint],
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Vec<Option<ModelPermutation>>> {
    let mut out = vec![None];
    for (i, c) in ckpts.iter().enumerate().skip(1) {
        let (r, perm) = match_pair(spec, ckpts[0], c, opts, observer)?;
        observer.event(&Event::InputAligned {
            input: i,
            alignment: &r,
        });
        out.push(Some(perm));
    }
    Ok(out)
}

/// Permutations that bring every input into one common unit order by
/// MergeMany (the first input may move too).
pub fn align_many(
    spec: &PermutationSpec,
    ckpts: &[&Checkpoint],
    opts: &AlignOptions,
    observer: &dyn Observer,
) -> Result<Vec<Option<ModelPermutation>>> {
    let sources: Vec<&dyn WeightSource> = ckpts.iter().map(|&c| c as &dyn WeightSource).collect();
    let opts = AlignOptions {
        init: None,
        ..opts.clone()
    };
    let ManyAlignment { perms, .. } = alignment::merge_many(spec, &sources, &opts, observer)?;
    perms
        .iter()
        .zip(ckpts)
        .map(|(p, &c)| Ok(Some(alignment::model_permutation(spec, c, p, None)?)))
        .collect()
}
