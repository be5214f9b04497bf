//! Basin check: are two checkpoints in one basin of the loss landscape, so
//! that a naive (unaligned) weight average is sensible, or in disconnected
//! basins (for example independent runs whose hidden units are permuted
//! relative to each other)? Data-free: only the weights are read.
//!
//! Per float tensor `t` of A and B (flattened, sums in f64):
//!
//! - cosine `cos = ⟨A,B⟩ / (‖A‖·‖B‖)`;
//! - relative distance `‖A−B‖ / ((‖A‖+‖B‖)/2)`;
//! - midpoint norm ratio `‖(A+B)/2‖ / ((‖A‖+‖B‖)/2)`: 1 for identical
//!   weights, `√((1+cos)/2)` for equal norms, ≈ 0.71 for unrelated weights.
//!   That is the "variance collapse" of naive averages that REPAIR (Jordan et
//!   al. 2022) identified: every layer's outputs shrink by about that factor,
//!   compounded over depth.
//!
//! The verdict is driven by the cosine of the *large* weight tensors (at
//! least 2-D and [`Thresholds::min_numel`] elements, where the noise floor of
//! the cosine of unrelated weights, `1/√numel`, is ≤ 0.03): vectors such as
//! norm scales or biases share structure across independent runs (LayerNorm
//! weights near 1 have cos ≈ 1 even when permuted), and the midpoint ratio
//! and the relative distance are inflated by norm changes along one run
//! (see `docs/basin.md` for the calibration on real pairs).
//!
//! When a permutation spec is available, weight matching adds the decisive
//! signal ([`GroupDiagnostics`]): the group's cosine before and after
//! alignment and the churn (fraction of units that move). A large gain with
//! high churn means B is a permuted copy in another basin; near-zero churn
//! means the same unit order, i.e. one basin even when the weights moved far.
//!
//! The streaming pass ([`stream_sums`]) reads every input once, chunk by
//! chunk from the memory maps (optionally through a permutation), so it is
//! cheap enough to run before every `avg` / `ema`.

use std::fmt;

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::Serialize;

use crate::alignment::Alignment;
use crate::average::{CHUNK_ELEMS, MergeInput, SUB_ELEMS};
use crate::checkpoint::{Checkpoint, TensorInfo, dtype};
use crate::error::{Error, Result};
use crate::permute::{TensorPermutation, gather};
use crate::spec::PermutationSpec;

/// The thresholds of the verdict. The defaults are calibrated on the labelled
/// pairs of `docs/basin.md` (`scripts/calibrate_basin.py`).
#[derive(Clone, Debug, Serialize)]
pub struct Thresholds {
    /// A tensor takes part in the verdict if it has at least 2 dimensions and
    /// this many elements (cosine noise floor of unrelated weights ≤ 1/√n).
    pub min_numel: u64,
    /// Below this cosine a large tensor looks unrelated (midpoint ratio
    /// ≲ 0.74 for equal norms).
    pub cos_unrelated: f64,
    /// From this cosine on a large tensor looks related (midpoint ratio
    /// ≳ 0.76 for equal norms).
    pub cos_related: f64,
    /// Disconnected when at least this fraction of the large tensors'
    /// parameters looks unrelated.
    pub unrelated_fraction: f64,
    /// Connected (data-free) when at least this fraction looks related and
    /// less than [`Thresholds::stray_fraction`] looks unrelated.
    pub related_fraction: f64,
    /// Largest fraction of unrelated parameters a connected pair may have.
    pub stray_fraction: f64,
    /// A group whose churn is at most this keeps B's unit order (same basin).
    pub churn_same: f64,
    /// A group whose churn is at least this, with a cosine gain of at least
    /// [`Thresholds::gain_permuted`], is permuted (another basin).
    pub churn_permuted: f64,
    /// Minimum gain of a group's cosine under matching to call it permuted.
    pub gain_permuted: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_numel: 1024,
            cos_unrelated: 0.10,
            cos_related: 0.15,
            unrelated_fraction: 0.5,
            related_fraction: 0.9,
            stray_fraction: 0.01,
            churn_same: 0.10,
            churn_permuted: 0.50,
            gain_permuted: 0.05,
        }
    }
}

