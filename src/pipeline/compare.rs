//! `polymerge basin` as a library call: are two checkpoints in one basin?
//! Weight matching when it can run (the decisive signal), one streaming pass
//! for the data-free sums of (A, B) and of (A, aligned B), diagnostics, and a
//! verdict with its reasons.

use std::time::Instant;

use super::{MatchOptions, match_pair};
use crate::alignment::Alignment;
use crate::average::MergeInput;
use crate::basin::{
    self, Assessment, Diagnostics, GroupDiagnostics, Thresholds, diagnose, group_diagnostics,
};
use crate::checkpoint::{Checkpoint, dtype};
use crate::error::{Error, Result};
use crate::observe::Observer;
use crate::spec::{PermutationSpec, SpecSource};

/// When [`compare`] runs weight matching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenMatching {
    /// When a spec is given or can be inferred and the model has at most
    /// [`basin::AUTO_MATCH_MAX_PARAMS`] float parameters.
    #[default]
    Auto,
    /// Always (fails without a spec).
    Always,
    /// Never: data-free diagnostics only.
    Never,
}

/// Why weight matching did not run.
#[derive(Debug)]
pub enum MatchingSkipped {
    /// [`WhenMatching::Never`].
    Never,
    /// Larger than the automatic limit.
    TooLarge { params: usize, limit: usize },
    /// No spec could be inferred (the error says why).
    NoSpec(Error),
}

/// Options of [`compare`].
#[derive(Clone, Debug, Default)]
pub struct Compare {
    /// Align B to A first and judge the aligned pair (what an aligned
    /// average would average).
    pub align: bool,
    /// When weight matching runs for the per-group diagnostics.
    pub when: WhenMatching,
    /// Spec and descent options of weight matching.
    pub matching: MatchOptions,
    /// The verdict's thresholds.
    pub thresholds: Thresholds,
}

/// What [`compare`] found.
#[derive(Debug)]
pub struct Comparison {
    /// Diagnostics of (A, B) as stored.
    pub before: Diagnostics,
    /// Diagnostics of (A, B aligned to A), when weight matching ran.
    pub after: Option<Diagnostics>,
    /// Per-group diagnostics, when a spec was found.
    pub groups: Vec<GroupDiagnostics>,
    /// The verdict: about (A, aligned B) with [`Compare::align`], else about
    /// (A, B) with the weight-matching signal.
    pub assessment: Assessment,
    /// The alignment, when weight matching ran.
    pub alignment: Option<Alignment>,
    /// Why weight matching did not run.
    pub skipped: Option<MatchingSkipped>,
    /// Whether the verdict is about the aligned pair.
    pub aligned: bool,
    /// Seconds of the streaming pass.
    pub check_seconds: f64,
}

impl Comparison {
    /// The diagnostics of the pair the verdict is about.
    pub fn shown(&self) -> &Diagnostics {
        match (&self.after, self.aligned) {
            (Some(after), true) => after,
            _ => &self.before,
        }
    }
}

/// Compares `b` with `a` (which must hold the same tensors with the same
/// shapes: check with [`crate::average::plan`] first for the usual errors).
pub fn compare(
    a: &Checkpoint,
    b: &Checkpoint,
    opts: &Compare,
    observer: &dyn Observer,
) -> Result<Comparison> {
    let th = &opts.thresholds;
    let (spec, skipped) = spec_for(a, b, opts)?;
    let matched = match &spec {
        Some(s) => Some(match_pair(s, a, b, &opts.matching.align, observer)?),
        None => None,
    };
    // One streaming pass: (A, B) and, after matching, (A, aligned B).
    let mut inputs = vec![MergeInput::plain(a), MergeInput::plain(b)];
    let mut pairs = vec![(0, 1)];
    if let Some((_, perm)) = &matched {
        inputs.push(MergeInput {
            checkpoint: b,
            permutation: Some(perm),
        });
        pairs.push((0, 2));
    }
    let t0 = Instant::now();
    let sums = basin::stream_sums(&inputs, &pairs, observer)?;
    let check_seconds = t0.elapsed().as_secs_f64();
    let chain = basin::linear_chain(a);
    let mut it = sums.into_iter();
    let before = diagnose(it.next().expect("pair"), chain.as_deref(), th);
    let after = it.next().map(|s| diagnose(s, chain.as_deref(), th));
    let alignment = matched.map(|(r, _)| r);
    let groups = match &spec {
        Some(s) => group_diagnostics(s, &before, after.as_ref().zip(alignment.as_ref()), th),
        None => Vec::new(),
    };
    let assessment = match (&after, opts.align) {
        (Some(d), true) => {
            let mut x = basin::assess(d, None, th);
            let moved = groups.iter().filter_map(|g| g.churn).fold(0.0, f64::max);
            x.reasons.insert(
                0,
                format!(
                    "after aligning B to A by weight matching (up to {:.1}% of a group's units moved)",
                    moved * 100.0
                ),
            );
            x
        }
        _ => basin::assess(&before, Some(&groups), th),
    };
    Ok(Comparison {
        before,
        after,
        groups,
        assessment,
        alignment,
        skipped,
        aligned: opts.align,
        check_seconds,
    })
}

/// The spec weight matching runs with, or why it does not run.
fn spec_for(
    a: &Checkpoint,
    b: &Checkpoint,
    opts: &Compare,
) -> Result<(Option<PermutationSpec>, Option<MatchingSkipped>)> {
    let params: usize = a
        .tensors()
        .iter()
        .filter(|t| dtype::is_float(t.dtype))
        .map(|t| t.numel())
        .sum();
    let skip = match opts.when {
        _ if opts.align => None,
        WhenMatching::Never => Some(MatchingSkipped::Never),
        WhenMatching::Auto if params > basin::AUTO_MATCH_MAX_PARAMS => {
            Some(MatchingSkipped::TooLarge {
                params,
                limit: basin::AUTO_MATCH_MAX_PARAMS,
            })
        }
        _ => None,
    };
    if skip.is_some() {
        return Ok((None, skip));
    }
    let inferred = matches!(
        opts.matching.spec,
        SpecSource::Infer | SpecSource::InferSharedHeads
    );
    match opts.matching.resolve_spec(&[a, b]) {
        Ok(s) => Ok((Some(s), None)),
        Err(e) if !opts.align && opts.when == WhenMatching::Auto && inferred => {
            Ok((None, Some(MatchingSkipped::NoSpec(e))))
        }
        Err(e) => Err(e),
    }
}
