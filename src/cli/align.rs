//! `polymerge spec`, `align`, `permute` and `barrier`.

use std::fmt::Write as _;
use std::process::ExitCode;

use polymerge::alignment::{self, Permuted};
use polymerge::average;
use polymerge::checkpoint::Checkpoint;
use polymerge::error::PermError;
use polymerge::permute::{GroupPerms, ModelPermutation};
use polymerge::pipeline::{Align, BasinGate, Merge, Output, match_pair, open_pair};
use polymerge::spec::{self, PERM_FORMAT, PermFile, PermutationSpec, SpecSource};
use polymerge::write::SideOutput;
use serde_json::json;

use super::args::{AlignArgs, BarrierArgs, PermuteArgs, SpecArgs};
use super::console::{Console, print_alignment};
use super::output::{clean, print_line, print_stdout, summarize, warn, warn_nonfinite};

pub fn spec(a: SpecArgs) -> anyhow::Result<ExitCode> {
    let ckpt = Checkpoint::open(&a.path)?;
    let source = if a.shared_heads {
        SpecSource::InferSharedHeads
    } else {
        SpecSource::Infer
    };
    let spec = spec::resolve(&source, a.groups.as_deref(), &[&ckpt])?;
    for n in &spec.notes {
        warn(n);
    }
    print_line(serde_json::to_string_pretty(&spec)?)?;
    Ok(ExitCode::SUCCESS)
}

