//! Offline exponential moving average (EMA) of saved checkpoints: the math.
//!
//! `polymerge ema` reduces every EMA flavour to a weighted average
//! `Σ_k w_k θ_k` of the input checkpoints, with weights that sum to 1. This
//! module computes those weights ([`weights`]) and works out which training
//! step each checkpoint was saved at ([`discover_step`], [`order_by_step`]).
//! It reads no files: step discovery looks at path *names* and at a
//! `__metadata__` map that the caller passes in.
//!
//! # Semantics (see `docs/ema.md` for the long version)
//!
//! Checkpoints are saved at steps `t_0 < t_1 < … < t_n`, `Δ_k = t_k − t_{k−1}`.
//!
//! * **Decay** `β` (also given as half-life `h` steps, `β = 0.5^{1/h}`, or as
//!   `τ = 1 − β`): the EMA is what the per-step recurrence
//!   `e ← β e + (1 − β) θ` would hold at `t_n` if it had run over every
//!   training step, with checkpoint `k` standing for the `Δ_k` steps
//!   `(t_{k−1}, t_k]` that end at it, and the first checkpoint initialising
//!   `e` (as torch's `AveragedModel` and timm do). So
//!   `w_k = (1 − β^{Δ_k}) Π_{j>k} β^{Δ_j}` for `k ≥ 1` and
//!   `w_0 = Π_{j≥1} β^{Δ_j}`.
//! * **Warm-up**: the same with a per-step decay `d_t = min(β, f(t))`, where
//!   the update into step `s` uses `t = s − 1` (the 0-based loop counter of a
//!   training loop that updates the EMA after every optimiser step):
//!   `w_k = (1 − Π_{s∈(t_{k−1},t_k]} d_{s−1}) Π_{s>t_k} d_{s−1}`.
//! * **Power** `γ` (EDM2, Karras et al. 2024): the profile `∝ τ^γ` on
//!   `[0, t_n]`, integrated over the steps each checkpoint stands for:
//!   `w_k = (t_k^{γ+1} − t_{k−1}^{γ+1}) / t_n^{γ+1}`, `w_0 = (t_0/t_n)^{γ+1}`.
//! * **Window** `K`: `1/K` on each of the last `K` checkpoints.
//!
//! Everything is computed in `f64`, in log space where products of many
//! `β^Δ` could underflow; weights that are truly below `f64`'s range come out
//! as 0.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The warning rule: warn when half the EMA weight sits on fewer than this
/// many of the newest checkpoints (see [`effective_half_life_checkpoints`]).
pub const HALF_LIFE_WARN_CHECKPOINTS: f64 = 2.0;

/// The warning rule: warn when the first checkpoint (the initialisation)
/// keeps more than this share of the weight under a decay profile.
pub const FIRST_WEIGHT_WARN: f64 = 0.5;

/// `σ_rel` of the power profile with `γ = 0` (uniform average over `[0, t]`):
/// `1/√12`. Larger `σ_rel` would need `γ < 0`.
pub const SIGMA_REL_MAX: f64 = 0.288_675_134_594_812_9;

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

// ---------------------------------------------------------------------------
// Decay, half-life, tau
// ---------------------------------------------------------------------------

/// A per-step EMA decay `β ∈ (0, 1)`.
///
/// Stored as `τ = 1 − β` so that decays very close to 1 given as `--tau` or
/// `--half-life` keep full precision in `1 − β` and `ln β`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decay {
    tau: f64,
}

impl Decay {
    /// `--decay β`. `β` must lie strictly between 0 and 1: `β = 1` never moves
    /// the average off the first checkpoint, and `β = 0` keeps only the last
    /// one (use that file directly).
    pub fn from_beta(beta: f64) -> Result<Decay> {
        if !beta.is_finite() || beta <= 0.0 || beta >= 1.0 {
            let why = if beta >= 1.0 {
                ": β = 1 never moves the average off the first checkpoint"
            } else if beta == 0.0 {
                ": β = 0 keeps only the last checkpoint (use it directly)"
            } else {
                ""
            };
            return Err(invalid(format!("decay must be in (0, 1), got {beta}{why}")));
        }
        // Exact for β ≥ 0.5 (Sterbenz), within one rounding otherwise.
        Ok(Decay { tau: 1.0 - beta })
    }

    /// `--tau τ` (reinforcement-learning naming, soft target updates): `β = 1 − τ`.
    pub fn from_tau(tau: f64) -> Result<Decay> {
        if !tau.is_finite() || tau <= 0.0 || tau >= 1.0 {
            let why = if tau <= 0.0 && tau.is_finite() {
                ": τ = 0 never moves the average off the first checkpoint"
            } else if tau == 1.0 {
                ": τ = 1 keeps only the last checkpoint (use it directly)"
            } else {
                ""
            };
            return Err(invalid(format!("tau must be in (0, 1), got {tau}{why}")));
        }
        Ok(Decay { tau })
    }

    /// `--half-life h` (in steps): `β = 0.5^{1/h}`, so the weight of the state
    /// `h` steps back is half that of the newest one.
    pub fn from_half_life(steps: f64) -> Result<Decay> {
        if !steps.is_finite() || steps <= 0.0 {
            return Err(invalid(format!(
                "half-life must be a positive number of steps, got {steps}"
            )));
        }
        let tau = -(-std::f64::consts::LN_2 / steps).exp_m1();
        if tau <= 0.0 || tau >= 1.0 {
            return Err(invalid(format!(
                "half-life {steps} steps is out of range (decay rounds to 0 or 1)"
            )));
        }
        Ok(Decay { tau })
    }

    /// `β`.
    pub fn beta(self) -> f64 {
        1.0 - self.tau
    }

    /// `τ = 1 − β`.
    pub fn tau(self) -> f64 {
        self.tau
    }

    /// `ln β`, computed as `ln(1 − τ)` without cancellation.
    pub fn ln_beta(self) -> f64 {
        (-self.tau).ln_1p()
    }

    /// The half-life in steps, `ln 0.5 / ln β`.
    pub fn half_life(self) -> f64 {
        -std::f64::consts::LN_2 / self.ln_beta()
    }
}

/// `h ↦ β = 0.5^{1/h}`.
pub fn half_life_to_decay(half_life_steps: f64) -> Result<f64> {
    Decay::from_half_life(half_life_steps).map(Decay::beta)
}

/// `β ↦ h = ln 0.5 / ln β`.
pub fn decay_to_half_life(beta: f64) -> Result<f64> {
    Decay::from_beta(beta).map(Decay::half_life)
}

// ---------------------------------------------------------------------------
// Warm-up schedules
// ---------------------------------------------------------------------------

/// A warm-up schedule: the decay used for update number `t` (0-based) is
/// `d_t = min(β, f(t))`. The update that brings the average to training step
/// `s` is update number `t = s − 1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    /// `f(t) = (1 + t) / (10 + t)`: TensorFlow's
    /// `ExponentialMovingAverage(num_updates=…)`, and the default of older
    /// diffusers `EMAModel`s; common in training scripts as
    /// `min(decay, (1 + step) / (10 + step))`.
    Rational,
    /// `f(t) = 1 − (1 + t/inv_gamma)^{−power}` (@crowsonkb's warm-up): diffusers
    /// `EMAModel(use_ema_warmup=True, inv_gamma, power)` and timm
    /// `ModelEmaV3(use_warmup=True, warmup_gamma, warmup_power)`. Their defaults
    /// are `inv_gamma = 1`, `power = 2/3`.
    InvGamma {
        /// `inv_gamma > 0`.
        inv_gamma: f64,
        /// `power > 0`.
        power: f64,
    },
}

impl Warmup {
    /// diffusers' and timm's defaults, `inv_gamma = 1`, `power = 2/3`.
    pub const INV_GAMMA_DEFAULT: Warmup = Warmup::InvGamma {
        inv_gamma: 1.0,
        power: 2.0 / 3.0,
    };

