//! `polymerge spec`, `align`, `permute`, and the alignment half of
//! `avg --align`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use polymerge::alignment::{self, AlignOptions, Alignment, WeightSource};
use polymerge::average::{self, MergeInput, MergeOptions};
use polymerge::checkpoint::Checkpoint;
use polymerge::observe::{Event, Observer};
use polymerge::permute::{GroupPerms, ModelPermutation};
use polymerge::spec::{self, PERM_FORMAT, PermFile, PermutationSpec};
use serde_json::json;

use super::args::{AlignArgs, BarrierArgs, MatchArgs, PermuteArgs, SpecArgs};
use super::avg::{merge, summarize};
use super::output::warn;

/// The spec to use: `--spec FILE` or inferred from `ckpt`, reduced to
/// `--groups`, and validated against every checkpoint.
pub fn resolve_spec(
    spec_path: Option<&Path>,
    groups: Option<&[String]>,
    ckpts: &[&Checkpoint],
) -> anyhow::Result<PermutationSpec> {
    let mut spec = match spec_path {
        Some(p) => PermutationSpec::load(p)?,
        None => spec::infer::infer(ckpts[0])?,
    };
    if let Some(g) = groups {
        spec.select(g)?;
    }
    for c in ckpts {
        spec.validate(c)
            .with_context(|| format!("checking the spec against `{}`", c.source().display()))?;
    }
    Ok(spec)
}

/// Opens two checkpoints that must hold the same tensors with the same
/// shapes (else an error naming the difference).
pub fn open_pair(a: &Path, b: &Path) -> anyhow::Result<(Checkpoint, Checkpoint)> {
    let ca = Checkpoint::open(a)?;
    let cb = Checkpoint::open(b)?;
    average::plan(
        &[MergeInput::plain(&ca), MergeInput::plain(&cb)],
        &MergeOptions::uniform(2),
    )?;
    Ok((ca, cb))
}

pub fn spec(a: SpecArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::open(&a.path)?;
    let spec = resolve_spec(None, a.groups.as_deref(), &[&ckpt])?;
    for n in &spec.notes {
        warn(n);
    }
    println!("{}", serde_json::to_string_pretty(&spec)?);
    Ok(ExitCode::SUCCESS)
}

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

/// Shows weight-matching steps as the spinner's message.
struct SpinnerText<'a>(&'a ProgressBar);

impl Observer for SpinnerText<'_> {
    fn event(&self, event: &Event<'_>) {
        match *event {
            Event::GroupVisited {
                sweep,
                group,
                units,
                score_before,
                score_after,
            } => self.0.set_message(format!(
                "sweep {sweep} group {group} ({units} units): {score_before:.6e} -> {score_after:.6e}"
            )),
            Event::MergeManyStep {
                round,
                model,
                objective,
            } => self.0.set_message(format!(
                "round {round} model {}: objective {objective:.6e}",
                model + 1
            )),
            _ => {}
        }
    }
}

/// Runs weight matching of `b` onto `a` with the user's options.
pub fn match_pair(
    spec: &PermutationSpec,
    a: &Checkpoint,
    b: &Checkpoint,
    m: &MatchArgs,
    init: Option<GroupPerms>,
    quiet: bool,
) -> anyhow::Result<Alignment> {
    let opts = AlignOptions {
        seed: m.seed,
        max_iter: m.max_iter,
        init,
    };
    let pb = spinner(quiet);
    let r = alignment::weight_matching(spec, a, b, &opts, &SpinnerText(&pb));
    pb.finish_and_clear();
    Ok(r?)
}