pub fn align(a: AlignArgs) -> anyhow::Result<ExitCode> {
    // Every argument is checked before any checkpoint is read.
    let output = a.out.output();
    output.refuse_existing()?;
    let save = a.save_perm.as_ref().map(|p| SideOutput {
        path: p.clone(),
        force: a.out.force,
    });
    if let Some(s) = &save {
        s.check(&[&a.a, &a.b], output.layout.path())?;
    }
    let mut m = a.matching.options()?;
    let init = a
        .init_perm
        .as_ref()
        .map(|p| PermFile::load(p).map(|f| (f, p)))
        .transpose()?;
    let (ca, cb) = open_pair(&a.a, &a.b)?;
    let spec = m.resolve_spec(&[&ca, &cb])?;
    if let Some((f, p)) = init {
        m.align.init = Some(f.perms_for(&spec, p)?);
    }
    let console = Console::new(a.out.quiet(), "writing");
    let (r, perm) = match_pair(&spec, &ca, &cb, &m.align, &console)?;
    let description = json!({
        "command": "align",
        "version": polymerge::VERSION,
        "reference": a.a.display().to_string(),
        "input": a.b.display().to_string(),
        "objective_before": r.objective_before,
        "objective_after": r.objective_after,
    });
    // The permutations are saved first: if that fails, no checkpoint is
    // left claiming to have them.
    if let Some(s) = &save {
        s.write(perm_file_text(&spec, &r.perms)?.as_bytes())?;
    }
    let report = write_permuted(&cb, perm, &output, description, &console)?;
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
            "kept_restart": r.kept_restart,
            "restarts": r.restarts,
            "saved_perm": a.save_perm.as_ref().map(|p| p.display().to_string()),
        });
        print_line(j)?;
    } else if !a.out.quiet {
        print_alignment(&r);
        say!(
            "wrote {}",
            clean(&report.written.path.display().to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `ckpt` seen through `perm` (byte for byte otherwise).
fn write_permuted(
    ckpt: &Checkpoint,
    perm: ModelPermutation,
    output: &Output,
    description: serde_json::Value,
    console: &Console,
) -> anyhow::Result<average::MergeReport> {
    let report = Merge::new([ckpt])
        .align(Align::Given(vec![Some(perm)]))
        .basin_gate(BasinGate::Off)
        .description(description)
        .run(output, console)?;
    warn_nonfinite(&report.nonfinite);
    Ok(report)
}

/// The `--save-perm` file: permutations by group name, with their spec.
fn perm_file_text(spec: &PermutationSpec, perms: &GroupPerms) -> anyhow::Result<String> {
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
    Ok(serde_json::to_string_pretty(&file)? + "\n")
}

pub fn permute(a: PermuteArgs) -> anyhow::Result<ExitCode> {
    let output = a.out.output();
    output.refuse_existing()?;
    let file = PermFile::load(&a.perm)?;
    let given = a.spec.as_deref().map(PermutationSpec::load).transpose()?;
    let ckpt = Checkpoint::open(&a.input)?;
    let spec = match (given, &file.spec) {
        (Some(s), _) => s,
        (None, Some(s)) => s.clone(),
        // Perm files of the shared within-head groups name them unsplit.
        (None, None) => {
            let spec = spec::infer::infer(&ckpt)?;
            let known = |n: &String| spec.groups.iter().any(|g| &g.name == n);
            if file.groups.keys().all(known) {
                spec
            } else {
                spec::infer::infer_shared_heads(&ckpt)?
            }
        }
    };
    // A spec embedded in the permutation file that does not fit the
    // checkpoint is reported against the permutation file.
    spec.validate(&ckpt)
        .map_err(|e| match (&a.spec, &file.spec) {
            (None, Some(_)) => polymerge::Error::Perm {
                path: a.perm.clone(),
                source: PermError::SpecDoesNotFit {
                    checkpoint: ckpt.source().to_path_buf(),
                    source: Box::new(e),
                },
            },
            _ => polymerge::Error::SpecCheck {
                path: ckpt.source().to_path_buf(),
                source: Box::new(e),
            },
        })?;
    let perms = file.perms_for(&spec, &a.perm)?;
    let perm = alignment::model_permutation(&spec, &ckpt, &perms, None)?;
    let description = json!({
        "command": "permute",
        "version": polymerge::VERSION,
        "input": a.input.display().to_string(),
        "perm": a.perm.display().to_string(),
    });
    let console = Console::new(a.out.quiet(), "writing");
    let report = write_permuted(&ckpt, perm, &output, description, &console)?;
    summarize("permuted", &a.out, &report, 1)?;
    Ok(ExitCode::SUCCESS)
}

pub fn barrier(a: BarrierArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &a.plot.plot {
        super::plots::check(p, None, a.plot.force)?;
    }
    let m = a.align.then(|| a.matching.options()).transpose()?;
    let data = polymerge::evaluate::Dataset::load(&a.data)?;
    let (ca, cb) = open_pair(&a.a, &a.b)?;
    let mut aligned = None;
    let perm = if let Some(m) = m {
        let spec = m.resolve_spec(&[&ca, &cb])?;
        let (r, p) = match_pair(&spec, &ca, &cb, &m.align, &Console::new(a.json, ""))?;
        aligned = Some(r);
        p
    } else {
        ModelPermutation::default()
    };
    let b = Permuted {
        source: &cb,
        perm: &perm,
    };
    let r = polymerge::evaluate::barrier(&ca, &b, &data, a.steps)?;
    if let Some(p) = &a.plot.plot {
        let panels = if a.align {
            let identity = ModelPermutation::default();
            let naive = Permuted {
                source: &cb,
                perm: &identity,
            };
            let n = polymerge::evaluate::barrier(&ca, &naive, &data, a.steps)?;
            super::plots::barrier(&[("naive", &n), ("aligned", &r)])
        } else {
            super::plots::barrier(&[("naive", &r)])
        };
        polymerge::plot::save(p, &panels, a.plot.force)?;
    }
    let mut text = String::new();
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
        writeln!(text, "{j}")?;
    } else {
        writeln!(text, "{:>6}  {:>10}  {:>8}", "alpha", "loss", "accuracy")?;
        for p in &r.path {
            writeln!(
                text,
                "{:>6.2}  {:>10.6}  {:>7.2}%",
                p.alpha,
                p.loss,
                p.accuracy * 100.0
            )?;
        }
        writeln!(
            text,
            "barrier {:.6} at alpha {:.2}{}",
            r.barrier,
            r.alpha_max,
            if a.align { " (B aligned to A)" } else { "" }
        )?;
    }
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
