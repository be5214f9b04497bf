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
//! The verdict is driven by the *large* weight tensors (at least 2-D and
//! [`Thresholds::min_numel`] elements, where the noise floor of the cosine
//! of unrelated weights, `1/√numel`, is ≤ 0.03): vectors such as norm scales
//! or biases share structure across independent runs (LayerNorm weights near
//! 1 have cos ≈ 1 even when permuted). It judges what the average would
//! average — the pair as stored, or after alignment — by what remains
//! unrelated and by the compounded shrink:
//!
//! - at least [`Thresholds::unrelated_tensors`] of the large tensors with
//!   cos < [`Thresholds::cos_unrelated`] → disconnected (after alignment
//!   too: weights weight matching could not relate break the average);
//! - compounded midpoint ratio ≥ [`Thresholds::connected_shrink`] and every
//!   large tensor's cos ≥ [`Thresholds::connected_min_cos`] → connected;
//! - otherwise uncertain: related weights can still have a loss barrier
//!   (aligned independent runs do), which only data can measure.
//!
//! When a permutation spec is available, weight matching of the naive pair
//! adds per-group evidence ([`GroupDiagnostics`]): the group's cosine before
//! and after alignment and the churn (fraction of units that move). A large
//! gain with high churn means B is a permuted copy in another basin
//! (disconnected); partial churn means a weak unit correspondence (at most
//! uncertain). Near-zero churn proves nothing by itself: an aligned copy of
//! an independent run keeps its (aligned) unit order and is still in another
//! basin. The thresholds are calibrated on labelled trained pairs
//! (`docs/basin.md`, `scripts/calibrate_basin.py`).
//!
//! The streaming pass ([`stream_sums`]) reads every input once, chunk by
//! chunk from the memory maps (optionally through a permutation), so it is
//! cheap enough to run before every `avg` / `ema`.

mod diagnose;
mod sums;
mod verdict;

use serde::Serialize;

pub use diagnose::{
    Diagnostics, GroupClass, GroupDiagnostics, Summary, TensorClass, TensorDiagnostics, blocks,
    diagnose, group_diagnostics, linear_chain,
};
pub use sums::{PairSums, PairSumsSink, TensorSums, float_bytes, stream_sums};
pub use verdict::{
    ALIGN_ADVICE, Assessment, Verdict, assess, check_pairs, judge_pairs, shrink_words,
};

/// Automatic weight matching (`polymerge basin`) runs up to this many float
/// parameters.
pub const AUTO_MATCH_MAX_PARAMS: usize = 50_000_000;

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
    /// ≳ 0.76 for equal norms); shown per tensor, not part of the verdict.
    pub cos_related: f64,
    /// Disconnected when at least this fraction of the large tensors (by
    /// count) looks unrelated — also after alignment: weights that weight
    /// matching could not relate are what breaks the average.
    pub unrelated_tensors: f64,
    /// Connected only when the compounded midpoint ratio
    /// ([`Summary::compounded_midpoint_ratio`]) is at least this: the
    /// average keeps most of the activations' scale over the whole depth.
    pub connected_shrink: f64,
    /// … and every large tensor has at least this cosine.
    pub connected_min_cos: f64,
    /// A group whose churn is at most this keeps B's unit order (no sign of
    /// a permutation; not by itself a sign of one basin).
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
            unrelated_tensors: 0.10,
            connected_shrink: 0.80,
            connected_min_cos: 0.50,
            churn_same: 0.10,
            churn_permuted: 0.50,
            gain_permuted: 0.05,
        }
    }
}

#[cfg(test)]
mod tests;
