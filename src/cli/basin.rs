//! `polymerge basin` (are two checkpoints in one basin?) and the cheap basin
//! check that `avg` and `ema` run on their inputs before writing anything.
//!
//! Exit codes of `basin`: 0 connected, 3 disconnected, 4 uncertain (1 error,
//! 2 usage). `avg`/`ema --strict-basin` exit with 3 when refusing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use polymerge::alignment::{self, Alignment};
use polymerge::average::{self, MergeInput, MergeOptions};
use polymerge::basin::{
    self, Assessment, Diagnostics, GroupDiagnostics, Summary, TensorClass, Thresholds, Verdict,
};
use polymerge::ema::StepInfo;
use serde_json::json;

use super::align::{match_pair, resolve_spec};
use super::args::MatchArgs;
use super::output::{bar, warn};

/// Exit code of `basin` for a connected pair.
pub const EXIT_CONNECTED: u8 = 0;
/// Exit code of `basin` (and of `avg`/`ema --strict-basin`) for a disconnected pair.
pub const EXIT_DISCONNECTED: u8 = 3;
/// Exit code of `basin` when the verdict is uncertain.
pub const EXIT_UNCERTAIN: u8 = 4;
/// `--matching auto` runs weight matching up to this many float parameters.
pub const AUTO_MATCH_MAX_PARAMS: usize = 50_000_000;
/// `ema` checks from the first checkpoint after the longest prefix whose
/// weights sum to at most this fraction of the total.
pub const NEGLIGIBLE_WEIGHT: f64 = 0.01;

/// When `basin` runs weight matching.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matching {
    /// When a spec is given or can be inferred and the model has at most 50M float parameters.
    Auto,
    /// Always (fails without a spec).
    Always,
    /// Never: data-free diagnostics only.
    Never,
}

#[derive(Args, Debug)]
pub struct BasinArgs {
    /// The reference checkpoint.
    pub a: PathBuf,
    /// The checkpoint to compare with A.
    pub b: PathBuf,
    /// Align B to A by weight matching first, and judge the aligned pair (what `avg --align` would average).
    #[arg(long)]
    pub align: bool,
    /// Weight matching for the per-group gain/churn diagnostics.
    #[arg(long = "matching", value_enum, default_value = "auto")]
    pub mode: Matching,
    #[command(flatten)]
    pub matching: MatchArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The basin check options of `avg` and `ema`.
#[derive(Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// Refuse to write (exit 3) when the inputs look disconnected (different basins).
    #[arg(long)]
    pub strict_basin: bool,
    /// Skip the basin check (one streaming pass over the inputs).
    #[arg(long, conflicts_with = "strict_basin")]
    pub no_basin_check: bool,
}

/// Bytes of float tensor data the streaming pass reads for `pairs`.
fn float_bytes(inputs: &[MergeInput], pairs: &[(usize, usize)]) -> u64 {
    let mut used: Vec<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
    used.sort_unstable();
    used.dedup();
    used.iter()
        .flat_map(|&i| inputs[i].checkpoint.tensors())
        .filter(|t| polymerge::checkpoint::dtype::is_float(t.dtype))
        .map(|t| t.nbytes() as u64)
        .sum()
}

fn exit_code(v: Verdict) -> u8 {
    match v {
        Verdict::Connected => EXIT_CONNECTED,
        Verdict::Disconnected => EXIT_DISCONNECTED,
        Verdict::Uncertain => EXIT_UNCERTAIN,
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".into(),
    }
}

