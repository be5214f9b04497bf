//! Decays (β, half-life, τ) and warm-up schedules of EMA profiles, with the
//! log-space products the weights are built from.

use std::fmt;

use crate::error::{EmaError, Result};

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
            return Err(EmaError::Decay(beta).into());
        }
        // Exact for β ≥ 0.5 (Sterbenz), within one rounding otherwise.
        Ok(Decay { tau: 1.0 - beta })
    }

    /// `--tau τ` (reinforcement-learning naming, soft target updates): `β = 1 − τ`.
    pub fn from_tau(tau: f64) -> Result<Decay> {
        if !tau.is_finite() || tau <= 0.0 || tau >= 1.0 {
            return Err(EmaError::Tau(tau).into());
        }
        Ok(Decay { tau })
    }

    /// `--half-life h` (in steps): `β = 0.5^{1/h}`, so the weight of the state
    /// `h` steps back is half that of the newest one.
    pub fn from_half_life(steps: f64) -> Result<Decay> {
        if !steps.is_finite() || steps <= 0.0 {
            return Err(EmaError::HalfLife(steps).into());
        }
        let tau = -(-std::f64::consts::LN_2 / steps).exp_m1();
        if tau <= 0.0 || tau >= 1.0 {
            return Err(EmaError::HalfLifeRange(steps).into());
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
                    return Err(EmaError::RationalParams.into());
                }
                Warmup::Rational
            }
            "inv-gamma" | "inv_gamma" | "diffusers" => Warmup::InvGamma {
                inv_gamma: inv_gamma.unwrap_or(1.0),
                power: power.unwrap_or(2.0 / 3.0),
            },
            other => {
                return Err(EmaError::UnknownWarmup(other.to_string()).into());
            }
        };
        w.validate()?;
        Ok(w)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if let Warmup::InvGamma { inv_gamma, power } = *self {
            if !inv_gamma.is_finite() || inv_gamma <= 0.0 {
                return Err(EmaError::InvGamma(inv_gamma).into());
            }
            if !power.is_finite() || power <= 0.0 {
                return Err(EmaError::WarmupPower(power).into());
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
    pub(super) fn ln_product(&self, decay: Decay, sat: u64, a: u64, b: u64) -> f64 {
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
pub(super) struct Neumaier {
    sum: f64,
    comp: f64,
}

impl Neumaier {
    pub(super) fn add(&mut self, x: f64) {
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

    pub(super) fn value(&self) -> f64 {
        if self.sum.is_finite() {
            self.sum + self.comp
        } else {
            self.sum
        }
    }
}

#[cfg(test)]
mod tests;