    /// Builds a schedule from a CLI name: `rational` (alias `tf`) or
    /// `inv-gamma` (alias `diffusers`), the latter with optional parameters
    /// (defaults 1 and 2/3).
    pub fn parse(name: &str, inv_gamma: Option<f64>, power: Option<f64>) -> Result<Warmup> {
        let w = match name.trim().to_ascii_lowercase().as_str() {
            "rational" | "tf" => {
                if inv_gamma.is_some() || power.is_some() {
                    return Err(invalid(
                        "the rational warm-up (1+t)/(10+t) takes no inv-gamma or power",
                    ));
                }
                Warmup::Rational
            }
            "inv-gamma" | "inv_gamma" | "diffusers" => Warmup::InvGamma {
                inv_gamma: inv_gamma.unwrap_or(1.0),
                power: power.unwrap_or(2.0 / 3.0),
            },
            other => {
                return Err(invalid(format!(
                    "unknown warm-up `{other}`: expected `rational` ((1+t)/(10+t)) or `inv-gamma` (1-(1+t/inv_gamma)^-power)"
                )));
            }
        };
        w.validate()?;
        Ok(w)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if let Warmup::InvGamma { inv_gamma, power } = *self {
            if !inv_gamma.is_finite() || inv_gamma <= 0.0 {
                return Err(invalid(format!(
                    "warm-up inv_gamma must be positive, got {inv_gamma}"
                )));
            }
            if !power.is_finite() || power <= 0.0 {
                return Err(invalid(format!(
                    "warm-up power must be positive, got {power}"
                )));
            }
        }
        Ok(())
    }

    /// `1 − f(t)`, computed without cancellation.
    fn one_minus_f(&self, t: u64) -> f64 {
        let t = t as f64;
        match *self {
            Warmup::Rational => 9.0 / (10.0 + t),
            Warmup::InvGamma { inv_gamma, power } => (-power * (t / inv_gamma).ln_1p()).exp(),
        }
    }

    /// `f(t)` itself.
    pub fn schedule(&self, t: u64) -> f64 {
        1.0 - self.one_minus_f(t)
    }

    /// `d_t = min(β, f(t))`: the decay of update number `t`.
    pub fn decay_at(&self, decay: Decay, t: u64) -> f64 {
        if self.saturated(decay, t) {
            decay.beta()
        } else {
            self.schedule(t)
        }
    }

    /// `ln d_t`.
    fn ln_decay_at(&self, decay: Decay, t: u64) -> f64 {
        if self.saturated(decay, t) {
            decay.ln_beta()
        } else {
            (-self.one_minus_f(t)).ln_1p()
        }
    }

    /// `f(t) ≥ β`, i.e. `1 − f(t) ≤ τ`.
    fn saturated(&self, decay: Decay, t: u64) -> bool {
        self.one_minus_f(t) <= decay.tau()
    }

    /// The first update number from which `d_t = β` (`u64::MAX` if never
    /// within `2^53` steps). `f` is increasing, so this is a binary search.
    pub fn saturation_step(&self, decay: Decay) -> u64 {
        const LIMIT: u64 = 1 << 53;
        if !self.saturated(decay, LIMIT) {
            return u64::MAX;
        }
        let (mut lo, mut hi) = (0u64, LIMIT); // answer in [lo, hi]
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.saturated(decay, mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// `Σ_{t=a}^{b} ln f(t)` for `a ≤ b`, all below saturation.
    fn ln_product_warm(&self, decay: Decay, a: u64, b: u64) -> f64 {
        match *self {
            // Π_{t=a}^{b} (1+t)/(10+t) telescopes to Π_{j=1}^{9} (a+j)/(b+1+j).
            Warmup::Rational => {
                let span = (b + 1 - a) as f64;
                let mut sum = Neumaier::default();
                for j in 1..=9u64 {
                    sum.add(-(span / (a + j) as f64).ln_1p());
                }
                sum.value()
            }
            // No closed form: one term per step (only the warm-up phase).
            Warmup::InvGamma { .. } => {
                let mut sum = Neumaier::default();
                for t in a..=b {
                    sum.add(self.ln_decay_at(decay, t));
                }
                sum.value()
            }
        }
    }

    /// `Σ_{t=a}^{b} ln d_t` for `a ≤ b`, where `sat` is
    /// [`Warmup::saturation_step`].
    fn ln_product(&self, decay: Decay, sat: u64, a: u64, b: u64) -> f64 {
        let mut sum = Neumaier::default();
        if a < sat {
            sum.add(self.ln_product_warm(decay, a, b.min(sat - 1)));
        }
        if b >= sat {
            let count = b - a.max(sat) + 1;
            sum.add(count as f64 * decay.ln_beta());
        }
        sum.value()
    }
}

impl fmt::Display for Warmup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warmup::Rational => write!(f, "warm-up (1+t)/(10+t)"),
            Warmup::InvGamma { inv_gamma, power } => {
                write!(f, "warm-up 1-(1+t/{inv_gamma})^-{power}")
            }
        }
    }
}

/// Neumaier's compensated sum.
#[derive(Default)]
struct Neumaier {
    sum: f64,
    comp: f64,
}

