//! The verdict of a basin check and its reasons in words.

use std::fmt;

use serde::Serialize;

use super::{
    Diagnostics, GroupClass, GroupDiagnostics, Summary, TensorClass, TensorDiagnostics, Thresholds,
};
use super::{TensorSums, diagnose, linear_chain, stream_sums};
use crate::average::MergeInput;
use crate::error::Result;
use crate::observe::Observer;

/// The verdict of a basin check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Connected,
    Disconnected,
    Uncertain,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Connected => "connected",
            Verdict::Disconnected => "disconnected",
            Verdict::Uncertain => "uncertain",
        })
    }
}

/// The reason that advises aligning B before averaging (a front end may
/// name its own way of doing that).
pub const ALIGN_ADVICE: &str = "B is a permuted copy in another basin: align it before averaging";

/// A verdict with its reasons in words.
#[derive(Clone, Debug, Serialize)]
pub struct Assessment {
    pub verdict: Verdict,
    /// Data-free part of the verdict alone (what `avg`/`ema` see).
    pub data_free: Verdict,
    pub reasons: Vec<String>,
}

/// `0.71x per layer (~0.36x over 3 layers)`.
pub fn shrink_words(s: &Summary) -> Option<String> {
    let per = s.midpoint_ratio_per_layer?;
    Some(match (s.compounded_midpoint_ratio, s.layers) {
        (Some(c), Some(l)) if l > 1 => format!("~{per:.2}x per layer (~{c:.2}x over {l} layers)"),
        _ => format!("~{per:.2}x per layer"),
    })
}

fn pct(x: f64) -> String {
    let p = x * 100.0;
    if p > 0.0 && p < 0.1 {
        "<0.1%".into()
    } else if !(99.95..100.0).contains(&p) {
        format!("{p:.1}%")
    } else {
        ">99.9%".into()
    }
}

/// The verdict on what a pair's diagnostics show (the pair as stored, or
/// after alignment), and its reasons.
fn assess_remaining(d: &Diagnostics, th: &Thresholds) -> (Verdict, Vec<String>) {
    let s = &d.summary;
    let shrink = shrink_words(s).unwrap_or_default();
    if s.judged_tensors == 0 {
        return (
            Verdict::Uncertain,
            vec![format!(
                "no weight tensor with at least 2 dimensions and {} elements: too small for a data-free check",
                th.min_numel
            )],
        );
    }
    let judged: Vec<&TensorDiagnostics> = d
        .tensors
        .iter()
        .filter(|t| t.class != TensorClass::NotJudged)
        .collect();
    let unrelated = judged
        .iter()
        .filter(|t| t.class == TensorClass::Unrelated)
        .count();
    let describe = |t: &TensorDiagnostics| {
        format!(
            "{}: cos {:.3}, midpoint norm ratio {:.2}",
            t.name,
            t.cos.unwrap_or(f64::NAN),
            t.midpoint_ratio.unwrap_or(f64::NAN)
        )
    };
    if s.unrelated_tensor_fraction >= th.unrelated_tensors {
        let example = judged
            .iter()
            .filter(|t| t.class == TensorClass::Unrelated)
            .max_by_key(|t| t.numel)
            .map(|t| describe(t))
            .unwrap_or_default();
        let mut r = vec![format!(
            "{unrelated} of {} large weight tensors ({} of their parameters) look unrelated (cos < {:.2}), e.g. {example}",
            judged.len(),
            pct(s.unrelated_fraction),
            th.cos_unrelated,
        )];
        if !shrink.is_empty() {
            r.push(format!("an average would shrink activations to {shrink}"));
        }
        return (Verdict::Disconnected, r);
    }
    let min = format!(
        "lowest cos {:.3} ({})",
        s.min_cos.unwrap_or(f64::NAN),
        s.min_cos_tensor.as_deref().unwrap_or("?")
    );
    let compounded = s.compounded_midpoint_ratio.unwrap_or(0.0);
    let min_cos = s.min_cos.unwrap_or(f64::NEG_INFINITY);
    if compounded >= th.connected_shrink && min_cos >= th.connected_min_cos {
        let mut r = vec![format!(
            "the weights are close: every large weight tensor has cos ≥ {:.2}, {min}",
            th.connected_min_cos
        )];
        if !shrink.is_empty() {
            r.push(format!("midpoint norm ratio {shrink}"));
        }
        return (Verdict::Connected, r);
    }
    let mut r = Vec::new();
    if unrelated > 0 {
        r.push(format!(
            "{unrelated} of {} large weight tensors look unrelated (cos < {:.2})",
            judged.len(),
            th.cos_unrelated
        ));
    }
    r.push(format!(
        "the weights are related but not close ({min}); an average would shrink activations to {} (connected needs ≥ {:.2} over the whole depth and every cos ≥ {:.2}): related weights can still sit across a loss barrier, measure the merge on data",
        if shrink.is_empty() { "?".into() } else { shrink },
        th.connected_shrink,
        th.connected_min_cos
    ));
    (Verdict::Uncertain, r)
}