pub fn run(a: BasinArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let th = Thresholds::default();
    let (ca, cb) = super::align::open_pair(&a.a, &a.b)?;
    // Weight matching: decisive when it can run.
    let params: usize = ca
        .tensors()
        .iter()
        .filter(|t| polymerge::checkpoint::dtype::is_float(t.dtype))
        .map(|t| t.numel())
        .sum();
    let mut skipped: Option<String> = None;
    let want = a.align
        || match a.mode {
            Matching::Never => {
                skipped = Some("--matching never".into());
                false
            }
            Matching::Always => true,
            Matching::Auto if params > AUTO_MATCH_MAX_PARAMS => {
                skipped = Some(format!(
                    "{params} float parameters > {AUTO_MATCH_MAX_PARAMS} (use --matching always)"
                ));
                false
            }
            Matching::Auto => true,
        };
    let spec = if want {
        match resolve_spec(
            a.matching.spec.as_deref(),
            a.matching.groups.as_deref(),
            &[&ca, &cb],
        ) {
            Ok(s) => Some(s),
            Err(e) if !a.align && a.mode == Matching::Auto && a.matching.spec.is_none() => {
                skipped = Some(format!("no permutation spec ({})", super::one_line(&e)));
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let alignment: Option<Alignment> = match &spec {
        Some(s) => Some(match_pair(s, &ca, &cb, &a.matching, None, a.json)?),
        None => None,
    };
    let perm = match (&spec, &alignment) {
        (Some(s), Some(r)) => Some(alignment::model_permutation(s, &cb, &r.perms, None)?),
        _ => None,
    };
    // One streaming pass: (A, B) and, after matching, (A, aligned B).
    let mut inputs = vec![MergeInput::plain(&ca), MergeInput::plain(&cb)];
    let mut pairs = vec![(0, 1)];
    if let Some(p) = &perm {
        inputs.push(MergeInput {
            checkpoint: &cb,
            permutation: Some(p),
        });
        pairs.push((0, 2));
    }
    let t0 = Instant::now();
    let pb = bar(float_bytes(&inputs, &pairs), a.json, "basin check");
    let sums = basin::stream_sums(&inputs, &pairs, &|d| pb.set_position(d))?;
    pb.finish_and_clear();
    let check_seconds = t0.elapsed().as_secs_f64();
    let chain = basin::linear_chain(&ca);
    let mut it = sums.into_iter();
    let before = basin::diagnose(it.next().expect("pair"), chain.as_deref(), &th);
    let after = it.next().map(|s| basin::diagnose(s, chain.as_deref(), &th));
    let groups: Vec<GroupDiagnostics> = match &spec {
        Some(s) => {
            basin::group_diagnostics(s, &before, after.as_ref().zip(alignment.as_ref()), &th)
        }
        None => Vec::new(),
    };
    let assessment = if a.align {
        let d = after.as_ref().expect("aligned diagnostics");
        let mut x = basin::assess(d, None, &th);
        let moved = groups.iter().filter_map(|g| g.churn).fold(0.0, f64::max);
        x.reasons.insert(
            0,
            format!(
                "after aligning B to A by weight matching (up to {:.1}% of a group's units moved)",
                moved * 100.0
            ),
        );
        x
    } else {
        basin::assess(&before, Some(&groups), &th)
    };
    // The pair the verdict is about: (A, aligned B) with --align.
    let shown = if a.align {
        after.as_ref().expect("aligned")
    } else {
        &before
    };
    let code = exit_code(assessment.verdict);
    if a.json {
        let matching = match &alignment {
            Some(r) => {
                let norm = (before.summary.norm_a * before.summary.norm_b).max(f64::MIN_POSITIVE);
                json!({
                    "ran": true,
                    "objective_before": r.objective_before,
                    "objective_after": r.objective_after,
                    "normalized_before": r.objective_before / norm,
                    "normalized_after": r.objective_after / norm,
                    "sweeps": r.sweeps,
                    "converged": r.converged,
                    "seconds": r.seconds,
                })
            }
            None => json!({"ran": false, "skipped": skipped}),
        };
        let j = json!({
            "a": a.a.display().to_string(),
            "b": a.b.display().to_string(),
            "aligned": a.align,
            "verdict": assessment.verdict,
            "data_free_verdict": assessment.data_free,
            "exit_code": code,
            "reasons": assessment.reasons,
            "summary": shown.summary,
            "tensors": shown.tensors,
            "groups": groups,
            "matching": matching,
            "before_alignment": if a.align { json!({"summary": before.summary, "tensors": before.tensors}) } else { serde_json::Value::Null },
            "thresholds": th,
            "check_seconds": check_seconds,
            "seconds": start.elapsed().as_secs_f64(),
        });
        println!("{j}");
    } else {
        println!(
            "A: {}\nB: {}{}",
            a.a.display(),
            a.b.display(),
            if a.align {
                "  (aligned to A by weight matching)"
            } else {
                ""
            }
        );
        println!();
        print_tensors(shown, a.align.then_some(&before));
        println!();
        print_summary(&shown.summary, &th);
        if !groups.is_empty() {
            println!();
            print_groups(&groups);
        }
        if let Some(r) = &alignment {
            let norm = (before.summary.norm_a * before.summary.norm_b).max(f64::MIN_POSITIVE);
            println!(
                "matching objective {:.6e} -> {:.6e} (normalised {:.3} -> {:.3}), {} sweep(s), {:.2} s",
                r.objective_before,
                r.objective_after,
                r.objective_before / norm,
                r.objective_after / norm,
                r.sweeps,
                r.seconds
            );
        } else if let Some(s) = &skipped {
            println!("weight matching skipped: {s}");
        }
        println!();
        print_verdict(&assessment);
        eprintln!(
            "basin check: {:.2} s ({:.2} s streaming pass)",
            start.elapsed().as_secs_f64(),
            check_seconds
        );
    }
    Ok(ExitCode::from(code))
}

fn print_tensors(d: &Diagnostics, before: Option<&Diagnostics>) {
    let width = d
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let extra = if before.is_some() { "  cos before" } else { "" };
    println!(
        "{:<width$}  {:>14}  {:>7}  {:>9}  {:>8}  {:>7}{extra}  class",
        "tensor", "shape", "cos", "rel.dist", "midpoint", "|B|/|A|"
    );
    for t in &d.tensors {
        let shape = t
            .shape
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let b = before
            .and_then(|b| b.tensors.iter().find(|u| u.name == t.name))
            .map(|u| format!("  {:>10}", opt(u.cos, 3)))
            .unwrap_or_default();
        let class = match t.class {
            TensorClass::Related => "related",
            TensorClass::Weak => "weak",
            TensorClass::Unrelated => "unrelated",
            TensorClass::NotJudged => "-",
        };
        println!(
            "{:<width$}  {:>14}  {:>7}  {:>9}  {:>8}  {:>7}{b}  {class}",
            t.name,
            if shape.is_empty() {
                "scalar".into()
            } else {
                shape
            },
            opt(t.cos, 3),
            opt(t.rel_distance, 3),
            opt(t.midpoint_ratio, 3),
            opt(t.sums.norm_ratio(), 2),
        );
    }
}

fn print_summary(s: &Summary, th: &Thresholds) {
    println!(
        "all float tensors: cos {}, relative distance {}, midpoint norm ratio {}",
        opt(s.cos, 3),
        opt(s.rel_distance, 3),
        opt(s.midpoint_ratio, 3)
    );
    println!(
        "large weight tensors (>= 2-D, >= {} elements): {} ({} params), cos {}, {:.1}% of params unrelated (cos < {:.2}), {:.1}% related (cos >= {:.2})",
        th.min_numel,
        s.judged_tensors,
        s.judged_params,
        opt(s.judged_cos, 3),
        s.unrelated_fraction * 100.0,
        th.cos_unrelated,
        s.related_fraction * 100.0,
        th.cos_related
    );
    if let Some(w) = basin::shrink_words(s) {
        println!("naive average: activations scale by {w}");
    }
}

fn print_groups(groups: &[GroupDiagnostics]) {
    let width = groups
        .iter()
        .map(|g| g.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<width$}  {:>6}  {:>10}  {:>9}  {:>7}  {:>7}  class",
        "group", "units", "cos before", "cos after", "gain", "churn"
    );
    for g in groups {
        println!(
            "{:<width$}  {:>6}  {:>10}  {:>9}  {:>7}  {:>7}  {}",
            g.name,
            g.size,
            opt(g.cos_before, 3),
            opt(g.cos_after, 3),
            g.gain.map(|x| format!("{x:+.3}")).unwrap_or("-".into()),
            g.churn
                .map(|c| format!("{:.1}%", c * 100.0))
                .unwrap_or("-".into()),
            match g.class {
                Some(c) => serde_json::to_value(c)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                None => "-".into(),
            }
        );
    }
}

fn print_verdict(x: &Assessment) {
    println!("verdict: {}", x.verdict);
    for r in &x.reasons {
        println!("  - {r}");
    }
}

/// The basin check of `avg`: every input against the first, in one
/// streaming pass, after `--align`'s permutations if any. Returns an exit
/// code when the command must stop (`--strict-basin`).
pub fn check_avg(
    inputs: &[MergeInput],
    paths: &[PathBuf],
    opts: &MergeOptions,
    aligned: bool,
    args: &CheckArgs,
    quiet: bool,
) -> anyhow::Result<Option<ExitCode>> {
    let labels: Vec<String> = (paths.iter().enumerate())
        .map(|(i, p)| format!("input {} ({})", i + 1, p.display()))
        .collect();
    let pairs: Vec<(usize, usize)> = (1..inputs.len()).map(|i| (0, i)).collect();
    check(inputs, &pairs, &labels, opts, aligned, args, quiet)
}

/// The basin check of `ema`: the trajectory's ends, i.e. the first
/// checkpoint with non-negligible weight against the last one. `order` and
/// `weights` cover every checkpoint; `inputs` are those with a positive
/// weight, in the same (step) order.
pub fn check_ema(
    inputs: &[MergeInput],
    order: &[StepInfo],
    weights: &[f64],
    opts: &MergeOptions,
    aligned: bool,
    args: &CheckArgs,
    quiet: bool,
) -> anyhow::Result<Option<ExitCode>> {
    let (labels, weights): (Vec<String>, Vec<f64>) = (order.iter().zip(weights))
        .filter(|(_, w)| **w > 0.0)
        .map(|(s, w)| (format!("{} (step {})", s.path.display(), s.step), *w))
        .unzip();
    anyhow::ensure!(
        labels.len() == inputs.len(),
        "ema inputs and weights differ"
    );
    let total: f64 = weights.iter().sum();
    let mut prefix = 0.0;
    let mut first = 0;
    while first + 1 < weights.len() && prefix + weights[first] <= NEGLIGIBLE_WEIGHT * total {
        prefix += weights[first];
        first += 1;
    }
    let last = inputs.len().saturating_sub(1);
    let pairs: Vec<(usize, usize)> = if first < last {
        vec![(first, last)]
    } else {
        vec![]
    };
    check(inputs, &pairs, &labels, opts, aligned, args, quiet)
}

fn check(
    inputs: &[MergeInput],
    pairs: &[(usize, usize)],
    labels: &[String],
    opts: &MergeOptions,
    aligned: bool,
    args: &CheckArgs,
    quiet: bool,
) -> anyhow::Result<Option<ExitCode>> {
    if args.no_basin_check || pairs.is_empty() {
        return Ok(None);
    }
    // The merge's own validation first, so its errors read as before.
    average::plan(inputs, opts)?;
    let th = Thresholds::default();
    let t0 = Instant::now();
    let pb = bar(float_bytes(inputs, pairs), quiet, "basin check");
    let results = basin::check_pairs(inputs, pairs, &th, &|d| pb.set_position(d));
    pb.finish_and_clear();
    let results = results?;
    let seconds = t0.elapsed().as_secs_f64();
    let after = if aligned { " after alignment" } else { "" };
    let mut refuse = Vec::new();
    for (&(i, j), (d, x)) in pairs.iter().zip(&results) {
        let pair = format!("{} vs {}", labels[j], labels[i]);
        let reasons = x.reasons.join("; ");
        match x.verdict {
            Verdict::Disconnected => {
                let advice = if aligned {
                    "alignment did not bring them into one basin"
                } else {
                    "a naive average of different basins is poor: use --align (details: `polymerge basin A B`)"
                };
                let msg = format!("basin check{after}: {pair}: disconnected: {reasons}; {advice}");
                if args.strict_basin {
                    refuse.push(msg);
                } else {
                    warn(&msg);
                }
            }
            // "too small to judge" is not worth a line.
            Verdict::Uncertain if d.summary.judged_tensors == 0 => {}
            Verdict::Uncertain => {
                if !quiet {
                    eprintln!("polymerge: note: basin check{after}: {pair}: uncertain: {reasons}");
                }
            }
            Verdict::Connected => {
                if aligned && !quiet {
                    eprintln!("basin check{after}: {pair}: connected: {reasons}");
                }
            }
        }
    }
    if !refuse.is_empty() {
        for m in &refuse {
            eprintln!("polymerge: error: {m}");
        }
        eprintln!("polymerge: error: refusing to write (--strict-basin); nothing was written");
        return Ok(Some(ExitCode::from(EXIT_DISCONNECTED)));
    }
    if !quiet && seconds > 1.0 {
        eprintln!("basin check: {} pair(s) in {seconds:.2} s", pairs.len());
    }
    Ok(None)
}
