//! Per-tensor and per-group diagnostics of a pair, from its sums.

use serde::Serialize;

use super::{PairSums, Thresholds};
use crate::alignment::Alignment;
use crate::checkpoint::Checkpoint;
use crate::spec::PermutationSpec;

/// How one large tensor of a pair looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorClass {
    /// cos ≥ `cos_related`.
    Related,
    /// In between the two thresholds.
    Weak,
    /// cos < `cos_unrelated`.
    Unrelated,
    /// Not part of the verdict (1-D, small, all zeros or non-finite).
    NotJudged,
}

/// Diagnostics of one float tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorDiagnostics {
    pub name: String,
    pub shape: Vec<usize>,
    pub numel: u64,
    pub cos: Option<f64>,
    pub rel_distance: Option<f64>,
    pub midpoint_ratio: Option<f64>,
    pub norm_a: f64,
    pub norm_b: f64,
    pub class: TensorClass,
    #[serde(skip_serializing_if = "is_zero")]
    pub nonfinite: u64,
    #[serde(skip)]
    pub sums: PairSums,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Aggregates over a pair.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Over all float tensors: ‖A‖, ‖B‖ and the diagnostics.
    pub norm_a: f64,
    pub norm_b: f64,
    pub cos: Option<f64>,
    pub rel_distance: Option<f64>,
    pub midpoint_ratio: Option<f64>,
    /// The large tensors that drive the verdict.
    pub judged_tensors: usize,
    pub judged_params: u64,
    /// Cosine over the judged tensors together.
    pub judged_cos: Option<f64>,
    /// The judged tensor with the lowest cosine.
    pub min_cos: Option<f64>,
    pub min_cos_tensor: Option<String>,
    /// Fractions of the judged parameters in unrelated / related tensors.
    pub unrelated_fraction: f64,
    pub related_fraction: f64,
    /// Fraction of the judged tensors (by count) that look unrelated: what
    /// the verdict reads, so that a few large tensors (embeddings) cannot
    /// outvote many unrelated layers.
    pub unrelated_tensor_fraction: f64,
    /// Parameter-weighted geometric mean of the judged tensors' midpoint
    /// ratios: how much a naive average shrinks one layer's outputs.
    pub midpoint_ratio_per_layer: Option<f64>,
    /// The shrink compounded over depth: for Linear chains the product of
    /// the layers' midpoint ratios; otherwise the per-layer ratio to the
    /// power of the number of blocks ([`blocks`]: `layers.0`, `h.1`,
    /// `layer2.0` …, and every large tensor outside such blocks, like the
    /// embedding). `layers` is that depth.
    pub compounded_midpoint_ratio: Option<f64>,
    pub layers: Option<usize>,
}

/// Per-tensor diagnostics and their summary.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnostics {
    pub summary: Summary,
    pub tensors: Vec<TensorDiagnostics>,
}

/// Turns per-tensor sums into diagnostics. `chain` lists the weight tensors
/// of a Linear chain in order (for the compounded midpoint ratio), if the
/// model is one.
pub fn diagnose(
    sums: Vec<(String, Vec<usize>, PairSums)>,
    chain: Option<&[String]>,
    th: &Thresholds,
) -> Diagnostics {
    let mut tensors: Vec<TensorDiagnostics> = sums
        .into_iter()
        .map(|(name, shape, s)| {
            let cos = s.cos();
            let large = shape.len() >= 2 && s.numel >= th.min_numel && s.nonfinite == 0;
            let class = match cos {
                Some(c) if large => {
                    if c < th.cos_unrelated {
                        TensorClass::Unrelated
                    } else if c >= th.cos_related {
                        TensorClass::Related
                    } else {
                        TensorClass::Weak
                    }
                }
                _ => TensorClass::NotJudged,
            };
            TensorDiagnostics {
                numel: shape.iter().product::<usize>() as u64,
                name,
                shape,
                cos,
                rel_distance: s.rel_distance(),
                midpoint_ratio: s.midpoint_ratio(),
                norm_a: s.norm_a(),
                norm_b: s.norm_b(),
                class,
                nonfinite: s.nonfinite,
                sums: s,
            }
        })
        .collect();
    tensors.sort_by(|a, b| crate::spec::infer::natural_cmp(&a.name, &b.name));
    let mut all = PairSums::default();
    let mut judged = PairSums::default();
    let (mut n_judged, mut p_judged, mut p_unrel, mut p_rel) = (0usize, 0u64, 0u64, 0u64);
    let mut n_unrel = 0usize;
    let mut log_mid = 0.0f64;
    let mut min: Option<(f64, &str)> = None;
    for t in &tensors {
        all.add(&t.sums);
        if t.class == TensorClass::NotJudged {
            continue;
        }
        judged.add(&t.sums);
        n_judged += 1;
        p_judged += t.numel;
        match t.class {
            TensorClass::Unrelated => {
                p_unrel += t.numel;
                n_unrel += 1;
            }
            TensorClass::Related => p_rel += t.numel,
            _ => {}
        }
        if let Some(m) = t.midpoint_ratio {
            log_mid += t.numel as f64 * m.max(1e-300).ln();
        }
        let c = t.cos.expect("judged tensors have a cosine");
        if min.is_none_or(|(m, _)| c < m) {
            min = Some((c, &t.name));
        }
    }
    let frac = |p: u64| {
        if p_judged > 0 {
            p as f64 / p_judged as f64
        } else {
            0.0
        }
    };
    let chained = chain.and_then(|names| {
        let mut prod = 1.0;
        for n in names {
            prod *= tensors.iter().find(|t| &t.name == n)?.midpoint_ratio?;
        }
        (!names.is_empty()).then_some((prod, names.len()))
    });
    let per_layer = (p_judged > 0).then(|| (log_mid / p_judged as f64).exp());
    let judged_names = tensors
        .iter()
        .filter(|t| t.class != TensorClass::NotJudged)
        .map(|t| t.name.as_str());
    let depth = blocks(judged_names);
    let (compounded, layers) = match (chained, per_layer) {
        (Some((c, l)), _) => (Some(c), Some(l)),
        (None, Some(m)) if depth > 0 => (Some(m.powi(depth as i32)), Some(depth)),
        _ => (None, None),
    };
    let summary = Summary {
        norm_a: all.norm_a(),
        norm_b: all.norm_b(),
        cos: all.cos(),
        rel_distance: all.rel_distance(),
        midpoint_ratio: all.midpoint_ratio(),
        judged_tensors: n_judged,
        judged_params: p_judged,
        judged_cos: judged.cos(),
        min_cos: min.map(|m| m.0),
        min_cos_tensor: min.map(|m| m.1.to_string()),
        unrelated_fraction: frac(p_unrel),
        related_fraction: frac(p_rel),
        unrelated_tensor_fraction: if n_judged > 0 {
            n_unrel as f64 / n_judged as f64
        } else {
            0.0
        },
        midpoint_ratio_per_layer: per_layer,
        compounded_midpoint_ratio: compounded,
        layers,
    };
    Diagnostics { summary, tensors }
}

