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

mod decay;
mod profile;
mod steps;

pub use decay::{Decay, Warmup, decay_to_half_life, half_life_to_decay};
pub use profile::{
    EmaProfile, basin_pair, effective_half_life_checkpoints, gamma_to_sigma_rel,
    sigma_rel_to_gamma, warnings, weights,
};
pub use steps::{
    METADATA_STEP_KEYS, Metadata, NAME_PARENT_DEPTH, StepInfo, StepSource, discover_step,
    explicit_steps, order_by_step, parse_steps, resolve_steps, step_from_metadata, step_from_name,
};

/// The warning rule: warn when half the EMA weight sits on fewer than this
/// many of the newest checkpoints (see [`effective_half_life_checkpoints`]).
pub const HALF_LIFE_WARN_CHECKPOINTS: f64 = 2.0;

/// The warning rule: warn when the first checkpoint (the initialisation)
/// keeps more than this share of the weight under a decay profile.
pub const FIRST_WEIGHT_WARN: f64 = 0.5;

/// `σ_rel` of the power profile with `γ = 0` (uniform average over `[0, t]`):
/// `1/√12`. Larger `σ_rel` would need `γ < 0`.
pub const SIGMA_REL_MAX: f64 = 0.288_675_134_594_812_9;

/// A checkpoint whose weight, with all before it, is at most this fraction
/// of the total is left out of the basin check ([`basin_pair`]).
pub const NEGLIGIBLE_WEIGHT: f64 = 0.01;

#[cfg(test)]
mod tests;