/// The verdict for a pair from its diagnostics `d`. `groups` are the
/// weight-matching diagnostics of the naive pair, when matching ran; pass
/// `None` for a pair judged after alignment (whose alignment moved units
/// on purpose) or when no spec exists.
///
/// The verdict is what remains ([`Thresholds`]: unrelated large tensors,
/// compounded shrink), with the matching's evidence on top: a permuted
/// group makes a naive pair disconnected, a partial one caps the verdict at
/// uncertain. Low churn alone never makes a pair connected, so `basin A
/// B_aligned` and `basin A B --align` judge the same weights the same way.
pub fn assess(d: &Diagnostics, groups: Option<&[GroupDiagnostics]>, th: &Thresholds) -> Assessment {
    let (data_free, mut reasons) = assess_remaining(d, th);
    let groups: Vec<&GroupDiagnostics> = groups
        .unwrap_or(&[])
        .iter()
        .filter(|g| g.class.is_some())
        .collect();
    if groups.is_empty() {
        return Assessment {
            verdict: data_free,
            data_free,
            reasons,
        };
    }
    let describe = |g: &GroupDiagnostics| {
        format!(
            "{}: {} of {} units permuted (group cosine {:.2} -> {:.2} after weight matching)",
            g.name,
            pct(g.churn.unwrap_or(0.0)),
            g.size,
            g.cos_before.unwrap_or(f64::NAN),
            g.cos_after.unwrap_or(f64::NAN)
        )
    };
    let permuted: Vec<_> = groups
        .iter()
        .filter(|g| g.class == Some(GroupClass::Permuted))
        .collect();
    let partial: Vec<_> = groups
        .iter()
        .filter(|g| g.class == Some(GroupClass::Partial))
        .collect();
    let verdict = if !permuted.is_empty() {
        let mut r: Vec<String> = permuted.iter().map(|g| describe(g)).collect();
        r.push(ALIGN_ADVICE.into());
        // Keep the data-free facts (shrink factor) after the matching ones.
        r.extend(
            reasons
                .drain(..)
                .filter(|x| x.starts_with("an average would")),
        );
        reasons = r;
        Verdict::Disconnected
    } else if partial.is_empty() || data_free != Verdict::Connected {
        data_free
    } else {
        let mut r: Vec<String> = partial.iter().map(|g| describe(g)).collect();
        r.push("the unit correspondence is weak: the models may have moved far apart".into());
        r.append(&mut reasons);
        reasons = r;
        Verdict::Uncertain
    };
    Assessment {
        verdict,
        data_free,
        reasons,
    }
}
/// Data-free check of the pairs `(i, j)` of `inputs` in one streaming pass:
/// diagnostics and verdict per pair.
pub fn check_pairs(
    inputs: &[MergeInput],
    pairs: &[(usize, usize)],
    th: &Thresholds,
    observer: &dyn Observer,
) -> Result<Vec<(Diagnostics, Assessment)>> {
    let sums = stream_sums(inputs, pairs, observer)?;
    Ok(judge_pairs(inputs, sums, th))
}

/// Diagnostics and data-free verdict per pair from the sums of a pass over
/// `inputs` (one list per pair, as [`stream_sums`] or a
/// [`super::PairSumsSink`] fed by another pass returns them).
pub fn judge_pairs(
    inputs: &[MergeInput],
    sums: Vec<TensorSums>,
    th: &Thresholds,
) -> Vec<(Diagnostics, Assessment)> {
    let chain = inputs.first().and_then(|i| linear_chain(i.checkpoint));
    sums.into_iter()
        .map(|s| {
            let d = diagnose(s, chain.as_deref(), th);
            let a = assess(&d, None, th);
            (d, a)
        })
        .collect()
}