/// The number of blocks the named tensors belong to: a block is the name up
/// to its first numeric component (`transformer.h.3`, `layer2.0`,
/// `encoder.layer.5`); a tensor without one is its own block (its module:
/// `fc1`, `transformer.wte`). The depth over which a per-layer shrink
/// compounds.
pub fn blocks<'a>(names: impl IntoIterator<Item = &'a str>) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        let parts: Vec<&str> = n.split('.').collect();
        let end = match parts.iter().position(|p| p.parse::<u64>().is_ok()) {
            Some(i) => i + 1,
            None => parts.len().saturating_sub(1).max(1),
        };
        seen.insert(parts[..end].join("."));
    }
    seen.len()
}

/// What weight matching says about one permutation group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupClass {
    /// Churn ≤ `churn_same`: B's units already sit where A's are.
    SameOrder,
    /// Churn ≥ `churn_permuted` and a cosine gain ≥ `gain_permuted`.
    Permuted,
    /// Anything in between: the unit correspondence is weak.
    Partial,
}

/// Per-group diagnostics: the group's cosine (over the tensors it touches)
/// before and after weight matching, the gain and the churn.
#[derive(Clone, Debug, Serialize)]
pub struct GroupDiagnostics {
    pub name: String,
    pub kind: Option<String>,
    pub size: usize,
    pub cos_before: Option<f64>,
    pub cos_after: Option<f64>,
    pub gain: Option<f64>,
    pub churn: Option<f64>,
    pub class: Option<GroupClass>,
}

/// Cosine of a group: Σ over its member tensors (each once) of ⟨A,B⟩ over
/// the root of Σ‖A‖²·Σ‖B‖².
fn group_cos(names: &[&str], d: &Diagnostics) -> Option<f64> {
    let mut s = PairSums::default();
    for n in names {
        s.add(&d.tensors.iter().find(|t| t.name == *n)?.sums);
    }
    s.cos()
}

/// Group diagnostics from the naive diagnostics, and — when weight matching
/// ran — the diagnostics of (A, aligned B) and the alignment itself.
pub fn group_diagnostics(
    spec: &PermutationSpec,
    before: &Diagnostics,
    after: Option<(&Diagnostics, &Alignment)>,
    th: &Thresholds,
) -> Vec<GroupDiagnostics> {
    spec.groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            let mut names: Vec<&str> = g.members.iter().map(|m| m.tensor.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            let cos_before = group_cos(&names, before);
            let (cos_after, churn) = match after {
                Some((d, al)) => (group_cos(&names, d), al.groups.get(gi).map(|r| r.churn)),
                None => (None, None),
            };
            let gain = cos_before.zip(cos_after).map(|(b, a)| a - b);
            let class = churn.map(|c| {
                if c <= th.churn_same {
                    GroupClass::SameOrder
                } else if c >= th.churn_permuted && gain.unwrap_or(0.0) >= th.gain_permuted {
                    GroupClass::Permuted
                } else {
                    GroupClass::Partial
                }
            });
            GroupDiagnostics {
                name: g.name.clone(),
                kind: g.kind.clone(),
                size: g.size,
                cos_before,
                cos_after,
                gain,
                churn,
                class,
            }
        })
        .collect()
}

/// The weight tensors of `ckpt` if it is a Linear/ReLU chain, in order.
pub fn linear_chain(ckpt: &Checkpoint) -> Option<Vec<String>> {
    crate::evaluate::MlpLayout::infer(ckpt)
        .ok()
        .map(|l| l.layers.into_iter().map(|(w, _)| w).collect())
}
