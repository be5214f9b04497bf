//! The binary's [`Observer`]: progress bars and spinners on stderr (only on
//! a terminal), the alignment tables of `avg --align`, and the lines of the
//! basin gate, all from the library's events.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use polymerge::alignment::Alignment;
use polymerge::basin::{Assessment, Diagnostics, Verdict};
use polymerge::observe::{Event, Observer, Phase};
use polymerge::pipeline::RefusedPair;

use super::output::{clean, pad, text_width, warn};

/// What the basin gate's lines say about the inputs.
pub struct GateText {
    /// One label per input of the run, e.g. `input 2 (b.safetensors)`.
    pub labels: Vec<String>,
    /// The inputs were aligned before the check.
    pub aligned: bool,
    /// Disconnected pairs refuse the run (they are reported by
    /// [`refusal`] then, not as warnings).
    pub strict: bool,
}

/// Shows a run's events on stderr.
pub struct Console {
    quiet: bool,
    merge_label: &'static str,
    gate: Option<GateText>,
    bar: Mutex<Option<ProgressBar>>,
}

impl Console {
    /// An observer that draws progress unless `quiet` (and prints the
    /// alignment and basin notes unless `quiet`); the merge's bar reads
    /// `merge_label`.
    pub fn new(quiet: bool, merge_label: &'static str) -> Self {
        Self {
            quiet,
            merge_label,
            gate: None,
            bar: Mutex::new(None),
        }
    }

    /// Adds the basin gate's report.
    pub fn with_gate(mut self, gate: GateText) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The basin gate's report settings.
    pub fn gate(&self) -> &GateText {
        self.gate.as_ref().expect("a console with a gate")
    }

    fn show(&self, pb: ProgressBar) {
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(pb);
        }
    }

    fn with_bar(&self, f: impl FnOnce(&ProgressBar)) {
        if let Ok(b) = self.bar.lock()
            && let Some(pb) = b.as_ref()
        {
            f(pb);
        }
    }

    fn clear(&self) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(pb) = b.take()
        {
            pb.finish_and_clear();
        }
    }

    fn basin_pair(&self, pair: (usize, usize), d: &Diagnostics, x: &Assessment) {
        let Some(gate) = &self.gate else {
            return;
        };
        let after = if gate.aligned { " after alignment" } else { "" };
        let (i, j) = pair;
        let pair = format!("{} vs {}", gate.labels[j], gate.labels[i]);
        let reasons = super::hints::reasons(&x.reasons).join("; ");
        match x.verdict {
            Verdict::Disconnected if gate.strict => {}
            Verdict::Disconnected => warn(&format!(
                "basin check{after}: {pair}: disconnected: {reasons}; {}",
                advice(gate.aligned)
            )),
            // "too small to judge" is not worth a line.
            Verdict::Uncertain if d.summary.judged_tensors == 0 => {}
            // After alignment an uncertain pair is a warning: the user asked
            // for an aligned merge and should know it may be a poor one.
            Verdict::Uncertain if gate.aligned => warn(&format!(
                "basin check{after}: {pair}: uncertain: {reasons}; the aligned average may be poor: evaluate it before use"
            )),
            Verdict::Uncertain => {
                if !self.quiet {
                    say!(
                        "polymerge: note: basin check{after}: {pair}: uncertain: {}",
                        clean(&reasons)
                    );
                }
            }
            Verdict::Connected => {
                if gate.aligned && !self.quiet {
                    say!("basin check{after}: {pair}: connected: {}", clean(&reasons));
                }
            }
        }
    }
}

