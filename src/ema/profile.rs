//! EMA profiles (decay with optional warm-up, power function, window) and
//! the weight each checkpoint of a trajectory gets under one.

use std::fmt;

use super::decay::{Decay, Neumaier, Warmup};
use super::{FIRST_WEIGHT_WARN, HALF_LIFE_WARN_CHECKPOINTS, NEGLIGIBLE_WEIGHT, SIGMA_REL_MAX};
use crate::error::{EmaError, Result};

// ---------------------------------------------------------------------------
// Power-function EMA (EDM2)
// ---------------------------------------------------------------------------

/// EDM2's `σ_rel(γ) = (γ+1)^½ (γ+2)^−1 (γ+3)^−½` (their Eq. 123, `exp_to_std`
/// in `training/phema.py`): the standard deviation of the averaging profile
/// `∝ τ^γ` on `[0, t]` relative to `t`. Defined for `γ > −1`.
pub fn gamma_to_sigma_rel(gamma: f64) -> f64 {
    ((gamma + 1.0) / ((gamma + 2.0) * (gamma + 2.0) * (gamma + 3.0))).sqrt()
}

/// Inverse of [`gamma_to_sigma_rel`] on `γ ≥ 0`: the largest real root of
/// `γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²) = 0` (EDM2 Eq. 126 / Algorithm 2,
/// `std_to_exp`), i.e. `(γ+2)²(γ+3) = σ⁻²(γ+1)` solved for `γ`.
///
/// `σ_rel` must lie in `(0, 1/√12]`: `σ_rel = 1/√12` is `γ = 0` (the plain
/// running mean since step 0); larger values have only negative roots, whose
/// profiles weight the earliest steps most. EDM2's published pairs:
/// `σ_rel = 0.05 → γ ≈ 16.97`, `σ_rel = 0.10 → γ ≈ 6.94`.
pub fn sigma_rel_to_gamma(sigma_rel: f64) -> Result<f64> {
    if !sigma_rel.is_finite() || sigma_rel <= 0.0 || sigma_rel > SIGMA_REL_MAX * (1.0 + 1e-12) {
        return Err(EmaError::SigmaRel(sigma_rel).into());
    }
    let t = sigma_rel.powi(-2);
    // p(γ) = (γ+2)²(γ+3) − t(γ+1): p(0) = 12 − t ≤ 0, p convex on γ ≥ 0 and
    // p(t) > 0, so Newton from γ = t decreases monotonically to the root.
    let p = |g: f64| (g + 2.0) * (g + 2.0) * (g + 3.0) - t * (g + 1.0);
    let dp = |g: f64| 3.0 * g * g + 14.0 * g + 16.0 - t;
    if t <= 12.0 {
        return Ok(0.0);
    }
    let mut g = t;
    for _ in 0..1000 {
        let next = g - p(g) / dp(g);
        // Stop at the floating-point fixed point (or on NaN).
        if next.partial_cmp(&g) != Some(std::cmp::Ordering::Less) {
            break;
        }
        g = next;
    }
    Ok(g.max(0.0))
}

// ---------------------------------------------------------------------------
// Profiles and weights
// ---------------------------------------------------------------------------

/// An EMA profile: what `polymerge ema` averages with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmaProfile {
    /// Classic EMA `e ← β e + (1 − β) θ` per training step, optionally with a
    /// warm-up schedule.
    Decay {
        /// `β`.
        decay: Decay,
        /// `d_t = min(β, f(t))` if set.
        warmup: Option<Warmup>,
    },
    /// EDM2's power-function EMA with exponent `γ ≥ 0`.
    Power {
        /// `γ`.
        gamma: f64,
    },
    /// Uniform mean of the last `k ≥ 1` checkpoints (LAWA / SWA style).
    Window {
        /// `K`.
        k: usize,
    },
}

impl EmaProfile {
    /// A power profile from `γ`.
    pub fn power(gamma: f64) -> Result<EmaProfile> {
        let p = EmaProfile::Power { gamma };
        p.validate()?;
        Ok(p)
    }

    /// A power profile from EDM2's `σ_rel`.
    pub fn power_from_sigma_rel(sigma_rel: f64) -> Result<EmaProfile> {
        Ok(EmaProfile::Power {
            gamma: sigma_rel_to_gamma(sigma_rel)?,
        })
    }

    /// A window of the last `k` checkpoints.
    pub fn window(k: usize) -> Result<EmaProfile> {
        let p = EmaProfile::Window { k };
        p.validate()?;
        Ok(p)
    }