/// Independent f64 accumulators in [`PairSums::of`]: 8 lanes fill two AVX2
/// (or one AVX-512) f64 vector per sum.
const SUM_LANES: usize = 8;

/// f64 sums over one tensor of a pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PairSums {
    /// Elements summed (non-finite pairs are left out and counted apart).
    pub numel: u64,
    pub dot: f64,
    pub sq_a: f64,
    pub sq_b: f64,
    /// `Σ (a−b)²`, summed directly (no cancellation for near-equal tensors).
    pub sq_diff: f64,
    /// Element pairs with a NaN or ±Inf on either side.
    pub nonfinite: u64,
}

impl PairSums {
    /// Sums over two equally long slices. When every value is finite (the
    /// common case) the sums run in [`SUM_LANES`] independent f64 lanes that
    /// the compiler vectorises, so the basin check stays memory-bound; the
    /// lanes are added at the end (this reassociation changes only the last
    /// bits of the sums). Slices with a NaN/Inf take the element-by-element
    /// path that leaves the non-finite pairs out.
    pub fn of(a: &[f32], b: &[f32]) -> Self {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let finite = a
            .iter()
            .zip(b)
            .fold(true, |ok, (x, y)| ok & x.is_finite() & y.is_finite());
        if !finite {
            return Self::of_checked(a, b);
        }
        let mut dot = [0f64; SUM_LANES];
        let mut sq_a = [0f64; SUM_LANES];
        let mut sq_b = [0f64; SUM_LANES];
        let mut sq_diff = [0f64; SUM_LANES];
        let (ca, cb) = (a.chunks_exact(SUM_LANES), b.chunks_exact(SUM_LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (xa, xb) in ca.zip(cb) {
            for l in 0..SUM_LANES {
                let (x, y) = (xa[l] as f64, xb[l] as f64);
                dot[l] += x * y;
                sq_a[l] += x * x;
                sq_b[l] += y * y;
                sq_diff[l] += (x - y) * (x - y);
            }
        }
        let mut s = Self::of_checked(ra, rb);
        s.dot += dot.iter().sum::<f64>();
        s.sq_a += sq_a.iter().sum::<f64>();
        s.sq_b += sq_b.iter().sum::<f64>();
        s.sq_diff += sq_diff.iter().sum::<f64>();
        s.numel = n as u64;
        s
    }

    /// Element-by-element sums, leaving out pairs with a NaN/Inf.
    fn of_checked(a: &[f32], b: &[f32]) -> Self {
        let mut s = PairSums::default();
        for (&x, &y) in a.iter().zip(b) {
            if !(x.is_finite() && y.is_finite()) {
                s.nonfinite += 1;
                continue;
            }
            let (x, y) = (x as f64, y as f64);
            s.dot += x * y;
            s.sq_a += x * x;
            s.sq_b += y * y;
            s.sq_diff += (x - y) * (x - y);
        }
        s.numel = (a.len().min(b.len()) as u64) - s.nonfinite;
        s
    }

    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &PairSums) {
        self.numel += o.numel;
        self.dot += o.dot;
        self.sq_a += o.sq_a;
        self.sq_b += o.sq_b;
        self.sq_diff += o.sq_diff;
        self.nonfinite += o.nonfinite;
    }

    pub fn norm_a(&self) -> f64 {
        self.sq_a.sqrt()
    }

    pub fn norm_b(&self) -> f64 {
        self.sq_b.sqrt()
    }

    /// `⟨A,B⟩ / (‖A‖‖B‖)`; `None` when either side is all zeros.
    pub fn cos(&self) -> Option<f64> {
        let d = self.norm_a() * self.norm_b();
        (d > 0.0).then(|| (self.dot / d).clamp(-1.0, 1.0))
    }

    /// `‖A−B‖ / ((‖A‖+‖B‖)/2)`; `None` when both sides are all zeros.
    pub fn rel_distance(&self) -> Option<f64> {
        let m = (self.norm_a() + self.norm_b()) / 2.0;
        (m > 0.0).then(|| self.sq_diff.sqrt() / m)
    }

    /// `‖(A+B)/2‖ / ((‖A‖+‖B‖)/2)`; `None` when both sides are all zeros.
    pub fn midpoint_ratio(&self) -> Option<f64> {
        let m = (self.norm_a() + self.norm_b()) / 2.0;
        let mid = ((self.sq_a + self.sq_b + 2.0 * self.dot).max(0.0) / 4.0).sqrt();
        (m > 0.0).then(|| mid / m)
    }

    /// `‖B‖ / ‖A‖`; `None` when A is all zeros.
    pub fn norm_ratio(&self) -> Option<f64> {
        (self.sq_a > 0.0).then(|| self.norm_b() / self.norm_a())
    }
}

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
    /// Parameter-weighted geometric mean of the judged tensors' midpoint
    /// ratios: how much a naive average shrinks one layer's outputs.
    pub midpoint_ratio_per_layer: Option<f64>,
    /// For Linear chains: the product of the layers' midpoint ratios (the
    /// shrink compounded over depth) and the number of layers.
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
            TensorClass::Unrelated => p_unrel += t.numel,
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
    let compounded = chain.and_then(|names| {
        let mut prod = 1.0;
        for n in names {
            prod *= tensors.iter().find(|t| &t.name == n)?.midpoint_ratio?;
        }
        (!names.is_empty()).then_some(prod)
    });
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
        midpoint_ratio_per_layer: (p_judged > 0).then(|| (log_mid / p_judged as f64).exp()),
        compounded_midpoint_ratio: compounded,
        layers: compounded.and(chain.map(|c| c.len())),
    };
    Diagnostics { summary, tensors }
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

