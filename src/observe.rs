//! Progress and outcome events of every long phase, for whoever drives the
//! library: the CLI turns them into progress bars and report lines, a Rust
//! caller can log them or ignore them ([`Silent`], or `&()`).
//!
//! Stages call [`Observer::event`] from the thread that drives them (the
//! caller's), never from inside a rayon work item; the `Sync` bound lets
//! an observer be shared by stages that run side by side (several
//! weight-matching descents in parallel, for instance).

use crate::alignment::Alignment;
use crate::basin::{Assessment, Diagnostics};

/// A long phase of a pipeline run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Weight matching of one input onto another (or onto a mean).
    Align,
    /// Git Re-Basin's MergeMany over all inputs.
    MergeMany,
    /// The streaming pass of the basin check (bytes read).
    Basin,
    /// The merge itself: averaging (or copying) into the output (bytes written).
    Merge,
}

/// Something that happened in a stage.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// `phase` starts; `total` is its size in bytes when known.
    Started { phase: Phase, total: Option<u64> },
    /// `done` of the phase's `total` bytes are processed.
    Progress { phase: Phase, done: u64 },
    /// `phase` is over.
    Finished { phase: Phase },
    /// Weight matching starts visiting group `group` of `units` units, the
    /// `position`-th (1-based) of the `groups` groups in sweep `sweep`'s
    /// order (groups whose neighbours did not change are skipped without
    /// an event). The visit, similarity and assignment, is the long part;
    /// [`Event::GroupVisited`] follows when it is done.
    GroupStarted {
        sweep: usize,
        position: usize,
        groups: usize,
        group: &'a str,
        units: usize,
    },
    /// Weight matching visited (solved) one group in sweep `sweep`: its
    /// score `⟨S, P⟩` before and after the visit.
    GroupVisited {
        sweep: usize,
        group: &'a str,
        units: usize,
        score_before: f64,
        score_after: f64,
    },
    /// MergeMany matched model `model` (0-based) to the mean of the others
    /// in round `round`.
    MergeManyStep {
        round: usize,
        model: usize,
        objective: f64,
    },
    /// MergeMany is over.
    MergeManyDone { rounds: usize, seconds: f64 },
    /// Input `input` (0-based) was aligned to input 0.
    InputAligned {
        input: usize,
        alignment: &'a Alignment,
    },
    /// The basin check judged inputs `pair.1` against `pair.0` (0-based,
    /// after alignment when the run aligns).
    BasinPair {
        pair: (usize, usize),
        diagnostics: &'a Diagnostics,
        assessment: &'a Assessment,
    },
    /// The basin check is over: `pairs` pairs in `seconds`.
    BasinDone { pairs: usize, seconds: f64 },
    /// A warning about the inputs that does not stop the run (a tensor of a
    /// dtype that is not averaged, for instance).
    Warning(&'a str),
}

/// Receives the [`Event`]s of a run.
pub trait Observer: Sync {
    /// Called for every event, in order.
    fn event(&self, event: &Event<'_>);
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Observer for Silent {
    fn event(&self, _: &Event<'_>) {}
}

/// `&()` ignores everything too, for short calls in tests and examples.
impl Observer for () {
    fn event(&self, _: &Event<'_>) {}
}