impl Observer for Console {
    fn event(&self, event: &Event<'_>) {
        match *event {
            Event::Started {
                phase: Phase::Align | Phase::MergeMany,
                ..
            } => self.show(spinner(self.quiet)),
            Event::Started {
                phase: Phase::Basin,
                total,
            } => self.show(bar(total.unwrap_or(0), self.quiet, "basin check")),
            Event::Started { phase, total } => {
                let label = if phase == Phase::Merge {
                    self.merge_label
                } else {
                    ""
                };
                self.show(bar(total.unwrap_or(0), self.quiet, label))
            }
            Event::Progress { done, .. } => self.with_bar(|pb| pb.set_position(done)),
            Event::Finished { .. } => self.clear(),
            Event::GroupStarted {
                sweep,
                position,
                groups,
                group,
                units,
            } => self.with_bar(|pb| {
                pb.set_message(format!(
                    "weight matching: sweep {sweep}, group {position}/{groups} {group} ({units} units)"
                ))
            }),
            Event::GroupVisited {
                sweep,
                group,
                units,
                score_before,
                score_after,
            } => self.with_bar(|pb| {
                pb.set_message(format!(
                    "sweep {sweep} group {group} ({units} units): {score_before:.6e} -> {score_after:.6e}"
                ))
            }),
            Event::MergeManyStep {
                round,
                model,
                objective,
            } => self.with_bar(|pb| {
                pb.set_message(format!(
                    "round {round} model {}: objective {objective:.6e}",
                    model + 1
                ))
            }),
            Event::MergeManyDone { rounds, seconds } if !self.quiet => {
                say!("MergeMany: {rounds} round(s), {seconds:.2} s");
            }
            Event::InputAligned { input, alignment } if !self.quiet => {
                say!("aligned input {} to input 1:", input + 1);
                print_alignment(alignment);
            }
            Event::BasinPair {
                pair,
                diagnostics,
                assessment,
            } => self.basin_pair(pair, diagnostics, assessment),
            Event::BasinDone { pairs, seconds } if !self.quiet && seconds > 1.0 => {
                say!("basin check: {pairs} pair(s) in {seconds:.2} s");
            }
            Event::Warning(w) => warn(w),
            _ => {}
        }
    }
}

/// What to do about a disconnected pair.
fn advice(aligned: bool) -> &'static str {
    if aligned {
        "alignment did not bring them into one basin"
    } else {
        "a naive average of different basins is poor: use --align (details: `polymerge basin A B`)"
    }
}

/// Reports a run the basin gate refused (`--strict-basin`) and returns the
/// exit code.
pub fn refusal(pairs: &[RefusedPair], gate: &GateText) -> std::process::ExitCode {
    let after = if gate.aligned { " after alignment" } else { "" };
    for p in pairs {
        let (i, j) = p.pair;
        say!(
            "polymerge: error: basin check{after}: {} vs {}: disconnected: {}; {}",
            gate.labels[j],
            gate.labels[i],
            super::hints::reasons(&p.assessment.reasons).join("; "),
            advice(gate.aligned)
        );
    }
    say!("polymerge: error: refusing to write (--strict-basin); nothing was written");
    std::process::ExitCode::from(super::EXIT_DISCONNECTED)
}

/// A byte-count progress bar on stderr; hidden when stderr is not a terminal
/// or `quiet` is set.
pub fn bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A spinner with a message on stderr (weight matching); hidden like [`bar`].
fn spinner(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Human report of an alignment on stderr.
pub fn print_alignment(r: &Alignment) {
    let width = r
        .groups
        .iter()
        .map(|g| text_width(&clean(&g.name)))
        .max()
        .unwrap_or(5)
        .max(5);
    say!(
        "{}  {:>6}  {:>13}  {:>13}  {:>7}  {:>6}",
        pad("group", width),
        "units",
        "score before",
        "score after",
        "churn",
        "time"
    );
    for g in &r.groups {
        say!(
            "{}  {:>6}  {:>13.6e}  {:>13.6e}  {:>6.1}%  {:>5.2}s",
            pad(&clean(&g.name), width),
            g.size,
            g.score_before,
            g.score_after,
            g.churn * 100.0,
            g.seconds_similarity + g.seconds_assignment
        );
    }
    let gain = if r.objective_before != 0.0 {
        (r.objective_after - r.objective_before) / r.objective_before.abs() * 100.0
    } else {
        0.0
    };
    say!(
        "objective {:.6e} -> {:.6e} ({gain:+.2}%), {} sweep(s){}, {:.2} s",
        r.objective_before,
        r.objective_after,
        r.sweeps,
        if r.converged {
            ""
        } else {
            " (not converged: raise --max-iter)"
        },
        r.seconds
    );
}