/// The data-free verdict and its reasons.
fn assess_data_free(d: &Diagnostics, th: &Thresholds) -> (Verdict, Vec<String>) {
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
    let of = |c: TensorClass| judged.iter().filter(|t| t.class == c).count();
    let example = |c: TensorClass| {
        judged
            .iter()
            .filter(|t| t.class == c)
            .max_by_key(|t| t.numel)
            .map(|t| {
                format!(
                    "{}: cos {:.3}, midpoint norm ratio {:.2}",
                    t.name,
                    t.cos.unwrap_or(f64::NAN),
                    t.midpoint_ratio.unwrap_or(f64::NAN)
                )
            })
            .unwrap_or_default()
    };
    if s.unrelated_fraction >= th.unrelated_fraction {
        let mut r = vec![format!(
            "{} of {} large weight tensors ({} of their parameters) look unrelated (cos < {:.2}), e.g. {}",
            of(TensorClass::Unrelated),
            judged.len(),
            pct(s.unrelated_fraction),
            th.cos_unrelated,
            example(TensorClass::Unrelated)
        )];
        if !shrink.is_empty() {
            r.push(format!(
                "a naive average would shrink activations to {shrink}"
            ));
        }
        return (Verdict::Disconnected, r);
    }
    let min = format!(
        "lowest cos {:.3} ({})",
        s.min_cos.unwrap_or(f64::NAN),
        s.min_cos_tensor.as_deref().unwrap_or("?")
    );
    if s.related_fraction >= th.related_fraction && s.unrelated_fraction < th.stray_fraction {
        let mut r = vec![format!(
            "the weights are related: {} of the large weight tensors' parameters have cos ≥ {:.2}, {min}",
            pct(s.related_fraction),
            th.cos_related
        )];
        if !shrink.is_empty() {
            r.push(format!("midpoint norm ratio {shrink}"));
        }
        return (Verdict::Connected, r);
    }
    let mut r = vec![format!(
        "mixed signals: {} of the large weight tensors' parameters look unrelated (cos < {:.2}), {} related (cos ≥ {:.2}); {min}",
        pct(s.unrelated_fraction),
        th.cos_unrelated,
        pct(s.related_fraction),
        th.cos_related
    )];
    if of(TensorClass::Unrelated) > 0 {
        r.push(format!("e.g. {}", example(TensorClass::Unrelated)));
    }
    (Verdict::Uncertain, r)
}