    /// Checks the parameters (the fields are public, so [`weights`] checks again).
    pub fn validate(&self) -> Result<()> {
        match *self {
            EmaProfile::Decay { decay, warmup } => {
                let tau = decay.tau();
                if !tau.is_finite() || tau <= 0.0 || tau >= 1.0 {
                    return Err(EmaError::Decay(decay.beta()).into());
                }
                if let Some(w) = warmup {
                    w.validate()?;
                }
            }
            EmaProfile::Power { gamma } => {
                if !gamma.is_finite() || gamma < 0.0 {
                    return Err(EmaError::Gamma(gamma).into());
                }
            }
            EmaProfile::Window { k } => {
                if k == 0 {
                    return Err(EmaError::EmptyWindow.into());
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for EmaProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmaProfile::Decay { decay, warmup } => {
                write!(
                    f,
                    "decay {} (tau {:e}, half-life {:.4} steps)",
                    decay.beta(),
                    decay.tau(),
                    decay.half_life()
                )?;
                if let Some(w) = warmup {
                    write!(f, " with {w}")?;
                }
                Ok(())
            }
            EmaProfile::Power { gamma } => write!(
                f,
                "power-function ema, gamma {gamma} (sigma_rel {:.4})",
                gamma_to_sigma_rel(*gamma)
            ),
            EmaProfile::Window { k } => write!(f, "uniform mean of the last {k} checkpoints"),
        }
    }
}

/// The weight of each checkpoint, in the order of `steps` (which must be
/// strictly increasing: sort with [`super::order_by_step`] first). The weights are
/// non-negative and sum to 1 (up to rounding).
pub fn weights(profile: &EmaProfile, steps: &[u64]) -> Result<Vec<f64>> {
    profile.validate()?;
    if steps.is_empty() {
        return Err(EmaError::NoCheckpoints.into());
    }
    if let Some(w) = steps.windows(2).find(|w| w[1] <= w[0]) {
        return Err(EmaError::NotIncreasing {
            prev: w[0],
            next: w[1],
        }
        .into());
    }
    Ok(match *profile {
        EmaProfile::Decay { decay, warmup } => decay_weights(decay, warmup, steps),
        EmaProfile::Power { gamma } => power_weights(gamma, steps),
        EmaProfile::Window { k } => window_weights(k, steps.len())?,
    })
}

/// `w_0 = e^{S_1}`, `w_k = e^{S_{k+1}} (1 − e^{L_k})` with `L_k` the log of
/// the product of the decays over `(t_{k−1}, t_k]` and `S_k = Σ_{j≥k} L_j`.
fn decay_weights(decay: Decay, warmup: Option<Warmup>, steps: &[u64]) -> Vec<f64> {
    let n = steps.len();
    let sat = warmup.map(|w| w.saturation_step(decay));
    // ln_block[k] = L_k for k ≥ 1 (block k covers updates t = t_{k−1} … t_k − 1).
    let mut ln_block = vec![0.0; n];
    for k in 1..n {
        let (a, b) = (steps[k - 1], steps[k] - 1);
        ln_block[k] = match (warmup, sat) {
            (Some(w), Some(sat)) => w.ln_product(decay, sat, a, b),
            _ => (b - a + 1) as f64 * decay.ln_beta(),
        };
    }
    let mut w = vec![0.0; n];
    let mut suffix = Neumaier::default(); // S_{k+1}
    for k in (1..n).rev() {
        let tail = suffix.value();
        w[k] = tail.exp() * -ln_block[k].exp_m1();
        suffix.add(ln_block[k]);
    }
    w[0] = suffix.value().exp();
    w
}

/// `w_k = (t_k/t_n)^{γ+1} (1 − (t_{k−1}/t_k)^{γ+1})`, `w_0 = (t_0/t_n)^{γ+1}`.
fn power_weights(gamma: f64, steps: &[u64]) -> Vec<f64> {
    let n = steps.len();
    let last = steps[n - 1];
    if last == 0 {
        return vec![1.0]; // a single checkpoint at step 0
    }
    let e = gamma + 1.0;
    let mut w = Vec::with_capacity(n);
    w.push((e * ln_ratio(steps[0], last)).exp());
    for k in 1..n {
        let (prev, cur) = (steps[k - 1], steps[k]);
        w.push((e * ln_ratio(cur, last)).exp() * -(e * ln_ratio(prev, cur)).exp_m1());
    }
    w
}

/// `ln(a/b)` for `0 ≤ a ≤ b`, `b > 0`, to within a few ulps in absolute
/// terms, and in relative terms when `a` is close to `b`.
fn ln_ratio(a: u64, b: u64) -> f64 {
    if a >= b - b / 2 {
        (-((b - a) as f64 / b as f64)).ln_1p()
    } else {
        (a as f64 / b as f64).ln()
    }
}

fn window_weights(k: usize, n: usize) -> Result<Vec<f64>> {
    if k > n {
        return Err(EmaError::WindowTooLarge { k, n }.into());
    }
    let mut w = vec![0.0; n];
    for x in &mut w[n - k..] {
        *x = 1.0 / k as f64;
    }
    Ok(w)
}

/// The pair of checkpoints a basin check of an EMA compares: the first with
/// non-negligible weight (after the longest prefix whose weights sum to at
/// most [`NEGLIGIBLE_WEIGHT`] of the total) against the last, as indices
/// into `weights`; `None` when that is one checkpoint.
pub fn basin_pair(weights: &[f64]) -> Option<(usize, usize)> {
    let total: f64 = weights.iter().sum();
    let mut prefix = 0.0;
    let mut first = 0;
    while first + 1 < weights.len() && prefix + weights[first] <= NEGLIGIBLE_WEIGHT * total {
        prefix += weights[first];
        first += 1;
    }
    let last = weights.len().saturating_sub(1);
    (first < last).then_some((first, last))
}

/// How many of the newest checkpoints hold half of the weight, interpolated
/// linearly within the checkpoint that crosses one half: with `c_m` the
/// summed weight of the newest `m` checkpoints, the `x` in `[m−1, m]` where
/// the line from `c_{m−1}` to `c_m` meets `0.5`.
///
/// For a plain decay with checkpoints every `Δ` steps this is the half-life
/// measured in checkpoints, `h/Δ`, exactly whenever `h/Δ` is a whole number
/// (and close in between); for a window of `K` it is `K/2`.
pub fn effective_half_life_checkpoints(weights: &[f64]) -> f64 {
    let mut cum = 0.0;
    for (m, &w) in weights.iter().rev().enumerate() {
        if cum + w >= 0.5 {
            return m as f64 + if w > 0.0 { (0.5 - cum) / w } else { 0.0 };
        }
        cum += w;
    }
    weights.len() as f64
}

/// One-line warnings about a profile on these checkpoints (empty when all is
/// well). `weights` are [`weights`]`(profile, steps)`.
///
/// Rules (decay profiles only, at least two checkpoints):
/// * half of the weight sits on fewer than [`HALF_LIFE_WARN_CHECKPOINTS`] of
///   the newest checkpoints: the checkpoints are too sparse for this
///   half-life, the result is close to the last checkpoint rather than to the
///   EMA a training run would have kept;
/// * the first checkpoint keeps more than [`FIRST_WEIGHT_WARN`] of the
///   weight: the half-life is long against the steps covered, the result is
///   mostly the initialisation.
pub fn warnings(profile: &EmaProfile, steps: &[u64], weights: &[f64]) -> Vec<String> {
    let mut out = Vec::new();
    let EmaProfile::Decay { decay, warmup } = profile else {
        return out;
    };
    let n = steps.len().min(weights.len());
    if n < 2 {
        return out;
    }
    let span = steps[n - 1] - steps[0];
    let spacing = span as f64 / (n - 1) as f64;
    let m = effective_half_life_checkpoints(&weights[..n]);
    if m < HALF_LIFE_WARN_CHECKPOINTS {
        out.push(format!(
            "ema: half of the weight sits on the newest {m:.2} checkpoints (half-life {:.4} steps, checkpoints every {spacing:.1} steps on average): the result stays close to the last checkpoint; save checkpoints more often than the half-life for a faithful ema",
            decay.half_life()
        ));
    }
    if weights[0] > FIRST_WEIGHT_WARN {
        out.push(format!(
            "ema: the first checkpoint (step {}) keeps {:.1}% of the weight: the half-life ({:.4} steps) is long against the {span} steps covered{}",
            steps[0],
            100.0 * weights[0],
            decay.half_life(),
            if warmup.is_none() {
                "; consider a shorter half-life or a warm-up"
            } else {
                ""
            }
        ));
    }
    out
}