pub fn align(a: AlignArgs) -> anyhow::Result<ExitCode> {
    polymerge::write::refuse_existing(&a.out.output, a.out.force)?;
    let (ca, cb) = open_pair(&a.a, &a.b)?;
    let spec = resolve_spec(
        a.matching.spec.as_deref(),
        a.matching.groups.as_deref(),
        &[&ca, &cb],
    )?;
    let init = match &a.init_perm {
        Some(p) => Some(PermFile::load(p)?.perms_for(&spec, p)?),
        None => None,
    };
    let quiet = a.out.quiet || a.out.json;
    let r = match_pair(&spec, &ca, &cb, &a.matching, init, quiet)?;
    let perm = alignment::model_permutation(&spec, &cb, &r.perms, None)?;
    let description = json!({
        "command": "align",
        "version": polymerge::VERSION,
        "reference": a.a.display().to_string(),
        "input": a.b.display().to_string(),
        "objective_before": r.objective_before,
        "objective_after": r.objective_after,
    });
    let report = write_permuted(&cb, &perm, &a.out, description)?;
    if let Some(p) = &a.save_perm {
        save_perm(p, &spec, &r.perms)?;
    }
    if a.out.json {
        let j = json!({
            "output": report.written.path.display().to_string(),
            "objective_before": r.objective_before,
            "objective_after": r.objective_after,
            "sweeps": r.sweeps,
            "converged": r.converged,
            "seconds": r.seconds,
            "sweep_seconds": r.sweep_seconds,
            "groups": r.groups,
            "saved_perm": a.save_perm.as_ref().map(|p| p.display().to_string()),
        });
        println!("{j}");
    } else if !a.out.quiet {
        print_alignment(&r);
        eprintln!("wrote {}", report.written.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Human report of an alignment on stderr.
pub fn print_alignment(r: &Alignment) {
    let width = r
        .groups
        .iter()
        .map(|g| g.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    eprintln!(
        "{:<width$}  {:>6}  {:>13}  {:>13}  {:>7}  {:>6}",
        "group", "units", "score before", "score after", "churn", "time"
    );
    for g in &r.groups {
        eprintln!(
            "{:<width$}  {:>6}  {:>13.6e}  {:>13.6e}  {:>6.1}%  {:>5.2}s",
            g.name,
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
    eprintln!(
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

fn write_permuted(
    ckpt: &Checkpoint,
    perm: &ModelPermutation,
    out: &super::args::OutputArgs,
    description: serde_json::Value,
) -> anyhow::Result<average::MergeReport> {
    let input = MergeInput {
        checkpoint: ckpt,
        permutation: Some(perm),
    };
    merge(
        &[input],
        &MergeOptions::uniform(1),
        out,
        description,
        "writing",
    )
}

fn save_perm(path: &Path, spec: &PermutationSpec, perms: &GroupPerms) -> anyhow::Result<()> {
    let file = PermFile {
        format: PERM_FORMAT.into(),
        groups: spec
            .groups
            .iter()
            .zip(perms)
            .map(|(g, p)| (g.name.clone(), p.clone()))
            .collect(),
        spec: Some(spec.clone()),
    };
    let text = serde_json::to_string_pretty(&file)? + "\n";
    let tmp = path.with_extension("json.polymerge-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

pub fn permute(a: PermuteArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::open(&a.input)?;
    let file = PermFile::load(&a.perm)?;
    let spec = match (&a.spec, &file.spec) {
        (Some(p), _) => PermutationSpec::load(p)?,
        (None, Some(s)) => s.clone(),
        (None, None) => spec::infer::infer(&ckpt)?,
    };
    spec.validate(&ckpt)?;
    let perms = file.perms_for(&spec, &a.perm)?;
    let perm = alignment::model_permutation(&spec, &ckpt, &perms, None)?;
    let description = json!({
        "command": "permute",
        "version": polymerge::VERSION,
        "input": a.input.display().to_string(),
        "perm": a.perm.display().to_string(),
    });
    let report = write_permuted(&ckpt, &perm, &a.out, description)?;
    summarize("permuted", &a.out, &report, 1);
    Ok(ExitCode::SUCCESS)
}

/// Permutations that bring every input into a common unit order for
/// `avg --align`: pairwise to the first input, or MergeMany.
pub fn align_inputs(
    ckpts: &[Checkpoint],
    mode: super::args::AlignMode,
    m: &MatchArgs,
    quiet: bool,
) -> anyhow::Result<Vec<Option<ModelPermutation>>> {
    let refs: Vec<&Checkpoint> = ckpts.iter().collect();
    let spec = resolve_spec(m.spec.as_deref(), m.groups.as_deref(), &refs)?;
    match mode {
        super::args::AlignMode::Pairwise => {
            let mut out = vec![None];
            for (i, c) in ckpts.iter().enumerate().skip(1) {
                let r = match_pair(&spec, &ckpts[0], c, m, None, quiet)?;
                if !quiet {
                    eprintln!("aligned input {} to input 1:", i + 1);
                    print_alignment(&r);
                }
                out.push(Some(alignment::model_permutation(
                    &spec, c, &r.perms, None,
                )?));
            }
            Ok(out)
        }
        super::args::AlignMode::Many => {
            let sources: Vec<&dyn WeightSource> =
                ckpts.iter().map(|c| c as &dyn WeightSource).collect();
            let opts = AlignOptions {
                seed: m.seed,
                max_iter: m.max_iter,
                init: None,
            };
            let pb = spinner(quiet);
            let r = alignment::merge_many(&spec, &sources, &opts, &SpinnerText(&pb));
            pb.finish_and_clear();
            let r = r?;
            if !quiet {
                eprintln!("MergeMany: {} round(s), {:.2} s", r.rounds, r.seconds);
            }
            r.perms
                .iter()
                .zip(ckpts)
                .map(|(p, c)| Ok(Some(alignment::model_permutation(&spec, c, p, None)?)))
                .collect()
        }
    }
}

pub fn barrier(a: BarrierArgs) -> anyhow::Result<ExitCode> {
    let (ca, cb) = open_pair(&a.a, &a.b)?;
    let data = polymerge::evaluate::Dataset::load(&a.data)?;
    let mut aligned = None;
    let perm = if a.align {
        let spec = resolve_spec(
            a.matching.spec.as_deref(),
            a.matching.groups.as_deref(),
            &[&ca, &cb],
        )?;
        let r = match_pair(&spec, &ca, &cb, &a.matching, None, a.json)?;
        let p = alignment::model_permutation(&spec, &cb, &r.perms, None)?;
        aligned = Some(r);
        p
    } else {
        ModelPermutation::default()
    };
    let b = alignment::Permuted {
        source: &cb,
        perm: &perm,
    };
    let r = polymerge::evaluate::barrier(&ca, &b, &data, a.steps)?;
    if a.json {
        let j = json!({
            "a": a.a.display().to_string(),
            "b": a.b.display().to_string(),
            "data": a.data.display().to_string(),
            "aligned": a.align,
            "objective_before": aligned.as_ref().map(|r| r.objective_before),
            "objective_after": aligned.as_ref().map(|r| r.objective_after),
            "barrier": r.barrier,
            "alpha_max": r.alpha_max,
            "path": r.path,
        });
        println!("{j}");
    } else {
        println!("{:>6}  {:>10}  {:>8}", "alpha", "loss", "accuracy");
        for p in &r.path {
            println!(
                "{:>6.2}  {:>10.6}  {:>7.2}%",
                p.alpha,
                p.loss,
                p.accuracy * 100.0
            );
        }
        println!(
            "barrier {:.6} at alpha {:.2}{}",
            r.barrier,
            r.alpha_max,
            if a.align { " (B aligned to A)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