/// The verdict for a pair. `groups` are the weight-matching diagnostics of
/// the naive pair, when matching ran; pass `None` for an already aligned
/// pair (whose alignment moved units on purpose) or when no spec exists.
pub fn assess(d: &Diagnostics, groups: Option<&[GroupDiagnostics]>, th: &Thresholds) -> Assessment {
    let (data_free, mut reasons) = assess_data_free(d, th);
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
    let max_churn = groups.iter().filter_map(|g| g.churn).fold(0.0f64, f64::max);
    let verdict = if !permuted.is_empty() {
        let mut r: Vec<String> = permuted.iter().map(|g| describe(g)).collect();
        r.push("B is a permuted copy in another basin: align it (--align) before averaging".into());
        // Keep the data-free facts (shrink factor) after the matching ones.
        r.extend(
            reasons
                .drain(..)
                .filter(|x| x.starts_with("a naive average")),
        );
        reasons = r;
        Verdict::Disconnected
    } else if partial.is_empty() {
        let note = format!(
            "weight matching keeps B's unit order (churn ≤ {} in every group)",
            pct(max_churn)
        );
        match data_free {
            Verdict::Disconnected => {
                reasons.insert(0, format!("{note}, yet the weights look unrelated"));
                Verdict::Uncertain
            }
            _ => {
                reasons.insert(0, note);
                Verdict::Connected
            }
        }
    } else {
        let mut r: Vec<String> = partial.iter().map(|g| describe(g)).collect();
        r.push("the unit correspondence is weak: the models may have moved far apart".into());
        r.append(&mut reasons);
        reasons = r;
        match data_free {
            Verdict::Disconnected => Verdict::Disconnected,
            _ => Verdict::Uncertain,
        }
    };
    Assessment {
        verdict,
        data_free,
        reasons,
    }
}

/// One input's view of a tensor in the streaming pass.
struct View<'a> {
    ckpt: &'a Checkpoint,
    info: &'a TensorInfo,
    bytes: &'a [u8],
    elem: usize,
    perm: Option<&'a TensorPermutation>,
}

impl View<'_> {
    /// Decodes elements `range` (of the permuted tensor) into f32.
    fn decode(&self, range: std::ops::Range<usize>, out: &mut Vec<f32>, scratch: &mut Vec<u8>) {
        out.resize(range.len(), 0.0);
        let bytes = match self.perm {
            None => &self.bytes[range.start * self.elem..range.end * self.elem],
            Some(p) => {
                scratch.resize(range.len() * self.elem, 0);
                gather(self.bytes, &self.info.shape, self.elem, p, range, scratch);
                scratch
            }
        };
        // Half floats: the slice conversion uses the CPU's F16C instructions
        // when present (several times faster than element by element).
        if self.info.dtype == safetensors::Dtype::F16
            && let Ok(h) = bytemuck::try_cast_slice::<u8, half::f16>(bytes)
        {
            h.convert_to_f32_slice(out);
            return;
        }
        dtype::decode_f32(self.info.dtype, bytes, out);
    }
}