impl Neumaier {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if !t.is_finite() {
            // −∞ (a zero decay) absorbs everything; keep it clean of NaN.
            self.sum = t;
            self.comp = 0.0;
            return;
        }
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        if self.sum.is_finite() {
            self.sum + self.comp
        } else {
            self.sum
        }
    }
}

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
        return Err(invalid(format!(
            "sigma-rel must be in (0, {SIGMA_REL_MAX:.4}], got {sigma_rel} (1/√12 ≈ 0.2887 is γ = 0, the running mean)"
        )));
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
                    return Err(invalid(format!(
                        "decay must be in (0, 1), got {}",
                        decay.beta()
                    )));
                }
                if let Some(w) = warmup {
                    w.validate()?;
                }
            }
            EmaProfile::Power { gamma } => {
                if !gamma.is_finite() || gamma < 0.0 {
                    return Err(invalid(format!(
                        "power exponent γ must be ≥ 0, got {gamma} (γ < 0 weights the earliest steps most)"
                    )));
                }
            }
            EmaProfile::Window { k } => {
                if k == 0 {
                    return Err(invalid("window must hold at least 1 checkpoint, got 0"));
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
/// strictly increasing: sort with [`order_by_step`] first). The weights are
/// non-negative and sum to 1 (up to rounding).
pub fn weights(profile: &EmaProfile, steps: &[u64]) -> Result<Vec<f64>> {
    profile.validate()?;
    if steps.is_empty() {
        return Err(invalid("no checkpoints to average"));
    }
    if let Some(w) = steps.windows(2).find(|w| w[1] <= w[0]) {
        return Err(invalid(format!(
            "steps must be strictly increasing, but step {} follows step {}",
            w[1], w[0]
        )));
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
        return Err(invalid(format!(
            "window of {k} checkpoints needs at least {k} inputs, got {n}"
        )));
    }
    let mut w = vec![0.0; n];
    for x in &mut w[n - k..] {
        *x = 1.0 / k as f64;
    }
    Ok(w)
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

// ---------------------------------------------------------------------------
// Profile options (the CLI's exactly-one-of flags)
// ---------------------------------------------------------------------------

/// The profile flags of `polymerge ema`, exactly one of which (`decay`,
/// `half_life`, `tau`, `power`, `sigma_rel`, `window`) must be set;
/// `warmup` only goes with the three decay forms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProfileOptions {
    /// `--decay β`.
    pub decay: Option<f64>,
    /// `--half-life STEPS`.
    pub half_life: Option<f64>,
    /// `--tau τ`.
    pub tau: Option<f64>,
    /// `--power γ`.
    pub power: Option<f64>,
    /// `--sigma-rel σ`.
    pub sigma_rel: Option<f64>,
    /// `--window K`.
    pub window: Option<usize>,
    /// `--warmup …` (see [`Warmup::parse`]).
    pub warmup: Option<Warmup>,
}

impl ProfileOptions {
    /// Validates the combination and builds the profile.
    pub fn to_profile(&self) -> Result<EmaProfile> {
        let given: Vec<&str> = [
            ("--decay", self.decay.is_some()),
            ("--half-life", self.half_life.is_some()),
            ("--tau", self.tau.is_some()),
            ("--power", self.power.is_some()),
            ("--sigma-rel", self.sigma_rel.is_some()),
            ("--window", self.window.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match given.as_slice() {
            [] => {
                return Err(invalid(
                    "choose an ema profile: one of --decay, --half-life, --tau, --power, --sigma-rel, --window",
                ));
            }
            [_] => {}
            [a, b, ..] => {
                return Err(invalid(format!(
                    "{a} and {b} cannot be combined: give exactly one ema profile"
                )));
            }
        }
        let decay = if let Some(b) = self.decay {
            Some(Decay::from_beta(b)?)
        } else if let Some(h) = self.half_life {
            Some(Decay::from_half_life(h)?)
        } else if let Some(t) = self.tau {
            Some(Decay::from_tau(t)?)
        } else {
            None
        };
        if let Some(decay) = decay {
            let p = EmaProfile::Decay {
                decay,
                warmup: self.warmup,
            };
            p.validate()?;
            return Ok(p);
        }
        if self.warmup.is_some() {
            return Err(invalid(format!(
                "--warmup applies only to --decay, --half-life or --tau, not to {}",
                given[0]
            )));
        }
        if let Some(g) = self.power {
            EmaProfile::power(g)
        } else if let Some(s) = self.sigma_rel {
            EmaProfile::power_from_sigma_rel(s)
        } else {
            EmaProfile::window(self.window.unwrap_or(0))
        }
    }
}

// ---------------------------------------------------------------------------
// Step discovery
// ---------------------------------------------------------------------------

/// Where a checkpoint's step came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepSource {
    /// `--steps`.
    Explicit,
    /// The file name, or the name of a directory above it.
    Name,
    /// The `step` (or `global_step`) key of the safetensors `__metadata__`.
    Metadata,
    /// Name and metadata, agreeing.
    NameAndMetadata,
}

/// One input checkpoint and its step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInfo {
    /// Position of the input on the command line.
    pub index: usize,
    /// The input path as given.
    pub path: PathBuf,
    /// Its training step.
    pub step: u64,
    /// Where the step came from.
    pub source: StepSource,
}

/// Read access to a safetensors `__metadata__` map (string to string).
pub trait Metadata {
    /// The value of `key`, if present.
    fn get_str(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> Metadata for HashMap<String, String, S> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Metadata for BTreeMap<String, String> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<M: Metadata> Metadata for Option<M> {
    fn get_str(&self, key: &str) -> Option<&str> {
        self.as_ref().and_then(|m| m.get_str(key))
    }
}

impl<M: Metadata + ?Sized> Metadata for &M {
    fn get_str(&self, key: &str) -> Option<&str> {
        (**self).get_str(key)
    }
}

/// No metadata at all.
impl Metadata for () {
    fn get_str(&self, _key: &str) -> Option<&str> {
        None
    }
}

/// Metadata keys read for the step, in order.
pub const METADATA_STEP_KEYS: [&str; 2] = ["step", "global_step"];

/// Name keywords that introduce a step number, with their rank (lower wins):
/// step-like counters beat `epoch`, so Lightning's `epoch=3-step=1000` is
/// step 1000. Longer keywords first.
const KEYWORDS: [(&str, u8); 10] = [
    ("global_step", 1),
    ("global-step", 1),
    ("globalstep", 1),
    ("checkpoint", 1),
    ("iteration", 1),
    ("steps", 1),
    ("epoch", 2),
    ("step", 1),
    ("iter", 1),
    ("ckpt", 1),
];

/// How many directories above the file are searched for a step when the file
/// name has none (`checkpoint-1000/model.safetensors`,
/// `checkpoint-1000/unet/diffusion_pytorch_model.safetensors`).
pub const NAME_PARENT_DEPTH: usize = 2;

/// Candidate steps in one path component: `(value, rank)`.
fn name_candidates(component: &str, is_file: bool) -> Vec<(u64, u8)> {
    let s = component.to_ascii_lowercase();
    let b = s.as_bytes();
    let mut out = Vec::new();
    for i in 0..b.len() {
        if i > 0 && b[i - 1].is_ascii_alphabetic() {
            continue; // `timestep1000` is not `step1000`
        }
        let Some(&(kw, rank)) = KEYWORDS
            .iter()
            .find(|(kw, _)| b[i..].starts_with(kw.as_bytes()))
        else {
            continue;
        };
        let mut j = i + kw.len();
        if j < b.len() && matches!(b[j], b'-' | b'_' | b'=' | b':') {
            j += 1;
        }
        let start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j == start {
            continue;
        }
        // `step10k` or `epoch_1.5` is not a whole step count.
        let next = b.get(j).copied();
        if next.is_some_and(|c| c.is_ascii_alphabetic())
            || (next == Some(b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit))
        {
            continue;
        }
        if let Ok(v) = s[start..j].parse::<u64>() {
            out.push((v, rank));
        }
    }
    if out.is_empty() && is_file {
        // A bare number as the whole stem: `001000.safetensors`.
        let stem = s.split('.').next().unwrap_or("");
        if !stem.is_empty()
            && stem.bytes().all(|c| c.is_ascii_digit())
            && let Ok(v) = stem.parse::<u64>()
        {
            out.push((v, 3));
        }
    }
    out
}

/// The step written in a checkpoint's path name, if any.
///
/// Looks at the file name first, then at up to [`NAME_PARENT_DEPTH`]
/// directories above it; the nearest name that has a step decides. Within a
/// name, a number counts when it directly follows a keyword (`step`, `steps`,
/// `global_step`, `checkpoint`, `ckpt`, `iter`, `iteration`, `epoch`; any
/// case, not preceded by a letter), optionally after one of `-`, `_`, `=`,
/// `:`: `step-1000`, `checkpoint-1000`, `global_step1000`, `epoch_012`,
/// `step_500.safetensors`, `model-step=1000`. Step-like keywords outrank
/// `epoch` (`epoch=3-step=1000` is 1000). A file name that is only digits
/// (`001000.safetensors`) is also a step.
///
/// Errors when one name holds two different candidate numbers of the same
/// rank (`step-1000-step-2000`, `ckpt3_step1000`).
pub fn step_from_name(path: &Path) -> Result<Option<u64>> {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    let parents = path
        .parent()
        .into_iter()
        .flat_map(Path::ancestors)
        .filter_map(|p| p.file_name())
        .take(NAME_PARENT_DEPTH)
        .map(|f| f.to_string_lossy().into_owned());
    let components = file
        .into_iter()
        .map(|f| (f, true))
        .chain(parents.map(|d| (d, false)));
    for (name, is_file) in components {
        let cands = name_candidates(&name, is_file);
        let Some(best) = cands.iter().map(|&(_, r)| r).min() else {
            continue;
        };
        let mut values: Vec<u64> = cands
            .iter()
            .filter(|&&(_, r)| r == best)
            .map(|&(v, _)| v)
            .collect();
        values.sort_unstable();
        values.dedup();
        if values.len() > 1 {
            let list: Vec<String> = values.iter().map(u64::to_string).collect();
            return Err(invalid(format!(
                "{}: ambiguous step in the name `{name}`: could be {} (pass --steps)",
                path.display(),
                list.join(" or ")
            )));
        }
        return Ok(Some(values[0]));
    }
    Ok(None)
}

/// The step in a safetensors `__metadata__` (`step`, else `global_step`).
/// The value must be a whole number (`"1000"`; `"1000.0"` is accepted).
pub fn step_from_metadata(path: &Path, metadata: &impl Metadata) -> Result<Option<u64>> {
    let mut found: Option<(&str, u64)> = None;
    for key in METADATA_STEP_KEYS {
        let Some(raw) = metadata.get_str(key) else {
            continue;
        };
        let v = parse_whole(raw).ok_or_else(|| {
            invalid(format!(
                "{}: metadata `{key}` = `{raw}` is not a whole number of steps",
                path.display()
            ))
        })?;
        match found {
            Some((k0, v0)) if v0 != v => {
                return Err(invalid(format!(
                    "{}: metadata `{k0}` = {v0} and `{key}` = {v} disagree (pass --steps)",
                    path.display()
                )));
            }
            Some(_) => {}
            None => found = Some((key, v)),
        }
    }
    Ok(found.map(|(_, v)| v))
}

fn parse_whole(raw: &str) -> Option<u64> {
    let s = raw.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let f: f64 = s.parse().ok()?;
    (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0)
        .then_some(f as u64)
}

/// The step of one input, from its name and its metadata. Both may be
/// present if they agree; neither is an error (the caller should suggest
/// `--steps`).
pub fn discover_step(index: usize, path: &Path, metadata: &impl Metadata) -> Result<StepInfo> {
    let from_name = step_from_name(path)?;
    let from_meta = step_from_metadata(path, metadata)?;
    let (step, source) = match (from_name, from_meta) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(format!(
                "{}: the name says step {a} but metadata `step` says {b} (pass --steps)",
                path.display()
            )));
        }
        (Some(a), Some(_)) => (a, StepSource::NameAndMetadata),
        (Some(a), None) => (a, StepSource::Name),
        (None, Some(b)) => (b, StepSource::Metadata),
        (None, None) => {
            return Err(invalid(format!(
                "{}: no step in the file name or in the `step` metadata key (name it like step-1000.safetensors or pass --steps)",
                path.display()
            )));
        }
    };
    Ok(StepInfo {
        index,
        path: path.to_path_buf(),
        step,
        source,
    })
}

/// Parses `--steps 1000,2000,3000`.
pub fn parse_steps(arg: &str) -> Result<Vec<u64>> {
    arg.split(',')
        .map(|s| {
            let s = s.trim();
            s.parse::<u64>().map_err(|_| {
                invalid(format!(
                    "--steps: `{s}` is not a whole number (expected a comma-separated list like 1000,2000,3000)"
                ))
            })
        })
        .collect()
}

/// Pairs inputs with `--steps` values, in command-line order.
pub fn explicit_steps<P: AsRef<Path>>(paths: &[P], steps: &[u64]) -> Result<Vec<StepInfo>> {
    if paths.len() != steps.len() {
        return Err(invalid(format!(
            "--steps has {} values for {} checkpoints",
            steps.len(),
            paths.len()
        )));
    }
    Ok(paths
        .iter()
        .zip(steps)
        .enumerate()
        .map(|(index, (p, &step))| StepInfo {
            index,
            path: p.as_ref().to_path_buf(),
            step,
            source: StepSource::Explicit,
        })
        .collect())
}

/// Sorts inputs by step (ascending); two inputs with the same step are an error.
pub fn order_by_step(mut inputs: Vec<StepInfo>) -> Result<Vec<StepInfo>> {
    inputs.sort_by_key(|i| (i.step, i.index));
    if let Some(w) = inputs.windows(2).find(|w| w[0].step == w[1].step) {
        return Err(invalid(format!(
            "{} and {} both have step {}{}",
            w[0].path.display(),
            w[1].path.display(),
            w[0].step,
            if w[0].source == StepSource::Explicit {
                " in --steps"
            } else {
                " (pass --steps)"
            }
        )));
    }
    Ok(inputs)
}

/// The whole step resolution for `polymerge ema`: explicit `--steps` if
/// given (metadata and names are then ignored), else [`discover_step`] on
/// each input; sorted by step, duplicates rejected. `metadata(i)` gives the
/// `__metadata__` of input `i` (only called without `--steps`).
pub fn resolve_steps<P, M, F>(
    paths: &[P],
    explicit: Option<&[u64]>,
    mut metadata: F,
) -> Result<Vec<StepInfo>>
where
    P: AsRef<Path>,
    M: Metadata,
    F: FnMut(usize) -> Result<M>,
{
    if paths.is_empty() {
        return Err(invalid("no checkpoints to average"));
    }
    let inputs = match explicit {
        Some(steps) => explicit_steps(paths, steps)?,
        None => paths
            .iter()
            .enumerate()
            .map(|(i, p)| discover_step(i, p.as_ref(), &metadata(i)?))
            .collect::<Result<Vec<_>>>()?,
    };
    order_by_step(inputs)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decay(beta: f64) -> EmaProfile {
        EmaProfile::Decay {
            decay: Decay::from_beta(beta).unwrap(),
            warmup: None,
        }
    }

    fn with_warmup(beta: f64, w: Warmup) -> EmaProfile {
        EmaProfile::Decay {
            decay: Decay::from_beta(beta).unwrap(),
            warmup: Some(w),
        }
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()) || (a - b).abs() < 1e-300
    }

    fn assert_close(got: &[f64], want: &[f64], rel: f64) {
        assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                close(*g, *w, rel),
                "weight {i}: got {g:e}, want {w:e} (all: {got:?} vs {want:?})"
            );
        }
    }

    /// Runs `e ← d e + (1 − d) θ` over every training step `s` in
    /// `(t_0, t_n]`, with `θ` = the checkpoint whose interval `(t_{k−1}, t_k]`
    /// holds `s`, on one-hot vectors: the result is the weight vector.
    fn simulate(steps: &[u64], decay_of_update: impl Fn(u64) -> f64) -> Vec<f64> {
        let n = steps.len();
        let mut e = vec![0.0; n];
        e[0] = 1.0; // the first checkpoint initialises the average
        let mut k = 0;
        for s in steps[0] + 1..=steps[n - 1] {
            while steps[k] < s {
                k += 1;
            }
            let d = decay_of_update(s - 1);
            for (i, x) in e.iter_mut().enumerate() {
                *x = d * *x + (1.0 - d) * if i == k { 1.0 } else { 0.0 };
            }
        }
        e
    }

    // --- decay ------------------------------------------------------------

    #[test]
    fn two_checkpoints_ten_steps_apart_with_decay_0_9_weigh_0_9_pow_10_and_the_rest() {
        let w = weights(&decay(0.9), &[0, 10]).unwrap();
        // 0.9^10 = 0.3486784401
        assert_close(&w, &[0.348_678_440_1, 0.651_321_559_9], 1e-14);
    }

    #[test]
    fn three_checkpoints_with_uneven_gaps_follow_the_product_formula() {
        // β = 0.5, steps 0, 1, 3: Δ = 1, 2.
        // w_2 = 1 − 0.5² = 0.75, w_1 = (1 − 0.5)·0.25 = 0.125, w_0 = 0.5·0.25 = 0.125.
        let w = weights(&decay(0.5), &[0, 1, 3]).unwrap();
        assert_close(&w, &[0.125, 0.125, 0.75], 1e-15);
    }

    #[test]
    fn a_single_checkpoint_gets_all_the_weight_under_every_profile() {
        for p in [
            decay(0.99),
            with_warmup(0.99, Warmup::Rational),
            EmaProfile::Power { gamma: 7.0 },
            EmaProfile::Window { k: 1 },
        ] {
            assert_eq!(weights(&p, &[1234]).unwrap(), vec![1.0], "{p}");
        }
        assert_eq!(
            weights(&EmaProfile::Power { gamma: 1.0 }, &[0]).unwrap(),
            vec![1.0]
        );
    }

    #[test]
    fn decay_weights_equal_a_step_by_step_simulation_of_the_recurrence() {
        let steps = [3, 4, 9, 10, 25, 26, 27, 40];
        for beta in [0.5, 0.9, 0.97] {
            let want = simulate(&steps, |_| beta);
            let got = weights(&decay(beta), &steps).unwrap();
            assert_close(&got, &want, 1e-12);
        }
    }

    #[test]
    fn consecutive_steps_reproduce_torch_averaged_model_weights() {
        // AveragedModel(get_ema_multi_avg_fn(β)): first update copies, then
        // e = β e + (1 − β) θ_k, so θ_0 gets β^{n−1}, θ_k gets (1 − β) β^{n−1−k}.
        let beta: f64 = 0.8;
        let w = weights(&decay(beta), &[100, 101, 102, 103]).unwrap();
        let want = [beta.powi(3), 0.2 * beta.powi(2), 0.2 * beta, 0.2];
        assert_close(&w, &want, 1e-14);
    }

    #[test]
    fn hundreds_of_sparse_checkpoints_at_decay_0_9999_do_not_underflow_to_nan() {
        // 400 checkpoints, gaps up to 1e6 steps: Σ Δ ln β ≈ −2e4, far below f64's range.
        let mut steps = vec![0u64];
        let mut x: u64 = 12345;
        for _ in 0..399 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let gap = 1 + (x >> 33) % 1_000_000;
            steps.push(steps.last().unwrap() + gap);
        }
        let d = Decay::from_beta(0.9999).unwrap();
        let w = weights(
            &EmaProfile::Decay {
                decay: d,
                warmup: None,
            },
            &steps,
        )
        .unwrap();
        assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
        let last_gap = (steps[399] - steps[398]) as f64;
        assert!(close(w[399], -(last_gap * d.ln_beta()).exp_m1(), 1e-15));
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(w[0], 0.0, "the initialisation is ~e^-20000 away");
    }

    #[test]
    fn decay_very_close_to_one_keeps_its_precision_in_log_space() {
        // τ = 1e-9 over 10 steps: w_1 = 1 − (1 − 1e-9)^10 ≈ 1e-8 − 4.5e-17.
        let d = Decay::from_tau(1e-9).unwrap();
        let w = weights(
            &EmaProfile::Decay {
                decay: d,
                warmup: None,
            },
            &[0, 10],
        )
        .unwrap();
        assert!(close(w[1], 1e-8 - 45e-18, 1e-12), "{}", w[1]);
    }

    #[test]
    fn half_life_of_10_steps_is_decay_0_5_pow_0_1() {
        let b = half_life_to_decay(10.0).unwrap();
        assert!(close(b, 0.5f64.powf(0.1), 1e-15));
        assert!(close(b, 0.933_032_991_536_807_4, 1e-15));
        assert!(close(decay_to_half_life(b).unwrap(), 10.0, 1e-12));
        // After one half-life the old state has exactly half of the weight.
        let w = weights(
            &EmaProfile::Decay {
                decay: Decay::from_half_life(10.0).unwrap(),
                warmup: None,
            },
            &[0, 10],
        )
        .unwrap();
        assert_close(&w, &[0.5, 0.5], 1e-14);
    }

    #[test]
    fn tau_is_one_minus_decay() {
        let d = Decay::from_tau(0.005).unwrap();
        assert_eq!(d.tau(), 0.005);
        assert!(close(d.beta(), 0.995, 1e-15));
        let w1 = weights(
            &EmaProfile::Decay {
                decay: d,
                warmup: None,
            },
            &[0, 7, 9],
        )
        .unwrap();
        let w2 = weights(&decay(0.995), &[0, 7, 9]).unwrap();
        assert_close(&w1, &w2, 1e-12);
    }

    #[test]
    fn decay_of_one_or_zero_and_out_of_range_tau_are_rejected_with_a_reason() {
        let e = Decay::from_beta(1.0).unwrap_err().to_string();
        assert!(
            e.contains("never moves the average off the first checkpoint"),
            "{e}"
        );
        let e = Decay::from_beta(0.0).unwrap_err().to_string();
        assert!(e.contains("keeps only the last checkpoint"), "{e}");
        assert!(Decay::from_beta(f64::NAN).is_err());
        assert!(Decay::from_beta(-0.5).is_err());
        assert!(Decay::from_tau(0.0).is_err());
        assert!(Decay::from_tau(1.0).is_err());
        assert!(Decay::from_half_life(0.0).is_err());
        assert!(Decay::from_half_life(-3.0).is_err());
        assert!(Decay::from_half_life(f64::INFINITY).is_err());
    }

    // --- warm-up ------------------------------------------------------------

    #[test]
    fn rational_warmup_over_two_steps_from_zero_is_a_product_of_0_1_and_2_over_11() {
        // Updates t = 0, 1: decays 1/10 and 2/11; the first checkpoint keeps 0.2/11.
        let w = weights(&with_warmup(0.99, Warmup::Rational), &[0, 2]).unwrap();
        assert_close(&w, &[0.2 / 11.0, 10.8 / 11.0], 1e-15);
    }

    #[test]
    fn rational_warmup_weights_equal_a_step_by_step_simulation_of_min_beta_1_plus_t_over_10_plus_t()
    {
        let steps = [0, 1, 5, 17, 18, 60, 150, 151, 400];
        for beta in [0.9f64, 0.95, 0.999] {
            let want = simulate(&steps, |t| beta.min((1.0 + t as f64) / (10.0 + t as f64)));
            let got = weights(&with_warmup(beta, Warmup::Rational), &steps).unwrap();
            assert_close(&got, &want, 1e-12);
        }
        // Starting later than step 0.
        let steps = [40, 45, 300];
        let want = simulate(&steps, |t| {
            0.98f64.min((1.0 + t as f64) / (10.0 + t as f64))
        });
        let got = weights(&with_warmup(0.98, Warmup::Rational), &steps).unwrap();
        assert_close(&got, &want, 1e-12);
    }

    #[test]
    fn inv_gamma_warmup_weights_equal_a_step_by_step_simulation_of_the_diffusers_formula() {
        let steps = [0, 1, 2, 10, 64, 65, 300, 1000];
        for (beta, g, p) in [
            (0.999f64, 1.0f64, 2.0f64 / 3.0),
            (0.99, 1.0, 0.75),
            (0.9, 5.0, 1.0),
        ] {
            let w = Warmup::InvGamma {
                inv_gamma: g,
                power: p,
            };
            let want = simulate(&steps, |t| beta.min(1.0 - (1.0 + t as f64 / g).powf(-p)));
            let got = weights(&with_warmup(beta, w), &steps).unwrap();
            assert_close(&got, &want, 1e-12);
        }
    }

    #[test]
    fn inv_gamma_warmup_with_a_zero_first_decay_gives_no_weight_to_a_checkpoint_at_step_0() {
        // d_0 = 1 − 1^−p = 0: the update into step 1 copies θ.
        let w = weights(&with_warmup(0.99, Warmup::INV_GAMMA_DEFAULT), &[0, 1, 2]).unwrap();
        assert_eq!(w[0], 0.0);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn warmup_saturates_at_the_first_update_whose_schedule_reaches_beta() {
        // (1+t)/(10+t) ≥ 0.93 ⇔ t ≥ 8.3/0.07 = 118.6, so from t = 119 on.
        let d = Decay::from_beta(0.93).unwrap();
        assert_eq!(Warmup::Rational.saturation_step(d), 119);
        assert_eq!(Warmup::Rational.decay_at(d, 118), 119.0 / 128.0);
        assert_eq!(Warmup::Rational.decay_at(d, 119), 0.93);
        // 1 − (1+t)^−1 ≥ 0.985 ⇔ 1 + t ≥ 66.7, so from t = 66 on.
        let w = Warmup::InvGamma {
            inv_gamma: 1.0,
            power: 1.0,
        };
        let d = Decay::from_beta(0.985).unwrap();
        assert_eq!(w.saturation_step(d), 66);
        assert_eq!(w.decay_at(d, 65), 1.0 - 1.0 / 66.0);
        assert_eq!(w.decay_at(d, 66), 0.985);
    }

    #[test]
    fn warmup_names_parse_and_bad_parameters_are_rejected() {
        assert_eq!(Warmup::parse("tf", None, None).unwrap(), Warmup::Rational);
        assert_eq!(
            Warmup::parse("rational", None, None).unwrap(),
            Warmup::Rational
        );
        assert_eq!(
            Warmup::parse("inv-gamma", None, None).unwrap(),
            Warmup::INV_GAMMA_DEFAULT
        );
        assert_eq!(
            Warmup::parse("diffusers", Some(2.0), Some(0.75)).unwrap(),
            Warmup::InvGamma {
                inv_gamma: 2.0,
                power: 0.75
            }
        );
        assert!(Warmup::parse("timmy", None, None).is_err());
        assert!(Warmup::parse("rational", Some(1.0), None).is_err());
        assert!(Warmup::parse("inv-gamma", Some(0.0), None).is_err());
        assert!(Warmup::parse("inv-gamma", None, Some(-1.0)).is_err());
    }

    // --- power --------------------------------------------------------------

    #[test]
    fn power_profile_with_gamma_1_on_steps_2_and_4_gives_a_quarter_and_three_quarters() {
        // ∫_0^2 τ dτ = 2, ∫_2^4 τ dτ = 6, total 8.
        let w = weights(&EmaProfile::Power { gamma: 1.0 }, &[2, 4]).unwrap();
        assert_close(&w, &[0.25, 0.75], 1e-15);
        // Steps 1, 2, 4: ∫ = 1/2, 3/2, 6 of 8.
        let w = weights(&EmaProfile::Power { gamma: 1.0 }, &[1, 2, 4]).unwrap();
        assert_close(&w, &[1.0 / 16.0, 3.0 / 16.0, 12.0 / 16.0], 1e-15);
    }

    #[test]
    fn power_profile_with_gamma_2_on_steps_1_2_3_gives_1_7_19_over_27() {
        // ∫ τ² = τ³/3: 1/3, 7/3, 19/3 of 9.
        let w = weights(&EmaProfile::Power { gamma: 2.0 }, &[1, 2, 3]).unwrap();
        assert_close(&w, &[1.0 / 27.0, 7.0 / 27.0, 19.0 / 27.0], 1e-15);
    }

    #[test]
    fn power_profile_with_gamma_0_is_the_running_mean_over_the_steps_each_checkpoint_covers() {
        let w = weights(&EmaProfile::Power { gamma: 0.0 }, &[0, 10, 40]).unwrap();
        assert_close(&w, &[0.0, 0.25, 0.75], 1e-15);
    }

    #[test]
    fn power_weights_equal_edm2_per_step_recurrence_with_theta_held() {
        // EDM2 tracks the profile with β_s = (1 − 1/s)^{γ+1} at every step s.
        let steps = [3, 5, 6, 20, 21, 50];
        for gamma in [0.5, 6.94, 16.97] {
            let want = simulate(&steps, |t| {
                let s = (t + 1) as f64;
                (1.0 - 1.0 / s).powf(gamma + 1.0)
            });
            let got = weights(&EmaProfile::Power { gamma }, &steps).unwrap();
            assert_close(&got, &want, 1e-12);
        }
    }

    #[test]
    fn sigma_rel_0_05_and_0_10_are_edm2s_gamma_16_97_and_6_94() {
        let g05 = sigma_rel_to_gamma(0.05).unwrap();
        let g10 = sigma_rel_to_gamma(0.10).unwrap();
        assert!((g05 - 16.97).abs() < 0.005, "{g05}");
        assert!((g10 - 6.94).abs() < 0.005, "{g10}");
        // numpy.roots([1, 7, 16 − σ⁻², 12 − σ⁻²]).real.max():
        assert!(close(g05, 16.972_198_602_303_447, 1e-12), "{g05}");
        assert!(close(g10, 6.937_203_937_601_809, 1e-12), "{g10}");
    }

    #[test]
    fn sigma_rel_and_gamma_round_trip() {
        for g in [0.0, 1e-6, 0.1, 1.0, 3.0, 6.94, 16.97, 100.0, 1e4, 1e7] {
            let s = gamma_to_sigma_rel(g);
            let back = sigma_rel_to_gamma(s).unwrap();
            assert!(
                (back - g).abs() <= 1e-9 * g.max(1e-3),
                "{g} -> {s} -> {back}"
            );
        }
        for s in [1e-6, 0.01, 0.05, 0.1, 0.2, 0.28] {
            let back = gamma_to_sigma_rel(sigma_rel_to_gamma(s).unwrap());
            assert!(close(back, s, 1e-12), "{s} -> {back}");
        }
        assert_eq!(sigma_rel_to_gamma(SIGMA_REL_MAX).unwrap(), 0.0);
        assert!(close(gamma_to_sigma_rel(0.0), 1.0 / 12f64.sqrt(), 1e-15));
    }

    #[test]
    fn sigma_rel_outside_0_to_1_over_sqrt_12_and_negative_gamma_are_rejected() {
        assert!(sigma_rel_to_gamma(0.0).is_err());
        assert!(sigma_rel_to_gamma(0.3).is_err());
        assert!(sigma_rel_to_gamma(f64::NAN).is_err());
        assert!(EmaProfile::power(-0.5).is_err());
        assert!(weights(&EmaProfile::Power { gamma: f64::NAN }, &[1, 2]).is_err());
    }

    // --- window -------------------------------------------------------------

    #[test]
    fn window_of_2_puts_half_on_each_of_the_last_two_checkpoints() {
        let w = weights(&EmaProfile::Window { k: 2 }, &[100, 200, 300, 400, 500]).unwrap();
        assert_eq!(w, vec![0.0, 0.0, 0.0, 0.5, 0.5]);
        let w = weights(&EmaProfile::Window { k: 3 }, &[1, 2, 3]).unwrap();
        assert_eq!(w, vec![1.0 / 3.0; 3]);
    }

    #[test]
    fn window_larger_than_the_inputs_or_zero_is_an_error() {
        let e = weights(&EmaProfile::Window { k: 4 }, &[1, 2, 3]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "window of 4 checkpoints needs at least 4 inputs, got 3"
        );
        assert!(EmaProfile::window(0).is_err());
    }

    // --- general ------------------------------------------------------------

    #[test]
    fn steps_that_are_not_strictly_increasing_are_an_error() {
        let e = weights(&decay(0.9), &[10, 10]).unwrap_err().to_string();
        assert_eq!(
            e,
            "steps must be strictly increasing, but step 10 follows step 10"
        );
        assert!(weights(&decay(0.9), &[]).is_err());
    }

    #[test]
    fn effective_half_life_in_checkpoints_is_half_life_over_spacing() {
        let steps: Vec<u64> = (0..50).map(|i| 10 * i).collect();
        for (h, want) in [(10.0, 1.0), (20.0, 2.0), (40.0, 4.0)] {
            let p = EmaProfile::Decay {
                decay: Decay::from_half_life(h).unwrap(),
                warmup: None,
            };
            let w = weights(&p, &steps).unwrap();
            let m = effective_half_life_checkpoints(&w);
            assert!((m - want).abs() < 1e-9, "h = {h}: {m}");
        }
        let w = weights(&EmaProfile::Window { k: 6 }, &steps).unwrap();
        assert!((effective_half_life_checkpoints(&w) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn warnings_flag_a_half_life_shorter_than_two_checkpoints_and_a_dominant_first_checkpoint() {
        let steps: Vec<u64> = (0..10).map(|i| 100 * i).collect();
        let p = EmaProfile::Decay {
            decay: Decay::from_half_life(50.0).unwrap(),
            warmup: None,
        };
        let w = weights(&p, &steps).unwrap();
        let msgs = warnings(&p, &steps, &w);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(
            msgs[0].starts_with("ema: half of the weight sits on the newest 0.67 checkpoints (half-life 50.0000 steps, checkpoints every 100.0 steps"),
            "{}",
            msgs[0]
        );

        let p = EmaProfile::Decay {
            decay: Decay::from_half_life(5000.0).unwrap(),
            warmup: None,
        };
        let w = weights(&p, &steps).unwrap();
        let msgs = warnings(&p, &steps, &w);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(
            msgs[0].contains("the first checkpoint (step 0) keeps 88.3% of the weight"),
            "{}",
            msgs[0]
        );

        let p = EmaProfile::Decay {
            decay: Decay::from_half_life(300.0).unwrap(),
            warmup: None,
        };
        let w = weights(&p, &steps).unwrap();
        assert!(warnings(&p, &steps, &w).is_empty());
        let p = EmaProfile::Window { k: 1 };
        let w = weights(&p, &steps).unwrap();
        assert!(warnings(&p, &steps, &w).is_empty());
    }

    #[test]
    fn profile_options_take_exactly_one_profile() {
        let o = ProfileOptions {
            half_life: Some(10.0),
            ..Default::default()
        };
        let EmaProfile::Decay {
            decay,
            warmup: None,
        } = o.to_profile().unwrap()
        else {
            panic!()
        };
        assert!(close(decay.beta(), 0.5f64.powf(0.1), 1e-15));
        let o = ProfileOptions {
            sigma_rel: Some(0.1),
            ..Default::default()
        };
        let EmaProfile::Power { gamma } = o.to_profile().unwrap() else {
            panic!()
        };
        assert!((gamma - 6.937).abs() < 1e-3);
        let o = ProfileOptions {
            window: Some(3),
            ..Default::default()
        };
        assert_eq!(o.to_profile().unwrap(), EmaProfile::Window { k: 3 });
        let o = ProfileOptions {
            tau: Some(0.01),
            warmup: Some(Warmup::Rational),
            ..Default::default()
        };
        assert!(matches!(
            o.to_profile().unwrap(),
            EmaProfile::Decay {
                warmup: Some(_),
                ..
            }
        ));

        let e = ProfileOptions::default()
            .to_profile()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("choose an ema profile"), "{e}");
        let o = ProfileOptions {
            decay: Some(0.9),
            window: Some(2),
            ..Default::default()
        };
        assert_eq!(
            o.to_profile().unwrap_err().to_string(),
            "--decay and --window cannot be combined: give exactly one ema profile"
        );
        let o = ProfileOptions {
            power: Some(3.0),
            warmup: Some(Warmup::Rational),
            ..Default::default()
        };
        assert!(
            o.to_profile()
                .unwrap_err()
                .to_string()
                .starts_with("--warmup applies only")
        );
    }

    proptest! {
        #[test]
        fn decay_weights_are_non_negative_and_sum_to_one(
            gaps in prop::collection::vec(1u64..2_000_000, 0..300),
            start in 0u64..1000,
            tau_exp in -9.0f64..-0.01,
        ) {
            let mut steps = vec![start];
            for g in gaps { steps.push(steps.last().unwrap() + g); }
            let d = Decay::from_tau(10f64.powf(tau_exp)).unwrap();
            let w = weights(&EmaProfile::Decay { decay: d, warmup: None }, &steps).unwrap();
            prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
            prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }

        #[test]
        fn power_and_warmup_weights_are_non_negative_and_sum_to_one(
            gaps in prop::collection::vec(1u64..5_000, 0..60),
            start in 0u64..100,
            gamma in 0.0f64..50.0,
            beta in 0.5f64..0.9999,
        ) {
            let mut steps = vec![start];
            for g in gaps { steps.push(steps.last().unwrap() + g); }
            for p in [
                EmaProfile::Power { gamma },
                with_warmup(beta, Warmup::Rational),
                with_warmup(beta, Warmup::INV_GAMMA_DEFAULT),
            ] {
                let w = weights(&p, &steps).unwrap();
                prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0), "{p}: {w:?}");
                prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p}");
            }
        }

        #[test]
        fn decay_weights_match_the_simulation_for_small_step_counts(
            gaps in prop::collection::vec(1u64..30, 0..12),
            start in 0u64..20,
            beta in 0.3f64..0.99,
        ) {
            let mut steps = vec![start];
            for g in gaps { steps.push(steps.last().unwrap() + g); }
            let want = simulate(&steps, |_| beta);
            let got = weights(&decay(beta), &steps).unwrap();
            for (g, w) in got.iter().zip(&want) {
                prop_assert!(close(*g, *w, 1e-11), "{got:?} vs {want:?}");
            }
            let want = simulate(&steps, |t| beta.min((1.0 + t as f64) / (10.0 + t as f64)));
            let got = weights(&with_warmup(beta, Warmup::Rational), &steps).unwrap();
            for (g, w) in got.iter().zip(&want) {
                prop_assert!(close(*g, *w, 1e-11), "{got:?} vs {want:?}");
            }
        }
    }

    // --- step discovery -----------------------------------------------------

    fn name(p: &str) -> Option<u64> {
        step_from_name(Path::new(p)).unwrap()
    }

    #[test]
    fn steps_are_read_from_every_common_file_naming_pattern() {
        assert_eq!(name("runs/a/step-1000.safetensors"), Some(1000));
        assert_eq!(name("checkpoint-1000.safetensors"), Some(1000));
        assert_eq!(name("global_step1000.safetensors"), Some(1000));
        assert_eq!(name("epoch_012.safetensors"), Some(12));
        assert_eq!(name("step_500.safetensors"), Some(500));
        assert_eq!(name("model-step=1000.safetensors"), Some(1000));
        assert_eq!(name("Model_STEP_77.safetensors"), Some(77));
        assert_eq!(name("ckpt-3000.safetensors"), Some(3000));
        assert_eq!(name("iter_250.safetensors"), Some(250));
        assert_eq!(name("ema_steps_64.safetensors"), Some(64));
        assert_eq!(name("001000.safetensors"), Some(1000));
        assert_eq!(name("model_v2.safetensors"), None);
        assert_eq!(name("model.safetensors"), None);
        assert_eq!(name("modèle_é-step-42.safetensors"), Some(42));
        assert_eq!(name("étape/模型.safetensors"), None);
    }

    #[test]
    fn lightning_style_epoch_and_step_names_take_the_step() {
        assert_eq!(name("epoch=3-step=1000.safetensors"), Some(1000));
        assert_eq!(name("run7-step-400.safetensors"), Some(400));
    }

    #[test]
    fn a_step_in_a_parent_directory_counts_when_the_file_name_has_none() {
        assert_eq!(name("out/checkpoint-1000/model.safetensors"), Some(1000));
        assert_eq!(
            name("out/checkpoint-1000/model-00001-of-00002.safetensors"),
            Some(1000)
        );
        assert_eq!(
            name("out/checkpoint-1000/unet/diffusion_pytorch_model.safetensors"),
            Some(1000)
        );
        assert_eq!(name("step-9/a/b/c/model.safetensors"), None, "too far up");
        assert_eq!(
            name("out/checkpoint-1000/step-5.safetensors"),
            Some(5),
            "nearest wins"
        );
    }

    #[test]
    fn words_that_merely_contain_a_keyword_or_numbers_with_units_are_not_steps() {
        assert_eq!(name("timestep1000.safetensors"), None);
        assert_eq!(name("step10k.safetensors"), None);
        assert_eq!(name("epoch_1.5.safetensors"), None);
        assert_eq!(name("step-size-3.safetensors"), None);
    }

    #[test]
    fn a_name_with_two_different_step_numbers_is_ambiguous() {
        let e = step_from_name(Path::new("x/step-1000-step-2000.safetensors")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x/step-1000-step-2000.safetensors: ambiguous step in the name `step-1000-step-2000.safetensors`: could be 1000 or 2000 (pass --steps)"
        );
        assert!(step_from_name(Path::new("ckpt3_step1000.safetensors")).is_err());
        assert!(step_from_name(Path::new("epoch_1_epoch_2.safetensors")).is_err());
        // The same number twice is fine.
        assert_eq!(name("checkpoint-1000/step-1000.safetensors"), Some(1000));
        assert_eq!(name("global_step1000.safetensors"), Some(1000));
    }

    #[test]
    fn a_step_metadata_key_works_in_a_hashmap_or_a_btreemap() {
        let p = Path::new("model_a.safetensors");
        let h: HashMap<String, String> = [("step".to_string(), "1500".to_string())].into();
        let info = discover_step(0, p, &h).unwrap();
        assert_eq!((info.step, info.source), (1500, StepSource::Metadata));
        let b: BTreeMap<String, String> =
            [("global_step".to_string(), " 20.0 ".to_string())].into();
        assert_eq!(step_from_metadata(p, &b).unwrap(), Some(20));
        assert_eq!(step_from_metadata(p, &Some(h)).unwrap(), Some(1500));
        assert_eq!(
            step_from_metadata(p, &None::<BTreeMap<String, String>>).unwrap(),
            None
        );
        let bad: BTreeMap<String, String> = [("step".to_string(), "soon".to_string())].into();
        assert_eq!(
            step_from_metadata(p, &bad).unwrap_err().to_string(),
            "model_a.safetensors: metadata `step` = `soon` is not a whole number of steps"
        );
    }

    #[test]
    fn name_and_metadata_must_agree_when_both_are_present() {
        let m: BTreeMap<String, String> = [("step".to_string(), "1000".to_string())].into();
        let ok = discover_step(3, Path::new("step-1000.safetensors"), &m).unwrap();
        assert_eq!(
            (ok.index, ok.step, ok.source),
            (3, 1000, StepSource::NameAndMetadata)
        );
        let e = discover_step(0, Path::new("step-999.safetensors"), &m).unwrap_err();
        assert_eq!(
            e.to_string(),
            "step-999.safetensors: the name says step 999 but metadata `step` says 1000 (pass --steps)"
        );
    }

    #[test]
    fn a_missing_step_is_an_error_that_suggests_steps() {
        let e = discover_step(0, Path::new("a/model.safetensors"), &()).unwrap_err();
        assert!(
            e.to_string().starts_with("a/model.safetensors: no step"),
            "{e}"
        );
        assert!(e.to_string().contains("--steps"));
    }

    #[test]
    fn inputs_are_ordered_by_step_and_duplicates_are_an_error() {
        let paths = [
            "c/step-300.safetensors",
            "a/step-100.safetensors",
            "b/step-20.safetensors",
        ];
        let got = resolve_steps(&paths, None, |_| Ok(())).unwrap();
        let order: Vec<(usize, u64)> = got.iter().map(|i| (i.index, i.step)).collect();
        assert_eq!(order, vec![(2, 20), (1, 100), (0, 300)]);

        let paths = ["x/step-100.safetensors", "y/checkpoint-100.safetensors"];
        let e = resolve_steps(&paths, None, |_| Ok(())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x/step-100.safetensors and y/checkpoint-100.safetensors both have step 100 (pass --steps)"
        );
    }

    #[test]
    fn explicit_steps_override_names_and_must_match_the_input_count() {
        let paths = ["step-1.safetensors", "model.safetensors"];
        let got = resolve_steps(&paths, Some(&[500, 200]), |_| -> Result<()> {
            panic!("metadata is not read with --steps")
        })
        .unwrap();
        assert_eq!(got[0].path, Path::new("model.safetensors"));
        assert_eq!((got[0].step, got[0].source), (200, StepSource::Explicit));
        let e = resolve_steps(&paths, Some(&[1]), |_| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "--steps has 1 values for 2 checkpoints");
        let e = resolve_steps(&paths, Some(&[7, 7]), |_| Ok(())).unwrap_err();
        assert!(
            e.to_string().ends_with("both have step 7 in --steps"),
            "{e}"
        );
    }

    #[test]
    fn steps_argument_parses_a_comma_separated_list() {
        assert_eq!(
            parse_steps("1000, 2000,3000").unwrap(),
            vec![1000, 2000, 3000]
        );
        assert!(parse_steps("1000,,2000").is_err());
        assert!(parse_steps("1e3").is_err());
    }

    // --- fixtures/ema/reference.json (fixtures/generate_ema_reference.py) ---

    fn reference() -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/ema/reference.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    fn profile_from_json(p: &serde_json::Value) -> EmaProfile {
        let f = |k: &str| p.get(k).and_then(serde_json::Value::as_f64);
        match p["kind"].as_str().unwrap() {
            "decay" => {
                let decay = if let Some(b) = f("beta") {
                    Decay::from_beta(b)
                } else if let Some(t) = f("tau") {
                    Decay::from_tau(t)
                } else {
                    Decay::from_half_life(f("half_life").unwrap())
                }
                .unwrap();
                let warmup = p.get("warmup").map(|w| match w["kind"].as_str().unwrap() {
                    "rational" => Warmup::Rational,
                    "inv_gamma" => Warmup::InvGamma {
                        inv_gamma: w["inv_gamma"].as_f64().unwrap(),
                        power: w["power"].as_f64().unwrap(),
                    },
                    other => panic!("unknown warm-up {other}"),
                });
                EmaProfile::Decay { decay, warmup }
            }
            "power" => match f("gamma") {
                Some(g) => EmaProfile::power(g).unwrap(),
                None => EmaProfile::power_from_sigma_rel(f("sigma_rel").unwrap()).unwrap(),
            },
            "window" => EmaProfile::window(p["k"].as_u64().unwrap() as usize).unwrap(),
            other => panic!("unknown profile {other}"),
        }
    }

    fn u64s(v: &serde_json::Value) -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    }

    fn f64s(v: &serde_json::Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    #[test]
    fn weights_match_the_numpy_mpmath_and_torch_reference_to_1e_12() {
        let r = reference();
        let mut cases: Vec<&serde_json::Value> = r["cases"].as_array().unwrap().iter().collect();
        cases.extend(r["trajectory"]["outputs"].as_array().unwrap());
        assert!(cases.len() >= 20);
        for c in cases {
            let name = c.get("name").or(c.get("file")).unwrap();
            let profile = profile_from_json(&c["profile"]);
            let got = weights(&profile, &u64s(&c["steps"])).unwrap();
            let want = f64s(&c["weights"]);
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(close(*g, *w, 1e-12), "{name}: weight {i}: {g:e} vs {w:e}");
            }
        }
    }

    #[test]
    fn sigma_rel_to_gamma_matches_the_reference_roots_to_1e_12() {
        let r = reference();
        for pair in r["sigma_rel_gamma"].as_array().unwrap() {
            let s = pair["sigma_rel"].as_f64().unwrap();
            let g = pair["gamma"].as_f64().unwrap();
            let got = sigma_rel_to_gamma(s).unwrap();
            assert!(close(got, g, 1e-12), "sigma_rel {s}: {got} vs {g}");
        }
    }

    #[test]
    fn trajectory_file_names_give_the_reference_steps() {
        let r = reference();
        let inputs = r["trajectory"]["inputs"].as_array().unwrap();
        let mut paths: Vec<&str> = inputs.iter().map(|i| i["file"].as_str().unwrap()).collect();
        paths.reverse(); // any order in, step order out
        let got = resolve_steps(&paths, None, |_| Ok(())).unwrap();
        let want: Vec<u64> = inputs.iter().map(|i| i["step"].as_u64().unwrap()).collect();
        assert_eq!(got.iter().map(|i| i.step).collect::<Vec<_>>(), want);
    }

    fn read_f64_tensors(path: &Path) -> BTreeMap<String, Vec<f64>> {
        use safetensors::{Dtype, SafeTensors};
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(name, t)| {
                let v = match t.dtype() {
                    Dtype::F32 => t
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                    Dtype::F64 => t
                        .data()
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    d => panic!("{name}: unexpected dtype {d:?}"),
                };
                (name, v)
            })
            .collect()
    }

    /// The expected tensors are the EMA computed step by step in numpy; this
    /// module's weights applied to the trajectory must give them. Needs the
    /// trajectory files (`fixtures/mlp/traj`, or `POLYMERGE_TRAJ_DIR`).
    #[test]
    fn weighted_sums_of_the_trajectory_reproduce_the_expected_ema_tensors() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let traj = std::env::var_os("POLYMERGE_TRAJ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("fixtures/mlp/traj"));
        if !traj.is_dir() {
            eprintln!("skipped: no trajectory at {}", traj.display());
            return;
        }
        let r = reference();
        for out in r["trajectory"]["outputs"].as_array().unwrap() {
            let inputs: Vec<PathBuf> = out["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| traj.join(Path::new(f.as_str().unwrap()).file_name().unwrap()))
                .collect();
            let ckpts: Vec<_> = inputs.iter().map(|p| read_f64_tensors(p)).collect();
            // Steps from the files' metadata, as the CLI would find them.
            let steps: Vec<u64> = if out["cli"].as_str().unwrap().contains("--steps") {
                u64s(&out["steps"])
            } else {
                inputs
                    .iter()
                    .map(|p| {
                        let bytes = std::fs::read(p).unwrap();
                        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
                        discover_step(0, p, meta.metadata()).unwrap().step
                    })
                    .collect()
            };
            assert_eq!(steps, u64s(&out["steps"]));
            let w = weights(&profile_from_json(&out["profile"]), &steps).unwrap();
            let file = root.join(out["file"].as_str().unwrap());
            for (name, want) in read_f64_tensors(&file) {
                for (i, want) in want.iter().enumerate() {
                    let got: f64 = ckpts.iter().zip(&w).map(|(c, wk)| wk * c[&name][i]).sum();
                    assert!(
                        (got - want).abs() <= 1e-12 * want.abs().max(1e-3),
                        "{}: {name}[{i}]: {got} vs {want}",
                        file.display()
                    );
                }
            }
        }
    }
}
