//! `polymerge basin`: are two checkpoints in one basin? Prints the
//! library's [`Comparison`] (human or `--json`) and exits with the verdict.
//!
//! Exit codes: 0 connected, 3 disconnected, 4 uncertain (1 error, 2 usage).

use std::process::ExitCode;
use std::time::Instant;

use polymerge::basin::{
    self, Assessment, Diagnostics, GroupDiagnostics, Summary, TensorClass, Thresholds, Verdict,
};
use polymerge::pipeline::{Compare, Comparison, MatchingSkipped, WhenMatching, compare, open_pair};
use serde_json::json;

use super::args::{BasinArgs, Matching};
use super::console::Console;
use super::output::{clean, pad, print_line, print_stdout, text_width};

/// `writeln!` into a `String` (which cannot fail).
macro_rules! outln {
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($arg)*);
    }};
}
use super::{EXIT_CONNECTED, EXIT_DISCONNECTED, EXIT_UNCERTAIN};

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

/// Why weight matching was skipped, in words.
fn skipped_words(s: &MatchingSkipped) -> String {
    match s {
        MatchingSkipped::Never => "--matching never".into(),
        MatchingSkipped::TooLarge { params, limit } => {
            format!("{params} float parameters > {limit} (use --matching always)")
        }
        MatchingSkipped::NoSpec(e) => {
            format!("no permutation spec ({})", super::error_line(e))
        }
    }
}

pub fn run(a: BasinArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    if let Some(p) = &a.plot.plot {
        super::plots::check(p, None, a.plot.force)?;
    }
    let matching = a.matching.options()?;
    let (ca, cb) = open_pair(&a.a, &a.b)?;
    let opts = Compare {
        align: a.align,
        when: match a.mode {
            Matching::Auto => WhenMatching::Auto,
            Matching::Always => WhenMatching::Always,
            Matching::Never => WhenMatching::Never,
        },
        matching,
        thresholds: Thresholds::default(),
    };
    let c = compare(&ca, &cb, &opts, &Console::new(a.json, ""))?;
    let th = &opts.thresholds;
    let shown = c.shown();
    let code = exit_code(c.assessment.verdict);
    if let Some(p) = &a.plot.plot {
        let after = c.after.as_ref().filter(|_| a.align);
        polymerge::plot::save(p, &super::plots::basin(&c.before, after), a.plot.force)?;
    }
    let mut o = String::new();
    if a.json {
        print_json(&a, &c, th, code, start)?;
    } else {
        outln!(
            o,
            "A: {}\nB: {}{}",
            clean(&a.a.display().to_string()),
            clean(&a.b.display().to_string()),
            if a.align {
                "  (aligned to A by weight matching)"
            } else {
                ""
            }
        );
        o.push('\n');
        print_tensors(&mut o, shown, a.align.then_some(&c.before));
        o.push('\n');
        print_summary(&mut o, &shown.summary, th);
        if !c.groups.is_empty() {
            o.push('\n');
            print_groups(&mut o, &c.groups);
        }
        if let Some(r) = &c.alignment {
            let norm = (c.before.summary.norm_a * c.before.summary.norm_b).max(f64::MIN_POSITIVE);
            outln!(
                o,
                "matching objective {:.6e} -> {:.6e} (normalised {:.3} -> {:.3}), {} sweep(s), {:.2} s",
                r.objective_before,
                r.objective_after,
                r.objective_before / norm,
                r.objective_after / norm,
                r.sweeps,
                r.seconds
            );
        } else if let Some(s) = &c.skipped {
            outln!(o, "weight matching skipped: {}", skipped_words(s));
        }
        o.push('\n');
        print_verdict(&mut o, &c.assessment);
        print_stdout(&o)?;
        say!(
            "basin check: {:.2} s ({:.2} s streaming pass)",
            start.elapsed().as_secs_f64(),
            c.check_seconds
        );
    }
    Ok(ExitCode::from(code))
}

fn print_json(
    a: &BasinArgs,
    c: &Comparison,
    th: &Thresholds,
    code: u8,
    start: Instant,
) -> anyhow::Result<()> {
    let before = &c.before;
    let shown = c.shown();
    let matching = match &c.alignment {
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
        None => json!({"ran": false, "skipped": c.skipped.as_ref().map(skipped_words)}),
    };
    let j = json!({
        "a": a.a.display().to_string(),
        "b": a.b.display().to_string(),
        "aligned": a.align,
        "verdict": c.assessment.verdict,
        "data_free_verdict": c.assessment.data_free,
        "exit_code": code,
        "reasons": super::hints::reasons(&c.assessment.reasons),
        "summary": shown.summary,
        "tensors": shown.tensors,
        "groups": c.groups,
        "matching": matching,
        "before_alignment": if a.align { json!({"summary": before.summary, "tensors": before.tensors}) } else { serde_json::Value::Null },
        "thresholds": th,
        "check_seconds": c.check_seconds,
        "seconds": start.elapsed().as_secs_f64(),
    });
    print_line(j)
}

fn print_tensors(o: &mut String, d: &Diagnostics, before: Option<&Diagnostics>) {
    let width = d
        .tensors
        .iter()
        .map(|t| text_width(&clean(&t.name)))
        .max()
        .unwrap_or(6)
        .max(6);
    let extra = if before.is_some() { "  cos before" } else { "" };
    outln!(
        o,
        "{}  {:>14}  {:>7}  {:>9}  {:>8}  {:>7}{extra}  class",
        pad("tensor", width),
        "shape",
        "cos",
        "rel.dist",
        "midpoint",
        "|B|/|A|"
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
        outln!(
            o,
            "{}  {:>14}  {:>7}  {:>9}  {:>8}  {:>7}{b}  {class}",
            pad(&clean(&t.name), width),
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

fn print_summary(o: &mut String, s: &Summary, th: &Thresholds) {
    outln!(
        o,
        "all float tensors: cos {}, relative distance {}, midpoint norm ratio {}",
        opt(s.cos, 3),
        opt(s.rel_distance, 3),
        opt(s.midpoint_ratio, 3)
    );
    outln!(
        o,
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
        outln!(o, "naive average: activations scale by {w}");
    }
}

fn print_groups(o: &mut String, groups: &[GroupDiagnostics]) {
    let width = groups
        .iter()
        .map(|g| text_width(&clean(&g.name)))
        .max()
        .unwrap_or(5)
        .max(5);
    outln!(
        o,
        "{}  {:>6}  {:>10}  {:>9}  {:>7}  {:>7}  class",
        pad("group", width),
        "units",
        "cos before",
        "cos after",
        "gain",
        "churn"
    );
    for g in groups {
        outln!(
            o,
            "{}  {:>6}  {:>10}  {:>9}  {:>7}  {:>7}  {}",
            pad(&clean(&g.name), width),
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

fn print_verdict(o: &mut String, x: &Assessment) {
    outln!(o, "verdict: {}", x.verdict);
    for r in super::hints::reasons(&x.reasons) {
        outln!(o, "  - {}", clean(&r));
    }
}