/// One streaming pass over `inputs` computing, for every float tensor of the
/// first input and every pair `(i, j)` in `pairs`, the sums of
/// [`PairSums`]. Each input taking part is read once, chunk by chunk, seen
/// through its permutation if it has one; pages are released as they are
/// consumed. `progress` receives the bytes read so far. Tensors must exist
/// with equal shapes in every input (checked).
#[allow(clippy::type_complexity)]
pub fn stream_sums(
    inputs: &[MergeInput],
    pairs: &[(usize, usize)],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Vec<(String, Vec<usize>, PairSums)>>> {
    let first = inputs
        .first()
        .ok_or_else(|| Error::Invalid("no inputs to check".into()))?
        .checkpoint;
    let mut used: Vec<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
    used.sort_unstable();
    used.dedup();
    if let Some(&bad) = used.iter().find(|&&i| i >= inputs.len()) {
        return Err(Error::Invalid(format!("no input {bad} to check")));
    }
    let slot = |i: usize| used.iter().position(|&u| u == i).expect("used input");
    let mut out: Vec<Vec<(String, Vec<usize>, PairSums)>> = vec![Vec::new(); pairs.len()];
    let mut done = 0u64;
    for t in first.tensors().iter().filter(|t| dtype::is_float(t.dtype)) {
        let views: Vec<View> = used
            .iter()
            .map(|&i| {
                let inp = &inputs[i];
                let info = inp.checkpoint.require(&t.name)?;
                if info.shape != t.shape || !dtype::is_float(info.dtype) {
                    return Err(Error::Mismatch(format!(
                        "tensor `{}` is {:?} {:?} in `{}` but {:?} {:?} in `{}`",
                        t.name,
                        t.dtype,
                        t.shape,
                        first.source().display(),
                        info.dtype,
                        info.shape,
                        inp.checkpoint.source().display()
                    )));
                }
                Ok(View {
                    ckpt: inp.checkpoint,
                    info,
                    bytes: inp.checkpoint.bytes(info),
                    elem: dtype::size_of(info.dtype),
                    perm: inp.permutation.and_then(|p| p.get(&t.name)),
                })
            })
            .collect::<Result<_>>()?;
        let numel = t.numel();
        let mut sums = vec![PairSums::default(); pairs.len()];
        let mut offset = 0;
        while offset < numel {
            let n = CHUNK_ELEMS.min(numel - offset);
            let subs: Vec<std::ops::Range<usize>> = (offset..offset + n)
                .step_by(SUB_ELEMS)
                .map(|s| s..(s + SUB_ELEMS).min(offset + n))
                .collect();
            let parts: Vec<Vec<PairSums>> = subs
                .into_par_iter()
                .map(|r| {
                    let mut scratch = Vec::new();
                    let vals: Vec<Vec<f32>> = views
                        .iter()
                        .map(|v| {
                            let mut o = Vec::new();
                            v.decode(r.clone(), &mut o, &mut scratch);
                            o
                        })
                        .collect();
                    pairs
                        .iter()
                        .map(|&(i, j)| PairSums::of(&vals[slot(i)], &vals[slot(j)]))
                        .collect()
                })
                .collect();
            for part in &parts {
                for (s, p) in sums.iter_mut().zip(part) {
                    s.add(p);
                }
            }
            for v in views.iter().filter(|v| v.perm.is_none()) {
                v.ckpt
                    .release(v.info, offset * v.elem..(offset + n) * v.elem);
            }
            done += views.iter().map(|v| (n * v.elem) as u64).sum::<u64>();
            progress(done);
            offset += n;
        }
        for v in views.iter().filter(|v| v.perm.is_some()) {
            v.ckpt.release(v.info, 0..v.info.nbytes());
        }
        for (o, s) in out.iter_mut().zip(sums) {
            o.push((t.name.clone(), t.shape.clone(), s));
        }
    }
    Ok(out)
}

/// The weight tensors of `ckpt` if it is a Linear/ReLU chain, in order.
pub fn linear_chain(ckpt: &Checkpoint) -> Option<Vec<String>> {
    crate::evaluate::MlpLayout::infer(ckpt)
        .ok()
        .map(|l| l.layers.into_iter().map(|(w, _)| w).collect())
}

/// Data-free check of the pairs `(i, j)` of `inputs` in one streaming pass:
/// diagnostics and verdict per pair.
pub fn check_pairs(
    inputs: &[MergeInput],
    pairs: &[(usize, usize)],
    th: &Thresholds,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<(Diagnostics, Assessment)>> {
    let chain = inputs.first().and_then(|i| linear_chain(i.checkpoint));
    Ok(stream_sums(inputs, pairs, progress)?
        .into_iter()
        .map(|s| {
            let d = diagnose(s, chain.as_deref(), th);
            let a = assess(&d, None, th);
            (d, a)
        })
        .collect())
}

#[cfg(test)]
mod tests {

    #[test]
    fn lane_sums_equal_the_element_by_element_sums_up_to_rounding() {
        // 1003 elements: 125 full lanes of 8 and a remainder of 3.
        let a: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..1003)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
            .collect();
        let fast = PairSums::of(&a, &b);
        let slow = PairSums::of_checked(&a, &b);
        assert_eq!(fast.numel, 1003);
        for (x, y) in [
            (fast.dot, slow.dot),
            (fast.sq_a, slow.sq_a),
            (fast.sq_b, slow.sq_b),
            (fast.sq_diff, slow.sq_diff),
        ] {
            assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{x} vs {y}");
        }
    }

    #[test]
    fn a_nan_anywhere_leaves_just_that_pair_out() {
        // (1,2) and (3,4) count; the NaN pair does not: dot = 2 + 12 = 14.
        let s = PairSums::of(&[1.0, f32::NAN, 3.0], &[2.0, 5.0, 4.0]);
        assert_eq!((s.numel, s.nonfinite), (2, 1));
        assert_eq!(s.dot, 14.0);
    }

    use super::*;

    fn sums(a: &[f32], b: &[f32]) -> PairSums {
        PairSums::of(a, b)
    }

    #[test]
    fn identical_tensors_have_cosine_one_and_midpoint_ratio_one() {
        let s = sums(&[1.0, -2.0, 3.0], &[1.0, -2.0, 3.0]);
        assert!((s.cos().unwrap() - 1.0).abs() < 1e-15);
        assert_eq!(s.rel_distance(), Some(0.0));
        assert!((s.midpoint_ratio().unwrap() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn orthogonal_tensors_of_equal_norm_have_midpoint_ratio_one_over_root_two() {
        let s = sums(&[1.0, 0.0], &[0.0, 1.0]);
        assert_eq!(s.cos(), Some(0.0));
        assert!((s.midpoint_ratio().unwrap() - 0.5f64.sqrt()).abs() < 1e-15);
        assert!((s.rel_distance().unwrap() - 2f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn midpoint_ratio_is_root_of_one_plus_cos_over_two_for_equal_norms() {
        // a = (1, 0), b = (cos t, sin t)
        let t = 1.1f64;
        let s = sums(&[1.0, 0.0], &[t.cos() as f32, t.sin() as f32]);
        let expect = ((1.0 + s.cos().unwrap()) / 2.0).sqrt();
        assert!((s.midpoint_ratio().unwrap() - expect).abs() < 1e-7);
    }

    #[test]
    fn zero_tensors_have_no_cosine() {
        let s = sums(&[0.0, 0.0], &[1.0, 2.0]);
        assert_eq!(s.cos(), None);
        assert_eq!(sums(&[0.0], &[0.0]).rel_distance(), None);
    }

    #[test]
    fn non_finite_pairs_are_counted_and_left_out() {
        let s = sums(&[1.0, f32::NAN, 2.0], &[1.0, 3.0, f32::INFINITY]);
        assert_eq!(s.nonfinite, 2);
        assert_eq!(s.numel, 1);
        assert_eq!(s.dot, 1.0);
    }

    #[test]
    fn the_streaming_pass_matches_whole_tensor_sums_for_every_float_dtype() {
        // f16 goes through the F16C slice conversion, bf16/f32 through
        // `decode_f32`; special values (subnormals, ±0, near-max) included.
        for d in ["f32", "f16", "bf16"] {
            let a = Checkpoint::open(format!("fixtures/io/a_{d}.safetensors")).unwrap();
            let b = Checkpoint::open(format!("fixtures/io/b_{d}.safetensors")).unwrap();
            let got = stream_sums(
                &[MergeInput::plain(&a), MergeInput::plain(&b)],
                &[(0, 1)],
                &|_| {},
            )
            .unwrap()
            .remove(0);
            assert_eq!(got.len(), 6, "{d}");
            for (name, _, s) in got {
                let ta = a.require(&name).unwrap();
                let tb = b.require(&name).unwrap();
                let want = PairSums::of(&a.read_f32(ta).unwrap(), &b.read_f32(tb).unwrap());
                assert_eq!(s, want, "{d} {name}");
            }
        }
    }

    fn diag(specs: &[(&str, usize, f64)]) -> Diagnostics {
        // Tensors [n/16, 16] with the requested cosine (equal norms).
        let th = Thresholds::default();
        let rows = specs
            .iter()
            .map(|&(name, n, c)| {
                let s = PairSums {
                    numel: n as u64,
                    dot: c * n as f64,
                    sq_a: n as f64,
                    sq_b: n as f64,
                    sq_diff: 2.0 * n as f64 * (1.0 - c),
                    nonfinite: 0,
                };
                (name.to_string(), vec![n / 16, 16], s)
            })
            .collect();
        diagnose(rows, None, &th)
    }

    #[test]
    fn unrelated_large_tensors_make_a_pair_disconnected() {
        let d = diag(&[("a.weight", 4096, 0.01), ("b.weight", 4096, 0.02)]);
        let a = assess(&d, None, &Thresholds::default());
        assert_eq!(a.verdict, Verdict::Disconnected);
        assert!(a.reasons[0].contains("unrelated"), "{:?}", a.reasons);
        assert!(
            a.reasons.iter().any(|r| r.contains("~0.71x")),
            "{:?}",
            a.reasons
        );
    }

    #[test]
    fn related_large_tensors_make_a_pair_connected() {
        let d = diag(&[("a.weight", 4096, 0.4), ("b.weight", 4096, 0.23)]);
        assert_eq!(
            assess(&d, None, &Thresholds::default()).verdict,
            Verdict::Connected
        );
    }

    #[test]
    fn a_weak_band_or_a_mix_is_uncertain() {
        let th = Thresholds::default();
        let d = diag(&[("a.weight", 4096, 0.12)]);
        assert_eq!(assess(&d, None, &th).verdict, Verdict::Uncertain);
        // one unrelated tensor (a re-initialised head) among related ones
        let d = diag(&[("a.weight", 4096, 0.9), ("head.weight", 1024, 0.0)]);
        assert_eq!(assess(&d, None, &th).verdict, Verdict::Uncertain);
    }

    #[test]
    fn small_and_one_dimensional_tensors_do_not_vote() {
        let th = Thresholds::default();
        let rows = vec![
            (
                "norm.weight".to_string(),
                vec![4096],
                sums(&[1.0; 8], &[1.0; 8]),
            ),
            (
                "tiny.weight".to_string(),
                vec![4, 4],
                sums(&[1.0; 16], &[1.0; 16]),
            ),
        ];
        let d = diagnose(rows, None, &th);
        assert_eq!(d.summary.judged_tensors, 0);
        assert_eq!(assess(&d, None, &th).verdict, Verdict::Uncertain);
    }

    fn group(churn: f64, before: f64, after: f64) -> GroupDiagnostics {
        let th = Thresholds::default();
        let class = if churn <= th.churn_same {
            GroupClass::SameOrder
        } else if churn >= th.churn_permuted && after - before >= th.gain_permuted {
            GroupClass::Permuted
        } else {
            GroupClass::Partial
        };
        GroupDiagnostics {
            name: "fc1".into(),
            kind: None,
            size: 512,
            cos_before: Some(before),
            cos_after: Some(after),
            gain: Some(after - before),
            churn: Some(churn),
            class: Some(class),
        }
    }

    #[test]
    fn a_permuted_group_makes_the_pair_disconnected_whatever_the_cosines() {
        let th = Thresholds::default();
        let d = diag(&[("a.weight", 4096, 0.3)]);
        let a = assess(&d, Some(&[group(0.97, 0.3, 0.9)]), &th);
        assert_eq!(a.verdict, Verdict::Disconnected);
        assert_eq!(a.data_free, Verdict::Connected);
        assert!(
            a.reasons[0].contains("97.0% of 512 units permuted"),
            "{:?}",
            a.reasons
        );
    }

    #[test]
    fn unchanged_unit_order_confirms_a_connected_pair() {
        let th = Thresholds::default();
        let d = diag(&[("a.weight", 4096, 0.3)]);
        let a = assess(&d, Some(&[group(0.0, 0.3, 0.3)]), &th);
        assert_eq!(a.verdict, Verdict::Connected);
        let a = assess(&d, Some(&[group(0.3, 0.3, 0.31)]), &th);
        assert_eq!(a.verdict, Verdict::Uncertain);
    }
}
